"""Specification of BackendPolicy conversion: the generated CRD's schema, field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from convert_checks import manifest, refusal

from xds_server.model import Kind, ObjectKey
from xds_server.model.policy import BackendPolicy, TargetRef
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.sources.convert import ManifestError, convert
from xds_server.sources.convert_policy import schema_facts

CRD = Path(__file__).resolve().parent.parent / "manifests" / "crds" / "backendpolicy.yaml"


def policy(spec: str, metadata: str = "{name: web-policy, namespace: shop}") -> Any:
    return manifest(
        "apiVersion: policy.xds-server.dev/v1alpha1\nkind: BackendPolicy\n"
        f"metadata: {metadata}\nspec: {spec}"
    )


def test_a_full_policy_converts_to_its_spec_message() -> None:
    value = convert(
        policy(
            """
            targetRefs: [{kind: Service, name: web}, {group: "", kind: Namespace, name: shop}]
            loadBalancer:
              algorithm: RingHash
              hashPolicies:
              - header: {name: x-user}
                terminal: true
              - cookie: {name: session, ttl: 3600s, path: /}
              - sourceIp: true
              ringHash: {minimumRingSize: 64, maximumRingSize: 1024}
              locality:
                enabled: true
                failover: [{fromZone: a, toZone: b}]
            connectionPool:
              {maxConnections: 1, maxPendingRequests: 0, maxRequests: 5, maxRetries: 2}
            outlierDetection:
              consecutive5xx: 3
              consecutiveGatewayErrors: 2
              interval: 0.5s
              baseEjectionTime: 30s
              maxEjectionPercent: 100
            healthCheck:
              interval: 1s
              timeout: 0.250s
              unhealthyThreshold: 1
              http: {path: /healthz, expectedStatuses: [200, 204]}
            connectTimeout: 2s
            retry: {attempts: 0, codes: [503], backoff: 0.025s, perTryTimeout: 1s}
            timeouts: {request: 15s, idle: 300s}
            faultInjection:
              delay: {fixedDelay: 0.1s, percentage: 12.5}
              abort: {httpStatus: 503, percentage: 0}
            localRateLimit: {maxTokens: 10, tokensPerFill: 5, fillInterval: 1s}
            """,
            "{name: web-policy, namespace: shop, generation: 7, "
            "creationTimestamp: '2024-05-01T12:00:00Z'}",
        )
    )
    assert isinstance(value, BackendPolicy)
    assert (value.namespace, value.name, value.generation) == ("shop", "web-policy", 7)
    assert value.creation_timestamp == "2024-05-01T12:00:00Z"
    assert value.target_refs == (TargetRef("Service", "web"), TargetRef("Namespace", "shop"))
    spec = value.spec()
    assert spec.load_balancer.algorithm == api.LoadBalancer.RingHash
    assert [p.WhichOneof("source") for p in spec.load_balancer.hash_policies] == [
        "header",
        "cookie",
        "source_ip",
    ]
    assert spec.load_balancer.hash_policies[1].cookie.ttl.seconds == 3600
    assert spec.connection_pool.max_connections.value == 1
    assert spec.connection_pool.HasField("max_pending_requests")  # 0 is set, not unset
    assert spec.outlier_detection.interval.nanos == 500_000_000
    assert spec.health_check.timeout.nanos == 250_000_000
    assert list(spec.health_check.http.expected_statuses) == [200, 204]
    assert spec.retry.HasField("attempts") and spec.retry.attempts.value == 0
    assert spec.fault_injection.delay.percentage.value == 12.5
    assert spec.local_rate_limit.max_tokens == 10


def test_an_empty_spec_is_a_namespace_default() -> None:
    value = convert(policy("{}"))
    assert isinstance(value, BackendPolicy)
    assert value.target_refs == () and value.spec() == api.BackendPolicySpec()


BAD = [
    ("null", "spec", "required"),
    ("{targetRef: []}", "spec.targetRef", "unknown field"),
    ("{connect_timeout: 1s}", "spec.connect_timeout", "unknown field"),
    ("{targetRefs: [{name: web}]}", "spec.targetRefs[0].kind", "required"),
    ("{targetRefs: [{kind: Service}]}", "spec.targetRefs[0].name", "required"),
    ("{targetRefs: {kind: Service}}", "spec.targetRefs", "must be a list"),
    ("{loadBalancer: {algorithm: RING_HASH}}", "spec.loadBalancer.algorithm", "one of"),
    ("{loadBalancer: {algorithm: ALGORITHM_UNSPECIFIED}}", "spec.loadBalancer.algorithm", "one of"),
    ("{loadBalancer: {algorithm: 4}}", "spec.loadBalancer.algorithm", "must be a string"),
    (
        "{loadBalancer: {hashPolicies: [{header: {name: a}, sourceIp: true}]}}",
        "spec.loadBalancer.hashPolicies[0].sourceIp",
        "at most one of header, cookie, sourceIp",
    ),
    (
        "{loadBalancer: {hashPolicies: [{header: {}}]}}",
        "spec.loadBalancer.hashPolicies[0].header.name",
        "required",
    ),
    (
        "{loadBalancer: {hashPolicies: [{sourceIp: 'yes'}]}}",
        "spec.loadBalancer.hashPolicies[0].sourceIp",
        "true or false",
    ),
    (
        "{loadBalancer: {hashPolicies: [{cookie: {name: s, ttl: 1h}}]}}",
        "spec.loadBalancer.hashPolicies[0].cookie.ttl",
        "duration in seconds",
    ),
    (
        "{loadBalancer: {leastRequest: {choiceCount: 1}}}",
        "spec.loadBalancer.leastRequest.choiceCount",
        "2-4294967295",
    ),
    (
        "{loadBalancer: {ringHash: {minimumRingSize: 0}}}",
        "spec.loadBalancer.ringHash.minimumRingSize",
        "1-4294967295",
    ),
    (
        "{loadBalancer: {locality: {failover: [{fromZone: a}]}}}",
        "spec.loadBalancer.locality.failover[0].toZone",
        "required",
    ),
    (
        "{connectionPool: {maxConnections: -1}}",
        "spec.connectionPool.maxConnections",
        "0-4294967295",
    ),
    (
        "{connectionPool: {maxConnections: 4294967296}}",
        "spec.connectionPool.maxConnections",
        "0-4294967295",
    ),
    ("{connectionPool: {maxConnections: '5'}}", "spec.connectionPool.maxConnections", "integer"),
    ("{connectionPool: {maxConnections: 1.5}}", "spec.connectionPool.maxConnections", "integer"),
    ("{connectionPool: {maxConnection: 1}}", "spec.connectionPool.maxConnection", "unknown field"),
    ("{outlierDetection: {consecutive5xx: 0}}", "spec.outlierDetection.consecutive5xx", "1-"),
    (
        "{outlierDetection: {maxEjectionPercent: 101}}",
        "spec.outlierDetection.maxEjectionPercent",
        "0-100",
    ),
    ("{outlierDetection: {interval: 10}}", "spec.outlierDetection.interval", "must be a string"),
    ("{outlierDetection: {interval: '-1s'}}", "spec.outlierDetection.interval", "duration"),
    ("{outlierDetection: {interval: 1.0000000001s}}", "spec.outlierDetection.interval", "duration"),
    ("{healthCheck: {timeout: 1s, http: {path: /}}}", "spec.healthCheck.interval", "required"),
    ("{healthCheck: {interval: 1s, timeout: 1s}}", "spec.healthCheck", "exactly one of http, tcp"),
    (
        "{healthCheck: {interval: 1s, timeout: 1s, http: {path: /}, tcp: {}}}",
        "spec.healthCheck",
        "exactly one of http, tcp",
    ),
    (
        "{healthCheck: {interval: 1s, timeout: 1s, http: {}}}",
        "spec.healthCheck.http.path",
        "required",
    ),
    (
        "{healthCheck: {interval: 1s, timeout: 1s, http: {path: /, expectedStatuses: [200, 99]}}}",
        "spec.healthCheck.http.expectedStatuses[1]",
        "100-599",
    ),
    (
        "{healthCheck: {interval: 1s, timeout: 1s, tcp: {send: xyz}}}",
        "spec.healthCheck.tcp.send",
        "hex",
    ),
    (
        "{healthCheck: {interval: 1s, timeout: 1s, tcp: {receive: [abc]}}}",
        "spec.healthCheck.tcp.receive[0]",
        "hex",
    ),
    ("{retry: {codes: [399]}}", "spec.retry.codes[0]", "400-599"),
    ("{retry: {attempts: -1}}", "spec.retry.attempts", "0-"),
    ("{timeouts: {request: 5m}}", "spec.timeouts.request", "duration"),
    (
        "{faultInjection: {delay: {percentage: 5}}}",
        "spec.faultInjection.delay.fixedDelay",
        "required",
    ),
    (
        "{faultInjection: {delay: {fixedDelay: 1s, percentage: 100.5}}}",
        "spec.faultInjection.delay.percentage",
        "0-100",
    ),
    (
        "{faultInjection: {abort: {percentage: 5}}}",
        "spec.faultInjection.abort.httpStatus",
        "required",
    ),
    (
        "{faultInjection: {abort: {httpStatus: 199}}}",
        "spec.faultInjection.abort.httpStatus",
        "200-599",
    ),
    (
        "{faultInjection: {abort: {httpStatus: 500, percentage: '5'}}}",
        "spec.faultInjection.abort.percentage",
        "number",
    ),
    (
        "{faultInjection: {abort: {httpStatus: 500, percentage: .nan}}}",
        "spec.faultInjection.abort.percentage",
        "number",
    ),
    ("{localRateLimit: {fillInterval: 1s}}", "spec.localRateLimit.maxTokens", "required"),
    ("{localRateLimit: {maxTokens: 0, fillInterval: 1s}}", "spec.localRateLimit.maxTokens", "1-"),
    ("{localRateLimit: {maxTokens: 1}}", "spec.localRateLimit.fillInterval", "required"),
    (
        "{localRateLimit: {maxTokens: 1, fillInterval: 1s, tokensPerFill: 0}}",
        "spec.localRateLimit.tokensPerFill",
        "1-",
    ),
    (
        '{loadBalancer: {hashPolicies: [{header: {name: "a\\tb"}}]}}',
        "spec.loadBalancer.hashPolicies[0].header.name",
        "control",
    ),
]


@pytest.mark.parametrize(("spec", "field", "message"), BAD)
def test_bad_policies_name_the_object_and_the_field(spec: str, field: str, message: str) -> None:
    refusal(policy(spec), ObjectKey(Kind.BACKEND_POLICY, "shop", "web-policy"), field, message)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ("{namespace: shop}", "metadata.name"),
        ("{name: web_policy}", "metadata.name"),
        ("{name: p, creationTimestamp: '2024-05-01'}", "metadata.creationTimestamp"),
        ("{name: p, generation: '1'}", "metadata.generation"),
    ],
)
def test_bad_policy_metadata_is_named(metadata: str, field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        convert(policy("{}", metadata))
    assert caught.value.field == field


def test_from_the_api_server_unknown_fields_are_ignored() -> None:
    raw = policy("{connectionPool: {maxConnections: 3, newField: 1}, futureThing: {}}")
    with pytest.raises(ManifestError):
        convert(raw)
    raw["status"] = {"conditions": []}
    value = convert(raw, strict=False)
    assert isinstance(value, BackendPolicy)
    assert value.spec().connection_pool.max_connections.value == 3


# -- what is enforced is what the generated CRD declares -----------------------------------


def _crd_facts() -> dict[str, dict[str, Any]]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    facts: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "array":
            walk(node["items"], path + "[]")
            return
        fact: dict[str, Any] = {}
        for key in ("required", "minimum", "maximum", "enum", "pattern"):
            if key in node:
                fact[key] = node[key]
        if "x-kubernetes-validations" in node:
            fact["rules"] = [rule["message"] for rule in node["x-kubernetes-validations"]]
        if fact:
            facts[path] = fact
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")

    walk(spec, "spec")
    return facts


def test_the_checks_are_the_generated_crds() -> None:
    """A marker added to the .proto (and so to the CRD) but not to MARKERS fails here."""
    assert schema_facts() == _crd_facts()
