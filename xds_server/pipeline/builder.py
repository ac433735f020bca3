"""From mesh changes to per-proxy cache snapshots, doing only the work a change needs.

Mesh-wide resources (outbound clusters, their load assignments, the outbound
route table) are translated once per change, for the services it touched, and
serialized once; every proxy's snapshot layers those shared sets under its own
listeners and inbound clusters.  An endpoint-only change therefore re-translates
one ClusterLoadAssignment and re-serializes nothing proxy-specific.
"""

from __future__ import annotations

import logging
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
from xds_server.model import ChangeSet, MeshSnapshot, Proxy
from xds_server.model.mesh import NamespacedName
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, make_resource

logger = logging.getLogger(__name__)


@dataclass
class _ProxyState:
    proxy: Proxy
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


class SnapshotBuilder:
    """Holds the current mesh and turns each ChangeSet into new snapshots in the cache."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.mesh = MeshSnapshot()
        self._clusters = _OwnedSet()
        self._endpoints = _OwnedSet()
        self._routes = ResourceSet()
        self._proxies: dict[str, _ProxyState] = {}
        self.synced = False
        self.generation = 0
        # Test seam: lets a test alter a proxy's resources before they are published.
        self.resource_hook: Callable[[Proxy, Snapshot], Snapshot] | None = None

    @property
    def proxies(self) -> dict[str, Proxy]:
        return {node_id: state.proxy for node_id, state in self._proxies.items()}

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
        proxy_config_changed = not changes.endpoints_only
        if proxy_config_changed:
            self._routes = self._routes.replace_all(
                {r.name: r for r in _resources(translate.outbound_route_configs(mesh))}
            )
        if self.synced:
            for state in self._proxies.values():
                self._publish(state, retranslate=proxy_config_changed)

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
        if state is not None and state.proxy == proxy:
            return
        state = _ProxyState(proxy)
        self._proxies[proxy.node_id] = state
        if self.synced:
            self._publish(state, retranslate=True)

    def remove_proxy(self, node_id: str) -> None:
        self._proxies.pop(node_id, None)
        self.cache.clear(node_id)

    def _publish(self, state: _ProxyState, *, retranslate: bool) -> None:
        proxy, mesh = state.proxy, self.mesh
        if retranslate:
            try:
                state.clusters = state.clusters.replace_all(
                    {r.name: r for r in _resources(translate.proxy_clusters(mesh, proxy))}
                )
                state.listeners = state.listeners.replace_all(
                    {r.name: r for r in _resources(translate.proxy_listeners(mesh, proxy))}
                )
            except Exception as error:  # a translation bug must not take down other proxies
                logger.exception("translation failed for proxy %s", proxy.node_id)
                state.error = f"translation failed: {error}"
                return
        snapshot = Snapshot(
            resources={
                CLUSTER: LayeredResources(state.clusters, self._clusters.resources),
                ENDPOINT: self._endpoints.resources,
                LISTENER: state.listeners,
                ROUTE: self._routes,
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
