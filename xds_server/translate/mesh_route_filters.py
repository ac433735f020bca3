"""Filters of mesh route rules and the references they resolve, as Envoy route pieces.

`mesh_route_actions` builds a rule's forwarding action; here are the parts it
and `mesh_routes` share: the Service port a rule is translated for
(`Parent`) and the clusters its backendRefs and mirrors resolve to, the
filters (`RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`,
`URLRewrite`, `RequestRedirect`), and the check that a regular expression is
one Envoy's RE2 accepts.  Anything Envoy would reject raises `RuleError`
naming the field as the route's YAML spells it.

* Header modifiers: `set` overwrites, `add` appends, `remove` removes; a
  header named twice, a pseudo-header or `Host` is an error.
* `RequestMirror`: a mirror policy on the backend's cluster, `percent` as a
  runtime fraction; a backend that resolves to nothing is dropped (the spec).
* `URLRewrite`: `hostname` -> `host_rewrite_literal`; `ReplaceFullPath` ->
  a `regex_rewrite` of the whole path; `ReplacePrefixMatch` -> the spec's
  trailing-slash table (`_prefix_replacement`).
* `RequestRedirect`: scheme, host, port, path and status 301/302/303/307/308,
  with the port rules of the spec (an unset port is the scheme's well-known
  one, else the Service port; 80 and 443 are left out of `Location` when the
  host is rewritten; without a hostname Envoy keeps the request's `Host`, so
  any other port is written, as the request may have left it out).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2

from xds_server.model import PortProtocol, Service, ServicePort
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import (
    BackendObjectRef,
    HeaderModifier,
    PathModifier,
    PathModifierType,
    RequestMirrorFilter,
    RequestRedirectFilter,
    RouteFilter,
    URLRewriteFilter,
)
from xds_server.translate.naming import cluster_name, mesh_ports

logger = logging.getLogger(__name__)

NamespacedName = tuple[str, str]

MAX_REGEX_PROGRAM_SIZE = 100
"""Envoy's default `re2.max_program_size.error_level`: a larger regex is NACKed."""

REDIRECT_CODES = {
    301: route_components_pb2.RedirectAction.MOVED_PERMANENTLY,
    302: route_components_pb2.RedirectAction.FOUND,
    303: route_components_pb2.RedirectAction.SEE_OTHER,
    307: route_components_pb2.RedirectAction.TEMPORARY_REDIRECT,
    308: route_components_pb2.RedirectAction.PERMANENT_REDIRECT,
}
WELL_KNOWN_PORTS = {"http": 80, "https": 443}
_UNSETTABLE_HEADERS = frozenset({"host"})


class RuleError(ValueError):
    """A rule Envoy could not carry: `field` as the route's YAML spells it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Parent:
    """The Service port a rule is translated for, and what it may reference."""

    service: Service
    port: ServicePort
    backends: Mapping[NamespacedName, Service]
    """The Services backendRefs and mirrors name that exist, by (namespace, name)."""
    policy: BackendPolicy | None = None
    """The parent's governing BackendPolicy: retry and timeouts for rules without."""

    @property
    def grpc(self) -> bool:
        return self.port.mesh_protocol is PortProtocol.GRPC


# -- references ---------------------------------------------------------------------


def backend_key(ref: BackendObjectRef, route_namespace: str) -> NamespacedName:
    return (ref.namespace or route_namespace, ref.name)


def backend_cluster(ref: BackendObjectRef, route_namespace: str, parent: Parent) -> str | None:
    """The cluster of the Service port `ref` names, or None if there is none."""
    if ref.group not in ("", "core") or ref.kind != "Service":
        return None
    service = parent.backends.get(backend_key(ref, route_namespace))
    if service is None:
        return None
    number = parent.port.port if ref.port is None else ref.port
    for port in mesh_ports(service):
        if port.port == number:
            return cluster_name(service, port)
    return None


# -- filters --------------------------------------------------------------------------


def header_changes(
    modifier: HeaderModifier, field: str, *, response: bool = False
) -> tuple[list[base_pb2.HeaderValueOption], list[str]]:
    """`set` (overwrite), then `add` (append), and the names to `remove`."""
    seen: set[str] = set()
    adds: list[base_pb2.HeaderValueOption] = []
    actions = (
        ("set", modifier.set, base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("add", modifier.add, base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    )
    for verb, pairs, append in actions:
        for index, (name, value) in enumerate(pairs):
            key = _header_name(name, f"{field}.{verb}[{index}].name", response)
            if key in seen:
                raise RuleError(f"{field}.{verb}[{index}].name", f"{name!r} is modified twice")
            seen.add(key)
            adds.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=key, value=value), append_action=append
                )
            )
    removes = []
    for index, name in enumerate(modifier.remove):
        key = _header_name(name, f"{field}.remove[{index}]", response)
        if key in seen:
            raise RuleError(f"{field}.remove[{index}]", f"{name!r} is modified twice")
        seen.add(key)
        removes.append(key)
    return adds, removes


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _header_name(name: str, field: str, response: bool) -> str:
    key = name.lower()
    if not _TOKEN.match(key):
        raise RuleError(field, f"{name!r} is not an HTTP header name")
    if not response and key in _UNSETTABLE_HEADERS:
        raise RuleError(field, f"{name!r} cannot be modified (use URLRewrite hostname)")
    return key


def mirror_policy(
    mirror: RequestMirrorFilter, route_namespace: str, parent: Parent, field: str
) -> route_components_pb2.RouteAction.RequestMirrorPolicy | None:
    """The mirror policy, or None when its backend resolves to nothing (it is dropped)."""
    cluster = backend_cluster(mirror.backend, route_namespace, parent)
    if cluster is None:
        logger.info("%s: mirror backend %s resolves to nothing", field, mirror.backend.name)
        return None
    policy = route_components_pb2.RouteAction.RequestMirrorPolicy(cluster=cluster)
    if mirror.percent is not None:
        if not 0 <= mirror.percent <= 100:
            raise RuleError(f"{field}.percent", f"must be 0-100, not {mirror.percent}")
        policy.runtime_fraction.default_value.CopyFrom(
            percent_pb2.FractionalPercent(
                numerator=round(mirror.percent * 10_000),
                denominator=percent_pb2.FractionalPercent.MILLION,
            )
        )
    return policy


def rewrite(
    action: route_components_pb2.RouteAction,
    given: URLRewriteFilter,
    prefix: str | None,
    field: str,
) -> None:
    """URLRewrite on a forwarding action; `prefix` is the rule's PathPrefix match value."""
    if given.hostname:
        action.host_rewrite_literal = given.hostname
    if given.path is not None:
        _path_rewrite(action, given.path, prefix, f"{field}.path")


def redirect(
    given: RequestRedirectFilter, prefix: str | None, parent: Parent, field: str
) -> route_components_pb2.RedirectAction:
    """The `redirect` action of a RequestRedirect filter (module doc and GEP-726's ports)."""
    code = REDIRECT_CODES.get(given.status_code)
    if code is None:
        raise RuleError(
            f"{field}.statusCode", f"{given.status_code} is not one of {sorted(REDIRECT_CODES)}"
        )
    action = route_components_pb2.RedirectAction(response_code=code)
    scheme = given.scheme.lower() if given.scheme else None
    if scheme is not None:
        if scheme not in WELL_KNOWN_PORTS:
            raise RuleError(f"{field}.scheme", f"{given.scheme!r} is not http or https")
        action.scheme_redirect = scheme
    if given.port is not None and not 1 <= given.port <= 65535:
        raise RuleError(f"{field}.port", f"{given.port} is not a port number")
    final_scheme = scheme or "http"  # mesh traffic is plaintext HTTP to the sidecar
    port = given.port
    if port is None:
        # An unset port is the scheme's well-known one, else the listener's: the Service port.
        port = WELL_KNOWN_PORTS[scheme] if scheme is not None else parent.port.port
    if given.hostname:
        action.host_redirect = given.hostname
        if port != WELL_KNOWN_PORTS[final_scheme]:
            action.port_redirect = port
    elif given.port is not None or scheme is not None or port != WELL_KNOWN_PORTS[final_scheme]:
        # Without a hostname Envoy keeps the request's Host (and its port, or none) unless
        # told one: a Host without a port names port 80, not a Service port 8080.
        action.port_redirect = port
    if given.path is not None:
        if given.path.type is PathModifierType.REPLACE_FULL_PATH:
            _check_path(given.path.value, f"{field}.path.replaceFullPath")
            action.path_redirect = given.path.value
        else:
            base, pattern = _prefix_replacement(given.path, prefix, f"{field}.path")
            if pattern is None:
                action.prefix_rewrite = base
            else:
                action.regex_rewrite.CopyFrom(pattern)
    return action


def _path_rewrite(
    action: route_components_pb2.RouteAction, path: PathModifier, prefix: str | None, field: str
) -> None:
    if path.type is PathModifierType.REPLACE_FULL_PATH:
        _check_path(path.value, f"{field}.replaceFullPath")
        action.regex_rewrite.CopyFrom(_substitution("^.*$", path.value))
        return
    base, pattern = _prefix_replacement(path, prefix, field)
    if pattern is None:
        action.prefix_rewrite = base
    else:
        action.regex_rewrite.CopyFrom(pattern)


def _prefix_replacement(
    path: PathModifier, prefix: str | None, field: str
) -> tuple[str, regex_pb2.RegexMatchAndSubstitute | None]:
    """ReplacePrefixMatch with the spec's trailing-slash table.

    The matched prefix (without its trailing `/`) is replaced by the value
    without its trailing `/`; an empty result is `/`.  Envoy's
    `prefix_rewrite` after a `path_separated_prefix` match does exactly that
    when the replacement is not empty; otherwise a regex does.
    """
    if prefix is None:
        raise RuleError(f"{field}.replacePrefixMatch", "needs exactly one PathPrefix match")
    value = path.value
    if value and not value.startswith("/"):
        raise RuleError(f"{field}.replacePrefixMatch", f"{value!r} must start with /")
    _check_path(value or "/", f"{field}.replacePrefixMatch")
    base = value.rstrip("/")
    matched = prefix.rstrip("/")
    if not matched:  # prefix `/`: every path
        if not base:
            return "", _substitution("^/", "/")
        return "", _substitution("^/", base + "/")
    if base:
        return base, None
    return "", _substitution(f"^{re.escape(matched)}/*", "/")


def _substitution(pattern: str, replacement: str) -> regex_pb2.RegexMatchAndSubstitute:
    return regex_pb2.RegexMatchAndSubstitute(
        pattern=regex_pb2.RegexMatcher(regex=pattern),
        substitution=replacement.replace("\\", "\\\\"),
    )


def _check_path(value: str, field: str) -> None:
    if not value.startswith("/"):
        raise RuleError(field, f"{value!r} must start with /")
    if any(char in value for char in "?#") or any(ord(char) < 0x21 for char in value):
        raise RuleError(field, f"{value!r} is not a path (no query, fragment or spaces)")


def filter_type(given: RouteFilter) -> str:
    return type(given).__name__.removesuffix("Filter")


# -- regular expressions --------------------------------------------------------------

_PARSER: Any = importlib.import_module("re._parser")
_UNSUPPORTED = {
    "ASSERT": "lookaround",
    "ASSERT_NOT": "lookaround",
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
    "POSSESSIVE_REPEAT": "a possessive quantifier",
    "ATOMIC_GROUP": "an atomic group",
}


def check_regex(pattern: str, field: str) -> str:
    """`pattern` if Envoy's RE2 takes it; else `RuleError` (never a NACK of the table).

    RE2 has no lookaround, backreferences or possessive/atomic groups, and
    Envoy refuses a regex whose compiled program is larger than 100
    instructions: the estimate here over-counts a little rather than under.
    """
    if "\\Z" in pattern:
        raise RuleError(field, "\\Z is not RE2 syntax (use $)")
    try:
        parsed = _PARSER.parse(pattern)
    except re.error as error:
        raise RuleError(field, f"{pattern!r} is not a regular expression: {error}") from None
    except RecursionError:
        raise RuleError(field, "the regular expression nests too deeply") from None
    try:
        size = _program_size(parsed) + 2
    except RuleError as error:
        raise RuleError(field, error.message) from None
    if size > MAX_REGEX_PROGRAM_SIZE:
        raise RuleError(
            field,
            f"the regular expression is too complex for Envoy (RE2 program size about {size}, "
            f"at most {MAX_REGEX_PROGRAM_SIZE})",
        )
    return pattern


def _program_size(items: Any) -> int:
    size = 0
    for op, argument in items:
        name = str(op)
        if name in _UNSUPPORTED:
            raise RuleError("", f"RE2 does not support {_UNSUPPORTED[name]}")
        size += _item_size(name, argument)
    return size


def _item_size(name: str, argument: Any) -> int:
    if name in ("LITERAL", "ANY", "AT"):
        return 1
    if name in ("NOT_LITERAL", "CATEGORY"):
        return 3
    if name == "IN":
        negated = any(str(op) == "NEGATE" for op, _ in argument)
        return (3 if negated else 0) + max(1, len(argument) - int(negated))
    if name == "SUBPATTERN":
        return 2 + _program_size(argument[-1])
    if name == "BRANCH":
        branches = argument[1]
        return sum(_program_size(branch) for branch in branches) + len(branches) - 1
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        low, high, body = argument
        inner = _program_size(body)
        if high == _PARSER.MAXREPEAT:
            return inner * max(int(low), 1) + 1
        return inner * max(int(high), 1) + max(int(high) - int(low), 0)
    return 1
