"""Frozen model values for Services, EndpointSlices, workloads and proxies.

These mirror the Kubernetes objects closely (so both sources can convert to
them with one function) but hold only what translation needs.  Everything is
hashable, so translation results can be memoised per value.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Literal

from xds_server.provenance import Origin

Labels = tuple[tuple[str, str], ...]
"""Labels as sorted pairs: hashable, comparable, deterministic."""


def labels_of(mapping: dict[str, str] | None) -> Labels:
    return tuple(sorted((mapping or {}).items()))


class PortProtocol(enum.Enum):
    """How the mesh carries a port's traffic (Istio's protocol selection)."""

    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"
    TCP = "tcp"

    @property
    def is_http(self) -> bool:
        return self is not PortProtocol.TCP

    @property
    def is_http2(self) -> bool:
        return self in (PortProtocol.HTTP2, PortProtocol.GRPC)


_APP_PROTOCOLS: dict[str, PortProtocol] = {
    "http": PortProtocol.HTTP,
    "http2": PortProtocol.HTTP2,
    "kubernetes.io/h2c": PortProtocol.HTTP2,
    "h2c": PortProtocol.HTTP2,
    "grpc": PortProtocol.GRPC,
    "grpc-web": PortProtocol.HTTP,
    "tcp": PortProtocol.TCP,
}


def protocol_of(name: str | None, app_protocol: str | None) -> PortProtocol:
    """appProtocol wins; otherwise the port-name prefix (`http-web`, `grpc`); else TCP."""
    if app_protocol:
        return _APP_PROTOCOLS.get(app_protocol.lower(), PortProtocol.TCP)
    if name:
        prefix = name.lower().split("-", 1)[0]
        return _APP_PROTOCOLS.get(prefix, PortProtocol.TCP)
    return PortProtocol.TCP


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    name: str = ""
    target_port: int | str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None

    @property
    def mesh_protocol(self) -> PortProtocol:
        return protocol_of(self.name, self.app_protocol)


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()
    selector: Labels | None = None
    cluster_ip: str | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)
    """Where the source read it (provenance); not part of its value."""

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"

    def selects(self, labels: Labels) -> bool:
        if not self.selector:
            return False
        have = dict(labels)
        return all(have.get(k) == v for k, v in self.selector)


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone: str | None = None
    node_name: str | None = None
    target_pod: str | None = None

    @property
    def is_routable(self) -> bool:
        """Only ready endpoints take traffic; terminating ones are drained."""
        return self.ready and not self.terminating


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str = "IPv4"
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    origin: Origin | None = field(default=None, compare=False, repr=False)
    """Where the source read it (provenance); not part of its value."""


@dataclass(frozen=True, slots=True)
class Workload:
    """A Pod as the mesh sees it: who a proxy is when it runs in Kubernetes."""

    namespace: str
    name: str
    labels: Labels = ()
    service_account: str = "default"
    ip: str | None = None
    node_name: str | None = None
    origin: Origin | None = field(default=None, compare=False, repr=False)
    """Where the source read it (provenance); not part of its value."""


ZONE_LABEL = "topology.kubernetes.io/zone"
"""The well-known label naming a node's zone (copied to its Pods' labels by newer
Kubernetes, PodTopologyLabelsAdmission)."""
_ZONE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def is_zone(value: str) -> bool:
    """Whether `value` can name a zone: a non-empty Kubernetes label value."""
    return _ZONE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Proxy:
    """A connected Envoy, identified by its node id and bootstrap metadata.

    `ip` is where the sidecar accepts inbound mesh traffic (the pod IP);
    `app_address` is where the local application listens (loopback in a pod).
    `interception` says how traffic reaches the sidecar: "none" (the app calls
    the explicit outbound listener; inbound listeners bind `ip`) or "redirect"
    (iptables REDIRECTs the pod's TCP to `outbound_port` and
    `inbound_capture_port`, where the virtual listeners take it).
    """

    node_id: str
    namespace: str = "default"
    workload: str = ""
    service_account: str = "default"
    labels: Labels = ()
    ip: str | None = None
    app_address: str = "127.0.0.1"
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 15001
    interception: Literal["none", "redirect"] = "none"
    inbound_capture_port: int = 15006
    metadata: tuple[tuple[str, str], ...] = field(default=(), compare=True)
    zone: str | None = None
    """The zone the proxy runs in (Envoy's `node.locality.zone`, or its Pod's
    `topology.kubernetes.io/zone` label): locality-aware routing's caller zone."""
