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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatch,
    HeaderModifier,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    ParentRef,
    PathMatch,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifierFilter,
    RequestMirrorFilter,
    RequestRedirectFilter,
    ResponseHeaderModifierFilter,
    RouteFilter,
    RouteRetry,
    RouteTimeouts,
    URLRewriteFilter,
)
from xds_server.provenance import Origin
from xds_server.sources.convert_common import bounded_string, object_meta
from xds_server.sources.object_reader import ObjectReader, show
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

# -- the schema's strings --------------------------------------------------------------

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_HOSTNAME = re.compile(r"(\*\.)?" + _SUBDOMAIN)
_PRECISE_HOSTNAME = re.compile(_SUBDOMAIN)
_GROUP = re.compile(r"(" + _SUBDOMAIN + r")?")
_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+")
_GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_DESCRIBED = {
    _HOSTNAME: "a hostname (lowercase DNS labels, optionally prefixed with '*.')",
    _PRECISE_HOSTNAME: "a hostname (lowercase DNS labels)",
    _GROUP: "empty or an API group (a DNS subdomain)",
    _KIND: "a kind name (letters, digits and '-', starting with a letter)",
    _NAMESPACE: "a DNS label (lowercase letters, digits and '-')",
    _HEADER_NAME: "a header name (RFC 7230 token characters)",
}

HTTP_METHODS = frozenset({
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
})  # fmt: skip
HEADER_MATCH_TYPES = frozenset({"Exact", "RegularExpression"})
PATH_MATCH_TYPES = frozenset({"Exact", "PathPrefix", "RegularExpression"})
PATH_MODIFIER_TYPES = frozenset({"ReplaceFullPath", "ReplacePrefixMatch"})
REDIRECT_SCHEMES = frozenset({"http", "https"})
REDIRECT_STATUS_CODES = (301, 302, 303, 307, 308)
HTTP_FILTER_TYPES = frozenset({
    "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect",
    "URLRewrite", "ExtensionRef", "CORS",
})  # fmt: skip
GRPC_FILTER_TYPES = frozenset({
    "RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef",
})  # fmt: skip
_FILTER_FIELD = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
}
_UNSUPPORTED_FILTERS = frozenset({"ExtensionRef", "CORS"})
_UNIQUE_FILTERS = (
    "CORS", "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite",
)  # fmt: skip

MAX_HOSTNAMES = 16
MAX_PARENT_REFS = 32
MAX_RULES = 16
MAX_MATCHES = 64
MAX_MATCHES_IN_ALL = 128
MAX_FILTERS = 16
MAX_BACKEND_REFS = 16
MAX_HEADER_MATCHES = 16
MAX_HEADER_CHANGES = 16
MAX_WEIGHT = 1_000_000
_INT32_MAX = 2**31 - 1

# -- field tables (the standard channel's fields, and retry) ----------------------------

_OBJECT: Fields = {"apiVersion": "string", "kind": "string", "metadata": "mapping"}
ROUTE_FIELDS: Fields = {**_OBJECT, "spec": "mapping", "status": "mapping"}
HTTP_SPEC_FIELDS: Fields = {"parentRefs": "list", "hostnames": "strings", "rules": "list"}
GRPC_SPEC_FIELDS = HTTP_SPEC_FIELDS
PARENT_REF_FIELDS: Fields = {
    "group": "string", "kind": "string", "namespace": "string", "name": "string",
    "sectionName": "string", "port": "port",
}  # fmt: skip
HTTP_RULE_FIELDS: Fields = {
    "name": "string", "matches": "list", "filters": "list", "backendRefs": "list",
    "timeouts": "mapping", "retry": "mapping",
}  # fmt: skip
GRPC_RULE_FIELDS: Fields = {
    "name": "string", "matches": "list", "filters": "list", "backendRefs": "list",
}  # fmt: skip
HTTP_MATCH_FIELDS: Fields = {
    "path": "mapping", "headers": "list", "queryParams": "list", "method": "string",
}  # fmt: skip
PATH_MATCH_FIELDS: Fields = {"type": "string", "value": "string"}
HEADER_MATCH_FIELDS: Fields = {"type": "string", "name": "string", "value": "string"}
GRPC_MATCH_FIELDS: Fields = {"method": "mapping", "headers": "list"}
GRPC_METHOD_FIELDS: Fields = {"type": "string", "service": "string", "method": "string"}
FILTER_FIELDS: Fields = {
    "type": "string", "requestHeaderModifier": "mapping", "responseHeaderModifier": "mapping",
    "requestMirror": "mapping", "requestRedirect": "mapping", "urlRewrite": "mapping",
    "extensionRef": "mapping", "cors": "mapping",
}  # fmt: skip
GRPC_FILTER_FIELDS: Fields = {
    "type": "string", "requestHeaderModifier": "mapping", "responseHeaderModifier": "mapping",
    "requestMirror": "mapping", "extensionRef": "mapping",
}  # fmt: skip
HEADER_MODIFIER_FIELDS: Fields = {"set": "list", "add": "list", "remove": "strings"}
HTTP_HEADER_FIELDS: Fields = {"name": "string", "value": "string"}
MIRROR_FIELDS: Fields = {"backendRef": "mapping", "percent": "integer", "fraction": "mapping"}
FRACTION_FIELDS: Fields = {"numerator": "integer", "denominator": "integer"}
BACKEND_OBJECT_REF_FIELDS: Fields = {
    "group": "string", "kind": "string", "name": "string", "namespace": "string", "port": "port",
}  # fmt: skip
BACKEND_REF_FIELDS: Fields = {**BACKEND_OBJECT_REF_FIELDS, "weight": "integer", "filters": "list"}
REDIRECT_FIELDS: Fields = {
    "scheme": "string", "hostname": "string", "path": "mapping", "port": "port",
    "statusCode": "integer",
}  # fmt: skip
REWRITE_FIELDS: Fields = {"hostname": "string", "path": "mapping"}
PATH_MODIFIER_FIELDS: Fields = {
    "type": "string", "replaceFullPath": "string", "replacePrefixMatch": "string",
}  # fmt: skip
TIMEOUTS_FIELDS: Fields = {"request": "string", "backendRequest": "string"}
RETRY_FIELDS: Fields = {"codes": "list", "attempts": "integer", "backoff": "string"}

# -- durations and regular expressions --------------------------------------------------


def parse_duration(text: str) -> float | None:
    """A GEP-2257 duration (`1h30m`, `500ms`, `10s`) in seconds; None if it is not one."""
    if not _DURATION.fullmatch(text):
        return None
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


_RE2_MISSING = {
    "=": "lookahead",
    "!": "negative lookahead",
    "<=": "lookbehind",
    "<!": "negative lookbehind",
    ">": "atomic groups",
    "(": "conditionals",
    "P=": "named backreferences",
    "#": "comments",
}


def _python_form(pattern: str) -> str:
    """`pattern` (RE2 syntax) rewritten for Python's `re`; ValueError for what RE2 lacks."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            escape = pattern[i + 1]
            i += 2
            if escape in "123456789":
                raise ValueError(f"backreferences (\\{escape}) are not supported by RE2")
            if escape in "pP":
                if i < n and pattern[i] == "{":
                    end = pattern.find("}", i)
                    if end < 0:
                        raise ValueError("missing '}' after \\p")
                    i = end + 1
                else:
                    i += 1
                out.append("a" if in_class else ".")
            elif escape == "z":
                out.append("\\Z")
            elif escape == "C":
                out.append("a" if in_class else ".")
            elif escape == "Q":
                end = pattern.find("\\E", i)
                literal = pattern[i:] if end < 0 else pattern[i:end]
                i = n if end < 0 else end + 2
                out.append(re.escape(literal))
            else:
                out.append("\\" + escape)
            continue
        if in_class:
            if char == "]":
                in_class = False
            out.append(char)
            i += 1
            continue
        if char == "[":
            in_class = True
            out.append(char)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
            continue
        if char == "(" and pattern.startswith("(?", i):
            for opening, what in _RE2_MISSING.items():
                if pattern.startswith(opening, i + 2):
                    raise ValueError(f"{what} are not supported by RE2")
            if pattern.startswith("<", i + 2):  # (?<name>...), RE2's other spelling
                out.append("(?P<")
                i += 3
                continue
        if char == "+" and out and out[-1] in ("*", "+", "?"):
            raise ValueError("possessive quantifiers are not supported by RE2")
        out.append(char)
        i += 1
    return "".join(out)


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` is not a regular expression Envoy (RE2) accepts, or None."""
    try:
        re.compile(_python_form(pattern))
    except (ValueError, re.error, OverflowError, RecursionError) as error:
        return str(error)
    return None


# -- readers ----------------------------------------------------------------------------


def _string(
    obj: ObjectReader,
    value: Any,
    field: str,
    max_length: int,
    pattern: re.Pattern[str] | None = None,
    *,
    min_length: int = 1,
    required: bool = False,
) -> str | None:
    return bounded_string(
        obj, value, field, max_length=max_length, min_length=min_length, pattern=pattern,
        what=_DESCRIBED.get(pattern) if pattern is not None else None, required=required,
    )  # fmt: skip


def _required(obj: ObjectReader, value: Any, field: str, max_length: int) -> str:
    text = _string(obj, value, field, max_length, required=True)
    assert text is not None
    return text


def _regex(obj: ObjectReader, value: str, field: str) -> None:
    problem = regex_problem(value)
    if problem is not None:
        obj.fail(field, f"not a valid RE2 regular expression ({problem}), got {show(value)}")


def _duration(obj: ObjectReader, value: Any, field: str) -> float | None:
    text = obj.string(value, field)
    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is None:
        obj.fail(
            field,
            f"must be a Gateway API duration (1 to 4 of <number><h|m|s|ms>, e.g. 10s, 500ms, "
            f"1h30m), got {show(text)}",
        )
    return seconds


def _items(
    obj: ObjectReader, value: Any, field: str, limit: int, fields: Fields
) -> list[tuple[str, Mapping[str, Any]]]:
    """A list of objects: each item's path and its fields, type-checked."""
    return [
        (f"{field}[{i}]", obj.mapping(item, f"{field}[{i}]", fields))
        for i, item in enumerate(obj.sequence(value, field, limit))
    ]


def _unique(obj: ObjectReader, keys: Iterable[tuple[str, str]], what: str) -> None:
    """List-map keys (`x-kubernetes-list-type: map`) and sets: each value once."""
    seen: set[str] = set()
    for field, key in keys:
        if key in seen:
            obj.fail(field, f"duplicate {what} {show(key)}")
        seen.add(key)


def _parent_ref(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> ParentRef:
    group = _string(obj, raw.get("group"), f"{field}.group", 253, _GROUP, min_length=0)
    kind = _string(obj, raw.get("kind"), f"{field}.kind", 63, _KIND)
    namespace = _string(obj, raw.get("namespace"), f"{field}.namespace", 63, _NAMESPACE)
    section = _string(obj, raw.get("sectionName"), f"{field}.sectionName", 253, _PRECISE_HOSTNAME)
    return ParentRef(
        name=_required(obj, raw.get("name"), f"{field}.name", 253),
        namespace=namespace,
        group=GATEWAY_API_GROUP if group is None else group,
        kind=kind or "Gateway",
        port=raw.get("port"),
        section_name=section,
    )


def _parent_refs(obj: ObjectReader, spec: Mapping[str, Any]) -> tuple[ParentRef, ...]:
    refs = [
        (field, _parent_ref(obj, raw, field))
        for field, raw in _items(
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
        _string(obj, item, f"spec.hostnames[{i}]", 253, _HOSTNAME, required=True) or ""
        for i, item in enumerate(raw)
    )


def _header_matches(obj: ObjectReader, value: Any, field: str, max_value: int) -> list[HeaderMatch]:
    """Header (or query parameter) matches: a list keyed by name."""
    found: list[HeaderMatch] = []
    names: list[tuple[str, str]] = []
    for where, raw in _items(obj, value, field, MAX_HEADER_MATCHES, HEADER_MATCH_FIELDS):
        name = _string(obj, raw.get("name"), f"{where}.name", 256, _HEADER_NAME, required=True)
        text = _required(obj, raw.get("value"), f"{where}.value", max_value)
        kind = obj.one_of(raw.get("type"), f"{where}.type", HEADER_MATCH_TYPES, "Exact")
        if kind == "RegularExpression":
            _regex(obj, text, f"{where}.value")
        assert name is not None
        names.append((f"{where}.name", name))
        found.append(HeaderMatch(name=name, value=text, type=MatchType(kind)))
    _unique(obj, names, "name")
    return found


def _path_match(obj: ObjectReader, value: Any, field: str) -> PathMatch:
    raw = obj.mapping(value, field, PATH_MATCH_FIELDS)
    kind = obj.one_of(raw.get("type"), f"{field}.type", PATH_MATCH_TYPES, "PathPrefix")
    text = _string(obj, raw.get("value"), f"{field}.value", 1024, min_length=0)
    text = "/" if text is None else text
    where = f"{field}.value"
    if kind == "RegularExpression":
        _regex(obj, text, where)
        return PathMatch(MatchType.REGULAR_EXPRESSION, text)
    if not text.startswith("/"):
        obj.fail(where, f"must be an absolute path starting with '/' for {kind}, got {show(text)}")
    for part in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if part in text:
            obj.fail(where, f"must not contain {part!r} for {kind}, got {show(text)}")
    for end in ("/..", "/."):
        if text.endswith(end):
            obj.fail(where, f"must not end with {end!r} for {kind}, got {show(text)}")
    if not _PATH_CHARS.fullmatch(text):
        obj.fail(
            where,
            f"must only contain valid path characters (RFC 3986 pchar, '/' and %-escapes) "
            f"for {kind}, got {show(text)}",
        )
    return PathMatch(MatchType(kind), text)


def _http_match(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> HTTPRouteMatch:
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


def _grpc_match(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    if raw.get("method") is not None:
        where = f"{field}.method"
        spec = obj.mapping(raw.get("method"), where, GRPC_METHOD_FIELDS)
        kind = obj.one_of(spec.get("type"), f"{where}.type", HEADER_MATCH_TYPES, "Exact")
        service = _string(obj, spec.get("service"), f"{where}.service", 1024, min_length=0)
        name = _string(obj, spec.get("method"), f"{where}.method", 1024, min_length=0)
        if service is None and name is None:
            obj.fail(where, "one or both of 'service' or 'method' must be specified")
        for part, text, pattern in (
            ("service", service, _GRPC_SERVICE),
            ("method", name, _GRPC_METHOD),
        ):
            if text is None:
                continue
            if kind == "RegularExpression":
                _regex(obj, text, f"{where}.{part}")
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
        for where, item in _items(
            obj, raw.get(verb), f"{field}.{verb}", MAX_HEADER_CHANGES, HTTP_HEADER_FIELDS
        ):
            name = _string(obj, item.get("name"), f"{where}.name", 256, _HEADER_NAME, required=True)
            assert name is not None
            pairs.append((name, _required(obj, item.get("value"), f"{where}.value", 4096)))
            names.append((f"{where}.name", name))
        _unique(obj, names, "name")
        changes[verb] = tuple(pairs)
    removed = obj.sequence(raw.get("remove"), f"{field}.remove", MAX_HEADER_CHANGES)
    remove = [
        (f"{field}.remove[{i}]", obj.text(name, f"{field}.remove[{i}]", 256) or "")
        for i, name in enumerate(removed)
    ]
    _unique(obj, remove, "header")
    return HeaderModifier(
        set=changes["set"], add=changes["add"], remove=tuple(n for _, n in remove)
    )


def _backend_object_ref(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> BackendObjectRef:
    group = _string(obj, raw.get("group"), f"{field}.group", 253, _GROUP, min_length=0) or ""
    kind = _string(obj, raw.get("kind"), f"{field}.kind", 63, _KIND) or "Service"
    ref = BackendObjectRef(
        name=_required(obj, raw.get("name"), f"{field}.name", 253),
        namespace=_string(obj, raw.get("namespace"), f"{field}.namespace", 63, _NAMESPACE),
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
    text = _string(obj, raw.get(key), f"{field}.{key}", 1024, min_length=0)
    assert text is not None
    return PathModifier(PathModifierType(kind), text)


def _mirror(obj: ObjectReader, value: Any, field: str) -> RequestMirrorFilter:
    raw = obj.mapping(value, field, MIRROR_FIELDS)
    if raw.get("backendRef") is None:
        obj.fail(f"{field}.backendRef", "required")
    backend = _backend_object_ref(
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
        numerator = obj.integer(fraction.get("numerator"), f"{where}.numerator", 0, _INT32_MAX)
        denominator = obj.integer(
            fraction.get("denominator"), f"{where}.denominator", 1, _INT32_MAX
        )
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
        hostname=_string(obj, raw.get("hostname"), f"{field}.hostname", 253, _PRECISE_HOSTNAME),
        path=_path_modifier(obj, raw.get("path"), f"{field}.path"),
        port=raw.get("port"),
        status_code=302 if code is None else code,
    )


def _rewrite(obj: ObjectReader, value: Any, field: str) -> URLRewriteFilter:
    raw = obj.mapping(value, field, REWRITE_FIELDS)
    return URLRewriteFilter(
        hostname=_string(obj, raw.get("hostname"), f"{field}.hostname", 253, _PRECISE_HOSTNAME),
        path=_path_modifier(obj, raw.get("path"), f"{field}.path"),
    )


def _filter(
    obj: ObjectReader, raw: Mapping[str, Any], field: str, allowed: frozenset[str]
) -> tuple[str, RouteFilter]:
    if raw.get("type") is None:
        obj.fail(f"{field}.type", f"required: one of {', '.join(sorted(allowed))}")
    kind = obj.one_of(raw.get("type"), f"{field}.type", allowed, "")
    expected = _FILTER_FIELD[kind]
    for other_kind in sorted(allowed):
        other = _FILTER_FIELD[other_kind]
        if other != expected and raw.get(other) is not None:
            obj.fail(
                f"{field}.{other}",
                f"filter.{other} must be nil if the filter.type is not {other_kind} (it is {kind})",
            )
    if raw.get(expected) is None:
        obj.fail(
            f"{field}.{expected}", f"filter.{expected} must be specified for {kind} filter.type"
        )
    if kind in _UNSUPPORTED_FILTERS:
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


def _filters(
    obj: ObjectReader, value: Any, field: str, allowed: frozenset[str], fields: Fields
) -> list[tuple[str, RouteFilter]]:
    found = [
        _filter(obj, raw, where, allowed)
        for where, raw in _items(obj, value, field, MAX_FILTERS, fields)
    ]
    kinds = [kind for kind, _ in found]
    if "RequestRedirect" in kinds and "URLRewrite" in kinds:
        obj.fail(field, "may specify either RequestRedirect or URLRewrite, but not both")
    for kind in _UNIQUE_FILTERS:
        if kinds.count(kind) > 1:
            index = [i for i, k in enumerate(kinds) if k == kind][1]
            obj.fail(f"{field}[{index}].type", f"the {kind} filter cannot be repeated")
    return found


def _backend_refs(
    obj: ObjectReader, value: Any, field: str, allowed: frozenset[str], filter_fields: Fields
) -> list[tuple[BackendRef, list[str]]]:
    found: list[tuple[BackendRef, list[str]]] = []
    for where, raw in _items(obj, value, field, MAX_BACKEND_REFS, BACKEND_REF_FIELDS):
        backend = _backend_object_ref(obj, raw, where)
        weight = obj.integer(raw.get("weight"), f"{where}.weight", 0, MAX_WEIGHT)
        filters = _filters(obj, raw.get("filters"), f"{where}.filters", allowed, filter_fields)
        found.append(
            (
                BackendRef(backend, 1 if weight is None else weight, tuple(f for _, f in filters)),
                [kind for kind, _ in filters],
            )
        )
    return found


def _replaces_prefix(filters: Sequence[RouteFilter]) -> list[str]:
    """The filters among `filters` that replace a prefix match (redirect or rewrite)."""
    return [
        "RequestRedirect" if isinstance(f, RequestRedirectFilter) else "URLRewrite"
        for f in filters
        if isinstance(f, RequestRedirectFilter | URLRewriteFilter)
        and f.path is not None
        and f.path.type is PathModifierType.REPLACE_PREFIX_MATCH
    ]


def _timeouts(obj: ObjectReader, value: Any, field: str) -> RouteTimeouts | None:
    if value is None:
        return None
    raw = obj.mapping(value, field, TIMEOUTS_FIELDS)
    request = _duration(obj, raw.get("request"), f"{field}.request")
    backend = _duration(obj, raw.get("backendRequest"), f"{field}.backendRequest")
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
    _unique(obj, codes, "code")
    return RouteRetry(
        codes=tuple(int(code) for _, code in codes),
        attempts=obj.integer(raw.get("attempts"), f"{field}.attempts", 1, 2**63 - 1),
        backoff=_duration(obj, raw.get("backoff"), f"{field}.backoff"),
    )


def _rule_name(obj: ObjectReader, value: Any, field: str) -> str | None:
    return _string(obj, value, field, 253, _PRECISE_HOSTNAME)


def _http_rule(obj: ObjectReader, raw: Mapping[str, Any], field: str) -> HTTPRouteRule:
    raw_matches = _items(
        obj, raw.get("matches"), f"{field}.matches", MAX_MATCHES, HTTP_MATCH_FIELDS
    )
    matches = tuple(_http_match(obj, item, where) for where, item in raw_matches)
    if not matches:
        matches = (HTTPRouteMatch(),)  # the CRD's default: path prefix "/"
    filters = _filters(
        obj, raw.get("filters"), f"{field}.filters", HTTP_FILTER_TYPES, FILTER_FIELDS
    )
    backends = _backend_refs(
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
        in_rule = _replaces_prefix(rule_filters).count(kind) == 1
        in_backends = [kind in _replaces_prefix(ref.filters) for ref, _ in backends].count(True)
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
    raw_matches = _items(
        obj, raw.get("matches"), f"{field}.matches", MAX_MATCHES, GRPC_MATCH_FIELDS
    )
    matches = tuple(_grpc_match(obj, item, where) for where, item in raw_matches)
    filters = _filters(
        obj, raw.get("filters"), f"{field}.filters", GRPC_FILTER_TYPES, GRPC_FILTER_FIELDS
    )
    backends = _backend_refs(
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
    rules = _items(obj, spec.get("rules"), "spec.rules", MAX_RULES, fields)
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
