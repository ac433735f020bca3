"""Clusters: shared outbound EDS clusters per Service port, per-proxy inbound ones.

Outbound clusters depend on the Service alone (never on a proxy), so they are
built once per Service and the serialized bytes are shared by every sidecar;
their endpoints arrive separately over EDS (see `endpoints`).  Inbound clusters
are STATIC, one per port a proxy accepts traffic on, pointing at the local app.

Defaults follow Istio's: a 10s connect timeout, round robin, and circuit
breakers opened up to the maximum, because Envoy's built-in 1024-request
limits silently shed load in a mesh where every hop passes a sidecar.
HTTP/2 and gRPC ports speak HTTP/2 (h2c) to their upstream; HTTP ports keep
HTTP/1.1, and TCP ports carry bytes.
"""

from __future__ import annotations

import logging

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import wrappers_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service
from xds_server.translate.core import ads_config_source, packed, seconds
from xds_server.translate.endpoints import static_load_assignment
from xds_server.translate.inbound import inbound_ports
from xds_server.translate.naming import cluster_name, inbound_cluster_name, mesh_ports

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
UNLIMITED = 2**32 - 1
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def clusters_for_service(service: Service) -> list[cluster_pb2.Cluster]:
    """One EDS cluster per meshed Service port, endpoints fetched over ADS."""
    clusters = []
    for port in mesh_ports(service):
        cluster = _cluster(cluster_name(service, port), port.mesh_protocol)
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        clusters.append(cluster)
    return clusters


def proxy_clusters(mesh: MeshSnapshot, proxy: Proxy) -> list[cluster_pb2.Cluster]:
    """The proxy's inbound STATIC clusters, `inbound|{port}||` -> app_address:port."""
    clusters = []
    for inbound in inbound_ports(mesh, proxy):
        name = inbound_cluster_name(inbound.port)
        cluster = _cluster(name, inbound.protocol)
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(
            static_load_assignment(name, proxy.app_address, inbound.port)
        )
        clusters.append(cluster)
    return clusters


def _cluster(name: str, protocol: PortProtocol) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=seconds(CONNECT_TIMEOUT_SECONDS),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        circuit_breakers=_open_circuit_breakers(),
    )
    if protocol.is_http2:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(
            packed(_http2_protocol_options())
        )
    return cluster


def _open_circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    unlimited = wrappers_pb2.UInt32Value(value=UNLIMITED)
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                priority=base_pb2.DEFAULT,
                max_connections=unlimited,
                max_pending_requests=unlimited,
                max_requests=unlimited,
                max_retries=unlimited,
                track_remaining=True,
            )
        ]
    )


def _http2_protocol_options() -> http_protocol_options_pb2.HttpProtocolOptions:
    """Prior-knowledge HTTP/2 (h2c) to the upstream: what gRPC servers expect."""
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.CopyFrom(
        protocol_pb2.Http2ProtocolOptions()
    )
    return options
