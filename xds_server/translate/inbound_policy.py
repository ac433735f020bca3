"""A BackendPolicy's fault injection and local rate limit, on the target's own sidecar.

Most of a BackendPolicy shapes how callers reach a Service (their clusters);
`faultInjection` and `localRateLimit` act where the target accepts requests:
its sidecar's inbound side, the inbound listener of each port (and, with
captured traffic, the `virtual_inbound` filter chains of that port).  This
module turns those two parts of a spec into Envoy filters, with no I/O:

* `faultInjection` -> `envoy.filters.http.fault`: `delay` holds a share of
  requests for `fixedDelay` before they go on to the app, `abort` answers a
  share with `httpStatus` without reaching it.  Shares are percentages in the
  API (unset: 100) and a `FractionalPercent` per million in Envoy, so 0.0001 %
  steps are exact.  Delay and abort are drawn independently; a request that is
  both delayed and aborted is answered with the abort after the delay.
* `localRateLimit` -> `envoy.filters.http.local_ratelimit`: one token bucket
  (`maxTokens`, `tokensPerFill`, unset 1, every `fillInterval`) per inbound
  port of the sidecar, shared by its worker threads; a request finding the
  bucket empty is answered 429 with `x-mesh-ratelimited: true` and never
  reaches the app.  Always enabled and enforced (100 %).
* on a TCP port, `localRateLimit` -> `envoy.filters.network.local_ratelimit`
  before the TCP proxy: the bucket counts connections, and a connection
  finding it empty is closed.  The same filter guards the TCP fallback chain
  of a captured HTTP port, so speaking something other than HTTP to the port
  does not bypass the limit.  Fault injection is HTTP-only: TCP ports get none.

Order in the HTTP connection manager: rate limit, fault, router.  A request
the bucket refuses is answered at once, not delayed first; a request the
fault filter aborts has consumed a token, like any request the sidecar
accepted.

A policy without either part adds nothing, so a port governed by no policy,
or by one about load balancing only, keeps exactly the bytes it had.

Values Envoy would reject (a zero delay or fill interval, a fill interval
under Envoy's 50 ms floor, a percentage outside 0-100, a status outside
200-599) raise `InvalidInboundPolicy` naming the policy and the field (in the
CRD's camelCase), so the pipeline blames the policy and keeps the proxy's last
good config; `inbound_policy_errors` lists them without raising, for status.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import (
    local_rate_limit_pb2 as http_local_rate_limit_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.local_ratelimit.v3 import (
    local_rate_limit_pb2 as network_local_rate_limit_pb2,
)
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from xds_server.model.policy import BackendPolicy
from xds_server.policy_api import backend_policy_pb2
from xds_server.translate.core import packed

logger = logging.getLogger(__name__)

FAULT = "envoy.filters.http.fault"
HTTP_LOCAL_RATE_LIMIT = "envoy.filters.http.local_ratelimit"
NETWORK_LOCAL_RATE_LIMIT = "envoy.filters.network.local_ratelimit"
RATE_LIMITED_HEADER = "x-mesh-ratelimited"
RATE_LIMITED_STATUS = 429
PER_MILLION = 1_000_000
MIN_FILL_INTERVAL_NANOS = 50_000_000
"""Envoy refuses a token bucket refilled more often than every 50 ms."""

_NANOS = 1_000_000_000


class InvalidInboundPolicy(ValueError):
    """A policy's fault injection or rate limit that Envoy would reject."""


def has_inbound_effect(policy: BackendPolicy | None) -> bool:
    """Whether `policy` adds anything to its targets' sidecars (fault or rate limit)."""
    if policy is None:
        return False
    spec = policy.spec()
    return _has_fault(spec) or spec.HasField("local_rate_limit")


def inbound_http_filters(
    policy: BackendPolicy | None, stat_prefix: str
) -> list[hcm_pb2.HttpFilter]:
    """The HTTP filters `policy` puts before the router of an inbound port, in order.

    `stat_prefix` names the rate limiter's stats (`<prefix>.http_local_rate_limit.*`).
    Empty for no policy, or one with neither part.
    """
    if policy is None:
        return []
    _check(policy)
    spec = policy.spec()
    filters: list[hcm_pb2.HttpFilter] = []
    if spec.HasField("local_rate_limit"):
        filters.append(
            hcm_pb2.HttpFilter(
                name=HTTP_LOCAL_RATE_LIMIT,
                typed_config=packed(http_local_rate_limit(spec.local_rate_limit, stat_prefix)),
            )
        )
    if _has_fault(spec):
        filters.append(
            hcm_pb2.HttpFilter(name=FAULT, typed_config=packed(http_fault(spec.fault_injection)))
        )
    return filters


def inbound_network_filters(
    policy: BackendPolicy | None, stat_prefix: str
) -> list[listener_components_pb2.Filter]:
    """The network filters `policy` puts before an inbound TCP proxy: the connection limit."""
    if policy is None:
        return []
    _check(policy)
    spec = policy.spec()
    if not spec.HasField("local_rate_limit"):
        return []
    limit = network_local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=stat_prefix, token_bucket=token_bucket(spec.local_rate_limit)
    )
    return [
        listener_components_pb2.Filter(name=NETWORK_LOCAL_RATE_LIMIT, typed_config=packed(limit))
    ]


def http_fault(spec: backend_policy_pb2.FaultInjection) -> fault_pb2.HTTPFault:
    """`envoy.filters.http.fault` for a (checked) `faultInjection`."""
    fault = fault_pb2.HTTPFault()
    if spec.HasField("delay"):
        fault.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=_duration(spec.delay.fixed_delay),
                percentage=_share(spec.delay),
            )
        )
    if spec.HasField("abort"):
        fault.abort.CopyFrom(
            fault_pb2.FaultAbort(http_status=spec.abort.http_status, percentage=_share(spec.abort))
        )
    return fault


def http_local_rate_limit(
    spec: backend_policy_pb2.LocalRateLimit, stat_prefix: str
) -> http_local_rate_limit_pb2.LocalRateLimit:
    """`envoy.filters.http.local_ratelimit` for a (checked) `localRateLimit`: 429 when empty."""
    everyone = base_pb2.RuntimeFractionalPercent(
        default_value=percent_pb2.FractionalPercent(
            numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED
        )
    )
    return http_local_rate_limit_pb2.LocalRateLimit(
        stat_prefix=stat_prefix,
        status=http_status_pb2.HttpStatus(code=RATE_LIMITED_STATUS),
        token_bucket=token_bucket(spec),
        filter_enabled=everyone,
        filter_enforced=everyone,
        response_headers_to_add=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=RATE_LIMITED_HEADER, value="true"),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
            )
        ],
    )


def token_bucket(spec: backend_policy_pb2.LocalRateLimit) -> token_bucket_pb2.TokenBucket:
    tokens_per_fill = spec.tokens_per_fill.value if spec.HasField("tokens_per_fill") else 1
    return token_bucket_pb2.TokenBucket(
        max_tokens=spec.max_tokens,
        tokens_per_fill=wrappers_pb2.UInt32Value(value=tokens_per_fill),
        fill_interval=_duration(spec.fill_interval),
    )


def per_million(percent: float) -> percent_pb2.FractionalPercent:
    """A percentage (0-100) as Envoy's FractionalPercent, in millionths."""
    return percent_pb2.FractionalPercent(
        numerator=round(percent * (PER_MILLION // 100)),
        denominator=percent_pb2.FractionalPercent.MILLION,
    )


def inbound_policy_errors(policy: BackendPolicy) -> list[str]:
    """What Envoy would reject in `policy`'s fault injection and rate limit, field by field."""
    return list(_errors(policy.spec()))


# -- internals ---------------------------------------------------------------------


def _check(policy: BackendPolicy) -> None:
    errors = inbound_policy_errors(policy)
    if errors:
        raise InvalidInboundPolicy(
            f"BackendPolicy {policy.namespace}/{policy.name}: {'; '.join(errors)}"
        )


def _errors(spec: backend_policy_pb2.BackendPolicySpec) -> Iterator[str]:
    if spec.HasField("fault_injection"):
        fault = spec.fault_injection
        if fault.HasField("delay"):
            field = "spec.faultInjection.delay"
            if _nanos(fault.delay.fixed_delay) <= 0:
                yield f"{field}.fixedDelay: must be greater than 0s"
            yield from _percentage_errors(fault.delay, field)
        if fault.HasField("abort"):
            field = "spec.faultInjection.abort"
            if not 200 <= fault.abort.http_status <= 599:
                yield f"{field}.httpStatus: {fault.abort.http_status} is not in 200-599"
            yield from _percentage_errors(fault.abort, field)
    if spec.HasField("local_rate_limit"):
        limit = spec.local_rate_limit
        field = "spec.localRateLimit"
        if limit.max_tokens < 1:
            yield f"{field}.maxTokens: must be at least 1"
        if limit.HasField("tokens_per_fill") and limit.tokens_per_fill.value < 1:
            yield f"{field}.tokensPerFill: must be at least 1"
        if _nanos(limit.fill_interval) < MIN_FILL_INTERVAL_NANOS:
            yield f"{field}.fillInterval: must be at least 0.050s (Envoy refills no faster)"


def _percentage_errors(
    part: backend_policy_pb2.FaultDelay | backend_policy_pb2.FaultAbort, field: str
) -> Iterator[str]:
    if part.HasField("percentage"):
        value = part.percentage.value
        if not (math.isfinite(value) and 0 <= value <= 100):
            yield f"{field}.percentage: {value} is not in 0-100"


def _has_fault(spec: backend_policy_pb2.BackendPolicySpec) -> bool:
    if not spec.HasField("fault_injection"):
        return False
    fault = spec.fault_injection
    return bool(fault.HasField("delay") or fault.HasField("abort"))


def _share(
    part: backend_policy_pb2.FaultDelay | backend_policy_pb2.FaultAbort,
) -> percent_pb2.FractionalPercent:
    """The part's `percentage`; unset means every request."""
    return per_million(part.percentage.value if part.HasField("percentage") else 100.0)


def _nanos(duration: duration_pb2.Duration) -> int:
    return int(duration.seconds) * _NANOS + int(duration.nanos)


def _duration(duration: duration_pb2.Duration) -> duration_pb2.Duration:
    copy = duration_pb2.Duration()
    copy.CopyFrom(duration)
    return copy
