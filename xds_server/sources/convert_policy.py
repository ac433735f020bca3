"""BackendPolicy manifests (`policy.xds-server.dev/v1alpha1`) to model values.

The spec is read into the generated `BackendPolicySpec` message with
protobuf's own JSON parser (`json_format.ParseDict`), so the proto3 JSON
mapping (camelCase names, durations as "5s" / "0.250s", wrapper types, enum
names) is protobuf's, not ours.  Before it, the spec is checked against what
the generated CRD (`manifests/crds/backendpolicy.yaml`) makes the API server
enforce, field by field and naming each field's JSON path
(`spec.connectionPool.maxConnections`):

- the structure and JSON types of the messages (from the message
  descriptors: the CRD's schema is generated from the same `.proto`); under
  `strict`, a field the schema does not define, or a field spelled with its
  proto name (`connect_timeout`), is an error naming it;
- enum values by name, never the zero `*_UNSPECIFIED` value (the CRD's
  enum leaves it out) and never a number;
- the `.proto` file's schema markers, which the descriptors do not carry and
  `MARKERS` restates: `+required`, `+minimum`, `+maximum`, and `+required` on
  a oneof; `tests/test_convert_policy.py` checks `schema_facts()` against the
  generated CRD, so the two cannot drift apart unnoticed;
- every oneof: at most one field (exactly one for a required oneof), the CRD's
  CEL rule, with its message;
- durations in the CRD's pattern, unsigned integers within 32 bits, and every
  string free of control characters (strings reach Envoy).

Errors are `ManifestError`s naming the object and the field, as `convert`
words them: `BackendPolicy default/web: spec.loadBalancer.leastRequest.choiceCount:
must be an integer 2-4294967295, got 1`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from xds_server.model.policy import BackendPolicy
from xds_server.policy_api import backend_policy_pb2
from xds_server.provenance import Origin
from xds_server.sources.convert_common import object_meta
from xds_server.sources.object_reader import ObjectReader, show
from xds_server.sources.schema import Fields

__all__ = [
    "MARKERS",
    "POLICY_API_VERSION",
    "POLICY_GROUP",
    "Marker",
    "backend_policy",
    "check_message",
    "schema_facts",
]

logger = logging.getLogger(__name__)

POLICY_GROUP = "policy.xds-server.dev"
POLICY_API_VERSION = f"{POLICY_GROUP}/v1alpha1"
_PACKAGE = "xds_server.policy.v1alpha1"

POLICY_FIELDS: Fields = {
    "apiVersion": "string", "kind": "string", "metadata": "mapping", "spec": "mapping",
    "status": "mapping",
}  # fmt: skip


@dataclass(frozen=True)
class Marker:
    """A `.proto` schema marker on one field (on each item of a repeated one)."""

    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    hex: bool = False
    """Beyond the CRD: hex-encoded bytes (Envoy refuses anything else at load time)."""


MARKERS: dict[str, Marker] = {
    f"{_PACKAGE}.{name}": marker
    for name, marker in {
        "PolicyTargetReference.kind": Marker(required=True),
        "PolicyTargetReference.name": Marker(required=True),
        "HeaderHash.name": Marker(required=True),
        "CookieHash.name": Marker(required=True),
        "LeastRequestConfig.choice_count": Marker(minimum=2),
        "RingHashConfig.minimum_ring_size": Marker(minimum=1),
        "RingHashConfig.maximum_ring_size": Marker(minimum=1),
        "LocalityFailover.from_zone": Marker(required=True),
        "LocalityFailover.to_zone": Marker(required=True),
        "OutlierDetection.consecutive_5xx": Marker(minimum=1),
        "OutlierDetection.consecutive_gateway_errors": Marker(minimum=1),
        "OutlierDetection.max_ejection_percent": Marker(maximum=100),
        "HealthCheck.interval": Marker(required=True),
        "HealthCheck.timeout": Marker(required=True),
        "HealthCheck.unhealthy_threshold": Marker(minimum=1),
        "HealthCheck.healthy_threshold": Marker(minimum=1),
        "HttpHealthCheck.path": Marker(required=True),
        "HttpHealthCheck.expected_statuses": Marker(minimum=100, maximum=599),
        "RetryPolicy.codes": Marker(minimum=400, maximum=599),
        "FaultDelay.fixed_delay": Marker(required=True),
        "FaultDelay.percentage": Marker(minimum=0, maximum=100),
        "FaultAbort.http_status": Marker(required=True, minimum=200, maximum=599),
        "FaultAbort.percentage": Marker(minimum=0, maximum=100),
        "LocalRateLimit.max_tokens": Marker(required=True, minimum=1),
        "LocalRateLimit.tokens_per_fill": Marker(minimum=1),
        "LocalRateLimit.fill_interval": Marker(required=True),
        "TcpHealthCheck.send": Marker(hex=True),
        "TcpHealthCheck.receive": Marker(hex=True),
        "AuthorizationFrom.source": Marker(required=True),
        "AuthorizationTo.operation": Marker(required=True),
        "AuthorizationCondition.key": Marker(required=True),
        "TelemetryMetrics.port": Marker(minimum=1, maximum=65535),
        "TelemetryTracing.random_sampling_percentage": Marker(minimum=0, maximum=100),
        "TelemetryLiteral.value": Marker(required=True),
        "TelemetryHeader.name": Marker(required=True),
        "TelemetryEnvironment.name": Marker(required=True),
    }.items()
}
"""The `+` markers of the policy protos' spec messages, by field full name."""
REQUIRED_ONEOFS = frozenset(
    {f"{_PACKAGE}.HealthCheck.probe", f"{_PACKAGE}.TelemetryCustomTag.type"}
)
"""Oneofs marked `+required`: exactly one of their fields."""

_DURATION = re.compile(r"[0-9]+(\.[0-9]{1,9})?s")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_MAX_DURATION_S = 315_576_000_000  # google.protobuf.Duration's range
_UINT32_MAX = 2**32 - 1
_INT32 = (-(2**31), 2**31 - 1)
_WRAPPERS = {
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
}
_DURATION_TYPE = "google.protobuf.Duration"


def _scalar_type(field: FieldDescriptor) -> int:
    """The JSON-relevant type of a field: a wrapper counts as what it wraps."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return int(_WRAPPERS.get(field.message_type.full_name, FieldDescriptor.TYPE_MESSAGE))
    return int(field.type)


def _check_scalar(
    obj: ObjectReader, field: FieldDescriptor, value: Any, where: str, marker: Marker
) -> None:
    kind = _scalar_type(field)
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == (
        _DURATION_TYPE
    ):
        text = obj.string(value, where)
        if text is not None and (
            not _DURATION.fullmatch(text) or float(text[:-1]) > _MAX_DURATION_S
        ):
            obj.fail(
                where,
                f'must be a duration in seconds with an "s" suffix, e.g. "5s" or "0.250s", '
                f"got {show(text)}",
            )
        return
    if kind == FieldDescriptor.TYPE_STRING:
        text = obj.text(value, where)
        if marker.hex and text and not _HEX.fullmatch(text):
            obj.fail(where, f"must be hex-encoded bytes (pairs of 0-9, a-f), got {show(text)}")
    elif kind == FieldDescriptor.TYPE_BOOL:
        obj.boolean(value, where)
    elif kind == FieldDescriptor.TYPE_ENUM:
        # As the CRD's schema: all but a zero spelled `*_UNSPECIFIED` (Istio's UNSET stays).
        allowed = frozenset(
            v.name
            for v in field.enum_type.values
            if not (v.number == 0 and v.name.endswith("_UNSPECIFIED"))
        )
        obj.one_of(value, where, allowed, "")
    elif kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        low = 0 if marker.minimum is None else int(marker.minimum)
        high = _UINT32_MAX if marker.maximum is None else int(marker.maximum)
        obj.integer(value, where, low, high)
    elif kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        low = _INT32[0] if marker.minimum is None else int(marker.minimum)
        high = _INT32[1] if marker.maximum is None else int(marker.maximum)
        obj.integer(value, where, low, high)
    elif kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        least = -math.inf if marker.minimum is None else marker.minimum
        most = math.inf if marker.maximum is None else marker.maximum
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not least <= value <= most
        ):
            bounds = f" {_number(least)}-{_number(most)}" if math.isfinite(least + most) else ""
            obj.fail(where, f"must be a number{bounds}, got {show(value)}")
    else:  # pragma: no cover - the generator refuses other types in the spec
        obj.fail(where, f"unsupported field type {kind}")


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def check_message(obj: ObjectReader, descriptor: Descriptor, value: Any, path: str) -> None:
    """`value` (JSON) is a valid `descriptor` message under the CRD's schema."""
    raw = obj.mapping(value, path)
    by_json = {field.json_name: field for field in descriptor.fields}
    for name in raw:
        if name not in by_json and obj.strict:
            obj.fail(f"{path}.{name}", "unknown field")
    for field in descriptor.fields:
        marker = MARKERS.get(field.full_name, Marker())
        where = f"{path}.{field.json_name}"
        item = raw.get(field.json_name)
        if item is None:
            if marker.required:
                obj.fail(where, "required")
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, element in obj.mapping(item, where).items():
                obj.text(element, f"{where}.{key}")
        elif field.is_repeated:
            for i, element in enumerate(obj.sequence(item, where)):
                _check_value(obj, field, element, f"{where}[{i}]", marker)
        else:
            _check_value(obj, field, item, where, marker)
    for oneof in descriptor.oneofs:
        present = [f.json_name for f in oneof.fields if raw.get(f.json_name) is not None]
        names = ", ".join(f.json_name for f in oneof.fields)
        if oneof.full_name in REQUIRED_ONEOFS and len(present) != 1:
            obj.fail(path, f"exactly one of {names} must be set, got {len(present)}")
        if len(present) > 1:
            obj.fail(f"{path}.{present[1]}", f"at most one of {names} may be set")


def _check_value(
    obj: ObjectReader, field: FieldDescriptor, value: Any, where: str, marker: Marker
) -> None:
    if _scalar_type(field) == FieldDescriptor.TYPE_MESSAGE and (
        field.message_type.full_name != _DURATION_TYPE
    ):
        check_message(obj, field.message_type, value, where)
    else:
        _check_scalar(obj, field, value, where, marker)


_PARSE_PATH = re.compile(r'at "BackendPolicySpec\.?([^"]*)"')


def _parse(obj: ObjectReader, spec: Mapping[str, Any]) -> backend_policy_pb2.BackendPolicySpec:
    message = backend_policy_pb2.BackendPolicySpec()
    try:
        json_format.ParseDict(spec, message, ignore_unknown_fields=not obj.strict)
    except (json_format.ParseError, ValueError, TypeError) as error:
        text = str(error)
        match = _PARSE_PATH.search(text)
        where = f"spec.{match.group(1)}" if match and match.group(1) else "spec"
        obj.fail(where, text.split("\n")[0])
    return message


def backend_policy(
    obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None
) -> BackendPolicy:
    """A BackendPolicy manifest as a model value (module doc: validation)."""
    obj.mapping(manifest, "", POLICY_FIELDS)
    meta = object_meta(obj, manifest)
    if manifest.get("spec") is None:
        obj.fail("spec", "required")
    spec = obj.mapping(manifest["spec"], "spec")
    check_message(obj, backend_policy_pb2.BackendPolicySpec.DESCRIPTOR, spec, "spec")
    return BackendPolicy.of(
        meta.namespace,
        meta.name,
        _parse(obj, spec),
        creation_timestamp=meta.creation_timestamp,
        generation=meta.generation,
        origin=origin,
    )


def schema_facts() -> dict[str, dict[str, Any]]:
    """What this module enforces, per JSON path of the spec (`[]` for list items), in the
    CRD's terms: `required`, `minimum`, `maximum`, `enum`, `pattern` and the oneof rules.

    For comparison with the generated CRD (tests), not used in conversion.
    """
    facts: dict[str, dict[str, Any]] = {}

    def walk(descriptor: Descriptor, path: str) -> None:
        node = facts.setdefault(path, {})
        required = [
            f.json_name for f in descriptor.fields if MARKERS.get(f.full_name, Marker()).required
        ]
        if required:
            node["required"] = required
        rules = []
        for oneof in descriptor.oneofs:
            names = ", ".join(f.json_name for f in oneof.fields)
            exact = oneof.full_name in REQUIRED_ONEOFS
            rules.append(
                f"exactly one of {names} must be set"
                if exact
                else f"at most one of {names} may be set"
            )
        if rules:
            node["rules"] = rules
        for field in descriptor.fields:
            where = f"{path}.{field.json_name}"
            if field.is_repeated:
                where += "[]"
            if _scalar_type(field) == FieldDescriptor.TYPE_MESSAGE and (
                field.message_type.full_name != _DURATION_TYPE
            ):
                walk(field.message_type, where)
                continue
            leaf = facts.setdefault(where, {})
            marker = MARKERS.get(field.full_name, Marker())
            kind = _scalar_type(field)
            if kind == FieldDescriptor.TYPE_MESSAGE:  # a Duration
                leaf["pattern"] = f"^{_DURATION.pattern}$"
            elif kind == FieldDescriptor.TYPE_ENUM:
                leaf["enum"] = [v.name for v in field.enum_type.values if v.number != 0]
            elif kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
                leaf["minimum"] = 0 if marker.minimum is None else marker.minimum
                leaf["maximum"] = _UINT32_MAX if marker.maximum is None else marker.maximum
            elif marker.minimum is not None or marker.maximum is not None:
                if marker.minimum is not None:
                    leaf["minimum"] = marker.minimum
                if marker.maximum is not None:
                    leaf["maximum"] = marker.maximum

    walk(backend_policy_pb2.BackendPolicySpec.DESCRIPTOR, "spec")
    return {path: node for path, node in facts.items() if node}
