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

This module assembles the whole mesh's statuses and the rejections; the
vocabulary and values are `status_conditions`', one route's conditions
`status_routes`', one policy's `status_policies`' (every public name stays
importable from here).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping

from xds_server.model.authorization import authorization_policy_status
from xds_server.model.changes import POLICY_KINDS, Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.peer_authentication import peer_authentication_status
from xds_server.model.routes import GRPCRoute, HTTPRoute, MeshRoute
from xds_server.model.status_conditions import (
    ACCEPTED,
    BACKEND_NOT_FOUND,
    CONDITION_TYPES,
    CONFLICTED,
    CONTROLLER_NAME,
    INVALID,
    INVALID_KIND,
    MAX_PROBLEMS_NAMED,
    NO_MATCHING_PARENT,
    PARTIALLY_INVALID,
    REASON_ACCEPTED,
    REASON_RESOLVED_REFS,
    REF_NOT_PERMITTED,
    RESOLVED_REFS,
    TARGET_NOT_FOUND,
    UNSUPPORTED_VALUE,
    Condition,
    ObjectStatus,
    ParentStatus,
    Status,
)
from xds_server.model.status_policies import backend_policy_status
from xds_server.model.status_routes import PortBinding, grpc_bindings, route_status
from xds_server.model.telemetry_policy import telemetry_status

__all__ = [
    "ACCEPTED",
    "BACKEND_NOT_FOUND",
    "CONDITION_TYPES",
    "CONFLICTED",
    "CONTROLLER_NAME",
    "INVALID",
    "INVALID_KIND",
    "MAX_PROBLEMS_NAMED",
    "NO_MATCHING_PARENT",
    "PARTIALLY_INVALID",
    "REASON_ACCEPTED",
    "REASON_RESOLVED_REFS",
    "REF_NOT_PERMITTED",
    "RESOLVED_REFS",
    "TARGET_NOT_FOUND",
    "UNSUPPORTED_VALUE",
    "Condition",
    "ObjectStatus",
    "ParentStatus",
    "PortBinding",
    "Status",
    "backend_policy_status",
    "parse_object_ref",
    "policy_conditions",
    "rejections",
    "route_status",
]

logger = logging.getLogger(__name__)


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
    grpc_ports = grpc_bindings(mesh)
    routes: tuple[Mapping[tuple[str, str], MeshRoute], ...] = (mesh.http_routes, mesh.grpc_routes)
    for table in routes:
        for name in sorted(table):
            status = route_status(table[name], mesh, grpc_ports)
            if status is not None:
                statuses[status.key] = status
    for name in sorted(mesh.backend_policies):
        status = backend_policy_status(mesh.backend_policies[name], mesh)
        statuses[status.key] = status
    for name in sorted(mesh.authorization_policies):
        status = authorization_policy_status(mesh.authorization_policies[name], mesh)
        statuses[status.key] = status
    for name in sorted(mesh.peer_authentications):
        status = peer_authentication_status(mesh.peer_authentications[name], mesh)
        statuses[status.key] = status
    for name in sorted(mesh.telemetries):
        status = telemetry_status(mesh.telemetries[name], mesh)
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
"""Kubernetes names (RFC 1123): a name shown escaped or as a stand-in names no object."""


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
