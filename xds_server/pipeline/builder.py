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

A proxy running in a Pod the mesh knows is translated as that Pod says (see
`workloads`), and a change to the Pod re-publishes that proxy, and only it.

One bad object costs only that object.  A batch is first planned (`plan`):
the new mesh and every translation it needs, with nothing committed.  If a
translation raises, `isolation` finds the object to blame and the batch is
planned again without it: its upsert is not made (the mesh keeps its last
good version), or, when its version already in the mesh is what fails next
to the change, it is taken out.  It is listed in `object_errors` until its
next change.  Only a plan that holds together is committed, so no proxy sees
half of a poisoned batch; where no change is to blame, the unit that raised
keeps its last good resources (`unit_errors`, `proxy_error`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from xds_server import translate
from xds_server.cache import (
    InconsistentSnapshotError,
    LayeredResources,
    ResourceSet,
    Snapshot,
    SnapshotCache,
)
from xds_server.model import ChangeSet, Kind, MeshSnapshot, ObjectKey, Proxy
from xds_server.model.mesh import NamespacedName
from xds_server.pipeline import isolation
from xds_server.pipeline.errors import ErrorTable, bounded, frames
from xds_server.pipeline.isolation import shown_key
from xds_server.pipeline.plan import (
    Memo,
    Plan,
    Planner,
    ProxyResources,
    ProxyState,
    proxy_failure,
    proxy_resources,
)
from xds_server.pipeline.workloads import with_workload, workload_of, workloads_by_ip
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource

logger = logging.getLogger(__name__)

__all__ = ["SnapshotBuilder", "with_workload", "workload_of", "workloads_by_ip"]


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
        self._proxies: dict[str, ProxyState] = {}
        self._proxies_in: Counter[str] = Counter()
        """How many proxies each namespace has (as translated): whose tables to keep."""
        self.synced = False
        self.generation = 0
        self.object_errors: ErrorTable[ObjectKey] = ErrorTable()
        """Upserts left out because translating them raised; cleared by their next change."""
        self.unit_errors: ErrorTable[str] = ErrorTable()
        """Units kept at their last good resources though no change was to blame."""
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

    def translation_errors(self) -> list[tuple[str, str]]:
        """(object or unit, error) for everything translation left out or kept as it was."""
        objects = [(shown_key(key), error) for key, error in self.object_errors.items()]
        return objects + self.unit_errors.items()

    # -- a batch: plan, isolate, commit ------------------------------------------------

    def apply(self, changes: ChangeSet) -> None:
        """Apply a (debounced) ChangeSet and publish every affected proxy's snapshot.

        Upserts whose translation raises are left out (see the module doc).
        """
        base = self.mesh
        for key in (*changes.upserts, *changes.deletes):
            self.object_errors.clear(key)  # the object's new state gets a fresh chance
        memo: Memo = {}
        dropped: set[ObjectKey] = set()
        """Upserts not made: the mesh keeps the version it has."""
        taken_out: set[ObjectKey] = set()
        """Objects deleted from the mesh: their version in it is what raises."""
        effective = changes
        while True:  # each round leaves out one more object, at most twice each: this ends
            if changes and not effective:
                return  # every change was left out: nothing to publish
            outcome = Planner(
                self._proxies, self._proxies_in, self._route_tables, synced=self.synced
            ).plan(base, effective, memo)
            if isinstance(outcome, Plan):
                break
            for key, error in outcome:
                if key in taken_out:  # cannot happen: it is in no mesh any more
                    raise RuntimeError(f"{shown_key(key)} raises though it was taken out")
                if key in changes.upserts and key not in dropped:
                    dropped.add(key)
                    kept = isolation.holds(base, key)
                else:
                    taken_out.add(key)
                    kept = False
                message = isolation.dropped_message(key, error, kept=kept)
                self.object_errors.set(key, message)
                logger.error("%s\n%s", message, frames(error))
            effective = isolation.without(changes, dropped, taken_out)
        self._commit(outcome)

    def _commit(self, plan: Plan) -> None:
        self.mesh = plan.mesh
        self.generation += 1
        self._clusters.update(plan.cluster_updates)
        self._endpoints.update(plan.endpoint_updates)
        for unit, error in plan.unit_errors.items():
            if error is None:
                self.unit_errors.clear(unit)
            else:
                self.unit_errors.set(unit, error)
                logger.error("%s", error)
        for state, proxy in plan.moved:
            self._count(state.proxy.namespace, -1)
            self._count(proxy.namespace, +1)
            state.proxy = proxy
        if plan.changes.kinds == {Kind.WORKLOAD}:
            # Pods matter only to the proxies running in them: nothing mesh-wide changed.
            if self.synced:
                for state, _ in plan.moved:
                    self._publish_planned(state, plan)
            if plan.moved:
                self._drop_unused_routes()
            return
        if plan.route_tables is not None:
            self._route_tables = plan.route_tables
            self._routes = {
                namespace: self._routes.get(namespace, ResourceSet()).replace_all(
                    {resource.name: resource}
                )
                for namespace, resource in plan.route_resources.items()
            }
        elif plan.moved:
            self._drop_unused_routes()
        if self.synced:
            for state in self._proxies.values():
                self._publish_planned(state, plan)

    def _publish_planned(self, state: ProxyState, plan: Plan) -> None:
        failure = plan.failed.get(state.declared.node_id)
        if failure is not None:
            state.error = failure
            return
        self._publish(state, plan.translated.get(state.declared.node_id))

    # -- route tables and namespaces ----------------------------------------------------

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

    def _count(self, namespace: str, delta: int) -> None:
        """Count a proxy into (+1) or out of (-1) `namespace`."""
        count = self._proxies_in[namespace] + delta
        if count > 0:
            self._proxies_in[namespace] = count
        else:
            self._proxies_in.pop(namespace, None)

    # -- proxies ------------------------------------------------------------------------

    def mark_synced(self) -> None:
        """The sources finished their initial load: proxies may now be served."""
        if self.synced:
            return
        self.synced = True
        for state in self._proxies.values():
            self._retranslate(state)

    def republish(self) -> None:
        """Rebuild every proxy's snapshot from the current mesh (after a hook changed)."""
        if self.synced:
            for state in self._proxies.values():
                self._retranslate(state)

    def add_proxy(self, proxy: Proxy) -> None:
        state = self._proxies.get(proxy.node_id)
        if state is not None and state.declared == proxy:
            return
        if state is not None:
            self._count(state.proxy.namespace, -1)
        state = ProxyState(proxy, with_workload(proxy, self.mesh))
        self._proxies[proxy.node_id] = state
        self._count(state.proxy.namespace, +1)
        if self.synced:
            self._retranslate(state)
        self._drop_unused_routes()

    def remove_proxy(self, node_id: str) -> None:
        state = self._proxies.pop(node_id, None)
        self.cache.clear(node_id)
        if state is not None:
            self._count(state.proxy.namespace, -1)
            self._drop_unused_routes()

    def _retranslate(self, state: ProxyState) -> None:
        """Translate one proxy on the current mesh and publish it (outside any batch)."""
        try:
            translated = proxy_resources(self.mesh, state, state.proxy)
        except Exception as error:  # one proxy's failure is that proxy's alone
            state.error = proxy_failure(state.proxy.node_id, error)
            return
        self._publish(state, translated)

    def _publish(self, state: ProxyState, translated: ProxyResources | None) -> None:
        """Publish `state`'s snapshot, with `translated` as its own resources if given."""
        proxy = state.proxy
        try:
            routes = self._routes_of(proxy.namespace)
        except Exception as error:
            state.error = proxy_failure(proxy.node_id, error)
            return
        if translated is not None:
            state.clusters, state.listeners = translated
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
            state.error = bounded(str(error))
            return
        except Exception as error:  # a bug in the check must not stop the other proxies
            state.error = proxy_failure(proxy.node_id, error)
            return
        state.error = None
