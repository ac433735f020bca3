"""Where a message that breaks Envoy's validation rules fails: the field path, rule and reason.

The compiled checks (`validation_rules`) say only that a message fails, with
PGV's terse reason.  This is the slow path, taken only on failure: descend
into the first child message that fails on its own (through `Any`s, naming
the packed type in the path), then run the failing message's rules field by
field, and its required oneofs, to name the first field that breaks its rule.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import Message

from xds_server.pipeline.validation_rules import (
    ANY,
    CompiledRules,
    ValidationFailed,
    oneof_required,
    rule_text,
    rules_of,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Violation:
    field_path: str
    rule: str
    reason: str


_REASON_FIELD = re.compile(r"^(?:p\.)?([A-Za-z_][A-Za-z0-9_]*)")


def _children(rules: CompiledRules, message: Message) -> Iterator[tuple[str, Message]]:
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


def _unpacked(
    rules: CompiledRules, segment: str, message: Message
) -> Iterator[tuple[str, Message]]:
    if message.DESCRIPTOR.full_name != ANY:
        yield segment, message
        return
    inner = rules.unpack(message)
    if inner is not None:
        yield f"{segment}<{inner.DESCRIPTOR.full_name}>", inner


def locate(rules: CompiledRules, message: Message) -> Violation:
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


def _own_violation(rules: CompiledRules, message: Message, path: list[str]) -> Violation:
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
        except ValidationFailed as failed:
            return Violation(".".join([*path, field.name]), rule_text(field_rules), _reason(failed))
    for oneof in descriptor.oneofs:
        if oneof_required(oneof) and message.WhichOneof(oneof.name) is None:
            return Violation(
                ".".join([*path, oneof.name]),
                "(validate.required) = true on the oneof",
                f"one of {', '.join(f.name for f in oneof.fields)} is required",
            )
    try:  # not found field by field: say what the whole message's check says
        rules.check(message)
    except ValidationFailed as failed:
        reason = _reason(failed)
        match = _REASON_FIELD.match(reason)
        field = descriptor.fields_by_name.get(match.group(1)) if match else None
        if field is not None:
            found = rules_of(field)
            rule = rule_text(found) if found is not None else "(validate.rules)"
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
