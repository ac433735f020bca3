"""BackendPolicy status: `Accepted` and `ResolvedRefs` of one policy (GEP-713's words).

Whether the policy governs a scope (a Service it targets, a namespace, the
mesh) or loses each to an older policy at the same level (`Conflicted`) or a
narrower one (overridden, still accepted), and whether its targetRefs
resolve, from the model alone; `status` (whose module doc is the
specification) assembles them for the whole mesh.
"""

from __future__ import annotations

import logging

from xds_server.model.changes import Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.policy import Attachment, BackendPolicy, attached_policy
from xds_server.model.status_conditions import (
    ACCEPTED,
    CONFLICTED,
    INVALID,
    INVALID_KIND,
    MAX_PROBLEMS_NAMED,
    REASON_ACCEPTED,
    REF_NOT_PERMITTED,
    TARGET_NOT_FOUND,
    Condition,
    ObjectStatus,
    listed,
    resolution,
)
from xds_server.model.types import Service

logger = logging.getLogger(__name__)


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
    resolved = resolution(problems, generation, "every targetRef resolves")
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
    return listed(names[:MAX_PROBLEMS_NAMED]) + (f" and {more} more" if more > 0 else "")


def _precedence(lost: list[tuple[str, BackendPolicy]], why: str) -> str:
    """`BackendPolicy a/b takes precedence for Service x/y (older)`, for each scope lost."""
    parts = [f"{_shown(winner)} takes precedence for {what}" for what, winner in lost]
    more = len(parts) - MAX_PROBLEMS_NAMED
    text = "; ".join(parts[:MAX_PROBLEMS_NAMED]) + (f"; and {more} more" if more > 0 else "")
    if why == "older":
        return text + " (at the same level the oldest creationTimestamp wins, then namespace/name)"
    return text + " (a narrower attachment wins)"
