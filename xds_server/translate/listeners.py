"""Listeners: where a sidecar accepts traffic from its app and from the mesh.

Each proxy gets:

* `outbound_http` on `outbound_address:outbound_port`: the app's HTTP proxy
  (plain requests with a Host header, absolute-URL proxy requests, or h2c),
  routed by the shared `outbound` RouteConfiguration fetched over RDS;
* `outbound_tcp_{port}` on `outbound_address:{port}` for every TCP Service
  port in the mesh, proxying to that port's cluster;
* `inbound_{port}` on `ip:{port}` for every port of the Services selecting
  the proxy (see `inbound` for which ports those are), to the local app.

Two listeners may not bind overlapping addresses (Envoy rejects the update),
nor may a listener take a socket the local app holds, so addresses are
claimed in order and a later listener that would clash is left out: the
outbound HTTP listener first, then the inbound listeners together with the
app's ports behind them, then the outbound TCP listeners.  When two Services
want one TCP port, the first by (namespace, name) gets it and the other has
no outbound listener (TCP carries no host name to tell the two apart).
"""

from __future__ import annotations

import logging

from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy
from xds_server.translate.core import (
    addresses_overlap,
    ads_config_source,
    packed,
    socket_address,
)
from xds_server.translate.inbound import inbound_ports
from xds_server.translate.naming import (
    OUTBOUND_HTTP_LISTENER_NAME,
    OUTBOUND_ROUTE_NAME,
    cluster_name,
    inbound_cluster_name,
    inbound_listener_name,
    mesh_ports,
    outbound_tcp_listener_name,
)
from xds_server.translate.routes import inbound_route_config
from xds_server.translate.telemetry import http_access_log, tcp_access_log

logger = logging.getLogger(__name__)

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"

_TRAFFIC_DIRECTIONS = {"inbound": base_pb2.INBOUND, "outbound": base_pb2.OUTBOUND}

Binding = tuple[str, int]


def proxy_listeners(mesh: MeshSnapshot, proxy: Proxy) -> list[listener_pb2.Listener]:
    """Every listener of one proxy: outbound HTTP, inbound, then outbound TCP."""
    listeners = [_outbound_http_listener(proxy)]
    bindings: list[Binding] = [(proxy.outbound_address, proxy.outbound_port)]
    if proxy.ip:
        for inbound in inbound_ports(mesh, proxy):
            listeners.append(_inbound_listener(proxy, proxy.ip, inbound.port, inbound.protocol))
            bindings.append((proxy.ip, inbound.port))
            bindings.append((proxy.app_address, inbound.port))
    listeners.extend(_outbound_tcp_listeners(mesh, proxy, bindings))
    return listeners


def _outbound_tcp_listeners(
    mesh: MeshSnapshot, proxy: Proxy, bindings: list[Binding]
) -> list[listener_pb2.Listener]:
    by_port: dict[int, listener_pb2.Listener] = {}
    for service in mesh.sorted_services():
        for port in mesh_ports(service):
            if port.mesh_protocol is not PortProtocol.TCP or port.port in by_port:
                continue
            if _clashes((proxy.outbound_address, port.port), bindings):
                logger.debug("%s: no outbound TCP listener on %d", proxy.node_id, port.port)
                continue
            by_port[port.port] = _tcp_listener(
                name=outbound_tcp_listener_name(port.port),
                address=proxy.outbound_address,
                port=port.port,
                cluster=cluster_name(service, port),
                direction="outbound",
            )
    return [by_port[number] for number in sorted(by_port)]


def _clashes(binding: Binding, bindings: list[Binding]) -> bool:
    address, port = binding
    return any(
        port == taken_port and addresses_overlap(address, taken) for taken, taken_port in bindings
    )


def _outbound_http_listener(proxy: Proxy) -> listener_pb2.Listener:
    hcm = _http_connection_manager(OUTBOUND_HTTP_LISTENER_NAME, "outbound")
    hcm.rds.config_source.CopyFrom(ads_config_source())
    hcm.rds.route_config_name = OUTBOUND_ROUTE_NAME
    hcm.http_protocol_options.CopyFrom(
        protocol_pb2.Http1ProtocolOptions(allow_absolute_url=wrappers_pb2.BoolValue(value=True))
    )
    return _listener(
        OUTBOUND_HTTP_LISTENER_NAME,
        proxy.outbound_address,
        proxy.outbound_port,
        listener_components_pb2.Filter(name=HTTP_CONNECTION_MANAGER, typed_config=packed(hcm)),
        base_pb2.OUTBOUND,
    )


def _inbound_listener(
    proxy: Proxy, ip: str, port: int, protocol: PortProtocol
) -> listener_pb2.Listener:
    name = inbound_listener_name(port)
    if protocol is PortProtocol.TCP:
        return _tcp_listener(name, ip, port, inbound_cluster_name(port), "inbound")
    hcm = _http_connection_manager(name, "inbound")
    hcm.route_config.CopyFrom(inbound_route_config(proxy, port, protocol))
    return _listener(
        name,
        ip,
        port,
        listener_components_pb2.Filter(name=HTTP_CONNECTION_MANAGER, typed_config=packed(hcm)),
        base_pb2.INBOUND,
    )


def _http_connection_manager(stat_prefix: str, direction: str) -> hcm_pb2.HttpConnectionManager:
    """HTTP/1.1 and h2c on one port (codec AUTO), paths normalized, websockets allowed.

    The sidecar is not the edge: it neither trusts nor rewrites the client
    address (`use_remote_address` false) and appends to X-Forwarded-For as usual.
    """
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=[hcm_pb2.HttpFilter(name=ROUTER, typed_config=packed(router_pb2.Router()))],
        access_log=[http_access_log(direction)],
        use_remote_address=wrappers_pb2.BoolValue(value=False),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )


def _tcp_listener(
    name: str, address: str, port: int, cluster: str, direction: str
) -> listener_pb2.Listener:
    tcp_proxy = tcp_proxy_pb2.TcpProxy(
        stat_prefix=name, cluster=cluster, access_log=[tcp_access_log(direction)]
    )
    return _listener(
        name,
        address,
        port,
        listener_components_pb2.Filter(name=TCP_PROXY, typed_config=packed(tcp_proxy)),
        _TRAFFIC_DIRECTIONS[direction],
    )


def _listener(
    name: str,
    address: str,
    port: int,
    network_filter: listener_components_pb2.Filter,
    direction: base_pb2.TrafficDirection,
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[network_filter])],
        traffic_direction=direction,
    )
