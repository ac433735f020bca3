"""The Gateway API route CRDs' schema, as data, and the readers that check values against it.

`convert_routes` reads HTTPRoute and GRPCRoute manifests; this module owns
what their schema says of single values, as the upstream CRDs at
`convert_routes.GATEWAY_API_VERSION` declare it: the patterns of names,
hostnames, header names and path characters (with the words an error uses
for each), the enums, the list caps, each object's fields (the standard
channel's, and `rules[].retry`), and the two value languages the schema
names: GEP-2257 durations (`parse_duration`) and regular expressions, which
Envoy compiles as RE2 (`regex_problem`: checked as Python's `re` after
rewriting RE2-only syntax, the constructs RE2 lacks refused).  The readers
(`text_field`, `duration_field`, `items_of`, ...) fail through the
`ObjectReader`, naming the field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from xds_server.sources.convert_common import bounded_string
from xds_server.sources.object_reader import ObjectReader, show
from xds_server.sources.schema import Fields

logger = logging.getLogger(__name__)

# -- the schema's strings --------------------------------------------------------------

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
HOSTNAME_PATTERN = re.compile(r"(\*\.)?" + _SUBDOMAIN)
PRECISE_HOSTNAME_PATTERN = re.compile(_SUBDOMAIN)
GROUP_PATTERN = re.compile(r"(" + _SUBDOMAIN + r")?")
KIND_PATTERN = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?")
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
HEADER_NAME_PATTERN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
PATH_CHARS_PATTERN = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+")
GRPC_SERVICE_PATTERN = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
GRPC_METHOD_PATTERN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_DESCRIBED = {
    HOSTNAME_PATTERN: "a hostname (lowercase DNS labels, optionally prefixed with '*.')",
    PRECISE_HOSTNAME_PATTERN: "a hostname (lowercase DNS labels)",
    GROUP_PATTERN: "empty or an API group (a DNS subdomain)",
    KIND_PATTERN: "a kind name (letters, digits and '-', starting with a letter)",
    NAMESPACE_PATTERN: "a DNS label (lowercase letters, digits and '-')",
    HEADER_NAME_PATTERN: "a header name (RFC 7230 token characters)",
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
FILTER_FIELD = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
    "CORS": "cors",
}
UNSUPPORTED_FILTERS = frozenset({"ExtensionRef", "CORS"})
UNIQUE_FILTERS = (
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

INT32_MAX = 2**31 - 1

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


def text_field(
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


def required_text(obj: ObjectReader, value: Any, field: str, max_length: int) -> str:
    text = text_field(obj, value, field, max_length, required=True)
    assert text is not None
    return text


def check_regex(obj: ObjectReader, value: str, field: str) -> None:
    problem = regex_problem(value)
    if problem is not None:
        obj.fail(field, f"not a valid RE2 regular expression ({problem}), got {show(value)}")


def duration_field(obj: ObjectReader, value: Any, field: str) -> float | None:
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


def items_of(
    obj: ObjectReader, value: Any, field: str, limit: int, fields: Fields
) -> list[tuple[str, Mapping[str, Any]]]:
    """A list of objects: each item's path and its fields, type-checked."""
    return [
        (f"{field}[{i}]", obj.mapping(item, f"{field}[{i}]", fields))
        for i, item in enumerate(obj.sequence(value, field, limit))
    ]


def check_unique(obj: ObjectReader, keys: Iterable[tuple[str, str]], what: str) -> None:
    """List-map keys (`x-kubernetes-list-type: map`) and sets: each value once."""
    seen: set[str] = set()
    for field, key in keys:
        if key in seen:
            obj.fail(field, f"duplicate {what} {show(key)}")
        seen.add(key)
