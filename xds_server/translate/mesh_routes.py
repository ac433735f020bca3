"""Gateway API mesh routes (GAMMA) attached to one Service port, as Envoy routes.

Pure functions: model values in (`model.routes`), `route_components_pb2.Route`
lists out.  `virtual_hosts` puts them in a port's virtual host.  The parts:
`mesh_route_matches` (matches and their precedence rank),
`mesh_route_filters` (filters, references, regex checks) and
`mesh_route_actions` (backends, retries, timeouts, the default route).
What is implemented and where the spec says so: docs/routes.md.

Which routes govern a port (GEP-1294, "Namespace boundaries", "Ports"):

* a route binds to Service S when a parentRef names S (group "" or core,
  kind Service), on every port or only on `port` (or the port named by
  `sectionName`);
* a *producer* route (in S's namespace) governs every caller;
* a *consumer* route (in another namespace) governs only callers in its own
  namespace, and for them replaces the producer routes of that port;
* when GRPCRoutes and HTTPRoutes bind to one port, the GRPCRoutes win and
  the HTTPRoutes are `Conflicted` (GEP-1294, "Route types");
* once routes govern a port, a request that matches none gets 404 (the
  virtual host simply has no route for it); a port no route governs keeps
  the default route to its own cluster.

Order: every match of every rule of every governing route becomes one Envoy
route, sorted by the spec's precedence (HTTPRouteRule.matches / GRPCRouteRule
.matches), first match wins:

* HTTPRoute: Exact path, then RegularExpression path (implementation-specific:
  longer patterns first), then PathPrefix by length; then a method match;
  then more header matches; then more query parameter matches;
* GRPCRoute: more characters of service, then of method; then more header
  matches;
* ties: the oldest route by creationTimestamp (none: after every dated
  one), then namespace/name, then rule order, then match order.

A rule Envoy cannot carry (a bad regex, incompatible filters, ...) is left
out and reported as a `RouteIssue` naming the route and the field; a route
with no rule left does not bind, and other routes and Services are
untouched.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2

from xds_server.model import PortProtocol, Service, ServicePort
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import (
    BackendRef,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    MeshRoute,
    RequestHeaderModifierFilter,
    RequestMirrorFilter,
    RequestRedirectFilter,
    ResponseHeaderModifierFilter,
    RouteFilter,
    URLRewriteFilter,
    service_parents,
)
from xds_server.translate.mesh_route_actions import (
    apply_retry_and_timeouts,
    base_action,
    forward,
    single_backend,
)
from xds_server.translate.mesh_route_filters import (
    NamespacedName,
    Parent,
    RuleError,
    backend_key,
    header_changes,
    mirror_policy,
    redirect,
    rewrite,
)
from xds_server.translate.mesh_route_matches import grpc_match, http_match
from xds_server.translate.provenance import route_key

logger = logging.getLogger(__name__)

PRODUCER: None = None
"""The key of the routes that govern every caller of a port (`governing_routes`)."""


@dataclass(frozen=True, slots=True)
class RouteIssue:
    """Why a rule (or a whole route) was left out of a port's routes."""

    route: str
    """`HTTPRoute/ns/name` or `GRPCRoute/ns/name`."""
    field: str
    message: str
    conflict: bool = False
    """The whole route lost its port to another route type (not a rule it got wrong)."""

    def __str__(self) -> str:
        return f"{self.route}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class PortRoutes:
    """One group of callers' routes for one Service port."""

    routes: tuple[route_components_pb2.Route, ...]
    """In precedence order; empty: no route binds (the port keeps its default route)."""
    sources: tuple[str, ...]
    """The keys of the routes that contributed a rule."""
    issues: tuple[RouteIssue, ...] = ()


# -- which routes govern a port, for whom ---------------------------------------------


def binds_to_port(route: MeshRoute, service: Service, port: ServicePort) -> bool:
    """Whether a parentRef of `route` names `service` on `port` (or on every port)."""
    for parent in service_parents(route):
        if (parent.namespace, parent.name) != (service.namespace, service.name):
            continue
        if parent.port is not None and parent.port != port.port:
            continue
        if parent.section_name is not None and parent.section_name != port.name:
            continue
        return True
    return False


def governing_routes(
    service: Service, port: ServicePort, routes: Iterable[MeshRoute]
) -> dict[str | None, tuple[MeshRoute, ...]]:
    """The routes bound to one port, by whom they govern: `PRODUCER` (None) for every
    caller without consumer routes of its own, else the consumer namespace."""
    groups: dict[str | None, list[MeshRoute]] = {}
    for route in routes:
        if binds_to_port(route, service, port):
            who = PRODUCER if route.namespace == service.namespace else route.namespace
            groups.setdefault(who, []).append(route)
    return {who: tuple(found) for who, found in groups.items()}


def referenced_backends(routes: Iterable[MeshRoute]) -> frozenset[NamespacedName]:
    """(namespace, name) of every Service the routes send or mirror to."""
    found: set[NamespacedName] = set()
    for route in routes:
        for rule in route.rules:
            refs: Sequence[BackendRef] = rule.backend_refs
            filters: list[RouteFilter] = list(rule.filters)
            for ref in refs:
                found.add(backend_key(ref.backend, route.namespace))
                filters.extend(ref.filters)
            for given in filters:
                if isinstance(given, RequestMirrorFilter):
                    found.add(backend_key(given.backend, route.namespace))
    return frozenset(found)


# -- translation --------------------------------------------------------------------


def port_routes(
    service: Service,
    port: ServicePort,
    routes: Sequence[MeshRoute],
    backends: Mapping[NamespacedName, Service],
    policy: BackendPolicy | None = None,
) -> PortRoutes:
    """The Envoy routes of one group of `governing_routes` (module doc)."""
    parent = Parent(service, port, backends, policy)
    grpc = [route for route in routes if isinstance(route, GRPCRoute)]
    http = [route for route in routes if isinstance(route, HTTPRoute)]
    issues: list[RouteIssue] = []
    entries = _translated(grpc, parent, issues)
    if entries:
        issues.extend(
            RouteIssue(
                route_key(route),
                "spec.parentRefs",
                f"Conflicted: a GRPCRoute binds to {service.namespace}/{service.name} "
                f"port {port.port}, and wins over HTTPRoutes",
                conflict=True,
            )
            for route in http
        )
    else:
        entries = _translated(http, parent, issues)
    entries.sort(key=lambda entry: entry[0])
    sources = sorted({entry[1] for entry in entries})
    return PortRoutes(tuple(entry[2] for entry in entries), tuple(sources), tuple(issues))


_Entry = tuple[tuple[object, ...], str, route_components_pb2.Route]
"""(precedence key, route key, Envoy route)."""


def _translated(
    routes: Sequence[MeshRoute], parent: Parent, issues: list[RouteIssue]
) -> list[_Entry]:
    entries: list[_Entry] = []
    for route in routes:
        key = route_key(route)
        tie = (_age(route), route.namespace, route.name)
        for index, rule in enumerate(route.rules):
            field = f"spec.rules[{index}]"
            try:
                if isinstance(route, HTTPRoute):
                    assert isinstance(rule, HTTPRouteRule)
                    built = _http_rule(route, rule, field, parent)
                else:
                    assert isinstance(rule, GRPCRouteRule)
                    built = _grpc_rule(route, rule, field, parent)
            except RuleError as error:
                logger.warning("%s: %s (rule left out)", key, error)
                issues.append(RouteIssue(key, error.field, error.message))
                continue
            for position, (rank, envoy_route) in enumerate(built):
                envoy_route.name = f"{key}/{rule.name or index}"
                entries.append(((*rank, *tie, index, position), key, envoy_route))
        if not route.rules:
            issues.append(RouteIssue(key, "spec.rules", "the route has no rules"))
    return entries


def _age(route: MeshRoute) -> tuple[int, object]:
    """Oldest first; an unparsable timestamp by its text; none after every dated route."""
    if route.creation_timestamp is None:
        return (2, "")
    try:
        moment = datetime.datetime.fromisoformat(route.creation_timestamp)
    except ValueError:
        return (1, route.creation_timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (0, moment.timestamp())


# -- HTTPRoute rules ------------------------------------------------------------------


def _http_rule(
    route: HTTPRoute, rule: HTTPRouteRule, field: str, parent: Parent
) -> list[tuple[tuple[object, ...], route_components_pb2.Route]]:
    """Each match of the rule as (precedence rank, Envoy route), sharing one action."""
    if not rule.matches:
        raise RuleError(f"{field}.matches", "a rule needs at least one match")
    matches = [
        http_match(match, f"{field}.matches[{index}]") for index, match in enumerate(rule.matches)
    ]
    prefix = _only_prefix(rule.matches)
    template = _rule_route(
        route.namespace, rule.filters, rule.backend_refs, prefix, parent, field, failure=500
    )
    if template.HasField("route"):
        apply_retry_and_timeouts(template.route, rule.retry, rule.timeouts, parent.policy, field)
    built = []
    for match, rank in matches:
        envoy_route = route_components_pb2.Route()
        envoy_route.CopyFrom(template)
        envoy_route.match.CopyFrom(match)
        built.append((rank, envoy_route))
    return built


def _only_prefix(matches: Sequence[HTTPRouteMatch]) -> str | None:
    """The PathPrefix value of a rule's single match (what ReplacePrefixMatch replaces)."""
    if len(matches) != 1:
        return None
    path = matches[0].path
    if path is None:
        return "/"
    return path.value if path.type is MatchType.PATH_PREFIX else None


def _rule_route(
    namespace: str,
    filters: Sequence[RouteFilter],
    refs: Sequence[BackendRef],
    prefix: str | None,
    parent: Parent,
    field: str,
    *,
    failure: int,
) -> route_components_pb2.Route:
    """A rule's action and filters, without its match (module doc of `mesh_route_actions`)."""
    located: list[tuple[RouteFilter, str]] = [
        (given, f"{field}.filters[{index}]") for index, given in enumerate(filters)
    ]
    rule_redirects = any(isinstance(given, RequestRedirectFilter) for given in filters)
    if rule_redirects and any(ref.weight > 0 for ref in refs):
        raise RuleError(f"{field}.filters", "RequestRedirect cannot be combined with backendRefs")
    only = single_backend(refs)
    if only is not None:
        # Its rewrite, mirrors and redirect are the route's (Envoy cannot scope them to
        # one weighted cluster); its header modifiers stay on its cluster.
        position = list(refs).index(only)
        kept: list[RouteFilter] = []
        for index, given in enumerate(only.filters):
            if isinstance(given, URLRewriteFilter | RequestMirrorFilter | RequestRedirectFilter):
                located.append((given, f"{field}.backendRefs[{position}].filters[{index}]"))
            else:
                kept.append(given)
        refs = [BackendRef(only.backend, only.weight, tuple(kept))]
    _check_filter_kinds(located)
    route = route_components_pb2.Route()
    redirects = [(f, where) for f, where in located if isinstance(f, RequestRedirectFilter)]
    if redirects:
        given, where = redirects[0]
        assert isinstance(given, RequestRedirectFilter)
        route.redirect.CopyFrom(redirect(given, prefix, parent, f"{where}.requestRedirect"))
    else:
        action = base_action(parent.port.mesh_protocol)
        status = forward(action, refs, namespace, parent, field, failure)
        for given, where in located:  # checked even when no backend is left
            if isinstance(given, URLRewriteFilter):
                rewrite(action, given, prefix, f"{where}.urlRewrite")
            elif isinstance(given, RequestMirrorFilter):
                mirror = mirror_policy(given, namespace, parent, f"{where}.requestMirror")
                if mirror is not None:
                    action.request_mirror_policies.append(mirror)
        if status is not None:
            route.direct_response.status = status
        else:
            route.route.CopyFrom(action)
    for given, where in located:
        if isinstance(given, RequestHeaderModifierFilter):
            adds, removes = header_changes(given.modifier, f"{where}.requestHeaderModifier")
            route.request_headers_to_add.extend(adds)
            route.request_headers_to_remove.extend(removes)
        elif isinstance(given, ResponseHeaderModifierFilter):
            adds, removes = header_changes(
                given.modifier, f"{where}.responseHeaderModifier", response=True
            )
            route.response_headers_to_add.extend(adds)
            route.response_headers_to_remove.extend(removes)
    return route


def _check_filter_kinds(located: Sequence[tuple[RouteFilter, str]]) -> None:
    """At most one of each filter but mirrors; never URLRewrite with RequestRedirect."""
    seen: dict[type, str] = {}
    for given, where in located:
        kind = type(given)
        if kind is not RequestMirrorFilter and kind in seen:
            raise RuleError(where, f"{kind.__name__.removesuffix('Filter')} is repeated")
        seen[kind] = where
    if URLRewriteFilter in seen and RequestRedirectFilter in seen:
        raise RuleError(
            seen[RequestRedirectFilter], "URLRewrite and RequestRedirect cannot be combined"
        )


# -- GRPCRoute rules ------------------------------------------------------------------


def _grpc_rule(
    route: GRPCRoute, rule: GRPCRouteRule, field: str, parent: Parent
) -> list[tuple[tuple[object, ...], route_components_pb2.Route]]:
    if not rule.matches:
        raise RuleError(f"{field}.matches", "a rule needs at least one match")
    matches = [
        grpc_match(match, f"{field}.matches[{index}]") for index, match in enumerate(rule.matches)
    ]
    for index, given in enumerate(rule.filters):
        if isinstance(given, URLRewriteFilter | RequestRedirectFilter):
            raise RuleError(
                f"{field}.filters[{index}]", "GRPCRoute has no URLRewrite or RequestRedirect"
            )
    template = _rule_route(
        route.namespace, rule.filters, rule.backend_refs, None, parent, field, failure=503
    )
    if template.HasField("route"):
        apply_retry_and_timeouts(template.route, None, None, parent.policy, field)
        if parent.port.mesh_protocol is not PortProtocol.GRPC:
            template.route.max_stream_duration.grpc_timeout_header_max.FromSeconds(0)
    built = []
    for match, rank in matches:
        envoy_route = route_components_pb2.Route()
        envoy_route.CopyFrom(template)
        envoy_route.match.CopyFrom(match)
        built.append((rank, envoy_route))
    return built
