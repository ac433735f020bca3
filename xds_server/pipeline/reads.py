"""What a generator read of the mesh, as facts the dependency index can look up.

A generator declares its inputs by what it reads.  Translation functions take
a `MeshSnapshot`; a generator hands them a `TrackedMesh` instead, the same
snapshot (sharing its fields and derived views) that notes each query as a
`Fact`:

* `("obj", kind, namespace, name)`: one object, looked up or yielded by a query;
* `("ns", kind, namespace)`: every object of a kind in a namespace (a selector
  scan: a new Service in that namespace may select the proxy);
* `("all", kind)`: every object of a kind (the mesh-wide Service list);
* `("all", kind, surface)`: one aspect of every object of a kind (`SURFACES`):
  the route tables read only what routing sees of each Service (its ports and
  cluster IP), so a selector or targetPort change does not rebuild them;
* `("slices", namespace, service)`: the EndpointSlices of one Service (a slice
  names its Service, so a slice arriving before or after it is the same fact);
* `("parent", namespace, service)`: the routes whose parentRefs name one
  Service (a route moving from one parent to another changes both);
* `("view", name)`: a value derived once per snapshot (`MeshSnapshot.derive`)
  whose *value* is compared between snapshots, so a change that leaves it
  equal reaches none of its readers (`COMPARED_VIEWS`).

`changed_facts` turns a ChangeSet into the facts it changed.  Adding a kind
adds facts, not branches: a generator that reads it is found through them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from xds_server.model import (
    ChangeSet,
    EndpointSlice,
    Kind,
    MeshSnapshot,
    ObjectKey,
    PortProtocol,
    Service,
)
from xds_server.model.changes import MeshObject
from xds_server.model.policy import Attachment
from xds_server.model.routes import GRPCRoute, HTTPRoute, MeshRoute, service_parents
from xds_server.model.security import (
    TRUST_ROOTS_KEY,
    AuthorizationPolicy,
    PeerAuthentication,
    TrustRoots,
    WorkloadCertificate,
)
from xds_server.model.telemetry import Telemetry
from xds_server.model.types import Labels, Workload
from xds_server.translate import locality
from xds_server.translate.listeners import tcp_port_owners
from xds_server.translate.naming import mesh_ports
from xds_server.translate.virtual_hosts import shaping_policy

logger = logging.getLogger(__name__)

T = TypeVar("T")

Fact = tuple[Any, ...]


def _routing(service: Service) -> Any:
    """What routing sees of a Service: its ports (number, name, protocols) and cluster IP."""
    ports = tuple((p.port, p.name, p.protocol, p.app_protocol) for p in service.ports)
    return (ports, service.cluster_ip)


SURFACES: dict[Kind, dict[str, Callable[[Any], Any]]] = {
    Kind.SERVICE: {"routing": _routing},
}
"""Aspects of a kind that some generator reads of every object, by name."""


def _has_tcp_port(obj: object) -> bool:
    return isinstance(obj, Service) and any(
        port.mesh_protocol is PortProtocol.TCP for port in mesh_ports(obj)
    )


@dataclasses.dataclass(frozen=True)
class ComparedView:
    """A derived view compared by value: `compute` derives it, `shape` is what is compared.

    `relevant(before, after)` says whether a changed object can change it at all,
    so the view is not even computed for changes that cannot.
    """

    kinds: frozenset[Kind]
    compute: Callable[[MeshSnapshot], Any]
    shape: Callable[[Any], Any]
    relevant: Callable[[object, object], bool]


def _owners_shape(owners: list[tuple[int, tuple[Service, Any]]]) -> Any:
    # What the listeners use of each owner: its port, its name and the port it owns.
    return [(number, s.namespace, s.name, p) for number, (s, p) in owners]


ROUTE_POLICIES = "route_policies"


def route_policies(mesh: MeshSnapshot) -> tuple[Any, ...]:
    """Each Service whose governing BackendPolicy sets what routes carry (default retries
    or timeouts), with that policy: all of BackendPolicy the route tables read.

    Computed once per snapshot.  A mesh without such a policy has none to resolve
    (the common case: policies that shape clusters only), so a policy change there
    costs the route tables nothing.
    """
    return mesh.derive(ROUTE_POLICIES, lambda: _route_policies(mesh))


def _route_policies(mesh: MeshSnapshot) -> tuple[Any, ...]:
    if not any(shaping_policy(p) for p in mesh.backend_policies.values()):
        return ()
    found = []
    for key in sorted(mesh.services):
        attachment = mesh.backend_policy_for(mesh.services[key])
        if attachment is not None and shaping_policy(attachment.policy) is not None:
            found.append((key, attachment.policy, attachment.policy.origin))
    return tuple(found)


COMPARED_VIEWS: dict[str, ComparedView] = {
    ROUTE_POLICIES: ComparedView(
        frozenset({Kind.BACKEND_POLICY}),
        route_policies,
        lambda found: found,
        lambda before, after: True,
    ),
    "tcp_port_owners": ComparedView(
        frozenset({Kind.SERVICE}),
        tcp_port_owners,
        _owners_shape,
        lambda before, after: _has_tcp_port(before) or _has_tcp_port(after),
    ),
    locality.VIEW: ComparedView(
        frozenset(
            {
                Kind.SERVICE,
                Kind.ENDPOINT_SLICE,
                Kind.BACKEND_POLICY,
                Kind.WORKLOAD,
                Kind.PEER_AUTHENTICATION,
            }
        ),
        locality.locality_targets,
        lambda targets: targets,
        locality.targets_changed,
    ),
}
"""Derived views compared by value, with the kinds they are computed from."""
VIEW_KINDS: dict[str, frozenset[Kind]] = {
    "outbound_route_tables": frozenset(
        {Kind.SERVICE, Kind.HTTP_ROUTE, Kind.GRPC_ROUTE, Kind.BACKEND_POLICY}
    ),
}
"""Derived views read as "every object of these kinds" (not worth comparing)."""
UNTRACKED_VIEWS = frozenset(
    {
        "services_by_namespace",
        "policies_by_namespace",
        "authorization_by_namespace",
        "peer_auth_by_namespace",
        "telemetry_by_namespace",
        "workloads_by_namespace",
        "routes_by_parent",
        ROUTE_POLICIES,
    }
)
"""Indexes whose readers record their own, finer facts (`services_selecting`)."""

_FIELDS = [f.name for f in dataclasses.fields(MeshSnapshot)]


def object_fact(key: ObjectKey) -> Fact:
    return ("obj", key.kind, key.namespace, key.name)


def slices_fact(namespace: str, service: str) -> Fact:
    return ("slices", namespace, service)


def parent_fact(namespace: str, service: str) -> Fact:
    """The routes (HTTPRoute, GRPCRoute) whose parentRefs name one Service."""
    return ("parent", namespace, service)


class TrackedMesh(MeshSnapshot):
    """`mesh`, noting every query into `reads` (see the module doc)."""

    def __init__(self, mesh: MeshSnapshot, reads: set[Fact]) -> None:
        for name in _FIELDS:
            object.__setattr__(self, name, getattr(mesh, name))
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_untracked", mesh)

    @property
    def reads(self) -> set[Fact]:
        reads: set[Fact] = self.__dict__["_reads"]
        return reads

    def derive(self, key: str, compute: Callable[[], T]) -> T:
        if key in UNTRACKED_VIEWS:
            pass
        elif key in COMPARED_VIEWS:
            self.reads.add(("view", key))
        else:
            for kind in VIEW_KINDS.get(key, frozenset(Kind)):
                self.reads.add(("all", kind))
        # Computed on the plain snapshot: the view's own reads are not this reader's.
        # `compute` may close over this tracked mesh (`lambda: view(mesh)`), so its
        # reads go to a throwaway set while it runs.
        untracked: MeshSnapshot = self.__dict__["_untracked"]
        reads = self.reads
        object.__setattr__(self, "_reads", set())
        try:
            return untracked.derive(key, compute)
        finally:
            object.__setattr__(self, "_reads", reads)

    def service(self, namespace: str, name: str) -> Service | None:
        self.reads.add(("obj", Kind.SERVICE, namespace, name))
        return super().service(namespace, name)

    def slices_of(self, service: Service) -> tuple[EndpointSlice, ...]:
        self.reads.add(slices_fact(service.namespace, service.name))
        return super().slices_of(service)

    def sorted_services(self) -> Iterator[Service]:
        self.reads.add(("all", Kind.SERVICE))
        return super().sorted_services()

    def routed_services(self) -> Iterator[Service]:
        self.reads.add(("all", Kind.SERVICE, "routing"))
        return MeshSnapshot.sorted_services(self)

    def backend_policy_for(self, service: Service) -> Attachment | None:
        # Every policy of the Service's namespace and of the root namespace is a
        # candidate (a new one may attach, or conflict), so those are the facts.
        self.reads.add(("ns", Kind.BACKEND_POLICY, service.namespace))
        self.reads.add(("ns", Kind.BACKEND_POLICY, self.root_namespace))
        return super().backend_policy_for(service)

    def authorization_policies_in(self, namespace: str) -> tuple[AuthorizationPolicy, ...]:
        self.reads.add(("ns", Kind.AUTHORIZATION_POLICY, namespace))
        return super().authorization_policies_in(namespace)

    def peer_authentications_in(self, namespace: str) -> tuple[PeerAuthentication, ...]:
        self.reads.add(("ns", Kind.PEER_AUTHENTICATION, namespace))
        return super().peer_authentications_in(namespace)

    def telemetries_in(self, namespace: str) -> tuple[Telemetry, ...]:
        self.reads.add(("ns", Kind.TELEMETRY, namespace))
        return super().telemetries_in(namespace)

    def routes_for(self, namespace: str, name: str) -> tuple[MeshRoute, ...]:
        self.reads.add(parent_fact(namespace, name))
        return super().routes_for(namespace, name)

    def workloads_in(self, namespace: str) -> tuple[Workload, ...]:
        self.reads.add(("ns", Kind.WORKLOAD, namespace))
        return super().workloads_in(namespace)

    def certificate_of(self, namespace: str, service_account: str) -> WorkloadCertificate | None:
        self.reads.add(("obj", Kind.WORKLOAD_CERTIFICATE, namespace, service_account))
        return super().certificate_of(namespace, service_account)

    @property
    def roots(self) -> TrustRoots | None:
        self.reads.add(("obj", Kind.TRUST_ROOTS, *TRUST_ROOTS_KEY))
        return self.trust_roots.get(TRUST_ROOTS_KEY)

    def services_selecting(self, namespace: str, labels: Labels) -> Iterator[Service]:
        # The scan reads every Service of the namespace, so that one fact covers each
        # (a change to any of them, its origin included, emits it): no fact per match,
        # and the proxies of one namespace share one read set.
        self.reads.add(("ns", Kind.SERVICE, namespace))
        return super().services_selecting(namespace, labels)


def _table(mesh: MeshSnapshot, kind: Kind) -> Any:
    return mesh.table(kind)


def changed_objects(
    base: MeshSnapshot, mesh: MeshSnapshot, changes: ChangeSet
) -> list[tuple[ObjectKey, MeshObject | None, MeshObject | None]]:
    """(key, before, after) for each object whose value or origin the batch changed."""
    changed = []
    for key in (*changes.deletes, *changes.upserts):
        old = _table(base, key.kind).get((key.namespace, key.name))
        new = _table(mesh, key.kind).get((key.namespace, key.name))
        if old != new or (old is not None and new is not None and old.origin != new.origin):
            changed.append((key, old, new))
    return changed


Changed = tuple[ObjectKey, MeshObject | None, MeshObject | None]


def facts_of(changed: Iterable[Changed]) -> set[Fact]:
    """The facts that changed objects change (views excluded: see `changed_views`)."""
    facts: set[Fact] = set()
    for key, old, new in changed:
        facts.add(object_fact(key))
        facts.add(("ns", key.kind, key.namespace))
        facts.add(("all", key.kind))
        moved = old is not None and new is not None and old.origin != new.origin
        for surface, project in SURFACES.get(key.kind, {}).items():
            if old is None or new is None or moved or project(old) != project(new):
                facts.add(("all", key.kind, surface))
        for obj in (old, new):
            if isinstance(obj, EndpointSlice):
                facts.add(slices_fact(obj.namespace, obj.service_name))
            elif isinstance(obj, HTTPRoute | GRPCRoute):
                for parent in service_parents(obj):
                    facts.add(parent_fact(parent.namespace or obj.namespace, parent.name))
    return facts


def changed_views(
    base: MeshSnapshot, mesh: MeshSnapshot, changed: Iterable[Changed], read: Iterable[str]
) -> set[Fact]:
    """`("view", name)` for each view in `read` whose value differs between the snapshots.

    Only views someone reads are computed, and only when an object changed
    that can change them.
    """
    changed = list(changed)
    found: set[Fact] = set()
    for name in read:
        view = COMPARED_VIEWS.get(name)
        if view is None or not any(
            key.kind in view.kinds and view.relevant(old, new) for key, old, new in changed
        ):
            continue
        if view.shape(view.compute(base)) != view.shape(view.compute(mesh)):
            found.add(("view", name))
    return found
