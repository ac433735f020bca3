"""Spec: HTTPRoutes and GRPCRoutes bound to Services (GAMMA) in, each caller namespace's routes out.

Model values in (routes as the source hands them, CRD defaults applied),
Envoy `Route`s out, read from the same outbound tables the pipeline serves.
What runs on real Envoy is in tests/test_e2e_mesh_routes.py.
"""

from __future__ import annotations

import re

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format
from translate_builders import grpc, http, mesh, service, upserts

from xds_server.model import ChangeSet, Service
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatch,
    HeaderModifier,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    ParentRef,
    PathMatch,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifierFilter,
    RequestMirrorFilter,
    RequestRedirectFilter,
    ResponseHeaderModifierFilter,
    RouteRetry,
    RouteTimeouts,
    URLRewriteFilter,
)
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.translate import OutboundRouteTables, outbound_route_tables
from xds_server.translate.mesh_route_actions import INVALID_BACKEND_CLUSTER
from xds_server.translate.provenance import stamped_sources

WEB = service("web", http(8080))
V1 = service("web-v1", http(8080))
V2 = service("web-v2", http(8080))
MIRROR = service("shadow", http(8080))
OTHER = service("other", http(8080), namespace="shop")
HOST = "web.default.svc.cluster.local:8080"
Obj = Service | HTTPRoute | GRPCRoute | BackendPolicy


def cluster(name: str, namespace: str = "default", port: int = 8080) -> str:
    return f"outbound|{port}||{name}.{namespace}.svc.cluster.local"


def to(
    name: str,
    weight: int = 1,
    namespace: str | None = None,
    port: int = 8080,
    filters: tuple[object, ...] = (),
) -> BackendRef:
    return BackendRef(BackendObjectRef(name, namespace=namespace, port=port), weight, filters)  # type: ignore[arg-type]


def route(
    *rules: HTTPRouteRule,
    name: str = "r",
    namespace: str = "default",
    parent: str = "web",
    parent_namespace: str | None = None,
    port: int | None = None,
    created: str | None = None,
) -> HTTPRoute:
    return HTTPRoute(
        namespace=namespace,
        name=name,
        parent_refs=(ParentRef(parent, namespace=parent_namespace, port=port),),
        rules=rules,
        creation_timestamp=created,
    )


def greeter_route(*rules: GRPCRouteRule) -> GRPCRoute:
    """GRPCRoute default/g with `rules`, bound to Service `greeter`."""
    return GRPCRoute("default", "g", parent_refs=(ParentRef("greeter"),), rules=rules)


def rule(
    *matches: HTTPRouteMatch, backends: tuple[BackendRef, ...] = (), **kw: object
) -> HTTPRouteRule:
    return HTTPRouteRule(matches=matches or (HTTPRouteMatch(),), backend_refs=backends, **kw)  # type: ignore[arg-type]


def prefix(value: str, **kw: object) -> HTTPRouteMatch:
    return HTTPRouteMatch(path=PathMatch(MatchType.PATH_PREFIX, value), **kw)  # type: ignore[arg-type]


def exact(value: str, **kw: object) -> HTTPRouteMatch:
    return HTTPRouteMatch(path=PathMatch(MatchType.EXACT, value), **kw)  # type: ignore[arg-type]


def vhost(
    *objects: Obj, caller: str = "default", host: str = HOST
) -> route_components_pb2.VirtualHost:
    config = outbound_route_tables(mesh(*objects)).config(caller)
    (found,) = [vh for vh in config.virtual_hosts if host in vh.domains]
    return found


def routes(*objects: Obj, caller: str = "default") -> list[route_components_pb2.Route]:
    return list(vhost(*objects, caller=caller).routes)


def as_dict(message: object) -> dict[str, object]:
    result: dict[str, object] = json_format.MessageToDict(message)  # type: ignore[arg-type]
    return result


def policy(spec: api.BackendPolicySpec, name: str = "p") -> BackendPolicy:
    spec.target_refs.add(kind="Service", name="web")
    return BackendPolicy.of("default", name, spec)


# -- binding ---------------------------------------------------------------------------


def test_a_port_no_route_binds_keeps_the_default_route() -> None:
    (only,) = routes(WEB, V1)
    assert (only.name, only.match.prefix, only.route.cluster) == ("default", "/", cluster("web"))
    assert (
        only.route.retry_policy.retry_on == "connect-failure,refused-stream,unavailable,cancelled"
    )


def test_a_bound_route_replaces_the_default_route_and_leaves_unmatched_requests_to_404() -> None:
    found = routes(WEB, V1, route(rule(prefix("/api"), backends=(to("web-v1"),))))
    assert [r.match.path_separated_prefix for r in found] == ["/api"]  # nothing else: 404
    assert found[0].route.cluster == cluster("web-v1")
    assert found[0].name == "HTTPRoute/default/r/0"


@pytest.mark.parametrize(
    ("port", "section", "bound"),
    [
        (None, None, True),
        (8080, None, True),
        (9090, None, False),
        (None, "http", True),
        (None, "admin", False),
    ],
)
def test_a_parent_ref_binds_every_port_or_the_one_it_names(
    port: int | None, section: str | None, bound: bool
) -> None:
    given = HTTPRoute(
        "default",
        "r",
        parent_refs=(ParentRef("web", port=port, section_name=section),),
        rules=(rule(exact("/x"), backends=(to("web-v1"),)),),
    )
    found = routes(WEB, V1, given)
    assert (found[0].name != "default") is bound


def test_a_route_naming_another_kind_of_parent_binds_nothing() -> None:
    given = HTTPRoute(
        "default",
        "r",
        parent_refs=(ParentRef("web", group="gateway.networking.k8s.io", kind="Gateway"),),
        rules=(rule(backends=(to("web-v1"),)),),
    )
    assert [r.name for r in routes(WEB, V1, given)] == ["default"]


# -- producers and consumers --------------------------------------------------------

PRODUCER = route(rule(backends=(to("web-v1"),)), name="producer")
CONSUMER = route(
    rule(backends=(to("web-v2", namespace="default"),)),
    name="consumer",
    namespace="shop",
    parent_namespace="default",
)


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("default", cluster("web-v1")),  # the producer's namespace
        ("shop", cluster("web-v2")),  # the consumer route replaces the producer's for shop
        ("elsewhere", cluster("web-v1")),  # every other caller: the producer route
    ],
)
def test_a_consumer_route_governs_only_its_own_namespace(caller: str, expected: str) -> None:
    found = routes(WEB, V1, V2, OTHER, PRODUCER, CONSUMER, caller=caller)
    assert [r.route.cluster for r in found] == [expected]


def test_only_the_consumer_namespace_table_differs() -> None:
    tables = outbound_route_tables(mesh(WEB, V1, V2, OTHER, PRODUCER, CONSUMER))
    assert tables.encoded("elsewhere") != tables.encoded("shop")
    alone = outbound_route_tables(mesh(WEB, V1, V2, OTHER, PRODUCER))
    assert tables.encoded("elsewhere") == alone.encoded("elsewhere")
    assert tables.encoded("shop") != alone.encoded("shop")
    shop = tables.config("shop")
    assert {vh.name for vh in shop.virtual_hosts} == {
        vh.name for vh in alone.config("shop").virtual_hosts
    }
    assert "HTTPRoute/shop/consumer" in tables.sources("shop")
    assert "HTTPRoute/shop/consumer" not in tables.sources("elsewhere")
    assert "HTTPRoute/default/producer" not in tables.sources("shop")
    assert "HTTPRoute/default/producer" in tables.sources("default")


def test_a_consumer_route_without_producer_routes_governs_its_namespace_alone() -> None:
    assert routes(WEB, V2, OTHER, CONSUMER, caller="default")[0].name == "default"
    assert routes(WEB, V2, OTHER, CONSUMER, caller="shop")[0].route.cluster == cluster("web-v2")


def test_a_virtual_host_built_from_routes_names_them_and_its_service() -> None:
    host = vhost(WEB, V1, V2, OTHER, PRODUCER, CONSUMER, caller="shop")
    assert stamped_sources(host) == ("HTTPRoute/shop/consumer", "Service/default/web")


# -- precedence -----------------------------------------------------------------------


def test_precedence_across_every_rule_of_every_route_follows_the_spec() -> None:
    hdr = (HeaderMatch("x-a", "1"),)
    old = route(
        rule(prefix("/")),
        rule(prefix("/a")),
        rule(prefix("/a/b")),
        rule(prefix("/a", headers=hdr)),
        rule(prefix("/a", method="GET")),
        rule(prefix("/a", query_params=(QueryParamMatch("q", "1"),))),
        name="old",
        created="2024-01-01T00:00:00Z",
    )
    new = route(
        rule(exact("/a")),
        rule(prefix("/a")),  # ties with old's /a: the older route wins
        rule(HTTPRouteMatch(path=PathMatch(MatchType.REGULAR_EXPRESSION, "/a/.*"))),
        name="new",
        created="2024-06-01T00:00:00+00:00",
    )
    assert [r.name for r in routes(WEB, new, old)] == [
        "HTTPRoute/default/new/0",  # Exact
        "HTTPRoute/default/new/2",  # RegularExpression
        "HTTPRoute/default/old/2",  # the longest prefix
        "HTTPRoute/default/old/4",  # then a method match
        "HTTPRoute/default/old/3",  # then more headers
        "HTTPRoute/default/old/5",  # then more query parameters
        "HTTPRoute/default/old/1",  # then the oldest route
        "HTTPRoute/default/new/1",
        "HTTPRoute/default/old/0",  # `/` last
    ]


@pytest.mark.parametrize(
    ("winner", "loser"),
    [
        (
            dict(created="2024-01-01T00:00:00Z", name="b"),
            dict(created="2024-01-02T00:00:00Z", name="a"),
        ),
        (
            dict(created="2024-01-01T00:00:00+02:00", name="b"),
            dict(created="2024-01-01T00:00:00Z", name="a"),
        ),
        (dict(created="2024-01-01T00:00:00Z", name="b"), dict(created=None, name="a")),
        (dict(created=None, name="a"), dict(created=None, name="b")),
    ],
)
def test_ties_go_to_the_oldest_route_then_the_first_by_name(
    winner: dict[str, str], loser: dict[str, str]
) -> None:
    first = route(rule(prefix("/x"), backends=(to("web-v1"),)), **winner)  # type: ignore[arg-type]
    second = route(rule(prefix("/x"), backends=(to("web-v2"),)), **loser)  # type: ignore[arg-type]
    assert [r.route.cluster for r in routes(WEB, V1, V2, second, first)] == [
        cluster("web-v1"),
        cluster("web-v2"),
    ]


def test_rules_of_one_route_keep_their_order_on_ties() -> None:
    given = route(
        rule(prefix("/x"), backends=(to("web-v1"),)), rule(prefix("/x"), backends=(to("web-v2"),))
    )
    assert [r.route.cluster for r in routes(WEB, V1, V2, given)] == [
        cluster("web-v1"),
        cluster("web-v2"),
    ]


# -- matches ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (prefix("/"), {"prefix": "/"}),
        (prefix("/foo"), {"pathSeparatedPrefix": "/foo"}),
        (prefix("/foo/"), {"pathSeparatedPrefix": "/foo"}),  # a trailing / is ignored
        (exact("/foo"), {"path": "/foo"}),
        (
            HTTPRouteMatch(path=PathMatch(MatchType.REGULAR_EXPRESSION, "/v[0-9]+/.*")),
            {"safeRegex": {"regex": "/v[0-9]+/.*"}},
        ),
        (
            prefix("/", headers=(HeaderMatch("X-Env", "canary"),)),
            {"prefix": "/", "headers": [{"name": "x-env", "stringMatch": {"exact": "canary"}}]},
        ),
        (
            prefix(
                "/",
                headers=(
                    HeaderMatch("x-id", "[0-9]+", MatchType.REGULAR_EXPRESSION),
                    HeaderMatch("X-ID", "ignored"),
                ),
            ),
            {
                "prefix": "/",
                "headers": [{"name": "x-id", "stringMatch": {"safeRegex": {"regex": "[0-9]+"}}}],
            },
        ),
        (
            prefix("/", query_params=(QueryParamMatch("v", "2"),)),
            {"prefix": "/", "queryParameters": [{"name": "v", "stringMatch": {"exact": "2"}}]},
        ),
        (
            prefix("/", method="POST"),
            {"prefix": "/", "headers": [{"name": ":method", "stringMatch": {"exact": "POST"}}]},
        ),
    ],
)
def test_http_matches(match: HTTPRouteMatch, expected: dict[str, object]) -> None:
    (found,) = routes(WEB, V1, route(rule(match, backends=(to("web-v1"),))))
    assert as_dict(found.match) == expected


SAY = "/mesh.test.Greeter/Say"


@pytest.mark.parametrize(
    ("method", "expected", "matches", "misses"),
    [
        (
            GRPCMethodMatch("mesh.test.Greeter", "Say"),
            {"path": SAY},
            [SAY],
            ["/mesh.test.Greeter/Count"],
        ),
        (
            GRPCMethodMatch("mesh.test.Greeter"),
            {"prefix": "/mesh.test.Greeter/"},
            [SAY],
            ["/other/Say"],
        ),
        (GRPCMethodMatch(None, "Say"), None, [SAY, "/x.Y/Say"], ["/x.Y/Sayer", "/Say"]),
        (
            GRPCMethodMatch("mesh\\..*", "S.*", MatchType.REGULAR_EXPRESSION),
            None,
            [SAY],
            ["/other/Say"],
        ),
        (None, {"prefix": "/"}, [SAY], []),
    ],
)
def test_grpc_method_matches(
    method: GRPCMethodMatch | None,
    expected: dict[str, str] | None,
    matches: list[str],
    misses: list[str],
) -> None:
    given = greeter_route(
        GRPCRouteRule(
            matches=(GRPCRouteMatch(method=method),), backend_refs=(to("greeter", port=9090),)
        )
    )
    greeter = service("greeter", grpc(9090))
    config = outbound_route_tables(mesh(greeter, given)).config("default")
    (found,) = config.virtual_hosts[0].routes
    if expected is not None:
        assert as_dict(found.match) == expected
    else:
        pattern = found.match.safe_regex.regex
        assert all(re.fullmatch(pattern, path) for path in matches)
        assert not any(re.fullmatch(pattern, path) for path in misses)
    assert found.route.cluster == cluster("greeter", port=9090)
    assert found.route.max_stream_duration.HasField("grpc_timeout_header_max")


def test_grpc_precedence_prefers_the_longer_service_then_method_then_headers() -> None:
    def match(service: str | None, method: str | None, headers: int = 0) -> GRPCRouteMatch:
        return GRPCRouteMatch(
            GRPCMethodMatch(service, method),
            tuple(HeaderMatch(f"h{i}", "1") for i in range(headers)),
        )

    given = greeter_route(
        *(
            GRPCRouteRule(
                matches=(m,), backend_refs=(BackendRef(BackendObjectRef("greeter", port=9090)),)
            )
            for m in (
                match(None, "Say"),
                match("a.B", None),
                match("a.B", "Say"),
                match("a.B", "Say", 1),
            )
        ),
    )
    config = outbound_route_tables(mesh(service("greeter", grpc(9090)), given)).config("default")
    assert [r.name for r in config.virtual_hosts[0].routes] == [
        "GRPCRoute/default/g/3",
        "GRPCRoute/default/g/2",
        "GRPCRoute/default/g/1",
        "GRPCRoute/default/g/0",
    ]


def test_a_grpc_route_wins_over_http_routes_on_the_same_port() -> None:
    greeter = service("greeter", grpc(9090))
    http_route = route(rule(backends=(to("greeter", port=9090),)), parent="greeter", name="h")
    grpc_route = greeter_route(
        GRPCRouteRule(backend_refs=(BackendRef(BackendObjectRef("greeter", port=9090)),))
    )
    tables = outbound_route_tables(mesh(greeter, http_route, grpc_route))
    assert [r.name for r in tables.config("default").virtual_hosts[0].routes] == [
        "GRPCRoute/default/g/0"
    ]
    assert [(i.route, i.message.split(":")[0]) for i in tables.issues] == [
        ("HTTPRoute/default/h", "Conflicted")
    ]


# -- backends ---------------------------------------------------------------------------


def test_weighted_backends_split_traffic_and_weight_zero_is_left_out() -> None:
    given = route(rule(backends=(to("web-v1", 80), to("web-v2", 20), to("web", 0))))
    (found,) = routes(WEB, V1, V2, given)
    assert as_dict(found.route.weighted_clusters) == {
        "clusters": [
            {"name": cluster("web-v1"), "weight": 80},
            {"name": cluster("web-v2"), "weight": 20},
        ]
    }


def test_a_missing_backend_keeps_its_share_which_answers_500() -> None:
    missing_port = BackendRef(BackendObjectRef("web-v2", port=1234), 1)
    given = route(rule(backends=(to("web-v1", 2), to("nobody", 1), missing_port)))
    (found,) = routes(WEB, V1, V2, given)
    assert [(c.name, c.weight.value) for c in found.route.weighted_clusters.clusters] == [
        (cluster("web-v1"), 2),
        (INVALID_BACKEND_CLUSTER, 2),
    ]
    assert (
        found.route.cluster_not_found_response_code
        == route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR
    )


@pytest.mark.parametrize(
    "backends", [(), (to("nobody"),), (to("web-v1", 0),)], ids=["none", "missing", "weight-0"]
)
def test_a_rule_with_no_backend_left_answers_500(backends: tuple[BackendRef, ...]) -> None:
    (found,) = routes(WEB, V1, route(rule(backends=backends)))
    assert found.direct_response.status == 500


def test_a_backend_ref_without_a_port_uses_the_parents_port() -> None:
    given = route(rule(backends=(BackendRef(BackendObjectRef("web-v1")),)))
    assert routes(WEB, V1, given)[0].route.cluster == cluster("web-v1")


def test_backend_filters_go_on_their_weighted_cluster() -> None:
    tag = RequestHeaderModifierFilter(HeaderModifier(set=(("x-backend", "v1"),)))
    given = route(rule(backends=(to("web-v1", filters=(tag,)), to("web-v2"))))
    (found,) = routes(WEB, V1, V2, given)
    first = found.route.weighted_clusters.clusters[0]
    assert [(h.header.key, h.header.value) for h in first.request_headers_to_add] == [
        ("x-backend", "v1")
    ]


# -- filters ----------------------------------------------------------------------------


def test_header_modifiers_set_add_and_remove() -> None:
    request = RequestHeaderModifierFilter(
        HeaderModifier(set=(("X-Set", "1"),), add=(("x-add", "2"),), remove=("x-drop",))
    )
    response = ResponseHeaderModifierFilter(HeaderModifier(set=(("x-resp", "3"),)))
    (found,) = routes(WEB, V1, route(rule(backends=(to("web-v1"),), filters=(request, response))))
    assert as_dict(found)["requestHeadersToAdd"] == [
        {"header": {"key": "x-set", "value": "1"}, "appendAction": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-add", "value": "2"}},  # APPEND_IF_EXISTS_OR_ADD is the default
    ]
    assert list(found.request_headers_to_remove) == ["x-drop"]
    assert [h.header.key for h in found.response_headers_to_add] == ["x-resp"]


def test_a_mirror_sends_a_share_of_copies_to_its_backend() -> None:
    mirror = RequestMirrorFilter(BackendObjectRef("shadow", port=8080), percent=25)
    gone = RequestMirrorFilter(BackendObjectRef("nobody", port=8080))
    (found,) = routes(
        WEB, V1, MIRROR, route(rule(backends=(to("web-v1"),), filters=(mirror, gone)))
    )
    assert as_dict(found.route)["requestMirrorPolicies"] == [
        {
            "cluster": cluster("shadow"),
            "runtimeFraction": {"defaultValue": {"numerator": 250000, "denominator": "MILLION"}},
        }
    ]


def rewritten(
    path: str,
    action: route_components_pb2.RouteAction | route_components_pb2.RedirectAction,
    matched: str,
) -> str:
    """The path Envoy forwards: `prefix_rewrite` swaps the matched prefix, a regex substitutes."""
    if action.prefix_rewrite:
        return action.prefix_rewrite + path[len(matched.rstrip("/")) :]
    pattern, substitution = action.regex_rewrite.pattern.regex, action.regex_rewrite.substitution
    return re.sub(pattern, substitution.replace("\\\\", "\\"), path, count=1)


# The spec's table (HTTPPathModifier.replacePrefixMatch), plus the `/` prefix.
PREFIX_TABLE = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    ("/bar", "/", "/xyz", "/xyz/bar"),
]


@pytest.mark.parametrize(("path", "matched", "replacement", "expected"), PREFIX_TABLE)
def test_replace_prefix_match_follows_the_specs_table(
    path: str, matched: str, replacement: str, expected: str
) -> None:
    rewrite = URLRewriteFilter(
        path=PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, replacement)
    )
    (found,) = routes(
        WEB, V1, route(rule(prefix(matched), backends=(to("web-v1"),), filters=(rewrite,)))
    )
    assert rewritten(path, found.route, matched) == expected
    redirect = RequestRedirectFilter(
        path=PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, replacement)
    )
    (moved,) = routes(WEB, route(rule(prefix(matched), filters=(redirect,))))
    assert rewritten(path, moved.redirect, matched) == expected


def test_url_rewrite_of_the_hostname_and_the_full_path() -> None:
    rewrite = URLRewriteFilter(
        hostname="elsewhere.example", path=PathModifier(PathModifierType.REPLACE_FULL_PATH, "/new")
    )
    (found,) = routes(
        WEB, V1, route(rule(prefix("/old"), backends=(to("web-v1"),), filters=(rewrite,)))
    )
    assert found.route.host_rewrite_literal == "elsewhere.example"
    assert rewritten("/old/deep", found.route, "/old") == "/new"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (RequestRedirectFilter(), {"portRedirect": 8080, "responseCode": "FOUND"}),
        (
            RequestRedirectFilter(status_code=301, hostname="example.org"),
            {
                "hostRedirect": "example.org",
                "portRedirect": 8080,
                "responseCode": "MOVED_PERMANENTLY",
            },
        ),  # unset port: the Service port
        (
            RequestRedirectFilter(scheme="https", hostname="example.org", status_code=308),
            {
                "schemeRedirect": "https",
                "hostRedirect": "example.org",
                "responseCode": "PERMANENT_REDIRECT",
            },
        ),
        (
            RequestRedirectFilter(scheme="https"),
            {"schemeRedirect": "https", "portRedirect": 443, "responseCode": "FOUND"},
        ),
        (
            RequestRedirectFilter(port=8083, status_code=303),
            {"portRedirect": 8083, "responseCode": "SEE_OTHER"},
        ),
        (
            RequestRedirectFilter(hostname="example.org", port=80, status_code=307),
            {"hostRedirect": "example.org", "responseCode": "TEMPORARY_REDIRECT"},
        ),
        (
            RequestRedirectFilter(path=PathModifier(PathModifierType.REPLACE_FULL_PATH, "/moved")),
            {"pathRedirect": "/moved", "portRedirect": 8080, "responseCode": "FOUND"},
        ),
    ],
)
def test_redirects(given: RequestRedirectFilter, expected: dict[str, object]) -> None:
    (found,) = routes(WEB, route(rule(prefix("/old"), filters=(given,))))
    result = as_dict(found.redirect)
    result.setdefault("responseCode", "MOVED_PERMANENTLY")  # the enum's zero value is not printed
    assert result == expected | (
        {"responseCode": "MOVED_PERMANENTLY"} if "responseCode" not in expected else {}
    )


# -- retries and timeouts ---------------------------------------------------------------


def test_timeouts_and_retry_of_a_rule() -> None:
    given = rule(
        backends=(to("web-v1"),),
        timeouts=RouteTimeouts(request=2.5, backend_request=0.5),
        retry=RouteRetry(codes=(503, 500), attempts=3, backoff=0.05),
    )
    (found,) = routes(WEB, V1, route(given))
    action = as_dict(found.route)
    assert action["timeout"] == "2.500s"
    retry = action["retryPolicy"]
    assert isinstance(retry, dict)
    assert retry["retryOn"] == "connect-failure,refused-stream,reset,retriable-status-codes"
    assert (retry["numRetries"], retry["retriableStatusCodes"]) == (3, [500, 503])
    assert (retry["perTryTimeout"], retry["retryBackOff"]) == ("0.500s", {"baseInterval": "0.050s"})


def test_backend_request_alone_bounds_each_attempt_not_the_route() -> None:
    (found,) = routes(
        WEB, V1, route(rule(backends=(to("web-v1"),), timeouts=RouteTimeouts(backend_request=1)))
    )
    assert found.route.timeout.ToNanoseconds() == 0  # none: see the conformance tests below
    assert found.route.retry_policy.per_try_timeout.seconds == 1


def test_a_backend_policys_retry_and_timeouts_shape_the_default_route() -> None:
    spec = api.BackendPolicySpec()
    spec.retry.attempts.value = 4
    spec.timeouts.idle.FromSeconds(30)
    tables = outbound_route_tables(mesh(WEB, policy(spec)))
    host = next(vh for vh in tables.config("default").virtual_hosts if HOST in vh.domains)
    (found,) = host.routes
    assert found.route.retry_policy.num_retries.value == 4
    assert list(found.route.retry_policy.retriable_status_codes) == [503]
    assert found.route.timeout.seconds == 15  # timeouts without request: the documented default
    assert found.route.idle_timeout.seconds == 30
    assert "BackendPolicy/default/p" in stamped_sources(host)


def test_a_rules_own_retry_wins_over_the_policys() -> None:
    spec = api.BackendPolicySpec()
    spec.retry.attempts.value = 4
    own = route(
        rule(exact("/own"), backends=(to("web-v1"),), retry=RouteRetry(attempts=1)),
        rule(prefix("/"), backends=(to("web-v1"),)),
    )
    found = routes(WEB, V1, own, policy(spec))
    assert [r.route.retry_policy.num_retries.value for r in found] == [1, 4]


def test_a_policy_without_retry_or_timeouts_leaves_routes_alone() -> None:
    spec = api.BackendPolicySpec()
    spec.connect_timeout.FromSeconds(1)
    assert routes(WEB, policy(spec)) == routes(WEB)


# -- what Envoy would reject --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (
            rule(HTTPRouteMatch(path=PathMatch(MatchType.REGULAR_EXPRESSION, "(?=x)"))),
            "spec.rules[0].matches[0].path.value",
        ),
        (
            rule(HTTPRouteMatch(path=PathMatch(MatchType.REGULAR_EXPRESSION, "a{200}"))),
            "spec.rules[0].matches[0].path.value",
        ),
        (
            rule(
                prefix("/", headers=(HeaderMatch("x", "(", MatchType.REGULAR_EXPRESSION),)),
                backends=(),
            ),
            "spec.rules[0].matches[0].headers[0].value",
        ),
        (rule(exact("nope")), "spec.rules[0].matches[0].path.value"),
        (
            rule(
                exact("/x"),
                filters=(RequestHeaderModifierFilter(HeaderModifier(set=(("Host", "x"),))),),
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
        ),
        (
            rule(
                exact("/x"),
                filters=(
                    URLRewriteFilter(
                        path=PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, "/y")
                    ),
                ),
            ),
            "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
        ),
        (
            rule(filters=(RequestRedirectFilter(status_code=304),)),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
        ),
        (
            rule(filters=(RequestRedirectFilter(), URLRewriteFilter(hostname="x"))),
            "spec.rules[0].filters[0]",
        ),
    ],
)
def test_a_rule_envoy_would_reject_is_left_out_naming_its_field(
    bad: HTTPRouteRule, field: str
) -> None:
    good = rule(prefix("/good"), backends=(to("web-v1"),))
    tables = outbound_route_tables(mesh(WEB, V1, OTHER, route(bad, good)))
    host = next(vh for vh in tables.config("default").virtual_hosts if HOST in vh.domains)
    assert [r.name for r in host.routes] == ["HTTPRoute/default/r/1"]
    (issue,) = tables.issues
    assert (issue.route, issue.field) == ("HTTPRoute/default/r", field)


def test_a_route_with_no_valid_rule_binds_nothing_and_other_services_are_untouched() -> None:
    bad = route(rule(HTTPRouteMatch(path=PathMatch(MatchType.REGULAR_EXPRESSION, "("))))
    tables = outbound_route_tables(mesh(WEB, OTHER, bad))
    assert tables.encoded("default") == outbound_route_tables(mesh(WEB, OTHER)).encoded("default")
    assert len(tables.issues) == 1


def test_every_route_table_parses_and_names_no_unknown_cluster() -> None:
    objects = (WEB, V1, V2, MIRROR, OTHER, PRODUCER, CONSUMER)
    tables = outbound_route_tables(mesh(*objects))
    for caller in ("default", "shop", "other"):
        config = route_pb2.RouteConfiguration.FromString(tables.encoded(caller))
        assert config.SerializeToString(deterministic=True) == tables.encoded(caller)


# -- the memo ------------------------------------------------------------------------------


def hosts(tables: OutboundRouteTables) -> dict[str, object]:
    return {host.name: host for _, host in tables._ports}


def test_an_unrelated_change_reuses_every_routed_host() -> None:
    before = mesh(WEB, V1, V2, OTHER, PRODUCER)
    first = OutboundRouteTables(before)
    after, _ = before.apply(upserts(service("new", http(80), namespace="shop")))
    second = OutboundRouteTables(after, first)
    assert hosts(second)[HOST] is hosts(first)[HOST]


@pytest.mark.parametrize(
    "change",
    [
        upserts(route(rule(backends=(to("web-v2"),)), name="producer")),  # the route
        upserts(service("web-v1", http(9090))),  # the backend's ports
        upserts(policy(api.BackendPolicySpec(timeouts=api.Timeouts()))),  # the policy
    ],
    ids=["route", "backend-port", "policy"],
)
def test_a_change_to_any_input_of_a_routed_host_rebuilds_it(change: ChangeSet) -> None:
    before = mesh(WEB, V1, V2, OTHER, PRODUCER)
    first = OutboundRouteTables(before)
    after, _ = before.apply(change)
    second = OutboundRouteTables(after, first)
    assert hosts(second)[HOST] is not hosts(first)[HOST]
    assert (
        hosts(second)["other.shop.svc.cluster.local:8080"]
        is hosts(first)["other.shop.svc.cluster.local:8080"]
    )
    assert second.encoded("default") == OutboundRouteTables(after).encoded("default")


# -- found by the Gateway API conformance tables (tests/test_e2e_gamma_conformance.py) -------


def test_retries_of_attempts_that_time_out_get_their_time() -> None:
    # httproute-retry-with-timeouts: attempts 2, backendRequest 200ms, no request timeout;
    # two attempts that time out and a third that answers must end in 200, so the route
    # timeout may not be the 200ms of one attempt.
    given = rule(
        backends=(to("web-v1"),),
        retry=RouteRetry(attempts=2),
        timeouts=RouteTimeouts(backend_request=0.2),
    )
    (found,) = routes(WEB, V1, route(given))
    assert found.route.retry_policy.per_try_timeout.ToMilliseconds() == 200
    assert found.route.retry_policy.num_retries.value == 2
    assert "reset" in found.route.retry_policy.retry_on.split(",")  # a timed-out attempt
    assert found.route.timeout.ToNanoseconds() == 0


def test_backend_request_alone_takes_the_policys_request_timeout() -> None:
    spec = api.BackendPolicySpec()
    spec.timeouts.request.FromSeconds(5)
    given = rule(backends=(to("web-v1"),), timeouts=RouteTimeouts(backend_request=1))
    (found,) = routes(WEB, V1, route(given), policy(spec))
    assert (found.route.timeout.seconds, found.route.retry_policy.per_try_timeout.seconds) == (5, 1)


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (80, None),  # the request's Host (with :80 or without) already says it
        (8080, 8080),  # a Host without a port would say 80: write the listener port
    ],
)
def test_a_redirect_without_host_port_or_scheme_keeps_the_service_port(
    port: int, expected: int | None
) -> None:
    # HTTPRequestRedirectFilter.port: "If redirect scheme is empty, the redirect port MUST
    # be the Gateway Listener port" (here the Service port); a Service's first HTTP port
    # answers to its bare name too, so the request's Host may carry no port.
    parent = service("web", http(port))
    redirect = RequestRedirectFilter(status_code=303)
    host = vhost(
        parent,
        route(rule(prefix("/old"), filters=(redirect,))),
        host=f"web.default.svc.cluster.local:{port}",
    )
    (found,) = host.routes
    assert (found.redirect.port_redirect or None) == expected
