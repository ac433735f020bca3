"""Listeners: where a sidecar accepts traffic from its app and from the mesh.

Each proxy gets:

* `outbound_http` on `outbound_address:outbound_port`: the app's HTTP proxy
  (plain requests with a Host header, absolute-URL proxy requests, or h2c),
  routed by its namespace's `outbound|{namespace}` RouteConfiguration over RDS;
* `outbound_tcp_{port}` on `outbound_address:{port}` for every TCP Service
  port in the mesh, proxying to that port's cluster;
* `inbound_{port}` on `ip:{port}` for every port of the Services selecting
  the proxy (see `inbound` for which ports those are), to the local app,
  through the port's BackendPolicy fault injection and local rate limit
  (`inbound_policy`), if it has any.

That is the "none" interception mode, where nothing captures traffic.  A
proxy whose pod REDIRECTs its TCP with iptables gets the two virtual listeners
of `capture` instead (and none of these: their addresses would clash).

Two listeners may not bind overlapping addresses (Envoy rejects the update),
nor may a listener take a socket the local app holds, so addresses are
claimed in order and a later listener that would clash is left out: the
outbound HTTP listener first, then the inbound listeners together with the
app's ports behind them, then the outbound TCP listeners.  When two Services
want one TCP port, the first by (namespace, name) gets it and the other has
no outbound listener (TCP carries no host name to tell the two apart).

Each listener names its sources in its metadata (see `provenance`): an
inbound listener (and its inline route table) the objects behind its port,
an outbound TCP listener the Service owning the port; the outbound HTTP
listener, made for the proxy's namespace, names its generator.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service, ServicePort
from xds_server.model.authorization import WorkloadAuthorization, workload_authorization
from xds_server.model.peer_authentication import workload_mtls
from xds_server.translate.authorization import (
    authorize_http,
    denied_tcp_access_logs,
    network_rbac_filters,
    policy_sources,
)
from xds_server.translate.capture import capture_listeners
from xds_server.translate.core import addresses_overlap, socket_address
from xds_server.translate.filters import (
    http_connection_manager,
    http_filter,
    outbound_http_connection_manager,
    tcp_proxy_filter,
)
from xds_server.translate.inbound import InboundPort, inbound_ports
from xds_server.translate.inbound_policy import inbound_http_filters, inbound_network_filters
from xds_server.translate.mtls import proxy_trust_domain, secure_inbound
from xds_server.translate.naming import (
    OUTBOUND_HTTP_LISTENER_NAME,
    cluster_name,
    inbound_cluster_name,
    inbound_listener_name,
    mesh_ports,
    outbound_route_name,
    outbound_tcp_listener_name,
)
from xds_server.translate.provenance import service_key, stamp_generator, stamp_sources
from xds_server.translate.routes import inbound_route_config
from xds_server.translate.telemetry_config import with_telemetry

logger = logging.getLogger(__name__)

_TRAFFIC_DIRECTIONS = {"inbound": base_pb2.INBOUND, "outbound": base_pb2.OUTBOUND}

Binding = tuple[str, int]

OUTBOUND_HTTP_GENERATOR = "outbound-http"


def proxy_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    """Every listener of one proxy: outbound HTTP, inbound, then outbound TCP.

    A proxy whose traffic iptables redirects (`interception == "redirect"`) gets
    the virtual listeners of `capture` instead.  The Telemetries governing the
    proxy then set its access logs, tracing and stats listener (`telemetry_config`).
    """
    return with_telemetry(mesh, proxy, _proxy_listeners(mesh, proxy))


def _proxy_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    if proxy.interception == "redirect":
        return capture_listeners(mesh, proxy)
    listeners = [_outbound_http_listener(proxy)]
    bindings: list[Binding] = [(proxy.outbound_address, proxy.outbound_port)]
    if proxy.ip:
        authorization = workload_authorization(mesh, proxy.namespace, proxy.labels)
        peer = workload_mtls(mesh, proxy.namespace, proxy.labels)
        trust_domain = proxy_trust_domain(mesh, proxy)
        for inbound in inbound_ports(mesh, proxy):
            listener = _inbound_listener(proxy, proxy.ip, inbound, authorization)
            listeners.append(secure_inbound(listener, peer.mode(inbound.port), trust_domain))
            bindings.append((proxy.ip, inbound.port))
            bindings.append((proxy.app_address, inbound.port))
    listeners.extend(_outbound_tcp_listeners(mesh, proxy, bindings))
    return listeners


def _outbound_tcp_listeners(
    mesh: MeshSnapshot, proxy: Proxy, bindings: list[Binding]
) -> list[listener_pb2.Listener]:
    listeners: list[listener_pb2.Listener] = []
    for number, (service, port) in tcp_port_owners(mesh):
        if _clashes((proxy.outbound_address, number), bindings):
            logger.debug("%s: no outbound TCP listener on %d", proxy.node_id, number)
            continue
        listener = _tcp_listener(
            name=outbound_tcp_listener_name(number),
            address=proxy.outbound_address,
            port=number,
            cluster=cluster_name(service, port),
            direction="outbound",
        )
        stamp_sources(listener, (service_key(service),))
        listeners.append(listener)
    return listeners


def tcp_port_owners(mesh: MeshSnapshot) -> list[tuple[int, tuple[Service, ServicePort]]]:
    """Which service owns each outbound TCP port, derived once per mesh snapshot."""
    return mesh.derive("tcp_port_owners", lambda: _tcp_port_owners(mesh))


def _tcp_port_owners(mesh: MeshSnapshot) -> list[tuple[int, tuple[Service, ServicePort]]]:
    """Which service owns each outbound TCP port: the first by (namespace, name).

    The same for every proxy, so computed once per mesh snapshot (at 10,000
    services, scanning per proxy cost ~18 ms each).
    """
    owners: dict[int, tuple[Service, ServicePort]] = {}
    for service in mesh.sorted_services():
        for port in mesh_ports(service):
            if port.mesh_protocol is PortProtocol.TCP and port.port not in owners:
                owners[port.port] = (service, port)
    return sorted(owners.items(), key=lambda item: item[0])


def _clashes(binding: Binding, bindings: list[Binding]) -> bool:
    address, port = binding
    return any(
        port == taken_port and addresses_overlap(address, taken) for taken, taken_port in bindings
    )


def _outbound_http_listener(proxy: Proxy) -> listener_pb2.Listener:
    listener = _listener(
        OUTBOUND_HTTP_LISTENER_NAME,
        proxy.outbound_address,
        proxy.outbound_port,
        http_filter(outbound_http_connection_manager(outbound_route_name(proxy.namespace))),
        base_pb2.OUTBOUND,
    )
    stamp_generator(listener, OUTBOUND_HTTP_GENERATOR, proxy.namespace)
    return listener


def _inbound_listener(
    proxy: Proxy, ip: str, inbound: InboundPort, authorization: WorkloadAuthorization
) -> listener_pb2.Listener:
    port = inbound.port
    name = inbound_listener_name(port)
    if inbound.protocol is PortProtocol.TCP:
        listener = _tcp_listener(
            name,
            ip,
            port,
            inbound_cluster_name(port),
            "inbound",
            before=[
                *network_rbac_filters(authorization, port, name),
                *inbound_network_filters(inbound.policy, name),
            ],
            more_logs=denied_tcp_access_logs(authorization, port),
        )
    else:
        hcm = http_connection_manager(name, "inbound", inbound_http_filters(inbound.policy, name))
        hcm.route_config.CopyFrom(inbound_route_config(proxy, inbound))
        authorize_http(hcm, authorization, port)
        listener = _listener(name, ip, port, http_filter(hcm), base_pb2.INBOUND)
    stamp_sources(listener, (*inbound.listener_sources, *policy_sources(authorization)))
    return listener


def _tcp_listener(
    name: str,
    address: str,
    port: int,
    cluster: str,
    direction: str,
    *,
    before: Sequence[listener_components_pb2.Filter] = (),
    more_logs: Sequence[accesslog_pb2.AccessLog] = (),
) -> listener_pb2.Listener:
    return _listener(
        name,
        address,
        port,
        tcp_proxy_filter(name, cluster, direction, more_logs),
        _TRAFFIC_DIRECTIONS[direction],
        before=before,
    )


def _listener(
    name: str,
    address: str,
    port: int,
    network_filter: listener_components_pb2.Filter,
    direction: base_pb2.TrafficDirection,
    *,
    before: Sequence[listener_components_pb2.Filter] = (),
) -> listener_pb2.Listener:
    """One filter chain: `before` (an inbound port's connection limit), then `network_filter`."""
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[*before, network_filter])],
        traffic_direction=direction,
    )
