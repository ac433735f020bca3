"""Translation: the mesh model in, Envoy xDS resources out, with no I/O.

Shared resources depend on Services alone and are built once for every proxy:
`clusters_for_service` and `load_assignments_for_service`.  The outbound
route tables (`outbound_route_tables`) are shared by the proxies of one
namespace, since a short name resolves in the caller's namespace.  Per-proxy
resources add what only one sidecar has, its listeners and the inbound
clusters to its local app: `proxy_listeners` and `proxy_clusters`.  A proxy
whose pod captures traffic with iptables (`Proxy.interception == "redirect"`)
gets the virtual listeners of `capture` and the passthrough clusters they fall
back to, from the same two functions.
Every name one resource uses to reference another (an EDS cluster's CLA, a
listener's route configuration, a route's cluster) is produced by the same
functions, so the set is consistent by construction.
"""

from xds_server.translate.clusters import clusters_for_service, proxy_clusters
from xds_server.translate.endpoints import load_assignments_for_service
from xds_server.translate.listeners import proxy_listeners
from xds_server.translate.naming import (
    BLACKHOLE_CLUSTER,
    INBOUND_PASSTHROUGH_CLUSTER,
    OUTBOUND_HTTP_LISTENER_NAME,
    PASSTHROUGH_CLUSTER,
    VIRTUAL_INBOUND_LISTENER_NAME,
    VIRTUAL_OUTBOUND_LISTENER_NAME,
    cluster_name,
    inbound_cluster_name,
    mesh_ports,
    outbound_route_name,
)
from xds_server.translate.routes import (
    INBOUND_HEADER,
    OutboundRouteTables,
    outbound_route_config,
    outbound_route_tables,
)

__all__ = [
    "BLACKHOLE_CLUSTER",
    "INBOUND_HEADER",
    "INBOUND_PASSTHROUGH_CLUSTER",
    "OUTBOUND_HTTP_LISTENER_NAME",
    "PASSTHROUGH_CLUSTER",
    "VIRTUAL_INBOUND_LISTENER_NAME",
    "VIRTUAL_OUTBOUND_LISTENER_NAME",
    "OutboundRouteTables",
    "cluster_name",
    "clusters_for_service",
    "inbound_cluster_name",
    "load_assignments_for_service",
    "mesh_ports",
    "outbound_route_config",
    "outbound_route_name",
    "outbound_route_tables",
    "proxy_clusters",
    "proxy_listeners",
]
