"""Spec: locality-aware routing (BackendPolicy `loadBalancer.locality`).

A caller in zone Z gets the Service's endpoints with Envoy priorities: Z's at
0, the failover rules' zones from Z next (in order, one priority each), every
other zone last.  The shared cluster and load assignment are untouched; the
Service also has zone variants of its load assignments, and a zoned caller's
own cluster layer holds a copy of the cluster that fetches its zone's variant.
Without locality nothing changes, byte for byte; every snapshot stays
consistent; only proxies in a zone read it, and only a change of the zones
(or of the policy) re-translates them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format
from translate_builders import endpoint, endpoint_slice, http, mesh, service, upserts

from xds_server.bootstrap import render_bootstrap
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.cache.snapshot import find_problems
from xds_server.model import EndpointSlice, Proxy, Workload
from xds_server.model.policy import BackendPolicy
from xds_server.model.types import labels_of
from xds_server.node_metadata import NodeMetadataError, proxy_from_node
from xds_server.pipeline import SnapshotBuilder
from xds_server.pipeline.workloads import with_workload
from xds_server.policy_api import backend_policy_pb2
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    load_assignment_owner,
    make_resource,
    unpack,
)
from xds_server.translate import clusters_for_service
from xds_server.translate.clusters import proxy_clusters
from xds_server.translate.locality import (
    locality_load_assignments,
    locality_targets,
    priorities,
    variant_name,
)

BACKEND = service("backend", http(8080))
CLUSTER_NAME = "outbound|8080||backend.default.svc.cluster.local"
SLICE = endpoint_slice(
    BACKEND,
    endpoint("127.0.61.1", zone="a"),
    endpoint("127.0.61.2", zone="a"),
    endpoint("127.0.62.1", zone="b"),
    endpoint("127.0.63.1", zone="c"),
    endpoint("127.0.64.1"),  # no zone
)


def rule(from_zone: str, to_zone: str) -> backend_policy_pb2.LocalityFailover:
    return backend_policy_pb2.LocalityFailover(from_zone=from_zone, to_zone=to_zone)


def policy(
    *failover: tuple[str, str], enabled: bool = True, name: str = "local", **spec: Any
) -> BackendPolicy:
    locality: dict[str, Any] = {"enabled": enabled}
    if failover:
        locality["failover"] = [{"fromZone": f, "toZone": t} for f, t in failover]
    body = {"targetRefs": [{"kind": "Service", "name": "backend"}], **spec}
    body.setdefault("loadBalancer", {})["locality"] = locality
    message = json_format.ParseDict(body, backend_policy_pb2.BackendPolicySpec())
    return BackendPolicy.of("default", name, message)


def shape(assignment: endpoint_pb2.ClusterLoadAssignment) -> list[tuple[int, str, list[str]]]:
    """(priority, zone, addresses) per locality, in order."""
    return [
        (
            group.priority,
            group.locality.zone,
            [e.endpoint.address.socket_address.address for e in group.lb_endpoints],
        )
        for group in assignment.endpoints
    ]


@pytest.mark.parametrize(
    ("caller", "present", "rules", "expected"),
    [
        ("a", ["a", "b", "c"], [], [["a"], ["b", "c"]]),
        ("a", ["a", "b", "c"], [("a", "c")], [["a"], ["c"], ["b"]]),
        ("a", ["a", "b", "c"], [("a", "c"), ("a", "b")], [["a"], ["c"], ["b"]]),
        ("a", ["a", "b", "c", ""], [("a", "c")], [["a"], ["c"], ["", "b"]]),
        ("a", ["b", "c"], [("a", "c")], [["c"], ["b"]]),  # own zone empty: no gap
        ("a", ["b", "c"], [], [["b", "c"]]),
        ("a", ["a", "b"], [("a", "z")], [["a"], ["b"]]),  # failover zone without endpoints
        ("b", ["a", "b", "c"], [("a", "c")], [["b"], ["a", "c"]]),  # another zone's rule
        ("a", ["a"], [("a", "b")], [["a"]]),
        ("a", [], [("a", "b")], []),
    ],
)
def test_priorities_put_the_callers_zone_first_then_its_failover_zones_then_the_rest(
    caller: str, present: list[str], rules: list[tuple[str, str]], expected: list[list[str]]
) -> None:
    assert priorities(caller, present, [rule(*r) for r in rules]) == expected


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (
            "a",
            [
                (0, "a", ["127.0.61.1", "127.0.61.2"]),
                (1, "c", ["127.0.63.1"]),
                (2, "", ["127.0.64.1"]),
                (2, "b", ["127.0.62.1"]),
            ],
        ),
        (
            "b",
            [
                (0, "b", ["127.0.62.1"]),
                (1, "", ["127.0.64.1"]),
                (1, "a", ["127.0.61.1", "127.0.61.2"]),
                (1, "c", ["127.0.63.1"]),
            ],
        ),
    ],
)
def test_each_zone_variant_orders_the_endpoints_for_callers_in_that_zone(
    zone: str, expected: list[tuple[int, str, list[str]]]
) -> None:
    variants = {
        cla.cluster_name: cla
        for cla in locality_load_assignments(BACKEND, [SLICE], policy(("a", "c")))
    }
    assert sorted(variants) == [variant_name(CLUSTER_NAME, z) for z in ("a", "b", "c")]
    assert shape(variants[variant_name(CLUSTER_NAME, zone)]) == expected


def test_a_fromzone_without_endpoints_gets_a_variant_and_unready_endpoints_are_not_sent() -> None:
    slice_ = endpoint_slice(
        BACKEND, endpoint("127.0.61.1", zone="a", ready=False), endpoint("127.0.62.1", zone="b")
    )
    variants = {
        cla.cluster_name: cla
        for cla in locality_load_assignments(BACKEND, [slice_], policy(("x", "b")))
    }
    # "a" keeps its variant while its endpoint is not ready (no cluster churn), "x" is a rule's.
    assert sorted(variants) == [variant_name(CLUSTER_NAME, z) for z in ("a", "b", "x")]
    assert shape(variants[variant_name(CLUSTER_NAME, "a")]) == [(0, "b", ["127.0.62.1"])]
    assert shape(variants[variant_name(CLUSTER_NAME, "x")]) == [(0, "b", ["127.0.62.1"])]


@pytest.mark.parametrize(
    "governing",
    [
        None,
        policy(enabled=False),
        policy(loadBalancer={"algorithm": "LeastRequest"}, enabled=False),
    ],
    ids=["no policy", "disabled", "disabled with another setting"],
)
def test_without_locality_nothing_changes_byte_for_byte(governing: BackendPolicy | None) -> None:
    assert locality_load_assignments(BACKEND, [SLICE], governing) == []
    objects: list[Any] = [BACKEND, SLICE] + ([governing] if governing else [])
    snapshot = mesh(*objects)
    zoned = Proxy(node_id="client.default", zone="a")
    unzoned = Proxy(node_id="client.default")
    assert [c.SerializeToString(deterministic=True) for c in proxy_clusters(snapshot, zoned)] == [
        c.SerializeToString(deterministic=True) for c in proxy_clusters(snapshot, unzoned)
    ]
    assert locality_targets(snapshot) == ()


def test_a_zoned_caller_gets_a_copy_of_the_shared_cluster_fetching_its_zones_variant() -> None:
    governing = policy(("a", "c"), loadBalancer={"algorithm": "LeastRequest"})
    snapshot = mesh(BACKEND, SLICE, governing)
    (shared,) = clusters_for_service(BACKEND, governing)
    for zone in ("a", "b", "c"):
        (copy,) = proxy_clusters(snapshot, Proxy(node_id="c.default", zone=zone))
        assert copy.name == CLUSTER_NAME
        assert copy.eds_cluster_config.service_name == variant_name(CLUSTER_NAME, zone)
        copy.eds_cluster_config.ClearField("service_name")
        assert copy == shared  # everything else (the policy's LB included) is the shared one's
    # A zone the Service has no endpoints or rules for: the flat, shared assignment does.
    assert proxy_clusters(snapshot, Proxy(node_id="c.default", zone="elsewhere")) == []
    assert proxy_clusters(snapshot, Proxy(node_id="c.default")) == []


@pytest.mark.parametrize(
    ("failover", "field"),
    [
        ([("a", "a")], "failover[0].toZone"),
        ([("a", "b"), ("", "b")], "failover[1].fromZone"),
        ([("a", "b|c")], "failover[0].toZone"),
    ],
)
def test_a_failover_rule_that_cannot_work_is_an_error_naming_the_policy_and_field(
    failover: list[tuple[str, str]], field: str
) -> None:
    with pytest.raises(ValueError, match="BackendPolicy default/local: .*" + re.escape(field)):
        locality_load_assignments(BACKEND, [SLICE], policy(*failover))


# -- through the pipeline: consistent snapshots, precise re-translation -----------------


def builder_with(
    *objects: Any, proxies: tuple[Proxy, ...]
) -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(upserts(*objects))
    for proxy in proxies:
        builder.add_proxy(proxy)
    builder.mark_synced()
    return cache, builder


ZONE_A = Proxy(node_id="in-a.default", zone="a")
ZONE_B = Proxy(node_id="in-b.default", zone="b")
NO_ZONE = Proxy(node_id="nowhere.default")


def held(cache: SnapshotCache, proxy: Proxy) -> Snapshot:
    snapshot = cache.get_snapshot(proxy.node_id)
    assert snapshot is not None, proxy.node_id
    return snapshot


def eds_name(snapshot: Snapshot) -> str:
    cluster = unpack(snapshot.get(CLUSTER)[CLUSTER_NAME])
    assert isinstance(cluster, cluster_pb2.Cluster)
    return cluster.eds_cluster_config.service_name or cluster.name


def test_every_proxy_gets_a_consistent_snapshot_naming_its_zones_variant() -> None:
    cache, builder = builder_with(
        BACKEND, SLICE, policy(("a", "c")), proxies=(ZONE_A, ZONE_B, NO_ZONE)
    )
    for proxy, expected in (
        (ZONE_A, variant_name(CLUSTER_NAME, "a")),
        (ZONE_B, variant_name(CLUSTER_NAME, "b")),
        (NO_ZONE, CLUSTER_NAME),
    ):
        snapshot = held(cache, proxy)
        assert builder.proxy_error(proxy.node_id) is None
        assert find_problems(snapshot) == []
        assert eds_name(snapshot) == expected
        assert expected in snapshot.get(ENDPOINT)
    # The variants are shared like the rest of EDS: one serialization for every proxy.
    name = variant_name(CLUSTER_NAME, "a")
    assert held(cache, ZONE_A).get(ENDPOINT)[name] is held(cache, NO_ZONE).get(ENDPOINT)[name]


def test_the_consistency_check_still_finds_a_variant_without_its_cluster() -> None:
    variant = endpoint_pb2.ClusterLoadAssignment(cluster_name=variant_name("gone", "a"))
    snapshot = Snapshot({CLUSTER: {}, ENDPOINT: {variant.cluster_name: make_resource(variant)}})
    assert find_problems(snapshot) == ["EDS 'gone|zone=a' has no cluster in CDS"]
    assert load_assignment_owner(variant_name(CLUSTER_NAME, "a")) == CLUSTER_NAME
    assert load_assignment_owner(CLUSTER_NAME) == CLUSTER_NAME
    assert load_assignment_owner("inbound|8080||") == "inbound|8080||"


def with_endpoints(*endpoints: Any) -> EndpointSlice:
    return endpoint_slice(BACKEND, *endpoints, name=SLICE.name)


def test_only_a_change_of_the_zones_or_the_policy_retranslates_the_zoned_proxies() -> None:
    cache, builder = builder_with(BACKEND, SLICE, policy(), proxies=(ZONE_A, NO_ZONE))
    no_zone_before = held(cache, NO_ZONE)

    # Endpoints come and go, readiness flaps: the zones are the same, no proxy re-runs.
    before = builder.retranslated
    builder.apply(
        upserts(
            with_endpoints(
                endpoint("127.0.61.1", zone="a", ready=False),
                endpoint("127.0.62.1", zone="b"),
                endpoint("127.0.62.2", zone="b"),
                endpoint("127.0.63.1", zone="c"),
            )
        )
    )
    assert builder.retranslated == before
    variant = unpack(held(cache, ZONE_A).get(ENDPOINT)[variant_name(CLUSTER_NAME, "a")])
    assert isinstance(variant, endpoint_pb2.ClusterLoadAssignment)
    assert [g.locality.zone for g in variant.endpoints] == ["b", "c"]  # a's only one is not ready

    # Zone a's endpoints are removed: its variant goes, so zone a's caller re-runs (and
    # takes the shared cluster); the caller without a zone does not.
    builder.apply(upserts(with_endpoints(endpoint("127.0.62.1", zone="b"))))
    assert builder.retranslated == before + 1
    assert eds_name(held(cache, ZONE_A)) == CLUSTER_NAME
    assert find_problems(held(cache, ZONE_A)) == []

    # The policy names zone a in a rule again: a's variant is back.
    builder.apply(upserts(policy(("a", "b"))))
    assert eds_name(held(cache, ZONE_A)) == variant_name(CLUSTER_NAME, "a")
    assert held(cache, NO_ZONE).get(CLUSTER) == no_zone_before.get(CLUSTER)

    # Locality off: back to the shared cluster, the variants are gone.
    builder.apply(upserts(policy(enabled=False)))
    snapshot = held(cache, ZONE_A)
    assert eds_name(snapshot) == CLUSTER_NAME
    assert not any("|zone=" in name for name in snapshot.get(ENDPOINT))
    assert find_problems(snapshot) == []


def test_a_policy_change_reaches_the_zoned_callers_copy_of_the_cluster() -> None:
    cache, builder = builder_with(BACKEND, SLICE, policy(), proxies=(ZONE_A,))
    builder.apply(upserts(policy(loadBalancer={"algorithm": "LeastRequest"})))
    copy = unpack(held(cache, ZONE_A).get(CLUSTER)[CLUSTER_NAME])
    assert isinstance(copy, cluster_pb2.Cluster)
    assert copy.eds_cluster_config.service_name == variant_name(CLUSTER_NAME, "a")
    assert copy.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST


def test_a_bad_failover_rule_leaves_the_policy_out_and_the_last_good_one_in_force() -> None:
    cache, builder = builder_with(BACKEND, SLICE, policy(("a", "c")), proxies=(ZONE_A,))
    builder.apply(upserts(policy(("a", "a"))))
    ((key, message),) = builder.translation_errors()
    assert key == "BackendPolicy default/local"
    assert "spec.loadBalancer.locality.failover[0].toZone" in message
    assert eds_name(held(cache, ZONE_A)) == variant_name(CLUSTER_NAME, "a")
    assert find_problems(held(cache, ZONE_A)) == []


def test_another_services_endpoints_never_reach_the_zoned_proxies() -> None:
    other = service("other", http(9090))
    _, builder = builder_with(
        BACKEND, SLICE, policy(), other, endpoint_slice(other), proxies=(ZONE_A,)
    )
    before = builder.retranslated
    builder.apply(upserts(endpoint_slice(other, endpoint("127.0.70.1", zone="q"))))
    assert builder.retranslated == before


# -- the caller's zone ---------------------------------------------------------------


def test_the_zone_comes_from_the_nodes_locality_and_is_checked() -> None:
    node = base_pb2.Node(id="c.default", locality=base_pb2.Locality(zone="us-east-1a"))
    assert proxy_from_node(node).zone == "us-east-1a"
    assert proxy_from_node(base_pb2.Node(id="c.default")).zone is None
    with pytest.raises(NodeMetadataError, match=r"locality\.zone"):
        proxy_from_node(base_pb2.Node(id="c.default", locality=base_pb2.Locality(zone="a b")))


def test_the_bootstrap_sets_the_nodes_locality_zone() -> None:
    text = render_bootstrap(
        node_id="c.default",
        namespace="default",
        xds_address="127.0.0.1:15010",
        admin_port=0,
        zone="zone-a",
    )
    node = yaml.safe_load(text)["node"]
    assert node["locality"] == {"zone": "zone-a"}
    parsed = json_format.ParseDict(node, base_pb2.Node())
    assert proxy_from_node(parsed).zone == "zone-a"
    plain = render_bootstrap(
        node_id="c.default", namespace="default", xds_address="127.0.0.1:15010", admin_port=0
    )
    assert "locality" not in yaml.safe_load(plain)["node"]
    with pytest.raises(ValueError, match="zone"):
        render_bootstrap(
            node_id="c.default",
            namespace="default",
            xds_address="127.0.0.1:15010",
            admin_port=0,
            zone="not a zone",
        )


def test_a_pod_labelled_with_its_zone_gives_the_proxy_that_zone() -> None:
    pod = Workload(
        "default", "client", labels=labels_of({"topology.kubernetes.io/zone": "b"}), ip="127.0.9.1"
    )
    snapshot = mesh(pod)
    declared = Proxy(node_id="client.default", zone="a")
    assert with_workload(declared, snapshot).zone == "b"
    unlabelled = mesh(Workload("default", "client", ip="127.0.9.1"))
    assert with_workload(declared, unlabelled).zone == "a"


def test_the_shared_load_assignment_is_the_same_with_locality_on() -> None:
    plain, _ = builder_with(BACKEND, SLICE, proxies=(NO_ZONE,))
    local, _ = builder_with(BACKEND, SLICE, policy(), proxies=(NO_ZONE,))
    before = held(plain, NO_ZONE).get(ENDPOINT)[CLUSTER_NAME]
    after = held(local, NO_ZONE).get(ENDPOINT)[CLUSTER_NAME]
    assert after.data == before.data
    assert eds_name(held(local, NO_ZONE)) == CLUSTER_NAME
    (target,) = locality_targets(mesh(BACKEND, SLICE, policy()))
    assert (target.namespace, target.name, target.zones) == ("default", "backend", {"a", "b", "c"})
