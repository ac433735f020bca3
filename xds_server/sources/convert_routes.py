"""Gateway API HTTPRoute and GRPCRoute manifests to mesh model values (GAMMA).

This module owns reading `gateway.networking.k8s.io/v1` HTTPRoute and
GRPCRoute objects, as YAML gives them or the API server returns them, into
`xds_server.model.routes`.  The schema is the upstream CRDs' at
`GATEWAY_API_VERSION` (the project pins it; the kind script installs that
release's CRDs, which the project does not copy), standard channel, plus
`rules[].retry` from the experimental channel, which the mesh implements.

Defaults are applied as the API server applies the CRD's, so translation
never has to know them: an HTTPRoute without `rules` has one rule; a rule
without `matches` (or with an empty list) matches path prefix `/`; a match
without `path` matches prefix `/`; a path without `type` is `PathPrefix`,
without `value` is `/`; header and query matches are `Exact`; a gRPC method
match is `Exact`; a backendRef weighs 1 and is a core `Service`; a parentRef
without `group`/`kind` is a `gateway.networking.k8s.io` `Gateway` (so a mesh
route names `group: ""` and `kind: Service`, as GAMMA routes do); a redirect
answers 302; a mirror's `fraction` has denominator 100 and becomes a
percentage.

Validation is the CRD schema's and its CEL rules': required fields, enums,
lengths and patterns (names, hostnames, header names, path characters),
ranges (weight 0-1,000,000, ports 1-65535, mirror percent 0-100, retry codes
400-599 and attempts >= 1), list caps (16 rules, 64 matches a rule and 128
in all, 16 filters, 16 backendRefs, 16 hostnames, 32 parentRefs), unique keys
of map-like lists (header names, query names), GEP-2257 durations, a
backend request timeout no longer than the request timeout, a filter whose
`type` names the one filter field set, the filters that may not repeat or
combine, `ReplacePrefixMatch` only with a single `PathPrefix` match, a
Service backend with a port, and sectionName rules for repeated parents.
Beyond the CRD: regular expressions must compile as RE2 patterns (Envoy's
engine; checked as Python's `re` after rewriting RE2-only syntax, with the
constructs RE2 lacks, such as backreferences and lookarounds, refused), and
the `CORS` and `ExtensionRef` filters, which the API allows but the mesh does
not implement, are refused naming the filter rather than silently ignored.
Under `strict`, a field the schema does not define is an error naming it
(the experimental channel's other fields, such as `sessionPersistence`,
included: the mesh does not implement them); from the API server (not strict)
such fields are ignored.

Every error is a `ManifestError` naming the object and the field, as
`convert` words them: `HTTPRoute default/web: spec.rules[0].backendRefs[1].weight:
must be an integer 0-1000000, got -1`.

This module reads the route as a whole (metadata, parentRefs, hostnames,
rules, timeouts, retry); the schema's patterns, caps, field tables and value
readers are `convert_route_schema`'s, a rule's matches, filters and
backendRefs are `convert_route_parts`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from xds_server.model.routes import (
    GRPCRoute,
    GRPCRouteMatch,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    ParentRef,
    RouteRetry,
    RouteTimeouts,
)
from xds_server.provenance import Origin
from xds_server.sources.convert_common import object_meta
from xds_server.sources.convert_route_parts import (
    backend_refs,
    grpc_match,
    http_match,
    replaces_prefix,
    route_filters,
)
from xds_server.sources.convert_route_schema import (
    FILTER_FIELDS,
    GROUP_PATTERN,
    GRPC_FILTER_FIELDS,
    GRPC_FILTER_TYPES,
    GRPC_MATCH_FIELDS,
    GRPC_RULE_FIELDS,
    GRPC_SPEC_FIELDS,
    HOSTNAME_PATTERN,
    HTTP_FILTER_TYPES,
    HTTP_MATCH_FIELDS,
    HTTP_RULE_FIELDS,
    HTTP_SPEC_FIELDS,
    KIND_PATTERN,
    MAX_HOSTNAMES,
    MAX_MATCHES,
    MAX_MATCHES_IN_ALL,
    MAX_PARENT_REFS,
    MAX_RULES,
    NAMESPACE_PATTERN,
    PARENT_REF_FIELDS,
    PRECISE_HOSTNAME_PATTERN,
    RETRY_FIELDS,
    ROUTE_FIELDS,
    TIMEOUTS_FIELDS,
    check_unique,
    duration_field,
    items_of,
    parse_duration,
    regex_problem,
    required_text,
    text_field,
)
from xds_server.sources.object_reader import ObjectReader
from xds_server.sources.schema import Fields

__all__ = [
    "GATEWAY_API_GROUP",
    "GATEWAY_API_VERSION",
    "GATEWAY_API_VERSION_V1",
    "grpc_route",
    "http_route",
    "parse_duration",
    "regex_problem",
]

logger = logging.getLogger(__name__)

GATEWAY_API_VERSION = "v1.6.1"
"""The Gateway API release whose CRD schemas this module follows (and the kind script installs)."""
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION_V1 = f"{GATEWAY_API_GROUP}/v1"


def _parent_ref(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> ParentRef:
    group = text_field(obj, raw.get("group"), f"{field}.group", 253, GROUP_PATTERN, min_length=0)
    kind = text_field(obj, raw.get("kind"), f"{field}.kind", 63, KIND_PATTERN)
    namespace = text_field(obj, raw.get("namespace"), f"{field}.namespace", 63, NAMESPACE_PATTERN)
    section = text_field(
        obj, raw.get("sectionName"), f"{field}.sectionName", 253, PRECISE_HOSTNAME_PATTERN
    )
    return ParentRef(
        name=required_text(obj, raw.get("name"), f"{field}.name", 253),
        namespace=namespace,
        group=GATEWAY_API_GROUP if group is None else group,
        kind=kind or "Gateway",
        port=raw.get("port"),
        section_name=section,
    )


def _parent_refs(obj: ObjectReader, spec: Mapping[str, Any]) -> tuple[ParentRef, ...]:
    refs = [
        (field, _parent_ref(obj, raw, field))
        for field, raw in items_of(
            obj, spec.get("parentRefs"), "spec.parentRefs", MAX_PARENT_REFS, PARENT_REF_FIELDS
        )
    ]
    # The CRD's rules for parentRefs naming the same parent.  The standard channel's tell
    # them apart by sectionName, the experimental channel's by sectionName and port; the
    # API server of either channel may have accepted the route, so either suffices.
    by_parent: dict[tuple[str, str, str, str], list[tuple[str, ParentRef]]] = {}
    for field, ref in refs:
        by_parent.setdefault((ref.group, ref.kind, ref.name, ref.namespace or ""), []).append(
            (field, ref)
        )
    for same in by_parent.values():
        if len(same) < 2:
            continue
        standard = _distinct_parents(obj, same, with_port=False)
        if standard is not None and _distinct_parents(obj, same, with_port=True) is not None:
            where, message = standard
            obj.fail(where, message)
    return tuple(ref for _, ref in refs)


def _distinct_parents(
    obj: ObjectReader, same: list[tuple[str, ParentRef]], *, with_port: bool
) -> tuple[str, str] | None:
    """Why references to one parent are not told apart (field, message), or None."""
    what = "sectionName or port" if with_port else "sectionName"

    def key(ref: ParentRef) -> tuple[str, int]:
        return (ref.section_name or "", (ref.port or 0) if with_port else 0)

    def presence(ref: ParentRef) -> tuple[bool, bool]:
        return (ref.section_name is None, with_port and ref.port is None)

    first = presence(same[0][1])
    for field, ref in same[1:]:
        if presence(ref) != first:
            return (
                f"{field}.sectionName",
                f"{what} must be specified when parentRefs includes 2 or more references to "
                f"the same parent",
            )
    seen: set[tuple[str, int]] = set()
    for field, ref in same:
        if key(ref) in seen:
            return (
                f"{field}.sectionName",
                f"{what} must be unique when parentRefs includes 2 or more references to the "
                f"same parent",
            )
        seen.add(key(ref))
    return None


def _hostnames(obj: ObjectReader, spec: Mapping[str, Any]) -> tuple[str, ...]:
    raw = obj.sequence(spec.get("hostnames"), "spec.hostnames", MAX_HOSTNAMES)
    return tuple(
        text_field(obj, item, f"spec.hostnames[{i}]", 253, HOSTNAME_PATTERN, required=True) or ""
        for i, item in enumerate(raw)
    )


def _timeouts(obj: ObjectReader, value: Any, field: str) -> RouteTimeouts | None:
    if value is None:
        return None
    raw = obj.mapping(value, field, TIMEOUTS_FIELDS)
    request = duration_field(obj, raw.get("request"), f"{field}.request")
    backend = duration_field(obj, raw.get("backendRequest"), f"{field}.backendRequest")
    if request and backend is not None and backend > request:
        obj.fail(
            f"{field}.backendRequest",
            "backendRequest timeout cannot be longer than request timeout",
        )
    return RouteTimeouts(request=request, backend_request=backend)


def _retry(obj: ObjectReader, value: Any, field: str) -> RouteRetry | None:
    if value is None:
        return None
    raw = obj.mapping(value, field, RETRY_FIELDS)
    codes: list[tuple[str, str]] = []
    for i, code in enumerate(obj.sequence(raw.get("codes"), f"{field}.codes")):
        obj.integer(code, f"{field}.codes[{i}]", 400, 599)
        codes.append((f"{field}.codes[{i}]", str(code)))
    check_unique(obj, codes, "code")
    return RouteRetry(
        codes=tuple(int(code) for _, code in codes),
        attempts=obj.integer(raw.get("attempts"), f"{field}.attempts", 1, 2**63 - 1),
        backoff=duration_field(obj, raw.get("backoff"), f"{field}.backoff"),
    )


def _rule_name(obj: ObjectReader, value: Any, field: str) -> str | None:
    return text_field(obj, value, field, 253, PRECISE_HOSTNAME_PATTERN)


def _http_rule(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> HTTPRouteRule:
    raw_matches = items_of(
        obj, raw.get("matches"), f"{field}.matches", MAX_MATCHES, HTTP_MATCH_FIELDS
    )
    matches = tuple(http_match(obj, item, where) for where, item in raw_matches)
    if not matches:
        matches = (HTTPRouteMatch(),)  # the CRD's default: path prefix "/"
    filters = route_filters(
        obj, raw.get("filters"), f"{field}.filters", HTTP_FILTER_TYPES, FILTER_FIELDS
    )
    backends = backend_refs(
        obj, raw.get("backendRefs"), f"{field}.backendRefs", HTTP_FILTER_TYPES, FILTER_FIELDS
    )
    if backends and any(kind == "RequestRedirect" for kind, _ in filters):
        obj.fail(
            f"{field}.filters",
            "a RequestRedirect filter must not be used together with backendRefs",
        )
    single_prefix = len(matches) == 1 and (
        matches[0].path is not None and matches[0].path.type is MatchType.PATH_PREFIX
    )
    rule_filters = [f for _, f in filters]
    # The CRD's rules use exists_one: exactly one such filter (or backendRef) triggers them.
    for kind in ("RequestRedirect", "URLRewrite"):
        in_rule = replaces_prefix(rule_filters).count(kind) == 1
        in_backends = [kind in replaces_prefix(ref.filters) for ref, _ in backends].count(True)
        if (in_rule or in_backends == 1) and not single_prefix:
            obj.fail(
                f"{field}.matches",
                f"when using the {kind} filter with path.replacePrefixMatch, exactly one "
                f"PathPrefix match must be specified",
            )
    return HTTPRouteRule(
        matches=matches,
        filters=tuple(rule_filters),
        backend_refs=tuple(ref for ref, _ in backends),
        timeouts=_timeouts(obj, raw.get("timeouts"), f"{field}.timeouts"),
        retry=_retry(obj, raw.get("retry"), f"{field}.retry"),
        name=_rule_name(obj, raw.get("name"), f"{field}.name"),
    )


def _grpc_rule(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> GRPCRouteRule:
    raw_matches = items_of(
        obj, raw.get("matches"), f"{field}.matches", MAX_MATCHES, GRPC_MATCH_FIELDS
    )
    matches = tuple(grpc_match(obj, item, where) for where, item in raw_matches)
    filters = route_filters(
        obj, raw.get("filters"), f"{field}.filters", GRPC_FILTER_TYPES, GRPC_FILTER_FIELDS
    )
    backends = backend_refs(
        obj, raw.get("backendRefs"), f"{field}.backendRefs", GRPC_FILTER_TYPES, GRPC_FILTER_FIELDS
    )
    return GRPCRouteRule(
        matches=matches or (GRPCRouteMatch(),),
        filters=tuple(f for _, f in filters),
        backend_refs=tuple(ref for ref, _ in backends),
        name=_rule_name(obj, raw.get("name"), f"{field}.name"),
    )


def _rules(
    obj: ObjectReader, spec: Mapping[str, Any], fields: Fields
) -> list[tuple[str, Mapping[str, Any]]]:
    rules = items_of(obj, spec.get("rules"), "spec.rules", MAX_RULES, fields)
    # Counted after defaulting: an HTTPRoute rule without matches has one.
    default = 1 if fields is HTTP_RULE_FIELDS else 0
    total = sum(default if raw.get("matches") is None else len(raw["matches"]) for _, raw in rules)
    if total > MAX_MATCHES_IN_ALL:
        obj.fail(
            "spec.rules",
            f"the total number of matches across all rules in a route must be at most "
            f"{MAX_MATCHES_IN_ALL}, got {total}",
        )
    return rules


def _route_spec(
    obj: ObjectReader, manifest: Mapping[str, Any], fields: Fields
) -> Mapping[str, Any]:
    if manifest.get("spec") is None:
        obj.fail("spec", "required")
    return obj.mapping(manifest.get("spec"), "spec", fields)


def http_route(obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None) -> HTTPRoute:
    """An HTTPRoute manifest as a model value (module doc: defaults and validation)."""
    obj.mapping(manifest, "", ROUTE_FIELDS)
    meta = object_meta(obj, manifest)
    spec = _route_spec(obj, manifest, HTTP_SPEC_FIELDS)
    if spec.get("rules") is not None and not spec["rules"]:
        obj.fail("spec.rules", "at least 1 item: omit rules for the default rule")
    rules = tuple(_http_rule(obj, raw, where) for where, raw in _rules(obj, spec, HTTP_RULE_FIELDS))
    return HTTPRoute(
        namespace=meta.namespace,
        name=meta.name,
        parent_refs=_parent_refs(obj, spec),
        hostnames=_hostnames(obj, spec),
        rules=rules or (HTTPRouteRule(),),
        creation_timestamp=meta.creation_timestamp,
        generation=meta.generation,
        origin=origin,
    )


def grpc_route(obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None) -> GRPCRoute:
    """A GRPCRoute manifest as a model value (module doc: defaults and validation)."""
    obj.mapping(manifest, "", ROUTE_FIELDS)
    meta = object_meta(obj, manifest)
    spec = _route_spec(obj, manifest, GRPC_SPEC_FIELDS)
    rules = tuple(_grpc_rule(obj, raw, where) for where, raw in _rules(obj, spec, GRPC_RULE_FIELDS))
    return GRPCRoute(
        namespace=meta.namespace,
        name=meta.name,
        parent_refs=_parent_refs(obj, spec),
        hostnames=_hostnames(obj, spec),
        rules=rules,
        creation_timestamp=meta.creation_timestamp,
        generation=meta.generation,
        origin=origin,
    )
