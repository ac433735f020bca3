"""Envoy matchers for AuthorizationPolicy values: Istio's wildcard forms, SPIFFE IDs.

A value is exact, `prefix*`, `*suffix` or `*` (present / any); principals take
the `spiffe://` scheme when written in Istio's form (`td/ns/x/sa/y`); a
namespace matches the `/ns/<namespace>/` segment of the peer's URI SAN with an
RE2 regex.  `translate.authorization` combines these into RBAC policies.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

logger = logging.getLogger(__name__)


def string_matcher(pattern: str) -> string_pb2.StringMatcher:
    """Istio's value forms: exact, `prefix*`, `*suffix`; "*" alone is handled by callers."""
    if pattern.endswith("*"):
        return string_pb2.StringMatcher(prefix=pattern[:-1])
    if pattern.startswith("*"):
        return string_pb2.StringMatcher(suffix=pattern[1:])
    return string_pb2.StringMatcher(exact=pattern)


def port_permission(port: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_port=int(port))


def path_permission(pattern: str) -> rbac_pb2.Permission:
    if pattern == "*":
        pattern = "/*"
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_matcher(pattern)))


def header_of(name: str) -> Callable[[str], rbac_pb2.Permission]:
    return lambda pattern: header_permission(name, pattern)


def header_permission(name: str, pattern: str) -> rbac_pb2.Permission:
    header = route_components_pb2.HeaderMatcher(name=name)
    if pattern == "*":
        header.present_match = True
    else:
        header.string_match.CopyFrom(string_matcher(pattern))
    return rbac_pb2.Permission(header=header)


def spiffe_pattern(principal: str) -> str:
    """A principal pattern with the `spiffe://` scheme (Istio writes it without)."""
    if principal.startswith(("spiffe://", "*")):
        return principal
    return f"spiffe://{principal}"


def principal_id(pattern: str) -> rbac_pb2.Principal:
    authenticated = rbac_pb2.Principal.Authenticated()
    if pattern != "*":
        authenticated.principal_name.CopyFrom(string_matcher(spiffe_pattern(pattern)))
    return rbac_pb2.Principal(authenticated=authenticated)


def namespace_regex(pattern: str) -> str:
    """The URI SAN regex (RE2) of a SPIFFE ID in a namespace matching `pattern`."""
    if pattern == "*":
        namespace = "[^/]+"
    elif pattern.endswith("*"):
        namespace = re.escape(pattern[:-1]) + "[^/]*"
    elif pattern.startswith("*"):
        namespace = "[^/]*" + re.escape(pattern[1:])
    else:
        namespace = re.escape(pattern)
    return f"spiffe://[^/]+/ns/{namespace}/.*"


def namespace_id(pattern: str) -> rbac_pb2.Principal:
    regex = regex_pb2.RegexMatcher(regex=namespace_regex(pattern))
    name = string_pb2.StringMatcher(safe_regex=regex)
    return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=name))
