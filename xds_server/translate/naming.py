"""Names of the resources translation emits, and which Service ports it meshes.

Every cross-reference between xDS resources is by name (a listener names its
route configuration, a route names its cluster, EDS names its cluster), so the
names are built in exactly one place.  They follow Istio's conventions
(`outbound|port||host`, `inbound|port||`) so that operators reading Envoy's
admin output or stats recognise them.
"""

from __future__ import annotations

import logging

from xds_server.model import Service, ServicePort

logger = logging.getLogger(__name__)

OUTBOUND_HTTP_LISTENER_NAME = "outbound_http"

VIRTUAL_OUTBOUND_LISTENER_NAME = "virtual_outbound"
"""Where iptables REDIRECTs a captured pod's outbound TCP (Istio's virtualOutbound)."""

VIRTUAL_INBOUND_LISTENER_NAME = "virtual_inbound"
"""Where iptables REDIRECTs a captured pod's inbound TCP (Istio's virtualInbound)."""

PASSTHROUGH_CLUSTER = "PassthroughCluster"
"""ORIGINAL_DST: captured outbound traffic that is not for the mesh goes where it was going."""

INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"
"""ORIGINAL_DST from 127.0.0.6: captured inbound traffic to a port no Service declares."""

BLACKHOLE_CLUSTER = "BlackHoleCluster"
"""No endpoints: connections that would loop back into the sidecar are closed instead."""


def cluster_name(service: Service, port: ServicePort) -> str:
    """The shared EDS cluster for one Service port: `outbound|80||web.shop.svc.cluster.local`."""
    return f"outbound|{port.port}||{service.hostname}"


def inbound_cluster_name(port: int) -> str:
    """The per-proxy STATIC cluster that reaches the local app: `inbound|8080||`."""
    return f"inbound|{port}||"


def outbound_route_name(namespace: str) -> str:
    """The outbound RouteConfiguration of proxies in `namespace`: `outbound|shop`.

    Short names resolve against the caller's namespace, so there is one table
    per namespace; a namespace (a DNS label) never contains `|`.
    """
    return f"outbound|{namespace}"


def outbound_tcp_listener_name(port: int) -> str:
    return f"outbound_tcp_{port}"


def inbound_listener_name(port: int) -> str:
    return f"inbound_{port}"


def inbound_route_name(port: int) -> str:
    return f"inbound|{port}"


def virtual_host_name(service: Service, port: ServicePort) -> str:
    """`web.shop.svc.cluster.local:80`: unique per Service port, like its cluster."""
    return f"{service.hostname}:{port.port}"


def mesh_ports(service: Service) -> list[ServicePort]:
    """The Service ports the mesh carries, in declared order.

    Envoy proxies TCP only, so UDP and SCTP ports are left to the network (a
    DNS Service declaring port 53 for both TCP and UDP gets one cluster, not
    two clashing ones).  A port number declared twice keeps its first entry.
    """
    seen: set[int] = set()
    ports: list[ServicePort] = []
    for port in service.ports:
        if port.protocol.upper() != "TCP":
            continue
        if port.port in seen:
            logger.debug("%s/%s declares port %d twice", service.namespace, service.name, port.port)
            continue
        seen.add(port.port)
        ports.append(port)
    return ports
