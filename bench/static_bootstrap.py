"""The baseline of the start-up benchmark: a proxy's xDS snapshot as a static bootstrap.

To compare like with like, the static file holds exactly what the control
plane serves that proxy, taken from its published snapshot: every cluster,
with each EDS cluster turned STATIC and its ClusterLoadAssignment (the very
proto EDS would deliver) inlined as `load_assignment`; every listener, with
an RDS reference replaced by the RouteConfiguration RDS would deliver.  The
rest of the bootstrap (node, admin, runtime, the control plane cluster, left
unused) is the same rendered template the xDS variant starts from, minus
`dynamic_resources`.

Two encodings: JSON, what people write (Envoy parses it into protos at
start-up), and binary proto (`.pb`), the cheapest form Envoy can load and the
same encoding xDS carries, for the strictest baseline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401 - for Any in the template
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from xds_server.cache import Snapshot
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, unpack

logger = logging.getLogger(__name__)

FORMATS = ("json", "pb")

M = TypeVar("M")


def static_resources(
    snapshot: Snapshot,
) -> tuple[list[cluster_pb2.Cluster], list[listener_pb2.Listener]]:
    """The snapshot's clusters and listeners with EDS and RDS inlined."""
    assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {
        name: _as(endpoint_pb2.ClusterLoadAssignment, unpack(r))
        for name, r in snapshot.get(ENDPOINT).items()
    }
    routes: dict[str, route_pb2.RouteConfiguration] = {
        name: _as(route_pb2.RouteConfiguration, unpack(r))
        for name, r in snapshot.get(ROUTE).items()
    }
    clusters = []
    for resource in snapshot.get(CLUSTER).values():
        cluster = _as(cluster_pb2.Cluster, unpack(resource))
        # Auto-mTLS reads its certificates over SDS from the control plane, which a
        # static bootstrap has none of (and Envoy crashes on a static cluster that
        # asks ADS for a Secret); the baseline's endpoints are plaintext anyway.
        cluster.ClearField("transport_socket_matches")
        if cluster.type == cluster_pb2.Cluster.EDS:
            name = cluster.eds_cluster_config.service_name or cluster.name
            cluster.type = cluster_pb2.Cluster.STATIC
            cluster.ClearField("eds_cluster_config")
            cluster.load_assignment.CopyFrom(assignments[name])
        clusters.append(cluster)
    listeners = [
        _inline_routes(_as(listener_pb2.Listener, unpack(r)), routes)
        for r in snapshot.get(LISTENER).values()
    ]
    return clusters, listeners


def write_static_bootstrap(
    path: Path,
    base: Mapping[str, Any],
    clusters: list[cluster_pb2.Cluster],
    listeners: list[listener_pb2.Listener],
) -> Path:
    """Write `base` (a bootstrap dict) plus the resources; the suffix picks the encoding."""
    template = {key: value for key, value in base.items() if key != "dynamic_resources"}
    bootstrap = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(template, bootstrap)
    bootstrap.static_resources.clusters.extend(clusters)
    bootstrap.static_resources.listeners.extend(listeners)
    if path.suffix == ".pb":
        path.write_bytes(bootstrap.SerializeToString())
    elif path.suffix == ".json":
        as_dict = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
        path.write_text(json.dumps(as_dict), encoding="utf-8")
    else:
        raise ValueError(f"{path}: write a .json or a .pb static bootstrap")
    return path


def _inline_routes(
    listener: listener_pb2.Listener, routes: Mapping[str, route_pb2.RouteConfiguration]
) -> listener_pb2.Listener:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for network_filter in chain.filters:
            if not network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(hcm)
            if hcm.HasField("rds"):
                route_config = routes[hcm.rds.route_config_name]
                hcm.ClearField("rds")
                hcm.route_config.CopyFrom(route_config)
                network_filter.typed_config.Pack(hcm)
    return listener


def _as(kind: type[M], message: object) -> M:
    if not isinstance(message, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(message).__name__}")
    return message
