"""The effective mutual TLS mode of a workload's inbound port, from PeerAuthentications.

Istio's precedence, resolved once here so that translation only renders: a
policy in the workload's namespace whose selector matches its labels beats a
namespace-wide one (no selector), which beats a mesh-wide one (the root
namespace, no selector); among policies of the same level the oldest
(creation timestamp, then name) wins, as Istio resolves conflicts.  A
port-level setting of the winning workload policy overrides its `mtls`; an
UNSET mode inherits from the next less specific level; with nothing set the
mode is PERMISSIVE, so adopting the mesh breaks nothing.

`mesh.peer_authentications_in(namespace)` is the one read of the table; the
pipeline's `TrackedMesh` notes `("ns", Kind.PEER_AUTHENTICATION, ns)` for it,
so a policy change re-translates the proxies of its namespace (every proxy,
for the root namespace), exactly those it may govern.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from xds_server.model.changes import Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.security import PeerAuthentication, governed_scope, selects
from xds_server.model.status_conditions import ACCEPTED, REASON_ACCEPTED, Condition, ObjectStatus
from xds_server.model.types import EndpointSlice, Labels, Workload
from xds_server.policy_api import peer_authentication_pb2 as pa_pb2

__all__ = [
    "TLS_MODE_LABEL",
    "MtlsMode",
    "WorkloadMtls",
    "mtls_endpoints",
    "mtls_identities",
    "peer_authentication_status",
    "spec_of",
    "workload_mtls",
]

_Mode = pa_pb2.PeerAuthenticationMtls.Mode

TLS_MODE_LABEL = "security.xds-server.io/tlsMode"
"""The Pod label (value `mtls`) that says a sidecar runs beside the app: the injector
sets it, file-mode manifests declare it.  Only such endpoints are called over mTLS."""


class MtlsMode(enum.Enum):
    """How a sidecar accepts inbound connections on one port."""

    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"
    DISABLE = "DISABLE"


_BY_NUMBER = {
    _Mode.PERMISSIVE: MtlsMode.PERMISSIVE,
    _Mode.STRICT: MtlsMode.STRICT,
    _Mode.DISABLE: MtlsMode.DISABLE,
}


def spec_of(policy: PeerAuthentication) -> pa_pb2.PeerAuthenticationSpec:
    spec = pa_pb2.PeerAuthenticationSpec()
    spec.ParseFromString(policy.spec_bytes)
    return spec


def _age(policy: PeerAuthentication) -> tuple[bool, str, str]:
    # No timestamp (a file without one) sorts after any timestamp, then by name.
    stamp = policy.creation_timestamp
    return (stamp is None, stamp or "", policy.name)


def _oldest(policies: list[PeerAuthentication]) -> PeerAuthentication | None:
    return min(policies, key=_age) if policies else None


@dataclass(frozen=True, slots=True)
class WorkloadMtls:
    """The policies governing one workload, most specific first (each may be None)."""

    workload: PeerAuthentication | None
    namespace: PeerAuthentication | None
    mesh: PeerAuthentication | None

    def mode(self, port: int) -> MtlsMode:
        """The effective mode on container port `port` (module doc: precedence)."""
        if self.workload is not None:
            spec = spec_of(self.workload)
            if port in spec.port_level_mtls and spec.port_level_mtls[port].mode in _BY_NUMBER:
                return _BY_NUMBER[spec.port_level_mtls[port].mode]
        for policy in (self.workload, self.namespace, self.mesh):
            if policy is not None:
                mode = spec_of(policy).mtls.mode
                if mode in _BY_NUMBER:
                    return _BY_NUMBER[mode]
        return MtlsMode.PERMISSIVE

    def governing(self) -> tuple[PeerAuthentication, ...]:
        return tuple(p for p in (self.workload, self.namespace, self.mesh) if p is not None)


def workload_mtls(mesh: MeshSnapshot, namespace: str, labels: Labels) -> WorkloadMtls:
    """The PeerAuthentications governing a workload of `namespace` with `labels`."""
    local = mesh.peer_authentications_in(namespace)
    selected = [p for p in local if p.selector and selects(p.selector, labels)]
    namespace_wide = [p for p in local if not p.selector]
    mesh_wide: list[PeerAuthentication] = []
    if namespace != mesh.root_namespace:
        root = mesh.peer_authentications_in(mesh.root_namespace)
        mesh_wide = [p for p in root if not p.selector]
    else:
        mesh_wide, namespace_wide = namespace_wide, []
    return WorkloadMtls(_oldest(selected), _oldest(namespace_wide), _oldest(mesh_wide))


def peer_authentication_status(policy: PeerAuthentication, mesh: MeshSnapshot) -> ObjectStatus:
    """Accepted (it was read, so it is valid), saying its mode and which workloads it governs."""
    scope = governed_scope(policy, mesh.root_namespace)
    spec = spec_of(policy)
    mode = pa_pb2.PeerAuthenticationMtls.Mode.Name(spec.mtls.mode)
    ports = "".join(
        f", port {port}: {pa_pb2.PeerAuthenticationMtls.Mode.Name(spec.port_level_mtls[port].mode)}"
        for port in sorted(spec.port_level_mtls)
    )
    condition = Condition(
        ACCEPTED, "True", REASON_ACCEPTED, f"{mode}{ports}: {scope}", policy.generation
    )
    key = ObjectKey(Kind.PEER_AUTHENTICATION, policy.namespace, policy.name)
    return ObjectStatus(key, policy.generation, (condition,), origin=policy.origin)


def mtls_endpoints(
    mesh: MeshSnapshot, slices: tuple[EndpointSlice, ...]
) -> frozenset[tuple[str, int]]:
    """The (address, port) endpoints of `slices` that accept mutual TLS.

    An endpoint does when its Pod (`target_pod`, else the Pod of its address
    in the slice's namespace) carries `TLS_MODE_LABEL: mtls` and its
    PeerAuthentication mode on that container port is not DISABLE.  Clients
    call every other endpoint in plaintext, so an app without a sidecar keeps
    working.  The service generator declares the reads: the Pods and
    PeerAuthentications of the slices' namespaces and of the root namespace.
    """
    return frozenset((address, port) for address, port, _ in _mtls_pods(mesh, slices))


def mtls_identities(
    mesh: MeshSnapshot, slices: tuple[EndpointSlice, ...]
) -> frozenset[tuple[str, str]]:
    """The (namespace, service account) of the Pods behind `mtls_endpoints`: the
    identities a client may accept from the destination's sidecar (Istio's SAN check)."""
    return frozenset((pod.namespace, pod.service_account) for _, _, pod in _mtls_pods(mesh, slices))


def _mtls_pods(
    mesh: MeshSnapshot, slices: tuple[EndpointSlice, ...]
) -> Iterator[tuple[str, int, Workload]]:
    """(address, port, Pod) of each endpoint of `slices` that accepts mutual TLS."""
    for eps in slices:
        pods = mesh.workloads_in(eps.namespace)
        by_name = {pod.name: pod for pod in pods}
        by_ip: dict[str, Workload] = {}
        for workload in pods:
            if workload.ip:
                by_ip.setdefault(workload.ip, workload)
        for endpoint in eps.endpoints:
            for address in endpoint.addresses:
                pod = by_name.get(endpoint.target_pod or "") or by_ip.get(address)
                if pod is None or dict(pod.labels).get(TLS_MODE_LABEL) != "mtls":
                    continue
                peer = workload_mtls(mesh, pod.namespace, pod.labels)
                for port in eps.ports:
                    if port.port and peer.mode(port.port) is not MtlsMode.DISABLE:
                        yield address, port.port, pod
