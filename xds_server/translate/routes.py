"""Route configurations: each namespace's outbound table and each inbound port's.

Outbound HTTP is routed by Host, and Kubernetes resolves a short name
relative to the caller: the DNS search path of a pod in `shop` starts with
`shop.svc.cluster.local`, so its `http://backend:8080` means `backend.shop`.
The outbound table therefore depends on the namespace of the proxy using it
(as Istio's does); proxies in one namespace share it as `outbound|{namespace}`
(`naming.outbound_route_name`), served over RDS.  It has a virtual host per
HTTP, HTTP/2 and gRPC Service port of the mesh, matched on

* `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local` and the cluster IP,
  each with `:port`, for every Service;
* `name` with `:port` for the Services of the table's own namespace only;
* the same names without a port, for one port per Service: port 80 if it
  carries HTTP (a client omits `:80` from the Host header), else the first
  HTTP port in declared order.

Envoy rejects a route configuration in which two virtual hosts share a
domain.  Short names do not clash within a table (a namespace has one Service
per name, and a short name has no dot, which every other form has), nor do
the namespaced names of two Services.  What is left is a cluster IP that two
Services declare (the file source does not forbid it) and names Kubernetes
would reject: such a domain goes to the first Service claiming it in
(namespace, name) order, then by declared port, the Service whose filter
chain `capture` gives that cluster IP; a short name that a qualified name
already routes stays with the qualified name.

The cost is in the size: each table holds every Service port of the mesh
(about 540 bytes each, 5 MB at 10,000 Services), and a Service change rebuilds
the table of every namespace that has proxies.  So `OutboundRouteTables`
builds and serializes each port's virtual host once per Service value, in two
variants (with and without its short names), and reuses them for the next
mesh snapshot while the Service is unchanged.  Per snapshot it joins the
qualified variants of the whole mesh once; a namespace's table is that with
its own Services' local variants spliced in (they are contiguous in
(namespace, name) order).  The bytes are the table's deterministic
serialization, since a RouteConfiguration here holds only its name and
virtual hosts and serialized repeated fields concatenate; so N namespaces
cost N byte copies and content hashes, not N translations.

Routes forward `/` to the port's cluster with no route timeout (Istio's
default: streams and long polls must not be cut) and retry only failures that
happen before a request reaches the app.  gRPC routes honour the caller's
`grpc-timeout` header.

The inbound tables are inlined into each inbound listener: they forward to
the local app and stamp `x-mesh-inbound: <node id>`, which shows that a
request passed through the destination's sidecar.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import wrappers_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service, ServicePort
from xds_server.resources import ROUTE, Resource, serialized_resource
from xds_server.translate.core import packed, seconds
from xds_server.translate.naming import (
    cluster_name,
    inbound_cluster_name,
    inbound_route_name,
    mesh_ports,
    outbound_route_name,
    virtual_host_name,
)

logger = logging.getLogger(__name__)

INBOUND_HEADER = "x-mesh-inbound"
RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
NUM_RETRIES = 2
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
PREVIOUS_HOSTS_PREDICATE = "envoy.retry_host_predicates.previous_hosts"


def outbound_route_tables(
    mesh: MeshSnapshot, previous: OutboundRouteTables | None = None
) -> OutboundRouteTables:
    """The outbound tables of `mesh`, built once per snapshot.

    `previous` (the tables of an earlier snapshot) lends the virtual hosts of
    the Services that have not changed since.
    """
    return mesh.derive("outbound_route_tables", lambda: OutboundRouteTables(mesh, previous))


def outbound_route_config(mesh: MeshSnapshot, namespace: str) -> route_pb2.RouteConfiguration:
    """The outbound table of proxies in `namespace` (present even when the mesh is empty)."""
    return outbound_route_tables(mesh).config(namespace)


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


@dataclass(frozen=True, eq=False, slots=True)
class _PortHost:
    """One HTTP Service port's virtual host, serialized once in both variants.

    Compared by identity: the same object means the same (unchanged) Service.
    """

    name: str
    cluster: str
    protocol: PortProtocol
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
    ) -> _PortHost:
        name, cluster = virtual_host_name(service, port), cluster_name(service, port)
        qualified = [domain for domain, short in domains if not short]
        config = _single_host_config(name, cluster, port.mesh_protocol)
        return cls(
            name=name,
            cluster=cluster,
            protocol=port.mesh_protocol,
            domains=tuple(domains),
            qualified_domains=frozenset(qualified),
            short_domains=frozenset(domain for domain, short in domains if short),
            qualified=_encode(config, qualified),
            local=_encode(config, [domain for domain, _ in domains]),
        )

    def encode(self, domains: Sequence[str]) -> bytes:
        """With only `domains` (those a clash left it); nothing if none is left."""
        return _encode(_single_host_config(self.name, self.cluster, self.protocol), domains)


def _single_host_config(
    name: str, cluster: str, protocol: PortProtocol
) -> route_pb2.RouteConfiguration:
    """A RouteConfiguration holding only the virtual host `name`, with no domains yet."""
    config = route_pb2.RouteConfiguration()
    vhost = config.virtual_hosts.add(name=name)
    vhost.routes.append(_outbound_route(cluster, protocol))
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


def _service_hosts(service: Service) -> tuple[_PortHost, ...]:
    """The virtual hosts of a Service's HTTP ports, in declared order."""
    bare = _bare_port(service)
    return tuple(
        _PortHost.build(service, port, _domains(service, port.port, port.port == bare))
        for port in mesh_ports(service)
        if port.mesh_protocol.is_http
    )


class OutboundRouteTables:
    """Every namespace's outbound table for one mesh snapshot (see the module doc)."""

    def __init__(self, mesh: MeshSnapshot, previous: OutboundRouteTables | None = None) -> None:
        known = previous._hosts if previous is not None else {}
        self._hosts: dict[Service, tuple[_PortHost, ...]] = {}
        ports: list[tuple[str, _PortHost]] = []
        for service in mesh.sorted_services():
            hosts = known.get(service)
            if hosts is None:
                hosts = _service_hosts(service)
            self._hosts[service] = hosts
            ports.extend((service.namespace, host) for host in hosts)
        self._ports = ports
        self._taken: set[str]
        """Every qualified domain, each claimed by one port."""
        self._reduced: dict[int, frozenset[str]]
        """The qualified domains of the ports that lost some to an earlier claimant."""
        self._spans: dict[str, tuple[int, int, int, int]]
        """By namespace: its ports' byte range in `_blob`, and their index range in `_ports`."""
        self._blob: bytes
        """Every port's qualified variant, in order."""
        self._resources: dict[str, Resource]
        if previous is not None and previous._ports == ports:
            # The same virtual hosts in the same order: the same tables, already serialized.
            self._taken, self._reduced = previous._taken, previous._reduced
            self._spans, self._blob = previous._spans, previous._blob
            self._resources = previous._resources
        else:
            self._taken, self._reduced, self._spans, self._blob = _claim(ports)
            self._resources = {}

    def encoded(self, namespace: str) -> bytes:
        """The deterministic serialization of `namespace`'s table."""
        header = route_pb2.RouteConfiguration(name=outbound_route_name(namespace))
        head: bytes = header.SerializeToString(deterministic=True)
        span = self._spans.get(namespace)
        if span is None:
            return head + self._blob
        start, end, first, last = span
        blob = memoryview(self._blob)
        return b"".join((head, blob[:start], *self._local_pieces(first, last), blob[end:]))

    def config(self, namespace: str) -> route_pb2.RouteConfiguration:
        """`namespace`'s table as a proto (for inspection; the pipeline serves `resource`)."""
        return route_pb2.RouteConfiguration.FromString(self.encoded(namespace))

    def resource(self, namespace: str) -> Resource:
        """`namespace`'s table, serialized and versioned as `make_resource` would."""
        found = self._resources.get(namespace)
        if found is None:
            found = serialized_resource(
                ROUTE, outbound_route_name(namespace), self.encoded(namespace)
            )
            self._resources[namespace] = found
        return found

    def _local_pieces(self, first: int, last: int) -> list[bytes]:
        """The virtual hosts of one namespace's ports, short names included where free."""
        pieces: list[bytes] = []
        seen: set[str] = set()
        for index in range(first, last):
            host = self._ports[index][1]
            reduced = self._reduced.get(index)
            if (
                reduced is None
                and seen.isdisjoint(host.short_domains)
                and self._taken.isdisjoint(host.short_domains)
            ):
                pieces.append(host.local)
                seen |= host.short_domains
                continue
            qualified = host.qualified_domains if reduced is None else reduced
            kept: list[str] = []
            for domain, short in host.domains:
                if short:
                    if domain in self._taken or domain in seen:
                        logger.debug("%s: short name %s routed already", host.name, domain)
                        continue
                    seen.add(domain)
                elif domain not in qualified:
                    continue
                kept.append(domain)
            pieces.append(host.encode(kept))
        return pieces


def _claim(
    ports: list[tuple[str, _PortHost]],
) -> tuple[set[str], dict[int, frozenset[str]], dict[str, tuple[int, int, int, int]], bytes]:
    """Give each qualified domain to its first port, and join their virtual hosts."""
    taken: set[str] = set()
    reduced: dict[int, frozenset[str]] = {}
    spans: dict[str, tuple[int, int, int, int]] = {}
    pieces: list[bytes] = []
    offset = 0
    for index, (namespace, host) in enumerate(ports):
        if taken.isdisjoint(host.qualified_domains):
            piece = host.qualified
            taken |= host.qualified_domains
        else:
            free = host.qualified_domains - taken
            logger.debug("%s: %s routed already", host.name, sorted(host.qualified_domains - free))
            reduced[index] = free
            taken |= free
            piece = host.encode([domain for domain, _ in host.domains if domain in free])
        end = offset + len(piece)
        span = spans.get(namespace)
        spans[namespace] = (
            (offset, end, index, index + 1) if span is None else (span[0], end, span[2], index + 1)
        )
        pieces.append(piece)
        offset = end
    return taken, reduced, spans, b"".join(pieces)


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
