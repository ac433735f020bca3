"""A YAML node tree checked against the manifest bounds as it is built into values.

libyaml (or the iterative composer) gives a tree of nodes; this module turns
it into plain values, Kubernetes' way (go-yaml's scalars: no sexagesimal
numbers, timestamps kept as text, only the core tags), and refuses the
document at the first bound it breaks, naming the field by its path:
nesting depth, duplicate and non-scalar keys, integer literals longer than
any int64 (before Python's int-from-str digit limit can be reached), and the
number of values the document expands to once YAML aliases are followed.

It is one walk with an explicit stack, so no input reaches a recursion
limit; aliased collections are built once and shared, and their expanded
size memoised, so an alias bomb costs time linear in its text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

from xds_server.sources import limits

__all__ = [
    "BOOL", "BOOL_PATTERN", "FLOAT", "FLOAT_PATTERN", "INT", "INT_PATTERN", "MAP", "MERGE",
    "MERGE_PATTERN", "NULL", "NULL_PATTERN", "SEQ", "STR", "TIMESTAMP",
    "DocumentFault", "construct_checked", "field_step", "float_value", "int_value", "shown",
    "sketch", "too_deep",
]  # fmt: skip

_CORE = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
MAP, SEQ, MERGE, TIMESTAMP = (_CORE + t for t in ("map", "seq", "merge", "timestamp"))
_VERBATIM = (STR, TIMESTAMP, MERGE)
"""Tags whose value is the scalar's text."""

INT_PATTERN = re.compile(r"[-+]?(?:0|[1-9][0-9_]*|0b[01_]+|0o?[0-7_]+|0x[0-9a-fA-F_]+)")
FLOAT_PATTERN = re.compile(
    r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
BOOL_PATTERN = re.compile(
    r"yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF"
)
NULL_PATTERN = re.compile(r"~|null|Null|NULL")
MERGE_PATTERN = re.compile(r"<<")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]*")


def shown(text: str) -> str:
    """A name or key as it may appear in a message: bounded and escaped."""
    cut = text[: limits.MAX_SHOWN_VALUE_CHARS]
    if not _PRINTABLE.fullmatch(cut):
        cut = repr(cut)[1:-1]
    return cut + "…" if len(text) > limits.MAX_SHOWN_VALUE_CHARS else cut


def field_step(prefix: str, name: str) -> str:
    """A field path step in the API server's notation: `.name`, or `[key]` for map keys."""
    if _PLAIN_NAME.fullmatch(name):
        return f"{prefix}.{name}" if prefix else name
    return f"{prefix}[{shown(name)}]"


def int_value(text: str) -> int:
    """A YAML int literal's value (as go-yaml reads it: underscores dropped, no sexagesimal).

    Raises ValueError for a literal that is not an int or has more than
    `MAX_INTEGER_DIGITS` digits, so Python's int-from-str digit limit is never reached.
    """
    if not INT_PATTERN.fullmatch(text):
        raise ValueError("not an integer")
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    base = 10
    if digits[:2] in ("0b", "0x", "0o"):
        base, digits = {"b": 2, "x": 16, "o": 8}[digits[1]], digits[2:]
    elif len(digits) > 1 and digits.startswith("0"):
        base = 8
    if not digits:
        raise ValueError("not an integer")
    if len(digits) > limits.MAX_INTEGER_DIGITS:
        raise ValueError(f"integer too large ({len(digits):,} digits)")
    return sign * int(digits, base)


def float_value(text: str) -> float:
    if not FLOAT_PATTERN.fullmatch(text):
        raise ValueError("not a number")
    number = text.replace("_", "").lower().replace(".inf", "inf").replace(".nan", "nan")
    try:
        return float(number)
    except ValueError:
        raise ValueError("not a number") from None


@dataclass(frozen=True)
class DocumentFault:
    """The first bound a document breaks: where (field path, node) and what."""

    field: str | None
    message: str
    node: Node


def _scalar(node: ScalarNode) -> Any:
    """A scalar's value for its (core) tag; ValueError says why it has none."""
    tag, text = node.tag, node.value
    if tag in _VERBATIM:
        return text
    if tag == INT:
        return int_value(text)
    if tag == NULL:
        if text and not NULL_PATTERN.fullmatch(text):
            raise ValueError("not null")
        return None
    if tag == BOOL:
        if not BOOL_PATTERN.fullmatch(text):
            raise ValueError("not true or false")
        return text.lower() in ("yes", "true", "on")
    if tag == FLOAT:
        return float_value(text)
    raise ValueError(f"unsupported YAML tag '{shown(tag)}'")


class _Frame:
    """A collection being built: its node, its children in order, and what they added up to."""

    __slots__ = ("children", "index", "key", "merges", "node", "size", "tallest", "value")

    def __init__(self, node: CollectionNode, children: list[Node], value: Any) -> None:
        self.node = node
        self.children = children
        self.index = 0
        self.value = value
        self.size = 1
        self.tallest = 0
        self.key: Any = None
        self.merges: list[Any] = []


def _path(stack: list[_Frame], extra: str | None = None) -> str | None:
    """The field path of the child each frame is visiting (`spec.ports[1].port`)."""
    path = ""
    for frame in stack:
        i = frame.index - 1
        if isinstance(frame.node, SequenceNode):
            path = f"{path}[{i}]"
        else:
            path = field_step(path, str(frame.children[i - i % 2].value))
    if extra is not None:
        path = field_step(path, extra)
    return path or None


def _alias_site(stack: list[_Frame]) -> Node:
    """Where an alias being visited is written, as near as nodes tell: its key, or its list."""
    frame = stack[-1]
    if isinstance(frame.node, MappingNode):
        return frame.children[frame.index - 2]
    return frame.node


def _collection(node: CollectionNode) -> _Frame | str:
    """A frame for a collection node, or why it cannot be one (tag, keys)."""
    if isinstance(node, SequenceNode):
        if node.tag != SEQ:
            return f"unsupported YAML tag '{shown(node.tag)}'"
        return _Frame(node, node.value, [])
    if node.tag != MAP:
        return f"unsupported YAML tag '{shown(node.tag)}'"
    children: list[Node] = []
    for key, value in node.value:
        if not isinstance(key, ScalarNode):
            kind = "a mapping" if isinstance(key, MappingNode) else "a list"
            return f"field names must be strings, got {kind}"
        if key.tag == MERGE and not (
            isinstance(value, MappingNode)
            or (
                isinstance(value, SequenceNode)
                and all(isinstance(v, MappingNode) for v in value.value)
            )
        ):
            return "a merge key (<<) takes a mapping or a list of mappings"
        children.append(key)
        children.append(value)
    return _Frame(node, children, {})


def _duplicate(node: MappingNode) -> Node | None:
    """The first key given a second time in the mapping (YAML would keep the last)."""
    keys: list[Node] = [key for key, _ in node.value if key.tag != MERGE]
    if len({str(key.value) for key in keys}) == len(keys):
        return None
    seen: set[str] = set()
    for key in keys:
        if str(key.value) in seen:
            return key
        seen.add(str(key.value))
    return None  # pragma: no cover - the sets differed


def construct_checked(root: Node) -> Any:
    """The document's value, or the `DocumentFault` that stops it being built.

    One depth-first walk with an explicit stack, checking as it builds:
    nesting depth, tags, keys (scalars, given once), integer literals, and
    the number of values the document expands to.  A collection reached a
    second time (an alias) is not walked again: its value is shared, and
    its memoised expanded size and height count, so an alias bomb costs
    time linear in its text and is refused once it expands past
    `MAX_ALIAS_EXPANSION`; a collection reached from inside itself is refused.
    """
    built: dict[int, Any] = {}
    extent: dict[int, tuple[int, int]] = {}  # collection id -> expanded size, height
    open_ids: set[int] = set()
    stack: list[_Frame] = []
    visit: Node | None = root
    value: Any = None
    size = height = walked = 0
    while True:
        if visit is not None:
            node, visit = visit, None
            if isinstance(node, ScalarNode):
                try:
                    value = _scalar(node)
                except ValueError as error:
                    detail = str(error)
                    if not detail.startswith(("integer too large", "unsupported")):
                        detail = f"{detail}: '{shown(str(node.value))}'"
                    return DocumentFault(_path(stack), detail, node)
                size, height = 1, 0
                walked += 1
            else:
                ident = id(node)
                if ident in extent:
                    value = built[ident]
                    size, height = extent[ident]
                    if len(stack) + height > limits.MAX_YAML_DEPTH:
                        return DocumentFault(_path(stack), too_deep(), _alias_site(stack))
                elif ident in open_ids:
                    return DocumentFault(
                        _path(stack), "an alias refers to a node that contains it",
                        _alias_site(stack),
                    )  # fmt: skip
                else:
                    if len(stack) >= limits.MAX_YAML_DEPTH:
                        return DocumentFault(_path(stack), too_deep(), node)
                    frame = _collection(node)  # type: ignore[arg-type]
                    if isinstance(frame, str):
                        return DocumentFault(_path(stack), frame, node)
                    if isinstance(node, MappingNode):
                        again = _duplicate(node)
                        if again is not None:
                            return DocumentFault(
                                _path(stack, str(again.value)), "field given more than once", again
                            )
                    walked += 1
                    open_ids.add(ident)
                    stack.append(frame)
                    continue
        else:
            frame = stack[-1]
            if frame.index < len(frame.children):
                visit = frame.children[frame.index]
                frame.index += 1
                continue
            stack.pop()
            node = frame.node
            ident = id(node)
            open_ids.discard(ident)
            value = frame.value
            for merged in reversed(frame.merges):  # explicit keys, then earlier merges, win
                for source in merged if isinstance(merged, list) else (merged,):
                    for key, item in source.items():
                        value.setdefault(key, item)
            size, height = frame.size, frame.tallest + 1
            if size > limits.MAX_ALIAS_EXPANSION:
                return DocumentFault(
                    _path(stack),
                    f"aliases expand this to more than {limits.MAX_ALIAS_EXPANSION:,} values"
                    if walked < size else f"more than {limits.MAX_ALIAS_EXPANSION:,} values",
                    node,
                )  # fmt: skip
            built[ident] = value
            extent[ident] = (size, height)
        if not stack:
            return value
        parent = stack[-1]
        parent.size += size
        if height > parent.tallest:
            parent.tallest = height
        if isinstance(parent.value, list):
            parent.value.append(value)
        elif parent.index % 2:  # a key
            parent.key = value
        elif parent.children[parent.index - 2].tag == MERGE:
            parent.merges.append(value)
        else:
            parent.value[parent.key] = value


def too_deep() -> str:
    return f"nested too deeply (more than {limits.MAX_YAML_DEPTH} levels)"


def sketch(node: Node) -> dict[str, Any]:
    """apiVersion, kind and metadata name/namespace read from the nodes, unconstructed.

    Enough for an error to name the object of a document that is refused
    before its value is built.
    """
    found: dict[str, Any] = {}
    if not isinstance(node, MappingNode):
        return found
    for key, value in node.value:
        name = getattr(key, "value", None)
        if name in ("apiVersion", "kind") and isinstance(value, ScalarNode):
            found[name] = value.value
        elif name == "metadata" and isinstance(value, MappingNode):
            found["metadata"] = {
                k.value: v.value
                for k, v in value.value
                if getattr(k, "value", None) in ("name", "namespace") and isinstance(v, ScalarNode)
            }
    return found
