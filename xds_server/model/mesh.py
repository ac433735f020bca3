"""MeshSnapshot: the whole mesh at one instant, immutable and indexed.

Applying a ChangeSet returns a new snapshot and says which services it
touched, so the pipeline re-translates only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from xds_server.model.changes import ChangeSet, Kind, MeshObject, ObjectKey
from xds_server.model.policy import ROOT_NAMESPACE, Attachment, BackendPolicy, attached_policy
from xds_server.model.routes import GRPCRoute, HTTPRoute, MeshRoute, service_parents
from xds_server.model.security import (
    TRUST_ROOTS_KEY,
    AuthorizationPolicy,
    PeerAuthentication,
    TrustRoots,
    WorkloadCertificate,
)
from xds_server.model.telemetry import Telemetry
from xds_server.model.types import EndpointSlice, Labels, Service, Workload

NamespacedName = tuple[str, str]
T = TypeVar("T")

TABLES: dict[Kind, str] = {
    Kind.SERVICE: "services",
    Kind.ENDPOINT_SLICE: "endpoint_slices",
    Kind.WORKLOAD: "workloads",
    Kind.HTTP_ROUTE: "http_routes",
    Kind.GRPC_ROUTE: "grpc_routes",
    Kind.BACKEND_POLICY: "backend_policies",
    Kind.PEER_AUTHENTICATION: "peer_authentications",
    Kind.AUTHORIZATION_POLICY: "authorization_policies",
    Kind.WORKLOAD_CERTIFICATE: "workload_certificates",
    Kind.TRUST_ROOTS: "trust_roots",
    Kind.TELEMETRY: "telemetries",
}
"""The snapshot's field holding each kind: a new kind is a row here and a field."""
_Table = dict[NamespacedName, MeshObject]


@dataclass(frozen=True)
class MeshSnapshot:
    services: Mapping[NamespacedName, Service] = field(default_factory=dict)
    endpoint_slices: Mapping[NamespacedName, EndpointSlice] = field(default_factory=dict)
    workloads: Mapping[NamespacedName, Workload] = field(default_factory=dict)
    slices_by_service: Mapping[NamespacedName, tuple[EndpointSlice, ...]] = field(
        default_factory=dict
    )
    http_routes: Mapping[NamespacedName, HTTPRoute] = field(default_factory=dict)
    grpc_routes: Mapping[NamespacedName, GRPCRoute] = field(default_factory=dict)
    backend_policies: Mapping[NamespacedName, BackendPolicy] = field(default_factory=dict)
    peer_authentications: Mapping[NamespacedName, PeerAuthentication] = field(default_factory=dict)
    authorization_policies: Mapping[NamespacedName, AuthorizationPolicy] = field(
        default_factory=dict
    )
    workload_certificates: Mapping[NamespacedName, WorkloadCertificate] = field(
        default_factory=dict
    )
    """By (namespace, service account): the identity each certifies."""
    trust_roots: Mapping[NamespacedName, TrustRoots] = field(default_factory=dict)
    """At most one, at `TRUST_ROOTS_KEY`."""
    telemetries: Mapping[NamespacedName, Telemetry] = field(default_factory=dict)
    root_namespace: str = ROOT_NAMESPACE
    """Where a BackendPolicy without targetRefs is the mesh-wide default."""
    generation: int = 0
    # Views derived from this (immutable) snapshot, computed once and shared by
    # every proxy's translation; see `derive`.
    _derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def derive(self, key: str, compute: Callable[[], T]) -> T:
        """`compute()` once per snapshot: indexes that every proxy would rebuild otherwise."""
        try:
            value: T = self._derived[key]
        except KeyError:
            value = self._derived[key] = compute()
        return value

    def service(self, namespace: str, name: str) -> Service | None:
        return self.services.get((namespace, name))

    def slices_of(self, service: Service) -> tuple[EndpointSlice, ...]:
        return self.slices_by_service.get((service.namespace, service.name), ())

    def sorted_services(self) -> Iterator[Service]:
        for key in sorted(self.services):
            yield self.services[key]

    def routed_services(self) -> Iterator[Service]:
        """`sorted_services`, for a reader that uses only what routing sees of each
        Service (its ports and cluster IP): the pipeline tracks that read apart, so a
        selector or targetPort change does not reach it."""
        return self.sorted_services()

    def services_in(self, namespace: str) -> tuple[Service, ...]:
        """The Services of one namespace, by name (indexed once per snapshot)."""
        return self.derive("services_by_namespace", self._services_by_namespace).get(namespace, ())

    def _services_by_namespace(self) -> dict[str, tuple[Service, ...]]:
        grouped: dict[str, list[Service]] = {}
        for key in sorted(self.services):
            grouped.setdefault(key[0], []).append(self.services[key])
        return {namespace: tuple(services) for namespace, services in grouped.items()}

    def services_selecting(self, namespace: str, labels: Labels) -> Iterator[Service]:
        for service in self.services_in(namespace):
            if service.selects(labels):
                yield service

    def workloads_in(self, namespace: str) -> tuple[Workload, ...]:
        """The Pods of one namespace, by name (indexed once per snapshot)."""
        return self.derive("workloads_by_namespace", self._workloads_by_namespace).get(
            namespace, ()
        )

    def _workloads_by_namespace(self) -> dict[str, tuple[Workload, ...]]:
        grouped: dict[str, list[Workload]] = {}
        for key in sorted(self.workloads):
            grouped.setdefault(key[0], []).append(self.workloads[key])
        return {namespace: tuple(workloads) for namespace, workloads in grouped.items()}

    def certificate_of(self, namespace: str, service_account: str) -> WorkloadCertificate | None:
        """The current SVID of an identity, once the issuer has issued it."""
        return self.workload_certificates.get((namespace, service_account))

    @property
    def roots(self) -> TrustRoots | None:
        """The mesh's trust roots, once the issuer has published them."""
        return self.trust_roots.get(TRUST_ROOTS_KEY)

    def table(self, kind: Kind) -> Mapping[NamespacedName, MeshObject]:
        """The objects of one kind, by (namespace, name)."""
        return getattr(self, TABLES[kind])  # type: ignore[no-any-return]

    # -- policy, resolved once per snapshot ------------------------------------------

    def policies_in(self, namespace: str) -> tuple[BackendPolicy, ...]:
        """The BackendPolicies of one namespace, by name."""
        return self.derive("policies_by_namespace", self._policies_by_namespace).get(namespace, ())

    def _policies_by_namespace(self) -> dict[str, tuple[BackendPolicy, ...]]:
        grouped: dict[str, list[BackendPolicy]] = {}
        for key in sorted(self.backend_policies):
            grouped.setdefault(key[0], []).append(self.backend_policies[key])
        return {namespace: tuple(policies) for namespace, policies in grouped.items()}

    def authorization_policies_in(self, namespace: str) -> tuple[AuthorizationPolicy, ...]:
        """The AuthorizationPolicies of one namespace, by name (`model.authorization`)."""
        grouped = self.derive("authorization_by_namespace", self._authorization_by_namespace)
        return grouped.get(namespace, ())

    def _authorization_by_namespace(self) -> dict[str, tuple[AuthorizationPolicy, ...]]:
        grouped: dict[str, list[AuthorizationPolicy]] = {}
        for key in sorted(self.authorization_policies):
            grouped.setdefault(key[0], []).append(self.authorization_policies[key])
        return {namespace: tuple(policies) for namespace, policies in grouped.items()}

    def peer_authentications_in(self, namespace: str) -> tuple[PeerAuthentication, ...]:
        """The PeerAuthentications of one namespace, by name (`model.peer_authentication`)."""
        grouped = self.derive("peer_auth_by_namespace", self._peer_auth_by_namespace)
        return grouped.get(namespace, ())

    def telemetries_in(self, namespace: str) -> tuple[Telemetry, ...]:
        """The Telemetries of one namespace, by name (`model.telemetry_policy`)."""
        grouped = self.derive("telemetry_by_namespace", self._telemetry_by_namespace)
        return grouped.get(namespace, ())

    def _telemetry_by_namespace(self) -> dict[str, tuple[Telemetry, ...]]:
        grouped: dict[str, list[Telemetry]] = {}
        for key in sorted(self.telemetries):
            grouped.setdefault(key[0], []).append(self.telemetries[key])
        return {namespace: tuple(policies) for namespace, policies in grouped.items()}

    def _peer_auth_by_namespace(self) -> dict[str, tuple[PeerAuthentication, ...]]:
        grouped: dict[str, list[PeerAuthentication]] = {}
        for key in sorted(self.peer_authentications):
            grouped.setdefault(key[0], []).append(self.peer_authentications[key])
        return {namespace: tuple(policies) for namespace, policies in grouped.items()}

    def backend_policy_for(self, service: Service) -> Attachment | None:
        """The BackendPolicy governing `service` (see `model.policy`), if any."""
        candidates = self.policies_in(service.namespace)
        if service.namespace != self.root_namespace:
            candidates += self.policies_in(self.root_namespace)
        return attached_policy(service, candidates, self.root_namespace)

    def routes_for(self, namespace: str, name: str) -> tuple[MeshRoute, ...]:
        """The HTTPRoutes and GRPCRoutes whose parentRefs name Service namespace/name,
        from every namespace (producer and consumer routes), by kind, namespace, name."""
        return self.derive("routes_by_parent", self._routes_by_parent).get((namespace, name), ())

    def _routes_by_parent(self) -> dict[NamespacedName, tuple[MeshRoute, ...]]:
        grouped: dict[NamespacedName, list[MeshRoute]] = {}
        tables: tuple[Mapping[NamespacedName, MeshRoute], ...] = (
            self.http_routes,
            self.grpc_routes,
        )
        for table in tables:
            for key in sorted(table):
                route = table[key]
                for parent in {
                    (p.namespace or route.namespace, p.name) for p in service_parents(route)
                }:
                    grouped.setdefault(parent, []).append(route)
        return {parent: tuple(routes) for parent, routes in grouped.items()}

    def apply(self, changes: ChangeSet) -> tuple[MeshSnapshot, frozenset[NamespacedName]]:
        """A new snapshot with `changes` applied, and the services whose config changed."""
        kinds = changes.kinds
        # Only the tables of changed kinds are copied; the others are shared, unmodified.
        tables: dict[Kind, dict[NamespacedName, MeshObject]] = {
            kind: dict(self.table(kind)) if kind in kinds else cast(_Table, self.table(kind))
            for kind in Kind
        }
        touched: set[NamespacedName] = set()
        # Changed slice names by the Service they belong to (before or after the change).
        changed_slices: dict[NamespacedName, set[str]] = {}

        def note(key: ObjectKey, old: MeshObject | None, new: MeshObject | None) -> None:
            if old == new:
                return
            if key.kind is Kind.SERVICE:
                touched.add((key.namespace, key.name))
            elif key.kind is Kind.ENDPOINT_SLICE:
                for obj in (old, new):
                    if isinstance(obj, EndpointSlice):
                        service_key = (obj.namespace, obj.service_name)
                        changed_slices.setdefault(service_key, set()).add(key.name)

        for key in changes.deletes:
            note(key, tables[key.kind].pop((key.namespace, key.name), None), None)
        for key, obj in changes.upserts.items():
            table = tables[key.kind]
            note(key, table.get((key.namespace, key.name)), obj)
            table[(key.namespace, key.name)] = obj

        slices = tables[Kind.ENDPOINT_SLICE]
        by_service = dict(self.slices_by_service)
        for service_key, changed_names in changed_slices.items():
            # Rebuild only the touched groups, from the (few) slices they hold.
            names = {eps.name for eps in by_service.get(service_key, ())} | changed_names
            group = []
            for name in sorted(names):
                eps = slices.get((service_key[0], name))
                if isinstance(eps, EndpointSlice) and eps.service_name == service_key[1]:
                    group.append(eps)
            if group:
                by_service[service_key] = tuple(group)
            else:
                by_service.pop(service_key, None)
        touched.update(changed_slices)
        snapshot = MeshSnapshot(
            services=tables[Kind.SERVICE],  # type: ignore[arg-type]
            endpoint_slices=slices,  # type: ignore[arg-type]
            workloads=tables[Kind.WORKLOAD],  # type: ignore[arg-type]
            slices_by_service=by_service,
            http_routes=tables[Kind.HTTP_ROUTE],  # type: ignore[arg-type]
            grpc_routes=tables[Kind.GRPC_ROUTE],  # type: ignore[arg-type]
            backend_policies=tables[Kind.BACKEND_POLICY],  # type: ignore[arg-type]
            peer_authentications=tables[Kind.PEER_AUTHENTICATION],  # type: ignore[arg-type]
            authorization_policies=tables[Kind.AUTHORIZATION_POLICY],  # type: ignore[arg-type]
            workload_certificates=tables[Kind.WORKLOAD_CERTIFICATE],  # type: ignore[arg-type]
            trust_roots=tables[Kind.TRUST_ROOTS],  # type: ignore[arg-type]
            telemetries=tables[Kind.TELEMETRY],  # type: ignore[arg-type]
            root_namespace=self.root_namespace,
            generation=self.generation + 1,
        )
        return snapshot, frozenset(touched)
