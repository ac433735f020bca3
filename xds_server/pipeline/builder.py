"""From mesh changes to per-proxy cache snapshots, doing only the work a change needs.

Translation is the table of generators in `generators` (per Service, per
namespace route table, per proxy), each unit recording what it read; the
dependency index (`deps`) maps each fact to the units that read it, so a
ChangeSet's facts (`reads`) reach exactly the units to re-run, whatever kind
changed, and only the proxies holding a resource that changed get a new
snapshot.  A proxy's snapshot layers the shared sets under its own resources
and its namespace's route table (dropped with the namespace's last proxy).
Every resource carries its provenance; every commit is reported as a
`GenerationRecord` to `on_generation`; `preview` reports what a ChangeSet
would change without committing it.

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
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from xds_server import translate
from xds_server.cache import (
    InconsistentSnapshotError,
    LayeredResources,
    ResourceSet,
    Snapshot,
    SnapshotCache,
)
from xds_server.model import ChangeSet, Kind, MeshSnapshot, ObjectKey, Proxy
from xds_server.pipeline import isolation
from xds_server.pipeline.deps import DependencyIndex, Dependents
from xds_server.pipeline.errors import ErrorTable, bounded, frames
from xds_server.pipeline.generators import (
    GENERATOR_OF,
    ROUTE_READS,
    Memo,
    ProxyResources,
    ProxyState,
    proxy_resources,
    proxy_unit,
    route_table_resource,
    route_unit,
)
from xds_server.pipeline.isolation import shown_key
from xds_server.pipeline.metrics import TRIGGER_PROXY, PipelineMetrics, changed_types
from xds_server.pipeline.plan import Plan, Planner, proxy_failure
from xds_server.pipeline.provenance import Provenance, RefCache
from xds_server.pipeline.reads import Fact, slices_fact
from xds_server.pipeline.records import (
    GenerationRecord,
    Preview,
    ProxyPush,
    ResourceChange,
)
from xds_server.pipeline.snapshots import (
    OwnedSet,
    generation_record,
    proxy_push,
    resource_changes,
)
from xds_server.pipeline.validation import EnvoyValidationError
from xds_server.pipeline.workloads import with_workload, workload_of, workloads_by_ip
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resource

logger = logging.getLogger(__name__)

__all__ = ["SnapshotBuilder", "with_workload", "workload_of", "workloads_by_ip"]

ObjectErrors = list[tuple[ObjectKey, str]]


class SnapshotBuilder:
    """Holds the current mesh and turns each ChangeSet into new snapshots in the cache."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache
        self.mesh = MeshSnapshot()
        self._clusters = OwnedSet()
        self._endpoints = OwnedSet()
        self._route_tables: translate.OutboundRouteTables | None = None
        self._tables_current = True
        """False when Services changed while no namespace had a table to rebuild."""
        self._routes: dict[str, ResourceSet] = {}
        """By namespace: a set holding that namespace's outbound route table."""
        self._proxies: dict[str, ProxyState] = {}
        self._proxies_in: Counter[str] = Counter()
        """How many proxies each namespace has (as translated): whose tables to keep."""
        self._identities: Counter[tuple[str, str]] = Counter()
        """How many proxies each identity (namespace, service account) has, as translated."""
        self.on_identities: Callable[[frozenset[tuple[str, str]]], None] | None = None
        """Told the set of identities whenever it changes (the certificate issuer)."""
        self.index = DependencyIndex()
        """Fact -> the units that read it; unit -> what it built (see `deps`)."""
        self._refs: RefCache = {}
        self._resolver: tuple[MeshSnapshot, Provenance] | None = None
        self.synced = False
        self.generation = 0
        self.object_errors: ErrorTable[ObjectKey] = ErrorTable()
        """Upserts left out because translating them raised; cleared by their next change."""
        self.unit_errors: ErrorTable[str] = ErrorTable()
        """Units kept at their last good resources though no change was to blame."""
        self.on_generation: Callable[[GenerationRecord], None] | None = None
        """Told of every committed batch that changed an object (push history)."""
        self.retranslated = 0
        """Proxy translations run so far (benchmarks and tests read it)."""
        self.metrics: PipelineMetrics | None = None
        """Pushes, build time and validation failures (`MeshPipeline.metrics` sets it)."""
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

    def dependents(self, key: ObjectKey) -> tuple[Dependents, list[str]]:
        """The units and resources built from `key`, and the proxies holding them."""
        also: list[Fact] = []
        if key.kind is Kind.SERVICE:
            also.append(slices_fact(key.namespace, key.name))
        elif key.kind is Kind.ENDPOINT_SLICE:
            # A slice is read through its Service, which the slice itself names.
            endpoint_slice = self.mesh.endpoint_slices.get((key.namespace, key.name))
            if endpoint_slice is not None:
                also.append(slices_fact(key.namespace, endpoint_slice.service_name))
        found = self.index.dependents(key, also)
        proxies: set[str] = set()
        for unit in found.units:
            held_by = GENERATOR_OF[unit[0]].held_by
            if held_by == "every proxy":
                proxies.update(self._proxies)
            elif held_by == "namespace":
                proxies.update(n for n, s in self._proxies.items() if s.proxy.namespace == unit[1])
            elif unit[1] in self._proxies:
                proxies.add(unit[1])
        return found, sorted(proxies)

    # -- a batch: plan, isolate, commit ------------------------------------------------

    def apply(self, changes: ChangeSet) -> None:
        """Apply a (debounced) ChangeSet and publish every affected proxy's snapshot.

        Upserts whose translation raises are left out (see the module doc).
        """
        started = time.perf_counter()
        for key in (*changes.upserts, *changes.deletes):
            self.object_errors.clear(key)  # the object's new state gets a fresh chance
        left_out: ObjectErrors = []
        plan = self._plan(changes, left_out, self.metrics)
        for key, message in left_out:
            self.object_errors.set(key, message)
        if plan is not None:
            self._commit(plan)
        if self.metrics is not None:
            self.metrics.batch_built(time.perf_counter() - started)

    def _plan(
        self, changes: ChangeSet, left_out: ObjectErrors, metrics: PipelineMetrics | None = None
    ) -> Plan | None:
        """The plan for `changes`, leaving out (into `left_out`) the objects that raise;
        `metrics` count those left out for breaking Envoy's rules (not in a preview)."""
        base = self.mesh
        memo: Memo = {}
        dropped: set[ObjectKey] = set()
        """Upserts not made: the mesh keeps the version it has."""
        taken_out: set[ObjectKey] = set()
        """Objects deleted from the mesh: their version in it is what raises."""
        effective = changes
        while True:  # each round leaves out one more object, at most twice each: this ends
            if changes and not effective:
                return None  # every change was left out: nothing to publish
            outcome = Planner(
                self._proxies,
                self._proxies_in,
                self._route_tables,
                self.index,
                synced=self.synced,
                refs=self._refs,
            ).plan(base, effective, memo)
            if isinstance(outcome, Plan):
                return outcome
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
                left_out.append((key, message))
                if metrics is not None and isinstance(error, EnvoyValidationError):
                    metrics.validation_failed(error.type_url)
                logger.error("%s\n%s", message, frames(error))
            effective = isolation.without(changes, dropped, taken_out)

    def _commit(self, plan: Plan) -> None:
        self.mesh = plan.mesh
        self._resolver = None  # it holds the old mesh
        self.generation += 1
        before = (self._clusters.resources, self._endpoints.resources)
        self._clusters.update(plan.cluster_updates)
        self._endpoints.update(plan.endpoint_updates)
        # By identity: `evolve` returns the same set when nothing in it changed.
        shared_changed = (
            before[0] is not self._clusters.resources or before[1] is not self._endpoints.resources
        )
        for unit, error in plan.unit_errors.items():
            if error is None:
                self.unit_errors.clear(unit)
            else:
                self.unit_errors.set(unit, error)
                logger.error("%s", error)
        identities = frozenset(self._identities)
        for state, proxy in plan.moved:
            self._count(state.proxy, -1)
            self._count(proxy, +1)
            state.proxy = proxy
        self._tell_identities(identities)
        self._record_units(plan)
        for key, _, after in plan.changed:
            if after is None:
                self._refs.pop(f"{key.kind.value}/{key.namespace}/{key.name}", None)
        routes_changed: set[str] = set()
        if plan.route_tables is not None:
            self._route_tables, self._tables_current = plan.route_tables, True
            old_routes = self._routes
            self._routes = {
                namespace: old_routes.get(namespace, ResourceSet()).replace_all(
                    {resource.name: resource}
                )
                for namespace, resource in plan.route_resources.items()
            }
            routes_changed = {ns for ns, rs in self._routes.items() if old_routes.get(ns) is not rs}
        elif any(key.kind is Kind.SERVICE for key, _, _ in plan.changed):
            self._tables_current = False  # no table to rebuild now: the next one is built fresh
        if plan.moved:
            self._drop_unused_routes()
        pushes: list[ProxyPush] = []
        if self.synced:
            touched = set(plan.translated) | set(plan.failed)
            for node_id, state in self._proxies.items():
                held = shared_changed or state.proxy.namespace in routes_changed
                if (held or node_id in touched) and (push := self._publish_planned(state, plan)):
                    pushes.append(push)
        if self.metrics is not None and plan.changed:
            self.metrics.batch_pushed((key.kind for key, _, _ in plan.changed), pushes)
        self._report(plan, pushes)

    def _record_units(self, plan: Plan) -> None:
        """Put what each unit of the plan read and built into the index."""
        for unit, reads in plan.reads.items():
            if unit[0] == "service":
                key = (unit[1], unit[2])
                if key not in plan.mesh.services:
                    if unit in self.index:
                        self.index.drop(unit)
                    continue
                built = [(CLUSTER, r.name) for r in plan.cluster_updates.get(key, ())]
                built += [(ENDPOINT, r.name) for r in plan.endpoint_updates.get(key, ())]
                self.index.record(unit, reads, built)
            elif unit[0] == "proxy" and unit[1] in plan.translated:
                clusters, listeners, secrets = plan.translated[unit[1]]
                built = [(CLUSTER, n) for n in clusters] + [(LISTENER, n) for n in listeners]
                built += [(SECRET, n) for n in secrets]
                self.index.record(unit, reads, built)
        self.retranslated += len(plan.translated)

    def _report(self, plan: Plan, pushes: list[ProxyPush]) -> None:
        if self.on_generation is None or not plan.changed:
            return
        if not pushes and all(before == after for _, before, after in plan.changed):
            return  # only origins moved (a file reordered, a Pod's status): nothing to tell
        record = generation_record(
            self.generation, plan.changes.observed_at, plan.changed, plan.ran, pushes
        )
        try:
            self.on_generation(record)
        except Exception:  # history must never stop a push
            logger.exception("on_generation failed for generation %d", self.generation)

    def _publish_planned(self, state: ProxyState, plan: Plan) -> ProxyPush | None:
        failure = plan.failed.get(state.declared.node_id)
        if failure is not None:
            state.error = failure
            return None
        # Neither history nor metrics: no names to gather.
        report = self.on_generation is not None or self.metrics is not None
        return self._publish(state, plan.translated.get(state.declared.node_id), report=report)

    # -- dry run ----------------------------------------------------------------------

    def preview(self, changes: ChangeSet) -> Preview:
        """What `changes` would change for each proxy, translated on a copy of the state.

        Nothing is committed: the mesh, the index, the cache and every proxy
        stay as they are.  Objects translation would leave out are in `errors`.
        """
        left_out: ObjectErrors = []
        plan = self._plan(changes, left_out)
        errors = tuple((shown_key(key), message) for key, message in left_out)
        if plan is None or not self.synced:
            return Preview({}, errors)
        clusters, endpoints = self._clusters.copy(), self._endpoints.copy()
        clusters.update(plan.cluster_updates)
        endpoints.update(plan.endpoint_updates)
        tables = plan.route_tables or self._current_tables(plan.mesh)
        identity = {state.declared.node_id: proxy for state, proxy in plan.moved}
        proxies: dict[str, tuple[ResourceChange, ...]] = {}
        for node_id, state in self._proxies.items():
            current = self.cache.get_snapshot(node_id)
            if current is None or node_id in plan.failed:
                continue
            own_clusters, listeners, secrets = plan.translated.get(
                node_id, (state.clusters, state.listeners, state.secrets)
            )
            namespace = identity.get(node_id, state.proxy).namespace
            route = plan.route_resources.get(namespace) or tables.resource(namespace)
            proposed: dict[str, Mapping[str, Resource]] = {
                CLUSTER: LayeredResources(own_clusters, clusters.resources),
                ENDPOINT: endpoints.resources,
                LISTENER: listeners,
                ROUTE: {route.name: route},
                SECRET: secrets,
            }
            found = resource_changes(current, proposed)
            if found:
                proxies[node_id] = found
        return Preview(proxies, errors)

    # -- route tables and namespaces ----------------------------------------------------

    def route_issues(self) -> dict[ObjectKey, tuple[str, ...]]:
        """Rules the current route tables left out, by route (for its status).

        A GRPCRoute winning a port over HTTPRoutes is not among them: status
        derives that `Conflicted` from the model itself.
        """
        tables = self._route_tables
        found: dict[ObjectKey, list[str]] = {}
        for issue in tables.issues if tables is not None else ():
            if issue.conflict:
                continue
            kind, _, rest = issue.route.partition("/")
            namespace, _, name = rest.partition("/")
            key = ObjectKey(Kind(kind), namespace, name)
            text = f"{issue.field}: {issue.message}"
            if text not in found.setdefault(key, []):
                found[key].append(text)
        return {key: tuple(texts) for key, texts in found.items()}

    def _current_tables(self, mesh: MeshSnapshot) -> translate.OutboundRouteTables:
        if self._route_tables is None or not self._tables_current:
            return translate.outbound_route_tables(mesh, self._route_tables)
        return self._route_tables

    def _routes_of(self, namespace: str) -> ResourceSet:
        """`namespace`'s route table, built now if no proxy there had needed it yet."""
        routes = self._routes.get(namespace)
        if routes is None:
            if self._route_tables is None or not self._tables_current:
                self._route_tables = self._current_tables(self.mesh)
                self._tables_current = True
            provenance = self._provenance()
            resource = route_table_resource(self._route_tables, namespace, provenance)
            routes = ResourceSet([resource])
            self._routes[namespace] = routes
            self.index.record(route_unit(namespace), ROUTE_READS, [(ROUTE, resource.name)])
        return routes

    def _drop_unused_routes(self) -> None:
        """Forget the tables of namespaces that have no proxy any more."""
        for namespace in [ns for ns in self._routes if ns not in self._proxies_in]:
            del self._routes[namespace]
            self.index.drop(route_unit(namespace))

    def _count(self, proxy: Proxy, delta: int) -> None:
        """Count a proxy into (+1) or out of (-1) its namespace and its identity."""
        _bump(self._proxies_in, proxy.namespace, delta)
        _bump(self._identities, (proxy.namespace, proxy.service_account), delta)

    @property
    def identities(self) -> frozenset[tuple[str, str]]:
        """The (namespace, service account) of every proxy, as translated."""
        return frozenset(self._identities)

    def _tell_identities(self, before: frozenset[tuple[str, str]]) -> None:
        if self.on_identities is None or before == self._identities.keys():
            return
        try:
            self.on_identities(frozenset(self._identities))
        except Exception:  # the issuer must never stop a push
            logger.exception("on_identities failed")

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
        identities = frozenset(self._identities)
        if state is not None:
            self._count(state.proxy, -1)
        state = ProxyState(proxy, with_workload(proxy, self.mesh))
        self._proxies[proxy.node_id] = state
        self._count(state.proxy, +1)
        self._tell_identities(identities)
        if self.synced:
            self._retranslate(state)
        self._drop_unused_routes()

    def remove_proxy(self, node_id: str) -> None:
        state = self._proxies.pop(node_id, None)
        self.cache.clear(node_id)
        if proxy_unit(node_id) in self.index:
            self.index.drop(proxy_unit(node_id))
        if state is not None:
            identities = frozenset(self._identities)
            self._count(state.proxy, -1)
            self._tell_identities(identities)
            self._drop_unused_routes()

    def _retranslate(self, state: ProxyState) -> None:
        """Translate one proxy on the current mesh and publish it (outside any batch)."""
        started = time.perf_counter()
        reads: set[Fact] = set()
        provenance = self._provenance()
        metrics = self.metrics
        try:
            translated = proxy_resources(self.mesh, state, state.proxy, provenance, reads)
        except Exception as error:  # one proxy's failure is that proxy's alone
            state.error = proxy_failure(state.proxy.node_id, error)
            if metrics is not None and isinstance(error, EnvoyValidationError):
                metrics.validation_failed(error.type_url)
            return
        self.retranslated += 1
        clusters, listeners, secrets = translated
        built = (
            [(CLUSTER, n) for n in clusters]
            + [(LISTENER, n) for n in listeners]
            + [(SECRET, n) for n in secrets]
        )
        self.index.record(proxy_unit(state.declared.node_id), reads, built)
        previous = self.cache.get_snapshot(state.proxy.node_id)
        self._publish(state, translated, report=False)
        if metrics is not None:
            pushed = changed_types(previous, self.cache.get_snapshot(state.proxy.node_id))
            metrics.types_pushed(pushed, TRIGGER_PROXY)
            metrics.proxy_built(time.perf_counter() - started)

    def _provenance(self) -> Provenance:
        """A resolver on the current mesh, kept while the mesh is: proxies joining one
        after another share its resolutions (a route table names 10,000 Services)."""
        if self._resolver is None or self._resolver[0] is not self.mesh:
            self._resolver = (self.mesh, Provenance(self.mesh, self._refs))
        return self._resolver[1]

    def _publish(
        self, state: ProxyState, translated: ProxyResources | None, *, report: bool = True
    ) -> ProxyPush | None:
        """Publish `state`'s snapshot, with `translated` as its own resources if given.

        With `report`, says what it changed for the proxy (push history, metrics); a proxy
        joining is not a push of any generation, and its first snapshot is all new.
        """
        proxy = state.proxy
        try:
            routes = self._routes_of(proxy.namespace)
        except Exception as error:
            state.error = proxy_failure(proxy.node_id, error)
            return None
        if translated is not None:
            state.clusters, state.listeners, state.secrets = translated
        snapshot = Snapshot(
            resources={
                CLUSTER: LayeredResources(state.clusters, self._clusters.resources),
                ENDPOINT: self._endpoints.resources,
                LISTENER: state.listeners,
                ROUTE: routes,
                SECRET: state.secrets,
            },
            version=str(self.generation),
        )
        if self.resource_hook is not None:
            snapshot = self.resource_hook(proxy, snapshot)
        previous = self.cache.get_snapshot(proxy.node_id)
        try:
            self.cache.set_snapshot(proxy.node_id, snapshot)
        except InconsistentSnapshotError as error:
            state.error = bounded(str(error))
            return None
        except Exception as error:  # a bug in the check must not stop the other proxies
            state.error = proxy_failure(proxy.node_id, error)
            return None
        state.error = None
        return proxy_push(proxy.node_id, previous, snapshot) if report else None


def _bump(counter: Counter[Any], key: object, delta: int) -> None:
    count = counter[key] + delta
    if count > 0:
        counter[key] = count
    else:
        counter.pop(key, None)
