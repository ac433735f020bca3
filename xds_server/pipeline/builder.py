"""From mesh changes to per-proxy cache snapshots, doing only the work a change needs.

Mesh-wide resources (outbound clusters, their load assignments) are translated
once per change, for the services it touched, and serialized once; every
proxy's snapshot layers those shared sets under its own listeners and inbound
clusters.  An endpoint-only change therefore re-translates one
ClusterLoadAssignment and re-serializes nothing proxy-specific.

The outbound route tables depend on the Services and on the caller's
namespace (short names resolve there), so there is one per namespace that has
proxies, shared by them and rebuilt when a Service changes (from virtual hosts
that `translate.OutboundRouteTables` reuses for unchanged Services).  A proxy's
snapshot holds its own namespace's table only: its listeners name no other,
and the admin view of its config stays its own.  A proxy from a new namespace
adds that namespace's table; the table of a namespace whose last proxy left
is dropped.

A proxy running in a Pod the mesh knows is translated as that Pod says: when
its node id is `POD.NAMESPACE`, or its INSTANCE_IP is the Pod's IP, the Pod's
labels, service account and IP replace what its bootstrap declared (which was
only a guess made at injection time), and a change to the Pod re-publishes
that proxy, and only it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from xds_server import translate
from xds_server.cache import (
    InconsistentSnapshotError,
    LayeredResources,
    ResourceSet,
    Snapshot,
    SnapshotCache,
)
from xds_server.model import ChangeSet, Kind, MeshSnapshot, Proxy, Workload
from xds_server.model.mesh import NamespacedName
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, make_resource

logger = logging.getLogger(__name__)


@dataclass
class _ProxyState:
    declared: Proxy
    """As the proxy's node metadata describes it."""
    proxy: Proxy
    """As translated: `declared`, with what its Pod says (see `with_workload`)."""
    clusters: ResourceSet = field(default_factory=ResourceSet)
    listeners: ResourceSet = field(default_factory=ResourceSet)
    error: str | None = None


class _OwnedSet:
    """A shared ResourceSet whose members are owned by services, updated per service."""

    def __init__(self) -> None:
        self.resources = ResourceSet()
        self._owned: dict[NamespacedName, frozenset[str]] = {}

    def update(self, updates: dict[NamespacedName, list[Resource]]) -> None:
        upserts: list[Resource] = []
        removals: list[str] = []
        for owner, resources in updates.items():
            names = frozenset(r.name for r in resources)
            removals.extend(self._owned.get(owner, frozenset()) - names)
            if names:
                self._owned[owner] = names
            else:
                self._owned.pop(owner, None)
            upserts.extend(resources)
        self.resources = self.resources.evolve(upserts, removals)


def _resources(messages: Iterable[Message]) -> list[Resource]:
    return [make_resource(m) for m in messages]


def workloads_by_ip(mesh: MeshSnapshot) -> dict[str, list[Workload]]:
    by_ip: dict[str, list[Workload]] = {}
    for workload in mesh.workloads.values():
        if workload.ip:
            by_ip.setdefault(workload.ip, []).append(workload)
    return by_ip


def workload_of(
    proxy: Proxy, mesh: MeshSnapshot, by_ip: dict[str, list[Workload]] | None = None
) -> Workload | None:
    """The Pod a proxy runs in: node id `POD.NAMESPACE`, else the one Pod with its INSTANCE_IP.

    By IP, a Pod in the proxy's namespace wins; an IP several Pods share
    (host-network Pods) names none of them.  `by_ip` (`workloads_by_ip(mesh)`)
    saves a scan of every Pod when many proxies are looked up at once.
    """
    name, dot, namespace = proxy.node_id.rpartition(".")  # a namespace has no dots
    if dot and (workload := mesh.workloads.get((namespace, name))) is not None:
        return workload
    if not proxy.ip:
        return None
    found = (by_ip if by_ip is not None else workloads_by_ip(mesh)).get(proxy.ip, [])
    local = [workload for workload in found if workload.namespace == proxy.namespace]
    candidates = local or found
    return candidates[0] if len(candidates) == 1 else None


def with_workload(
    proxy: Proxy, mesh: MeshSnapshot, by_ip: dict[str, list[Workload]] | None = None
) -> Proxy:
    """`proxy` with the labels, service account, namespace and IP of its Pod, if known."""
    workload = workload_of(proxy, mesh, by_ip)
    if workload is None:
        return proxy
    return dataclasses.replace(
        proxy,
        namespace=workload.namespace,
        workload=proxy.workload or workload.name,
        labels=workload.labels,
        service_account=workload.service_account,
        ip=workload.ip or proxy.ip,
    )


class SnapshotBuilder:
    """Holds the current mesh and turns each ChangeSet into new snapshots in the cache."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.mesh = MeshSnapshot()
        self._clusters = _OwnedSet()
        self._endpoints = _OwnedSet()
        self._route_tables: translate.OutboundRouteTables | None = None
        self._routes: dict[str, ResourceSet] = {}
        """By namespace: a set holding that namespace's outbound route table."""
        self._proxies: dict[str, _ProxyState] = {}
        self._proxies_in: Counter[str] = Counter()
        """How many proxies each namespace has (as translated): whose tables to keep."""
        self.synced = False
        self.generation = 0
        # Test seam: lets a test alter a proxy's resources before they are published.
        self.resource_hook: Callable[[Proxy, Snapshot], Snapshot] | None = None

    @property
    def proxies(self) -> dict[str, Proxy]:
        return {node_id: state.proxy for node_id, state in self._proxies.items()}

    @property
    def route_namespaces(self) -> list[str]:
        """The namespaces whose outbound route table is kept: those with proxies."""
        return sorted(self._routes)

    def proxy_error(self, node_id: str) -> str | None:
        state = self._proxies.get(node_id)
        return state.error if state else None

    def apply(self, changes: ChangeSet) -> None:
        """Apply a (debounced) ChangeSet and publish every affected proxy's snapshot."""
        mesh, touched = self.mesh.apply(changes)
        self.mesh = mesh
        self.generation += 1
        cluster_updates: dict[NamespacedName, list[Resource]] = {}
        endpoint_updates: dict[NamespacedName, list[Resource]] = {}
        for key in touched:
            service = mesh.services.get(key)
            if service is None:
                cluster_updates[key] = []
                endpoint_updates[key] = []
                continue
            cluster_updates[key] = _resources(translate.clusters_for_service(service))
            endpoint_updates[key] = _resources(
                translate.load_assignments_for_service(service, mesh.slices_of(service))
            )
        self._clusters.update(cluster_updates)
        self._endpoints.update(endpoint_updates)
        moved = self._refresh_workloads() if Kind.WORKLOAD in changes.kinds else []
        if changes.kinds == {Kind.WORKLOAD}:
            # Pods matter only to the proxies running in them: nothing mesh-wide changed.
            if self.synced:
                for state in moved:
                    self._publish(state, retranslate=True)
            if moved:
                self._drop_unused_routes()
            return
        proxy_config_changed = not changes.endpoints_only
        if Kind.SERVICE in changes.kinds:  # the route tables depend on Services alone
            self._rebuild_routes()
        elif moved:
            self._drop_unused_routes()
        if self.synced:
            for state in self._proxies.values():
                self._publish(state, retranslate=proxy_config_changed)

    def _rebuild_routes(self) -> None:
        """New route tables for the namespaces that have proxies, after a Service change."""
        tables = translate.outbound_route_tables(self.mesh, self._route_tables)
        routes: dict[str, ResourceSet] = {}
        for namespace in self._namespaces():
            resource = tables.resource(namespace)
            routes[namespace] = self._routes.get(namespace, ResourceSet()).replace_all(
                {resource.name: resource}
            )
        self._route_tables, self._routes = tables, routes

    def _routes_of(self, namespace: str) -> ResourceSet:
        """`namespace`'s route table, built now if no proxy there had needed it yet."""
        routes = self._routes.get(namespace)
        if routes is None:
            if self._route_tables is None:
                self._route_tables = translate.outbound_route_tables(self.mesh)
            # Up to date: they are rebuilt on every Service change, and depend on nothing else.
            routes = ResourceSet([self._route_tables.resource(namespace)])
            self._routes[namespace] = routes
        return routes

    def _drop_unused_routes(self) -> None:
        """Forget the tables of namespaces that have no proxy any more."""
        for namespace in [ns for ns in self._routes if ns not in self._proxies_in]:
            del self._routes[namespace]

    def _namespaces(self) -> list[str]:
        return sorted(self._proxies_in)

    def _count(self, namespace: str, delta: int) -> None:
        """Count a proxy into (+1) or out of (-1) `namespace`."""
        count = self._proxies_in[namespace] + delta
        if count > 0:
            self._proxies_in[namespace] = count
        else:
            self._proxies_in.pop(namespace, None)

    def _refresh_workloads(self) -> list[_ProxyState]:
        """Re-read each proxy's Pod; the proxies whose translated identity changed."""
        moved = []
        by_ip = workloads_by_ip(self.mesh)
        for state in self._proxies.values():
            proxy = with_workload(state.declared, self.mesh, by_ip)
            if proxy != state.proxy:
                self._count(state.proxy.namespace, -1)
                self._count(proxy.namespace, +1)
                state.proxy = proxy
                moved.append(state)
        return moved

    def mark_synced(self) -> None:
        """The sources finished their initial load: proxies may now be served."""
        if self.synced:
            return
        self.synced = True
        for state in self._proxies.values():
            self._publish(state, retranslate=True)

    def republish(self) -> None:
        """Rebuild every proxy's snapshot from the current mesh (after a hook changed)."""
        if self.synced:
            for state in self._proxies.values():
                self._publish(state, retranslate=True)

    def add_proxy(self, proxy: Proxy) -> None:
        state = self._proxies.get(proxy.node_id)
        if state is not None and state.declared == proxy:
            return
        if state is not None:
            self._count(state.proxy.namespace, -1)
        state = _ProxyState(proxy, with_workload(proxy, self.mesh))
        self._proxies[proxy.node_id] = state
        self._count(state.proxy.namespace, +1)
        if self.synced:
            self._publish(state, retranslate=True)
        self._drop_unused_routes()

    def remove_proxy(self, node_id: str) -> None:
        state = self._proxies.pop(node_id, None)
        self.cache.clear(node_id)
        if state is not None:
            self._count(state.proxy.namespace, -1)
            self._drop_unused_routes()

    def _publish(self, state: _ProxyState, *, retranslate: bool) -> None:
        proxy, mesh = state.proxy, self.mesh
        try:
            if retranslate:
                state.clusters = state.clusters.replace_all(
                    {r.name: r for r in _resources(translate.proxy_clusters(mesh, proxy))}
                )
                state.listeners = state.listeners.replace_all(
                    {r.name: r for r in _resources(translate.proxy_listeners(mesh, proxy))}
                )
            routes = self._routes_of(proxy.namespace)
        except Exception as error:  # a translation bug must not take down other proxies
            logger.exception("translation failed for proxy %s", proxy.node_id)
            state.error = f"translation failed: {error}"
            return
        snapshot = Snapshot(
            resources={
                CLUSTER: LayeredResources(state.clusters, self._clusters.resources),
                ENDPOINT: self._endpoints.resources,
                LISTENER: state.listeners,
                ROUTE: routes,
            },
            version=str(self.generation),
        )
        if self.resource_hook is not None:
            snapshot = self.resource_hook(proxy, snapshot)
        try:
            self.cache.set_snapshot(proxy.node_id, snapshot)
        except InconsistentSnapshotError as error:
            state.error = str(error)
            return
        state.error = None
