"""The snapshot builder: each change costs what it touches, and proxies wait for sync."""

from __future__ import annotations

from xds_server.cache import SnapshotCache
from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Proxy,
    Service,
    ServicePort,
)
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

PROXY = Proxy(node_id="client.default")


def mesh_of(count: int) -> ChangeSet:
    changes = ChangeSet()
    for i in range(count):
        changes.upsert(Service("default", f"svc-{i}", (ServicePort(80, "http"),)))
        changes.upsert(endpoints(i, "127.0.50.1"))
    return changes


def endpoints(i: int, *addresses: str) -> EndpointSlice:
    return EndpointSlice(
        "default",
        f"svc-{i}-slice",
        f"svc-{i}",
        ports=(EndpointPort(8080, "http"),),
        endpoints=tuple(Endpoint((address,)) for address in addresses),
    )


def synced_builder(count: int = 50) -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(mesh_of(count))
    builder.add_proxy(PROXY)
    builder.mark_synced()
    return cache, builder


def test_proxies_get_no_snapshot_before_the_sources_have_synced() -> None:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.add_proxy(PROXY)
    builder.apply(mesh_of(3))
    assert cache.get_snapshot(PROXY.node_id) is None
    builder.mark_synced()
    snapshot = cache.get_snapshot(PROXY.node_id)
    assert snapshot is not None
    assert len(snapshot.get(ENDPOINT)) == 3


def test_one_endpoint_change_touches_one_load_assignment_and_nothing_else() -> None:
    cache, builder = synced_builder()
    before = cache.get_snapshot(PROXY.node_id)
    change = ChangeSet()
    change.upsert(endpoints(7, "127.0.50.1", "127.0.50.2"))
    builder.apply(change)
    after = cache.get_snapshot(PROXY.node_id)
    assert after is not None and after is not before
    assert after.changed(before, ENDPOINT) == {"outbound|80||svc-7.default.svc.cluster.local"}
    for type_url in (CLUSTER, LISTENER, ROUTE):
        assert after.changed(before, type_url) == frozenset()


def test_load_assignments_are_shared_by_every_proxy() -> None:
    cache, builder = synced_builder()
    builder.add_proxy(Proxy(node_id="other.default"))
    mine, theirs = cache.get_snapshot(PROXY.node_id), cache.get_snapshot("other.default")
    assert mine is not None and theirs is not None
    name = "outbound|80||svc-1.default.svc.cluster.local"
    assert mine.get(ENDPOINT)[name].any is theirs.get(ENDPOINT)[name].any


def test_a_deleted_service_takes_its_cluster_and_endpoints_with_it() -> None:
    cache, builder = synced_builder(3)
    change = ChangeSet()
    change.delete(next(k for k in mesh_of(3).upserts if k.name == "svc-2"))
    builder.apply(change)
    snapshot = cache.get_snapshot(PROXY.node_id)
    assert snapshot is not None
    name = "outbound|80||svc-2.default.svc.cluster.local"
    assert name not in snapshot.get(CLUSTER)
    assert name not in snapshot.get(ENDPOINT)  # even though its EndpointSlice remains


def test_a_disconnected_proxy_is_forgotten() -> None:
    cache, builder = synced_builder(3)
    builder.remove_proxy(PROXY.node_id)
    assert cache.get_snapshot(PROXY.node_id) is None
