"""Which ports a proxy accepts mesh traffic on, and for which local app port.

A proxy's inbound side is the union of the ports of every Service selecting
its workload.  Listeners and clusters are both built from this one list, so an
inbound listener never names a cluster that is missing, and the rules that
decide it live in one place:

* No inbound side without `proxy.ip`, or when `proxy.ip` is the address the app
  itself listens on (the sidecar would bind the app's own socket and loop).
* The port is the Service port's `targetPort`: a number as is; a name resolved
  the way Kubernetes resolved it, from the EndpointSlice port of the same name
  (preferring the slice entry for this very proxy, by IP or pod name, then the
  first slice by name); with no slice to tell, the Service port number.
* Two Services (or ports) landing on one target port share it: the first in
  (namespace, name, declared port) order decides its protocol.
* A target port that would bind the outbound HTTP listener's address is left
  out, since that listener is what every outbound request depends on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service, ServicePort
from xds_server.translate.core import addresses_overlap
from xds_server.translate.naming import mesh_ports

logger = logging.getLogger(__name__)

MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class InboundPort:
    """A port the sidecar binds on `proxy.ip`; the app listens on the same port number."""

    port: int
    protocol: PortProtocol


def inbound_ports(mesh: MeshSnapshot, proxy: Proxy) -> list[InboundPort]:
    """The proxy's inbound ports, sorted by number, each once."""
    if not proxy.ip or addresses_overlap(proxy.ip, proxy.app_address):
        return []
    chosen: dict[int, InboundPort] = {}
    for service in mesh.services_selecting(proxy.namespace, proxy.labels):
        for port in mesh_ports(service):
            target = target_port(mesh, service, port, proxy)
            if target is None or target in chosen:
                continue
            if target == proxy.outbound_port and addresses_overlap(
                proxy.ip, proxy.outbound_address
            ):
                logger.debug(
                    "%s: inbound port %d is the outbound listener's", proxy.node_id, target
                )
                continue
            chosen[target] = InboundPort(target, port.mesh_protocol)
    return [chosen[number] for number in sorted(chosen)]


def target_port(
    mesh: MeshSnapshot, service: Service, port: ServicePort, proxy: Proxy
) -> int | None:
    """The container port behind `port` on this proxy's workload, or None if invalid."""
    target = port.target_port
    if target is None or target == "":
        number = port.port
    elif isinstance(target, int):
        number = target
    elif target.isdigit():
        number = int(target)
    else:
        number = _named_port(mesh, service, port, proxy) or port.port
    return number if 0 < number <= MAX_PORT else None


def _named_port(
    mesh: MeshSnapshot, service: Service, port: ServicePort, proxy: Proxy
) -> int | None:
    """A named targetPort as resolved in the Service's EndpointSlices (they hold numbers)."""
    fallback: int | None = None
    for eps in sorted(mesh.slices_of(service), key=lambda s: s.name):
        number = next((p.port for p in eps.ports if p.name == port.name), None)
        if number is None:
            continue
        for endpoint in eps.endpoints:
            mine = proxy.ip in endpoint.addresses or (
                proxy.workload != "" and endpoint.target_pod == proxy.workload
            )
            if mine:
                return number
        if fallback is None:
            fallback = number
    return fallback
