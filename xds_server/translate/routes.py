"""Route configurations: the shared outbound table and each inbound port's.

The outbound table (`outbound`, served over RDS) depends on the Services only,
so one copy serves every proxy.  It has a virtual host per HTTP, HTTP/2 and
gRPC Service port, matched on every name a client in the cluster may use:

* `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local` and the
  cluster IP, each with `:port`;
* the same names without a port, for one port per Service: port 80 if it
  carries HTTP (a client omits `:80` from the Host header), else the first
  HTTP port in declared order.

Envoy rejects a route configuration in which two virtual hosts share a
domain, and the short `name` forms clash between namespaces.  Because the
table is shared it cannot resolve them against the caller's namespace as DNS
does, so each domain goes to the first Service claiming it, in the order:
namespace "default" first, then the other namespaces alphabetically, then by
name, then by declared port.  Every other Service stays reachable through its
namespaced names, which never clash.

Routes forward `/` to the port's cluster with no route timeout (Istio's
default: streams and long polls must not be cut) and retry only failures that
happen before a request reaches the app.  gRPC routes honour the caller's
`grpc-timeout` header.

The inbound tables are inlined into each inbound listener: they forward to
the local app and stamp `x-mesh-inbound: <node id>`, which shows that a
request passed through the destination's sidecar.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import wrappers_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service, ServicePort
from xds_server.translate.core import packed, seconds
from xds_server.translate.naming import (
    OUTBOUND_ROUTE_NAME,
    cluster_name,
    inbound_cluster_name,
    inbound_route_name,
    mesh_ports,
    virtual_host_name,
)

logger = logging.getLogger(__name__)

INBOUND_HEADER = "x-mesh-inbound"
SHORT_NAME_NAMESPACE = "default"
RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
NUM_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
PREVIOUS_HOSTS_PREDICATE = "envoy.retry_host_predicates.previous_hosts"


def outbound_route_configs(mesh: MeshSnapshot) -> list[route_pb2.RouteConfiguration]:
    """The single shared `outbound` RouteConfiguration (present even when empty)."""
    ports = list(_http_ports(mesh.sorted_services()))
    domains = _claim_domains(ports)
    virtual_hosts = []
    for service, port in ports:
        claimed = domains.get((service.namespace, service.name, port.port), [])
        if not claimed:
            continue
        virtual_hosts.append(
            route_components_pb2.VirtualHost(
                name=virtual_host_name(service, port),
                domains=claimed,
                routes=[_outbound_route(cluster_name(service, port), port.mesh_protocol)],
            )
        )
    return [route_pb2.RouteConfiguration(name=OUTBOUND_ROUTE_NAME, virtual_hosts=virtual_hosts)]


def inbound_route_config(
    proxy: Proxy, port: int, protocol: PortProtocol
) -> route_pb2.RouteConfiguration:
    """Everything arriving on an inbound HTTP port goes to the local app on that port."""
    action = route_components_pb2.RouteAction(
        cluster=inbound_cluster_name(port), timeout=seconds(0)
    )
    if protocol is PortProtocol.GRPC:
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(seconds(0))
    return route_pb2.RouteConfiguration(
        name=inbound_route_name(port),
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=f"inbound|http|{port}",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        name="default",
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=action,
                    )
                ],
            )
        ],
        request_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=INBOUND_HEADER, value=proxy.node_id),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )


PortKey = tuple[str, str, int]


def _http_ports(services: Iterable[Service]) -> Iterator[tuple[Service, ServicePort]]:
    for service in services:
        for port in mesh_ports(service):
            if port.mesh_protocol.is_http:
                yield service, port


def _claim_domains(ports: list[tuple[Service, ServicePort]]) -> dict[PortKey, list[str]]:
    """Each domain for exactly one port, first claimant in precedence order wins."""
    by_precedence = sorted(
        ports,
        key=lambda sp: (sp[0].namespace != SHORT_NAME_NAMESPACE, sp[0].namespace, sp[0].name),
    )  # stable: a Service's ports keep their declared order
    taken: set[str] = set()
    claimed: dict[PortKey, list[str]] = {}
    for service, port in by_precedence:
        mine = claimed.setdefault((service.namespace, service.name, port.port), [])
        bare = _bare_port(service) == port.port
        for domain in _domains(service, port.port, bare):
            if domain in taken:
                logger.debug("domain %s already routed; not for %s", domain, service.hostname)
                continue
            taken.add(domain)
            mine.append(domain)
    return claimed


def _bare_port(service: Service) -> int | None:
    """The port that also answers to names without `:port`: 80, else the first HTTP port."""
    http = [port.port for port in mesh_ports(service) if port.mesh_protocol.is_http]
    if not http:
        return None
    return 80 if 80 in http else http[0]


def _domains(service: Service, port: int, bare: bool) -> list[str]:
    """Host names for one port, longest first; with the port, then (if `bare`) without."""
    names = [
        service.hostname,
        f"{service.name}.{service.namespace}.svc",
        f"{service.name}.{service.namespace}",
        service.name,
    ]
    ip = _cluster_ip_host(service.cluster_ip)
    if ip:
        names.append(ip)
    names = [name.lower() for name in names]
    return [f"{name}:{port}" for name in names] + (names if bare else [])


def _cluster_ip_host(cluster_ip: str | None) -> str | None:
    """The cluster IP as it appears in a Host header (`[...]` for IPv6), if it has one."""
    if not cluster_ip:
        return None
    try:
        ip = ipaddress.ip_address(cluster_ip)
    except ValueError:  # "None" for headless Services
        return None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _outbound_route(cluster: str, protocol: PortProtocol) -> route_components_pb2.Route:
    action = route_components_pb2.RouteAction(
        cluster=cluster,
        timeout=seconds(0),
        retry_policy=route_components_pb2.RetryPolicy(
            retry_on=RETRY_ON,
            num_retries=wrappers_pb2.UInt32Value(value=NUM_RETRIES),
            retry_host_predicate=[
                route_components_pb2.RetryPolicy.RetryHostPredicate(
                    name=PREVIOUS_HOSTS_PREDICATE,
                    typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
                )
            ],
            host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
        ),
    )
    if protocol is PortProtocol.GRPC:
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(seconds(0))
    return route_components_pb2.Route(
        name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action
    )
