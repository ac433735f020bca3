"""The snapshot cache: change tracking, set versions and the consistency gate.

The gate knows every type in the registry (`XDS_TYPES`): each declared
reference is checked, one the registry does not declare is refused.
"""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.cache import (
    InconsistentSnapshotError,
    LayeredResources,
    ResourceSet,
    Snapshot,
    SnapshotCache,
    changed_names,
    find_problems,
    version_of,
)
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TYPES,
    XDS_TYPES,
    Resource,
    XdsType,
    make_resource,
    serialized_resource,
    unpack,
)


def eds_cluster(name: str) -> Resource:
    return make_resource(cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS))


def load_assignment(name: str, *addresses: str) -> Resource:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = cla.endpoints.add()
    for address in addresses:
        socket = group.lb_endpoints.add().endpoint.address.socket_address
        socket.address, socket.port_value = address, 80
    return make_resource(cla)


def rds_listener(name: str, route: str) -> Resource:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = route
    listener = listener_pb2.Listener(name=name)
    listener.filter_chains.add().filters.add(name="hcm").typed_config.Pack(hcm)
    return make_resource(listener)


def route(name: str) -> Resource:
    return make_resource(route_pb2.RouteConfiguration(name=name))


def snapshot(*resources: Resource) -> Snapshot:
    by_type: dict[str, list[Resource]] = {}
    for resource in resources:
        by_type.setdefault(resource.type_url, []).append(resource)
    return Snapshot({t: ResourceSet(rs) for t, rs in by_type.items()})


def test_identical_protos_get_identical_versions_and_bytes_are_serialized_once() -> None:
    a, b = load_assignment("x", "127.0.0.1"), load_assignment("x", "127.0.0.1")
    assert a.version == b.version
    assert load_assignment("x", "127.0.0.2").version != a.version


def test_evolve_tracks_changed_names_and_returns_itself_when_nothing_changed() -> None:
    base = ResourceSet([load_assignment("a", "127.0.0.1"), load_assignment("b", "127.0.0.1")])
    assert base.evolve([load_assignment("a", "127.0.0.1")]) is base
    newer = base.evolve([load_assignment("a", "127.0.0.2")], removals=["b"])
    assert changed_names(base, newer) == {"a", "b"}
    newest = newer.evolve([load_assignment("c", "127.0.0.3")])
    assert changed_names(base, newest) == {"a", "b", "c"}  # across two generations
    assert changed_names(newest, newest) == frozenset()


def test_the_incremental_set_version_equals_a_version_computed_from_scratch() -> None:
    base = ResourceSet([load_assignment(n, "127.0.0.1") for n in "abcd"])
    evolved = base.evolve([load_assignment("a", "127.0.0.9"), load_assignment("e")], ["c"])
    rebuilt = ResourceSet(dict(evolved))
    assert evolved.version == rebuilt.version == version_of(dict(evolved))
    assert evolved.version != base.version


def test_layered_resources_diff_layer_by_layer() -> None:
    shared = ResourceSet([eds_cluster("shared")])
    own = ResourceSet([eds_cluster("own")])
    before = LayeredResources(own, shared)
    after = LayeredResources(own, shared.evolve([eds_cluster("added")]))
    assert set(after) == {"own", "shared", "added"}
    assert changed_names(before, after) == {"added"}


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ((eds_cluster("a"),), "CDS 'a' references missing EDS 'a'"),
        ((load_assignment("a"),), "EDS 'a' has no cluster in CDS"),
        ((rds_listener("l", "r"),), "LDS 'l' references missing RDS 'r'"),
    ],
    ids=["cluster-without-endpoints", "endpoints-without-cluster", "listener-without-routes"],
)
def test_dangling_references_are_problems(resources: tuple[Resource, ...], problem: str) -> None:
    assert find_problems(snapshot(*resources)) == [problem]


def test_a_consistent_snapshot_has_no_problems() -> None:
    good = snapshot(eds_cluster("a"), load_assignment("a"), rds_listener("l", "r"), route("r"))
    assert find_problems(good) == []


def test_removing_a_referenced_resource_is_caught_incrementally() -> None:
    before = snapshot(rds_listener("l", "r"), route("r"))
    after = Snapshot({**before.resources, ROUTE: ResourceSet()})
    assert find_problems(after, before) == ["LDS 'l' references removed RDS 'r'"]


async def test_the_cache_refuses_an_inconsistent_snapshot_and_keeps_the_last_good_one() -> None:
    cache = SnapshotCache()
    good = snapshot(eds_cluster("a"), load_assignment("a"))
    cache.set_snapshot("node", good)
    bad = Snapshot({CLUSTER: ResourceSet([eds_cluster("a"), eds_cluster("b")]),
                    ENDPOINT: good.get(ENDPOINT)})  # fmt: skip
    with pytest.raises(InconsistentSnapshotError, match="CDS 'b' references missing EDS 'b'"):
        cache.set_snapshot("node", bad)
    assert cache.get_snapshot("node") is good
    assert "node" in cache.rejected


async def test_watch_wakes_only_for_a_new_snapshot_of_its_node() -> None:
    cache = SnapshotCache()
    first = snapshot(rds_listener("l", "r"), route("r"))
    cache.set_snapshot("a", first)
    assert await cache.watch("a", None) is first
    waiter = asyncio.create_task(cache.watch("a", first))
    cache.set_snapshot("b", snapshot(route("other")))
    await asyncio.sleep(0)
    assert not waiter.done()
    second = Snapshot({**first.resources, LISTENER: ResourceSet([rds_listener("m", "r")])})
    cache.set_snapshot("a", second)
    assert await asyncio.wait_for(waiter, 1) is second


# -- the type registry: the cache knows every type it declares -------------------------


def named(xds_type: XdsType, name: str, refs: frozenset[tuple[str, str]] = frozenset()) -> Resource:
    """A resource of any registered type, as its producer would version it."""
    message = xds_type.message()
    setattr(message, "cluster_name" if xds_type.type_url == ENDPOINT else "name", name)
    return serialized_resource(
        xds_type.type_url, name, message.SerializeToString(deterministic=True), refs
    )


DECLARED_REFERENCES = [
    pytest.param(t, ref, id=f"{t.short_name}->{TYPES[ref].short_name}")
    for t in XDS_TYPES
    for ref in t.references
]
UNDECLARED_REFERENCES = [
    pytest.param(t, other, id=f"{t.short_name}->{other.short_name}")
    for t in XDS_TYPES
    for other in XDS_TYPES
    if other.type_url not in t.references
]


@pytest.mark.parametrize(("xds_type", "target"), DECLARED_REFERENCES)
def test_every_declared_reference_is_checked_and_named_by_short_names(
    xds_type: XdsType, target: str
) -> None:
    referrer = named(xds_type, "a", frozenset({(target, "b")}))
    owners = [eds_cluster("b")] if target == ENDPOINT else []  # EDS belongs to a cluster
    problem = f"{xds_type.short_name} 'a' references missing {TYPES[target].short_name} 'b'"

    assert problem in find_problems(snapshot(referrer, *owners))
    present = snapshot(referrer, named(TYPES[target], "b"), *owners)
    assert [p for p in find_problems(present) if "'a'" in p] == []


@pytest.mark.parametrize(("xds_type", "other"), UNDECLARED_REFERENCES)
def test_a_reference_the_registry_does_not_declare_is_a_problem(
    xds_type: XdsType, other: XdsType
) -> None:
    referrer = named(xds_type, "a", frozenset({(other.type_url, "b")}))
    target = named(other, "b")
    owners = [eds_cluster(n) for n, t in (("a", xds_type), ("b", other)) if t.type_url == ENDPOINT]

    assert find_problems(snapshot(referrer, target, *owners)) == [
        f"{xds_type.short_name} 'a' references {other.short_name} 'b', "
        "a type the registry does not declare it references"
    ]


@pytest.mark.parametrize("xds_type", XDS_TYPES, ids=lambda t: t.short_name)
def test_every_registered_type_is_cached_served_and_unpacked(xds_type: XdsType) -> None:
    resource = named(xds_type, "only")
    owners = [eds_cluster("only")] if xds_type.type_url == ENDPOINT else []
    cache = SnapshotCache()
    cache.set_snapshot("node", snapshot(resource, *owners))

    served = cache.get_snapshot("node")
    assert served is not None
    assert served.get(xds_type.type_url)["only"] is resource
    message = unpack(resource)
    assert isinstance(message, xds_type.message)
    assert make_resource(message).version == resource.version
