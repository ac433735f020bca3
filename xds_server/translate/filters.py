"""Network filters shared by every listener: the HTTP connection manager and the TCP proxy.

The explicit listeners (`listeners`) and the virtual listeners for captured
traffic (`capture`) terminate HTTP and proxy TCP the same way, so the one
definition of each filter lives here and both kinds of listener serialize
identical filters for identical ports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2

from xds_server.translate.core import ads_config_source, packed
from xds_server.translate.naming import OUTBOUND_HTTP_LISTENER_NAME
from xds_server.translate.telemetry import http_access_log, tcp_access_log

logger = logging.getLogger(__name__)

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"


def http_connection_manager(
    stat_prefix: str, direction: str, filters: Sequence[hcm_pb2.HttpFilter] = ()
) -> hcm_pb2.HttpConnectionManager:
    """HTTP/1.1 and h2c on one port (codec AUTO), paths normalized, websockets allowed.

    The sidecar is not the edge: it neither trusts nor rewrites the client
    address (`use_remote_address` false) and appends to X-Forwarded-For as usual.
    The caller sets the route configuration (RDS or inline).  `filters` run
    before the router, in order (an inbound port's policy filters).
    """
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        http_filters=[
            *filters,
            hcm_pb2.HttpFilter(name=ROUTER, typed_config=packed(router_pb2.Router())),
        ],
        access_log=[http_access_log(direction)],
        use_remote_address=wrappers_pb2.BoolValue(value=False),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
    )


def outbound_http_connection_manager(
    route_name: str, stat_prefix: str = OUTBOUND_HTTP_LISTENER_NAME, *, absolute_urls: bool = True
) -> hcm_pb2.HttpConnectionManager:
    """Outbound HTTP routed by the RouteConfiguration `route_name`, fetched over RDS.

    That is the outbound table of the proxy's namespace (`naming.outbound_route_name`).

    `absolute_urls` lets an app use the sidecar as an HTTP proxy
    (`GET http://backend:8080/ HTTP/1.1`), as it does with the explicit listener.
    """
    hcm = http_connection_manager(stat_prefix, "outbound")
    hcm.rds.config_source.CopyFrom(ads_config_source())
    hcm.rds.route_config_name = route_name
    if absolute_urls:
        hcm.http_protocol_options.CopyFrom(
            protocol_pb2.Http1ProtocolOptions(allow_absolute_url=wrappers_pb2.BoolValue(value=True))
        )
    return hcm


def http_filter(hcm: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    """`hcm` as a listener's network filter."""
    return listener_components_pb2.Filter(name=HTTP_CONNECTION_MANAGER, typed_config=packed(hcm))


def tcp_proxy_filter(
    stat_prefix: str,
    cluster: str,
    direction: str,
    more_logs: Sequence[accesslog_pb2.AccessLog] = (),
) -> listener_components_pb2.Filter:
    """Bytes to `cluster`, one stdout log line per connection (and `more_logs`: the
    denied-connection log of an authorized inbound chain)."""
    tcp_proxy = tcp_proxy_pb2.TcpProxy(
        stat_prefix=stat_prefix,
        cluster=cluster,
        access_log=[tcp_access_log(direction), *more_logs],
    )
    return listener_components_pb2.Filter(name=TCP_PROXY, typed_config=packed(tcp_proxy))
