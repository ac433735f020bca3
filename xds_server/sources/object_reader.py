"""Reading one manifest field by field, naming the field and bounding the text on failure.

`convert` reads manifests through `ObjectReader`, which checks each field's
type against the tables of `schema` as it is read and, when strict, rejects
field names Kubernetes does not define (the API server's strict decoding).
Strings get the API server's rules where it has them (names, label keys and
values, qualified names) and, for every string the mesh reads, a bound on
length and a ban on what protobuf or Envoy cannot carry: lone surrogates,
NUL and other control characters.  `check_values` walks a whole object once
for what nothing may hold anywhere (lone surrogates, NUL, integers beyond
int64, non-JSON values).

A failure is a `ManifestError` naming the object and the field path, in the
API server's notation: `spec.ports[1].port`, `metadata.labels[app]`.  Its
text is bounded: a value is shown cut to `limits.MAX_SHOWN_VALUE_CHARS`,
and the whole message to `limits.MAX_ERROR_CHARS`, whatever the input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from xds_server.model import ObjectKey
from xds_server.sources import limits
from xds_server.sources.schema import (
    DNS_SUBDOMAIN,
    LABEL_NAME,
    LABEL_VALUE,
    Fields,
    FieldType,
    NameRule,
    Severity,
)

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
"""What no string the mesh reads may hold: control characters, line separators, surrogates."""
_NEVER = re.compile(r"[\x00\ud800-\udfff]")
"""What no string anywhere may hold: NUL and lone surrogates (no protobuf or JSON carries them)."""
_INT64 = range(-(2**63), 2**63)


class ManifestError(ValueError):
    """A manifest that is not a valid object; says which object, which field, and why.

    `key` is the object's identity when the manifest names one, so a caller can
    keep the object's previous good version in force.  `severity` is
    "warning" for a manifest the mesh does not read but probably should (a
    near-miss kind), "error" otherwise.  Every part is bounded in length.
    """

    def __init__(
        self,
        object_ref: str,
        field: str | None,
        message: str,
        key: ObjectKey | None = None,
        severity: Severity = "error",
    ) -> None:
        self.object_ref = limits.clip(object_ref, limits.MAX_SHOWN_VALUE_CHARS * 2)
        self.field = limits.clip(field, limits.MAX_FIELD_CHARS) if field else field
        self.message = limits.clip(message)
        self.key = key
        self.severity: Severity = severity
        super().__init__(self.object_ref, self.field, self.message)

    def __str__(self) -> str:
        text = ": ".join(part for part in (self.object_ref, self.field, self.message) if part)
        return limits.clip(text)


def escaped(text: str) -> str:
    """`text` cut to `MAX_SHOWN_VALUE_CHARS` and with what is not printable escaped."""
    cut = text[: limits.MAX_SHOWN_VALUE_CHARS]
    if _FORBIDDEN.search(cut):
        cut = repr(cut)[1:-1][: limits.MAX_SHOWN_VALUE_CHARS]
    return cut + "…" if len(text) > limits.MAX_SHOWN_VALUE_CHARS else cut


def show(value: Any) -> str:
    """A value as the manifest author wrote it, for error messages, bounded in length."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        quoted = repr(value[: limits.MAX_SHOWN_VALUE_CHARS])
        if len(quoted) > limits.MAX_SHOWN_VALUE_CHARS + 2:
            quoted = quoted[: limits.MAX_SHOWN_VALUE_CHARS + 1] + quoted[0]
        if len(value) > limits.MAX_SHOWN_VALUE_CHARS:
            return f"{quoted}… ({len(value):,} characters)"
        return quoted
    if isinstance(value, int):
        if value.bit_length() > 64:
            return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return f"a {type(value).__name__}"


def key_path(prefix: str, key: str) -> str:
    return f"{prefix}[{escaped(key)}]"


def _type_problem(value: Any, kind: FieldType) -> str | None:
    if value is None or kind == "any":
        return None
    if kind == "string":
        ok = isinstance(value, str)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "port":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind in ("mapping", "string-map"):
        ok = isinstance(value, Mapping)
    elif kind in ("list", "strings"):
        ok = isinstance(value, list)
    else:  # int-or-string
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    if ok:
        return None
    expected = {
        "string": "a string", "integer": "an integer", "port": "an integer 1-65535",
        "boolean": "true or false",
        "mapping": "a mapping", "string-map": "a mapping of strings", "list": "a list",
        "strings": "a list of strings", "int-or-string": "an integer or a string",
    }[kind]  # fmt: skip
    return f"must be {expected}, got {show(value)}"


@dataclass(frozen=True)
class ObjectReader:
    """The object being converted: reads its fields and names them on failure."""

    ref: str
    key: ObjectKey | None
    strict: bool

    def fail(self, field: str | None, message: str) -> NoReturn:
        raise ManifestError(self.ref, field, message, self.key)

    def mapping(self, value: Any, field: str, allowed: Fields | None = None) -> Mapping[str, Any]:
        """A mapping (None reads as empty) whose known fields have their JSON types."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(field or None, f"must be a mapping, got {show(value)}")
        for name, item in value.items():
            if not isinstance(name, str):
                self.fail(field or None, f"field names must be strings, got {show(name)}")
            if allowed is None:
                continue
            kind = allowed.get(name)
            where = f"{field}.{name}" if field else name
            if kind is None:
                if self.strict:
                    self.fail(_field_name(field, name), "unknown field")
                continue
            problem = _type_problem(item, kind)
            if problem is None and kind == "strings":
                for i, element in enumerate(item or ()):
                    if not isinstance(element, str):
                        self.fail(f"{where}[{i}]", f"must be a string, got {show(element)}")
            elif problem is None and kind == "string-map":
                for key, element in (item or {}).items():
                    if not isinstance(element, str):
                        self.fail(
                            key_path(where, str(key)), f"must be a string, got {show(element)}"
                        )
            if problem is not None:
                self.fail(where, problem)
        return value

    def sequence(self, value: Any, field: str, limit: int | None = None) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(field, f"must be a list, got {show(value)}")
        if limit is not None and len(value) > limit:
            self.fail(field, f"at most {limit:,} items, got {len(value):,}")
        return value

    def string(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(field, f"must be a string, got {show(value)}")
        return value

    def required_string(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if not text:
            self.fail(field, "required")
        return text

    def text(self, value: Any, field: str, limit: int = limits.MAX_STRING_LENGTH) -> str | None:
        """A free-form string the mesh reads: bounded, and nothing Envoy cannot carry."""
        text = self.string(value, field)
        if text is None:
            return None
        if len(text) > limit:
            self.fail(field, f"at most {limit:,} characters, got {show(text)}")
        bad = _FORBIDDEN.search(text)
        if bad is not None:
            self.fail(
                field,
                f"must not contain control characters or lone surrogates "
                f"(U+{ord(bad.group()):04X} at {bad.start()}), got {show(text)}",
            )
        return text

    def boolean(self, value: Any, field: str) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {show(value)}")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(field, f"must be an integer {low}-{high}, got {show(value)}")
        return value

    def one_of(self, value: Any, field: str, allowed: frozenset[str], default: str) -> str:
        text = self.string(value, field)
        if text is None:
            return default
        if text not in allowed:
            self.fail(field, f"must be one of {', '.join(sorted(allowed))}, got {show(text)}")
        return text

    def port_number(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.fail(field, f"must be an integer 1-65535, got {show(value)}")
        return value

    def dns_name(self, value: str, field: str, rule: NameRule) -> str:
        if len(value) > rule.limit or not rule.pattern.fullmatch(value):
            self.fail(
                field,
                f"must be {rule.description}, at most {rule.limit} characters, got {show(value)}",
            )
        return value

    def qualified_name(self, value: str, field: str, what: str = "name") -> str:
        """`[prefix/]name` as label keys and appProtocol are (Kubernetes' IsQualifiedName)."""
        prefix, slash, name = value.rpartition("/")
        if slash and (
            not prefix
            or len(prefix) > limits.MAX_LABEL_PREFIX_LENGTH
            or not DNS_SUBDOMAIN.pattern.fullmatch(prefix)
        ):
            self.fail(
                field,
                f"{what} prefix must be a DNS subdomain of at most "
                f"{limits.MAX_LABEL_PREFIX_LENGTH} characters, got {show(value)}",
            )
        if len(name) > LABEL_NAME.limit or not LABEL_NAME.pattern.fullmatch(name):
            self.fail(
                field,
                f"{what} must be {LABEL_NAME.description} (at most {LABEL_NAME.limit}), "
                f"with an optional DNS-subdomain prefix and '/', got {show(value)}",
            )
        return value

    def labels(self, value: Any, field: str) -> dict[str, str]:
        """Labels or a label selector: qualified-name keys, label values (ValidateLabels)."""
        result: dict[str, str] = {}
        for name, item in self.mapping(value, field).items():
            where = key_path(field, name)
            self.qualified_name(name, where, "label key")
            if not isinstance(item, str):
                self.fail(where, f"must be a string, got {show(item)}")
            if len(item) > LABEL_VALUE.limit or not LABEL_VALUE.pattern.fullmatch(item):
                self.fail(
                    where,
                    f"label value must be {LABEL_VALUE.description}, at most "
                    f"{LABEL_VALUE.limit} characters, got {show(item)}",
                )
            result[name] = item
        return result

    def annotations(self, value: Any, field: str) -> None:
        """Annotations: qualified-name keys (any case), at most 256 KiB in all."""
        total = 0
        for name, item in self.mapping(value, field).items():
            where = key_path(field, name)
            self.qualified_name(name.lower(), where, "annotation key")
            if not isinstance(item, str):
                self.fail(where, f"must be a string, got {show(item)}")
            total += len(name.encode("utf-8", "surrogatepass"))
            total += len(item.encode("utf-8", "surrogatepass"))
        if total > limits.MAX_ANNOTATIONS_BYTES:
            self.fail(
                field,
                f"at most {limits.MAX_ANNOTATIONS_BYTES:,} bytes in all, got {total:,}",
            )

    def ip(self, value: str, field: str, version: int | None = None) -> str:
        """An IP address as Kubernetes writes one: no zone, no IPv4-mapped IPv6."""
        try:
            if "%" in value:
                raise ValueError(value)
            address = ipaddress.ip_address(value)
        except ValueError:
            self.fail(field, f"must be an IP address, got {show(value)}")
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            self.fail(field, f"must not be an IPv4-mapped IPv6 address, got {show(value)}")
        if version is not None and address.version != version:
            self.fail(field, f"must be an IPv{version} address, got {show(value)}")
        return str(address)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _field_name(field: str, name: Any) -> str:
    """`field.name`, or `field[key]` for a key that is not a plain field name."""
    if isinstance(name, str) and _PLAIN_NAME.fullmatch(name):
        return f"{field}.{name}" if field else name
    return key_path(field, name if isinstance(name, str) else show(name))


_MAP_FIELDS = frozenset({
    "labels", "annotations", "selector", "nodeSelector", "deprecatedTopology", "matchLabels",
    "limits", "requests", "overhead", "data", "binaryData", "stringData",
})  # fmt: skip
"""Fields whose keys are data, shown as `field[key]` (the API server's notation for maps)."""


def _holds_never(text: str) -> bool:
    return "\x00" in text or (not text.isascii() and _NEVER.search(text) is not None)


def check_values(obj: ObjectReader, manifest: Mapping[str, Any]) -> None:
    """Refuse what no field may hold, wherever it is: NUL, lone surrogates, huge integers.

    One iterative walk over the whole object, each container once (YAML
    aliases share them), so unread fields are covered too: no protobuf,
    JSON log line or admin response may meet a string it cannot encode.
    """
    seen: set[int] = set()
    pending: list[tuple[Any, str]] = [(manifest, "")]
    while pending:
        value, path = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        is_map = isinstance(value, Mapping)
        keyed = path.rpartition(".")[2] in _MAP_FIELDS
        items = value.items() if is_map else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                if _holds_never(key):
                    obj.fail(path or None, f"field name {show(key)} holds NUL or a lone surrogate")
                where = key_path(path, key) if keyed else _field_name(path, key)
            elif is_map:
                obj.fail(path or None, f"field names must be strings, got {show(key)}")
            else:
                where = f"{path}[{key}]"
            if isinstance(item, str):
                if _holds_never(item):
                    bad = _NEVER.search(item)
                    assert bad is not None
                    obj.fail(
                        where,
                        f"must not contain NUL or lone surrogates "
                        f"(U+{ord(bad.group()):04X} at {bad.start()}), got {show(item)}",
                    )
            elif item is None or isinstance(item, (bool, float)):
                continue
            elif isinstance(item, int):
                if item not in _INT64:
                    obj.fail(where, f"integer too large, got {show(item)}")
            elif isinstance(item, (Mapping, list)):
                if id(item) not in seen:
                    pending.append((item, where))
            else:
                obj.fail(where, f"must be a JSON value, got {show(item)}")
