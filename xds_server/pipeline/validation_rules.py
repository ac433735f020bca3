"""The Envoy API's validation rules as compiled Python checks (protoc-gen-validate, adapted).

The Envoy protos carry protoc-gen-validate (PGV) annotations (`(validate.rules)`
on fields, `(validate.required)` on oneofs).  The `protoc-gen-validate`
package turns each message type's annotations into a Python function (Jinja
templates, `exec`); this module owns that compilation and running the
functions (`CompiledRules`).  Three things keep the package usable here:

* protobuf 7 removed `FieldDescriptor.label`, which its generator reads; it
  is handed descriptor views that restore it (`_Field`), and copies of the
  field options, since it rewrites a well-known regex into the options it is
  given (mutating a descriptor's own options is deprecated);
* its own entry point caches generated functions in an `lru_cache` of 128
  message types and recompiles each Jinja template on every use (~20 ms per
  type); the generator is rebound here to a namespace with compiled templates
  cached, and each type's function is kept in `CompiledRules` (Cluster and
  its parts compile in ~70 ms, once per process);
* it does not look inside `google.protobuf.Any` (a listener's
  HttpConnectionManager, a cluster's protocol options):
  `CompiledRules.check` unpacks every Any whose type the descriptor pool
  knows and checks it too.

What is checked when, and what the results are cached by, is `validation`'s;
saying where a failing message fails is `validation_locate`'s.
"""

from __future__ import annotations

import functools
import logging
import threading
import types
from collections.abc import Callable
from typing import Any

import jinja2
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import DecodeError, Message
from protoc_gen_validate import validator as pgv

logger = logging.getLogger(__name__)

ANY = "google.protobuf.Any"
RULES_EXTENSION = "validate.rules"
ONEOF_REQUIRED = "validate.required"

ValidationFailed = pgv.ValidationFailed
"""What a compiled check raises when a message breaks a rule."""


@functools.cache
def _template(source: str) -> jinja2.Template:
    template: jinja2.Template = jinja2.Template(source)
    return template


def _generator_namespace() -> dict[str, Any]:
    """PGV's module namespace, its functions rebound to it, with templates compiled once."""
    namespace = dict(vars(pgv))
    namespace["Template"] = _template
    for name, value in list(namespace.items()):
        if isinstance(value, types.FunctionType) and value.__module__ == pgv.__name__:
            namespace[name] = types.FunctionType(
                value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__
            )
    return namespace


class _Field:
    """A field descriptor as PGV reads it: with `label`, and options it may rewrite."""

    __slots__ = ("_field", "_options", "label")

    def __init__(self, field: FieldDescriptor) -> None:
        self._field = field
        self.label = (
            FieldDescriptor.LABEL_REPEATED
            if field.is_repeated
            else FieldDescriptor.LABEL_REQUIRED
            if field.is_required
            else FieldDescriptor.LABEL_OPTIONAL
        )
        options = field.GetOptions()
        self._options = type(options)()
        self._options.CopyFrom(options)

    def GetOptions(self) -> Message:
        return self._options

    def __getattr__(self, name: str) -> Any:
        return getattr(self._field, name)


class _Oneof:
    def __init__(self, oneof: OneofDescriptor) -> None:
        self._oneof = oneof
        self.name = oneof.name
        self.fields = [_Field(field) for field in oneof.fields]

    def GetOptions(self) -> Message:
        return self._oneof.GetOptions()


class _MessageView:
    """What PGV's generator takes: an object with a `DESCRIPTOR` (of views)."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.DESCRIPTOR = self
        self._descriptor = descriptor
        self.name = descriptor.name
        self.full_name = descriptor.full_name
        self.fields = [_Field(field) for field in descriptor.fields]
        self.oneofs = [_Oneof(oneof) for oneof in descriptor.oneofs]

    def GetOptions(self) -> Message:
        return self._descriptor.GetOptions()


def rules_of(field: FieldDescriptor) -> Message | None:
    """The field's `(validate.rules)`, if it has any."""
    for option, value in field.GetOptions().ListFields():
        if option.full_name == RULES_EXTENSION:
            return value
    return None


def rule_text(rules: Message) -> str:
    text: str = text_format.MessageToString(rules, as_one_line=True)
    return "(validate.rules)." + text


def oneof_required(oneof: OneofDescriptor) -> bool:
    return any(
        option.full_name == ONEOF_REQUIRED and value
        for option, value in oneof.GetOptions().ListFields()
    )


Check = Callable[[Message], None]


class CompiledRules:
    """Every message type's rules as compiled functions, made on first use."""

    def __init__(self) -> None:
        self._generator = _generator_namespace()
        self._runtime = dict(self._generator)
        self._runtime["validate"] = self.check
        self._checks: dict[str, Check] = {}
        self._any_fields: dict[str, tuple[str, ...]] = {}
        self._field_checks: dict[tuple[str, str], Check] = {}
        self._lock = threading.Lock()
        self._pool = descriptor_pool.Default()

    def check(self, message: Message) -> None:
        """Raise `ValidationFailed` if `message` (or anything in it) breaks a rule."""
        descriptor = message.DESCRIPTOR
        name = descriptor.full_name
        if name == ANY:
            inner = self.unpack(message)
            if inner is not None:
                self.check(inner)
            return
        run = self._checks.get(name)
        if run is None:
            run = self._compile(descriptor)
        run(message)
        for field_name in self._any_fields[name]:
            if message.HasField(field_name):
                inner = self.unpack(getattr(message, field_name))
                if inner is not None:
                    self.check(inner)

    def passes(self, message: Message) -> bool:
        try:
            self.check(message)
        except ValidationFailed:
            return False
        return True

    def unpack(self, packed: Message) -> Message | None:
        """The message inside an Any, if its type is known here (else it goes unchecked)."""
        type_name = packed.type_url.rpartition("/")[2]
        try:
            descriptor = self._pool.FindMessageTypeByName(type_name)
        except KeyError:
            logger.debug("not checked: no descriptor for %s", type_name)
            return None
        inner = message_factory.GetMessageClass(descriptor)()
        try:
            inner.ParseFromString(packed.value)
        except DecodeError:
            return None  # Envoy's own parse reports it; nothing of ours builds such bytes
        return inner

    def _compile(self, descriptor: Descriptor) -> Check:
        with self._lock:
            run = self._checks.get(descriptor.full_name)
            if run is not None:
                return run
            source = self._generator["file_template"](_MessageView(descriptor))
            run = self._exec(source, "generate_validate", descriptor.full_name)
            # Singular Any fields PGV passes over (it only descends into those with
            # message rules; repeated and map values it hands to `check`).
            self._any_fields[descriptor.full_name] = tuple(
                field.name
                for field in descriptor.fields
                if field.message_type is not None
                and field.message_type.full_name == ANY
                and not field.is_repeated
                and not _descends(field)
            )
            self._checks[descriptor.full_name] = run
            return run

    def _exec(self, source: str, function: str, origin: str) -> Check:
        code = compile(source, f"<validate.rules of {origin}>", "exec")
        defined: dict[str, Any] = {}
        exec(code, self._runtime, defined)  # PGV's generated code
        return defined[function]  # type: ignore[no-any-return]

    def field_check(self, descriptor: Descriptor, field: FieldDescriptor) -> Check:
        """One field's rules alone (to say which field of a failing message fails)."""
        key = (descriptor.full_name, field.name)
        run = self._field_checks.get(key)
        if run is None:
            with self._lock:
                body = self._generator["rule_type"](_Field(field))
                source = f"def check_field(p):\n    pass\n{body}\n    return None\n"
                run = self._exec(source, "check_field", f"{key[0]}.{key[1]}")
                self._field_checks[key] = run
        return run


def _descends(field: FieldDescriptor) -> bool:
    """Whether PGV's code for this message field calls `validate` on it."""
    rules = rules_of(field)
    return rules is not None and rules.HasField("message") and not rules.message.skip
