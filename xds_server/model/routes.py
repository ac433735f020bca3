"""Gateway API routes in their mesh form (GAMMA): HTTPRoute and GRPCRoute attached to Services.

Frozen values mirroring `gateway.networking.k8s.io/v1` closely, after the
defaults the CRD schemas declare have been applied by the source (a rule
without `matches` matches path prefix `/`, a backendRef without `weight`
weighs 1, a path match without `type` is `PathPrefix`), so translation never
has to know them.  A route's `parent_refs` that name a Service (group "",
kind Service) make it a mesh route for that Service; other parents are not
the mesh's business and are ignored.

Durations are seconds (floats); unset optional fields are None, so "unset"
and "zero" stay distinct as in the API.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from xds_server.provenance import Origin


class MatchType(enum.Enum):
    """How a string is matched (path, header, query parameter, gRPC method)."""

    EXACT = "Exact"
    PATH_PREFIX = "PathPrefix"
    REGULAR_EXPRESSION = "RegularExpression"


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A route's parent: a Service for a mesh route (GAMMA)."""

    name: str
    namespace: str | None = None
    """None: the route's own namespace."""
    group: str = ""
    kind: str = "Service"
    port: int | None = None
    """Only traffic to this Service port; None: every port."""
    section_name: str | None = None

    @property
    def is_service(self) -> bool:
        return self.group in ("", "core") and self.kind == "Service"


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: MatchType = MatchType.PATH_PREFIX
    value: str = "/"


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A header (HTTP) or metadata key (gRPC) and the value it must have."""

    name: str
    value: str
    type: MatchType = MatchType.EXACT


@dataclass(frozen=True, slots=True)
class QueryParamMatch:
    name: str
    value: str
    type: MatchType = MatchType.EXACT


@dataclass(frozen=True, slots=True)
class HTTPRouteMatch:
    """All of its conditions must hold (a rule's matches are OR'ed)."""

    path: PathMatch | None = PathMatch()
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    """`service` and `method` of `/service/method`; None matches any."""

    service: str | None = None
    method: str | None = None
    type: MatchType = MatchType.EXACT


@dataclass(frozen=True, slots=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """`RequestHeaderModifier` / `ResponseHeaderModifier`: set, add, then remove."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


class PathModifierType(enum.Enum):
    REPLACE_FULL_PATH = "ReplaceFullPath"
    REPLACE_PREFIX_MATCH = "ReplacePrefixMatch"


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: PathModifierType
    value: str


@dataclass(frozen=True, slots=True)
class BackendObjectRef:
    """A Service (and port) a route sends to or mirrors to."""

    name: str
    namespace: str | None = None
    """None: the route's own namespace."""
    port: int | None = None
    group: str = ""
    kind: str = "Service"


@dataclass(frozen=True, slots=True)
class RequestHeaderModifierFilter:
    modifier: HeaderModifier


@dataclass(frozen=True, slots=True)
class ResponseHeaderModifierFilter:
    modifier: HeaderModifier


@dataclass(frozen=True, slots=True)
class RequestMirrorFilter:
    backend: BackendObjectRef
    percent: float | None = None
    """Share of requests mirrored, 0-100; None: all (`percent` or `fraction` in the API)."""


@dataclass(frozen=True, slots=True)
class URLRewriteFilter:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class RequestRedirectFilter:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


RouteFilter = (
    RequestHeaderModifierFilter
    | ResponseHeaderModifierFilter
    | RequestMirrorFilter
    | URLRewriteFilter
    | RequestRedirectFilter
)


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A weighted backend of a rule, with filters of its own."""

    backend: BackendObjectRef
    weight: int = 1
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteTimeouts:
    request: float | None = None
    """Seconds for the whole request, retries included; 0 disables."""
    backend_request: float | None = None
    """Seconds per attempt to the backend."""


@dataclass(frozen=True, slots=True)
class RouteRetry:
    codes: tuple[int, ...] = ()
    """HTTP status codes retried (besides connection failures)."""
    attempts: int | None = None
    """Retries after the first attempt; None: the implementation's default."""
    backoff: float | None = None
    """Base interval between attempts, in seconds."""


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: RouteTimeouts | None = None
    retry: RouteRetry | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = (GRPCRouteMatch(),)
    filters: tuple[RouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    namespace: str
    name: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = ()
    creation_timestamp: str | None = None
    """RFC 3339 as the API gives it; breaks ties between conflicting routes (oldest wins)."""
    generation: int = 0
    origin: Origin | None = field(default=None, compare=False, repr=False)
    """Where the source read it (provenance); not part of its value."""


@dataclass(frozen=True, slots=True)
class GRPCRoute:
    namespace: str
    name: str
    parent_refs: tuple[ParentRef, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = ()
    creation_timestamp: str | None = None
    generation: int = 0
    origin: Origin | None = field(default=None, compare=False, repr=False)
    """Where the source read it (provenance); not part of its value."""


MeshRoute = HTTPRoute | GRPCRoute


def service_parents(route: MeshRoute) -> tuple[ParentRef, ...]:
    """The parentRefs naming Services, each with its namespace filled in."""
    return tuple(
        ParentRef(
            name=ref.name,
            namespace=ref.namespace or route.namespace,
            group=ref.group,
            kind=ref.kind,
            port=ref.port,
            section_name=ref.section_name,
        )
        for ref in route.parent_refs
        if ref.is_service
    )
