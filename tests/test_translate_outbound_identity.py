"""Spec: a client sidecar calling a destination over mTLS checks who answers.

The outbound cluster's mTLS transport socket accepts only the SPIFFE IDs of the
service accounts of the Pods behind the Service's mTLS endpoints (Istio's SAN
check), in any trust domain the roots vouch for; a Service none of whose endpoints
take mTLS keeps the `spiffe://` prefix (the socket is never chosen).  A Pod moving to
another service account re-translates the cluster, through the pipeline's reads.
Zone-aware (locality) load assignments carry the same `tlsMode` endpoint metadata
as the flat ones, and the zoned callers' copies of the cluster check the same IDs.
"""

from __future__ import annotations

import re
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format
from translate_builders import endpoint, endpoint_slice, http, mesh, service, upserts

from xds_server.cache import SnapshotCache
from xds_server.model import Proxy, Workload
from xds_server.model.peer_authentication import TLS_MODE_LABEL, mtls_endpoints, mtls_identities
from xds_server.model.policy import BackendPolicy
from xds_server.model.types import labels_of
from xds_server.pipeline import SnapshotBuilder
from xds_server.policy_api import backend_policy_pb2
from xds_server.resources import CLUSTER, ENDPOINT, unpack
from xds_server.translate import clusters_for_service
from xds_server.translate.clusters import proxy_clusters
from xds_server.translate.endpoints import TRANSPORT_SOCKET_MATCH
from xds_server.translate.locality import locality_load_assignments, variant_name
from xds_server.translate.mtls import spiffe_id_pattern

BACKEND = service("backend", http(8080), namespace="shop")
CLUSTER_NAME = "outbound|8080||backend.shop.svc.cluster.local"
SLICE = endpoint_slice(
    BACKEND,
    endpoint("127.0.71.1", zone="a", pod="backend-1"),
    endpoint("127.0.71.2", zone="b", pod="backend-2"),
    endpoint("127.0.71.3", zone="b", pod="legacy-1"),  # no sidecar: plaintext
)


def pod(name: str, account: str, ip: str, *, sidecar: bool = True) -> Workload:
    labels = {"app": "backend", **({TLS_MODE_LABEL: "mtls"} if sidecar else {})}
    return Workload("shop", name, labels_of(labels), service_account=account, ip=ip)


PODS = (
    pod("backend-1", "backend", "127.0.71.1"),
    pod("backend-2", "backend-canary", "127.0.71.2"),
    pod("legacy-1", "legacy", "127.0.71.3", sidecar=False),
)


def locality_policy() -> BackendPolicy:
    body = {
        "targetRefs": [{"kind": "Service", "name": "backend"}],
        "loadBalancer": {"locality": {"enabled": True}},
    }
    message = json_format.ParseDict(body, backend_policy_pb2.BackendPolicySpec())
    return BackendPolicy.of("shop", "local", message)


def accepted_sans(cluster: cluster_pb2.Cluster) -> list[Any]:
    """The URI SAN matchers of the cluster's mTLS socket, as (kind, value)."""
    (match,) = cluster.transport_socket_matches
    assert dict(match.match) == {"tlsMode": "mtls"}
    context = tls_pb2.UpstreamTlsContext()
    assert match.transport_socket.typed_config.Unpack(context)
    validation = context.common_tls_context.combined_validation_context.default_validation_context
    found = []
    for san in validation.match_typed_subject_alt_names:
        kind = san.matcher.WhichOneof("match_pattern")
        value = san.matcher.safe_regex.regex if kind == "safe_regex" else getattr(san.matcher, kind)
        found.append((kind, value))
    return found


def accepts(cluster: cluster_pb2.Cluster, spiffe_id: str) -> bool:
    # RE2 and Python agree on these anchored patterns (no backreferences, no lookaround).
    return any(
        re.fullmatch(value, spiffe_id) if kind == "safe_regex" else spiffe_id.startswith(value)
        for kind, value in accepted_sans(cluster)
    )


def test_the_destination_must_prove_a_service_account_of_its_mtls_pods() -> None:
    snapshot = mesh(BACKEND, SLICE, *PODS)
    identities = mtls_identities(snapshot, (SLICE,))
    assert identities == {("shop", "backend"), ("shop", "backend-canary")}  # not legacy
    (cluster,) = clusters_for_service(BACKEND, None, identities)
    assert accepted_sans(cluster) == [
        ("safe_regex", spiffe_id_pattern("shop", "backend")),
        ("safe_regex", spiffe_id_pattern("shop", "backend-canary")),
    ]
    assert accepts(cluster, "spiffe://cluster.local/ns/shop/sa/backend")
    assert accepts(cluster, "spiffe://example.org/ns/shop/sa/backend-canary")
    for other in (
        "spiffe://cluster.local/ns/shop/sa/legacy",
        "spiffe://cluster.local/ns/shop/sa/backendx",
        "spiffe://cluster.local/ns/default/sa/backend",
        "spiffe://cluster.local/ns/shop/sa/backend/extra",
        "spiffe://a/b/ns/shop/sa/backend",
        "http://cluster.local/ns/shop/sa/backend",
    ):
        assert not accepts(cluster, other), other


def test_a_service_without_mtls_endpoints_keeps_the_prefix_check() -> None:
    (cluster,) = clusters_for_service(BACKEND)
    assert accepted_sans(cluster) == [("prefix", "spiffe://")]


def test_names_are_matched_literally() -> None:
    assert spiffe_id_pattern("a.b", "c-d") == r"^spiffe://[^/]+/ns/a\.b/sa/c\-d$"
    assert not re.fullmatch(spiffe_id_pattern("a.b", "c"), "spiffe://td/ns/aXb/sa/c")


def builder_with(*objects: Any, proxies: tuple[Proxy, ...]) -> tuple[SnapshotCache, Any]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(upserts(*objects))
    for proxy in proxies:
        builder.add_proxy(proxy)
    builder.mark_synced()
    return cache, builder


def held_cluster(cache: SnapshotCache, node_id: str) -> cluster_pb2.Cluster:
    snapshot = cache.get_snapshot(node_id)
    assert snapshot is not None
    cluster = unpack(snapshot.get(CLUSTER)[CLUSTER_NAME])
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster


CLIENT = Proxy(node_id="client.default")
ZONED = Proxy(node_id="zoned.default", zone="a")


def test_a_pod_moving_to_another_service_account_re_translates_the_cluster() -> None:
    cache, builder = builder_with(BACKEND, SLICE, *PODS, proxies=(CLIENT,))
    assert accepts(held_cluster(cache, CLIENT.node_id), "spiffe://td/ns/shop/sa/backend-canary")
    builder.apply(upserts(pod("backend-2", "intruder", "127.0.71.2")))
    cluster = held_cluster(cache, CLIENT.node_id)
    assert accepts(cluster, "spiffe://td/ns/shop/sa/intruder")
    assert not accepts(cluster, "spiffe://td/ns/shop/sa/backend-canary")


def tls_modes(assignment: endpoint_pb2.ClusterLoadAssignment) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for group in assignment.endpoints:
        for lb in group.lb_endpoints:
            address = lb.endpoint.address.socket_address.address
            meta = lb.metadata.filter_metadata.get(TRANSPORT_SOCKET_MATCH)
            found[address] = meta["tlsMode"] if meta is not None else None
    return found


def test_zone_variants_mark_the_mtls_endpoints_like_the_flat_assignment() -> None:
    snapshot = mesh(BACKEND, SLICE, *PODS)
    variants = locality_load_assignments(
        BACKEND, (SLICE,), locality_policy(), mtls_endpoints(snapshot, (SLICE,))
    )
    assert {v.cluster_name for v in variants} == {
        variant_name(CLUSTER_NAME, "a"),
        variant_name(CLUSTER_NAME, "b"),
    }
    for variant in variants:
        assert tls_modes(variant) == {
            "127.0.71.1": "mtls",
            "127.0.71.2": "mtls",
            "127.0.71.3": None,
        }


def test_a_zoned_caller_gets_its_variant_with_tls_modes_and_its_cluster_checks_identities() -> None:
    objects = (BACKEND, SLICE, *PODS, locality_policy())
    cache, builder = builder_with(*objects, proxies=(ZONED,))
    snapshot = cache.get_snapshot(ZONED.node_id)
    assert snapshot is not None
    variant = unpack(snapshot.get(ENDPOINT)[variant_name(CLUSTER_NAME, "a")])
    assert isinstance(variant, endpoint_pb2.ClusterLoadAssignment)
    assert tls_modes(variant)["127.0.71.1"] == "mtls"
    zoned = held_cluster(cache, ZONED.node_id)
    assert zoned.eds_cluster_config.service_name == variant_name(CLUSTER_NAME, "a")
    assert accepts(zoned, "spiffe://td/ns/shop/sa/backend")
    assert not accepts(zoned, "spiffe://td/ns/shop/sa/intruder")
    assert proxy_clusters(mesh(*objects), ZONED)  # the pure function gives the same copy

    # Readiness flaps leave the identities as they are: the zoned caller is not re-run.
    before = builder.retranslated
    flapped = endpoint_slice(
        BACKEND,
        endpoint("127.0.71.1", zone="a", pod="backend-1", ready=False),
        endpoint("127.0.71.2", zone="b", pod="backend-2"),
        endpoint("127.0.71.3", zone="b", pod="legacy-1"),
        name=SLICE.name,
    )
    builder.apply(upserts(flapped))
    assert builder.retranslated == before
    # A Pod behind it running as another account is: its copy checks the new ID.
    builder.apply(upserts(pod("backend-1", "intruder", "127.0.71.1")))
    assert builder.retranslated > before
    zoned = held_cluster(cache, ZONED.node_id)
    assert accepts(zoned, "spiffe://td/ns/shop/sa/intruder")
    assert not accepts(zoned, "spiffe://td/ns/shop/sa/backend")
