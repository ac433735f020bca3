"""Redaction: private key material never leaves the control plane through a view.

Everything the admin, the CLI and the logs show of a config goes through
here first: an SDS `Secret` (the type registry marks it `secret=True`), and
the TLS contexts inlined in clusters' and listeners' transport sockets
(`UpstreamTlsContext` / `DownstreamTlsContext`, packed in an `Any`), may hold
private keys, key passwords, PKCS#12 bundles, session ticket keys and generic
secrets.  Each of those fields is shown as `"[redacted]"`, whatever the
`DataSource` holds (inline bytes, a string, or a file name, which is about the
key too).

One rule decides what is secret, so the two forms agree:

- a field whose name, case and underscores aside, contains `private_key`,
  `password` or `pkcs12` (this covers `tls_certificate.private_key`,
  `private_key_provider`, `password`, and any future field named alike);
- `generic_secret.secret` / `.secrets` and `session_ticket_keys.keys`.

`redact` takes a proto message (and returns a redacted copy, same type; `Any`
fields are unpacked, redacted and packed again) or the JSON form of one (a
dict from `json_format.MessageToDict`, either field-name style; returns a
redacted copy).  `redact_text` removes PEM private key blocks from free text
(Envoy's NACK messages, log lines); `RedactingFilter` applies it to log records.
"""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar, cast

# Imported so the TLS contexts packed in transport sockets can be unpacked here.
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"

_SECRET_WORDS = ("privatekey", "password", "pkcs12")
_SECRET_CHILDREN = {
    # parent field (normalised) -> its children that hold secrets
    "genericsecret": frozenset({"secret", "secrets"}),
    "sessionticketkeys": frozenset({"keys"}),
}
_SECRET_CHILDREN_OF_MESSAGE = {
    secret_pb2.GenericSecret.DESCRIPTOR.full_name: frozenset({"secret", "secrets"}),
    "envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys": frozenset({"keys"}),
}
_DATA_SOURCE = "envoy.config.core.v3.DataSource"

_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)

_Shown = TypeVar("_Shown", Message, dict[str, Any])


def _normalised(name: str) -> str:
    return name.replace("_", "").lower()


def is_secret_field(name: str, parent: str | None = None) -> bool:
    """Whether field `name` (of a field named `parent`, if known) holds key material."""
    normalised = _normalised(name)
    if any(word in normalised for word in _SECRET_WORDS):
        return True
    return parent is not None and normalised in _SECRET_CHILDREN.get(_normalised(parent), ())


def redact(value: _Shown) -> _Shown:
    """A copy of a message, or of its JSON form, with every secret shown as `[redacted]`."""
    if isinstance(value, dict):
        return cast(_Shown, _redact_json(value, None))
    copy = type(value)()
    copy.CopyFrom(value)
    _redact_message(copy)
    return copy


def redact_text(text: str) -> str:
    """`text` with every PEM private key block (even one cut short) replaced."""
    if "PRIVATE KEY" not in text:
        return text
    return _PEM_PRIVATE_KEY.sub(REDACTED, text)


class RedactingFilter(logging.Filter):
    """A logging filter (for handlers) that removes PEM private keys from messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned is not message:
            record.msg, record.args = cleaned, None
        return True


# -- the JSON form ----------------------------------------------------------------------


def _redact_json(value: Any, parent: str | None) -> Any:
    if isinstance(value, dict):
        return {
            key: REDACTED if is_secret_field(key, parent) else _redact_json(item, key)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact_json(item, parent) for item in value]
    return value


# -- the message form -------------------------------------------------------------------


def _redact_message(message: Message) -> None:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == any_pb2.Any.DESCRIPTOR.full_name:
        _redact_any(message)
        return
    children = _SECRET_CHILDREN_OF_MESSAGE.get(descriptor.full_name, frozenset())
    for field, value in message.ListFields():
        if field.name in children or is_secret_field(field.name):
            _scrub_field(message, field, value)
        elif field.message_type is None:
            continue
        elif _is_map(field):
            if field.message_type.fields_by_name["value"].message_type is not None:
                for item in value.values():
                    _redact_message(item)
        elif field.is_repeated:
            for item in value:
                _redact_message(item)
        else:
            _redact_message(value)


def _redact_any(packed: Any) -> None:
    """Redact inside an `Any` whose type is known here; one we cannot read stays as it is."""
    name = packed.TypeName()
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return
    inner = message_factory.GetMessageClass(descriptor)()
    if not packed.Unpack(inner):
        return
    before = inner.SerializeToString(deterministic=True)
    _redact_message(inner)
    after = inner.SerializeToString(deterministic=True)
    if after != before:
        packed.value = after


def _is_map(field: FieldDescriptor) -> bool:
    message_type: Descriptor | None = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def _scrub_field(message: Message, field: FieldDescriptor, value: Any) -> None:
    """Replace a secret field's content with `[redacted]` (or nothing, where that cannot go)."""
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        for key in list(value):
            if value_field.message_type is None:
                value[key] = _redacted_scalar(value_field)
            else:
                _scrub(value[key])
    elif field.message_type is None:
        if field.is_repeated:
            replacement = [_redacted_scalar(field)] * len(value)
            del value[:]
            value.extend(replacement)
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            setattr(message, field.name, _redacted_scalar(field))
        else:
            message.ClearField(field.name)
    elif field.is_repeated:
        for item in value:
            _scrub(item)
    else:
        _scrub(value)


def _redacted_scalar(field: FieldDescriptor) -> str | bytes:
    return REDACTED.encode() if field.type == FieldDescriptor.TYPE_BYTES else REDACTED


def _scrub(message: Message) -> None:
    """Empty a secret message: a DataSource holds `[redacted]`; anything else keeps no bytes."""
    if message.DESCRIPTOR.full_name == _DATA_SOURCE:
        message.Clear()
        setattr(message, "inline_string", REDACTED)  # noqa: B010 - a oneof member
        return
    if message.DESCRIPTOR.full_name == any_pb2.Any.DESCRIPTOR.full_name:
        setattr(message, "value", b"")  # noqa: B010 - keep the type, drop its bytes
        return
    for field, value in message.ListFields():
        _scrub_field(message, field, value)
