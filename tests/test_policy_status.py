"""Status conditions of routes and policies, from model values (`model.status`).

Each case is a mesh (Services, routes, policies) and the conditions the
Gateway API says the object gets: `Accepted` / `ResolvedRefs` with a reason and
a message that names the field or object at fault.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from translate_builders import mesh

from xds_server.model import Kind, ObjectKey, Service, ServicePort
from xds_server.model.changes import MeshObject
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    ParentRef,
    RequestMirrorFilter,
)
from xds_server.model.status import (
    ACCEPTED,
    RESOLVED_REFS,
    ObjectStatus,
    parse_object_ref,
    policy_conditions,
)
from xds_server.policy_api import backend_policy_pb2 as api

WEB = Service(
    "shop", "web", ports=(ServicePort(8080, name="http"), ServicePort(9090, name="admin"))
)
API = Service("shop", "api", ports=(ServicePort(80, name="http"),))
OTHER = Service("other", "db", ports=(ServicePort(5432, name="tcp"),))


def http_route(
    name: str = "r",
    *,
    namespace: str = "shop",
    parents: tuple[ParentRef, ...] = (ParentRef("web"),),
    backends: tuple[BackendObjectRef, ...] = (BackendObjectRef("api", port=80),),
    generation: int = 3,
) -> HTTPRoute:
    rule = HTTPRouteRule(backend_refs=tuple(BackendRef(b) for b in backends))
    return HTTPRoute(namespace, name, parents, rules=(rule,), generation=generation)


def policy(
    name: str,
    *targets: tuple[str, str],
    namespace: str = "shop",
    created: str | None = None,
    target_namespace: str = "",
    group: str = "",
) -> BackendPolicy:
    spec = api.BackendPolicySpec(
        target_refs=[
            api.PolicyTargetReference(
                kind=kind, name=target, namespace=target_namespace, group=group
            )
            for kind, target in targets
        ]
    )
    return BackendPolicy.of(namespace, name, spec, creation_timestamp=created, generation=2)


@dataclass(frozen=True)
class Expect:
    """The conditions one object gets: (type, status, reason) and words its message has."""

    accepted: tuple[str, str]
    resolved: tuple[str, str] | None = None
    says: str = ""


def conditions_of(
    status: ObjectStatus, parent: ParentRef | None = None
) -> dict[str, tuple[str, str, str]]:
    if parent is not None:
        [entry] = [p for p in status.parents if p.parent_ref == parent]
        found = entry.conditions
    else:
        found = status.conditions
    return {c.type: (c.status, c.reason, c.message) for c in found}


def check(status: ObjectStatus, expect: Expect, parent: ParentRef | None = None) -> None:
    shown = conditions_of(status, parent)
    assert shown[ACCEPTED][:2] == expect.accepted, shown
    if expect.resolved is not None:
        assert shown[RESOLVED_REFS][:2] == expect.resolved, shown
    messages = " | ".join(message for _, _, message in shown.values())
    assert expect.says in messages, shown


HTTP_ROUTE_CASES = {
    "accepted: parent and backend exist": (
        (WEB, API),
        http_route(),
        Expect(
            ("True", "Accepted"), ("True", "ResolvedRefs"), "producer route for Service shop/web"
        ),
    ),
    "parent Service missing": (
        (API,),
        http_route(),
        Expect(
            ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), "Service shop/web not found"
        ),
    ),
    "parent port the Service lacks": (
        (WEB, API),
        http_route(parents=(ParentRef("web", port=8081),)),
        Expect(
            ("False", "NoMatchingParent"),
            None,
            "parentRef port 8081: Service shop/web has no such port",
        ),
    ),
    "parent sectionName the Service lacks": (
        (WEB, API),
        http_route(parents=(ParentRef("web", section_name="grpc"),)),
        Expect(("False", "NoMatchingParent"), None, "sectionName 'grpc'"),
    ),
    "parent port the Service has": (
        (WEB, API),
        http_route(parents=(ParentRef("web", port=9090),)),
        Expect(("True", "Accepted"), ("True", "ResolvedRefs")),
    ),
    "backend Service missing": (
        (WEB,),
        http_route(),
        Expect(
            ("True", "Accepted"),
            ("False", "BackendNotFound"),
            "spec.rules[0].backendRefs[0]: Service shop/api not found",
        ),
    ),
    "backend port missing": (
        (WEB, API),
        http_route(backends=(BackendObjectRef("api", port=81),)),
        Expect(
            ("True", "Accepted"), ("False", "BackendNotFound"), "Service shop/api has no port 81"
        ),
    ),
    "backend of another kind": (
        (WEB, API),
        http_route(backends=(BackendObjectRef("bucket", group="storage.example", kind="Bucket"),)),
        Expect(
            ("True", "Accepted"), ("False", "InvalidKind"), "kind Bucket of group storage.example"
        ),
    ),
    "backend in another namespace needs no ReferenceGrant in a mesh": (
        (WEB, OTHER),
        http_route(backends=(BackendObjectRef("db", namespace="other", port=5432),)),
        Expect(("True", "Accepted"), ("True", "ResolvedRefs")),
    ),
    "consumer route: parent in another namespace": (
        (OTHER, API),
        http_route(namespace="shop", parents=(ParentRef("db", namespace="other"),)),
        Expect(
            ("True", "Accepted"),
            ("True", "ResolvedRefs"),
            "consumer route for Service other/db: applies to requests from namespace shop",
        ),
    ),
}


@pytest.mark.parametrize(
    ("objects", "route", "expect"), HTTP_ROUTE_CASES.values(), ids=HTTP_ROUTE_CASES
)
def test_http_route_conditions(
    objects: tuple[MeshObject, ...], route: HTTPRoute, expect: Expect
) -> None:
    statuses = policy_conditions(mesh(*objects, route))
    status = statuses[ObjectKey(Kind.HTTP_ROUTE, "shop", route.name)]
    [parent] = route.parent_refs
    check(status, expect, parent)
    assert status.conditions == ()  # a route's conditions are per parent
    assert {c.observed_generation for p in status.parents for c in p.conditions} == {3}


def test_a_missing_mirror_backend_is_an_unresolved_ref() -> None:
    mirror = RequestMirrorFilter(BackendObjectRef("shadow", port=80))
    route = HTTPRoute(
        "shop",
        "r",
        (ParentRef("web"),),
        rules=(
            HTTPRouteRule(
                filters=(mirror,), backend_refs=(BackendRef(BackendObjectRef("api", port=80)),)
            ),
        ),
    )
    status = policy_conditions(mesh(WEB, API, route))[ObjectKey(Kind.HTTP_ROUTE, "shop", "r")]
    check(
        status,
        Expect(
            ("True", "Accepted"),
            ("False", "BackendNotFound"),
            "spec.rules[0].filters[0].requestMirror.backendRef: Service shop/shadow not found",
        ),
        route.parent_refs[0],
    )


def test_each_parent_is_judged_on_its_own() -> None:
    route = http_route(
        parents=(
            ParentRef("web"),
            ParentRef("gone"),
            ParentRef("gw", group="gateway.networking.k8s.io", kind="Gateway"),
        )
    )
    status = policy_conditions(mesh(WEB, API, route))[ObjectKey(Kind.HTTP_ROUTE, "shop", "r")]
    assert [p.parent_ref.name for p in status.parents] == ["web", "gone"]  # a Gateway is not ours
    check(status, Expect(("True", "Accepted")), ParentRef("web"))
    check(status, Expect(("False", "NoMatchingParent")), ParentRef("gone"))
    assert not status.accepted


def test_a_route_without_a_service_parent_gets_no_status_from_the_mesh() -> None:
    route = http_route(
        parents=(ParentRef("gw", group="gateway.networking.k8s.io", kind="Gateway"),)
    )
    assert ObjectKey(Kind.HTTP_ROUTE, "shop", "r") not in policy_conditions(mesh(WEB, route))


def test_routes_of_one_kind_for_one_parent_are_merged_not_rejected() -> None:
    first, second = http_route("a"), http_route("b")
    statuses = policy_conditions(mesh(WEB, API, first, second))
    assert all(statuses[ObjectKey(Kind.HTTP_ROUTE, "shop", n)].accepted for n in ("a", "b"))


def test_a_grpc_route_takes_a_service_port_from_an_http_route_of_the_same_namespace() -> None:
    grpc = GRPCRoute("shop", "g", (ParentRef("api"),), rules=(GRPCRouteRule(),))
    http = http_route("h", parents=(ParentRef("api"),))
    consumer = http_route("c", namespace="other", parents=(ParentRef("api", namespace="shop"),))
    statuses = policy_conditions(mesh(WEB, API, OTHER, grpc, http, consumer))
    check(
        statuses[ObjectKey(Kind.GRPC_ROUTE, "shop", "g")],
        Expect(("True", "Accepted")),
        ParentRef("api"),
    )
    check(
        statuses[ObjectKey(Kind.HTTP_ROUTE, "shop", "h")],
        Expect(("False", "Conflicted"), None, "GRPCRoute shop/g"),
        ParentRef("api"),
    )
    # A consumer route applies to other clients: no conflict with the producer's GRPCRoute.
    check(
        statuses[ObjectKey(Kind.HTTP_ROUTE, "other", "c")],
        Expect(("True", "Accepted")),
        ParentRef("api", namespace="shop"),
    )


def test_an_http_route_keeps_the_ports_a_grpc_route_does_not_bind() -> None:
    grpc = GRPCRoute("shop", "g", (ParentRef("web", port=9090),), rules=(GRPCRouteRule(),))
    http = http_route("h")
    status = policy_conditions(mesh(WEB, API, grpc, http))[ObjectKey(Kind.HTTP_ROUTE, "shop", "h")]
    check(
        status,
        Expect(("True", "Accepted"), None, "not on port 9090 (GRPCRoute shop/g)"),
        ParentRef("web"),
    )


POLICY_CASES = {
    "accepted: its Service exists": (
        (WEB,),
        (policy("p", ("Service", "web")),),
        Expect(("True", "Accepted"), ("True", "ResolvedRefs"), "governs Service shop/web"),
    ),
    "target not found": (
        (WEB,),
        (policy("p", ("Service", "gone")),),
        Expect(
            ("False", "TargetNotFound"),
            ("False", "TargetNotFound"),
            "spec.targetRefs[0]: Service shop/gone not found",
        ),
    ),
    "one target of two not found: accepted, refs unresolved": (
        (WEB,),
        (policy("p", ("Service", "web"), ("Service", "gone")),),
        Expect(
            ("True", "Accepted"),
            ("False", "TargetNotFound"),
            "spec.targetRefs[1]: Service shop/gone not found",
        ),
    ),
    "conflicted: an older policy targets the same Service": (
        (WEB,),
        (
            policy("old", ("Service", "web"), created="2026-01-01T00:00:00Z"),
            policy("p", ("Service", "web"), created="2026-03-01T00:00:00Z"),
        ),
        Expect(
            ("False", "Conflicted"),
            ("True", "ResolvedRefs"),
            "BackendPolicy shop/old takes precedence for Service shop/web",
        ),
    ),
    "conflicted: without timestamps the first by name wins": (
        (WEB,),
        (policy("a", ("Service", "web")), policy("p", ("Service", "web"))),
        Expect(("False", "Conflicted"), None, "BackendPolicy shop/a takes precedence"),
    ),
    "the older policy is accepted": (
        (WEB,),
        (
            policy("p", ("Service", "web"), created="2026-01-01T00:00:00Z"),
            policy("young", ("Service", "web"), created="2026-03-01T00:00:00Z"),
        ),
        Expect(("True", "Accepted"), ("True", "ResolvedRefs"), "governs Service shop/web"),
    ),
    "namespace default": (
        (WEB,),
        (policy("p"),),
        Expect(("True", "Accepted"), ("True", "ResolvedRefs"), "governs namespace shop"),
    ),
    "namespace default in an empty namespace": (
        (),
        (policy("p"),),
        Expect(("True", "Accepted"), None, "governs namespace shop"),
    ),
    "two namespace defaults conflict even with no Service yet": (
        (),
        (policy("a"), policy("p")),
        Expect(
            ("False", "Conflicted"),
            None,
            "BackendPolicy shop/a takes precedence for namespace shop",
        ),
    ),
    "a namespace default is overridden, not conflicted, by a Service's own": (
        (WEB,),
        (policy("p"), policy("own", ("Service", "web"))),
        Expect(("True", "Accepted"), None, "governs namespace shop"),
    ),
    "mesh default in the root namespace": (
        (WEB,),
        (policy("p", namespace="mesh-system"),),
        Expect(("True", "Accepted"), None, "governs every namespace (mesh default)"),
    ),
    "target of an unsupported kind": (
        (WEB,),
        (policy("p", ("Deployment", "web"), group="apps"),),
        Expect(
            ("False", "Invalid"),
            ("False", "InvalidKind"),
            "spec.targetRefs[0]: kind Deployment of group apps",
        ),
    ),
    "target in another namespace from outside the root namespace": (
        (OTHER,),
        (policy("p", ("Service", "db"), target_namespace="other"),),
        Expect(
            ("False", "Invalid"),
            ("False", "RefNotPermitted"),
            "spec.targetRefs[0].namespace: only a policy in the root namespace mesh-system",
        ),
    ),
    "the root namespace may target a Service anywhere": (
        (OTHER,),
        (policy("p", ("Service", "db"), namespace="mesh-system", target_namespace="other"),),
        Expect(("True", "Accepted"), ("True", "ResolvedRefs"), "governs Service other/db"),
    ),
}


@pytest.mark.parametrize(
    ("services", "policies", "expect"), POLICY_CASES.values(), ids=POLICY_CASES
)
def test_backend_policy_conditions(
    services: tuple[Service, ...], policies: tuple[BackendPolicy, ...], expect: Expect
) -> None:
    subject = next(p for p in policies if p.name == "p")
    statuses = policy_conditions(mesh(*services, *policies))
    status = statuses[ObjectKey(Kind.BACKEND_POLICY, subject.namespace, "p")]
    check(status, expect)
    assert status.parents == ()
    assert {c.observed_generation for c in status.conditions} == {2}


REJECTED = (
    "BackendPolicy shop/p: translating it raised ValueError: "
    "spec.loadBalancer.ringHash.minimumRingSize: too large"
)


@pytest.mark.parametrize("in_mesh", [True, False], ids=["last good version kept", "never accepted"])
def test_an_object_the_pipeline_rejected_is_not_accepted_and_says_why(in_mesh: bool) -> None:
    key = ObjectKey(Kind.BACKEND_POLICY, "shop", "p")
    snapshot = mesh(WEB, *([policy("p", ("Service", "web"))] if in_mesh else []))
    status = policy_conditions(snapshot, {key: REJECTED})[key]
    check(status, Expect(("False", "Invalid"), None, "spec.loadBalancer.ringHash.minimumRingSize"))
    assert (status.rejected, status.in_mesh) == (True, in_mesh)


def test_a_rejected_route_is_not_accepted_on_any_parent_it_had() -> None:
    route = http_route()
    key = ObjectKey(Kind.HTTP_ROUTE, "shop", "r")
    status = policy_conditions(
        mesh(WEB, API, route), {key: "HTTPRoute shop/r: spec.rules[0]: bad"}
    )[key]
    check(status, Expect(("False", "Invalid"), None, "spec.rules[0]: bad"))
    check(status, Expect(("False", "Invalid")), ParentRef("web"))


def test_a_route_with_rules_left_out_stays_accepted_and_says_which_are_partially_invalid() -> None:
    route = http_route()
    key = ObjectKey(Kind.HTTP_ROUTE, "shop", "r")
    partial = {key: ("spec.rules[1].matches[0].path.value: Envoy's RE2 refuses it",)}
    status = policy_conditions(mesh(WEB, API, route), partial=partial)[key]
    check(status, Expect(("True", "Accepted")), ParentRef("web"))
    found = status.condition("PartiallyInvalid", ParentRef("web"))
    assert found is not None
    assert (found.status, found.reason) == ("True", "UnsupportedValue")
    assert "spec.rules[1].matches[0].path.value" in found.message
    assert found.observed_generation == route.generation
    unaffected = policy_conditions(mesh(WEB, API, route))[key]
    assert unaffected.condition("PartiallyInvalid", ParentRef("web")) is None


def test_rejections_of_other_kinds_are_not_statuses() -> None:
    key = ObjectKey(Kind.SERVICE, "shop", "web")
    assert key not in policy_conditions(mesh(WEB), {key: "Service shop/web: bad"})


def test_conditions_are_computed_once_per_snapshot() -> None:
    snapshot = mesh(WEB, API, http_route())
    first, second = policy_conditions(snapshot), policy_conditions(snapshot)
    assert first == second
    assert (
        first[ObjectKey(Kind.HTTP_ROUTE, "shop", "r")]
        is second[ObjectKey(Kind.HTTP_ROUTE, "shop", "r")]
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("HTTPRoute shop/web", ObjectKey(Kind.HTTP_ROUTE, "shop", "web")),
        (
            "BackendPolicy mesh-system/default",
            ObjectKey(Kind.BACKEND_POLICY, "mesh-system", "default"),
        ),
        ("Gateway shop/web", None),
        ("HTTPRoute shop/<unnamed>", None),
        ("object", None),
        (None, None),
    ],
)
def test_object_refs_in_error_texts_name_their_objects(
    text: str | None, key: ObjectKey | None
) -> None:
    assert parse_object_ref(text) == key
