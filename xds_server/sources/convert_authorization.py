"""AuthorizationPolicy manifests (`policy.xds-server.dev/v1alpha1`) to model values.

The spec is checked against the generated CRD's schema by the same
descriptor walk as BackendPolicy (`convert_policy.check_message`: structure,
JSON types, enum names, unknown fields under `strict`), then parsed with
protobuf's JSON parser.  What the schema cannot say is checked here, naming
the field, since each of these strings ends up in an Envoy matcher:

- principal, namespace, path and condition values: one `*` at most, at the
  start or the end (Istio's wildcard forms), no empty strings;
- paths start with `/` (or are a suffix pattern `*...`);
- methods are HTTP tokens, ports decimal 1-65535;
- a condition's key is `request.headers[<name>]` (a lowercase header name),
  `source.principal`, `source.namespace` or `destination.port`, with values or
  notValues.

Errors are `ManifestError`s: `AuthorizationPolicy default/web:
spec.rules[0].to[0].operation.paths[0]: must start with "/" or "*", got "admin"`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from xds_server.model.security import AuthorizationPolicy
from xds_server.policy_api import authorization_policy_pb2 as authz_pb2
from xds_server.provenance import Origin
from xds_server.sources.convert_common import object_meta
from xds_server.sources.convert_policy import POLICY_FIELDS, check_message
from xds_server.sources.object_reader import ObjectReader, show

__all__ = ["HEADER_KEY", "authorization_policy"]

logger = logging.getLogger(__name__)

HEADER_KEY = re.compile(r"request\.headers\[([a-z0-9!#$%&'*+.^_`|~-]+)\]")
"""A condition on a request header; the name lowercase, as Envoy sees HTTP/2 headers."""
_SOURCE_KEYS = frozenset({"source.principal", "source.namespace", "destination.port"})
_METHOD = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_PORT = re.compile(r"[1-9][0-9]{0,4}")


def _pattern(obj: ObjectReader, value: str, where: str) -> None:
    if not value:
        obj.fail(where, "must not be empty")
    if "*" in value[1:-1] or value.count("*") > 1:
        obj.fail(where, f'may hold one "*", at the start or the end only, got {show(value)}')


def _path(obj: ObjectReader, value: str, where: str) -> None:
    _pattern(obj, value, where)
    if not value.startswith(("/", "*")):
        obj.fail(where, f'must start with "/" or "*", got {show(value)}')


def _port(obj: ObjectReader, value: str, where: str) -> None:
    if not _PORT.fullmatch(value) or int(value) > 65535:
        obj.fail(where, f"must be a port number 1-65535 (a decimal string), got {show(value)}")


def _method(obj: ObjectReader, value: str, where: str) -> None:
    if not _METHOD.fullmatch(value):
        obj.fail(where, f"must be an HTTP method (GET, POST, ...), got {show(value)}")


def _check_rules(obj: ObjectReader, spec: authz_pb2.AuthorizationPolicySpec) -> None:
    for r, rule in enumerate(spec.rules):
        at = f"spec.rules[{r}]"
        for f, source_from in enumerate(rule.from_):
            source = source_from.source
            where = f"{at}.from[{f}].source"
            for name in ("principals", "not_principals", "namespaces", "not_namespaces"):
                json_name = _camel(name)
                for i, value in enumerate(getattr(source, name)):
                    _pattern(obj, value, f"{where}.{json_name}[{i}]")
        for t, to in enumerate(rule.to):
            operation = to.operation
            where = f"{at}.to[{t}].operation"
            for name, check in (
                ("paths", _path), ("not_paths", _path), ("methods", _method),
                ("not_methods", _method), ("ports", _port), ("not_ports", _port),
            ):  # fmt: skip
                for i, value in enumerate(getattr(operation, name)):
                    check(obj, value, f"{where}.{_camel(name)}[{i}]")
        for c, condition in enumerate(rule.when):
            where = f"{at}.when[{c}]"
            key = condition.key
            if not HEADER_KEY.fullmatch(key) and key not in _SOURCE_KEYS:
                obj.fail(
                    f"{where}.key",
                    'must be "request.headers[<lowercase name>]", "source.principal", '
                    f'"source.namespace" or "destination.port", got {show(key)}',
                )
            if not condition.values and not condition.not_values:
                obj.fail(where, "needs values or notValues")
            check = _port if key == "destination.port" else _pattern
            for name in ("values", "not_values"):
                for i, value in enumerate(getattr(condition, name)):
                    check(obj, value, f"{where}.{_camel(name)}[{i}]")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def authorization_policy(
    obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None
) -> AuthorizationPolicy:
    """An AuthorizationPolicy manifest as a model value (module doc: validation)."""
    obj.mapping(manifest, "", POLICY_FIELDS)
    meta = object_meta(obj, manifest)
    if manifest.get("spec") is None:
        obj.fail("spec", "required")
    raw = obj.mapping(manifest["spec"], "spec")
    check_message(obj, authz_pb2.AuthorizationPolicySpec.DESCRIPTOR, raw, "spec")
    selector = obj.mapping(raw.get("selector"), "spec.selector")
    labels = obj.labels(selector.get("matchLabels"), "spec.selector.matchLabels")
    spec = authz_pb2.AuthorizationPolicySpec()
    try:
        json_format.ParseDict(raw, spec, ignore_unknown_fields=not obj.strict)
    except (json_format.ParseError, ValueError, TypeError) as error:
        obj.fail("spec", str(error).split("\n")[0])
    _check_rules(obj, spec)
    return AuthorizationPolicy(
        namespace=meta.namespace,
        name=meta.name,
        spec_bytes=spec.SerializeToString(deterministic=True),
        selector=tuple(sorted(labels.items())) or None,
        creation_timestamp=meta.creation_timestamp,
        generation=meta.generation,
        origin=origin,
    )
