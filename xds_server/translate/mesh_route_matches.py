"""The matches of mesh route rules as Envoy `RouteMatch`es, with their precedence rank.

`mesh_routes` sorts every match of every governing rule by the rank these
return (then by route age, name and rule order), so Envoy's first match is
the spec's highest precedence.

* HTTPRoute path: `Exact` -> `path`; `PathPrefix` -> `path_separated_prefix`
  (element-wise: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not
  `/foobar`; a trailing `/` is ignored; `/` is `prefix: /`);
  `RegularExpression` -> `safe_regex` (RE2, the whole path).  Rank: Exact,
  then RegularExpression (longer first), then PathPrefix (longer first);
  then a method match, more headers, more query parameters.
* Headers (case-insensitive names; `Host` is `:authority`) and query
  parameters: `Exact` or `RegularExpression`, the first entry of a name
  only.  Method: the `:method` header.
* GRPCRoute method: service and method -> `path` `/service/method`; service
  only -> `prefix` `/service/`; method only, or RegularExpression -> a
  regex on the path, a missing part matching any name.  Rank: more
  characters of service, then of method, then more headers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from xds_server.model.routes import (
    GRPCRouteMatch,
    HeaderMatch,
    HTTPRouteMatch,
    MatchType,
    QueryParamMatch,
)
from xds_server.translate.mesh_route_filters import RuleError, check_regex

logger = logging.getLogger(__name__)


def http_match(
    match: HTTPRouteMatch, field: str
) -> tuple[route_components_pb2.RouteMatch, tuple[object, ...]]:
    envoy = route_components_pb2.RouteMatch()
    path = match.path
    if path is None or (path.type is MatchType.PATH_PREFIX and not path.value.rstrip("/")):
        if path is not None:
            _path_value(path.value, f"{field}.path.value")
        envoy.prefix = "/"
        rank: tuple[int, int] = (2, 0)
    elif path.type is MatchType.EXACT:
        envoy.path = _path_value(path.value, f"{field}.path.value")
        rank = (0, -len(path.value))
    elif path.type is MatchType.PATH_PREFIX:
        value = _path_value(path.value, f"{field}.path.value").rstrip("/")
        envoy.path_separated_prefix = value
        rank = (2, -len(value))
    else:
        envoy.safe_regex.CopyFrom(_regex(path.value, f"{field}.path.value"))
        rank = (1, -len(path.value))
    headers = _header_matchers(match.headers, f"{field}.headers")
    if match.method is not None:
        method = match.method.upper()
        if not re.fullmatch(r"[A-Z]+", method):
            raise RuleError(f"{field}.method", f"{match.method!r} is not an HTTP method")
        headers.append(
            route_components_pb2.HeaderMatcher(
                name=":method", string_match=string_pb2.StringMatcher(exact=method)
            )
        )
    envoy.headers.extend(headers)
    envoy.query_parameters.extend(_query_matchers(match.query_params, f"{field}.queryParams"))
    counts = (
        0 if match.method is not None else 1,
        -len({h.name.lower() for h in match.headers}),
        -len({q.name for q in match.query_params}),
    )
    return envoy, (*rank, *counts)


def _path_value(value: str, field: str) -> str:
    if not value.startswith("/"):
        raise RuleError(field, f"{value!r} must start with /")
    if "//" in value or any(char in value for char in "?#") or any(ord(c) < 0x21 for c in value):
        raise RuleError(field, f"{value!r} is not a path (no //, query, fragment or spaces)")
    return value


_ANY_NAME = "[^/]+"


def grpc_match(
    match: GRPCRouteMatch, field: str
) -> tuple[route_components_pb2.RouteMatch, tuple[object, ...]]:
    envoy = route_components_pb2.RouteMatch()
    method = match.method
    service_chars = method_chars = 0
    if method is None:
        envoy.prefix = "/"
    else:
        service, name = method.service or None, method.method or None
        where = f"{field}.method"
        if service is None and name is None:
            raise RuleError(where, "one of service and method must be set")
        service_chars, method_chars = len(service or ""), len(name or "")
        if method.type is MatchType.REGULAR_EXPRESSION:
            pattern = (
                f"/({check_regex(service, f'{where}.service') if service else _ANY_NAME})"
                f"/({check_regex(name, f'{where}.method') if name else _ANY_NAME})"
            )
            envoy.safe_regex.CopyFrom(_regex(pattern, where))
        elif method.type is MatchType.EXACT:
            for value, part in ((service, "service"), (name, "method")):
                if value is not None and ("/" in value or any(ord(char) < 0x21 for char in value)):
                    raise RuleError(f"{where}.{part}", f"{value!r} is not a gRPC name")
            if service is not None and name is not None:
                envoy.path = f"/{service}/{name}"
            elif service is not None:
                envoy.prefix = f"/{service}/"
            else:
                assert name is not None
                envoy.safe_regex.CopyFrom(_regex(f"/{_ANY_NAME}/{re.escape(name)}", where))
        else:
            raise RuleError(
                f"{where}.type", f"{method.type.value} is not Exact or RegularExpression"
            )
    envoy.headers.extend(_header_matchers(match.headers, f"{field}.headers"))
    headers = len({header.name.lower() for header in match.headers})
    return envoy, (-service_chars, -method_chars, -headers)


def _header_matchers(
    headers: Sequence[HeaderMatch], field: str
) -> list[route_components_pb2.HeaderMatcher]:
    """One matcher per header name (the first entry of a name counts, as the spec says)."""
    found: list[route_components_pb2.HeaderMatcher] = []
    seen: set[str] = set()
    for index, header in enumerate(headers):
        name = header.name.lower()
        if name in seen:
            continue
        seen.add(name)
        if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9a-z]+", name):
            raise RuleError(f"{field}[{index}].name", f"{header.name!r} is not a header name")
        found.append(
            route_components_pb2.HeaderMatcher(
                name=":authority" if name == "host" else name,
                string_match=_string_match(header.type, header.value, f"{field}[{index}]"),
            )
        )
    return found


def _query_matchers(
    params: Sequence[QueryParamMatch], field: str
) -> list[route_components_pb2.QueryParameterMatcher]:
    found: list[route_components_pb2.QueryParameterMatcher] = []
    seen: set[str] = set()
    for index, param in enumerate(params):
        if param.name in seen:
            continue
        seen.add(param.name)
        if not param.name:
            raise RuleError(f"{field}[{index}].name", "must not be empty")
        found.append(
            route_components_pb2.QueryParameterMatcher(
                name=param.name,
                string_match=_string_match(param.type, param.value, f"{field}[{index}]"),
            )
        )
    return found


def _string_match(kind: MatchType, value: str, field: str) -> string_pb2.StringMatcher:
    if kind is MatchType.EXACT:
        return string_pb2.StringMatcher(exact=value)
    if kind is MatchType.REGULAR_EXPRESSION:
        return string_pb2.StringMatcher(safe_regex=_regex(value, f"{field}.value"))
    raise RuleError(f"{field}.type", f"{kind.value} is not Exact or RegularExpression")


def _regex(pattern: str, field: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=check_regex(pattern, field))
