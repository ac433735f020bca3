"""BackendPolicy as a model value, and which policy governs each Service.

The spec is the generated message (`policy_api.backend_policy_pb2`), the
API's single source; the model holds it as its deterministic serialization,
so a policy is hashable and compared by content like every model value, and
`spec()` hands translation a parsed (shared, read-only) message.

Attachment is resolved here, once per snapshot, not in translate: for each
Service the narrowest policy wins, as a whole (no field merging):

1. a policy in the Service's namespace whose `targetRefs` name the Service;
2. else a policy in the Service's namespace without `targetRefs`, or with a
   `targetRef` of kind Namespace naming that namespace (the namespace default);
3. else a policy in the root namespace without `targetRefs` (the mesh default).

A `targetRef` into another namespace counts only for a policy of the root
namespace (no ReferenceGrant for policies); elsewhere it attaches to nothing.

Two policies at the same level for one Service conflict; as the Gateway API's
policy attachment (GEP-713) orders them, the oldest by `creationTimestamp`
wins, then the first by namespace/name; the others are `Conflicted` for it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from xds_server.model.types import Service
from xds_server.policy_api import backend_policy_pb2
from xds_server.provenance import Origin

logger = logging.getLogger(__name__)

ROOT_NAMESPACE = "mesh-system"
"""Where a policy without targetRefs is the default for the whole mesh."""

Level = Literal["service", "namespace", "mesh"]
LEVELS: tuple[Level, ...] = ("service", "namespace", "mesh")


@dataclass(frozen=True, slots=True)
class TargetRef:
    kind: str
    name: str
    group: str = ""
    namespace: str | None = None
    """None: the policy's own namespace."""


@dataclass(frozen=True, slots=True)
class BackendPolicy:
    namespace: str
    name: str
    spec_bytes: bytes = b""
    """`BackendPolicySpec`, serialized deterministically."""
    target_refs: tuple[TargetRef, ...] = ()
    creation_timestamp: str | None = None
    generation: int = 0
    origin: Origin | None = field(default=None, compare=False, repr=False)
    """Where the source read it (provenance); not part of its value."""

    def spec(self) -> backend_policy_pb2.BackendPolicySpec:
        """The parsed spec, shared by every reader: do not modify it."""
        return _parse(self.spec_bytes)

    @classmethod
    def of(
        cls,
        namespace: str,
        name: str,
        spec: backend_policy_pb2.BackendPolicySpec,
        *,
        creation_timestamp: str | None = None,
        generation: int = 0,
        origin: Origin | None = None,
    ) -> BackendPolicy:
        """A policy from a spec message (its targetRefs are read from it)."""
        refs = tuple(
            TargetRef(
                kind=ref.kind, name=ref.name, group=ref.group, namespace=ref.namespace or None
            )
            for ref in spec.target_refs
        )
        return cls(
            namespace=namespace,
            name=name,
            spec_bytes=spec.SerializeToString(deterministic=True),
            target_refs=refs,
            creation_timestamp=creation_timestamp,
            generation=generation,
            origin=origin,
        )


@functools.lru_cache(maxsize=4096)
def _parse(data: bytes) -> backend_policy_pb2.BackendPolicySpec:
    spec = backend_policy_pb2.BackendPolicySpec()
    spec.ParseFromString(data)
    return spec


def _order(policy: BackendPolicy) -> tuple[str, str, str]:
    # No timestamp sorts last: a policy the API server dated is older than any
    # written into a file without one (the file source's documented order).
    return (policy.creation_timestamp or "~", policy.namespace, policy.name)


def level_for(policy: BackendPolicy, service: Service, root_namespace: str) -> Level | None:
    """How narrowly `policy` attaches to `service`, or None if it does not."""
    if not policy.target_refs:
        if policy.namespace == service.namespace:
            return "namespace"
        if policy.namespace == root_namespace:
            return "mesh"
        return None
    for ref in policy.target_refs:
        namespace = ref.namespace or policy.namespace
        if ref.group not in ("", "core"):
            continue
        if namespace != policy.namespace and policy.namespace != root_namespace:
            continue  # only the root namespace's policies reach into other namespaces
        if ref.kind == "Service" and (namespace, ref.name) == (
            service.namespace,
            service.name,
        ):
            return "service"
        if ref.kind == "Namespace" and ref.name == service.namespace:
            return "namespace"
    return None


@dataclass(frozen=True, slots=True)
class Attachment:
    """The policy governing one Service, and the ones it beat at the same level."""

    policy: BackendPolicy
    level: Level
    conflicted: tuple[BackendPolicy, ...] = ()


def attached_policy(
    service: Service, candidates: Iterable[BackendPolicy], root_namespace: str = ROOT_NAMESPACE
) -> Attachment | None:
    """The narrowest policy among `candidates` that attaches to `service` (module doc)."""
    by_level: dict[Level, list[BackendPolicy]] = {}
    for policy in candidates:
        level = level_for(policy, service, root_namespace)
        if level is not None:
            by_level.setdefault(level, []).append(policy)
    for level in LEVELS:
        found = sorted(by_level.get(level, ()), key=_order)
        if found:
            return Attachment(found[0], level, tuple(found[1:]))
    return None


def candidates_for(
    service: Service,
    policies_by_namespace: Mapping[str, tuple[BackendPolicy, ...]],
    root_namespace: str = ROOT_NAMESPACE,
) -> tuple[BackendPolicy, ...]:
    """The policies that could attach to `service`: its namespace's and the root's."""
    own = policies_by_namespace.get(service.namespace, ())
    if service.namespace == root_namespace:
        return own
    return own + policies_by_namespace.get(root_namespace, ())
