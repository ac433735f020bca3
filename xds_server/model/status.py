"""Status conditions of routes and policies: why each is, or is not, in force.

Computed once per snapshot from the model alone (pure; `MeshSnapshot.derive`
caches it), then overlaid with the objects the source or the pipeline
rejected.  Both status outlets read the same values: the admin API and
`xds-server status` in file mode, the `/status` subresource writer
(`sources.k8s_status`) in Kubernetes mode.  The words are the Gateway API's:

Routes (HTTPRoute, GRPCRoute) carry one entry per Service parentRef, as
`status.parents[]` (`parentRef`, `controllerName`, `conditions`):

* `Accepted`: `Accepted`; `NoMatchingParent` when the Service does not exist,
  or lacks the port (`parentRef.port`) or port name (`sectionName`) named;
  `Conflicted` when a GRPCRoute binds the same Service port from the same
  namespace (GEP-1294, "Route types": only one route type applies to a
  Service and port, GRPCRoute first); `Invalid` when the source or
  translation rejected the route (the message says why, naming the field).
  Routes of one kind for one parent are never rejected for overlapping:
  they are merged by the Gateway API's precedence (HTTPRoute "Merging").
* `ResolvedRefs`, the same on every parent: `ResolvedRefs`; `InvalidKind`
  for a backendRef (or mirror backendRef) that is not a core Service;
  `BackendNotFound` when the Service, or the port, does not exist.  A mesh
  route may send to Services of any namespace without a ReferenceGrant
  (GEP-1294, "Namespace boundaries": mesh routes augment Services rather than
  expose them), so `RefNotPermitted` is never set.

Parent Services in other namespaces make consumer routes (they apply to
requests from the route's namespace only); that is said in the message, and
is no reason to reject them.

BackendPolicy carries `status.conditions` (our `BackendPolicyStatus`), as
GEP-713 words policy status:

* `Accepted`: `Accepted` when it governs at least one scope (a Service it
  targets, a namespace, the mesh); `Conflicted` when an older policy at the
  same level wins every scope it has (`model.policy`: oldest
  creationTimestamp, then namespace/name); `TargetNotFound` when none of its
  targetRefs exists; `Invalid` when its targetRefs can attach to nothing
  (unsupported kind, another namespace from outside the root namespace), or
  when it was rejected.
* `ResolvedRefs`: every targetRef exists (`TargetNotFound`, `InvalidKind`,
  `RefNotPermitted` otherwise).  Namespaces are not watched, so a Namespace
  target always resolves.

Rejections come from outside the model (the pipeline's and the source's error
tables, keyed by object): `policy_conditions(mesh, rejected)` takes them as
`{ObjectKey: message}`; so do the rules translation left out of a route that
otherwise applies (`partial`: `PartiallyInvalid`).  A rejected object's last
good version may still be in force (or none); its status says it was rejected
all the same, because its latest spec is not what runs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from xds_server.model.changes import POLICY_KINDS, Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.policy import Attachment, BackendPolicy, attached_policy
from xds_server.model.routes import (
    BackendObjectRef,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    MeshRoute,
    ParentRef,
    RequestMirrorFilter,
    RouteFilter,
)
from xds_server.model.types import Service
from xds_server.provenance import Origin

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "xds-server.dev/mesh"
"""`status.parents[].controllerName` of the entries this control plane writes."""

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
PARTIALLY_INVALID = "PartiallyInvalid"
CONDITION_TYPES = (ACCEPTED, RESOLVED_REFS, PARTIALLY_INVALID)
"""The condition types this control plane sets (and so may replace or remove)."""

# Reasons (Gateway API `RouteConditionReason`, GEP-713 `PolicyConditionReason`).
REASON_ACCEPTED = "Accepted"
REASON_RESOLVED_REFS = "ResolvedRefs"
NO_MATCHING_PARENT = "NoMatchingParent"
CONFLICTED = "Conflicted"
INVALID = "Invalid"
BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"
REF_NOT_PERMITTED = "RefNotPermitted"
TARGET_NOT_FOUND = "TargetNotFound"
UNSUPPORTED_VALUE = "UnsupportedValue"

MAX_PROBLEMS_NAMED = 5
"""Unresolved references a message names one by one; the rest are counted."""

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition, as `metav1.Condition` holds it (without its transition time)."""

    type: str
    status: Status
    reason: str
    message: str = ""
    observed_generation: int = 0

    @property
    def holds(self) -> bool:
        return self.status == "True"


@dataclass(frozen=True, slots=True)
class ParentStatus:
    """A route's conditions for one of its Service parents."""

    parent_ref: ParentRef
    """As the route wrote it (`namespace` None: the route's own)."""
    conditions: tuple[Condition, ...]

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """What the control plane says of one route or policy."""

    key: ObjectKey
    generation: int
    conditions: tuple[Condition, ...] = ()
    """A policy's conditions; for a route, only set when it was rejected as a whole."""
    parents: tuple[ParentStatus, ...] = ()
    """A route's conditions per Service parent."""
    rejected: bool = False
    in_mesh: bool = True
    """False for a rejected object no version of which is in the mesh."""
    origin: Origin | None = field(default=None, compare=False)

    def condition(self, kind: str, parent: ParentRef | None = None) -> Condition | None:
        """The condition of `kind`: for a route, of `parent` (or of the object when rejected)."""
        if parent is not None:
            for entry in self.parents:
                if entry.parent_ref == parent:
                    return entry.condition(kind)
            return None
        return next((c for c in self.conditions if c.type == kind), None)

    @property
    def accepted(self) -> bool:
        """Every Accepted condition it carries holds (and it carries one)."""
        found = [c for c in self.conditions if c.type == ACCEPTED] + [
            c for p in self.parents for c in p.conditions if c.type == ACCEPTED
        ]
        return bool(found) and all(c.holds for c in found)


# -- the whole mesh -----------------------------------------------------------------------


def policy_conditions(
    mesh: MeshSnapshot,
    rejected: Mapping[ObjectKey, str] | None = None,
    partial: Mapping[ObjectKey, tuple[str, ...]] | None = None,
) -> dict[ObjectKey, ObjectStatus]:
    """The status of every HTTPRoute, GRPCRoute and BackendPolicy, by key.

    `rejected`: objects the source or the pipeline left out, with why (other
    kinds are ignored); they are `Accepted=False`, reason `Invalid`.
    `partial`: routes some of whose rules translation left out (a match or
    filter Envoy would refuse), with why: each of their parents also carries
    `PartiallyInvalid=True`, reason `UnsupportedValue` (Gateway API v1.1's
    condition for a route whose valid rules stay in force).
    """
    statuses = dict(mesh.derive("policy_status", lambda: _mesh_status(mesh)))
    for key, problems in (partial or {}).items():
        found = statuses.get(key)
        if found is not None and problems and found.parents:
            statuses[key] = _partially_invalid(found, problems)
    for key, message in (rejected or {}).items():
        if key.kind in POLICY_KINDS:
            statuses[key] = _rejected(mesh, key, message)
    return statuses


def _partially_invalid(status: ObjectStatus, problems: tuple[str, ...]) -> ObjectStatus:
    shown = "; ".join(problems[:MAX_PROBLEMS_NAMED])
    more = len(problems) - MAX_PROBLEMS_NAMED
    message = f"rules left out: {shown}" + (f" (+{more} more)" if more > 0 else "")
    condition = Condition(PARTIALLY_INVALID, "True", UNSUPPORTED_VALUE, message, status.generation)
    parents = tuple(
        ParentStatus(entry.parent_ref, (*entry.conditions, condition)) for entry in status.parents
    )
    return dataclasses.replace(status, parents=parents)


def _mesh_status(mesh: MeshSnapshot) -> dict[ObjectKey, ObjectStatus]:
    statuses: dict[ObjectKey, ObjectStatus] = {}
    grpc_ports = _grpc_bindings(mesh)
    routes: tuple[Mapping[tuple[str, str], MeshRoute], ...] = (mesh.http_routes, mesh.grpc_routes)
    for table in routes:
        for name in sorted(table):
            status = route_status(table[name], mesh, grpc_ports)
            if status is not None:
                statuses[status.key] = status
    for name in sorted(mesh.backend_policies):
        status = backend_policy_status(mesh.backend_policies[name], mesh)
        statuses[status.key] = status
    return statuses


def _rejected(mesh: MeshSnapshot, key: ObjectKey, message: str) -> ObjectStatus:
    kept = mesh.table(key.kind).get((key.namespace, key.name))
    generation = getattr(kept, "generation", 0) if kept is not None else 0
    condition = Condition(ACCEPTED, "False", INVALID, message, generation)
    parents: tuple[ParentStatus, ...] = ()
    if isinstance(kept, HTTPRoute | GRPCRoute):
        parents = tuple(
            ParentStatus(ref, (condition,)) for ref in kept.parent_refs if ref.is_service
        )
    return ObjectStatus(
        key,
        generation,
        (condition,),
        parents,
        rejected=True,
        in_mesh=kept is not None,
        origin=kept.origin if kept is not None else None,
    )


# -- routes -------------------------------------------------------------------------------

PortBinding = tuple[str, str, str, int]
"""(route namespace, Service namespace, Service name, port): one route group's claim."""


def _ports_covered(ref: ParentRef, service: Service) -> set[int]:
    """The Service ports a parentRef attaches to (every port when it names none)."""
    if ref.port is not None:
        return {ref.port}
    if ref.section_name is not None:
        return {p.port for p in service.ports if p.name == ref.section_name}
    return {p.port for p in service.ports}


def _grpc_bindings(mesh: MeshSnapshot) -> dict[PortBinding, str]:
    """Which GRPCRoute (the first by name) binds each Service port, per route namespace."""
    found: dict[PortBinding, str] = {}
    for name in sorted(mesh.grpc_routes):
        route = mesh.grpc_routes[name]
        for ref in route.parent_refs:
            if not ref.is_service:
                continue
            namespace = ref.namespace or route.namespace
            service = mesh.service(namespace, ref.name)
            if service is None:
                continue
            for port in _ports_covered(ref, service):
                found.setdefault((route.namespace, namespace, ref.name, port), route.name)
    return found


def _kind_of(route: MeshRoute) -> str:
    return Kind.GRPC_ROUTE.value if isinstance(route, GRPCRoute) else Kind.HTTP_ROUTE.value


def route_status(
    route: MeshRoute, mesh: MeshSnapshot, grpc_ports: Mapping[PortBinding, str] | None = None
) -> ObjectStatus | None:
    """A route's conditions per Service parent; None when no parent is a Service."""
    refs = [ref for ref in route.parent_refs if ref.is_service]
    if not refs:
        return None
    bindings = grpc_ports if grpc_ports is not None else _grpc_bindings(mesh)
    resolved = _resolved_refs(route, mesh)
    parents = tuple(
        ParentStatus(ref, (_route_accepted(route, ref, mesh, bindings), resolved)) for ref in refs
    )
    key = ObjectKey(Kind(_kind_of(route)), route.namespace, route.name)
    return ObjectStatus(key, route.generation, parents=parents, origin=route.origin)


def _route_accepted(
    route: MeshRoute, ref: ParentRef, mesh: MeshSnapshot, grpc_ports: Mapping[PortBinding, str]
) -> Condition:
    generation = route.generation
    namespace = ref.namespace or route.namespace
    service = mesh.service(namespace, ref.name)
    shown = f"Service {namespace}/{ref.name}"
    if service is None:
        return Condition(ACCEPTED, "False", NO_MATCHING_PARENT, f"{shown} not found", generation)
    ports = sorted(p.port for p in service.ports)
    if ref.port is not None and ref.port not in ports:
        message = f"parentRef port {ref.port}: {shown} has no such port (it has {_listed(ports)})"
        return Condition(ACCEPTED, "False", NO_MATCHING_PARENT, message, generation)
    covered = _ports_covered(ref, service)
    if ref.section_name is not None and not covered:
        names = sorted(p.name for p in service.ports if p.name)
        message = (
            f"parentRef sectionName {ref.section_name!r}: {shown} has no port of that name "
            f"(it has {_listed(names)})"
        )
        return Condition(ACCEPTED, "False", NO_MATCHING_PARENT, message, generation)
    if isinstance(route, HTTPRoute):
        taken = {
            port: grpc_ports[binding]
            for port in covered
            if (binding := (route.namespace, namespace, ref.name, port)) in grpc_ports
        }
        if taken:
            winners = ", ".join(
                f"port {port} (GRPCRoute {route.namespace}/{name})"
                for port, name in sorted(taken.items())
            )
            if len(taken) == len(covered):
                message = (
                    f"{shown}: a GRPCRoute binds {winners}; only one route type applies to a "
                    "Service port and GRPCRoute takes precedence over HTTPRoute (GEP-1294)"
                )
                return Condition(ACCEPTED, "False", CONFLICTED, message, generation)
            return Condition(
                ACCEPTED,
                "True",
                REASON_ACCEPTED,
                f"{_role(route, namespace, shown)}; not on {winners}, which a GRPCRoute binds",
                generation,
            )
    return Condition(ACCEPTED, "True", REASON_ACCEPTED, _role(route, namespace, shown), generation)


def _role(route: MeshRoute, namespace: str, shown: str) -> str:
    if namespace == route.namespace:
        return f"producer route for {shown}: applies to requests from every namespace"
    return f"consumer route for {shown}: applies to requests from namespace {route.namespace}"


def _listed(values: Iterable[object]) -> str:
    shown = [str(value) for value in values]
    return ", ".join(shown) if shown else "none"


def _backends(route: MeshRoute) -> Iterable[tuple[str, BackendObjectRef]]:
    """Every backend a route refers to, with the field naming it."""
    rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.rules
    for i, rule in enumerate(rules):
        yield from _mirrors(f"spec.rules[{i}].filters", rule.filters)
        for j, backend in enumerate(rule.backend_refs):
            where = f"spec.rules[{i}].backendRefs[{j}]"
            yield where, backend.backend
            yield from _mirrors(f"{where}.filters", backend.filters)


def _mirrors(
    where: str, filters: tuple[RouteFilter, ...]
) -> Iterable[tuple[str, BackendObjectRef]]:
    for k, route_filter in enumerate(filters):
        if isinstance(route_filter, RequestMirrorFilter):
            yield f"{where}[{k}].requestMirror.backendRef", route_filter.backend


def _resolved_refs(route: MeshRoute, mesh: MeshSnapshot) -> Condition:
    problems: list[tuple[str, str]] = []
    for where, ref in _backends(route):
        if ref.group not in ("", "core") or ref.kind != "Service":
            group = ref.group or "core"
            problems.append(
                (
                    INVALID_KIND,
                    f"{where}: kind {ref.kind} of group {group} is not supported (Service)",
                )
            )
            continue
        namespace = ref.namespace or route.namespace
        service = mesh.service(namespace, ref.name)
        if service is None:
            problems.append(
                (BACKEND_NOT_FOUND, f"{where}: Service {namespace}/{ref.name} not found")
            )
        elif ref.port is not None and ref.port not in {p.port for p in service.ports}:
            problems.append(
                (
                    BACKEND_NOT_FOUND,
                    f"{where}: Service {namespace}/{ref.name} has no port {ref.port}",
                )
            )
    return _resolution(problems, route.generation, "every backendRef resolves")


def _resolution(problems: list[tuple[str, str]], generation: int, fine: str) -> Condition:
    if not problems:
        return Condition(RESOLVED_REFS, "True", REASON_RESOLVED_REFS, fine, generation)
    named = "; ".join(message for _, message in problems[:MAX_PROBLEMS_NAMED])
    more = len(problems) - MAX_PROBLEMS_NAMED
    if more > 0:
        named += f"; and {more} more"
    return Condition(RESOLVED_REFS, "False", problems[0][0], named, generation)


# -- BackendPolicy ------------------------------------------------------------------------


def _key(policy: BackendPolicy) -> tuple[str, str]:
    return (policy.namespace, policy.name)


def _shown(policy: BackendPolicy) -> str:
    return f"BackendPolicy {policy.namespace}/{policy.name}"


def _scope_attachment(mesh: MeshSnapshot, namespace: str) -> Attachment | None:
    """Who wins the namespace default of `namespace` ("" for the mesh-wide default).

    Asked as `attached_policy` asks it for a Service of that namespace that no
    policy targets by name, so the answer is the one every such Service gets.
    """
    root = mesh.root_namespace
    candidates = mesh.policies_in(namespace) if namespace else ()
    if namespace != root:
        candidates += mesh.policies_in(root)
    return attached_policy(Service(namespace=namespace, name=""), candidates, root)


def backend_policy_status(policy: BackendPolicy, mesh: MeshSnapshot) -> ObjectStatus:
    """`Accepted` and `ResolvedRefs` of one policy (module doc)."""
    generation, root = policy.generation, mesh.root_namespace
    problems: list[tuple[str, str]] = []
    scopes: list[tuple[str, Attachment | None]] = []
    """(what the policy would govern, who governs it)."""
    for i, ref in enumerate(policy.target_refs):
        where = f"spec.targetRefs[{i}]"
        namespace = ref.namespace or policy.namespace
        if ref.group not in ("", "core") or ref.kind not in ("Service", "Namespace"):
            group = ref.group or "core"
            problems.append(
                (
                    INVALID_KIND,
                    f"{where}: kind {ref.kind} of group {group} is not supported "
                    "(Service or Namespace)",
                )
            )
        elif ref.kind == "Namespace":
            if ref.name != policy.namespace and policy.namespace != root:
                problems.append(
                    (
                        REF_NOT_PERMITTED,
                        f"{where}.name: only a policy in the root namespace {root} may target "
                        f"another namespace ({ref.name})",
                    )
                )
            else:
                scopes.append((f"namespace {ref.name}", _scope_attachment(mesh, ref.name)))
        elif namespace != policy.namespace and policy.namespace != root:
            problems.append(
                (
                    REF_NOT_PERMITTED,
                    f"{where}.namespace: only a policy in the root namespace {root} may target "
                    f"a Service in another namespace ({namespace})",
                )
            )
        else:
            service = mesh.service(namespace, ref.name)
            if service is None:
                problems.append(
                    (TARGET_NOT_FOUND, f"{where}: Service {namespace}/{ref.name} not found")
                )
            else:
                shown = f"Service {namespace}/{ref.name}"
                scopes.append((shown, mesh.backend_policy_for(service)))
    if not policy.target_refs:
        if policy.namespace == root:
            scopes.append(("every namespace (mesh default)", _scope_attachment(mesh, "")))
        scopes.append((f"namespace {policy.namespace}", _scope_attachment(mesh, policy.namespace)))
    resolved = _resolution(problems, generation, "every targetRef resolves")
    accepted = _policy_accepted(policy, scopes, problems, generation)
    key = ObjectKey(Kind.BACKEND_POLICY, policy.namespace, policy.name)
    return ObjectStatus(key, generation, (accepted, resolved), origin=policy.origin)


def _policy_accepted(
    policy: BackendPolicy,
    scopes: list[tuple[str, Attachment | None]],
    problems: list[tuple[str, str]],
    generation: int,
) -> Condition:
    governs: list[str] = []
    conflicted: list[tuple[str, BackendPolicy]] = []
    overridden: list[tuple[str, BackendPolicy]] = []
    for what, found in scopes:
        if found is None:
            continue
        if _key(found.policy) == _key(policy):
            governs.append(what)
        elif any(_key(loser) == _key(policy) for loser in found.conflicted):
            conflicted.append((what, found.policy))
        else:  # a narrower policy wins there: overridden, not in conflict (GEP-713)
            overridden.append((what, found.policy))
    if governs or overridden:
        parts = [f"governs {_some(governs)}"] if governs else []
        if overridden:
            parts.append(_precedence(overridden, "narrower"))
        if conflicted:
            parts.append(_precedence(conflicted, "older"))
        return Condition(ACCEPTED, "True", REASON_ACCEPTED, "; ".join(parts), generation)
    if conflicted:
        return Condition(
            ACCEPTED, "False", CONFLICTED, _precedence(conflicted, "older"), generation
        )
    named = "; ".join(message for _, message in problems[:MAX_PROBLEMS_NAMED])
    if problems and all(reason == TARGET_NOT_FOUND for reason, _ in problems):
        return Condition(ACCEPTED, "False", TARGET_NOT_FOUND, named, generation)
    return Condition(ACCEPTED, "False", INVALID, named or "it attaches to nothing", generation)


def _some(names: list[str]) -> str:
    more = len(names) - MAX_PROBLEMS_NAMED
    return _listed(names[:MAX_PROBLEMS_NAMED]) + (f" and {more} more" if more > 0 else "")


def _precedence(lost: list[tuple[str, BackendPolicy]], why: str) -> str:
    """`BackendPolicy a/b takes precedence for Service x/y (older)`, for each scope lost."""
    parts = [f"{_shown(winner)} takes precedence for {what}" for what, winner in lost]
    more = len(parts) - MAX_PROBLEMS_NAMED
    text = "; ".join(parts[:MAX_PROBLEMS_NAMED]) + (f"; and {more} more" if more > 0 else "")
    if why == "older":
        return text + " (at the same level the oldest creationTimestamp wins, then namespace/name)"
    return text + " (a narrower attachment wins)"


# -- rejections, from the error tables that name objects ----------------------------------


def rejections(
    source_errors: Iterable[object], object_errors: Iterable[tuple[ObjectKey, str]]
) -> dict[ObjectKey, str]:
    """The routes and policies rejected now, and why, for `policy_conditions`.

    `source_errors` are the source's (file or Kubernetes) errors: each names its
    object as `Kind namespace/name` in `object_ref` (warnings reject nothing);
    they come first, being about the newest version.  `object_errors` are the
    pipeline's, keyed by object (translation left it out, or applying it raised).
    """
    found: dict[ObjectKey, str] = {}
    for error in source_errors:
        if getattr(error, "severity", "error") != "error":
            continue
        key = parse_object_ref(getattr(error, "object_ref", None))
        if key is not None and key.kind in POLICY_KINDS:
            found.setdefault(key, str(error))
    for key, message in object_errors:
        if key.kind in POLICY_KINDS:
            found.setdefault(key, message)
    return found


# -- naming objects in error texts --------------------------------------------------------

_OBJECT_REF = re.compile(r"^(?P<kind>[A-Za-z]+) (?P<namespace>[a-z0-9.-]+)/(?P<name>[a-z0-9.-]+)$")
"""Kubernetes names (RFC 1123): anything else is an escaped or placeholder name."""


def parse_object_ref(text: str | None) -> ObjectKey | None:
    """`HTTPRoute default/web` (how sources and the pipeline name objects) as a key."""
    match = _OBJECT_REF.match(text or "")
    if match is None:
        return None
    try:
        kind = Kind(match["kind"])
    except ValueError:
        return None
    return ObjectKey(kind, match["namespace"], match["name"])
