"""BackendPolicy on an outbound cluster: load balancing, limits, ejection, probes.

`model.policy` decides which `BackendPolicy` governs a Service (narrowest
wins, as a whole); `clusters.clusters_for_service` builds each of its port
clusters with the control plane's defaults and hands them here with the
governing spec.  Each section the spec sets replaces the matching part of the
cluster, and only what it sets: a section the policy leaves out, or a field a
section leaves unset, keeps today's default (round robin, circuit breakers
opened up, no outlier detection, no health checks, a 10s connect timeout).

* `loadBalancer`: RoundRobin, LeastRequest and Random are the cluster's
  `lb_policy` (with `least_request_lb_config.choice_count`).  RingHash and
  Maglev are typed `load_balancing_policy` extensions whose
  `consistent_hashing_lb_config.hash_policy` carries the spec's hash
  policies: Envoy then hashes every request to the cluster, whichever route
  (or TCP proxy) sends it, and ignores route-level hash policies.  So the
  policy needs no change to any route table (which is shared by a whole
  namespace and does not read policies); `route_hash_policies` is the same
  list for a route that wants it.  `locality` is not handled here.
* `connectionPool`: the circuit breaker thresholds of the DEFAULT priority;
  the fields it sets replace the open (2^32 - 1) limits.
* `outlierDetection`: consecutive 5xx and gateway-error ejection with the
  spec's documented defaults written out; ejection on success-rate
  statistics (on in Envoy by default) is turned off, so only the rules the
  policy names eject an endpoint.  One endpoint may always be ejected
  (`always_eject_one_host`) unless `maxEjectionPercent` is 0: Envoy counts
  the ejection it is about to make against the percentage, so with the
  default 10 % a Service of fewer than 10 endpoints would never eject one.
* `healthCheck`: one HTTP or TCP health checker.  Every caller's sidecar
  probes every endpoint it load balances to (endpoints come over EDS).
  Envoy probes a cluster that carries no traffic only every 60s by default;
  the spec's `interval` is "how often each endpoint is probed", so it is also
  the no-traffic interval.
* `connectTimeout`: the cluster's connect timeout.

`retry`, `timeouts`, `faultInjection` and `localRateLimit` shape routes and
listeners, not clusters; they are applied elsewhere.

Values Envoy would reject (its `validate` rules, or checks it makes when it
loads a cluster) raise `PolicyError`, naming the policy and the field as the
CRD spells it: translation of the Service then fails, and the pipeline blames
the policy and keeps the last good clusters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, health_check_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.load_balancing_policies.common.v3 import common_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.type.v3 import http_pb2, range_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from xds_server.model import PortProtocol
from xds_server.model.policy import BackendPolicy
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.translate.core import packed

logger = logging.getLogger(__name__)

Algorithm = api.LoadBalancer.Algorithm

RING_HASH_POLICY = "envoy.load_balancing_policies.ring_hash"
MAGLEV_POLICY = "envoy.load_balancing_policies.maglev"
MAX_RING_SIZE = 8_388_608
"""Envoy's bound on `minimum_ring_size` and `maximum_ring_size` (8M)."""

DEFAULT_CONSECUTIVE_5XX = 5
DEFAULT_OUTLIER_INTERVAL_S = 10
DEFAULT_BASE_EJECTION_TIME_S = 30
DEFAULT_MAX_EJECTION_PERCENT = 10
DEFAULT_UNHEALTHY_THRESHOLD = 3
DEFAULT_HEALTHY_THRESHOLD = 1
ENFORCED = 100
"""Percent of detected outliers actually ejected."""

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_FORBIDDEN_IN_HEADERS = re.compile(r"[\x00\r\n]")


class PolicyError(ValueError):
    """A BackendPolicy value Envoy would reject, naming the policy and the field."""

    def __init__(self, policy: str, field: str, message: str) -> None:
        super().__init__(f"{policy}: spec.{field}: {message}")
        self.policy = policy
        self.field = field


def apply_backend_policy(
    cluster: cluster_pb2.Cluster,
    spec: api.BackendPolicySpec,
    protocol: PortProtocol,
    policy: str = "BackendPolicy",
) -> None:
    """Shape `cluster` (an outbound cluster with the defaults) by `spec`, in place.

    `policy` names the policy in errors (`BackendPolicy ns/name`).  `spec` is
    only read (it is the model's shared message).
    """
    if spec.HasField("load_balancer"):
        _load_balancing(cluster, spec.load_balancer, policy)
    if spec.HasField("connection_pool"):
        cluster.circuit_breakers.CopyFrom(
            circuit_breakers(spec.connection_pool, cluster.circuit_breakers)
        )
    if spec.HasField("outlier_detection"):
        cluster.outlier_detection.CopyFrom(outlier_detection(spec.outlier_detection, policy))
    if spec.HasField("health_check"):
        del cluster.health_checks[:]
        cluster.health_checks.append(health_check(spec.health_check, protocol, policy))
    if spec.HasField("connect_timeout"):
        cluster.connect_timeout.CopyFrom(_positive(spec.connect_timeout, policy, "connectTimeout"))


# -- load balancing ----------------------------------------------------------------------


def _load_balancing(cluster: cluster_pb2.Cluster, balancer: api.LoadBalancer, policy: str) -> None:
    algorithm = balancer.algorithm
    hashing = algorithm in (Algorithm.RingHash, Algorithm.Maglev)
    if balancer.hash_policies and not hashing:
        raise PolicyError(
            policy,
            "loadBalancer.hashPolicies",
            f"only RingHash and Maglev hash requests; algorithm is {_algorithm_name(algorithm)}",
        )
    if balancer.HasField("least_request") and algorithm != Algorithm.LeastRequest:
        raise PolicyError(
            policy,
            "loadBalancer.leastRequest",
            f"tunes LeastRequest; algorithm is {_algorithm_name(algorithm)}",
        )
    if balancer.HasField("ring_hash") and algorithm != Algorithm.RingHash:
        raise PolicyError(
            policy,
            "loadBalancer.ringHash",
            f"tunes RingHash; algorithm is {_algorithm_name(algorithm)}",
        )
    if algorithm == Algorithm.LeastRequest:
        cluster.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
        choices = balancer.least_request
        if choices.HasField("choice_count"):
            if choices.choice_count.value < 2:
                raise PolicyError(
                    policy, "loadBalancer.leastRequest.choiceCount", "must be at least 2"
                )
            cluster.least_request_lb_config.choice_count.value = choices.choice_count.value
    elif algorithm == Algorithm.Random:
        cluster.lb_policy = cluster_pb2.Cluster.RANDOM
    elif hashing:
        cluster.load_balancing_policy.CopyFrom(_hashing_policy(balancer, policy))
    else:
        cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN


def _hashing_policy(balancer: api.LoadBalancer, policy: str) -> cluster_pb2.LoadBalancingPolicy:
    """The typed RingHash or Maglev policy, hashing on the spec's hash policies."""
    consistent = common_pb2.ConsistentHashingLbConfig(
        hash_policy=_hash_policies(balancer.hash_policies, policy)
    )
    config: ring_hash_pb2.RingHash | maglev_pb2.Maglev
    if balancer.algorithm == Algorithm.RingHash:
        config = ring_hash_pb2.RingHash(consistent_hashing_lb_config=consistent)
        ring = balancer.ring_hash
        for name, field in (
            ("minimumRingSize", "minimum_ring_size"),
            ("maximumRingSize", "maximum_ring_size"),
        ):
            if ring.HasField(field):
                size: int = getattr(ring, field).value
                if not 1 <= size <= MAX_RING_SIZE:
                    raise PolicyError(
                        policy, f"loadBalancer.ringHash.{name}", f"must be 1..{MAX_RING_SIZE}"
                    )
                getattr(config, field).value = size
        if (
            ring.HasField("minimum_ring_size")
            and ring.HasField("maximum_ring_size")
            and ring.minimum_ring_size.value > ring.maximum_ring_size.value
        ):
            raise PolicyError(
                policy,
                "loadBalancer.ringHash.minimumRingSize",
                f"{ring.minimum_ring_size.value} is larger than maximumRingSize "
                f"{ring.maximum_ring_size.value}",
            )
        name = RING_HASH_POLICY
    else:
        config = maglev_pb2.Maglev(consistent_hashing_lb_config=consistent)
        name = MAGLEV_POLICY
    return cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name=name, typed_config=packed(config)
                )
            )
        ]
    )


def route_hash_policies(
    spec: api.BackendPolicySpec, policy: str = "BackendPolicy"
) -> list[route_components_pb2.RouteAction.HashPolicy]:
    """The spec's hash policies as a route action's `hash_policy`, in order.

    Empty unless the algorithm is RingHash or Maglev.  The cluster already
    carries the same list (module doc), which Envoy prefers to a route's.
    """
    balancer = spec.load_balancer
    if balancer.algorithm not in (Algorithm.RingHash, Algorithm.Maglev):
        return []
    return _hash_policies(balancer.hash_policies, policy)


def _hash_policies(
    policies: Sequence[api.HashPolicy], policy: str
) -> list[route_components_pb2.RouteAction.HashPolicy]:
    HashPolicy = route_components_pb2.RouteAction.HashPolicy
    found: list[route_components_pb2.RouteAction.HashPolicy] = []
    for index, source in enumerate(policies):
        where = f"loadBalancer.hashPolicies[{index}]"
        kind = source.WhichOneof("source")
        if kind == "header":
            name = _header_text(source.header.name, policy, f"{where}.header.name")
            found.append(
                HashPolicy(header=HashPolicy.Header(header_name=name), terminal=source.terminal)
            )
        elif kind == "cookie":
            cookie = HashPolicy.Cookie(
                name=_header_text(source.cookie.name, policy, f"{where}.cookie.name")
            )
            if source.cookie.HasField("ttl"):
                ttl = source.cookie.ttl
                if ttl.seconds < 0 or ttl.nanos < 0:
                    raise PolicyError(policy, f"{where}.cookie.ttl", "must not be negative")
                cookie.ttl.CopyFrom(ttl)
            if source.cookie.path:
                cookie.path = _header_text(source.cookie.path, policy, f"{where}.cookie.path")
            found.append(HashPolicy(cookie=cookie, terminal=source.terminal))
        elif kind == "source_ip" and source.source_ip:
            found.append(
                HashPolicy(
                    connection_properties=HashPolicy.ConnectionProperties(source_ip=True),
                    terminal=source.terminal,
                )
            )
        else:
            raise PolicyError(
                policy, where, "needs one of header, cookie or sourceIp (set to true)"
            )
    return found


def _algorithm_name(algorithm: int) -> str:
    if algorithm == Algorithm.ALGORITHM_UNSPECIFIED:
        return "RoundRobin (unset)"
    name: str = api.LoadBalancer.Algorithm.Name(algorithm)
    return name


# -- connection pool ---------------------------------------------------------------------


def circuit_breakers(
    pool: api.ConnectionPool, defaults: circuit_breaker_pb2.CircuitBreakers
) -> circuit_breaker_pb2.CircuitBreakers:
    """`defaults` with the limits `pool` sets replaced, in its DEFAULT-priority thresholds."""
    breakers = circuit_breaker_pb2.CircuitBreakers()
    breakers.CopyFrom(defaults)
    thresholds = next(
        (t for t in breakers.thresholds if t.priority == base_pb2.DEFAULT), None
    ) or breakers.thresholds.add(priority=base_pb2.DEFAULT)
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        if pool.HasField(field):
            getattr(thresholds, field).value = getattr(pool, field).value
    return breakers


# -- outlier detection -------------------------------------------------------------------


def outlier_detection(
    detection: api.OutlierDetection, policy: str = "BackendPolicy"
) -> outlier_detection_pb2.OutlierDetection:
    """Consecutive-error ejection with the spec's defaults written out (module doc)."""
    where = "outlierDetection"
    found = outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(
            value=_at_least_one(detection, "consecutive_5xx", DEFAULT_CONSECUTIVE_5XX, policy)
        ),
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=ENFORCED),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        interval=_duration_or(detection, "interval", DEFAULT_OUTLIER_INTERVAL_S, policy, where),
        base_ejection_time=_duration_or(
            detection, "base_ejection_time", DEFAULT_BASE_EJECTION_TIME_S, policy, where
        ),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=DEFAULT_MAX_EJECTION_PERCENT),
    )
    if detection.HasField("consecutive_gateway_errors"):
        found.consecutive_gateway_failure.value = _at_least_one(
            detection, "consecutive_gateway_errors", 0, policy
        )
        found.enforcing_consecutive_gateway_failure.value = ENFORCED
    if detection.HasField("max_ejection_percent"):
        percent = detection.max_ejection_percent.value
        if percent > 100:
            raise PolicyError(policy, f"{where}.maxEjectionPercent", "must be at most 100")
        found.max_ejection_percent.value = percent
    if found.max_ejection_percent.value > 0:
        # Envoy ejects only while (ejected + 1) / endpoints stays within the percentage:
        # at 10 %, a Service of fewer than 10 endpoints would never eject any.
        found.always_eject_one_host.value = True
    return found


def _at_least_one(detection: api.OutlierDetection, field: str, default: int, policy: str) -> int:
    if not detection.HasField(field):
        return default
    value: int = getattr(detection, field).value
    if value < 1:
        name = {"consecutive_5xx": "consecutive5xx"}.get(field, "consecutiveGatewayErrors")
        raise PolicyError(policy, f"outlierDetection.{name}", "must be at least 1")
    return value


# -- health checks -----------------------------------------------------------------------


def health_check(
    check: api.HealthCheck, protocol: PortProtocol, policy: str = "BackendPolicy"
) -> health_check_pb2.HealthCheck:
    """One HTTP or TCP health checker, probing every `interval`, with or without traffic."""
    interval = _required_duration(check, "interval", policy)
    found = health_check_pb2.HealthCheck(
        interval=interval,
        no_traffic_interval=interval,
        timeout=_required_duration(check, "timeout", policy),
        unhealthy_threshold=wrappers_pb2.UInt32Value(
            value=_threshold(check, "unhealthy_threshold", DEFAULT_UNHEALTHY_THRESHOLD, policy)
        ),
        healthy_threshold=wrappers_pb2.UInt32Value(
            value=_threshold(check, "healthy_threshold", DEFAULT_HEALTHY_THRESHOLD, policy)
        ),
    )
    probe = check.WhichOneof("probe")
    if probe == "http":
        found.http_health_check.CopyFrom(_http_probe(check.http, protocol, policy))
    elif probe == "tcp":
        found.tcp_health_check.CopyFrom(_tcp_probe(check.tcp, policy))
    else:
        raise PolicyError(policy, "healthCheck", "needs an http or a tcp probe")
    return found


def _http_probe(
    probe: api.HttpHealthCheck, protocol: PortProtocol, policy: str
) -> health_check_pb2.HealthCheck.HttpHealthCheck:
    where = "healthCheck.http"
    if not probe.path:
        raise PolicyError(policy, f"{where}.path", "is required")
    found = health_check_pb2.HealthCheck.HttpHealthCheck(
        path=_header_text(probe.path, policy, f"{where}.path"),
        codec_client_type=http_pb2.HTTP2 if protocol.is_http2 else http_pb2.HTTP1,
    )
    if probe.host:
        found.host = _header_text(probe.host, policy, f"{where}.host")
    for status in probe.expected_statuses:
        if not 100 <= status <= 599:
            raise PolicyError(policy, f"{where}.expectedStatuses", f"{status} is not 100..599")
    found.expected_statuses.extend(status_ranges(probe.expected_statuses))
    return found


def status_ranges(statuses: Sequence[int]) -> list[range_pb2.Int64Range]:
    """HTTP statuses as Envoy's half-open ranges, contiguous ones merged, in order."""
    ranges: list[range_pb2.Int64Range] = []
    for status in sorted(set(statuses)):
        if ranges and ranges[-1].end == status:
            ranges[-1].end = status + 1
        else:
            ranges.append(range_pb2.Int64Range(start=status, end=status + 1))
    return ranges


def _tcp_probe(
    probe: api.TcpHealthCheck, policy: str
) -> health_check_pb2.HealthCheck.TcpHealthCheck:
    Payload = health_check_pb2.HealthCheck.Payload
    found = health_check_pb2.HealthCheck.TcpHealthCheck()
    if probe.send:
        found.send.CopyFrom(Payload(text=_hex(probe.send, policy, "healthCheck.tcp.send")))
    for index, payload in enumerate(probe.receive):
        found.receive.append(
            Payload(text=_hex(payload, policy, f"healthCheck.tcp.receive[{index}]"))
        )
    return found


def _hex(text: str, policy: str, field: str) -> str:
    if not _HEX.fullmatch(text):
        raise PolicyError(policy, field, f"{text[:40]!r} is not hex (pairs of 0-9, a-f)")
    return text


def _threshold(check: api.HealthCheck, field: str, default: int, policy: str) -> int:
    if not check.HasField(field):
        return default
    value: int = getattr(check, field).value
    if value < 1:
        name = "unhealthyThreshold" if field == "unhealthy_threshold" else "healthyThreshold"
        raise PolicyError(policy, f"healthCheck.{name}", "must be at least 1")
    return value


def _required_duration(check: api.HealthCheck, field: str, policy: str) -> duration_pb2.Duration:
    if not check.HasField(field):
        raise PolicyError(policy, f"healthCheck.{field}", "is required")
    value: duration_pb2.Duration = getattr(check, field)
    return _positive(value, policy, f"healthCheck.{field}")


# -- values ------------------------------------------------------------------------------


def _positive(value: duration_pb2.Duration, policy: str, field: str) -> duration_pb2.Duration:
    if value.seconds < 0 or value.nanos < 0 or (value.seconds == 0 and value.nanos == 0):
        raise PolicyError(policy, field, "must be longer than 0s")
    found = duration_pb2.Duration()
    found.CopyFrom(value)
    return found


def _duration_or(
    detection: api.OutlierDetection, field: str, default_s: int, policy: str, where: str
) -> duration_pb2.Duration:
    if detection.HasField(field):
        name = "interval" if field == "interval" else "baseEjectionTime"
        value: duration_pb2.Duration = getattr(detection, field)
        return _positive(value, policy, f"{where}.{name}")
    return duration_pb2.Duration(seconds=default_s)


def _header_text(text: str, policy: str, field: str) -> str:
    if not text:
        raise PolicyError(policy, field, "must not be empty")
    if _FORBIDDEN_IN_HEADERS.search(text):
        raise PolicyError(policy, field, "must not contain NUL, CR or LF")
    return text


def policy_name(policy: BackendPolicy) -> str:
    """`BackendPolicy namespace/name`, as errors name it."""
    return f"BackendPolicy {policy.namespace}/{policy.name}"
