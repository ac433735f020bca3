"""One HTTP Service port's outbound virtual host: its domains, its route, its bytes.

`routes.OutboundRouteTables` joins these into every namespace's table (see
`routes` for the naming rules and why hosts are serialized once per Service
value).  Each host is serialized as a field of a RouteConfiguration, so the
pieces of a table concatenate; and each names its Service in its metadata
(`provenance`), inside those bytes.

Routes forward `/` to the port's cluster with no route timeout (Istio's
default: streams and long polls must not be cut) and retry only failures that
happen before a request reaches the app.  gRPC routes honour the caller's
`grpc-timeout` header.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import wrappers_pb2

from xds_server.model import PortProtocol, Service, ServicePort
from xds_server.translate.core import packed, seconds
from xds_server.translate.naming import cluster_name, mesh_ports, virtual_host_name
from xds_server.translate.provenance import service_key, stamp_sources

logger = logging.getLogger(__name__)

RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
NUM_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
PREVIOUS_HOSTS_PREDICATE = "envoy.retry_host_predicates.previous_hosts"


@dataclass(frozen=True, eq=False, slots=True)
class PortHost:
    """One HTTP Service port's virtual host, serialized once in both variants.

    Compared by identity: the same object means the same (unchanged) Service.
    """

    name: str
    cluster: str
    protocol: PortProtocol
    source: str
    """The key of its Service, stamped on the virtual host."""
    domains: tuple[tuple[str, bool], ...]
    """Every domain, longest first, with `:port` then without; and whether it is short."""
    qualified_domains: frozenset[str]
    short_domains: frozenset[str]
    qualified: bytes
    """Without the short names, encoded as a field of a RouteConfiguration."""
    local: bytes
    """With the short names too: for the table of the Service's own namespace."""

    @classmethod
    def build(
        cls, service: Service, port: ServicePort, domains: list[tuple[str, bool]]
    ) -> PortHost:
        name, cluster = virtual_host_name(service, port), cluster_name(service, port)
        source = service_key(service)
        qualified = [domain for domain, short in domains if not short]
        config = _single_host_config(name, cluster, port.mesh_protocol, source)
        return cls(
            name=name,
            cluster=cluster,
            protocol=port.mesh_protocol,
            source=source,
            domains=tuple(domains),
            qualified_domains=frozenset(qualified),
            short_domains=frozenset(domain for domain, short in domains if short),
            qualified=_encode(config, qualified),
            local=_encode(config, [domain for domain, _ in domains]),
        )

    def encode(self, domains: Sequence[str]) -> bytes:
        """With only `domains` (those a clash left it); nothing if none is left."""
        config = _single_host_config(self.name, self.cluster, self.protocol, self.source)
        return _encode(config, domains)


def _single_host_config(
    name: str, cluster: str, protocol: PortProtocol, source: str
) -> route_pb2.RouteConfiguration:
    """A RouteConfiguration holding only the virtual host `name`, with no domains yet."""
    config = route_pb2.RouteConfiguration()
    vhost = config.virtual_hosts.add(name=name)
    vhost.routes.append(_outbound_route(cluster, protocol))
    stamp_sources(vhost, (source,))
    return config


def _encode(config: route_pb2.RouteConfiguration, domains: Sequence[str]) -> bytes:
    """`config`'s one virtual host with `domains`, serialized: a field of any table."""
    if not domains:
        return b""
    (vhost,) = config.virtual_hosts
    del vhost.domains[:]
    vhost.domains.extend(domains)
    data: bytes = config.SerializeToString(deterministic=True)
    return data


def service_hosts(service: Service) -> tuple[PortHost, ...]:
    """The virtual hosts of a Service's HTTP ports, in declared order."""
    bare = _bare_port(service)
    return tuple(
        PortHost.build(service, port, _domains(service, port.port, port.port == bare))
        for port in mesh_ports(service)
        if port.mesh_protocol.is_http
    )


def _bare_port(service: Service) -> int | None:
    """The port that also answers to names without `:port`: 80, else the first HTTP port."""
    http = [port.port for port in mesh_ports(service) if port.mesh_protocol.is_http]
    if not http:
        return None
    return 80 if 80 in http else http[0]


def _domains(service: Service, port: int, bare: bool) -> list[tuple[str, bool]]:
    """Host names for one port, longest first, with the port, then (if `bare`) without;
    each with whether it is the short name (which only the Service's namespace routes)."""
    names = [
        (service.hostname, False),
        (f"{service.name}.{service.namespace}.svc", False),
        (f"{service.name}.{service.namespace}", False),
        (service.name, True),
    ]
    ip = _cluster_ip_host(service.cluster_ip)
    if ip:
        names.append((ip, False))
    names = [(name.lower(), short) for name, short in names]
    return [(f"{name}:{port}", short) for name, short in names] + (names if bare else [])


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
    route = route_components_pb2.Route()
    route.CopyFrom(_route_template(protocol))
    route.route.cluster = cluster
    return route


@functools.cache
def _route_template(protocol: PortProtocol) -> route_components_pb2.Route:
    """The outbound route of a `protocol` port but its cluster: built once, copied per port."""
    action = route_components_pb2.RouteAction(
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
