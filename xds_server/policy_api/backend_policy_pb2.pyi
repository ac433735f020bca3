import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackendPolicySpec(_message.Message):
    __slots__ = ("target_refs", "load_balancer", "connection_pool", "outlier_detection", "health_check", "connect_timeout", "retry", "timeouts", "fault_injection", "local_rate_limit")
    TARGET_REFS_FIELD_NUMBER: _ClassVar[int]
    LOAD_BALANCER_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_POOL_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    CONNECT_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    FAULT_INJECTION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    target_refs: _containers.RepeatedCompositeFieldContainer[PolicyTargetReference]
    load_balancer: LoadBalancer
    connection_pool: ConnectionPool
    outlier_detection: OutlierDetection
    health_check: HealthCheck
    connect_timeout: _duration_pb2.Duration
    retry: RetryPolicy
    timeouts: Timeouts
    fault_injection: FaultInjection
    local_rate_limit: LocalRateLimit
    def __init__(self, target_refs: _Optional[_Iterable[_Union[PolicyTargetReference, _Mapping]]] = ..., load_balancer: _Optional[_Union[LoadBalancer, _Mapping]] = ..., connection_pool: _Optional[_Union[ConnectionPool, _Mapping]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., connect_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., timeouts: _Optional[_Union[Timeouts, _Mapping]] = ..., fault_injection: _Optional[_Union[FaultInjection, _Mapping]] = ..., local_rate_limit: _Optional[_Union[LocalRateLimit, _Mapping]] = ...) -> None: ...

class PolicyTargetReference(_message.Message):
    __slots__ = ("group", "kind", "name", "namespace")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    group: str
    kind: str
    name: str
    namespace: str
    def __init__(self, group: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class LoadBalancer(_message.Message):
    __slots__ = ("algorithm", "hash_policies", "least_request", "ring_hash", "locality")
    class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALGORITHM_UNSPECIFIED: _ClassVar[LoadBalancer.Algorithm]
        RoundRobin: _ClassVar[LoadBalancer.Algorithm]
        LeastRequest: _ClassVar[LoadBalancer.Algorithm]
        Random: _ClassVar[LoadBalancer.Algorithm]
        RingHash: _ClassVar[LoadBalancer.Algorithm]
        Maglev: _ClassVar[LoadBalancer.Algorithm]
    ALGORITHM_UNSPECIFIED: LoadBalancer.Algorithm
    RoundRobin: LoadBalancer.Algorithm
    LeastRequest: LoadBalancer.Algorithm
    Random: LoadBalancer.Algorithm
    RingHash: LoadBalancer.Algorithm
    Maglev: LoadBalancer.Algorithm
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    HASH_POLICIES_FIELD_NUMBER: _ClassVar[int]
    LEAST_REQUEST_FIELD_NUMBER: _ClassVar[int]
    RING_HASH_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    algorithm: LoadBalancer.Algorithm
    hash_policies: _containers.RepeatedCompositeFieldContainer[HashPolicy]
    least_request: LeastRequestConfig
    ring_hash: RingHashConfig
    locality: LocalityLoadBalancing
    def __init__(self, algorithm: _Optional[_Union[LoadBalancer.Algorithm, str]] = ..., hash_policies: _Optional[_Iterable[_Union[HashPolicy, _Mapping]]] = ..., least_request: _Optional[_Union[LeastRequestConfig, _Mapping]] = ..., ring_hash: _Optional[_Union[RingHashConfig, _Mapping]] = ..., locality: _Optional[_Union[LocalityLoadBalancing, _Mapping]] = ...) -> None: ...

class HashPolicy(_message.Message):
    __slots__ = ("header", "cookie", "source_ip", "terminal")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    header: HeaderHash
    cookie: CookieHash
    source_ip: bool
    terminal: bool
    def __init__(self, header: _Optional[_Union[HeaderHash, _Mapping]] = ..., cookie: _Optional[_Union[CookieHash, _Mapping]] = ..., source_ip: _Optional[bool] = ..., terminal: _Optional[bool] = ...) -> None: ...

class HeaderHash(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CookieHash(_message.Message):
    __slots__ = ("name", "ttl", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    ttl: _duration_pb2.Duration
    path: str
    def __init__(self, name: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., path: _Optional[str] = ...) -> None: ...

class LeastRequestConfig(_message.Message):
    __slots__ = ("choice_count",)
    CHOICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    choice_count: _wrappers_pb2.UInt32Value
    def __init__(self, choice_count: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ...) -> None: ...

class RingHashConfig(_message.Message):
    __slots__ = ("minimum_ring_size", "maximum_ring_size")
    MINIMUM_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_RING_SIZE_FIELD_NUMBER: _ClassVar[int]
    minimum_ring_size: _wrappers_pb2.UInt32Value
    maximum_ring_size: _wrappers_pb2.UInt32Value
    def __init__(self, minimum_ring_size: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., maximum_ring_size: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ...) -> None: ...

class LocalityLoadBalancing(_message.Message):
    __slots__ = ("enabled", "failover")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_FIELD_NUMBER: _ClassVar[int]
    enabled: _wrappers_pb2.BoolValue
    failover: _containers.RepeatedCompositeFieldContainer[LocalityFailover]
    def __init__(self, enabled: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., failover: _Optional[_Iterable[_Union[LocalityFailover, _Mapping]]] = ...) -> None: ...

class LocalityFailover(_message.Message):
    __slots__ = ("from_zone", "to_zone")
    FROM_ZONE_FIELD_NUMBER: _ClassVar[int]
    TO_ZONE_FIELD_NUMBER: _ClassVar[int]
    from_zone: str
    to_zone: str
    def __init__(self, from_zone: _Optional[str] = ..., to_zone: _Optional[str] = ...) -> None: ...

class ConnectionPool(_message.Message):
    __slots__ = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
    MAX_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    max_connections: _wrappers_pb2.UInt32Value
    max_pending_requests: _wrappers_pb2.UInt32Value
    max_requests: _wrappers_pb2.UInt32Value
    max_retries: _wrappers_pb2.UInt32Value
    def __init__(self, max_connections: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., max_pending_requests: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., max_requests: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., max_retries: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_5xx", "consecutive_gateway_errors", "interval", "base_ejection_time", "max_ejection_percent")
    CONSECUTIVE_5XX_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_GATEWAY_ERRORS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    consecutive_5xx: _wrappers_pb2.UInt32Value
    consecutive_gateway_errors: _wrappers_pb2.UInt32Value
    interval: _duration_pb2.Duration
    base_ejection_time: _duration_pb2.Duration
    max_ejection_percent: _wrappers_pb2.UInt32Value
    def __init__(self, consecutive_5xx: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., consecutive_gateway_errors: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., base_ejection_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ejection_percent: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("interval", "timeout", "unhealthy_threshold", "healthy_threshold", "http", "tcp")
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    UNHEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    interval: _duration_pb2.Duration
    timeout: _duration_pb2.Duration
    unhealthy_threshold: _wrappers_pb2.UInt32Value
    healthy_threshold: _wrappers_pb2.UInt32Value
    http: HttpHealthCheck
    tcp: TcpHealthCheck
    def __init__(self, interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., unhealthy_threshold: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., healthy_threshold: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., http: _Optional[_Union[HttpHealthCheck, _Mapping]] = ..., tcp: _Optional[_Union[TcpHealthCheck, _Mapping]] = ...) -> None: ...

class HttpHealthCheck(_message.Message):
    __slots__ = ("path", "host", "expected_statuses")
    PATH_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_STATUSES_FIELD_NUMBER: _ClassVar[int]
    path: str
    host: str
    expected_statuses: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, path: _Optional[str] = ..., host: _Optional[str] = ..., expected_statuses: _Optional[_Iterable[int]] = ...) -> None: ...

class TcpHealthCheck(_message.Message):
    __slots__ = ("send", "receive")
    SEND_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_FIELD_NUMBER: _ClassVar[int]
    send: str
    receive: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, send: _Optional[str] = ..., receive: _Optional[_Iterable[str]] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("attempts", "codes", "backoff", "per_try_timeout")
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_FIELD_NUMBER: _ClassVar[int]
    PER_TRY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    attempts: _wrappers_pb2.UInt32Value
    codes: _containers.RepeatedScalarFieldContainer[int]
    backoff: _duration_pb2.Duration
    per_try_timeout: _duration_pb2.Duration
    def __init__(self, attempts: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., codes: _Optional[_Iterable[int]] = ..., backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., per_try_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Timeouts(_message.Message):
    __slots__ = ("request", "idle")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    request: _duration_pb2.Duration
    idle: _duration_pb2.Duration
    def __init__(self, request: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class FaultInjection(_message.Message):
    __slots__ = ("delay", "abort")
    DELAY_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    delay: FaultDelay
    abort: FaultAbort
    def __init__(self, delay: _Optional[_Union[FaultDelay, _Mapping]] = ..., abort: _Optional[_Union[FaultAbort, _Mapping]] = ...) -> None: ...

class FaultDelay(_message.Message):
    __slots__ = ("fixed_delay", "percentage")
    FIXED_DELAY_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    fixed_delay: _duration_pb2.Duration
    percentage: _wrappers_pb2.DoubleValue
    def __init__(self, fixed_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., percentage: _Optional[_Union[_wrappers_pb2.DoubleValue, _Mapping]] = ...) -> None: ...

class FaultAbort(_message.Message):
    __slots__ = ("http_status", "percentage")
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    http_status: int
    percentage: _wrappers_pb2.DoubleValue
    def __init__(self, http_status: _Optional[int] = ..., percentage: _Optional[_Union[_wrappers_pb2.DoubleValue, _Mapping]] = ...) -> None: ...

class LocalRateLimit(_message.Message):
    __slots__ = ("max_tokens", "tokens_per_fill", "fill_interval")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_FILL_FIELD_NUMBER: _ClassVar[int]
    FILL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    tokens_per_fill: _wrappers_pb2.UInt32Value
    fill_interval: _duration_pb2.Duration
    def __init__(self, max_tokens: _Optional[int] = ..., tokens_per_fill: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., fill_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BackendPolicyStatus(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "status", "observed_generation", "last_transition_time", "reason", "message")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_TRANSITION_TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    observed_generation: int
    last_transition_time: _timestamp_pb2.Timestamp
    reason: str
    message: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., observed_generation: _Optional[int] = ..., last_transition_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
