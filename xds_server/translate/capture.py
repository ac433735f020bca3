"""Virtual listeners for traffic that iptables captures (`interception == "redirect"`).

With the rules of `xds_server.capture` installed in a pod, every TCP connection
the app opens is REDIRECTed to the sidecar's `outbound_port`, and every
connection arriving at the pod to its `inbound_capture_port`.  The sidecar then
needs two listeners, as Istio's virtualOutbound and virtualInbound:

`virtual_outbound` on `0.0.0.0:outbound_port`.  The `original_dst` listener
filter restores the address the app connected to, and filter chains choose by it:

* the cluster IP and port of a meshed HTTP Service port, when `http_inspector`
  saw HTTP/1.x or h2c: the HTTP connection manager with the proxy's namespace's
  `outbound|{namespace}` route table over RDS, so requests are routed by Host
  exactly as on the explicit listener (`http://backend:8080` resolves to the
  cluster IP and carries `Host: backend:8080`, which means `backend` of the
  caller's namespace, as DNS resolved it);
* the same address with anything else on the wire (TLS, a binary protocol, or a
  client silent for longer than the inspector waits): a TCP proxy to that
  Service port's cluster, so a misdeclared protocol degrades to plain TCP
  instead of failing;
* the cluster IP and port of a meshed TCP Service port: a TCP proxy to its cluster;
* `outbound_address:outbound_port` itself: the explicit HTTP proxy of the
  "none" mode, so an app that is configured to use it keeps working;
* any other address on `outbound_port`: `BlackHoleCluster` (passing it on
  would connect the sidecar to itself);
* everything else (the default chain): `PassthroughCluster`, to where the app
  was going, so traffic that is not for the mesh is unaffected.

HTTP is matched on the Service's own destination only, not on any address:
routing arbitrary HTTP by Host would answer 404 for every site outside the
mesh, since the outbound route tables have no catch-all (and cannot have one: the
explicit listener has no original destination to pass through to).  Headless
Services (no cluster IP) are reached by pod IP and pass through; the
destination's sidecar still takes the connection on its inbound side.

`virtual_inbound` on `0.0.0.0:inbound_capture_port`, filter chains by the
original destination port:

* each inbound port of the proxy (see `inbound`): for HTTP, the connection
  manager with the inline inbound route table that adds `x-mesh-inbound`, with
  the same TCP fallback as outbound; for TCP, a TCP proxy; both to the inbound
  cluster `inbound|port||`, i.e. `app_address:port` (127.0.0.1 by default).
  The port's BackendPolicy fault injection and local rate limit
  (`inbound_policy`) run in the HTTP chain, and its connection limit ahead of
  the TCP proxy of either chain, exactly as on the explicit inbound listener;
  the workload's AuthorizationPolicies (`authorization`) run first in each;
  its PeerAuthentication mode adds an mTLS chain ahead, for `transport_protocol:
  tls`, and STRICT refuses plaintext with a `BlackHoleCluster` chain (`mtls`);
* `inbound_capture_port` itself: `BlackHoleCluster`;
* everything else: `InboundPassthroughCluster`, to the pod IP and port the
  client asked for, from 127.0.0.6, behind the AuthorizationPolicies' network
  RBAC filters (ports matched by Envoy).

The sidecar forwards inbound traffic to 127.0.0.1 rather than to the pod IP:
a connection from the sidecar's UID to loopback is exempt from capture by the
owner match alone, whereas one to the pod IP must be marked by its source
address (Istio's 127.0.0.6) to avoid being captured again.  Most apps listen
on 0.0.0.0, which includes loopback; an app bound only to its pod IP is
reachable through the inbound passthrough (ports no Service declares) or by
setting `APP_ADDRESS` to the pod IP.

`http_inspector` runs only on destination ports that have HTTP chains, since it
waits for the client's first bytes and would stall server-first protocols on
any other port; when it gives up (Envoy's default `listener_filters_timeout`,
15 s) the connection continues without an application protocol, onto the TCP
fallback.  Envoy can enable a listener filter by port but not by address, so a
server-first TCP Service that shares its port number with an HTTP Service
waits out that timeout on its first connection bytes.

Both listeners bind 0.0.0.0, and also `::` when the proxy's IP is IPv6.

Provenance (see `provenance`): each listener names its generator, and each
filter chain made for a Service port (or an inbound port) names the objects
behind it (an inbound port's chains also the BackendPolicy whose filters they
run); the chains of the proxy's own ports and the defaults name nothing.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy
from xds_server.model.authorization import workload_authorization
from xds_server.model.peer_authentication import workload_mtls
from xds_server.translate import mtls
from xds_server.translate.authorization import (
    authorize_http,
    denied_tcp_access_logs,
    network_rbac_filters,
    policy_sources,
)
from xds_server.translate.core import WILDCARD_ADDRESSES, packed, socket_address
from xds_server.translate.filters import (
    http_connection_manager,
    http_filter,
    outbound_http_connection_manager,
    tcp_proxy_filter,
)
from xds_server.translate.inbound import inbound_ports
from xds_server.translate.inbound_policy import inbound_http_filters, inbound_network_filters
from xds_server.translate.naming import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER,
    OUTBOUND_HTTP_LISTENER_NAME,
    PASSTHROUGH_CLUSTER,
    VIRTUAL_INBOUND_LISTENER_NAME,
    VIRTUAL_OUTBOUND_LISTENER_NAME,
    cluster_name,
    inbound_cluster_name,
    inbound_listener_name,
    mesh_ports,
    outbound_route_name,
)
from xds_server.translate.provenance import (
    service_key,
    sources_metadata,
    stamp,
    stamp_generator,
    stamp_sources,
)
from xds_server.translate.routes import inbound_route_config

logger = logging.getLogger(__name__)

ORIGINAL_DST = "envoy.filters.listener.original_dst"
HTTP_INSPECTOR = "envoy.filters.listener.http_inspector"
HTTP_APPLICATION_PROTOCOLS = ("http/1.0", "http/1.1", "h2c")
"""What `http_inspector` reports for plaintext HTTP/1.x and HTTP/2 with prior knowledge."""

CAPTURED_HTTP_STAT_PREFIX = "virtual_outbound_http"
LISTEN_IPV4 = "0.0.0.0"
LISTEN_IPV6 = "::"
VIRTUAL_OUTBOUND_GENERATOR = "virtual-outbound"
VIRTUAL_INBOUND_GENERATOR = "virtual-inbound"

ChainKey = tuple[str, int]
"""A filter chain's destination: (CIDR or "" for any address, port)."""


def capture_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    """`virtual_outbound` and `virtual_inbound` for one proxy."""
    return [_virtual_outbound(mesh, proxy), _virtual_inbound(mesh, proxy)]


# -- outbound ----------------------------------------------------------------------


def _virtual_outbound(mesh: MeshSnapshot, proxy: Proxy) -> listener_pb2.Listener:
    explicit_cidr = (
        "" if proxy.outbound_address in WILDCARD_ADDRESSES else _host_cidr(proxy.outbound_address)
    )
    route_name = outbound_route_name(proxy.namespace)
    chains = [
        _chain(
            OUTBOUND_HTTP_LISTENER_NAME,
            (explicit_cidr, proxy.outbound_port),
            http_filter(outbound_http_connection_manager(route_name)),
        )
    ]
    captured_http = http_filter(_captured_http_connection_manager(route_name))
    taken: set[ChainKey] = {(explicit_cidr, proxy.outbound_port)}
    if explicit_cidr:
        chains.append(
            _blackhole_chain(VIRTUAL_OUTBOUND_LISTENER_NAME, proxy.outbound_port, "outbound")
        )
        taken.add(("", proxy.outbound_port))

    http_ports: set[int] = set()
    for service in mesh.routed_services():
        cidr = _host_cidr(service.cluster_ip)
        if not cidr:
            continue
        sources = sources_metadata((service_key(service),))
        for port in mesh_ports(service):
            key = (cidr, port.port)
            if key in taken:
                logger.debug("%s: %s:%d is matched already", proxy.node_id, cidr, port.port)
                continue
            taken.add(key)
            cluster = cluster_name(service, port)
            if port.mesh_protocol.is_http:
                chains.append(_chain(f"{cluster}|http", key, captured_http, http=True))
                stamp(chains[-1], sources)
                http_ports.add(port.port)
            chains.append(
                _chain(f"{cluster}|tcp", key, tcp_proxy_filter(cluster, cluster, "outbound"))
            )
            stamp(chains[-1], sources)

    passthrough = _chain(
        "PassthroughFilterChain",
        None,
        tcp_proxy_filter(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, "outbound"),
    )
    listener = _virtual_listener(
        VIRTUAL_OUTBOUND_LISTENER_NAME,
        proxy,
        proxy.outbound_port,
        chains,
        passthrough,
        http_ports,
        base_pb2.OUTBOUND,
    )
    stamp_generator(listener, VIRTUAL_OUTBOUND_GENERATOR, proxy.namespace)
    return listener


def _captured_http_connection_manager(route_name: str) -> hcm_pb2.HttpConnectionManager:
    """HTTP to a Service's cluster IP, routed by Host with the proxy's outbound table."""
    return outbound_http_connection_manager(
        route_name, CAPTURED_HTTP_STAT_PREFIX, absolute_urls=False
    )


# -- inbound -----------------------------------------------------------------------


def _virtual_inbound(mesh: MeshSnapshot, proxy: Proxy) -> listener_pb2.Listener:
    own_ports = {proxy.inbound_capture_port, proxy.outbound_port}
    chains = [
        _blackhole_chain(VIRTUAL_INBOUND_LISTENER_NAME, proxy.inbound_capture_port, "inbound")
    ]
    http_ports: set[int] = set()
    tls_ports: set[int] = set()
    authorization = workload_authorization(mesh, proxy.namespace, proxy.labels)
    peer = workload_mtls(mesh, proxy.namespace, proxy.labels)
    trust_domain = mtls.proxy_trust_domain(mesh, proxy)
    for inbound in inbound_ports(mesh, proxy):
        if inbound.port in own_ports:
            # The capture rules never send these ports here, and the sidecar owns them.
            logger.debug("%s: inbound port %d is the sidecar's", proxy.node_id, inbound.port)
            continue
        key = ("", inbound.port)
        cluster = inbound_cluster_name(inbound.port)
        name = inbound_listener_name(inbound.port)
        sources = (*inbound.listener_sources, *policy_sources(authorization))
        plain: list[listener_components_pb2.FilterChain] = []
        if inbound.protocol is not PortProtocol.TCP:
            hcm = http_connection_manager(
                name, "inbound", inbound_http_filters(inbound.policy, name)
            )
            hcm.route_config.CopyFrom(inbound_route_config(proxy, inbound))
            authorize_http(hcm, authorization, inbound.port)
            plain.append(_chain(f"{cluster}|http", key, http_filter(hcm), http=True))
        plain.append(
            _chain(
                f"{cluster}|tcp",
                key,
                tcp_proxy_filter(
                    name, cluster, "inbound", denied_tcp_access_logs(authorization, inbound.port)
                ),
                before=[
                    *network_rbac_filters(authorization, inbound.port, name),
                    *inbound_network_filters(inbound.policy, name),
                ],
            )
        )
        refused = _blackhole_chain(f"{cluster}|plaintext", inbound.port, "inbound")
        port_chains = mtls.captured_chains(plain, peer.mode(inbound.port), trust_domain, refused)
        for chain in port_chains:
            stamp_sources(chain, sources)
            if chain.HasField("transport_socket"):
                tls_ports.add(inbound.port)
            if chain.filter_chain_match.application_protocols:
                http_ports.add(inbound.port)
        chains.extend(port_chains)

    passthrough = _chain(
        "InboundPassthroughFilterChain",
        None,
        tcp_proxy_filter(
            INBOUND_PASSTHROUGH_CLUSTER,
            INBOUND_PASSTHROUGH_CLUSTER,
            "inbound",
            denied_tcp_access_logs(authorization, None),
        ),
        before=network_rbac_filters(authorization, None, "inbound_passthrough"),
    )
    listener = _virtual_listener(
        VIRTUAL_INBOUND_LISTENER_NAME,
        proxy,
        proxy.inbound_capture_port,
        chains,
        passthrough,
        http_ports,
        base_pb2.INBOUND,
        tls_ports,
    )
    stamp_generator(listener, VIRTUAL_INBOUND_GENERATOR, proxy.namespace)
    return listener


# -- building blocks ---------------------------------------------------------------


def _virtual_listener(
    name: str,
    proxy: Proxy,
    port: int,
    chains: list[listener_components_pb2.FilterChain],
    default_chain: listener_components_pb2.FilterChain,
    http_ports: Iterable[int],
    direction: base_pb2.TrafficDirection,
    tls_ports: Iterable[int] = (),
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(LISTEN_IPV4, port),
        listener_filters=_listener_filters(http_ports, tls_ports),
        continue_on_listener_filters_timeout=True,
        filter_chains=chains,
        default_filter_chain=default_chain,
        traffic_direction=direction,
    )
    if proxy.ip and ipaddress.ip_address(proxy.ip).version == 6:
        listener.additional_addresses.append(
            listener_pb2.AdditionalAddress(address=socket_address(LISTEN_IPV6, port))
        )
    return listener


def _listener_filters(
    http_ports: Iterable[int], tls_ports: Iterable[int] = ()
) -> list[listener_components_pb2.ListenerFilter]:
    """`original_dst`, then `tls_inspector` and `http_inspector` on the ports whose
    chains need them (a server-first protocol elsewhere is not kept waiting)."""
    filters = [
        listener_components_pb2.ListenerFilter(
            name=ORIGINAL_DST, typed_config=packed(original_dst_pb2.OriginalDst())
        )
    ]
    if tls_ports:
        filters.append(mtls.tls_inspector(mtls.only_on_ports(tls_ports)))
    if http_ports:
        filters.append(
            listener_components_pb2.ListenerFilter(
                name=HTTP_INSPECTOR,
                typed_config=packed(http_inspector_pb2.HttpInspector()),
                filter_disabled=mtls.only_on_ports(http_ports),
            )
        )
    return filters


def _chain(
    name: str,
    key: ChainKey | None,
    network_filter: listener_components_pb2.Filter,
    *,
    http: bool = False,
    before: Sequence[listener_components_pb2.Filter] = (),
) -> listener_components_pb2.FilterChain:
    """A filter chain for destination `key` (None: the default chain), HTTP-only if `http`.

    `before` runs ahead of `network_filter` (an inbound port's connection limit).
    """
    chain = listener_components_pb2.FilterChain(name=name, filters=[*before, network_filter])
    if key is None:
        return chain
    cidr, port = key
    match = chain.filter_chain_match
    match.destination_port.value = port
    if cidr:
        address, _, length = cidr.partition("/")
        match.prefix_ranges.append(
            address_pb2.CidrRange(
                address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=int(length))
            )
        )
    if http:
        match.application_protocols.extend(HTTP_APPLICATION_PROTOCOLS)
    return chain


def _blackhole_chain(
    listener_name: str, port: int, direction: str
) -> listener_components_pb2.FilterChain:
    """Connections to the listener's own port: passing them on would loop."""
    return _chain(
        f"{listener_name}_blackhole",
        ("", port),
        tcp_proxy_filter(BLACKHOLE_CLUSTER, BLACKHOLE_CLUSTER, direction),
    )


def _host_cidr(address: str | None) -> str:
    """`10.96.0.10/32` (or `/128`) for an IP address; "" for None, "None" or a name."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # "None" for headless Services
        return ""
    return f"{ip}/{ip.max_prefixlen}"
