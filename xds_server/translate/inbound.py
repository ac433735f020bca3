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

Each port names its sources (`provenance`): every Service with a port landing
on it, and the EndpointSlice a named targetPort was resolved in.

Each port also carries the BackendPolicy whose fault injection and local rate
limit its listener applies (`inbound_policy`): the policy governing the first
Service, in the same order, that lands on the port and whose policy has either
part.  The sidecar cannot tell which Service a caller meant, so Services
sharing a target port share that policy's faults and bucket.  Reading each
selecting Service's policy (`mesh.backend_policy_for`) is what makes a policy
change re-translate the proxies of the Services it may govern.  The listener
names the policy among its sources (`listener_sources`); the inbound cluster,
which the policy does not shape, does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from xds_server.model import (
    EndpointSlice,
    MeshSnapshot,
    PortProtocol,
    Proxy,
    Service,
    ServicePort,
)
from xds_server.model.policy import BackendPolicy
from xds_server.translate.core import addresses_overlap
from xds_server.translate.inbound_policy import has_inbound_effect
from xds_server.translate.naming import mesh_ports
from xds_server.translate.provenance import policy_key, service_key, slice_key

logger = logging.getLogger(__name__)

MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class InboundPort:
    """A port the sidecar binds on `proxy.ip`; the app listens on the same port number."""

    port: int
    protocol: PortProtocol
    sources: tuple[str, ...] = ()
    """The keys of the objects that put the port here, sorted (see the module doc)."""
    policy: BackendPolicy | None = None
    """The policy whose fault injection and rate limit apply here (see the module doc)."""

    @property
    def listener_sources(self) -> tuple[str, ...]:
        """What the port's listener (or filter chain) was made from: `sources` and the policy."""
        if self.policy is None:
            return self.sources
        return (*self.sources, policy_key(self.policy))


def inbound_ports(mesh: MeshSnapshot, proxy: Proxy) -> list[InboundPort]:
    """The proxy's inbound ports, sorted by number, each once."""
    if not proxy.ip or addresses_overlap(proxy.ip, proxy.app_address):
        return []
    protocols: dict[int, PortProtocol] = {}
    sources: dict[int, set[str]] = {}
    policies: dict[int, BackendPolicy] = {}
    for service in mesh.services_selecting(proxy.namespace, proxy.labels):
        attachment = mesh.backend_policy_for(service)
        policy = attachment.policy if attachment is not None else None
        inbound_policy = policy if has_inbound_effect(policy) else None
        for port in mesh_ports(service):
            target, resolved_in = resolve_target_port(mesh, service, port, proxy)
            if target is None:
                continue
            if target == proxy.outbound_port and addresses_overlap(
                proxy.ip, proxy.outbound_address
            ):
                logger.debug(
                    "%s: inbound port %d is the outbound listener's", proxy.node_id, target
                )
                continue
            protocols.setdefault(target, port.mesh_protocol)
            if inbound_policy is not None:
                policies.setdefault(target, inbound_policy)
            named = sources.setdefault(target, set())
            named.add(service_key(service))
            if resolved_in is not None:
                named.add(slice_key(resolved_in))
    return [
        InboundPort(number, protocols[number], tuple(sorted(sources[number])), policies.get(number))
        for number in sorted(protocols)
    ]


def target_port(
    mesh: MeshSnapshot, service: Service, port: ServicePort, proxy: Proxy
) -> int | None:
    """The container port behind `port` on this proxy's workload, or None if invalid."""
    return resolve_target_port(mesh, service, port, proxy)[0]


def resolve_target_port(
    mesh: MeshSnapshot, service: Service, port: ServicePort, proxy: Proxy
) -> tuple[int | None, EndpointSlice | None]:
    """`target_port`, and the EndpointSlice that told a named targetPort's number, if one did."""
    target = port.target_port
    resolved_in: EndpointSlice | None = None
    if target is None or target == "":
        number = port.port
    elif isinstance(target, int):
        number = target
    elif target.isdigit():
        number = int(target)
    else:
        named = _named_port(mesh, service, port, proxy)
        # A slice port numbered 0 tells nothing: the Service port number, as with no slice.
        number, resolved_in = named if named is not None and named[0] else (port.port, None)
    if not 0 < number <= MAX_PORT:
        return None, None
    return number, resolved_in


def _named_port(
    mesh: MeshSnapshot, service: Service, port: ServicePort, proxy: Proxy
) -> tuple[int, EndpointSlice] | None:
    """A named targetPort as resolved in the Service's EndpointSlices (they hold numbers),
    with the slice that resolved it."""
    fallback: tuple[int, EndpointSlice] | None = None
    for eps in sorted(mesh.slices_of(service), key=lambda s: s.name):
        number = next((p.port for p in eps.ports if p.name == port.name), None)
        if number is None:
            continue
        for endpoint in eps.endpoints:
            mine = proxy.ip in endpoint.addresses or (
                proxy.workload != "" and endpoint.target_pod == proxy.workload
            )
            if mine:
                return number, eps
        if fallback is None:
            fallback = (number, eps)
    return fallback
