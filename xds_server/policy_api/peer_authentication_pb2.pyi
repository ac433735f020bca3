import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerAuthenticationSpec(_message.Message):
    __slots__ = ("selector", "mtls", "port_level_mtls")
    class PortLevelMtlsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: PeerAuthenticationMtls
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[PeerAuthenticationMtls, _Mapping]] = ...) -> None: ...
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    PORT_LEVEL_MTLS_FIELD_NUMBER: _ClassVar[int]
    selector: PeerAuthenticationSelector
    mtls: PeerAuthenticationMtls
    port_level_mtls: _containers.MessageMap[int, PeerAuthenticationMtls]
    def __init__(self, selector: _Optional[_Union[PeerAuthenticationSelector, _Mapping]] = ..., mtls: _Optional[_Union[PeerAuthenticationMtls, _Mapping]] = ..., port_level_mtls: _Optional[_Mapping[int, PeerAuthenticationMtls]] = ...) -> None: ...

class PeerAuthenticationSelector(_message.Message):
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

class PeerAuthenticationMtls(_message.Message):
    __slots__ = ("mode",)
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNSET: _ClassVar[PeerAuthenticationMtls.Mode]
        PERMISSIVE: _ClassVar[PeerAuthenticationMtls.Mode]
        STRICT: _ClassVar[PeerAuthenticationMtls.Mode]
        DISABLE: _ClassVar[PeerAuthenticationMtls.Mode]
    UNSET: PeerAuthenticationMtls.Mode
    PERMISSIVE: PeerAuthenticationMtls.Mode
    STRICT: PeerAuthenticationMtls.Mode
    DISABLE: PeerAuthenticationMtls.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: PeerAuthenticationMtls.Mode
    def __init__(self, mode: _Optional[_Union[PeerAuthenticationMtls.Mode, str]] = ...) -> None: ...

class PeerAuthenticationStatus(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[PeerAuthenticationCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[PeerAuthenticationCondition, _Mapping]]] = ...) -> None: ...

class PeerAuthenticationCondition(_message.Message):
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
