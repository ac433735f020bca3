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

Each port's virtual host and its routes are built in `virtual_hosts`.  Mesh
routes (HTTPRoute, GRPCRoute bound to a Service, `mesh_routes`) change that
host's routes; they are inputs of its memo like the Service itself: a
Service's hosts are rebuilt when the Service, the routes bound to it, the
ports of the Services those routes reference, or its BackendPolicy's retry
and timeouts change, and reused otherwise.  Consumer routes (in another
namespace than their Service) make a variant of the host for their
namespace only: that namespace's table has it spliced in place of the
shared one, so tables differ per namespace only where consumer routes are.
A route that cannot be translated is left out and listed in `issues`; an
unforeseen failure leaves that Service its last good hosts.

The inbound tables are inlined into each inbound listener: they forward to
the local app and stamp `x-mesh-inbound: <node id>`, which shows that a
request passed through the destination's sidecar.

Provenance (see `provenance`): each virtual host names its Service (and the
routes and BackendPolicy that shaped it) in its metadata, inside the bytes
serialized once per Service; a namespace's outbound table names its
generator and namespace in a trailer after the virtual hosts (`metadata` is a
later field than `virtual_hosts`, so head, hosts and trailer concatenate to
the deterministic serialization still).  An inbound table and
its one virtual host name the objects behind the port.
"""

from __future__ import annotations

import functools
import logging
from array import array
from collections import Counter
from typing import NamedTuple

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import MeshRoute
from xds_server.resources import ROUTE, Resource, serialized_resource
from xds_server.translate.core import seconds
from xds_server.translate.inbound import InboundPort
from xds_server.translate.mesh_route_filters import NamespacedName
from xds_server.translate.mesh_routes import RouteIssue, referenced_backends
from xds_server.translate.naming import (
    inbound_cluster_name,
    inbound_route_name,
    mesh_ports,
    outbound_route_name,
)
from xds_server.translate.provenance import generator_metadata
from xds_server.translate.virtual_hosts import PortHost, ServiceHosts, service_hosts, shaping_policy

logger = logging.getLogger(__name__)

INBOUND_HEADER = "x-mesh-inbound"
OUTBOUND_ROUTES_GENERATOR = "outbound-routes"


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


def inbound_route_config(proxy: Proxy, inbound: InboundPort) -> route_pb2.RouteConfiguration:
    """Everything arriving on an inbound HTTP port goes to the local app on that port.

    The table and its virtual host name the port's sources.
    """
    port = inbound.port
    action = route_components_pb2.RouteAction(
        cluster=inbound_cluster_name(port), timeout=seconds(0)
    )
    if inbound.protocol is PortProtocol.GRPC:
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(seconds(0))
    config = route_pb2.RouteConfiguration(
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
    # Not stamped: the listener (or capture filter chain) that inlines this table names
    # the same sources once; a copy here would cost every proxy ~80 bytes per port.
    return config


BackendSurface = tuple[tuple[NamespacedName, tuple[int, ...] | None], ...]
"""What a Service's routes see of the Services they reference: each one's port numbers."""


class _Entry(NamedTuple):
    """A Service's virtual hosts and every input they were built from (the memo key)."""

    service: Service
    routes: tuple[MeshRoute, ...]
    backends: BackendSurface
    policy: BackendPolicy | None
    hosts: ServiceHosts


class OutboundRouteTables:
    """Every namespace's outbound table for one mesh snapshot (see the module doc)."""

    def __init__(self, mesh: MeshSnapshot, previous: OutboundRouteTables | None = None) -> None:
        known = previous._entries if previous is not None else {}
        self._entries: dict[NamespacedName, _Entry] = {}
        ports: list[tuple[str, PortHost]] = []
        overrides: dict[str, dict[int, PortHost]] = {}
        issues: list[RouteIssue] = []
        for service in mesh.sorted_services():
            key = (service.namespace, service.name)
            entry = _entry(mesh, service, known.get(key))
            self._entries[key] = entry
            hosts = entry.hosts
            first = len(ports)
            ports.extend((service.namespace, host) for host in hosts.hosts)
            for caller, variants in hosts.consumers.items():
                replaced = overrides.setdefault(caller, {})
                for index, host in variants:
                    replaced[first + index] = host
            issues.extend(hosts.issues)
        self._ports = ports
        self._overrides = overrides
        """By caller namespace: the hosts its consumer routes put in place of a port's."""
        self.issues: tuple[RouteIssue, ...] = tuple(issues)
        """Route rules left out of the tables, each naming its route and field."""
        self._claims: _Claims
        self._resources: dict[str, Resource]
        self._sources: dict[str, tuple[str, ...]]
        self._everywhere: tuple[frozenset[str], tuple[str, ...]] | None = None
        """Every key with a qualified host in some table: as a set, and sorted."""
        if previous is not None and previous._ports == ports:
            # The same virtual hosts in the same order: the same claims, already joined.
            self._claims, self._everywhere = previous._claims, previous._everywhere
            if previous._overrides == overrides:
                self._resources, self._sources = previous._resources, previous._sources
            else:
                self._resources, self._sources = {}, {}
        else:
            self._claims = _claim(ports)
            self._resources, self._sources = {}, {}

    def encoded(self, namespace: str) -> bytes:
        """The deterministic serialization of `namespace`'s table."""
        head, tail = _header(namespace)
        claims = self._claims
        pieces: list[tuple[int, int, list[bytes]]] = []
        span = claims.spans.get(namespace)
        if span is not None:
            start, end, first, last = span
            pieces.append((start, end, self._local_pieces(first, last)))
        offsets = claims.offsets
        for index, host in self._overrides.get(namespace, {}).items():
            pieces.append((offsets[index], offsets[index + 1], [self._qualified(index, host)]))
        if not pieces:
            return b"".join((head, claims.blob, tail))
        pieces.sort(key=lambda piece: piece[0])
        blob = memoryview(claims.blob)
        joined: list[bytes | memoryview] = [head]
        at = 0
        for start, end, replacement in pieces:
            joined.append(blob[at:start])
            joined.extend(replacement)
            at = end
        joined += [blob[at:], tail]
        return b"".join(joined)

    def sources(self, namespace: str) -> tuple[str, ...]:
        """The keys of the objects behind the virtual hosts in `namespace`'s table, sorted.

        Every table holds the qualified hosts of every namespace; a namespace's
        own table may add a host present only by its short names, and its
        consumer routes replace some hosts.  The shared part is sorted once per
        tables, so 20 namespaces cost one sort of 10,000.
        """
        found = self._sources.get(namespace)
        if found is None:
            claims = self._claims
            if self._everywhere is None:
                self._everywhere = (frozenset(claims.counts), tuple(sorted(claims.counts)))
            every_key, every_sorted = self._everywhere
            span = claims.spans.get(namespace)
            replaced = self._overrides.get(namespace, {})
            removed: Counter[str] = Counter()
            added: set[str] = set()
            if span is not None:
                _, _, first, last = span
                pieces = self._local_pieces(first, last)
                for index, piece in zip(range(first, last), pieces, strict=True):
                    host = self._ports[index][1]
                    if self._in_blob(index):
                        removed.update(host.sources)
                    if piece:
                        added.update(host.sources)
            for index, host in replaced.items():
                if self._in_blob(index):
                    removed.update(self._ports[index][1].sources)
                if self._qualified(index, host):
                    added.update(host.sources)
            gone = {key for key, n in removed.items() if claims.counts[key] <= n} - added
            extra = added - every_key
            found = tuple(sorted((every_key - gone) | extra)) if gone or extra else every_sorted
            self._sources[namespace] = found
        return found

    def _in_blob(self, index: int) -> bool:
        offsets = self._claims.offsets
        return offsets[index + 1] > offsets[index]

    def _qualified(self, index: int, host: PortHost) -> bytes:
        """`host` in place of port `index`, with the qualified domains that port claimed."""
        reduced = self._claims.reduced.get(index)
        if reduced is None:
            return host.qualified
        return host.encode([domain for domain, _ in host.domains if domain in reduced])

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
        taken = self._claims.taken
        for index in range(first, last):
            host = self._ports[index][1]
            reduced = self._claims.reduced.get(index)
            if (
                reduced is None
                and seen.isdisjoint(host.short_domains)
                and taken.isdisjoint(host.short_domains)
            ):
                pieces.append(host.local)
                seen |= host.short_domains
                continue
            qualified = host.qualified_domains if reduced is None else reduced
            kept: list[str] = []
            for domain, short in host.domains:
                if short:
                    if domain in taken or domain in seen:
                        logger.debug("%s: short name %s routed already", host.name, domain)
                        continue
                    seen.add(domain)
                elif domain not in qualified:
                    continue
                kept.append(domain)
            pieces.append(host.encode(kept))
        return pieces


def _entry(mesh: MeshSnapshot, service: Service, known: _Entry | None) -> _Entry:
    """`service`'s hosts, reused from `known` while every input is the same."""
    # Most meshes have few routes and policies: no lookup per Service when there are none.
    any_routes = bool(mesh.http_routes or mesh.grpc_routes)
    routes = mesh.routes_for(service.namespace, service.name) if any_routes else ()
    attachment = mesh.backend_policy_for(service) if mesh.backend_policies else None
    policy = shaping_policy(attachment.policy if attachment is not None else None)
    backends: dict[NamespacedName, Service] = {}
    surface: BackendSurface = ()
    if routes:
        found = {ref: mesh.services.get(ref) for ref in sorted(referenced_backends(routes))}
        backends = {ref: backend for ref, backend in found.items() if backend is not None}
        surface = tuple(
            (ref, None if backend is None else tuple(p.port for p in mesh_ports(backend)))
            for ref, backend in found.items()
        )
    if (
        known is not None
        and (known.service is service or known.service == service)
        and known.routes == routes
        and known.backends == surface
        and known.policy == policy
    ):
        return known
    try:
        hosts = service_hosts(service, routes, backends, policy)
    except Exception:
        # A route no check foresaw must not cost the other Services their hosts: this
        # Service keeps its last good hosts (or, new, its hosts without routes).
        logger.exception("%s/%s: translating its routes failed", service.namespace, service.name)
        hosts = known.hosts if known is not None else service_hosts(service, (), None, policy)
        issue = RouteIssue(
            f"Service/{service.namespace}/{service.name}",
            "routes",
            "translating the routes bound to it failed; its last good virtual hosts stay",
        )
        hosts = ServiceHosts(hosts.hosts, hosts.consumers, (*hosts.issues, issue))
    return _Entry(service, routes, surface, policy, hosts)


class _Claims(NamedTuple):
    """Which port routes which qualified domain, and the qualified variants joined."""

    taken: set[str]
    """Every qualified domain, each claimed by one port."""
    reduced: dict[int, frozenset[str]]
    """The qualified domains of the ports that lost some to an earlier claimant."""
    spans: dict[str, tuple[int, int, int, int]]
    """By namespace: its ports' byte range in `blob`, and their index range in the ports."""
    blob: bytes
    """Every port's qualified variant, in order."""
    offsets: array[int]
    """Where each port's piece starts in `blob` (and, last, where the blob ends)."""
    counts: Counter[str]
    """How many pieces left in `blob` name each source key."""


def _claim(ports: list[tuple[str, PortHost]]) -> _Claims:
    """Give each qualified domain to its first port, and join their virtual hosts."""
    taken: set[str] = set()
    reduced: dict[int, frozenset[str]] = {}
    spans: dict[str, tuple[int, int, int, int]] = {}
    counts: Counter[str] = Counter()
    offsets = array("Q", [0])
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
        if piece:
            counts.update(host.sources)
        pieces.append(piece)
        offsets.append(end)
        offset = end
    return _Claims(taken, reduced, spans, b"".join(pieces), offsets, counts)


@functools.lru_cache(maxsize=4096)
def _header(namespace: str) -> tuple[bytes, bytes]:
    """What goes before a namespace's virtual hosts (its name) and after (its generator)."""
    head = route_pb2.RouteConfiguration(name=outbound_route_name(namespace))
    tail = route_pb2.RouteConfiguration(
        metadata=generator_metadata(OUTBOUND_ROUTES_GENERATOR, namespace)
    )
    return head.SerializeToString(deterministic=True), tail.SerializeToString(deterministic=True)
