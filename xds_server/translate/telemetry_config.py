"""A proxy's listeners and clusters under its effective Telemetry (`model.telemetry_policy`).

Translation builds every listener with the built-in text access log
(`telemetry.http_access_log`, `telemetry.tcp_access_log`); this module then
renders what the Telemetries governing the proxy ask, so no listener builder
needs to know about them, and a proxy no Telemetry governs is translated
exactly as before:

* access logging: each built-in log of an HTTP connection manager or TCP
  proxy becomes one JSON line on stdout (Envoy's stdout logger with
  `json_format`) with the selected fields, and the filter (a CEL
  expression, or "errors only": status 400 or above, or any response flag);
  or is dropped when logging is disabled.  Other logs (the authorization
  policy's denied and audit lines) are kept;
* tracing: every HTTP connection manager gets Envoy's OpenTelemetry tracer
  exporting to the cluster `tracing_otlp|HOST|PORT` (generated here, HTTP/2),
  random sampling at the percentage, and the custom tags.  The tracer
  propagates W3C `traceparent` and Envoy keeps the sampling decision in the
  request id, so the callee's sidecar continues the caller's trace;
* metrics: a listener `prometheus_stats` on 0.0.0.0:PORT routes
  `/stats/prometheus` to the cluster `prometheus_stats`, the proxy's own admin
  interface (127.0.0.1:ADMIN_PORT), as Istio's 15090 listener does; unless
  another listener of the proxy has that port (a Service port), which wins.

The two ports come from node metadata when the Telemetry does not say:
`STATS_PORT` (else 15090) and `ADMIN_PORT` (else 15000, the bootstrap
template's admin port); a value that is not a port number is ignored, with a
warning, for the default.

Every listener rewritten, and each generated listener and cluster, names the
governing Telemetries as sources (provenance), so a NACK caused by, say, a CEL
expression Envoy refuses is reported on the Telemetry.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, struct_pb2

from xds_server.model.changes import Kind
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.telemetry_policy import (
    AccessLogging,
    EffectiveTelemetry,
    Tracing,
    effective_telemetry,
)
from xds_server.model.types import Proxy
from xds_server.translate.core import packed, seconds, socket_address
from xds_server.translate.endpoints import static_load_assignment
from xds_server.translate.provenance import stamp_sources
from xds_server.translate.telemetry import (
    STDOUT_ACCESS_LOG,
    http_access_log,
    tcp_access_log,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ADMIN_PORT_KEY",
    "DEFAULT_ADMIN_PORT",
    "DEFAULT_STATS_PORT",
    "FIELD_COMMANDS",
    "PROMETHEUS_STATS_CLUSTER",
    "PROMETHEUS_STATS_LISTENER",
    "STATS_PORT_KEY",
    "json_access_log",
    "telemetry_clusters",
    "with_telemetry",
]

HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"
CEL_LOG_FILTER = "envoy.access_loggers.extension_filters.cel"
PROMETHEUS_STATS_LISTENER = "prometheus_stats"
PROMETHEUS_STATS_CLUSTER = "prometheus_stats"
PROMETHEUS_PATH = "/stats/prometheus"
STATS_PORT_KEY = "STATS_PORT"
ADMIN_PORT_KEY = "ADMIN_PORT"
DEFAULT_STATS_PORT = 15090
DEFAULT_ADMIN_PORT = 15000
ERRORS_FROM_STATUS = 400

FIELD_COMMANDS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
    "downstream_local_uri_san": "%DOWNSTREAM_LOCAL_URI_SAN%",
    "route_name": "%ROUTE_NAME%",
    "direction": "{direction}",
    "user_agent": "%REQ(USER-AGENT)%",
    "authority": "%REQ(:AUTHORITY)%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
}
"""Each access log field's Envoy command (`direction` is the listener's side)."""
HTTP_ONLY = frozenset(
    {"method", "path", "protocol", "response_code", "request_id", "route_name", "user_agent",
     "authority"}
)  # fmt: skip
"""Fields a TCP connection has no value for: left out of its lines."""


def json_access_log(
    logging_config: AccessLogging, direction: str, *, http: bool
) -> accesslog_pb2.AccessLog:
    """One JSON line per request (`http`) or connection, filtered as configured."""
    fields = struct_pb2.Struct()
    for name in logging_config.fields:
        if http or name not in HTTP_ONLY:
            fields.fields[name].string_value = FIELD_COMMANDS[name].format(direction=direction)
    stdout = stream_pb2.StdoutAccessLog()
    stdout.log_format.json_format.CopyFrom(fields)
    log = accesslog_pb2.AccessLog(name=STDOUT_ACCESS_LOG, typed_config=packed(stdout))
    if logging_config.expression is not None:
        log.filter.extension_filter.name = CEL_LOG_FILTER
        log.filter.extension_filter.typed_config.CopyFrom(
            packed(cel_pb2.ExpressionFilter(expression=logging_config.expression))
        )
    elif logging_config.errors_only:
        status = accesslog_pb2.AccessLogFilter()
        status.status_code_filter.comparison.op = accesslog_pb2.ComparisonFilter.GE
        status.status_code_filter.comparison.value.default_value = ERRORS_FROM_STATUS
        status.status_code_filter.comparison.value.runtime_key = "access_log.errors_from_status"
        flagged = accesslog_pb2.AccessLogFilter(
            response_flag_filter=accesslog_pb2.ResponseFlagFilter()
        )
        log.filter.or_filter.filters.extend([status, flagged])
    return log


def _metadata_port(proxy: Proxy, key: str, default: int) -> int:
    text = dict(proxy.metadata).get(key)
    if text is None:
        return default
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    logger.warning("%s: node metadata %s=%r is not a port; using %d", proxy.node_id, key, text,
                   default)  # fmt: skip
    return default


def stats_port(proxy: Proxy, effective: EffectiveTelemetry) -> int:
    """Where the proxy serves `/stats/prometheus`: the Telemetry's port, the node's, 15090."""
    if effective.stats_port is not None:
        return effective.stats_port
    return _metadata_port(proxy, STATS_PORT_KEY, DEFAULT_STATS_PORT)


def tracing_cluster_name(collector: str) -> str:
    host, _, port = collector.rpartition(":")
    return f"tracing_otlp|{host.strip('[]')}|{port}"


def _sources(effective: EffectiveTelemetry) -> list[str]:
    return [f"{Kind.TELEMETRY.value}/{p.namespace}/{p.name}" for p in effective.governing]


def _tracing(tracing: Tracing, proxy: Proxy) -> hcm_pb2.HttpConnectionManager.Tracing:
    service = f"{proxy.workload}.{proxy.namespace}" if proxy.workload else proxy.namespace
    tracer = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                cluster_name=tracing_cluster_name(tracing.collector)
            ),
            timeout=seconds(1.0),
        ),
        service_name=service,
    )
    config = hcm_pb2.HttpConnectionManager.Tracing(
        provider=http_tracer_pb2.Tracing.Http(
            name=OPENTELEMETRY_TRACER, typed_config=packed(tracer)
        ),
        random_sampling=percent_pb2.Percent(value=tracing.sampling_percentage),
    )
    for tag in tracing.custom_tags:
        custom = config.custom_tags.add(tag=tag.tag)
        if tag.kind == "literal":
            custom.literal.value = tag.value
        elif tag.kind == "header":
            custom.request_header.name = tag.value
            custom.request_header.default_value = tag.default_value
        else:
            custom.environment.CopyFrom(
                custom_tag_pb2.CustomTag.Environment(
                    name=tag.value, default_value=tag.default_value
                )
            )
    return config


@functools.cache
def _builtin_logs(http: bool) -> tuple[tuple[str, bytes], ...]:
    """The built-in text logs' serializations, by side (built once)."""
    build = http_access_log if http else tcp_access_log
    return tuple(
        (side, build(side).SerializeToString(deterministic=True))
        for side in ("inbound", "outbound")
    )


def _builtin_direction(log: accesslog_pb2.AccessLog, http: bool) -> str | None:
    """The side ("inbound", "outbound") of a built-in text log; None for any other log."""
    data = log.SerializeToString(deterministic=True)
    return next((side for side, builtin in _builtin_logs(http) if data == builtin), None)


def _logs(
    logs: Sequence[accesslog_pb2.AccessLog], effective: EffectiveTelemetry, *, http: bool
) -> list[accesslog_pb2.AccessLog]:
    result = []
    for log in logs:
        direction = _builtin_direction(log, http)
        if direction is None:
            result.append(log)
        elif effective.access_logging is not None:
            result.append(json_access_log(effective.access_logging, direction, http=http))
        elif not effective.access_log_disabled:
            result.append(log)
    return result


def _rewritten(
    config: any_pb2.Any, effective: EffectiveTelemetry, proxy: Proxy, name: str
) -> any_pb2.Any:
    if name == HTTP_CONNECTION_MANAGER:
        hcm = hcm_pb2.HttpConnectionManager()
        config.Unpack(hcm)
        logs = _logs(hcm.access_log, effective, http=True)
        del hcm.access_log[:]
        hcm.access_log.extend(logs)
        if effective.tracing is not None:
            hcm.tracing.CopyFrom(_tracing(effective.tracing, proxy))
        return packed(hcm)
    tcp = tcp_proxy_pb2.TcpProxy()
    config.Unpack(tcp)
    logs = _logs(tcp.access_log, effective, http=False)
    del tcp.access_log[:]
    tcp.access_log.extend(logs)
    return packed(tcp)


def _apply(listener: listener_pb2.Listener, effective: EffectiveTelemetry, proxy: Proxy) -> None:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.name in (HTTP_CONNECTION_MANAGER, TCP_PROXY):
                network_filter.typed_config.CopyFrom(
                    _rewritten(network_filter.typed_config, effective, proxy, network_filter.name)
                )


def _stats_listener(proxy: Proxy, port: int) -> listener_pb2.Listener:
    route = route_pb2.RouteConfiguration(
        name=PROMETHEUS_STATS_LISTENER,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=PROMETHEUS_STATS_LISTENER,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=PROMETHEUS_PATH),
                        route=route_components_pb2.RouteAction(cluster=PROMETHEUS_STATS_CLUSTER),
                    )
                ],
            )
        ],
    )
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=PROMETHEUS_STATS_LISTENER,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        route_config=route,
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=packed(router_pb2.Router())
            )
        ],
    )
    return listener_pb2.Listener(
        name=PROMETHEUS_STATS_LISTENER,
        address=socket_address("0.0.0.0", port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HTTP_CONNECTION_MANAGER, typed_config=packed(hcm)
                    )
                ]
            )
        ],
    )


def with_telemetry(
    mesh: MeshSnapshot, proxy: Proxy, listeners: list[listener_pb2.Listener]
) -> list[listener_pb2.Listener]:
    """`listeners` under the proxy's effective Telemetry, plus its stats listener (module
    doc); the same list, untouched, when no Telemetry governs the proxy."""
    effective = effective_telemetry(mesh, proxy.namespace, proxy.labels)
    if not effective.governing:
        return listeners
    sources = _sources(effective)
    for listener in listeners:
        _apply(listener, effective, proxy)
        stamp_sources(listener, sources)
    port = stats_port(proxy, effective)
    taken = any(listener.address.socket_address.port_value == port for listener in listeners)
    if effective.metrics and taken:
        # 0.0.0.0 would fight the listener already bound there: the mesh's traffic wins.
        logger.warning("%s: port %d is taken; no stats listener", proxy.node_id, port)
    elif effective.metrics:
        stats = _stats_listener(proxy, port)
        stamp_sources(stats, sources)
        listeners.append(stats)
    return listeners


def telemetry_clusters(mesh: MeshSnapshot, proxy: Proxy) -> list[cluster_pb2.Cluster]:
    """The clusters the proxy's Telemetry needs: its admin interface for the stats
    listener, the OTLP collector for the tracer."""
    effective = effective_telemetry(mesh, proxy.namespace, proxy.labels)
    clusters = []
    if effective.metrics:
        admin = cluster_pb2.Cluster(
            name=PROMETHEUS_STATS_CLUSTER,
            type=cluster_pb2.Cluster.STATIC,
            connect_timeout=seconds(0.25),
            load_assignment=static_load_assignment(
                PROMETHEUS_STATS_CLUSTER,
                "127.0.0.1",
                _metadata_port(proxy, ADMIN_PORT_KEY, DEFAULT_ADMIN_PORT),
            ),
        )
        clusters.append(admin)
    if effective.tracing is not None:
        clusters.append(_collector_cluster(effective.tracing.collector))
    for cluster in clusters:
        stamp_sources(cluster, _sources(effective))
    return clusters


def _collector_cluster(collector: str) -> cluster_pb2.Cluster:
    host, _, port = collector.rpartition(":")
    host = host.strip("[]")
    name = tracing_cluster_name(collector)
    try:
        ipaddress.ip_address(host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS
    cluster = cluster_pb2.Cluster(
        name=name,
        type=kind,
        connect_timeout=seconds(1.0),
        load_assignment=static_load_assignment(name, host, int(port)),
    )
    if kind == cluster_pb2.Cluster.STRICT_DNS:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].CopyFrom(packed(options))
    return cluster
