"""Which AuthorizationPolicies govern a workload, and their specs as messages.

Istio's attachment, resolved once here so that translation only renders:
a policy applies to a workload when it is in the workload's namespace and its
selector matches the workload's labels (no selector: the whole namespace), or
when it is in the mesh's root namespace without a selector (mesh-wide); a
root-namespace policy with a selector selects workloads of the root namespace
only, as Istio's does.  The result is grouped by action, each group sorted by
(namespace, name), so the RBAC filters built from it are deterministic.

`policies_of(mesh, namespace)` is the one read of the table; the pipeline's
`TrackedMesh` overrides it to note `("ns", Kind.AUTHORIZATION_POLICY, ns)`,
so a policy change re-translates the proxies of its namespace (all of them,
for the root namespace), which are exactly those it may govern.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xds_server.model.changes import Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.security import AuthorizationPolicy, governed_scope, selects
from xds_server.model.status_conditions import (
    ACCEPTED,
    REASON_ACCEPTED,
    Condition,
    ObjectStatus,
)
from xds_server.model.types import Labels
from xds_server.policy_api import authorization_policy_pb2 as authz_pb2

logger = logging.getLogger(__name__)

Action = authz_pb2.AuthorizationPolicySpec.Action


@dataclass(frozen=True, slots=True)
class GoverningPolicy:
    """One applicable policy with its parsed spec."""

    policy: AuthorizationPolicy
    spec: authz_pb2.AuthorizationPolicySpec

    @property
    def label(self) -> str:
        """`<namespace>/<name>`: how RBAC policy names and logs refer to it."""
        return f"{self.policy.namespace}/{self.policy.name}"

    @property
    def action(self) -> int:
        """ALLOW, DENY or AUDIT (an unset action is ALLOW, as in Istio)."""
        return int(self.spec.action) or Action.ALLOW


@dataclass(frozen=True, slots=True)
class WorkloadAuthorization:
    """The policies governing one workload, by action."""

    deny: tuple[GoverningPolicy, ...] = ()
    allow: tuple[GoverningPolicy, ...] = ()
    audit: tuple[GoverningPolicy, ...] = ()

    @property
    def policies(self) -> tuple[GoverningPolicy, ...]:
        return (*self.deny, *self.allow, *self.audit)

    def __bool__(self) -> bool:
        return bool(self.deny or self.allow or self.audit)


def spec_of(policy: AuthorizationPolicy) -> authz_pb2.AuthorizationPolicySpec:
    spec = authz_pb2.AuthorizationPolicySpec()
    spec.ParseFromString(policy.spec_bytes)
    return spec


def applies(policy: AuthorizationPolicy, namespace: str, labels: Labels, root: str) -> bool:
    """Whether `policy` governs a workload of `namespace` with `labels`."""
    if policy.namespace == namespace:
        return selects(policy.selector, labels)
    return policy.namespace == root and policy.selector is None


def authorization_for(
    policies: tuple[AuthorizationPolicy, ...], namespace: str, labels: Labels, root: str
) -> WorkloadAuthorization:
    """Group the applicable ones of `policies` (the workload's namespace's and the root
    namespace's) by action, each group by (namespace, name)."""
    found: dict[int, list[GoverningPolicy]] = {Action.DENY: [], Action.ALLOW: [], Action.AUDIT: []}
    for policy in sorted(policies, key=lambda p: (p.namespace, p.name)):
        if applies(policy, namespace, labels, root):
            governing = GoverningPolicy(policy, spec_of(policy))
            found[governing.action].append(governing)
    return WorkloadAuthorization(
        deny=tuple(found[Action.DENY]),
        allow=tuple(found[Action.ALLOW]),
        audit=tuple(found[Action.AUDIT]),
    )


def workload_authorization(
    mesh: MeshSnapshot, namespace: str, labels: Labels
) -> WorkloadAuthorization:
    """The policies governing a workload of `namespace` with `labels` (module doc)."""
    candidates = mesh.authorization_policies_in(namespace)
    if namespace != mesh.root_namespace:
        candidates += mesh.authorization_policies_in(mesh.root_namespace)
    return authorization_for(candidates, namespace, labels, mesh.root_namespace)


def authorization_policy_status(policy: AuthorizationPolicy, mesh: MeshSnapshot) -> ObjectStatus:
    """Accepted (it was read, so it is valid), saying which workloads it governs."""
    scope = governed_scope(policy, mesh.root_namespace)
    action = authz_pb2.AuthorizationPolicySpec.Action.Name(
        int(spec_of(policy).action) or Action.ALLOW
    )
    condition = Condition(
        ACCEPTED, "True", REASON_ACCEPTED, f"{action}: {scope}", policy.generation
    )
    key = ObjectKey(Kind.AUTHORIZATION_POLICY, policy.namespace, policy.name)
    return ObjectStatus(key, policy.generation, (condition,), origin=policy.origin)
