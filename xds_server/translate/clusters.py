"""Clusters: shared outbound EDS clusters per Service port, per-proxy inbound ones.

Outbound clusters depend on the Service alone (never on a proxy), so they are
built once per Service and the serialized bytes are shared by every sidecar;
their endpoints arrive separately over EDS (see `endpoints`).  Inbound clusters
are STATIC, one per port a proxy accepts traffic on, pointing at the local app.

A proxy whose traffic iptables captures (`interception == "redirect"`) also
gets the clusters its virtual listeners fall back to, named as Istio names
them: `PassthroughCluster` and `InboundPassthroughCluster` (ORIGINAL_DST: the
connection goes on to the address it was sent to before the REDIRECT, so
traffic outside the mesh keeps working) and `BlackHoleCluster` (no endpoints,
for connections that would loop back into the sidecar).  The inbound
passthrough binds its upstream side to 127.0.0.6 (`::6` for IPv6): the capture
rules let that source through on loopback, where the sidecar's own traffic to
its pod IP would otherwise be redirected back to the inbound listener.

Defaults follow Istio's: a 10s connect timeout, round robin, and circuit
breakers opened up to the maximum, because Envoy's built-in 1024-request
limits silently shed load in a mesh where every hop passes a sidecar.
HTTP/2 and gRPC ports speak HTTP/2 (h2c) to their upstream; HTTP ports keep
HTTP/1.1, and TCP ports carry bytes.

Each cluster names its sources in its metadata (see `provenance`): an
outbound cluster its Service, an inbound one the Services (and the
EndpointSlice of a named targetPort) behind its port; the capture clusters
name their generator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import wrappers_pb2

from xds_server.model import MeshSnapshot, PortProtocol, Proxy, Service
from xds_server.model.policy import BackendPolicy
from xds_server.translate.backend_policy import apply_backend_policy, policy_name
from xds_server.translate.core import ads_config_source, packed, seconds
from xds_server.translate.endpoints import static_load_assignment
from xds_server.translate.inbound import inbound_ports
from xds_server.translate.locality import caller_clusters
from xds_server.translate.mtls import upstream_mtls_socket
from xds_server.translate.naming import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER,
    PASSTHROUGH_CLUSTER,
    cluster_name,
    inbound_cluster_name,
    mesh_ports,
)
from xds_server.translate.provenance import (
    policy_key,
    service_key,
    stamp_generator,
    stamp_sources,
)
from xds_server.translate.telemetry_config import telemetry_clusters

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
UNLIMITED = 2**32 - 1
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
INBOUND_PASSTHROUGH_SOURCE_IPV4 = "127.0.0.6"
INBOUND_PASSTHROUGH_SOURCE_IPV6 = "::6"
CAPTURE_GENERATOR = "capture"


def clusters_for_service(
    service: Service,
    policy: BackendPolicy | None = None,
    identities: Iterable[tuple[str, str]] = (),
) -> list[cluster_pb2.Cluster]:
    """One EDS cluster per meshed Service port, endpoints fetched over ADS, shaped by
    the BackendPolicy that governs the Service (`model.policy`), if any.  Over mTLS
    the destination must present the SPIFFE ID of one of `identities` (namespace,
    service account: `model.peer_authentication.mtls_identities`)."""
    identities = tuple(identities)
    clusters = []
    sources = (
        (service_key(service),) if policy is None else (service_key(service), policy_key(policy))
    )
    for port in mesh_ports(service):
        cluster = _cluster(cluster_name(service, port), port.mesh_protocol)
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        # Endpoints of sidecars that accept mTLS say so in their metadata (`endpoints`).
        cluster.transport_socket_matches.add(
            name="tlsMode-mtls", transport_socket=upstream_mtls_socket(identities)
        ).match.update({"tlsMode": "mtls"})
        if policy is not None:  # the policy's sections replace the defaults they set
            apply_backend_policy(cluster, policy.spec(), port.mesh_protocol, policy_name(policy))
        stamp_sources(cluster, sources)
        clusters.append(cluster)
    return clusters


def proxy_clusters(mesh: MeshSnapshot, proxy: Proxy) -> list[cluster_pb2.Cluster]:
    """The proxy's inbound STATIC clusters, `inbound|{port}||` -> app_address:port.

    With captured traffic, followed by the passthrough and blackhole clusters; with a
    zone, the copies of the clusters whose locality-aware endpoints it fetches.
    """
    clusters = []
    for inbound in inbound_ports(mesh, proxy):
        name = inbound_cluster_name(inbound.port)
        cluster = _cluster(name, inbound.protocol)
        cluster.type = cluster_pb2.Cluster.STATIC
        cluster.load_assignment.CopyFrom(
            static_load_assignment(name, proxy.app_address, inbound.port)
        )
        stamp_sources(cluster, inbound.sources)
        clusters.append(cluster)
    if proxy.interception == "redirect":
        clusters.extend(capture_clusters())

    # Locality-aware routing: this zone's view of some Services' endpoints (`locality`).
    clusters.extend(caller_clusters(mesh, proxy, clusters_for_service))
    # What its Telemetry needs: the admin interface (stats), the OTLP collector.
    clusters.extend(telemetry_clusters(mesh, proxy))
    return clusters


def capture_clusters() -> list[cluster_pb2.Cluster]:
    """`PassthroughCluster`, `InboundPassthroughCluster` and `BlackHoleCluster`."""
    outbound = _original_destination_cluster(PASSTHROUGH_CLUSTER)
    inbound = _original_destination_cluster(INBOUND_PASSTHROUGH_CLUSTER)
    inbound.upstream_bind_config.CopyFrom(
        address_pb2.BindConfig(
            source_address=address_pb2.SocketAddress(
                address=INBOUND_PASSTHROUGH_SOURCE_IPV4, port_value=0
            ),
            extra_source_addresses=[
                address_pb2.ExtraSourceAddress(
                    address=address_pb2.SocketAddress(
                        address=INBOUND_PASSTHROUGH_SOURCE_IPV6, port_value=0
                    )
                )
            ],
        )
    )
    blackhole = cluster_pb2.Cluster(
        name=BLACKHOLE_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=seconds(CONNECT_TIMEOUT_SECONDS),
    )
    clusters = [outbound, inbound, blackhole]
    for cluster in clusters:
        stamp_generator(cluster, CAPTURE_GENERATOR)
    return clusters


def _original_destination_cluster(name: str) -> cluster_pb2.Cluster:
    """Each connection to the address it had before the REDIRECT (never an HTTP header)."""
    cluster = _cluster(name, PortProtocol.TCP)
    cluster.type = cluster_pb2.Cluster.ORIGINAL_DST
    cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    cluster.original_dst_lb_config.SetInParent()  # use_http_header stays false
    return cluster


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
