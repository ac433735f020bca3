"""Spec: the resources of one proxy reference only each other, and never churn.

Every name one resource uses to find another must be in the output (an EDS
cluster's CLA, a listener's RouteConfiguration, a route's or TCP proxy's
cluster), and the same mesh must produce the same bytes whatever order its
objects arrived in, since versions are content hashes.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf.message import Message
from translate_builders import (
    hcm_of,
    mesh,
    representative_mesh,
    representative_objects,
    representative_sidecar,
    tcp_proxy_of,
)

from xds_server.model import MeshSnapshot, Proxy
from xds_server.resources import make_resource
from xds_server.translate import (
    clusters_for_service,
    load_assignments_for_service,
    outbound_route_config,
    proxy_clusters,
    proxy_listeners,
)

HCM = "envoy.filters.network.http_connection_manager"


def everything(snapshot: MeshSnapshot, sidecar: Proxy) -> dict[str, list[Message]]:
    services = list(snapshot.sorted_services())
    return {
        "clusters": [
            *(c for s in services for c in clusters_for_service(s)),
            *proxy_clusters(snapshot, sidecar),
        ],
        "endpoints": [
            cla for s in services for cla in load_assignments_for_service(s, snapshot.slices_of(s))
        ],
        "listeners": list(proxy_listeners(snapshot, sidecar)),
        "routes": [outbound_route_config(snapshot, sidecar.namespace)],
    }


def test_every_reference_resolves() -> None:
    out = everything(representative_mesh(), representative_sidecar())
    clusters = {c.name: c for c in out["clusters"]}
    assignments = {cla.cluster_name for cla in out["endpoints"]}
    routes = {rc.name: rc for rc in out["routes"]}
    assert len(clusters) == len(out["clusters"])
    assert len(assignments) == len(out["endpoints"])

    eds = {name for name, c in clusters.items() if c.type == cluster_pb2.Cluster.EDS}
    assert eds == assignments, "every EDS cluster has exactly one CLA, and no CLA is orphaned"

    route_configs = list(routes.values())
    for listener in out["listeners"]:
        if listener.filter_chains[0].filters[0].name == HCM:
            hcm = hcm_of(listener)
            if hcm.HasField("rds"):
                assert hcm.rds.route_config_name in routes
            else:
                route_configs.append(hcm.route_config)
        else:
            assert tcp_proxy_of(listener).cluster in clusters
    for config in route_configs:
        for vhost in config.virtual_hosts:
            for route in vhost.routes:
                assert route.route.cluster in clusters


def test_the_cache_sees_no_dangling_references() -> None:
    """`resources.references_of` is what the snapshot cache checks before serving."""
    out = everything(representative_mesh(), representative_sidecar())
    resources = [make_resource(m) for kind in out.values() for m in kind]
    present = {(r.type_url, r.name) for r in resources}
    for resource in resources:
        assert resource.refs <= present, resource.name


def serialized(snapshot: MeshSnapshot, sidecar: Proxy) -> dict[str, list[bytes]]:
    return {
        kind: [m.SerializeToString(deterministic=True) for m in messages]
        for kind, messages in everything(snapshot, sidecar).items()
    }


def test_the_same_mesh_in_any_arrival_order_gives_byte_identical_resources() -> None:
    objects = representative_objects()
    forwards = serialized(mesh(*objects), representative_sidecar())
    backwards = serialized(mesh(*reversed(objects)), representative_sidecar())
    shuffled = serialized(mesh(*objects[1::2], *objects[::2]), representative_sidecar())
    assert forwards == backwards == shuffled


def test_translating_twice_gives_the_same_versions() -> None:
    first = everything(representative_mesh(), representative_sidecar())
    second = everything(representative_mesh(), representative_sidecar())
    for kind in first:
        assert [make_resource(m).version for m in first[kind]] == [
            make_resource(m).version for m in second[kind]
        ]
