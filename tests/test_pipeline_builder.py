"""The snapshot builder: each change costs what it touches, and proxies wait for sync."""

from __future__ import annotations

from typing import Literal

import pytest
from envoy.config.route.v3 import route_pb2

from xds_server.cache import Snapshot, SnapshotCache
from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Proxy,
    Service,
    ServicePort,
    Workload,
)
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, unpack

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
    assert mine.get(ENDPOINT)[name].data is theirs.get(ENDPOINT)[name].data


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


# -- outbound route tables, one per namespace with proxies ---------------------------------

BACKEND = "backend"
SHOP = Proxy(node_id="client.shop", namespace="shop")
OTHER = Proxy(node_id="client.other", namespace="other")


def backend(namespace: str, *ports: int) -> Service:
    return Service(namespace, BACKEND, tuple(ServicePort(p, f"http-{p}") for p in ports or (80,)))


def two_backends() -> ChangeSet:
    changes = ChangeSet()
    changes.upsert(backend("default"))
    changes.upsert(backend("shop"))
    return changes


def builder_with(*proxies: Proxy) -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(two_backends())
    for proxy in proxies:
        builder.add_proxy(proxy)
    builder.mark_synced()
    return cache, builder


def routed(cache: SnapshotCache, node_id: str, host: str) -> str | None:
    """Where the proxy's own outbound table sends `Host: host` (None: a 404)."""
    snapshot = cache.get_snapshot(node_id)
    assert snapshot is not None
    (table,) = (unpack(r) for r in snapshot.get(ROUTE).values())
    assert isinstance(table, route_pb2.RouteConfiguration)
    for vhost in table.virtual_hosts:
        if host in vhost.domains:
            return str(vhost.routes[0].route.cluster)
    return None


def referenced_routes(snapshot: Snapshot) -> set[str]:
    return {name for r in snapshot.get(LISTENER).values() for kind, name in r.refs if kind == ROUTE}


@pytest.mark.parametrize(
    ("proxy", "host", "cluster"),
    [
        (PROXY, "backend", "outbound|80||backend.default.svc.cluster.local"),
        (SHOP, "backend", "outbound|80||backend.shop.svc.cluster.local"),
        (SHOP, "backend:80", "outbound|80||backend.shop.svc.cluster.local"),
        (OTHER, "backend", None),
        (PROXY, "backend.shop", "outbound|80||backend.shop.svc.cluster.local"),
        (SHOP, "backend.default:80", "outbound|80||backend.default.svc.cluster.local"),
        (OTHER, "backend.shop.svc.cluster.local", "outbound|80||backend.shop.svc.cluster.local"),
    ],
)
def test_each_proxy_gets_its_namespaces_table_where_short_names_are_local(
    proxy: Proxy, host: str, cluster: str | None
) -> None:
    cache, _ = builder_with(PROXY, SHOP, OTHER)
    snapshot = cache.get_snapshot(proxy.node_id)
    assert snapshot is not None
    assert set(snapshot.get(ROUTE)) == {f"outbound|{proxy.namespace}"}
    assert referenced_routes(snapshot) == {f"outbound|{proxy.namespace}"}
    assert routed(cache, proxy.node_id, host) == cluster


def test_proxies_of_one_namespace_share_its_table() -> None:
    cache, _ = builder_with(SHOP, Proxy(node_id="server.shop", namespace="shop"))
    mine, theirs = cache.get_snapshot(SHOP.node_id), cache.get_snapshot("server.shop")
    assert mine is not None and theirs is not None
    assert mine.get(ROUTE)["outbound|shop"].data is theirs.get(ROUTE)["outbound|shop"].data


def test_a_proxy_from_a_new_namespace_adds_its_table_and_leaves_the_others_alone() -> None:
    cache, builder = builder_with(PROXY)
    before = cache.get_snapshot(PROXY.node_id)
    assert builder.route_namespaces == ["default"]
    builder.add_proxy(SHOP)
    assert builder.route_namespaces == ["default", "shop"]
    assert cache.get_snapshot(PROXY.node_id) is before
    assert routed(cache, SHOP.node_id, "backend") == "outbound|80||backend.shop.svc.cluster.local"


def test_the_table_of_a_namespace_whose_last_proxy_left_is_dropped() -> None:
    _, builder = builder_with(PROXY, SHOP, Proxy(node_id="server.shop", namespace="shop"))
    builder.remove_proxy(SHOP.node_id)
    assert builder.route_namespaces == ["default", "shop"]
    builder.remove_proxy("server.shop")
    assert builder.route_namespaces == ["default"]


def test_a_service_change_updates_every_namespaces_table() -> None:
    cache, builder = builder_with(PROXY, SHOP, OTHER)
    before = {p.node_id: cache.get_snapshot(p.node_id) for p in (PROXY, SHOP, OTHER)}
    change = ChangeSet()
    change.upsert(backend("shop", 80, 8080))
    builder.apply(change)
    for node_id, old in before.items():
        new = cache.get_snapshot(node_id)
        assert new is not None
        assert new.changed(old, ROUTE) == {f"outbound|{node_id.split('.')[1]}"}
    assert routed(cache, SHOP.node_id, "backend:8080") == (
        "outbound|8080||backend.shop.svc.cluster.local"
    )
    assert routed(cache, PROXY.node_id, "backend:8080") is None
    assert routed(cache, PROXY.node_id, "backend.shop:8080") == (
        "outbound|8080||backend.shop.svc.cluster.local"
    )


def upserting(*objects: EndpointSlice | Workload) -> ChangeSet:
    changes = ChangeSet()
    for obj in objects:
        changes.upsert(obj)
    return changes


@pytest.mark.parametrize(
    "change",
    [
        upserting(endpoints(1, "127.0.50.9")),
        upserting(endpoints(1, "127.0.50.9"), Workload("default", "pod-1", ip="127.0.9.1")),
    ],
    ids=["endpoints", "endpoints-and-pods"],
)
def test_changes_without_a_service_leave_the_route_tables_alone(change: ChangeSet) -> None:
    cache, builder = builder_with(PROXY, SHOP)
    before = {p.node_id: cache.get_snapshot(p.node_id) for p in (PROXY, SHOP)}
    builder.apply(change)
    for node_id, old in before.items():
        new = cache.get_snapshot(node_id)
        assert new is not None and old is not None
        assert new.get(ROUTE) is old.get(ROUTE)


def test_a_proxy_its_pod_moves_to_another_namespace_follows_with_its_table() -> None:
    declared = Proxy(node_id="client.shop")  # no namespace in its metadata: "default"
    cache, builder = builder_with(declared)
    assert routed(cache, declared.node_id, "backend") == (
        "outbound|80||backend.default.svc.cluster.local"
    )
    pod = ChangeSet()
    pod.upsert(Workload("shop", "client", ip="127.0.9.2"))
    builder.apply(pod)
    snapshot = cache.get_snapshot(declared.node_id)
    assert snapshot is not None
    assert set(snapshot.get(ROUTE)) == referenced_routes(snapshot) == {"outbound|shop"}
    assert routed(cache, declared.node_id, "backend") == (
        "outbound|80||backend.shop.svc.cluster.local"
    )
    assert builder.route_namespaces == ["shop"]
    assert builder.proxy_error(declared.node_id) is None


@pytest.mark.parametrize("interception", ["none", "redirect"])
def test_every_route_table_a_listener_names_is_in_the_proxys_snapshot(
    interception: Literal["none", "redirect"],
) -> None:
    proxies = [
        Proxy(node_id=f"p.{ns}", namespace=ns, interception=interception)
        for ns in ("default", "shop", "other")
    ]
    cache, builder = builder_with(*proxies)
    change = ChangeSet()
    change.upsert(Service("shop", "web", (ServicePort(80, "http"),), cluster_ip="127.0.60.1"))
    builder.apply(change)
    for proxy in proxies:
        snapshot = cache.get_snapshot(proxy.node_id)
        assert snapshot is not None and builder.proxy_error(proxy.node_id) is None
        assert (
            referenced_routes(snapshot)
            == set(snapshot.get(ROUTE))
            == {f"outbound|{proxy.namespace}"}
        )


def test_a_proxy_reconnecting_from_another_namespace_takes_that_namespaces_table() -> None:
    cache, builder = builder_with(SHOP)
    builder.add_proxy(Proxy(node_id=SHOP.node_id, namespace="other"))
    assert builder.route_namespaces == ["other"]
    snapshot = cache.get_snapshot(SHOP.node_id)
    assert snapshot is not None
    assert set(snapshot.get(ROUTE)) == referenced_routes(snapshot) == {"outbound|other"}
    assert routed(cache, SHOP.node_id, "backend") is None
