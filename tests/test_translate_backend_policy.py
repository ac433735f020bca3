"""Spec: a BackendPolicy in, the outbound clusters of the Services it governs out.

Each case is a policy spec written as the CRD spells it (camelCase YAML, here
a dict) and the cluster fields it sets; whatever a spec leaves out keeps the
control plane's defaults (round robin, open circuit breakers, no outlier
detection, no health checks, a 10s connect timeout).  Values Envoy would
reject raise an error naming the policy and the field.  Last, a real Envoy
(`envoy --mode validate`) accepts every cluster these specs produce.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.type.v3 import http_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from translate_builders import as_dict, grpc, http, service, tcp

from xds_server.model import Service
from xds_server.model.policy import BackendPolicy
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.translate import clusters_for_service
from xds_server.translate.backend_policy import (
    MAGLEV_POLICY,
    RING_HASH_POLICY,
    PolicyError,
    route_hash_policies,
    status_ranges,
)
from xds_server.translate.clusters import UNLIMITED
from xds_server.translate.endpoints import static_load_assignment

WEB = service("web", http(8080))
HashPolicy = route_components_pb2.RouteAction.HashPolicy


def policy(spec: dict[str, Any], name: str = "tuned") -> BackendPolicy:
    """A policy in `default` from its spec as the CRD writes it."""
    return BackendPolicy.of("default", name, json_format.ParseDict(spec, api.BackendPolicySpec()))


def cluster_of(spec: dict[str, Any] | None, svc: Service = WEB) -> cluster_pb2.Cluster:
    (cluster,) = clusters_for_service(svc, None if spec is None else policy(spec))
    return cluster


def fields(message: Message) -> dict[str, Any]:
    """The message as proto3 JSON (camelCase, defaults left out), for comparing."""
    found: dict[str, Any] = json_format.MessageToDict(message)
    return found


def without_provenance(cluster: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    copy = cluster_pb2.Cluster()
    copy.CopyFrom(cluster)
    copy.ClearField("metadata")
    return copy


def typed_lb(cluster: cluster_pb2.Cluster) -> tuple[str, Message]:
    """The name and unpacked config of a cluster's one typed load balancing policy."""
    (chosen,) = cluster.load_balancing_policy.policies
    config = chosen.typed_extension_config
    message: Message = (
        ring_hash_pb2.RingHash() if config.name == RING_HASH_POLICY else maglev_pb2.Maglev()
    )
    assert config.typed_config.Unpack(message)
    return config.name, message


# -- what a policy leaves alone ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({}, id="empty"),
        pytest.param({"targetRefs": [{"kind": "Service", "name": "web"}]}, id="targets only"),
        pytest.param(
            {
                "retry": {"attempts": 3},
                "timeouts": {"request": "2s"},
                "faultInjection": {"abort": {"httpStatus": 503}},
                "localRateLimit": {"maxTokens": 10, "fillInterval": "1s"},
            },
            id="sections for routes and listeners",
        ),
        pytest.param({"loadBalancer": {}}, id="empty loadBalancer"),
        pytest.param({"connectionPool": {}}, id="empty connectionPool"),
    ],
)
def test_a_policy_silent_on_clusters_keeps_every_default(spec: dict[str, Any]) -> None:
    assert without_provenance(cluster_of(spec)) == without_provenance(cluster_of(None))


def test_the_defaults_a_policy_starts_from() -> None:
    cluster = cluster_of(None)
    assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert not cluster.HasField("load_balancing_policy")
    assert cluster.connect_timeout.ToSeconds() == 10
    assert not cluster.HasField("outlier_detection")
    assert not cluster.health_checks
    (thresholds,) = cluster.circuit_breakers.thresholds
    assert [
        thresholds.max_connections.value,
        thresholds.max_pending_requests.value,
        thresholds.max_requests.value,
        thresholds.max_retries.value,
    ] == [UNLIMITED] * 4


def test_the_clusters_name_the_policy_as_a_source() -> None:
    cluster = cluster_of({"connectTimeout": "1s"})
    sources = cluster.metadata.filter_metadata["xds-server"]["sources"]
    assert list(sources) == ["BackendPolicy/default/tuned", "Service/default/web"]


def test_every_port_of_the_service_gets_the_policy() -> None:
    svc = service("web", http(8080), grpc(9090), tcp(5432))
    clusters = clusters_for_service(svc, policy({"connectTimeout": "0.5s"}))
    assert [c.connect_timeout.ToMilliseconds() for c in clusters] == [500, 500, 500]


# -- load balancing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balancer", "lb_policy", "least_request"),
    [
        ({"algorithm": "RoundRobin"}, cluster_pb2.Cluster.ROUND_ROBIN, {}),
        ({"algorithm": "Random"}, cluster_pb2.Cluster.RANDOM, {}),
        ({"algorithm": "LeastRequest"}, cluster_pb2.Cluster.LEAST_REQUEST, {}),
        (
            {"algorithm": "LeastRequest", "leastRequest": {"choiceCount": 4}},
            cluster_pb2.Cluster.LEAST_REQUEST,
            {"choiceCount": 4},
        ),
    ],
)
def test_round_robin_random_and_least_request_are_the_cluster_s_lb_policy(
    balancer: dict[str, Any], lb_policy: int, least_request: dict[str, Any]
) -> None:
    cluster = cluster_of({"loadBalancer": balancer})
    assert cluster.lb_policy == lb_policy
    assert fields(cluster.least_request_lb_config) == least_request
    assert not cluster.HasField("load_balancing_policy")


HASHES = [
    {"header": {"name": "x-user"}},
    {"cookie": {"name": "session", "ttl": "3600s", "path": "/"}, "terminal": True},
    {"sourceIp": True},
]
ROUTE_HASHES = [
    HashPolicy(header=HashPolicy.Header(header_name="x-user")),
    HashPolicy(
        cookie=HashPolicy.Cookie(name="session", ttl={"seconds": 3600}, path="/"), terminal=True
    ),
    HashPolicy(connection_properties=HashPolicy.ConnectionProperties(source_ip=True)),
]


@pytest.mark.parametrize(
    ("balancer", "name", "config"),
    [
        (
            {"algorithm": "RingHash", "hashPolicies": HASHES},
            RING_HASH_POLICY,
            ring_hash_pb2.RingHash(consistent_hashing_lb_config={"hash_policy": ROUTE_HASHES}),
        ),
        (
            {
                "algorithm": "RingHash",
                "ringHash": {"minimumRingSize": 64, "maximumRingSize": 4096},
                "hashPolicies": HASHES[:1],
            },
            RING_HASH_POLICY,
            ring_hash_pb2.RingHash(
                minimum_ring_size={"value": 64},
                maximum_ring_size={"value": 4096},
                consistent_hashing_lb_config={"hash_policy": ROUTE_HASHES[:1]},
            ),
        ),
        (
            {"algorithm": "Maglev", "hashPolicies": HASHES[1:]},
            MAGLEV_POLICY,
            maglev_pb2.Maglev(consistent_hashing_lb_config={"hash_policy": ROUTE_HASHES[1:]}),
        ),
        (
            {"algorithm": "Maglev"},
            MAGLEV_POLICY,
            maglev_pb2.Maglev(consistent_hashing_lb_config={}),
        ),
    ],
)
def test_ring_hash_and_maglev_are_typed_policies_that_hash_on_the_spec_s_keys(
    balancer: dict[str, Any], name: str, config: Message
) -> None:
    cluster = cluster_of({"loadBalancer": balancer})
    assert typed_lb(cluster) == (name, config)


@pytest.mark.parametrize(
    ("balancer", "expected"),
    [
        ({"algorithm": "RingHash", "hashPolicies": HASHES}, ROUTE_HASHES),
        ({"algorithm": "Maglev", "hashPolicies": HASHES[2:]}, ROUTE_HASHES[2:]),
        ({"algorithm": "Maglev"}, []),
        ({"algorithm": "LeastRequest"}, []),
        ({}, []),
    ],
)
def test_route_hash_policies_are_the_cluster_s_for_a_route_that_wants_them(
    balancer: dict[str, Any], expected: list[Message]
) -> None:
    spec = json_format.ParseDict({"loadBalancer": balancer}, api.BackendPolicySpec())
    assert route_hash_policies(spec) == expected


# -- connection pool ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool", "limits"),
    [
        (
            {"maxConnections": 1},
            {"maxConnections": 1},
        ),
        (
            {"maxPendingRequests": 2, "maxRetries": 0},
            {"maxPendingRequests": 2, "maxRetries": 0},
        ),
        (
            {"maxConnections": 10, "maxPendingRequests": 20, "maxRequests": 30, "maxRetries": 4},
            {"maxConnections": 10, "maxPendingRequests": 20, "maxRequests": 30, "maxRetries": 4},
        ),
    ],
)
def test_the_connection_pool_replaces_only_the_limits_it_sets(
    pool: dict[str, int], limits: dict[str, int]
) -> None:
    (thresholds,) = cluster_of({"connectionPool": pool}).circuit_breakers.thresholds
    found = {
        name: getattr(thresholds, field).value
        for name, field in [
            ("maxConnections", "max_connections"),
            ("maxPendingRequests", "max_pending_requests"),
            ("maxRequests", "max_requests"),
            ("maxRetries", "max_retries"),
        ]
    }
    assert found == {name: limits.get(name, UNLIMITED) for name in found}
    assert thresholds.track_remaining


# -- outlier detection -------------------------------------------------------------------

OUTLIER_DEFAULTS = {
    "consecutive5xx": 5,
    "enforcingConsecutive5xx": 100,
    "enforcingSuccessRate": 0,
    "interval": "10s",
    "baseEjectionTime": "30s",
    "maxEjectionPercent": 10,
    "alwaysEjectOneHost": True,
}


@pytest.mark.parametrize(
    ("detection", "expected"),
    [
        ({}, OUTLIER_DEFAULTS),
        (
            {
                "consecutive5xx": 2,
                "interval": "0.5s",
                "baseEjectionTime": "60s",
                "maxEjectionPercent": 50,
            },
            OUTLIER_DEFAULTS
            | {
                "consecutive5xx": 2,
                "interval": "0.500s",
                "baseEjectionTime": "60s",
                "maxEjectionPercent": 50,
            },
        ),
        (
            {"consecutiveGatewayErrors": 3},
            OUTLIER_DEFAULTS
            | {"consecutiveGatewayFailure": 3, "enforcingConsecutiveGatewayFailure": 100},
        ),
        (
            {"maxEjectionPercent": 0},
            {k: v for k, v in OUTLIER_DEFAULTS.items() if k != "alwaysEjectOneHost"}
            | {"maxEjectionPercent": 0},
        ),
    ],
)
def test_outlier_detection_ejects_on_consecutive_errors_only(
    detection: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert fields(cluster_of({"outlierDetection": detection}).outlier_detection) == expected


# -- health checks -----------------------------------------------------------------------

PROBE_TIMING = {"interval": "2s", "timeout": "0.5s"}


@pytest.mark.parametrize(
    ("check", "svc", "expected"),
    [
        (
            PROBE_TIMING | {"http": {"path": "/healthz"}},
            WEB,
            {
                "interval": "2s",
                "noTrafficInterval": "2s",
                "timeout": "0.500s",
                "unhealthyThreshold": 3,
                "healthyThreshold": 1,
                "httpHealthCheck": {"path": "/healthz"},
            },
        ),
        (
            PROBE_TIMING
            | {
                "unhealthyThreshold": 1,
                "healthyThreshold": 2,
                "http": {"path": "/ready", "host": "web.probe", "expectedStatuses": [204, 200]},
            },
            service("api", grpc(9090)),
            {
                "interval": "2s",
                "noTrafficInterval": "2s",
                "timeout": "0.500s",
                "unhealthyThreshold": 1,
                "healthyThreshold": 2,
                "httpHealthCheck": {
                    "path": "/ready",
                    "host": "web.probe",
                    "expectedStatuses": [
                        {"start": "200", "end": "201"},
                        {"start": "204", "end": "205"},
                    ],
                    "codecClientType": "HTTP2",
                },
            },
        ),
        (
            PROBE_TIMING | {"tcp": {}},
            service("db", tcp(5432)),
            {
                "interval": "2s",
                "noTrafficInterval": "2s",
                "timeout": "0.500s",
                "unhealthyThreshold": 3,
                "healthyThreshold": 1,
                "tcpHealthCheck": {},
            },
        ),
        (
            PROBE_TIMING | {"tcp": {"send": "50494e47", "receive": ["504f4e47", "0d0a"]}},
            service("db", tcp(5432)),
            {
                "interval": "2s",
                "noTrafficInterval": "2s",
                "timeout": "0.500s",
                "unhealthyThreshold": 3,
                "healthyThreshold": 1,
                "tcpHealthCheck": {
                    "send": {"text": "50494e47"},
                    "receive": [{"text": "504f4e47"}, {"text": "0d0a"}],
                },
            },
        ),
    ],
)
def test_a_health_check_probes_each_endpoint_at_its_interval_with_or_without_traffic(
    check: dict[str, Any], svc: Service, expected: dict[str, Any]
) -> None:
    (health_check,) = cluster_of({"healthCheck": check}, svc).health_checks
    assert fields(health_check) == expected


def test_an_http_probe_of_an_http1_port_speaks_http1() -> None:
    check = PROBE_TIMING | {"http": {"path": "/"}}
    (health_check,) = cluster_of({"healthCheck": check}).health_checks
    assert health_check.http_health_check.codec_client_type == http_pb2.HTTP1


@pytest.mark.parametrize(
    ("statuses", "ranges"),
    [
        ([200], [(200, 201)]),
        ([200, 201, 202, 204], [(200, 203), (204, 205)]),
        ([503, 200, 200], [(200, 201), (503, 504)]),
        ([], []),
    ],
)
def test_expected_statuses_become_half_open_ranges(
    statuses: list[int], ranges: list[tuple[int, int]]
) -> None:
    assert [(r.start, r.end) for r in status_ranges(statuses)] == ranges


# -- connect timeout ---------------------------------------------------------------------


@pytest.mark.parametrize(("timeout", "ms"), [("0.250s", 250), ("2s", 2000), ("30s", 30000)])
def test_the_connect_timeout_replaces_the_default(timeout: str, ms: int) -> None:
    assert cluster_of({"connectTimeout": timeout}).connect_timeout.ToMilliseconds() == ms


# -- what Envoy would reject -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"connectTimeout": "0s"}, "spec.connectTimeout"),
        (
            {"loadBalancer": {"algorithm": "LeastRequest", "leastRequest": {"choiceCount": 1}}},
            "spec.loadBalancer.leastRequest.choiceCount",
        ),
        (
            {"loadBalancer": {"algorithm": "Random", "hashPolicies": HASHES[:1]}},
            "spec.loadBalancer.hashPolicies",
        ),
        (
            {"loadBalancer": {"hashPolicies": HASHES[:1]}},
            "spec.loadBalancer.hashPolicies",
        ),
        (
            {"loadBalancer": {"algorithm": "Maglev", "ringHash": {"minimumRingSize": 8}}},
            "spec.loadBalancer.ringHash",
        ),
        (
            {"loadBalancer": {"algorithm": "Random", "leastRequest": {"choiceCount": 3}}},
            "spec.loadBalancer.leastRequest",
        ),
        (
            {
                "loadBalancer": {
                    "algorithm": "RingHash",
                    "ringHash": {"minimumRingSize": 4096, "maximumRingSize": 64},
                }
            },
            "spec.loadBalancer.ringHash.minimumRingSize",
        ),
        (
            {"loadBalancer": {"algorithm": "RingHash", "ringHash": {"maximumRingSize": 9000000}}},
            "spec.loadBalancer.ringHash.maximumRingSize",
        ),
        (
            {"loadBalancer": {"algorithm": "RingHash", "hashPolicies": [{"terminal": True}]}},
            "spec.loadBalancer.hashPolicies[0]",
        ),
        (
            {"loadBalancer": {"algorithm": "RingHash", "hashPolicies": [{"sourceIp": False}]}},
            "spec.loadBalancer.hashPolicies[0]",
        ),
        (
            {"loadBalancer": {"algorithm": "Maglev", "hashPolicies": [{"header": {"name": ""}}]}},
            "spec.loadBalancer.hashPolicies[0].header.name",
        ),
        (
            {
                "loadBalancer": {
                    "algorithm": "Maglev",
                    "hashPolicies": [HASHES[0], {"cookie": {"name": "a\nb"}}],
                }
            },
            "spec.loadBalancer.hashPolicies[1].cookie.name",
        ),
        ({"outlierDetection": {"consecutive5xx": 0}}, "spec.outlierDetection.consecutive5xx"),
        (
            {"outlierDetection": {"consecutiveGatewayErrors": 0}},
            "spec.outlierDetection.consecutiveGatewayErrors",
        ),
        ({"outlierDetection": {"interval": "0s"}}, "spec.outlierDetection.interval"),
        (
            {"outlierDetection": {"baseEjectionTime": "-1s"}},
            "spec.outlierDetection.baseEjectionTime",
        ),
        (
            {"outlierDetection": {"maxEjectionPercent": 101}},
            "spec.outlierDetection.maxEjectionPercent",
        ),
        ({"healthCheck": {"timeout": "1s", "tcp": {}}}, "spec.healthCheck.interval"),
        ({"healthCheck": {"interval": "1s", "tcp": {}}}, "spec.healthCheck.timeout"),
        ({"healthCheck": PROBE_TIMING}, "spec.healthCheck"),
        (
            {"healthCheck": PROBE_TIMING | {"unhealthyThreshold": 0, "tcp": {}}},
            "spec.healthCheck.unhealthyThreshold",
        ),
        ({"healthCheck": PROBE_TIMING | {"http": {}}}, "spec.healthCheck.http.path"),
        (
            {"healthCheck": PROBE_TIMING | {"http": {"path": "/", "expectedStatuses": [99]}}},
            "spec.healthCheck.http.expectedStatuses",
        ),
        (
            {"healthCheck": PROBE_TIMING | {"tcp": {"send": "PING"}}},
            "spec.healthCheck.tcp.send",
        ),
        (
            {"healthCheck": PROBE_TIMING | {"tcp": {"receive": ["0d0a", "abc"]}}},
            "spec.healthCheck.tcp.receive[1]",
        ),
    ],
)
def test_a_value_envoy_would_reject_is_an_error_naming_the_policy_and_the_field(
    spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        cluster_of(spec)
    assert str(raised.value).startswith(f"BackendPolicy default/tuned: {field}: ")


# -- Envoy accepts it ----------------------------------------------------------------------

EVERYTHING: list[dict[str, Any]] = [
    {
        "loadBalancer": {"algorithm": "LeastRequest", "leastRequest": {"choiceCount": 3}},
        "connectionPool": {"maxConnections": 1, "maxPendingRequests": 1},
        "outlierDetection": {"consecutive5xx": 2, "consecutiveGatewayErrors": 2},
        "healthCheck": PROBE_TIMING
        | {"http": {"path": "/healthz", "host": "probe", "expectedStatuses": [200, 204]}},
        "connectTimeout": "0.25s",
    },
    {
        "loadBalancer": {
            "algorithm": "RingHash",
            "ringHash": {"minimumRingSize": 16, "maximumRingSize": 1024},
            "hashPolicies": HASHES,
        },
        "connectionPool": {"maxRequests": 5, "maxRetries": 0},
        "outlierDetection": {"interval": "1s", "baseEjectionTime": "5s", "maxEjectionPercent": 100},
        "healthCheck": PROBE_TIMING | {"tcp": {"send": "50494e47", "receive": ["504f4e47"]}},
    },
    {
        "loadBalancer": {"algorithm": "Maglev", "hashPolicies": HASHES[::-1]},
        "healthCheck": PROBE_TIMING | {"tcp": {}},
    },
    {"loadBalancer": {"algorithm": "Random"}, "outlierDetection": {}},
]


@pytest.mark.envoy
@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy is not on PATH")
def test_envoy_accepts_the_clusters_of_every_policy_here(tmp_path: Path) -> None:
    from test_translate_envoy_validate import validate  # the same check as the mesh's

    clusters = []
    for index, spec in enumerate(EVERYTHING):
        svc = service(f"svc-{index}", http(8080), grpc(9090), tcp(5432))
        for cluster in clusters_for_service(svc, policy(spec, name=f"p{index}")):
            static = cluster_pb2.Cluster()
            static.CopyFrom(cluster)
            static.type = cluster_pb2.Cluster.STATIC
            static.ClearField("eds_cluster_config")
            static.ClearField("transport_socket_matches")  # its SDS needs ADS: none here
            static.load_assignment.CopyFrom(static_load_assignment(cluster.name, "127.0.0.1", 9))
            clusters.append(as_dict(static))
    validate(
        {
            "node": {"id": "validate", "cluster": "validate"},
            "static_resources": {"clusters": clusters},
        },
        tmp_path,
    )
