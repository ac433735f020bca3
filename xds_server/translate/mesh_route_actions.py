"""What a mesh route rule does, as an Envoy route action: backends, retries, timeouts.

`mesh_routes` decides which rules of which HTTPRoutes and GRPCRoutes govern a
Service port and in which order; this module builds a rule's forwarding
action (its filters are `mesh_route_filters`), and the default route of a
port no route governs, with its BackendPolicy's retry and timeouts.

* `backendRefs` -> `cluster`, or `weighted_clusters` when there are several
  or the one has header modifiers of its own (weight 0 left out).  A
  backendRef whose Service or port does not exist keeps its share, sent to a
  cluster that does not exist with `cluster_not_found_response_code` 500
  (503 for a GRPCRoute: `UNAVAILABLE`), so exactly that share fails as the
  spec says; no backend left at all: a direct response with that status.
  A backendRef without `port` uses the parent's port number (the API
  requires it; a file may leave it out).
* A backendRef's own header modifiers and hostname rewrite go on its
  weighted cluster; its path rewrite, mirror or redirect only when it is the
  rule's one backend (they are then the route's): Envoy cannot scope them to
  one of several clusters, and such a rule is rejected.
* `timeouts.request` -> the route timeout (0 disables it);
  `timeouts.backendRequest` -> the retry policy's `per_try_timeout` only
  (unset `request`: the policy's, else none, so that retries of an attempt
  that timed out still run; httproute-retry-with-timeouts).  `retry` -> `retry_on`
  `connect-failure,refused-stream,reset[,retriable-status-codes]`,
  `retriable_status_codes`, `num_retries` (attempts) and
  `retry_back_off.base_interval` (backoff).
* A rule without its own retry (or timeouts) takes the parent Service's
  BackendPolicy's (`retry`: attempts 2, codes 503, per-try timeout;
  `timeouts`: request, 15s when unset, and idle), as does the default route;
  without those, the mesh default: retry twice only failures before the
  request reached the app, on another host, and no route timeout.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from xds_server.model import PortProtocol
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import (
    BackendRef,
    RequestHeaderModifierFilter,
    ResponseHeaderModifierFilter,
    RouteFilter,
    RouteRetry,
    RouteTimeouts,
    URLRewriteFilter,
)
from xds_server.translate.core import packed, seconds
from xds_server.translate.mesh_route_filters import (
    Parent,
    RuleError,
    backend_cluster,
    filter_type,
    header_changes,
)

logger = logging.getLogger(__name__)

RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"
"""The mesh default: only failures before a request reached the app."""
ROUTE_RETRY_ON = "connect-failure,refused-stream,reset"
"""A route's or policy's retry: connection failures and resets, then its codes."""
NUM_RETRIES = 2
POLICY_RETRY_CODES = (503,)
POLICY_REQUEST_TIMEOUT_S = 15.0
"""A policy's `timeouts` without `request` (the proto's documented default)."""
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 5
PREVIOUS_HOSTS_PREDICATE = "envoy.retry_host_predicates.previous_hosts"
INVALID_BACKEND_CLUSTER = "xds-server|invalid-backend"
"""No such cluster: the share of a backendRef that resolves to nothing fails."""

# -- the default route ------------------------------------------------------------


def base_action(protocol: PortProtocol) -> route_components_pb2.RouteAction:
    """A copy of the default route's action without its cluster: what a rule starts from."""
    action = route_components_pb2.RouteAction()
    action.CopyFrom(_route_template(protocol).route)
    action.ClearField("cluster")
    return action


def default_route(
    cluster: str, protocol: PortProtocol, policy: BackendPolicy | None = None
) -> route_components_pb2.Route:
    """`/` to `cluster`: today's route, with `policy`'s retry and timeouts if it sets them."""
    route = route_components_pb2.Route()
    route.CopyFrom(_route_template(protocol))
    route.route.cluster = cluster
    if policy is not None:
        apply_retry_and_timeouts(route.route, None, None, policy)
    return route


@functools.cache
def _route_template(protocol: PortProtocol) -> route_components_pb2.Route:
    """The outbound route of a `protocol` port but its cluster: built once, copied per port."""
    action = route_components_pb2.RouteAction(
        timeout=seconds(0), retry_policy=_retry_policy(RETRY_ON, NUM_RETRIES)
    )
    if protocol is PortProtocol.GRPC:
        action.max_stream_duration.grpc_timeout_header_max.CopyFrom(seconds(0))
    return route_components_pb2.Route(
        name="default", match=route_components_pb2.RouteMatch(prefix="/"), route=action
    )


def _retry_policy(
    retry_on: str,
    retries: int,
    codes: Sequence[int] = (),
    backoff: duration_pb2.Duration | None = None,
    per_try: duration_pb2.Duration | None = None,
) -> route_components_pb2.RetryPolicy:
    policy = route_components_pb2.RetryPolicy(
        retry_on=retry_on + (",retriable-status-codes" if codes else ""),
        num_retries=wrappers_pb2.UInt32Value(value=retries),
        retriable_status_codes=list(codes),
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name=PREVIOUS_HOSTS_PREDICATE,
                typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )
    if backoff is not None:
        policy.retry_back_off.base_interval.CopyFrom(backoff)
    if per_try is not None:
        policy.per_try_timeout.CopyFrom(per_try)
    return policy


# -- retries and timeouts -----------------------------------------------------------


def apply_retry_and_timeouts(
    action: route_components_pb2.RouteAction,
    retry: RouteRetry | None,
    timeouts: RouteTimeouts | None,
    policy: BackendPolicy | None,
    field: str = "",
) -> None:
    """The rule's own retry and timeouts, else the policy's, on `action` (module doc)."""
    spec = policy.spec() if policy is not None else None
    per_try: duration_pb2.Duration | None = None
    if timeouts is not None and timeouts.backend_request is not None:
        per_try = _duration(timeouts.backend_request, f"{field}.timeouts.backendRequest")
    if retry is not None:
        attempts = NUM_RETRIES if retry.attempts is None else retry.attempts
        if attempts < 0:
            raise RuleError(f"{field}.retry.attempts", f"must not be negative, not {attempts}")
        for code in retry.codes:
            if not 100 <= code <= 599:
                raise RuleError(f"{field}.retry.codes", f"{code} is not an HTTP status")
        backoff = None
        if retry.backoff is not None:
            backoff = _duration(retry.backoff, f"{field}.retry.backoff")
            if backoff.ToNanoseconds() <= 0:
                raise RuleError(f"{field}.retry.backoff", "must be positive")
        action.retry_policy.CopyFrom(
            _retry_policy(ROUTE_RETRY_ON, attempts, sorted(set(retry.codes)), backoff, per_try)
        )
    elif spec is not None and spec.HasField("retry"):
        given = spec.retry
        attempts = given.attempts.value if given.HasField("attempts") else NUM_RETRIES
        codes = sorted(set(given.codes)) or list(POLICY_RETRY_CODES)
        backoff = given.backoff if given.HasField("backoff") else None
        if backoff is not None and backoff.ToNanoseconds() <= 0:
            backoff = None  # Envoy requires a positive base interval: its default then
        policy_per_try = given.per_try_timeout if given.HasField("per_try_timeout") else None
        action.retry_policy.CopyFrom(
            _retry_policy(ROUTE_RETRY_ON, attempts, codes, backoff, per_try or policy_per_try)
        )
    elif per_try is not None:
        action.retry_policy.per_try_timeout.CopyFrom(per_try)

    # `backendRequest` bounds each attempt only: as the route timeout too, it would end
    # the request at the first attempt's deadline and leave its retries no time.
    if timeouts is not None and timeouts.request is not None:
        action.timeout.CopyFrom(_duration(timeouts.request, f"{field}.timeouts.request"))
    elif spec is not None and spec.HasField("timeouts"):
        given_timeouts = spec.timeouts
        if given_timeouts.HasField("request"):
            action.timeout.CopyFrom(given_timeouts.request)
        else:
            action.timeout.CopyFrom(seconds(POLICY_REQUEST_TIMEOUT_S))
        if given_timeouts.HasField("idle"):
            action.idle_timeout.CopyFrom(given_timeouts.idle)


def _duration(value: float, field: str) -> duration_pb2.Duration:
    if value < 0:
        raise RuleError(field, f"must not be negative, not {value}s")
    return seconds(value)


# -- backends -------------------------------------------------------------------------


def forward(
    action: route_components_pb2.RouteAction,
    refs: Sequence[BackendRef],
    route_namespace: str,
    parent: Parent,
    field: str,
    failure: int = 500,
) -> int | None:
    """Point `action` at the rule's backends; the status to answer instead, if none is left.

    A single backend's filters are the caller's to hoist (see `single_backend`);
    here each backend's header modifiers and hostname rewrite go on its
    weighted cluster.
    """
    status = failure
    weighted = [(index, ref) for index, ref in enumerate(refs) if ref.weight > 0]
    for index, ref in enumerate(refs):
        if ref.weight < 0:
            raise RuleError(f"{field}.backendRefs[{index}].weight", "must not be negative")
    if not weighted:
        return status
    targets = [
        (index, ref, backend_cluster(ref.backend, route_namespace, parent))
        for index, ref in weighted
    ]
    if all(cluster is None for _, _, cluster in targets):
        return status
    if len(targets) == 1 and not targets[0][1].filters:
        _, _, cluster = targets[0]
        assert cluster is not None
        action.cluster = cluster
        return None
    invalid = 0
    for index, ref, cluster in targets:
        if cluster is None:
            invalid += ref.weight
            continue
        entry = action.weighted_clusters.clusters.add(
            name=cluster, weight=wrappers_pb2.UInt32Value(value=ref.weight)
        )
        _backend_filters(entry, ref.filters, f"{field}.backendRefs[{index}].filters")
    if invalid:
        action.weighted_clusters.clusters.add(
            name=INVALID_BACKEND_CLUSTER, weight=wrappers_pb2.UInt32Value(value=invalid)
        )
        action.cluster_not_found_response_code = (
            route_components_pb2.RouteAction.SERVICE_UNAVAILABLE
            if failure == 503
            else route_components_pb2.RouteAction.INTERNAL_SERVER_ERROR
        )
    return None


def single_backend(refs: Sequence[BackendRef]) -> BackendRef | None:
    """The one backend with a share, if the rule has exactly one."""
    weighted = [ref for ref in refs if ref.weight > 0]
    return weighted[0] if len(weighted) == 1 else None


def _backend_filters(
    entry: route_components_pb2.WeightedCluster.ClusterWeight,
    filters: Sequence[RouteFilter],
    field: str,
) -> None:
    """A backend's own filters on its weighted cluster (only what Envoy scopes there)."""
    for index, given in enumerate(filters):
        where = f"{field}[{index}]"
        if isinstance(given, RequestHeaderModifierFilter):
            adds, removes = header_changes(given.modifier, f"{where}.requestHeaderModifier")
            entry.request_headers_to_add.extend(adds)
            entry.request_headers_to_remove.extend(removes)
        elif isinstance(given, ResponseHeaderModifierFilter):
            adds, removes = header_changes(
                given.modifier, f"{where}.responseHeaderModifier", response=True
            )
            entry.response_headers_to_add.extend(adds)
            entry.response_headers_to_remove.extend(removes)
        elif isinstance(given, URLRewriteFilter) and given.path is None:
            if given.hostname:
                entry.host_rewrite_literal = given.hostname
        else:
            raise RuleError(
                where,
                f"{filter_type(given)} on one of several backendRefs is not supported "
                "(Envoy applies it to the whole route): put it on the rule",
            )
