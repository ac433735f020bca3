"""ClusterLoadAssignments: which addresses back each Service port, by zone.

This is the EDS half of the shared outbound clusters and changes far more
often than anything else, so it is a function of one Service and its
EndpointSlices only: an endpoint change re-translates one Service's CLAs and
nothing else.  Ports resolve as kube-proxy resolves them (the slice port whose
name equals the Service port's name), only routable endpoints (ready and not
terminating) take traffic, and the zone becomes the locality.  Output is
sorted, so identical input always serializes to identical bytes and the
content-hash version does not churn.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from xds_server.model import EndpointSlice, Service, ServicePort
from xds_server.translate.core import socket_address
from xds_server.translate.naming import cluster_name, mesh_ports

logger = logging.getLogger(__name__)

IP_ADDRESS_TYPES = frozenset({"IPv4", "IPv6"})
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
"""The endpoint metadata a cluster's `transport_socket_matches` select on."""

_IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HostPort = tuple[_IpAddress, int]


def load_assignments_for_service(
    service: Service,
    slices: Sequence[EndpointSlice],
    mtls: frozenset[tuple[str, int]] = frozenset(),
) -> list[endpoint_pb2.ClusterLoadAssignment]:
    """One CLA per meshed Service port, even with no endpoints, so no EDS cluster dangles.

    Endpoints in `mtls` (sidecars accepting it: `model.peer_authentication.mtls_endpoints`)
    carry `envoy.transport_socket_match: {tlsMode: mtls}`, which selects the
    cluster's mTLS transport socket (`clusters`); the rest are called in plaintext.
    """
    return [_load_assignment(name, by_zone, mtls) for name, by_zone in zone_hosts(service, slices)]


def zone_hosts(
    service: Service, slices: Sequence[EndpointSlice]
) -> list[tuple[str, dict[str, set[HostPort]]]]:
    """(cluster name, routable hosts by zone) for each meshed Service port, in port order:
    what `load_assignments_for_service` assigns (`locality` groups the zones by priority)."""
    own = sorted(
        (s for s in slices if s.namespace == service.namespace and s.service_name == service.name),
        key=lambda s: s.name,
    )
    return [
        (cluster_name(service, port), _hosts_by_zone(port, own)) for port in mesh_ports(service)
    ]


def static_load_assignment(name: str, ip: str, port: int) -> endpoint_pb2.ClusterLoadAssignment:
    """A single-host CLA, inlined into a STATIC cluster (the local app behind a sidecar)."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[_lb_endpoint(ip, port)])
        ],
    )


def _hosts_by_zone(port: ServicePort, slices: Sequence[EndpointSlice]) -> dict[str, set[HostPort]]:
    """Routable (address, port) pairs grouped by zone ("" when unknown).

    An address listed by two slices (as happens briefly while the controller
    rebalances them) is kept once, in the zone of the first slice by name.
    """
    by_zone: dict[str, set[HostPort]] = {}
    seen: set[HostPort] = set()
    for eps in slices:
        if eps.address_type not in IP_ADDRESS_TYPES:
            continue
        target = next(
            (p.port for p in eps.ports if p.name == port.name and p.protocol.upper() == "TCP"),
            None,
        )
        if target is None:
            continue
        for endpoint in eps.endpoints:
            if not endpoint.is_routable:
                continue
            for address in endpoint.addresses:
                ip = _parse_ip(address, eps)
                if ip is None or (ip, target) in seen:
                    continue
                seen.add((ip, target))
                by_zone.setdefault(endpoint.zone or "", set()).add((ip, target))
    return by_zone


def _parse_ip(address: str, eps: EndpointSlice) -> _IpAddress | None:
    """The address as an IP, or None: Envoy rejects a whole CLA over one bad address."""
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        logger.debug("EndpointSlice %s/%s: skipping non-IP %r", eps.namespace, eps.name, address)
        return None


def _load_assignment(
    name: str, by_zone: dict[str, set[HostPort]], mtls: frozenset[tuple[str, int]]
) -> endpoint_pb2.ClusterLoadAssignment:
    localities = [locality_lb_endpoints(zone, by_zone[zone], mtls=mtls) for zone in sorted(by_zone)]
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=name, endpoints=localities)


def locality_lb_endpoints(
    zone: str,
    hosts: set[HostPort],
    priority: int = 0,
    mtls: frozenset[tuple[str, int]] = frozenset(),
) -> endpoint_components_pb2.LocalityLbEndpoints:
    """One zone's hosts, sorted, as a locality ("" : none) at `priority`."""
    ordered = sorted(hosts, key=lambda hp: (hp[0].version, hp[0], hp[1]))
    locality = endpoint_components_pb2.LocalityLbEndpoints(
        lb_endpoints=[
            _lb_endpoint(str(ip), target, (str(ip), target) in mtls) for ip, target in ordered
        ],
        priority=priority,
    )
    if zone:
        locality.locality.CopyFrom(base_pb2.Locality(zone=zone))
    return locality


def _lb_endpoint(ip: str, port: int, mtls: bool = False) -> endpoint_components_pb2.LbEndpoint:
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(ip, port))
    )
    if mtls:
        endpoint.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH].update({"tlsMode": "mtls"})
    return endpoint
