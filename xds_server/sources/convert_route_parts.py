"""The parts of a Gateway API route rule: its matches, its filters and its backendRefs.

`convert_routes` reads the route and each rule as a whole; this module owns
reading a rule's parts into `xds_server.model.routes` values, with the CRD
defaults applied (a path match without `type` is `PathPrefix`, without
`value` is `/`; header, query and gRPC method matches are `Exact`; a
backendRef weighs 1 and is a core `Service`; a redirect answers 302; a
mirror's `fraction` has denominator 100 and becomes a percentage) and the
CRD's checks on them, its CEL rules included (a filter's `type` names the one
filter field set; the filters that may not repeat or combine; a Service
backend has a port).  The `CORS` and `ExtensionRef` filters, which the API
allows but the mesh does not implement, are refused naming the filter.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    GRPCMethodMatch,
    GRPCRouteMatch,
    HeaderMatch,
    HeaderModifier,
    HTTPRouteMatch,
    MatchType,
    PathMatch,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifierFilter,
    RequestMirrorFilter,
    RequestRedirectFilter,
    ResponseHeaderModifierFilter,
    RouteFilter,
    URLRewriteFilter,
)
from xds_server.sources.convert_route_schema import (
    BACKEND_OBJECT_REF_FIELDS,
    BACKEND_REF_FIELDS,
    FILTER_FIELD,
    FRACTION_FIELDS,
    GROUP_PATTERN,
    GRPC_METHOD_FIELDS,
    GRPC_METHOD_PATTERN,
    GRPC_SERVICE_PATTERN,
    HEADER_MATCH_FIELDS,
    HEADER_MATCH_TYPES,
    HEADER_MODIFIER_FIELDS,
    HEADER_NAME_PATTERN,
    HTTP_HEADER_FIELDS,
    HTTP_METHODS,
    INT32_MAX,
    KIND_PATTERN,
    MAX_BACKEND_REFS,
    MAX_FILTERS,
    MAX_HEADER_CHANGES,
    MAX_HEADER_MATCHES,
    MAX_WEIGHT,
    MIRROR_FIELDS,
    NAMESPACE_PATTERN,
    PATH_CHARS_PATTERN,
    PATH_MATCH_FIELDS,
    PATH_MATCH_TYPES,
    PATH_MODIFIER_FIELDS,
    PATH_MODIFIER_TYPES,
    PRECISE_HOSTNAME_PATTERN,
    REDIRECT_FIELDS,
    REDIRECT_SCHEMES,
    REDIRECT_STATUS_CODES,
    REWRITE_FIELDS,
    UNIQUE_FILTERS,
    UNSUPPORTED_FILTERS,
    check_regex,
    check_unique,
    items_of,
    required_text,
    text_field,
)
from xds_server.sources.object_reader import ObjectReader, show
from xds_server.sources.schema import Fields

logger = logging.getLogger(__name__)


def _header_matches(obj: ObjectReader, value: Any, field: str, max_value: int) -> list[HeaderMatch]:
    """Header (or query parameter) matches: a list keyed by name."""
    found: list[HeaderMatch] = []
    names: list[tuple[str, str]] = []
    for where, raw in items_of(obj, value, field, MAX_HEADER_MATCHES, HEADER_MATCH_FIELDS):
        name = text_field(
            obj, raw.get("name"), f"{where}.name", 256, HEADER_NAME_PATTERN, required=True
        )
        text = required_text(obj, raw.get("value"), f"{where}.value", max_value)
        kind = obj.one_of(raw.get("type"), f"{where}.type", HEADER_MATCH_TYPES, "Exact")
        if kind == "RegularExpression":
            check_regex(obj, text, f"{where}.value")
        assert name is not None
        names.append((f"{where}.name", name))
        found.append(HeaderMatch(name=name, value=text, type=MatchType(kind)))
    check_unique(obj, names, "name")
    return found


def _path_match(obj: ObjectReader, value: Any, field: str) -> PathMatch:
    raw = obj.mapping(value, field, PATH_MATCH_FIELDS)
    kind = obj.one_of(raw.get("type"), f"{field}.type", PATH_MATCH_TYPES, "PathPrefix")
    text = text_field(obj, raw.get("value"), f"{field}.value", 1024, min_length=0)
    text = "/" if text is None else text
    where = f"{field}.value"
    if kind == "RegularExpression":
        check_regex(obj, text, where)
        return PathMatch(MatchType.REGULAR_EXPRESSION, text)
    if not text.startswith("/"):
        obj.fail(where, f"must be an absolute path starting with '/' for {kind}, got {show(text)}")
    for part in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if part in text:
            obj.fail(where, f"must not contain {part!r} for {kind}, got {show(text)}")
    for end in ("/..", "/."):
        if text.endswith(end):
            obj.fail(where, f"must not end with {end!r} for {kind}, got {show(text)}")
    if not PATH_CHARS_PATTERN.fullmatch(text):
        obj.fail(
            where,
            f"must only contain valid path characters (RFC 3986 pchar, '/' and %-escapes) "
            f"for {kind}, got {show(text)}",
        )
    return PathMatch(MatchType(kind), text)


def http_match(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> HTTPRouteMatch:
    method = raw.get("method")
    if method is not None:
        obj.one_of(method, f"{field}.method", HTTP_METHODS, "")
    return HTTPRouteMatch(
        path=_path_match(obj, raw.get("path"), f"{field}.path"),
        headers=tuple(_header_matches(obj, raw.get("headers"), f"{field}.headers", 4096)),
        query_params=tuple(
            QueryParamMatch(name=match.name, value=match.value, type=match.type)
            for match in _header_matches(obj, raw.get("queryParams"), f"{field}.queryParams", 1024)
        ),
        method=method,
    )


def grpc_match(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    if raw.get("method") is not None:
        where = f"{field}.method"
        spec = obj.mapping(raw.get("method"), where, GRPC_METHOD_FIELDS)
        kind = obj.one_of(spec.get("type"), f"{where}.type", HEADER_MATCH_TYPES, "Exact")
        service = text_field(obj, spec.get("service"), f"{where}.service", 1024, min_length=0)
        name = text_field(obj, spec.get("method"), f"{where}.method", 1024, min_length=0)
        if service is None and name is None:
            obj.fail(where, "one or both of 'service' or 'method' must be specified")
        for part, text, pattern in (
            ("service", service, GRPC_SERVICE_PATTERN),
            ("method", name, GRPC_METHOD_PATTERN),
        ):
            if text is None:
                continue
            if kind == "RegularExpression":
                check_regex(obj, text, f"{where}.{part}")
            elif not pattern.fullmatch(text):
                obj.fail(
                    f"{where}.{part}",
                    f"{part} must only contain valid characters (matching {pattern.pattern}), "
                    f"got {show(text)}",
                )
        method = GRPCMethodMatch(service=service, method=name, type=MatchType(kind))
    headers = _header_matches(obj, raw.get("headers"), f"{field}.headers", 4096)
    return GRPCRouteMatch(method=method, headers=tuple(headers))


def _header_modifier(obj: ObjectReader, value: Any, field: str) -> HeaderModifier:
    raw = obj.mapping(value, field, HEADER_MODIFIER_FIELDS)
    changes: dict[str, tuple[tuple[str, str], ...]] = {}
    for verb in ("set", "add"):
        pairs: list[tuple[str, str]] = []
        names: list[tuple[str, str]] = []
        for where, item in items_of(
            obj, raw.get(verb), f"{field}.{verb}", MAX_HEADER_CHANGES, HTTP_HEADER_FIELDS
        ):
            name = text_field(
                obj, item.get("name"), f"{where}.name", 256, HEADER_NAME_PATTERN, required=True
            )
            assert name is not None
            pairs.append((name, required_text(obj, item.get("value"), f"{where}.value", 4096)))
            names.append((f"{where}.name", name))
        check_unique(obj, names, "name")
        changes[verb] = tuple(pairs)
    removed = obj.sequence(raw.get("remove"), f"{field}.remove", MAX_HEADER_CHANGES)
    remove = [
        (f"{field}.remove[{i}]", obj.text(name, f"{field}.remove[{i}]", 256) or "")
        for i, name in enumerate(removed)
    ]
    check_unique(obj, remove, "header")
    return HeaderModifier(
        set=changes["set"], add=changes["add"], remove=tuple(n for _, n in remove)
    )


def backend_object_ref(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> BackendObjectRef:
    group = (
        text_field(obj, raw.get("group"), f"{field}.group", 253, GROUP_PATTERN, min_length=0) or ""
    )
    kind = text_field(obj, raw.get("kind"), f"{field}.kind", 63, KIND_PATTERN) or "Service"
    ref = BackendObjectRef(
        name=required_text(obj, raw.get("name"), f"{field}.name", 253),
        namespace=text_field(
            obj, raw.get("namespace"), f"{field}.namespace", 63, NAMESPACE_PATTERN
        ),
        port=raw.get("port"),
        group=group,
        kind=kind,
    )
    if group == "" and kind == "Service" and ref.port is None:
        obj.fail(f"{field}.port", "required: must have port for Service reference")
    return ref


def _path_modifier(obj: ObjectReader, value: Any, field: str) -> PathModifier | None:
    if value is None:
        return None
    raw = obj.mapping(value, field, PATH_MODIFIER_FIELDS)
    if raw.get("type") is None:
        obj.fail(f"{field}.type", "required: one of ReplaceFullPath, ReplacePrefixMatch")
    kind = obj.one_of(raw.get("type"), f"{field}.type", PATH_MODIFIER_TYPES, "")
    for option in PATH_MODIFIER_TYPES:
        key = option[0].lower() + option[1:]
        if option != kind and raw.get(key) is not None:
            obj.fail(f"{field}.{key}", f"type must be {option!r} when {key} is set")
    key = kind[0].lower() + kind[1:]
    if raw.get(key) is None:
        obj.fail(f"{field}.{key}", f"required when type is set to {kind!r}")
    text = text_field(obj, raw.get(key), f"{field}.{key}", 1024, min_length=0)
    assert text is not None
    return PathModifier(PathModifierType(kind), text)


def _mirror(obj: ObjectReader, value: Any, field: str) -> RequestMirrorFilter:
    raw = obj.mapping(value, field, MIRROR_FIELDS)
    if raw.get("backendRef") is None:
        obj.fail(f"{field}.backendRef", "required")
    backend = backend_object_ref(
        obj,
        obj.mapping(raw.get("backendRef"), f"{field}.backendRef", BACKEND_OBJECT_REF_FIELDS),
        f"{field}.backendRef",
    )
    if raw.get("percent") is not None and raw.get("fraction") is not None:
        obj.fail(field, "only one of percent or fraction may be specified")
    percent: float | None = None
    if raw.get("percent") is not None:
        percent = float(obj.integer(raw.get("percent"), f"{field}.percent", 0, 100) or 0)
    elif raw.get("fraction") is not None:
        where = f"{field}.fraction"
        fraction = obj.mapping(raw.get("fraction"), where, FRACTION_FIELDS)
        if fraction.get("numerator") is None:
            obj.fail(f"{where}.numerator", "required")
        numerator = obj.integer(fraction.get("numerator"), f"{where}.numerator", 0, INT32_MAX)
        denominator = obj.integer(fraction.get("denominator"), f"{where}.denominator", 1, INT32_MAX)
        denominator = 100 if denominator is None else denominator
        assert numerator is not None
        if numerator > denominator:
            obj.fail(where, "numerator must be less than or equal to denominator")
        percent = 100.0 * numerator / denominator
    return RequestMirrorFilter(backend=backend, percent=percent)


def _redirect(obj: ObjectReader, value: Any, field: str) -> RequestRedirectFilter:
    raw = obj.mapping(value, field, REDIRECT_FIELDS)
    code = raw.get("statusCode")
    if code is not None and (
        isinstance(code, bool) or not isinstance(code, int) or code not in REDIRECT_STATUS_CODES
    ):
        obj.fail(
            f"{field}.statusCode",
            f"must be one of {', '.join(map(str, REDIRECT_STATUS_CODES))}, got {show(code)}",
        )
    scheme = raw.get("scheme")
    if scheme is not None:
        obj.one_of(scheme, f"{field}.scheme", REDIRECT_SCHEMES, "")
    return RequestRedirectFilter(
        scheme=scheme,
        hostname=text_field(
            obj, raw.get("hostname"), f"{field}.hostname", 253, PRECISE_HOSTNAME_PATTERN
        ),
        path=_path_modifier(obj, raw.get("path"), f"{field}.path"),
        port=raw.get("port"),
        status_code=302 if code is None else code,
    )


def _rewrite(obj: ObjectReader, value: Any, field: str) -> URLRewriteFilter:
    raw = obj.mapping(value, field, REWRITE_FIELDS)
    return URLRewriteFilter(
        hostname=text_field(
            obj, raw.get("hostname"), f"{field}.hostname", 253, PRECISE_HOSTNAME_PATTERN
        ),
        path=_path_modifier(obj, raw.get("path"), f"{field}.path"),
    )


def _filter(
    obj: ObjectReader, raw: Mapping[str, Any], field: str, allowed: frozenset[str]
) -> tuple[str, RouteFilter]:
    if raw.get("type") is None:
        obj.fail(f"{field}.type", f"required: one of {', '.join(sorted(allowed))}")
    kind = obj.one_of(raw.get("type"), f"{field}.type", allowed, "")
    expected = FILTER_FIELD[kind]
    for other_kind in sorted(allowed):
        other = FILTER_FIELD[other_kind]
        if other != expected and raw.get(other) is not None:
            obj.fail(
                f"{field}.{other}",
                f"filter.{other} must be nil if the filter.type is not {other_kind} (it is {kind})",
            )
    if raw.get(expected) is None:
        obj.fail(
            f"{field}.{expected}", f"filter.{expected} must be specified for {kind} filter.type"
        )
    if kind in UNSUPPORTED_FILTERS:
        obj.fail(f"{field}.type", f"the {kind} filter is valid but not implemented by this mesh")
    where = f"{field}.{expected}"
    value = raw[expected]
    result: RouteFilter
    if kind == "RequestHeaderModifier":
        result = RequestHeaderModifierFilter(_header_modifier(obj, value, where))
    elif kind == "ResponseHeaderModifier":
        result = ResponseHeaderModifierFilter(_header_modifier(obj, value, where))
    elif kind == "RequestMirror":
        result = _mirror(obj, value, where)
    elif kind == "RequestRedirect":
        result = _redirect(obj, value, where)
    else:
        result = _rewrite(obj, value, where)
    return kind, result


def route_filters(
    obj: ObjectReader, value: Any, field: str, allowed: frozenset[str], fields: Fields
) -> list[tuple[str, RouteFilter]]:
    found = [
        _filter(obj, raw, where, allowed)
        for where, raw in items_of(obj, value, field, MAX_FILTERS, fields)
    ]
    kinds = [kind for kind, _ in found]
    if "RequestRedirect" in kinds and "URLRewrite" in kinds:
        obj.fail(field, "may specify either RequestRedirect or URLRewrite, but not both")
    for kind in UNIQUE_FILTERS:
        if kinds.count(kind) > 1:
            index = [i for i, k in enumerate(kinds) if k == kind][1]
            obj.fail(f"{field}[{index}].type", f"the {kind} filter cannot be repeated")
    return found


def backend_refs(
    obj: ObjectReader, value: Any, field: str, allowed: frozenset[str], filter_fields: Fields
) -> list[tuple[BackendRef, list[str]]]:
    found: list[tuple[BackendRef, list[str]]] = []
    for where, raw in items_of(obj, value, field, MAX_BACKEND_REFS, BACKEND_REF_FIELDS):
        backend = backend_object_ref(obj, raw, where)
        weight = obj.integer(raw.get("weight"), f"{where}.weight", 0, MAX_WEIGHT)
        filters = route_filters(obj, raw.get("filters"), f"{where}.filters", allowed, filter_fields)
        found.append(
            (
                BackendRef(backend, 1 if weight is None else weight, tuple(f for _, f in filters)),
                [kind for kind, _ in filters],
            )
        )
    return found


def replaces_prefix(filters: Sequence[RouteFilter]) -> list[str]:
    """The filters among `filters` that replace a prefix match (redirect or rewrite)."""
    return [
        "RequestRedirect" if isinstance(f, RequestRedirectFilter) else "URLRewrite"
        for f in filters
        if isinstance(f, RequestRedirectFilter | URLRewriteFilter)
        and f.path is not None
        and f.path.type is PathModifierType.REPLACE_PREFIX_MATCH
    ]
