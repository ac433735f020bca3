import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TelemetryAccessLogField(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_UNSPECIFIED: _ClassVar[TelemetryAccessLogField]
    START_TIME: _ClassVar[TelemetryAccessLogField]
    METHOD: _ClassVar[TelemetryAccessLogField]
    PATH: _ClassVar[TelemetryAccessLogField]
    PROTOCOL: _ClassVar[TelemetryAccessLogField]
    RESPONSE_CODE: _ClassVar[TelemetryAccessLogField]
    RESPONSE_FLAGS: _ClassVar[TelemetryAccessLogField]
    BYTES_RECEIVED: _ClassVar[TelemetryAccessLogField]
    BYTES_SENT: _ClassVar[TelemetryAccessLogField]
    DURATION: _ClassVar[TelemetryAccessLogField]
    UPSTREAM_HOST: _ClassVar[TelemetryAccessLogField]
    UPSTREAM_CLUSTER: _ClassVar[TelemetryAccessLogField]
    REQUEST_ID: _ClassVar[TelemetryAccessLogField]
    DOWNSTREAM_PEER_URI_SAN: _ClassVar[TelemetryAccessLogField]
    DOWNSTREAM_LOCAL_URI_SAN: _ClassVar[TelemetryAccessLogField]
    ROUTE_NAME: _ClassVar[TelemetryAccessLogField]
    DIRECTION: _ClassVar[TelemetryAccessLogField]
    USER_AGENT: _ClassVar[TelemetryAccessLogField]
    AUTHORITY: _ClassVar[TelemetryAccessLogField]
    DOWNSTREAM_REMOTE_ADDRESS: _ClassVar[TelemetryAccessLogField]
FIELD_UNSPECIFIED: TelemetryAccessLogField
START_TIME: TelemetryAccessLogField
METHOD: TelemetryAccessLogField
PATH: TelemetryAccessLogField
PROTOCOL: TelemetryAccessLogField
RESPONSE_CODE: TelemetryAccessLogField
RESPONSE_FLAGS: TelemetryAccessLogField
BYTES_RECEIVED: TelemetryAccessLogField
BYTES_SENT: TelemetryAccessLogField
DURATION: TelemetryAccessLogField
UPSTREAM_HOST: TelemetryAccessLogField
UPSTREAM_CLUSTER: TelemetryAccessLogField
REQUEST_ID: TelemetryAccessLogField
DOWNSTREAM_PEER_URI_SAN: TelemetryAccessLogField
DOWNSTREAM_LOCAL_URI_SAN: TelemetryAccessLogField
ROUTE_NAME: TelemetryAccessLogField
DIRECTION: TelemetryAccessLogField
USER_AGENT: TelemetryAccessLogField
AUTHORITY: TelemetryAccessLogField
DOWNSTREAM_REMOTE_ADDRESS: TelemetryAccessLogField

class TelemetrySpec(_message.Message):
    __slots__ = ("selector", "access_logging", "metrics", "tracing")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    ACCESS_LOGGING_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TRACING_FIELD_NUMBER: _ClassVar[int]
    selector: TelemetrySelector
    access_logging: TelemetryAccessLogging
    metrics: TelemetryMetrics
    tracing: TelemetryTracing
    def __init__(self, selector: _Optional[_Union[TelemetrySelector, _Mapping]] = ..., access_logging: _Optional[_Union[TelemetryAccessLogging, _Mapping]] = ..., metrics: _Optional[_Union[TelemetryMetrics, _Mapping]] = ..., tracing: _Optional[_Union[TelemetryTracing, _Mapping]] = ...) -> None: ...

class TelemetrySelector(_message.Message):
    __slots__ = ("match_labels",)
    class MatchLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MATCH_LABELS_FIELD_NUMBER: _ClassVar[int]
    match_labels: _containers.ScalarMap[str, str]
    def __init__(self, match_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TelemetryAccessLogging(_message.Message):
    __slots__ = ("disabled", "fields", "filter")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    disabled: _wrappers_pb2.BoolValue
    fields: _containers.RepeatedScalarFieldContainer[TelemetryAccessLogField]
    filter: TelemetryAccessLogFilter
    def __init__(self, disabled: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., fields: _Optional[_Iterable[_Union[TelemetryAccessLogField, str]]] = ..., filter: _Optional[_Union[TelemetryAccessLogFilter, _Mapping]] = ...) -> None: ...

class TelemetryAccessLogFilter(_message.Message):
    __slots__ = ("expression", "errors_only")
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_ONLY_FIELD_NUMBER: _ClassVar[int]
    expression: str
    errors_only: bool
    def __init__(self, expression: _Optional[str] = ..., errors_only: _Optional[bool] = ...) -> None: ...

class TelemetryMetrics(_message.Message):
    __slots__ = ("disabled", "port")
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    disabled: _wrappers_pb2.BoolValue
    port: _wrappers_pb2.UInt32Value
    def __init__(self, disabled: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., port: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ...) -> None: ...

class TelemetryTracing(_message.Message):
    __slots__ = ("disabled", "collector", "random_sampling_percentage", "custom_tags")
    class CustomTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TelemetryCustomTag
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TelemetryCustomTag, _Mapping]] = ...) -> None: ...
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    RANDOM_SAMPLING_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_TAGS_FIELD_NUMBER: _ClassVar[int]
    disabled: _wrappers_pb2.BoolValue
    collector: str
    random_sampling_percentage: _wrappers_pb2.DoubleValue
    custom_tags: _containers.MessageMap[str, TelemetryCustomTag]
    def __init__(self, disabled: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., collector: _Optional[str] = ..., random_sampling_percentage: _Optional[_Union[_wrappers_pb2.DoubleValue, _Mapping]] = ..., custom_tags: _Optional[_Mapping[str, TelemetryCustomTag]] = ...) -> None: ...

class TelemetryCustomTag(_message.Message):
    __slots__ = ("literal", "header", "environment")
    LITERAL_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    literal: TelemetryLiteral
    header: TelemetryHeader
    environment: TelemetryEnvironment
    def __init__(self, literal: _Optional[_Union[TelemetryLiteral, _Mapping]] = ..., header: _Optional[_Union[TelemetryHeader, _Mapping]] = ..., environment: _Optional[_Union[TelemetryEnvironment, _Mapping]] = ...) -> None: ...

class TelemetryLiteral(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...

class TelemetryHeader(_message.Message):
    __slots__ = ("name", "default_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_value: str
    def __init__(self, name: _Optional[str] = ..., default_value: _Optional[str] = ...) -> None: ...

class TelemetryEnvironment(_message.Message):
    __slots__ = ("name", "default_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_value: str
    def __init__(self, name: _Optional[str] = ..., default_value: _Optional[str] = ...) -> None: ...

class TelemetryStatus(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[TelemetryCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[TelemetryCondition, _Mapping]]] = ...) -> None: ...

class TelemetryCondition(_message.Message):
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
