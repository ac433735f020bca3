"""Envoy's own validation rules, checked on every resource before it is served.

The Envoy API protos carry protoc-gen-validate (PGV) annotations
(`(validate.rules)` on fields, `(validate.required)` on oneofs): a ring
hash's `maximum_ring_size` at most 8M, an outlier detector's
`max_ejection_percent` at most 100, a route's cluster name non-empty.  Envoy
checks them on every resource it receives and NACKs the whole update when one
fails.  Translation can produce such values from input that passed our own
schema, so the pipeline checks them first: a resource that breaks a rule
raises `EnvoyValidationError` where it is built, and the pipeline's isolation
(`isolation`, `plan`) blames the source object, leaves it out (its last good
version stays) and lists the error, naming the object, the Envoy field path
and the rule.  No proxy ever sees the resource.

The rules are evaluated by the `protoc-gen-validate` package, which turns
each message type's annotations into a Python function (Jinja templates,
`exec`).  Three things keep it usable here:

* protobuf 7 removed `FieldDescriptor.label`, which its generator reads; it
  is handed descriptor views that restore it (`_Field`), and copies of the
  field options, since it rewrites a well-known regex into the options it is
  given (mutating a descriptor's own options is deprecated);
* its own entry point caches generated functions in an `lru_cache` of 128
  message types and recompiles each Jinja template on every use (~20 ms per
  type); the generator is rebound here to a namespace with compiled templates
  cached, and each type's function is kept in `_Rules` (Cluster and its parts
  compile in ~70 ms, once per process);
* it does not look inside `google.protobuf.Any` (a listener's
  HttpConnectionManager, a cluster's protocol options): `_Rules.check`
  unpacks every Any whose type the descriptor pool knows and checks it too.

Results are cached by (type URL, version): the version is the content hash of
the resource's bytes, so a push that rebuilds an unchanged resource pays a
dict lookup.  The namespace route tables (one virtual host per Service port,
10,000 of them at 10,000 Services, rebuilt for every namespace when a Service
changes) are checked per virtual host (`validate_route_table`): only the
fields in which a table differs from the last table that passed are walked
(`validation_tables`, a few memcmps of the table), each host among them is
looked up by the hash of its bytes, and only hosts never seen are parsed and
checked; the table's own fields are checked together.  That is exact because
`RouteConfiguration.virtual_hosts` carries no rule of its own.

Finding *where* a message fails is the slow path, taken only on failure:
descend into the first child that fails on its own, then run the failing
message's rules field by field (`_field_rules`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import descriptor_pool, message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import DecodeError, Message
from protoc_gen_validate import validator as pgv

from xds_server.pipeline.validation_tables import CheckedTable, new_fields, payload
from xds_server.provenance import SourceRef
from xds_server.resources import ROUTE, SHORT_NAMES, TYPES, Resource
from xds_server.translate.provenance import stamped_sources

logger = logging.getLogger(__name__)

ANY = "google.protobuf.Any"
RULES_EXTENSION = "validate.rules"
ONEOF_REQUIRED = "validate.required"
DEFAULT_CACHE_ENTRIES = 100_000
"""Results kept (resources and route-table virtual hosts), least recently used out first."""


class EnvoyValidationError(ValueError):
    """A generated resource breaks one of the Envoy API's validation rules.

    `sources` are the objects the failing part was built from, with where
    they were read (the resource's provenance; for a route table, those of the
    failing virtual host, whose keys are `source_keys`).
    """

    def __init__(
        self,
        type_url: str,
        resource_name: str,
        field_path: str,
        rule: str,
        reason: str,
        sources: tuple[SourceRef, ...] = (),
        source_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.type_url = type_url
        self.resource_name = resource_name
        self.field_path = field_path
        self.rule = rule
        self.reason = reason
        self.sources = sources
        self.source_keys = source_keys
        kind = SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])
        text = (
            f"{kind} resource {resource_name!r} breaks Envoy's validation rules: "
            f"field {field_path or '(message)'}: {reason} (rule: {rule})"
        )
        if sources:
            shown = ", ".join(_source_text(ref) for ref in sources[:MAX_SOURCES_SHOWN])
            more = len(sources) - MAX_SOURCES_SHOWN
            text += f"; built from {shown}" + (f" and {more} more" if more > 0 else "")
        super().__init__(text)

    def again(self, sources: tuple[SourceRef, ...]) -> EnvoyValidationError:
        """A new error with the same content, naming `sources` (a cached failure is
        raised fresh, for the resource at hand: provenance is not part of content)."""
        return EnvoyValidationError(
            self.type_url,
            self.resource_name,
            self.field_path,
            self.rule,
            self.reason,
            sources,
            self.source_keys,
        )


MAX_SOURCES_SHOWN = 3


def _source_text(ref: SourceRef) -> str:
    """`BackendPolicy default/ring (policy.yaml, document 0)`."""
    origin = ref.origin
    where = []
    if origin is not None:
        if origin.file is not None:
            where.append(origin.file)
        if origin.document is not None:
            where.append(f"document {origin.document}")
        if origin.uid is not None:
            where.append(f"uid {origin.uid}")
    place = f" ({', '.join(where)})" if where else ""
    return f"{ref.kind} {ref.namespace}/{ref.name}{place}"


# -- protoc-gen-validate, as this protobuf needs it ----------------------------------------


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


def _rule_text(rules: Message) -> str:
    text: str = text_format.MessageToString(rules, as_one_line=True)
    return "(validate.rules)." + text


def _oneof_required(oneof: OneofDescriptor) -> bool:
    return any(
        option.full_name == ONEOF_REQUIRED and value
        for option, value in oneof.GetOptions().ListFields()
    )


Check = Callable[[Message], None]


class _Rules:
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
        """Raise `pgv.ValidationFailed` if `message` (or anything in it) breaks a rule."""
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
        except pgv.ValidationFailed:
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


# -- where a failing message fails -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    field_path: str
    rule: str
    reason: str


_REASON_FIELD = re.compile(r"^(?:p\.)?([A-Za-z_][A-Za-z0-9_]*)")


def _children(rules: _Rules, message: Message) -> Iterator[tuple[str, Message]]:
    """Each message inside `message` (Anys unpacked), with its path segment."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is None:
                continue
            for key in sorted(value):
                yield from _unpacked(rules, f"{field.name}[{key!r}]", value[key])
        elif field.is_repeated:
            for index, item in enumerate(value):
                yield from _unpacked(rules, f"{field.name}[{index}]", item)
        else:
            yield from _unpacked(rules, field.name, value)


def _unpacked(rules: _Rules, segment: str, message: Message) -> Iterator[tuple[str, Message]]:
    if message.DESCRIPTOR.full_name != ANY:
        yield segment, message
        return
    inner = rules.unpack(message)
    if inner is not None:
        yield f"{segment}<{inner.DESCRIPTOR.full_name}>", inner


def locate(rules: _Rules, message: Message) -> Violation:
    """Where and why `message` (which fails) fails: the deepest failing message's field."""
    path: list[str] = []
    current = message
    descended = True
    while descended:
        descended = False
        for segment, child in _children(rules, current):
            if not rules.passes(child):
                path.append(segment)
                current, descended = child, True
                break
    return _own_violation(rules, current, path)


def _own_violation(rules: _Rules, message: Message, path: list[str]) -> Violation:
    """The first of `message`'s own fields (or required oneofs) that breaks its rule."""
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        field_rules = rules_of(field)
        if field_rules is None:
            continue
        oneof = field.containing_oneof
        if oneof is not None and not message.HasField(field.name):
            continue
        try:
            rules.field_check(descriptor, field)(message)
        except pgv.ValidationFailed as failed:
            return Violation(
                ".".join([*path, field.name]), _rule_text(field_rules), _reason(failed)
            )
    for oneof in descriptor.oneofs:
        if _oneof_required(oneof) and message.WhichOneof(oneof.name) is None:
            return Violation(
                ".".join([*path, oneof.name]),
                "(validate.required) = true on the oneof",
                f"one of {', '.join(f.name for f in oneof.fields)} is required",
            )
    try:  # not found field by field: say what the whole message's check says
        rules.check(message)
    except pgv.ValidationFailed as failed:
        reason = _reason(failed)
        match = _REASON_FIELD.match(reason)
        field = descriptor.fields_by_name.get(match.group(1)) if match else None
        if field is not None:
            found = rules_of(field)
            rule = _rule_text(found) if found is not None else "(validate.rules)"
            return Violation(".".join([*path, field.name]), rule, reason)
        return Violation(".".join(path), "(validate.rules)", reason)
    return Violation(".".join(path), "(validate.rules)", "failed (not reproduced)")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _reason(failed: BaseException) -> str:
    """PGV's message, without its `p.` and with control characters escaped (its header
    patterns quote NUL, CR and LF literally)."""
    text = str(failed)
    text = text[2:] if text.startswith("p.") else text
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


# -- results, cached by content -------------------------------------------------------------


Outcome = EnvoyValidationError | None


class _Results:
    """A bounded LRU of outcomes: recently used last, the oldest evicted past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._outcomes: dict[tuple[str, str] | bytes, Outcome] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str] | bytes) -> tuple[bool, Outcome]:
        with self._lock:
            try:
                outcome = self._outcomes.pop(key)
            except KeyError:
                self.misses += 1
                return False, None
            self._outcomes[key] = outcome
            self.hits += 1
            return True, outcome

    def put(self, key: tuple[str, str] | bytes, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes.pop(key, None)
            self._outcomes[key] = outcome
            while len(self._outcomes) > self.limit:
                del self._outcomes[next(iter(self._outcomes))]

    def clear(self) -> None:
        with self._lock:
            self._outcomes.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._outcomes)


class EnvoyValidator:
    """Checks resources against Envoy's rules, each content once (see the module doc)."""

    def __init__(self, *, enabled: bool = True, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.enabled = enabled
        self._rules = _Rules()
        self.results = _Results(cache_entries)
        self._reference: CheckedTable | None = None
        """The last route table that passed whole (see `validation_tables`)."""
        self._table_lock = threading.Lock()
        self.checked = 0
        """Messages actually checked (cache misses): what the cache saves shows here."""

    def validate(self, resource: Resource, message: Message | None = None) -> None:
        """Raise `EnvoyValidationError` if `resource` breaks a rule; `message` is its
        proto when the caller has it (it is parsed from the bytes otherwise)."""
        if not self.enabled:
            return
        key = (resource.type_url, resource.version)
        known, outcome = self.results.get(key)
        if not known:
            if message is None:
                message = TYPES[resource.type_url].message.FromString(resource.data)
            outcome = self._outcome(resource.type_url, resource.name, message)
            self.results.put(key, outcome)
        if outcome is not None:
            raise outcome.again(resource.provenance)

    def validate_route_table(self, resource: Resource) -> None:
        """`validate` for a RouteConfiguration, each virtual host checked once by content."""
        if not self.enabled:
            return
        key = (resource.type_url, resource.version)
        known, outcome = self.results.get(key)
        if not known:
            outcome = self._route_table_outcome(resource)
            self.results.put(key, outcome)
        if outcome is not None:
            keys = outcome.source_keys
            raise outcome.again(tuple(ref for ref in resource.provenance if ref.key in keys))

    def _outcome(self, type_url: str, name: str, message: Message, prefix: str = "") -> Outcome:
        self.checked += 1
        try:
            self._rules.check(message)
        except pgv.ValidationFailed:
            found = locate(self._rules, message)
            path = ".".join(part for part in (prefix, found.field_path) if part)
            error = EnvoyValidationError(type_url, name, path, found.rule, found.reason)
            logger.debug("%s", error)
            return error
        return None

    def _route_table_outcome(self, resource: Resource) -> Outcome:
        """Check what differs from the last table that passed, hosts by content."""
        data = resource.data
        with self._table_lock:
            reference = self._reference
        fields, lengths, others = new_fields(data, reference)
        rest = bytearray()
        for field in fields:
            if field.host_index < 0:
                rest += data[field.start : field.end]
                continue
            piece = data[field.start : field.end]
            digest = hashlib.blake2b(piece, digest_size=16).digest()
            known, outcome = self.results.get(digest)
            if not known:
                host = route_components_pb2.VirtualHost.FromString(payload(data, field))
                path = f"virtual_hosts[{field.host_index}]"
                outcome = self._outcome(ROUTE, resource.name, host, path)
                if outcome is not None:  # the Service(s) the host names in its metadata
                    outcome = EnvoyValidationError(
                        ROUTE,
                        resource.name,
                        outcome.field_path,
                        outcome.rule,
                        outcome.reason,
                        source_keys=frozenset(stamped_sources(host)),
                    )
                self.results.put(digest, outcome)
            if outcome is not None:  # name the table and this host's position in it
                return EnvoyValidationError(
                    ROUTE,
                    resource.name,
                    _reindexed(outcome.field_path, field.host_index),
                    outcome.rule,
                    outcome.reason,
                    source_keys=outcome.source_keys,
                )
        outcome = self._outcome(
            ROUTE, resource.name, route_pb2.RouteConfiguration.FromString(bytes(rest))
        )
        if outcome is None:
            with self._table_lock:
                self._reference = CheckedTable(data, lengths, others)
        return outcome

    def clear(self) -> None:
        self.results.clear()
        with self._table_lock:
            self._reference = None
        self.checked = 0


def _reindexed(path: str, index: int) -> str:
    """A cached host's path, with the index it has in this table."""
    _, _, rest = path.partition("]")
    return f"virtual_hosts[{index}]{rest}"


# -- the process's validator ------------------------------------------------------------------


_DEFAULT = EnvoyValidator()


def default_validator() -> EnvoyValidator:
    """The validator the pipeline uses (one per process: its cache is content-keyed)."""
    return _DEFAULT


def configure(*, enabled: bool) -> None:
    """Turn Envoy-rule validation on or off for this process (`--no-envoy-validation`)."""
    _DEFAULT.enabled = enabled
    if not enabled:  # on is the default and says nothing; off is worth a line
        logger.warning("Envoy-rule validation of generated resources is off")


def validate(resource: Resource, message: Message | None = None) -> None:
    """Raise `EnvoyValidationError` if `resource` breaks one of Envoy's validation rules."""
    _DEFAULT.validate(resource, message)


def validate_route_table(resource: Resource) -> None:
    """`validate` for a namespace's assembled route table (per virtual host by content)."""
    _DEFAULT.validate_route_table(resource)
