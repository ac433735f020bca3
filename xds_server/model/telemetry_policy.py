"""The effective telemetry of a workload's sidecar, from the Telemetries governing it.

Istio's hierarchy, resolved once here so that translation only renders: a
Telemetry in the workload's namespace whose selector matches its labels
(workload level) is more specific than a namespace-wide one (no selector),
which is more specific than a mesh-wide one (the root namespace, no
selector); among Telemetries of one level the oldest (creation timestamp,
then name) governs, as for PeerAuthentication.  The levels are merged field
by field: each field of each section (`accessLogging`, `metrics`, `tracing`)
comes from the most specific Telemetry that sets it, so a namespace can
change the sampling rate and keep the mesh's collector.  A repeated or map
field (`fields`, `customTags`) is set when non-empty and taken whole; the
access log `filter` is one field.

What a section means once merged:

* access logging: absent everywhere, the sidecar keeps its built-in text log
  (so adopting Telemetry changes nothing until asked); `disabled`, no log at
  all; otherwise JSON lines with `fields` (`DEFAULT_FIELDS` when none),
  optionally filtered;
* metrics: present and not `disabled`, a stats listener on `port` (else the
  node's `STATS_PORT`, else 15090: `translate.telemetry`);
* tracing: present, not `disabled` and with a `collector`, the OpenTelemetry
  tracer at `randomSamplingPercentage` (1 when unset) with `customTags`.

`mesh.telemetries_in(namespace)` is the one read of the table; the pipeline's
`TrackedMesh` notes `("ns", Kind.TELEMETRY, ns)` for it, so a Telemetry change
re-translates the proxies of its namespace (every proxy, for the root
namespace): exactly those it may govern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import Message

from xds_server.model.changes import Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.security import selects
from xds_server.model.status_conditions import ACCEPTED, REASON_ACCEPTED, Condition, ObjectStatus
from xds_server.model.telemetry import Telemetry
from xds_server.model.types import Labels
from xds_server.policy_api import telemetry_pb2

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_SAMPLING_PERCENTAGE",
    "AccessLogging",
    "CustomTag",
    "EffectiveTelemetry",
    "Tracing",
    "effective_telemetry",
    "spec_of",
    "telemetry_status",
]

_Field = telemetry_pb2.TelemetryAccessLogField

DEFAULT_FIELDS: tuple[str, ...] = tuple(
    name.lower()
    for name in (value.name for value in _Field.DESCRIPTOR.values)
    if name not in ("FIELD_UNSPECIFIED", "USER_AGENT", "AUTHORITY", "DOWNSTREAM_REMOTE_ADDRESS")
)
"""The fields of a line when a Telemetry selects none: Istio's spirit (timing, request,
response, bytes, upstream, request id, caller and callee identity, route)."""
DEFAULT_SAMPLING_PERCENTAGE = 1.0
"""Istio's default random sampling."""


@dataclass(frozen=True, slots=True)
class AccessLogging:
    """JSON access lines with `fields` (lower-case names), optionally filtered."""

    fields: tuple[str, ...] = DEFAULT_FIELDS
    expression: str | None = None
    """A CEL expression a request must satisfy to be logged."""
    errors_only: bool = False


@dataclass(frozen=True, slots=True)
class CustomTag:
    """One span tag: a `literal` value, or a request `header` or `environment` variable."""

    tag: str
    kind: str
    """literal, header or environment."""
    value: str
    """The literal, or the header's or variable's name."""
    default_value: str = ""


@dataclass(frozen=True, slots=True)
class Tracing:
    collector: str
    """HOST:PORT of the OTLP gRPC collector."""
    sampling_percentage: float = DEFAULT_SAMPLING_PERCENTAGE
    custom_tags: tuple[CustomTag, ...] = ()


@dataclass(frozen=True, slots=True)
class EffectiveTelemetry:
    """What one sidecar reports (module doc)."""

    access_logging: AccessLogging | None = None
    """None: the built-in text access log (unless `access_log_disabled`)."""
    access_log_disabled: bool = False
    metrics: bool = False
    """Whether the sidecar serves its Prometheus stats on a port."""
    stats_port: int | None = None
    """The Telemetry's port; None: the node's STATS_PORT, else 15090."""
    tracing: Tracing | None = None
    governing: tuple[Telemetry, ...] = ()
    """Most specific first: the sources of what the sidecar was given."""


NO_TELEMETRY = EffectiveTelemetry()


def spec_of(policy: Telemetry) -> telemetry_pb2.TelemetrySpec:
    spec = telemetry_pb2.TelemetrySpec()
    spec.ParseFromString(policy.spec_bytes)
    return spec


def _age(policy: Telemetry) -> tuple[bool, str, str]:
    # No timestamp (a file without one) sorts after any timestamp, then by name.
    stamp = policy.creation_timestamp
    return (stamp is None, stamp or "", policy.name)


def _oldest(policies: list[Telemetry]) -> Telemetry | None:
    return min(policies, key=_age) if policies else None


def governing(mesh: MeshSnapshot, namespace: str, labels: Labels) -> tuple[Telemetry, ...]:
    """The Telemetries governing a workload of `namespace` with `labels`, most specific
    first: its workload, namespace and mesh levels (each at most one)."""
    local = mesh.telemetries_in(namespace)
    selected = [p for p in local if p.selector and selects(p.selector, labels)]
    namespace_wide = [p for p in local if not p.selector]
    if namespace == mesh.root_namespace:
        mesh_wide, namespace_wide = namespace_wide, []
    else:
        root = mesh.telemetries_in(mesh.root_namespace)
        mesh_wide = [p for p in root if not p.selector]
    levels = (_oldest(selected), _oldest(namespace_wide), _oldest(mesh_wide))
    return tuple(p for p in levels if p is not None)


M = TypeVar("M", bound=Message)


def _merged(sections: Sequence[M], empty: M) -> M:
    """`empty` filled field by field from the first of `sections` that sets each field."""
    for field in empty.DESCRIPTOR.fields:
        for section in sections:
            if field.is_repeated:
                if len(getattr(section, field.name)):
                    getattr(empty, field.name).MergeFrom(getattr(section, field.name))
                    break
            elif (
                section.HasField(field.name) if field.has_presence else getattr(section, field.name)
            ):
                if field.message_type is not None:
                    getattr(empty, field.name).CopyFrom(getattr(section, field.name))
                else:
                    setattr(empty, field.name, getattr(section, field.name))
                break
    return empty


def effective_telemetry(mesh: MeshSnapshot, namespace: str, labels: Labels) -> EffectiveTelemetry:
    """What a sidecar of `namespace` with `labels` reports (module doc)."""
    policies = governing(mesh, namespace, labels)
    if not policies:
        return NO_TELEMETRY
    specs = [spec_of(p) for p in policies]
    logging_sections = [s.access_logging for s in specs if s.HasField("access_logging")]
    metrics_sections = [s.metrics for s in specs if s.HasField("metrics")]
    tracing_sections = [s.tracing for s in specs if s.HasField("tracing")]
    access, disabled = None, False
    if logging_sections:
        merged = _merged(logging_sections, telemetry_pb2.TelemetryAccessLogging())
        disabled = merged.disabled.value
        if not disabled:
            access = _access_logging(merged)
    metrics, port = False, None
    if metrics_sections:
        merged_metrics = _merged(metrics_sections, telemetry_pb2.TelemetryMetrics())
        metrics = not merged_metrics.disabled.value
        if merged_metrics.HasField("port"):
            port = merged_metrics.port.value
    tracing = None
    if tracing_sections:
        merged_tracing = _merged(tracing_sections, telemetry_pb2.TelemetryTracing())
        if not merged_tracing.disabled.value and merged_tracing.collector:
            tracing = _tracing(merged_tracing)
    return EffectiveTelemetry(access, disabled, metrics, port, tracing, policies)


def _access_logging(merged: telemetry_pb2.TelemetryAccessLogging) -> AccessLogging:
    fields = tuple(_Field.Name(f).lower() for f in merged.fields if f) or DEFAULT_FIELDS
    kind = merged.filter.WhichOneof("kind")
    return AccessLogging(
        fields=tuple(dict.fromkeys(fields)),
        expression=merged.filter.expression if kind == "expression" else None,
        errors_only=kind == "errors_only" and merged.filter.errors_only,
    )


def _tracing(merged: telemetry_pb2.TelemetryTracing) -> Tracing:
    tags = []
    for tag in sorted(merged.custom_tags):
        value = merged.custom_tags[tag]
        kind = value.WhichOneof("type")
        if kind == "literal":
            tags.append(CustomTag(tag, "literal", value.literal.value))
        elif kind == "header":
            tags.append(CustomTag(tag, "header", value.header.name, value.header.default_value))
        elif kind == "environment":
            env = value.environment
            tags.append(CustomTag(tag, "environment", env.name, env.default_value))
    sampling = (
        merged.random_sampling_percentage.value
        if merged.HasField("random_sampling_percentage")
        else DEFAULT_SAMPLING_PERCENTAGE
    )
    return Tracing(merged.collector, sampling, tuple(tags))


def _scope(policy: Telemetry, root_namespace: str) -> str:
    if policy.selector:
        shown = ",".join(f"{key}={value}" for key, value in policy.selector)
        return f"governs the workloads of {policy.namespace} labelled {shown}"
    if policy.namespace == root_namespace:
        return "governs every workload of the mesh (root namespace, no selector)"
    return f"governs every workload of {policy.namespace}"


def _sections(spec: telemetry_pb2.TelemetrySpec) -> str:
    said = []
    if spec.HasField("access_logging"):
        said.append("access logging")
    if spec.HasField("metrics"):
        said.append("metrics")
    if spec.HasField("tracing"):
        said.append("tracing")
    return ", ".join(said) or "nothing"


def telemetry_status(policy: Telemetry, mesh: MeshSnapshot) -> ObjectStatus:
    """Accepted (it was read, so it is valid), saying what it sets and whom it governs."""
    scope = _scope(policy, mesh.root_namespace)
    message = f"sets {_sections(spec_of(policy))}: {scope}"
    condition = Condition(ACCEPTED, "True", REASON_ACCEPTED, message, policy.generation)
    key = ObjectKey(Kind.TELEMETRY, policy.namespace, policy.name)
    return ObjectStatus(key, policy.generation, (condition,), origin=policy.origin)
