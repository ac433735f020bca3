"""The policy API: one `.proto` source, and the Python classes and CRD generated from it.

* The checked-in `_pb2` module, its stub and `manifests/crds/backendpolicy.yaml` are what
  `scripts/gen_policy_api.py` writes today, and its `--check` notices when they are not.
* The CRD is one the API server accepts: strict under the official client's model, and
  structural (every node typed, every object with properties).
* The CRD and the classes say the same thing: every proto field is a documented CRD
  property under its JSON name, and a full BackendPolicy passes the CRD's schema and
  round-trips dict -> proto -> dict.
* A mistyped field is rejected naming it, by the classes and by the schema alike.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import google.protobuf
import pytest
import yaml
from google.protobuf import descriptor, json_format
from kubernetes.client import models as k8s

from xds_server.policy_api import backend_policy_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "scripts" / "gen_policy_api.py"
CRD_PATH = REPO / "manifests" / "crds" / "backendpolicy.yaml"
CRD: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
(VERSION,) = CRD["spec"]["versions"]
ROOT: dict[str, Any] = VERSION["schema"]["openAPIV3Schema"]
SPEC: dict[str, Any] = ROOT["properties"]["spec"]

EXAMPLE = yaml.safe_load("""
apiVersion: policy.xds-server.dev/v1alpha1
kind: BackendPolicy
metadata:
  name: reviews
  namespace: shop
spec:
  targetRefs:
    - {kind: Service, name: reviews, namespace: shop}
  loadBalancer:
    algorithm: RingHash
    hashPolicies:
      - header: {name: x-user}
        terminal: true
      - cookie: {name: session, ttl: 3600s, path: /}
      - sourceIp: true
    ringHash: {minimumRingSize: 1024, maximumRingSize: 8192}
    locality:
      enabled: true
      failover:
        - {fromZone: zone-a, toZone: zone-b}
  connectionPool: {maxConnections: 100, maxPendingRequests: 10, maxRequests: 200, maxRetries: 3}
  outlierDetection:
    consecutive5xx: 5
    consecutiveGatewayErrors: 3
    interval: 10s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
  healthCheck:
    interval: 5s
    timeout: 1s
    unhealthyThreshold: 3
    healthyThreshold: 1
    http: {path: /healthz, host: reviews.shop, expectedStatuses: [200, 204]}
  connectTimeout: 0.250s
  retry: {attempts: 3, codes: [502, 503], backoff: 0.025s, perTryTimeout: 2s}
  timeouts: {request: 15s, idle: 300s}
  faultInjection:
    delay: {fixedDelay: 0.500s, percentage: 10.5}
    abort: {httpStatus: 503, percentage: 1}
  localRateLimit: {maxTokens: 100, tokensPerFill: 10, fillInterval: 1s}
""")


# -- freshness -----------------------------------------------------------------------------


def generator(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *argv], capture_output=True, text=True, timeout=60
    )


def test_the_checked_in_classes_and_crd_are_what_the_proto_generates() -> None:
    result = generator("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_with_a_diff_when_a_generated_file_is_stale(tmp_path: Path) -> None:
    for relative in ("xds_server/policy_api", "manifests/crds"):
        shutil.copytree(REPO / relative, tmp_path / relative)
    stale = tmp_path / "manifests/crds/backendpolicy.yaml"
    stale.write_text(stale.read_text().replace("maxEjectionPercent", "maxEjectionPct"))
    (tmp_path / "xds_server/policy_api/backend_policy_pb2.pyi").unlink()
    result = generator("--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert "+++ b/manifests/crds/backendpolicy.yaml" in result.stdout
    assert re.search(r"^-\s+maxEjectionPct:$", result.stdout, re.MULTILINE)
    assert "+++ b/xds_server/policy_api/backend_policy_pb2.pyi" in result.stdout
    assert "gen_policy_api.py" in result.stderr


def test_the_generated_module_runs_on_the_installed_protobuf_runtime() -> None:
    gencode = re.search(r"Protobuf Python Version: (\d+)\.", Path(pb.__file__).read_text())
    assert gencode is not None
    assert gencode.group(1) == google.protobuf.__version__.split(".")[0]
    assert pb.DESCRIPTOR.name == "xds_server/policy/v1alpha1/backend_policy.proto"


def test_the_policy_api_imports_nothing_of_the_project() -> None:
    package = Path(pb.__file__).parent
    for module in [*package.glob("*.py"), *package.glob("*.pyi")]:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("xds_server"), (module.name, name)
                top = name.split(".")[0]
                assert top == "google" or top in sys.stdlib_module_names, (module.name, name)


# -- the CRD -------------------------------------------------------------------------------


def test_the_crd_names_the_kind_and_serves_a_status_subresource() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == "backendpolicies.policy.xds-server.dev"
    spec = CRD["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (
        "policy.xds-server.dev", "Namespaced", "BackendPolicy",
    )  # fmt: skip
    assert (VERSION["name"], VERSION["served"], VERSION["storage"]) == ("v1alpha1", True, True)
    assert VERSION["subresources"] == {"status": {}}
    conditions = ROOT["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    condition = conditions["items"]
    assert set(condition["required"]) == {
        "type", "status", "lastTransitionTime", "reason", "message",
    }  # fmt: skip
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_the_crd_is_valid_for_the_official_clients_model() -> None:
    k8s.V1CustomResourceDefinition.model_validate(CRD)


def nodes(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        found += nodes(child, f"{path}.{name}")
    if "items" in schema:
        found += nodes(schema["items"], f"{path}[]")
    return found


def test_the_crd_schema_is_structural() -> None:
    for path, schema in nodes(ROOT, "$"):
        assert schema.get("type") in ("object", "array", "string", "integer", "number", "boolean")
        if schema["type"] == "object" and path != "$.metadata":
            assert "properties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
        if schema["type"] == "array":
            assert "items" in schema, path
        for combinator in ("oneOf", "anyOf", "allOf", "not"):
            assert combinator not in schema, path  # types may not hide in combinators
        for name in schema.get("required", ()):
            assert name in schema["properties"], (path, name)


def fields(message: descriptor.Descriptor, path: str) -> list[tuple[str, Any]]:
    found = []
    for field in message.fields:
        found.append((f"{path}.{field.json_name}", field))
        nested = field.message_type
        if nested is not None and nested.file is pb.DESCRIPTOR:
            items = "[]" if field.is_repeated else ""
            found += fields(nested, f"{path}.{field.json_name}{items}")
    return found


SCHEMA_AT = dict(nodes(SPEC, "spec")) | dict(nodes(ROOT["properties"]["status"], "status"))


@pytest.mark.parametrize(
    ("path", "field"),
    fields(pb.BackendPolicySpec.DESCRIPTOR, "spec")
    + fields(pb.BackendPolicyStatus.DESCRIPTOR, "status"),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_proto_field_is_a_documented_crd_property(path: str, field: Any) -> None:
    schema = SCHEMA_AT[path]
    assert schema["description"]
    assert (schema["type"] == "array") == field.is_repeated
    if field.message_type is not None and field.message_type.file is pb.DESCRIPTOR:
        item = schema["items"] if schema["type"] == "array" else schema
        assert set(item["properties"]) == {f.json_name for f in field.message_type.fields}


def test_a_oneof_becomes_a_rule_over_its_members() -> None:
    (rule,) = SPEC["properties"]["healthCheck"]["x-kubernetes-validations"]
    assert rule["rule"] == "(has(self.http) ? 1 : 0) + (has(self.tcp) ? 1 : 0) == 1"
    hash_policies = SPEC["properties"]["loadBalancer"]["properties"]["hashPolicies"]["items"]
    (rule,) = hash_policies["x-kubernetes-validations"]
    assert rule["rule"].endswith("<= 1") and "self.sourceIp" in rule["rule"]


def test_an_enum_lists_its_values_but_not_the_unset_zero() -> None:
    algorithm = SPEC["properties"]["loadBalancer"]["properties"]["algorithm"]
    assert algorithm["enum"] == ["RoundRobin", "LeastRequest", "Random", "RingHash", "Maglev"]
    assert "Maglev: Consistent hashing" in algorithm["description"]


# -- the schema and the classes agree ------------------------------------------------------


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float),
}  # fmt: skip


def schema_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """What the API server's schema validation would say (all but CEL rules and formats)."""
    kind = schema["type"]
    if not isinstance(value, JSON_TYPES[kind]) or (kind != "boolean" and isinstance(value, bool)):
        return [f"{path}: not {kind}"]
    errors = []
    if kind == "object":
        properties = schema.get("properties")
        for name in schema.get("required", ()):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, item in value.items():
            if properties is None:
                continue
            if name not in properties:
                errors.append(f"{path}.{name}: unknown field")
            else:
                errors += schema_errors(properties[name], item, f"{path}.{name}")
    if kind == "array":
        for index, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{index}]")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{path}: does not match {schema['pattern']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{path}: below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{path}: above {schema['maximum']}")
    return errors


# What the example cannot show at once (one probe per health check, tuning for one
# algorithm), each shown on its own: (its path in the schema, its class, a value).
FRAGMENTS = [
    (
        "spec.healthCheck",
        pb.HealthCheck,
        {"interval": "5s", "timeout": "1s", "tcp": {"send": "50494e47", "receive": ["504f4e47"]}},
    ),
    (
        "spec.loadBalancer",
        pb.LoadBalancer,
        {"algorithm": "LeastRequest", "leastRequest": {"choiceCount": 3}},
    ),
    (
        "spec.targetRefs[]",
        pb.PolicyTargetReference,
        {"group": "", "kind": "Namespace", "name": "shop"},
    ),
]


def used(value: Any, path: str) -> set[str]:
    """The JSON paths a value sets, in the schema's spelling (`spec.targetRefs[].name`)."""
    if isinstance(value, dict):
        return {f"{path}.{key}" for key in value} | {
            found for key, item in value.items() for found in used(item, f"{path}.{key}")
        }
    if isinstance(value, list):
        return {found for item in value for found in used(item, f"{path}[]")}
    return set()


def test_the_example_and_the_fragments_use_every_spec_field() -> None:
    shown = used(EXAMPLE["spec"], "spec")
    for where, _, value in FRAGMENTS:
        shown |= used(value, where)
    assert {path for path, _ in fields(pb.BackendPolicySpec.DESCRIPTOR, "spec")} <= shown


@pytest.mark.parametrize(("where", "message", "value"), FRAGMENTS, ids=[f[0] for f in FRAGMENTS])
def test_a_fragment_passes_the_schema_and_round_trips(
    where: str, message: type[Any], value: dict[str, Any]
) -> None:
    schema = SPEC
    for name in where.split(".")[1:]:
        schema = schema["properties"][name.removesuffix("[]")]
        if name.endswith("[]"):
            schema = schema["items"]
    assert schema_errors(schema, value, where) == []
    # proto3 keeps no empty string: empty and unset are one value (for group: the core group).
    kept = {key: item for key, item in value.items() if item != ""}
    assert json_format.MessageToDict(json_format.ParseDict(value, message())) == kept


def test_a_backend_policy_passes_the_crd_schema() -> None:
    assert schema_errors(ROOT, EXAMPLE, "$") == []


def test_a_backend_policy_round_trips_through_the_generated_classes() -> None:
    spec = json_format.ParseDict(EXAMPLE["spec"], pb.BackendPolicySpec())
    assert spec.load_balancer.algorithm == pb.LoadBalancer.RingHash
    assert spec.load_balancer.hash_policies[2].WhichOneof("source") == "source_ip"
    assert spec.connect_timeout.ToMilliseconds() == 250
    assert spec.connection_pool.max_connections.value == 100
    assert json_format.MessageToDict(spec) == EXAMPLE["spec"]


def test_unset_wrappers_stay_distinguishable_from_zero() -> None:
    spec = json_format.ParseDict({"connectionPool": {"maxRetries": 0}}, pb.BackendPolicySpec())
    assert spec.connection_pool.HasField("max_retries")
    assert not spec.connection_pool.HasField("max_connections")
    assert json_format.MessageToDict(spec) == {"connectionPool": {"maxRetries": 0}}


@pytest.mark.parametrize(
    ("spec", "field", "schema_error"),
    [
        ({"loadBalancr": {}}, "loadBalancr", "spec.loadBalancr: unknown field"),
        (
            {"loadBalancer": {"algorithm": "RingHash", "hashPolicy": []}},
            "hashPolicy",
            "spec.loadBalancer.hashPolicy: unknown field",
        ),
        (
            {"targetRefs": [{"kind": "Service", "name": "a", "namespce": "b"}]},
            "namespce",
            "spec.targetRefs[0].namespce: unknown field",
        ),
        (
            {"loadBalancer": {"algorithm": "Fastest"}},
            "Fastest",
            "spec.loadBalancer.algorithm: not one of",
        ),
        ({"connectTimeout": "250ms"}, "connectTimeout", "spec.connectTimeout: does not match"),
    ],
    ids=["unknown", "nested unknown", "unknown in a list", "enum value", "duration"],
)
def test_a_mistake_is_rejected_naming_the_field(
    spec: dict[str, Any], field: str, schema_error: str
) -> None:
    with pytest.raises(json_format.ParseError, match=field):
        json_format.ParseDict(spec, pb.BackendPolicySpec())
    (error,) = schema_errors(SPEC, spec, "spec")
    assert error.startswith(schema_error)
