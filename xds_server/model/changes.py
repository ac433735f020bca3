"""ChangeSet: what a source saw change, mergeable so bursts can be debounced."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import GRPCRoute, HTTPRoute
from xds_server.model.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    TrustRoots,
    WorkloadCertificate,
)
from xds_server.model.telemetry import Telemetry
from xds_server.model.types import EndpointSlice, Service, Workload

MeshObject = (
    Service
    | EndpointSlice
    | Workload
    | HTTPRoute
    | GRPCRoute
    | BackendPolicy
    | PeerAuthentication
    | AuthorizationPolicy
    | WorkloadCertificate
    | TrustRoots
    | Telemetry
)


class Kind(enum.Enum):
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    WORKLOAD = "Pod"
    HTTP_ROUTE = "HTTPRoute"
    GRPC_ROUTE = "GRPCRoute"
    BACKEND_POLICY = "BackendPolicy"
    PEER_AUTHENTICATION = "PeerAuthentication"
    AUTHORIZATION_POLICY = "AuthorizationPolicy"
    WORKLOAD_CERTIFICATE = "WorkloadCertificate"
    """Issued by the control plane's CA (`security.certificates`), not read from a source."""
    TRUST_ROOTS = "TrustRoots"
    TELEMETRY = "Telemetry"

    # Members are singletons: identity hashing is correct, and C-fast.  Enum's own
    # __hash__ runs Python code, and kinds are hashed in every key and fact.
    __hash__ = object.__hash__


KIND_OF_TYPE: dict[type, Kind] = {
    Service: Kind.SERVICE,
    EndpointSlice: Kind.ENDPOINT_SLICE,
    Workload: Kind.WORKLOAD,
    HTTPRoute: Kind.HTTP_ROUTE,
    GRPCRoute: Kind.GRPC_ROUTE,
    BackendPolicy: Kind.BACKEND_POLICY,
    PeerAuthentication: Kind.PEER_AUTHENTICATION,
    AuthorizationPolicy: Kind.AUTHORIZATION_POLICY,
    WorkloadCertificate: Kind.WORKLOAD_CERTIFICATE,
    TrustRoots: Kind.TRUST_ROOTS,
    Telemetry: Kind.TELEMETRY,
}
POLICY_KINDS = frozenset(
    {
        Kind.HTTP_ROUTE,
        Kind.GRPC_ROUTE,
        Kind.BACKEND_POLICY,
        Kind.PEER_AUTHENTICATION,
        Kind.AUTHORIZATION_POLICY,
        Kind.TELEMETRY,
    }
)
"""Kinds that configure traffic rather than describe it: they carry status conditions."""


class ObjectKey(NamedTuple):
    kind: Kind
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: MeshObject) -> ObjectKey:
        return cls(KIND_OF_TYPE[type(obj)], obj.namespace, obj.name)

    def __str__(self) -> str:
        return f"{self.kind.value} {self.namespace}/{self.name}"


@dataclass
class ChangeSet:
    """Upserts and deletions keyed by object; a later change to a key wins.

    `source` scoping is the caller's business: a file source deletes what a
    file no longer holds, a watcher deletes on DELETED events.
    """

    upserts: dict[ObjectKey, MeshObject] = field(default_factory=dict)
    deletes: set[ObjectKey] = field(default_factory=set)
    observed_at: float | None = None
    """Wall-clock time (`time.time()`) the source first saw a change in this set: when the
    file watcher saw the file change, or the watch event arrived.  Merging keeps the
    earliest, so push latency is measured from the first change of a debounced burst."""

    def upsert(self, obj: MeshObject) -> None:
        key = ObjectKey.of(obj)
        self.deletes.discard(key)
        self.upserts[key] = obj

    def delete(self, key: ObjectKey) -> None:
        self.upserts.pop(key, None)
        self.deletes.add(key)

    def merge(self, later: ChangeSet) -> None:
        if later.observed_at is not None and (
            self.observed_at is None or later.observed_at < self.observed_at
        ):
            self.observed_at = later.observed_at
        for key in later.deletes:
            self.delete(key)
        for key, obj in later.upserts.items():
            self.deletes.discard(key)
            self.upserts[key] = obj

    @property
    def kinds(self) -> frozenset[Kind]:
        return frozenset(k.kind for k in (*self.upserts, *self.deletes))

    @property
    def endpoints_only(self) -> bool:
        """Endpoint-only changes are fast-pathed past the debounce quiet period."""
        return bool(self) and self.kinds == {Kind.ENDPOINT_SLICE}

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)
