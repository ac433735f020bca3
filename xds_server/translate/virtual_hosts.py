"""One HTTP Service port's outbound virtual host: its domains, its routes, its bytes.

`routes.OutboundRouteTables` joins these into every namespace's table (see
`routes` for the naming rules and why hosts are serialized once per Service
value).  Each host is serialized as a field of a RouteConfiguration, so the
pieces of a table concatenate; and each names its sources in its metadata
(`provenance`), inside those bytes: its Service, the HTTPRoutes and
GRPCRoutes that shaped it, and the BackendPolicy whose retry or timeouts it
carries.

A port no route governs forwards `/` to the port's cluster with no route
timeout (Istio's default: streams and long polls must not be cut) and
retries only failures that happen before a request reaches the app, unless
the Service's BackendPolicy sets `retry` or `timeouts`
(`mesh_route_actions.default_route`).  gRPC routes honour the caller's
`grpc-timeout` header.  A port that routes govern (`mesh_routes`) holds
their routes instead; callers in a namespace with consumer routes for the
port get a variant of the host of their own (`ServiceHosts.consumers`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.route.v3 import route_components_pb2, route_pb2

from xds_server.model import PortProtocol, Service, ServicePort
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import MeshRoute
from xds_server.translate.mesh_route_actions import default_route
from xds_server.translate.mesh_route_filters import NamespacedName
from xds_server.translate.mesh_routes import (
    PRODUCER,
    RouteIssue,
    governing_routes,
    port_routes,
)
from xds_server.translate.naming import cluster_name, mesh_ports, virtual_host_name
from xds_server.translate.provenance import policy_key, service_key, stamp_sources

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False, slots=True)
class PortHost:
    """One HTTP Service port's virtual host, serialized once in both variants.

    Compared by identity: the same object means the same (unchanged) inputs.
    """

    name: str
    cluster: str
    protocol: PortProtocol
    sources: tuple[str, ...]
    """The keys stamped on the virtual host: its Service first, then routes and policy."""
    domains: tuple[tuple[str, bool], ...]
    """Every domain, longest first, with `:port` then without; and whether it is short."""
    qualified_domains: frozenset[str]
    short_domains: frozenset[str]
    qualified: bytes
    """Without the short names, encoded as a field of a RouteConfiguration."""
    local: bytes
    """With the short names too: for the table of the Service's own namespace."""
    policy: BackendPolicy | None = None
    """The policy whose retry and timeouts the default route carries."""
    routed: bytes | None = None
    """The host with the routes that govern it and no domains (None: the default route)."""

    @property
    def source(self) -> str:
        """The key of its Service."""
        return self.sources[0]

    @classmethod
    def build(
        cls,
        service: Service,
        port: ServicePort,
        domains: list[tuple[str, bool]],
        routes: Sequence[route_components_pb2.Route] = (),
        extra_sources: Sequence[str] = (),
        policy: BackendPolicy | None = None,
    ) -> PortHost:
        name, cluster = virtual_host_name(service, port), cluster_name(service, port)
        sources = (service_key(service), *extra_sources)
        qualified = [domain for domain, short in domains if not short]
        if routes:
            config = route_pb2.RouteConfiguration()
            vhost = config.virtual_hosts.add(name=name)
            vhost.routes.extend(routes)
            stamp_sources(vhost, sources)
            routed: bytes | None = config.SerializeToString(deterministic=True)
        else:
            config = _single_host_config(name, cluster, port.mesh_protocol, sources, policy)
            routed = None
        return cls(
            name=name,
            cluster=cluster,
            protocol=port.mesh_protocol,
            sources=sources,
            domains=tuple(domains),
            qualified_domains=frozenset(qualified),
            short_domains=frozenset(domain for domain, short in domains if short),
            qualified=_encode(config, qualified),
            local=_encode(config, [domain for domain, _ in domains]),
            policy=policy,
            routed=routed,
        )

    def encode(self, domains: Sequence[str]) -> bytes:
        """With only `domains` (those a clash left it); nothing if none is left."""
        if self.routed is not None:
            config = route_pb2.RouteConfiguration.FromString(self.routed)
        else:
            config = _single_host_config(
                self.name, self.cluster, self.protocol, self.sources, self.policy
            )
        return _encode(config, domains)


def _single_host_config(
    name: str,
    cluster: str,
    protocol: PortProtocol,
    sources: Sequence[str],
    policy: BackendPolicy | None,
) -> route_pb2.RouteConfiguration:
    """A RouteConfiguration holding only the virtual host `name`, with no domains yet."""
    config = route_pb2.RouteConfiguration()
    vhost = config.virtual_hosts.add(name=name)
    vhost.routes.append(default_route(cluster, protocol, policy))
    stamp_sources(vhost, sources)
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


_NO_CONSUMERS: Mapping[str, tuple[tuple[int, PortHost], ...]] = {}


@dataclass(frozen=True, eq=False, slots=True)
class ServiceHosts:
    """A Service's virtual hosts: for every caller, and the variants consumer routes make."""

    hosts: tuple[PortHost, ...]
    """One per HTTP port in declared order: for callers without consumer routes of their own."""
    consumers: Mapping[str, tuple[tuple[int, PortHost], ...]] = field(
        default_factory=lambda: _NO_CONSUMERS
    )
    """By caller namespace: (index into `hosts`, the host its consumer routes make)."""
    issues: tuple[RouteIssue, ...] = ()
    """Rules and routes left out, each naming its route and field."""


def service_hosts(
    service: Service,
    routes: Sequence[MeshRoute] = (),
    backends: Mapping[NamespacedName, Service] | None = None,
    policy: BackendPolicy | None = None,
) -> ServiceHosts:
    """The virtual hosts of a Service's HTTP ports, in declared order.

    `routes` are those whose parentRefs name the Service (any namespace),
    `backends` the Services they reference that exist, `policy` the
    Service's governing BackendPolicy.
    """
    bare = _bare_port(service)
    shaping = shaping_policy(policy)
    if not routes:  # the common case, kept lean: 10,000 Services are built at start-up
        extra = (policy_key(shaping),) if shaping else ()
        return ServiceHosts(
            tuple(
                PortHost.build(
                    service,
                    port,
                    _domains(service, port.port, port.port == bare),
                    (),
                    extra,
                    shaping,
                )
                for port in mesh_ports(service)
                if port.mesh_protocol.is_http
            )
        )
    known = backends if backends is not None else {}
    hosts: list[PortHost] = []
    consumers: dict[str, list[tuple[int, PortHost]]] = {}
    issues: list[RouteIssue] = []
    for port in (port for port in mesh_ports(service) if port.mesh_protocol.is_http):
        domains = _domains(service, port.port, port.port == bare)
        index, own = len(hosts), None
        groups = governing_routes(service, port, routes)
        for who, group in sorted(groups.items(), key=lambda item: item[0] or ""):
            translated = port_routes(service, port, group, known, shaping)
            issues.extend(translated.issues)
            if not translated.routes:
                continue  # no rule left: the group does not bind (its callers fall back)
            extra = (*translated.sources, *((policy_key(shaping),) if shaping else ()))
            host = PortHost.build(service, port, domains, translated.routes, extra, shaping)
            if who is PRODUCER:
                own = host
            else:
                consumers.setdefault(who, []).append((index, host))
        if own is None:
            extra = (policy_key(shaping),) if shaping else ()
            own = PortHost.build(service, port, domains, (), extra, shaping)
        hosts.append(own)
    return ServiceHosts(
        tuple(hosts),
        {who: tuple(found) for who, found in consumers.items()} if consumers else _NO_CONSUMERS,
        tuple(issues),
    )


def shaping_policy(policy: BackendPolicy | None) -> BackendPolicy | None:
    """`policy` if it sets what routes carry (default retries or timeouts), else None."""
    if policy is None:
        return None
    spec = policy.spec()
    return policy if spec.HasField("retry") or spec.HasField("timeouts") else None


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
