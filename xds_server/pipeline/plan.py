"""Planning a batch: every translation it needs, computed before anything is committed.

`SnapshotBuilder.apply` turns a ChangeSet into new snapshots in two steps.
The `Planner` computes the new mesh and everything translated from it (each
touched Service's clusters and load assignments, the route tables when a
Service changed, each affected proxy's own clusters and listeners) into a
`Plan`, touching none of the builder's state.  The builder then commits the
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from xds_server import translate
from xds_server.cache import ResourceSet
from xds_server.model import ChangeSet, EndpointSlice, Kind, MeshSnapshot, ObjectKey, Proxy, Service
from xds_server.model.mesh import NamespacedName
from xds_server.pipeline import isolation
from xds_server.pipeline.errors import bounded, describe, frames
from xds_server.pipeline.isolation import Culprit, shown_key
from xds_server.pipeline.workloads import with_workload, workloads_by_ip
from xds_server.resources import Resource, make_resource

logger = logging.getLogger(__name__)

ROUTE_TABLES = "outbound route tables"
"""The unit under which a route-table failure that no change explains is listed."""

ProxyResources = tuple[ResourceSet, ResourceSet]
"""A proxy's own clusters and listeners."""
ServiceResources = tuple[list[Resource], list[Resource]]
"""A Service's outbound clusters and load assignments."""
Memo = dict[NamespacedName, tuple[Service, tuple[EndpointSlice, ...], ServiceResources]]
"""Service translations already made for this batch, reused by its later rounds."""


@dataclass
class ProxyState:
    declared: Proxy
    """As the proxy's node metadata describes it."""
    proxy: Proxy
    """As translated: `declared`, with what its Pod says (see `with_workload`)."""
    clusters: ResourceSet = field(default_factory=ResourceSet)
    listeners: ResourceSet = field(default_factory=ResourceSet)
    error: str | None = None


def _resources(messages: Iterable[Message]) -> list[Resource]:
    return [make_resource(m) for m in messages]


def proxy_resources(mesh: MeshSnapshot, state: ProxyState, proxy: Proxy) -> ProxyResources:
    """`proxy`'s clusters and listeners on `mesh`, evolved from what `state` holds."""
    clusters = {r.name: r for r in _resources(translate.proxy_clusters(mesh, proxy))}
    listeners = {r.name: r for r in _resources(translate.proxy_listeners(mesh, proxy))}
    return state.clusters.replace_all(clusters), state.listeners.replace_all(listeners)


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
    failed: dict[str, str] = field(default_factory=dict)
    """Proxies whose translation raised with no change to blame: they keep their snapshot."""
    unit_errors: dict[str, str | None] = field(default_factory=dict)
    """Per unit, its new error, or None where it translated again (clearing the old one)."""


class Planner:
    """Plans batches against the builder's current proxies and tables (read, never written)."""

    def __init__(
        self,
        proxies: Mapping[str, ProxyState],
        proxies_in: Counter[str],
        route_tables: translate.OutboundRouteTables | None,
        *,
        synced: bool,
    ) -> None:
        self._proxies = proxies
        self._proxies_in = proxies_in
        self._route_tables = route_tables
        self._synced = synced

    def plan(self, base: MeshSnapshot, changes: ChangeSet, memo: Memo) -> Plan | list[Culprit]:
        """The plan for `changes` on `base`, or the objects to leave out before trying again."""
        mesh, touched = base.apply(changes)
        plan = Plan(changes, mesh)
        culprits: list[Culprit] = []
        for key in sorted(touched):
            try:
                clusters, assignments = _service_resources(mesh, key, memo)
            except Exception as error:
                culprit = isolation.service_culprit(mesh, key)
                if culprit is not None:
                    culprits.append(culprit)
                else:
                    plan.unit_errors[service_unit(key)] = (
                        f"{service_unit(key)}: translating its clusters and endpoints raised "
                        f"{describe(error)}; the last good ones stay in force"
                    )
                continue
            plan.cluster_updates[key] = clusters
            plan.endpoint_updates[key] = assignments
            plan.unit_errors[service_unit(key)] = None
        if culprits:
            return culprits
        if Kind.WORKLOAD in changes.kinds:
            plan.moved = self._moved(mesh)
        if Kind.SERVICE in changes.kinds and (found := self._plan_routes(base, plan)):
            return found
        if self._synced and (found := self._plan_proxies(base, plan)):
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

    def _plan_routes(self, base: MeshSnapshot, plan: Plan) -> list[Culprit] | None:
        namespaces = self._namespaces_after(plan.moved)

        def build(mesh: MeshSnapshot) -> tuple[translate.OutboundRouteTables, dict[str, Resource]]:
            tables = translate.outbound_route_tables(mesh, self._route_tables)
            return tables, {namespace: tables.resource(namespace) for namespace in namespaces}

        try:
            plan.route_tables, plan.route_resources = build(plan.mesh)
        except Exception as error:
            culprit = isolation.mesh_culprit(
                base, plan.changes, build, kinds=frozenset({Kind.SERVICE})
            )
            if culprit is not None:
                return [culprit]
            plan.unit_errors[ROUTE_TABLES] = (
                f"{ROUTE_TABLES}: rebuilding them raised {describe(error)}; "
                "the last good ones stay in force"
            )
            return None
        plan.unit_errors[ROUTE_TABLES] = None
        return None

    def _plan_proxies(self, base: MeshSnapshot, plan: Plan) -> list[Culprit] | None:
        identity = {state.declared.node_id: proxy for state, proxy in plan.moved}
        if plan.changes.kinds == {Kind.WORKLOAD}:
            states = [state for state, _ in plan.moved]  # nothing mesh-wide changed
        elif plan.changes.endpoints_only:
            return None  # proxies keep their own resources and take the new endpoints
        else:
            states = list(self._proxies.values())
        meshes: dict[int, MeshSnapshot] = {}  # shared by the searches of this batch
        for state in states:
            node_id = state.declared.node_id
            try:
                plan.translated[node_id] = proxy_resources(
                    plan.mesh, state, identity.get(node_id, state.proxy)
                )
            except Exception as error:

                def translate_it(mesh: MeshSnapshot, state: ProxyState = state) -> object:
                    return proxy_resources(mesh, state, with_workload(state.declared, mesh))

                culprit = isolation.mesh_culprit(base, plan.changes, translate_it, meshes=meshes)
                if culprit is not None:
                    return [culprit]
                plan.failed[node_id] = proxy_failure(node_id, error)
        return None


def _service_resources(mesh: MeshSnapshot, key: NamespacedName, memo: Memo) -> ServiceResources:
    """`isolation.service_resources`, once per (Service, slices) over a batch's rounds."""
    service, slices = mesh.services.get(key), mesh.slices_by_service.get(key, ())
    if service is None:
        return [], []
    known = memo.get(key)
    if known is not None and known[0] is service and known[1] == slices:
        return known[2]
    resources = isolation.service_resources(mesh, key)
    memo[key] = (service, slices, resources)
    return resources
