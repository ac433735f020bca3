"""Dependency-tracked pushes: a change re-runs exactly what read it, and nothing drifts.

The invariant that proves the index right is a property: for any sequence of
Service, EndpointSlice, Pod, HTTPRoute, BackendPolicy and AuthorizationPolicy adds, edits and
deletes, the incrementally maintained resources of every proxy equal, byte for
byte, those of a builder that translates the final state from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_server.cache import SnapshotCache
from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    ObjectKey,
    Proxy,
    Service,
    ServicePort,
    Workload,
)
from xds_server.model.changes import MeshObject
from xds_server.model.policy import ROOT_NAMESPACE, BackendPolicy
from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    HeaderMatch,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    ParentRef,
    PathMatch,
    RouteRetry,
)
from xds_server.model.security import AuthorizationPolicy
from xds_server.model.telemetry import Telemetry
from xds_server.pipeline import SnapshotBuilder
from xds_server.pipeline.records import GenerationRecord
from xds_server.policy_api import authorization_policy_pb2 as authz_api
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.policy_api import telemetry_pb2 as telemetry_api
from xds_server.provenance import Origin
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, unpack

NAMESPACES = ("ns-a", "ns-b")
SERVICES = ("s1", "s2", "s3")
PROXIES = (
    Proxy(
        node_id="p1.ns-a",
        namespace="ns-a",
        ip="127.0.0.11",
        labels=(("app", "one"),),
        zone="zone-a",
    ),
    Proxy(node_id="p2.ns-a", namespace="ns-a", ip="127.0.0.12", labels=(("app", "two"),)),
    Proxy(node_id="p3.ns-b", namespace="ns-b", ip="127.0.0.13", labels=(("app", "one"),)),
    Proxy(node_id="sidecar-4", namespace="ns-b", ip="127.0.0.14", labels=(("app", "two"),)),
    Proxy(
        node_id="captured-5",
        namespace="ns-b",
        ip="127.0.0.15",
        labels=(("app", "one"),),
        interception="redirect",
    ),
)
IPS = tuple(proxy.ip or "" for proxy in PROXIES)
SLICE_NAMES = ("slice-x", "slice-y", "slice-z")
POD_NAMES = ("p1", "p2", "p3", "other")


def builder_with(changes: ChangeSet | None = None) -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    if changes is not None:
        builder.apply(changes)
    for proxy in PROXIES:
        builder.add_proxy(proxy)
    builder.mark_synced()
    return cache, builder


def served(cache: SnapshotCache) -> dict[str, dict[str, dict[str, bytes]]]:
    """Every proxy's resources as bytes: node id -> type URL -> name -> serialization."""
    result = {}
    for proxy in PROXIES:
        snapshot = cache.get_snapshot(proxy.node_id)
        assert snapshot is not None, proxy.node_id
        result[proxy.node_id] = {
            type_url: {name: r.data for name, r in snapshot.get(type_url).items()}
            for type_url in PUSH_ORDER
        }
    return result


def changes_of(objects: Iterable[MeshObject] = (), deletes: Iterable[ObjectKey] = ()) -> ChangeSet:
    changes = ChangeSet()
    for key in deletes:
        changes.delete(key)
    for obj in objects:
        changes.upsert(obj)
    return changes


# -- strategies ------------------------------------------------------------------------

selectors = st.sampled_from([None, (("app", "one"),), (("app", "two"),)])
target_ports = st.sampled_from([None, 9090, "http-web", "grpc-api", "missing"])
service_ports = st.builds(
    ServicePort,
    port=st.sampled_from([80, 5432, 8080]),
    name=st.sampled_from(["http-web", "grpc-api", "tcp-db"]),
    target_port=target_ports,
)


@st.composite
def services(draw: st.DrawFn) -> Service:
    ports = draw(st.lists(service_ports, max_size=2, unique_by=lambda p: p.port))
    return Service(
        draw(st.sampled_from(NAMESPACES)),
        draw(st.sampled_from(SERVICES)),
        tuple(ports),
        selector=draw(selectors),
        cluster_ip=draw(st.sampled_from([None, "10.96.0.10", "10.96.0.11"])),
        origin=Origin(file=draw(st.sampled_from(["a.yaml", "b.yaml"])), document=0),
    )


@st.composite
def slices(draw: st.DrawFn) -> EndpointSlice:
    ports = tuple(
        EndpointPort(number, name)
        for name, number in draw(
            st.dictionaries(
                st.sampled_from(["http-web", "grpc-api", "tcp-db"]),
                st.sampled_from([7070, 8081, 9091]),
                max_size=2,
            )
        ).items()
    )
    addresses = draw(st.lists(st.sampled_from(IPS), max_size=2, unique=True))
    return EndpointSlice(
        draw(st.sampled_from(NAMESPACES)),
        draw(st.sampled_from(["slice-x", "slice-y", "slice-z"])),
        draw(st.sampled_from(SERVICES)),
        ports=ports,
        endpoints=tuple(
            Endpoint((address,), zone=draw(st.sampled_from([None, "zone-a", "zone-b"])))
            for address in addresses
        ),
    )


@st.composite
def pods(draw: st.DrawFn) -> Workload:
    return Workload(
        draw(st.sampled_from(NAMESPACES)),
        draw(st.sampled_from(["p1", "p2", "p3", "other"])),
        labels=draw(st.sampled_from([(), (("app", "one"),), (("app", "two"),)])),
        ip=draw(st.sampled_from([*IPS, None])),
    )


@st.composite
def http_routes(draw: st.DrawFn) -> HTTPRoute:
    """A producer or consumer route to one of the Services, splitting or matching."""
    backends = draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=2, unique=True))
    port = draw(st.sampled_from([80, 8080]))
    rule = HTTPRouteRule(
        matches=draw(
            st.sampled_from(
                [
                    (HTTPRouteMatch(),),
                    (HTTPRouteMatch(PathMatch(MatchType.EXACT, "/exact")),),
                    (HTTPRouteMatch(headers=(HeaderMatch("x-canary", "yes"),)),),
                ]
            )
        ),
        backend_refs=tuple(
            BackendRef(BackendObjectRef(name, port=port), weight=draw(st.sampled_from([0, 1, 3])))
            for name in backends
        ),
        retry=draw(st.sampled_from([None, RouteRetry(codes=(503,), attempts=2)])),
    )
    return HTTPRoute(
        draw(st.sampled_from(NAMESPACES)),
        draw(st.sampled_from(["r1", "r2"])),
        parent_refs=(
            ParentRef(
                draw(st.sampled_from(SERVICES)),
                namespace=draw(st.sampled_from([None, *NAMESPACES])),
                port=draw(st.sampled_from([None, 80])),
            ),
        ),
        rules=(rule,),
        creation_timestamp=draw(st.sampled_from([None, "2026-01-01T00:00:00Z"])),
    )


POLICY_SPECS = (
    {"loadBalancer": {"algorithm": "LeastRequest"}},
    {"connectionPool": {"maxConnections": 7}, "outlierDetection": {"consecutive5xx": 3}},
    {"retry": {"attempts": 2, "codes": [503]}, "timeouts": {"request": "3s"}},
    {"localRateLimit": {"maxTokens": 5, "fillInterval": "1s"}},
    {"faultInjection": {"abort": {"httpStatus": 503, "percentage": 10}}},
    {"loadBalancer": {"locality": {"enabled": True}}},
)


@st.composite
def backend_policies(draw: st.DrawFn) -> BackendPolicy:
    """A Service's own policy, a namespace default, or the mesh default."""
    namespace = draw(st.sampled_from([*NAMESPACES, ROOT_NAMESPACE]))
    targets = draw(
        st.sampled_from([[], *([{"kind": "Service", "name": name}] for name in SERVICES)])
    )
    spec = json_format.ParseDict(
        {"targetRefs": targets, **draw(st.sampled_from(POLICY_SPECS))}, api.BackendPolicySpec()
    )
    return BackendPolicy.of(
        namespace,
        draw(st.sampled_from(["bp1", "bp2"])),
        spec,
        creation_timestamp=draw(st.sampled_from([None, "2026-01-01T00:00:00Z"])),
    )


AUTHORIZATION_SPECS: tuple[dict[str, object], ...] = (
    {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
    {"rules": [{"to": [{"operation": {"ports": ["9090"], "methods": ["GET"]}}]}]},
    {"action": "AUDIT", "rules": [{}]},
)


@st.composite
def authorization_policies(draw: st.DrawFn) -> AuthorizationPolicy:
    """A workload's policy (by selector), a namespace's, or a mesh-wide one."""
    spec = json_format.ParseDict(
        draw(st.sampled_from(AUTHORIZATION_SPECS)), authz_api.AuthorizationPolicySpec()
    )
    return AuthorizationPolicy(
        draw(st.sampled_from([*NAMESPACES, ROOT_NAMESPACE])),
        draw(st.sampled_from(["ap1", "ap2"])),
        spec_bytes=spec.SerializeToString(deterministic=True),
        selector=draw(selectors),
    )


TELEMETRY_SPECS: tuple[dict[str, object], ...] = (
    {"accessLogging": {"fields": ["METHOD", "RESPONSE_CODE"], "filter": {"errorsOnly": True}}},
    {"accessLogging": {"disabled": True}, "metrics": {"port": 15090}},
    {"tracing": {"collector": "127.0.0.9:4317", "randomSamplingPercentage": 10}},
    {"tracing": {"randomSamplingPercentage": 50}, "metrics": {"disabled": True}},
)


@st.composite
def telemetries(draw: st.DrawFn) -> Telemetry:
    """A workload's Telemetry (by selector), a namespace's, or a mesh-wide one."""
    spec = json_format.ParseDict(
        draw(st.sampled_from(TELEMETRY_SPECS)), telemetry_api.TelemetrySpec()
    )
    return Telemetry(
        draw(st.sampled_from([*NAMESPACES, ROOT_NAMESPACE])),
        draw(st.sampled_from(["t1", "t2"])),
        spec_bytes=spec.SerializeToString(deterministic=True),
        selector=draw(selectors),
    )


keys = st.builds(
    ObjectKey,
    st.sampled_from(list(Kind)),
    st.sampled_from([*NAMESPACES, ROOT_NAMESPACE]),
    st.sampled_from(
        [*SERVICES, *SLICE_NAMES, *POD_NAMES, "r1", "r2", "bp1", "bp2", "ap1", "ap2", "t1", "t2"]
    ),
)
operations = st.one_of(
    services(),
    slices(),
    pods(),
    http_routes(),
    backend_policies(),
    authorization_policies(),
    telemetries(),
    keys.map(lambda key: key),
)  # an object is an upsert, a key a delete
batches = st.lists(st.lists(operations, min_size=1, max_size=3), min_size=1, max_size=12)


def batch_of(operations: list[MeshObject | ObjectKey]) -> ChangeSet:
    changes = ChangeSet()
    for op in operations:
        if isinstance(op, ObjectKey):
            changes.delete(op)
        else:
            changes.upsert(op)
    return changes


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batches)
def test_incremental_resources_equal_a_translation_from_scratch(
    sequence: list[list[MeshObject | ObjectKey]],
) -> None:
    cache, builder = builder_with()
    for operations in sequence:
        builder.apply(batch_of(operations))
    final = ChangeSet()
    for kind in Kind:
        for obj in builder.mesh.table(kind).values():
            final.upsert(obj)
    fresh_cache, _ = builder_with(final)
    assert served(cache) == served(fresh_cache)


# -- named target ports: the regression the index fixes ----------------------------------


def inbound_ports(cache: SnapshotCache, node_id: str) -> list[int]:
    snapshot = cache.get_snapshot(node_id)
    assert snapshot is not None
    ports = []
    for resource in snapshot.get(LISTENER).values():
        listener = unpack(resource)
        assert isinstance(listener, listener_pb2.Listener)
        if listener.name.startswith("inbound_"):
            ports.append(listener.address.socket_address.port_value)
    return sorted(ports)


WEB = Service(
    "ns-a",
    "web",
    (ServicePort(80, "http-web", target_port="http-web"),),
    selector=(("app", "one"),),
)
WEB_SLICE = EndpointSlice(
    "ns-a",
    "web-abc",
    "web",
    ports=(EndpointPort(8080, "http-web"),),
    endpoints=(Endpoint(("127.0.0.11",)),),
)


@pytest.mark.parametrize("slice_first", [False, True], ids=["slice-after", "slice-before"])
def test_a_named_target_port_resolves_through_the_slice_whenever_it_arrives(
    slice_first: bool,
) -> None:
    cache, builder = builder_with()
    first, second = (WEB_SLICE, WEB) if slice_first else (WEB, WEB_SLICE)
    builder.apply(changes_of([first]))
    builder.apply(changes_of([second]))
    assert inbound_ports(cache, "p1.ns-a") == [8080]


def test_a_slice_renumbering_a_named_port_moves_the_inbound_listener() -> None:
    cache, builder = builder_with(changes_of([WEB, WEB_SLICE]))
    assert inbound_ports(cache, "p1.ns-a") == [8080]
    renumbered = EndpointSlice(
        "ns-a",
        "web-abc",
        "web",
        ports=(EndpointPort(8181, "http-web"),),
        endpoints=WEB_SLICE.endpoints,
    )
    builder.apply(changes_of([renumbered]))
    assert inbound_ports(cache, "p1.ns-a") == [8181]


# -- precision: only what read a change is re-run, only who holds it is pushed ------------


def test_a_service_change_in_one_namespace_retranslates_only_the_proxies_that_read_it() -> None:
    base = [
        Service("ns-a", "web", (ServicePort(80, "http-web"),), selector=(("app", "one"),)),
        Service("ns-b", "api", (ServicePort(80, "http-web"),), selector=(("app", "one"),)),
    ]
    cache, builder = builder_with(changes_of(base))
    records: list[GenerationRecord] = []
    builder.on_generation = records.append
    before = served(cache)
    retranslated = builder.retranslated
    moved = Service(
        "ns-a", "web", (ServicePort(80, "http-web", target_port=8088),), selector=(("app", "one"),)
    )
    builder.apply(changes_of([moved]))
    assert builder.retranslated - retranslated == 2  # the two proxies of ns-a, not ns-b's
    after = served(cache)
    changed = {node for node in after if after[node] != before[node]}
    assert changed == {"p1.ns-a"}  # the one ns-a proxy it selects
    (record,) = records
    assert [push.node_id for push in record.proxies] == ["p1.ns-a"]
    assert record.proxies[0].changed.keys() == {CLUSTER, LISTENER}
    assert [trigger.source.key for trigger in record.triggers] == ["Service/ns-a/web"]
    assert "proxy:p3.ns-b" not in record.units


def test_an_endpoint_change_retranslates_no_proxy_without_a_named_port() -> None:
    web = Service("ns-a", "web", (ServicePort(80, "http-web"),), selector=(("app", "one"),))
    _, builder = builder_with(changes_of([web, WEB_SLICE]))
    retranslated = builder.retranslated
    more = EndpointSlice(
        "ns-a",
        "web-abc",
        "web",
        ports=WEB_SLICE.ports,
        endpoints=(*WEB_SLICE.endpoints, Endpoint(("127.0.0.12",))),
    )
    builder.apply(changes_of([more]))
    assert builder.retranslated == retranslated


def test_every_resource_names_its_sources_with_their_origin() -> None:
    web = Service(
        "ns-a",
        "web",
        (ServicePort(80, "http-web", target_port="http-web"),),
        selector=(("app", "one"),),
        origin=Origin(file="web.yaml", document=1),
    )
    cache, _ = builder_with(changes_of([web, WEB_SLICE]))
    snapshot = cache.get_snapshot("p1.ns-a")
    assert snapshot is not None
    cluster = snapshot.get(CLUSTER)["outbound|80||web.ns-a.svc.cluster.local"]
    assert [ref.as_json() for ref in cluster.provenance] == [
        {"kind": "Service", "namespace": "ns-a", "name": "web", "file": "web.yaml", "document": 1}
    ]
    assignment = snapshot.get(ENDPOINT)["outbound|80||web.ns-a.svc.cluster.local"]
    assert [ref.key for ref in assignment.provenance] == [
        "Service/ns-a/web",
        "EndpointSlice/ns-a/web-abc",
    ]
    inbound = snapshot.get(LISTENER)["inbound_8080"]
    assert {ref.key for ref in inbound.provenance} == {
        "Service/ns-a/web",
        "EndpointSlice/ns-a/web-abc",
    }
    (route,) = snapshot.get(ROUTE).values()
    assert "Service/ns-a/web" in {ref.key for ref in route.provenance}


def test_moving_an_object_to_another_file_updates_provenance_not_versions() -> None:
    web = Service("ns-a", "web", (ServicePort(80, "http-web"),), origin=Origin(file="a.yaml"))
    cache, builder = builder_with(changes_of([web]))
    name = "outbound|80||web.ns-a.svc.cluster.local"
    before = cache.get_snapshot("p1.ns-a")
    assert before is not None
    moved = Service("ns-a", "web", (ServicePort(80, "http-web"),), origin=Origin(file="b.yaml"))
    builder.apply(changes_of([moved]))
    after = cache.get_snapshot("p1.ns-a")
    assert after is not None
    assert after.get(CLUSTER)[name].version == before.get(CLUSTER)[name].version
    assert builder.dependents(ObjectKey(Kind.SERVICE, "ns-a", "web"))[0].resources


def test_dependents_name_the_resources_and_proxies_built_from_an_object() -> None:
    _, builder = builder_with(changes_of([WEB, WEB_SLICE]))
    found, proxies = builder.dependents(ObjectKey(Kind.SERVICE, "ns-a", "web"))
    assert (CLUSTER, "outbound|80||web.ns-a.svc.cluster.local") in found.resources
    assert (LISTENER, "inbound_8080") in found.resources
    assert proxies == sorted(proxy.node_id for proxy in PROXIES)  # its cluster is everyone's


def test_a_preview_predicts_the_changes_and_commits_nothing() -> None:
    cache, builder = builder_with(changes_of([WEB, WEB_SLICE]))
    before = served(cache)
    generation = builder.generation
    added = Service("ns-b", "api", (ServicePort(80, "http-web"),), selector=(("app", "one"),))
    preview = builder.preview(changes_of([added]))
    assert served(cache) == before and builder.generation == generation
    assert builder.mesh.service("ns-b", "api") is None
    builder.apply(changes_of([added]))
    after = served(cache)
    for node_id in after:
        predicted = {(c.type_url, c.name, c.change) for c in preview.proxies.get(node_id, ())}
        actual = set()
        for type_url in PUSH_ORDER:
            old, new = before[node_id][type_url], after[node_id][type_url]
            for name in old.keys() | new.keys():
                if name not in old:
                    actual.add((type_url, name, "added"))
                elif name not in new:
                    actual.add((type_url, name, "removed"))
                elif old[name] != new[name]:
                    actual.add((type_url, name, "changed"))
        assert predicted == actual, node_id


def test_proxies_of_one_shape_share_their_index_entries_and_leave_nothing_behind() -> None:
    _, builder = builder_with(changes_of([WEB, WEB_SLICE]))
    index = builder.index
    groups_before, built_before = len(index._holders), len(index._built)
    for i in range(50):  # fifty more proxies like p2: same namespace, labels, ports
        builder.add_proxy(Proxy(node_id=f"twin-{i}.ns-a", namespace="ns-a", ip=f"127.0.1.{i + 1}"))
    assert len(index._holders) <= groups_before + 1  # they read as one group
    assert len(index._built) <= built_before + 1  # and share what they built
    for i in range(50):
        builder.remove_proxy(f"twin-{i}.ns-a")
    for proxy in PROXIES:
        builder.remove_proxy(proxy.node_id)
    assert [unit for unit in index.units() if unit[0] != "service"] == []
    assert not any(unit[0] == "proxy" for _, units in index._holders.values() for unit in units)
    assert all(index._holders.get(reads) for groups in index._readers.values() for reads in groups)


def test_a_view_first_computed_by_a_tracked_reader_records_only_the_view() -> None:
    """The view's own scan of every Service is not the reader's: a proxy that reads
    `tcp_port_owners` depends on its value, not on each Service (else any Service
    change would re-translate every proxy that happened to compute it first)."""
    from xds_server.model import MeshSnapshot, Service, ServicePort
    from xds_server.pipeline.reads import TrackedMesh
    from xds_server.translate.listeners import tcp_port_owners

    mesh = MeshSnapshot(
        services={("shop", "db"): Service("shop", "db", (ServicePort(5432, "tcp-db"),))}
    )
    reads: set[tuple[object, ...]] = set()
    owners = tcp_port_owners(TrackedMesh(mesh, reads))
    assert [port for port, _ in owners] == [5432]
    assert reads == {("view", "tcp_port_owners")}
