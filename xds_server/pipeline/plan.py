"""Planning a batch: every translation it needs, computed before anything is committed.

`SnapshotBuilder.apply` turns a ChangeSet into new snapshots in two steps.
The `Planner` computes the new mesh, the facts the batch changed (`reads`),
and from the dependency index (`deps`) the units those facts reach: each
changed Service's clusters and load assignments, the route tables when the
Service list changed, and the proxies whose own clusters and listeners read
what changed (a Service selecting them, the slices naming a target port, the
TCP port owners).  It translates exactly those into a `Plan`, touching none
of the builder's state, and notes what each unit read for the index.  The builder then commits the
plan.  The split is what makes a failure cheap to isolate: when a
translation raises, the planner asks `isolation` which object is to blame
and returns it instead of a plan; the builder leaves that object out and
plans again, and no proxy ever sees half of a poisoned batch.

Where no change is to blame, the unit that raised keeps its last good
resources and the plan says so: a Service in `unit_errors`, the route tables
likewise (under `ROUTE_TABLES`), a proxy in `failed`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server import translate
from xds_server.model import ChangeSet, Kind, MeshSnapshot, ObjectKey, Proxy
from xds_server.model.mesh import NamespacedName
from xds_server.pipeline import isolation
from xds_server.pipeline.deps import DependencyIndex, Unit
from xds_server.pipeline.errors import bounded, describe, frames
from xds_server.pipeline.generators import (
    Memo,
    ProxyResources,
    ProxyState,
    proxy_resources,
    proxy_unit,
    route_table_resource,
    service_reads,
    service_resources,
    service_unit_of,
)
from xds_server.pipeline.isolation import Culprit, shown_key
from xds_server.pipeline.provenance import Provenance, RefCache
from xds_server.pipeline.reads import (
    Changed,
    Fact,
    changed_objects,
    changed_views,
    facts_of,
)
from xds_server.pipeline.workloads import with_workload, workloads_by_ip
from xds_server.resources import Resource

logger = logging.getLogger(__name__)

ROUTE_TABLES = "outbound route tables"
"""The unit under which a route-table failure that no change explains is listed."""


def proxy_failure(node_id: str, error: BaseException) -> str:
    """The error a proxy shows while it keeps its last good snapshot (logged once here)."""
    message = f"translation failed: {describe(error)}; the proxy keeps its last good config"
    logger.error("proxy %s: %s\n%s", bounded(node_id, 300), message, frames(error))
    return message


def service_unit(key: NamespacedName) -> str:
    return shown_key(ObjectKey(Kind.SERVICE, *key))


@dataclass
class Plan:
    """Everything one batch changes, computed before any of it is committed."""

    changes: ChangeSet
    mesh: MeshSnapshot
    cluster_updates: dict[NamespacedName, list[Resource]] = field(default_factory=dict)
    endpoint_updates: dict[NamespacedName, list[Resource]] = field(default_factory=dict)
    moved: list[tuple[ProxyState, Proxy]] = field(default_factory=list)
    """Proxies whose Pod gives them a new identity, with it."""
    route_tables: translate.OutboundRouteTables | None = None
    """New tables (a Service changed); None keeps the current ones."""
    route_resources: dict[str, Resource] = field(default_factory=dict)
    """With new tables: the table of each namespace that will have proxies."""
    translated: dict[str, ProxyResources] = field(default_factory=dict)
    reads: dict[Unit, frozenset[Fact]] = field(default_factory=dict)
    """What each unit that ran read: the index's new entries."""
    ran: set[Unit] = field(default_factory=set)
    """Every unit the batch's facts reached (ran, or found gone)."""
    changed: list[Changed] = field(default_factory=list)
    """(key, before, after) of each object whose value or origin changed."""
    failed: dict[str, str] = field(default_factory=dict)
    """Proxies whose translation raised with no change to blame: they keep their snapshot."""
    unit_errors: dict[str, str | None] = field(default_factory=dict)
    """Per unit, its new error, or None where it translated again (clearing the old one)."""


ROUTE_TABLE_KINDS = frozenset({Kind.SERVICE, Kind.HTTP_ROUTE, Kind.GRPC_ROUTE, Kind.BACKEND_POLICY})
"""What the route tables are built from: the kinds a failing build may be blamed on."""


class Planner:
    """Plans batches against the builder's current proxies and tables (read, never written)."""

    def __init__(
        self,
        proxies: Mapping[str, ProxyState],
        proxies_in: Counter[str],
        route_tables: translate.OutboundRouteTables | None,
        index: DependencyIndex,
        *,
        synced: bool,
        refs: RefCache | None = None,
    ) -> None:
        self._proxies = proxies
        self._proxies_in = proxies_in
        self._route_tables = route_tables
        self._index = index
        self._synced = synced
        self._refs: RefCache = refs if refs is not None else {}

    def plan(self, base: MeshSnapshot, changes: ChangeSet, memo: Memo) -> Plan | list[Culprit]:
        """The plan for `changes` on `base`, or the objects to leave out before trying again."""
        mesh, _ = base.apply(changes)
        plan = Plan(changes, mesh)
        plan.changed = list(changed_objects(base, mesh, changes))
        facts = facts_of(plan.changed)
        facts |= changed_views(base, mesh, plan.changed, self._index.views_read())
        units = self._index.hit(facts)
        # Per-Service scope: a Service that changed has a unit, new or gone.
        units.update(
            service_unit_of((key.namespace, key.name))
            for key, _, _ in plan.changed
            if key.kind is Kind.SERVICE
        )
        plan.ran = units
        provenance = Provenance(mesh, self._refs)
        culprits: list[Culprit] = []
        for unit in sorted(u for u in units if u[0] == "service"):
            key = (unit[1], unit[2])
            try:
                clusters, assignments = service_resources(mesh, key, memo, provenance)
            except Exception as error:
                culprit = isolation.service_culprit(mesh, key)
                if culprit is not None:
                    # Once: a policy governing several Services is blamed by each of them.
                    if all(culprit[0] != blamed for blamed, _ in culprits):
                        culprits.append(culprit)
                else:
                    plan.unit_errors[service_unit(key)] = (
                        f"{service_unit(key)}: translating its clusters and endpoints raised "
                        f"{describe(error)}; the last good ones stay in force"
                    )
                continue
            plan.cluster_updates[key] = clusters
            plan.endpoint_updates[key] = assignments
            plan.reads[unit] = (
                service_reads(key, mesh.root_namespace) if key in mesh.services else frozenset()
            )
            plan.unit_errors[service_unit(key)] = None
        if culprits:
            return culprits
        if Kind.WORKLOAD in changes.kinds:
            plan.moved = self._moved(mesh)
        routes_hit = any(unit[0] == "routes" for unit in units)
        if routes_hit and (found := self._plan_routes(base, plan, provenance)):
            return found
        if self._synced and (found := self._plan_proxies(base, plan, units, provenance)):
            return found
        return plan

    def _moved(self, mesh: MeshSnapshot) -> list[tuple[ProxyState, Proxy]]:
        """The proxies whose Pod gives them a new translated identity in `mesh`."""
        by_ip = workloads_by_ip(mesh)
        moved = []
        for state in self._proxies.values():
            proxy = with_workload(state.declared, mesh, by_ip)
            if proxy != state.proxy:
                moved.append((state, proxy))
        return moved

    def _namespaces_after(self, moved: list[tuple[ProxyState, Proxy]]) -> list[str]:
        counts = Counter(self._proxies_in)
        for state, proxy in moved:
            counts[state.proxy.namespace] -= 1
            counts[proxy.namespace] += 1
        return sorted(namespace for namespace, count in counts.items() if count > 0)

    def _plan_routes(
        self, base: MeshSnapshot, plan: Plan, provenance: Provenance
    ) -> list[Culprit] | None:
        namespaces = self._namespaces_after(plan.moved)

        def build(mesh: MeshSnapshot) -> tuple[translate.OutboundRouteTables, dict[str, Resource]]:
            tables = translate.outbound_route_tables(mesh, self._route_tables)
            known = provenance if mesh is plan.mesh else Provenance(mesh, self._refs)
            return tables, {
                namespace: route_table_resource(tables, namespace, known)
                for namespace in namespaces
            }

        try:
            plan.route_tables, plan.route_resources = build(plan.mesh)
        except Exception as error:
            culprit = isolation.mesh_culprit(base, plan.changes, build, kinds=ROUTE_TABLE_KINDS)
            if culprit is not None:
                return [culprit]
            plan.unit_errors[ROUTE_TABLES] = (
                f"{ROUTE_TABLES}: rebuilding them raised {describe(error)}; "
                "the last good ones stay in force"
            )
            return None
        plan.unit_errors[ROUTE_TABLES] = None
        return None

    def _plan_proxies(
        self, base: MeshSnapshot, plan: Plan, units: set[Unit], provenance: Provenance
    ) -> list[Culprit] | None:
        """Translate the proxies whose inputs changed, and those whose Pod moved them."""
        identity = {state.declared.node_id: proxy for state, proxy in plan.moved}
        hit = {unit[1] for unit in units if unit[0] == "proxy"} | set(identity)
        states = [state for node_id, state in self._proxies.items() if node_id in hit]
        meshes: dict[int, MeshSnapshot] = {}  # shared by the searches of this batch
        for state in states:
            node_id = state.declared.node_id
            reads: set[Fact] = set()
            try:
                plan.translated[node_id] = proxy_resources(
                    plan.mesh, state, identity.get(node_id, state.proxy), provenance, reads
                )
                plan.reads[proxy_unit(node_id)] = frozenset(reads)
            except Exception as error:

                def translate_it(mesh: MeshSnapshot, state: ProxyState = state) -> object:
                    return proxy_resources(mesh, state, with_workload(state.declared, mesh))

                culprit = isolation.mesh_culprit(
                    base, plan.changes, translate_it, meshes=meshes
                ) or isolation.own_workload_culprit(plan.mesh, state.declared, translate_it)
                if culprit is not None:
                    return [culprit]
                plan.failed[node_id] = proxy_failure(node_id, error)
        return None
