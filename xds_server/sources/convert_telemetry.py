"""Telemetry manifests (`policy.xds-server.dev/v1alpha1`) to model values.

The spec is checked against the generated `TelemetrySpec` the way the CRD's
schema checks it (`convert_policy.check_message`: types, enum values, the
port and sampling bounds, the custom tag's one source), and beyond the
schema for what Envoy would otherwise refuse on a running sidecar:

* `spec.tracing.collector` is HOST:PORT, the host an IP address or a DNS
  name, the port 1-65535 (it becomes a cluster's endpoint);
* `spec.tracing.customTags` keys are non-empty, header names are HTTP header
  names and environment variable names are shell identifiers;
* `spec.accessLogging.filter.expression` is not blank (Envoy parses the CEL
  itself; an expression it refuses is a NACK named on this Telemetry).

Errors are `ManifestError`s naming the object and the field:
`Telemetry default/web: spec.tracing.collector: must be HOST:PORT, got "otel"`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from xds_server.model.telemetry import Telemetry
from xds_server.policy_api import telemetry_pb2
from xds_server.provenance import Origin
from xds_server.sources.convert_common import object_meta
from xds_server.sources.convert_policy import POLICY_FIELDS, check_message
from xds_server.sources.object_reader import ObjectReader, show

__all__ = ["telemetry"]

_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)
_HEADER = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_collector(obj: ObjectReader, value: Any, where: str) -> None:
    text = obj.string(value, where)
    if not text:
        return
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
        known_host = True
    except ValueError:
        known_host = bool(_DNS_NAME.fullmatch(host))
    if not known_host or not port.isdigit() or not 1 <= int(port) <= 65535:
        obj.fail(where, f"must be HOST:PORT (an IP address or DNS name, port 1-65535), "
                 f"got {show(text)}")  # fmt: skip


def _check_tags(obj: ObjectReader, value: Any, where: str) -> None:
    for tag, raw in obj.mapping(value, where).items():
        at = f"{where}.{tag}"
        if not str(tag).strip():
            obj.fail(at, "a tag name must not be empty")
        check_message(obj, telemetry_pb2.TelemetryCustomTag.DESCRIPTOR, raw, at)
        header = obj.mapping(obj.mapping(raw, at).get("header"), f"{at}.header")
        name = header.get("name")
        if name is not None and not _HEADER.fullmatch(str(name)):
            obj.fail(f"{at}.header.name", f"must be an HTTP header name, got {show(name)}")
        env = obj.mapping(obj.mapping(raw, at).get("environment"), f"{at}.environment")
        name = env.get("name")
        if name is not None and not _ENV.fullmatch(str(name)):
            obj.fail(
                f"{at}.environment.name", f"must be an environment variable name, got {show(name)}"
            )


def telemetry(obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None) -> Telemetry:
    """A Telemetry manifest as a model value (module doc: validation)."""
    obj.mapping(manifest, "", POLICY_FIELDS)
    meta = object_meta(obj, manifest)
    raw = obj.mapping(manifest.get("spec") or {}, "spec")
    tracing = obj.mapping(raw.get("tracing"), "spec.tracing")
    shallow = dict(raw)
    if "tracing" in raw:
        shallow["tracing"] = {k: v for k, v in tracing.items() if k != "customTags"}
    check_message(obj, telemetry_pb2.TelemetrySpec.DESCRIPTOR, shallow, "spec")
    _check_tags(obj, tracing.get("customTags"), "spec.tracing.customTags")
    _check_collector(obj, tracing.get("collector"), "spec.tracing.collector")
    access = obj.mapping(raw.get("accessLogging"), "spec.accessLogging")
    log_filter = obj.mapping(access.get("filter"), "spec.accessLogging.filter")
    expression = log_filter.get("expression")
    if expression is not None and not str(expression).strip():
        obj.fail("spec.accessLogging.filter.expression", "must not be blank")
    selector = obj.mapping(raw.get("selector"), "spec.selector")
    labels = obj.labels(selector.get("matchLabels"), "spec.selector.matchLabels")
    spec = telemetry_pb2.TelemetrySpec()
    try:
        json_format.ParseDict(raw, spec, ignore_unknown_fields=not obj.strict)
    except (json_format.ParseError, ValueError, TypeError) as error:
        obj.fail("spec", str(error).split("\n")[0])
    return Telemetry(
        namespace=meta.namespace,
        name=meta.name,
        spec_bytes=spec.SerializeToString(deterministic=True),
        selector=tuple(sorted(labels.items())) or None,
        creation_timestamp=meta.creation_timestamp,
        generation=meta.generation,
        origin=origin,
    )
