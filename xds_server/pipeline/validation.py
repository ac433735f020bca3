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

This module owns the pipeline-facing side: the error, the validator with its
content-keyed cache, and the process's validator (`validate`,
`validate_route_table`, `configure`).  The rules themselves are compiled by
`validation_rules` (protoc-gen-validate, adapted to this protobuf); where a
failing message fails is found by `validation_locate` (the slow path, taken
only on failure); route tables are diffed against the last one that passed
by `validation_tables`.

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
"""

from __future__ import annotations

import hashlib
import logging
import threading

from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf.message import Message

from xds_server.pipeline.validation_locate import Violation, locate
from xds_server.pipeline.validation_rules import (
    ANY,
    ONEOF_REQUIRED,
    RULES_EXTENSION,
    Check,
    CompiledRules,
    ValidationFailed,
    rules_of,
)
from xds_server.pipeline.validation_tables import CheckedTable, new_fields, payload
from xds_server.provenance import SourceRef
from xds_server.resources import ROUTE, SHORT_NAMES, TYPES, Resource
from xds_server.translate.provenance import stamped_sources

__all__ = [
    "ANY",
    "DEFAULT_CACHE_ENTRIES",
    "MAX_SOURCES_SHOWN",
    "ONEOF_REQUIRED",
    "RULES_EXTENSION",
    "Check",
    "EnvoyValidationError",
    "EnvoyValidator",
    "Outcome",
    "Violation",
    "configure",
    "default_validator",
    "locate",
    "rules_of",
    "validate",
    "validate_route_table",
]

logger = logging.getLogger(__name__)

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
    """`BackendPolicy default/ring (policy.yaml, document 0)`: no resourceVersion, which
    would make the error (and the status message it becomes) change with every write."""
    return ref.describe(resource_version=False)


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
        self._rules = CompiledRules()
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
        except ValidationFailed:
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
    was = _DEFAULT.enabled
    _DEFAULT.enabled = enabled
    if was and not enabled:  # on is the default and says nothing; turning it off is news
        logger.warning("Envoy-rule validation of generated resources is off")


def validate(resource: Resource, message: Message | None = None) -> None:
    """Raise `EnvoyValidationError` if `resource` breaks one of Envoy's validation rules."""
    _DEFAULT.validate(resource, message)


def validate_route_table(resource: Resource) -> None:
    """`validate` for a namespace's assembled route table (per virtual host by content)."""
    _DEFAULT.validate_route_table(resource)
