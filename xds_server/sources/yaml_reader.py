"""Manifest YAML read as Kubernetes reads it, with libyaml, and within bounds.

`kubectl` and the API server read YAML with go-yaml, whose implicit types are
YAML 1.1's without the sexagesimal numbers and without timestamps: `port:
1:20` is the string "1:20" (which a port field then rejects), not PyYAML's
80, and `creationTimestamp: 2024-01-01T00:00:00Z` stays a string.  The
resolver here is that one, and only the core tags (str, int, float, bool,
null, map, seq, merge) are accepted: anything else (`!!python/...`,
`!!binary`, `!!set`, a local `!tag`) is a field error, not a surprise type.

Parsing and composing run in libyaml (`yaml.CParser`) where PyYAML has it:
the pure-Python parser is several times slower on a large EndpointSlice.
libyaml 0.2.6 and later stop nesting at 1,000 levels; with an older libyaml,
or none, nodes are composed here from the parser's events without
recursion, so no input reaches a recursion limit or the C stack.

Every bound is checked on the node tree, iteratively, before any value is
constructed (see `check_document`): nesting depth, the number of nodes a
document expands to once aliases are followed (memoised per node, so an
alias bomb costs time linear in its size, and a node containing itself is
refused), integer literals longer than any int64, duplicate keys (YAML would
keep the last; an author meant one or the other), and non-scalar keys.  The
size of each document is checked on the text before it is parsed at all: an
oversized document is blanked (its lines kept, so later line numbers hold)
and reported.  A problem in one document leaves the file's other documents
readable; only YAML that does not parse at all fails the whole file (as a
`yaml.YAMLError`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    MappingEndEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from xds_server.sources import limits

__all__ = [
    "NATIVE_COMPOSE",
    "NOT_A_MANIFEST",
    "Document",
    "DocumentProblem",
    "ManifestLoader",
    "construct_checked",
    "field_step",
    "read_documents",
    "sketch",
]

_CORE = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
MAP, SEQ, MERGE, TIMESTAMP = (_CORE + t for t in ("map", "seq", "merge", "timestamp"))
_VERBATIM = (STR, TIMESTAMP, MERGE)
"""Tags whose value is the scalar's text."""

_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*|0b[01_]+|0o?[0-7_]+|0x[0-9a-fA-F_]+)")
_FLOAT = re.compile(
    r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_BOOL = re.compile(r"yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF")
_NULL = re.compile(r"~|null|Null|NULL")
_MERGE = re.compile(r"<<")
_IMPLICIT: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {}
for _tag, _pattern, _first in (
    (BOOL, _BOOL, "yYnNtTfFoO"),
    (INT, _INT, "-+0123456789"),
    (FLOAT, _FLOAT, "-+0123456789."),
    (NULL, _NULL, "~nN"),
    (MERGE, _MERGE, "<"),
):
    for _char in _first:
        _IMPLICIT[_char] = (*_IMPLICIT.get(_char, ()), (_tag, _pattern))


class KubernetesResolver(BaseResolver):
    """go-yaml's implicit types: YAML 1.1 without sexagesimal numbers and timestamps.

    `resolve` is called once per scalar from libyaml's composer, so it is
    kept to a dictionary look-up and at most three regular expressions.
    """

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            if implicit[0]:
                if not value:
                    return NULL
                for tag, pattern in _IMPLICIT.get(value[0], ()):
                    if pattern.fullmatch(value):
                        return tag
            return STR
        return SEQ if kind is SequenceNode else MAP

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        """No path resolvers: nothing to track."""

    def ascend_resolver(self) -> None:
        """No path resolvers: nothing to track."""


class KubernetesConstructor(SafeConstructor):
    """SafeConstructor, building documents through `construct_checked`.

    A document that breaks a bound raises ConstructorError naming the field;
    integers never go through sexagesimal parsing or Python's int-from-str
    digit limit.
    """

    def construct_yaml_int(self, node: ScalarNode) -> int:
        return int_value(str(node.value))

    def construct_yaml_float(self, node: ScalarNode) -> float:
        return float_value(str(node.value))

    def construct_document(self, node: Node) -> Any:
        built = construct_checked(node)
        if isinstance(built, DocumentFault):
            where = f"{built.field}: " if built.field else ""
            raise ConstructorError(None, None, where + built.message, built.node.start_mark)
        return built


class PurePythonLoader(Reader, Scanner, Parser, KubernetesConstructor, KubernetesResolver):
    """The pure-Python parser with Kubernetes' implicit types: where libyaml is missing."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        KubernetesConstructor.__init__(self)
        KubernetesResolver.__init__(self)


ManifestLoader: type[Any] = PurePythonLoader
"""libyaml's parser where PyYAML has it, with Kubernetes' implicit types."""
NATIVE_COMPOSE = False
"""libyaml composes the nodes: it exists and bounds nesting itself (1,000 levels, 0.2.6+)."""

if yaml.__with_libyaml__:
    from yaml.cyaml import CParser  # type: ignore[attr-defined]

    class LibyamlLoader(CParser, KubernetesConstructor, KubernetesResolver):
        """libyaml's parser with Kubernetes' implicit types and SafeConstructor's scalars."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            KubernetesConstructor.__init__(self)
            KubernetesResolver.__init__(self)

    ManifestLoader = LibyamlLoader
    NATIVE_COMPOSE = yaml._yaml.get_version() >= (0, 2, 6)


def _compose_iteratively(loader: Any) -> Node:
    """One document's node tree from the parser's events, with an explicit stack.

    PyYAML's composer recurses once per level; this one refuses to nest
    deeper than `MAX_YAML_DEPTH` and never recurses, whatever the input.
    """
    loader.get_event()  # DocumentStartEvent
    anchors: dict[str, Node] = {}
    stack: list[CollectionNode] = []
    keys: list[Node | None] = []
    root: Node | None = None
    while root is None:
        event: Any = loader.get_event()
        start: Any = event.start_mark  # libyaml's marks are its own type
        end: Any = event.end_mark
        node: Node
        if isinstance(event, AliasEvent):
            if event.anchor not in anchors:
                raise ComposerError(
                    None, None, f"found undefined alias {_shown(str(event.anchor))}", start
                )
            node = anchors[event.anchor]
        elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
            node = stack.pop()
            keys.pop()
            node.end_mark = end
        else:
            if event.anchor is not None and event.anchor in anchors:
                raise ComposerError(
                    "found duplicate anchor", anchors[event.anchor].start_mark,
                    f"second occurrence of {_shown(str(event.anchor))}", start,
                )  # fmt: skip
            tag = event.tag
            if isinstance(event, ScalarEvent):
                if tag is None or tag == "!":
                    tag = loader.resolve(ScalarNode, event.value, event.implicit)
                node = ScalarNode(tag, event.value, start, end, event.style)
            else:
                assert isinstance(event, CollectionStartEvent)
                if len(stack) >= limits.MAX_YAML_DEPTH:
                    raise ComposerError(None, None, _too_deep(), start)
                collection: CollectionNode
                if isinstance(event, SequenceStartEvent):
                    if tag is None or tag == "!":
                        tag = loader.resolve(SequenceNode, None, event.implicit)
                    collection = SequenceNode(tag, [], start, None, event.flow_style)
                else:
                    if tag is None or tag == "!":
                        tag = loader.resolve(MappingNode, None, event.implicit)
                    collection = MappingNode(tag, [], start, None, event.flow_style)
                if event.anchor is not None:
                    anchors[event.anchor] = collection
                stack.append(collection)
                keys.append(None)
                continue
            if event.anchor is not None:
                anchors[event.anchor] = node
        if not stack:
            root = node
        elif isinstance(stack[-1], SequenceNode):
            stack[-1].value.append(node)
        elif keys[-1] is None:
            keys[-1] = node
        else:
            stack[-1].value.append((keys[-1], node))
            keys[-1] = None
    loader.get_event()  # DocumentEndEvent
    return root


def _nodes(loader: Any, native: bool) -> Iterator[Node]:
    if native:
        while loader.check_node():
            yield loader.get_node()
        return
    loader.get_event()  # StreamStartEvent
    while not loader.check_event(StreamEndEvent):
        yield _compose_iteratively(loader)


# -- bounds on the node tree ------------------------------------------------------------------

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]*")


def _shown(text: str) -> str:
    """A name or key as it may appear in a message: bounded and escaped."""
    cut = text[: limits.MAX_SHOWN_VALUE_CHARS]
    if not _PRINTABLE.fullmatch(cut):
        cut = repr(cut)[1:-1]
    return cut + "…" if len(text) > limits.MAX_SHOWN_VALUE_CHARS else cut


def field_step(prefix: str, name: str) -> str:
    """A field path step in the API server's notation: `.name`, or `[key]` for map keys."""
    if _PLAIN_NAME.fullmatch(name):
        return f"{prefix}.{name}" if prefix else name
    return f"{prefix}[{_shown(name)}]"


def int_value(text: str) -> int:
    """A YAML int literal's value (as go-yaml reads it: underscores dropped, no sexagesimal).

    Raises ValueError for a literal that is not an int or has more than
    `MAX_INTEGER_DIGITS` digits, so Python's int-from-str digit limit is never reached.
    """
    if not _INT.fullmatch(text):
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
    if not _FLOAT.fullmatch(text):
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
        if text and not _NULL.fullmatch(text):
            raise ValueError("not null")
        return None
    if tag == BOOL:
        if not _BOOL.fullmatch(text):
            raise ValueError("not true or false")
        return text.lower() in ("yes", "true", "on")
    if tag == FLOAT:
        return float_value(text)
    raise ValueError(f"unsupported YAML tag '{_shown(tag)}'")


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
            return f"unsupported YAML tag '{_shown(node.tag)}'"
        return _Frame(node, node.value, [])
    if node.tag != MAP:
        return f"unsupported YAML tag '{_shown(node.tag)}'"
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
                        detail = f"{detail}: '{_shown(str(node.value))}'"
                    return DocumentFault(_path(stack), detail, node)
                size, height = 1, 0
                walked += 1
            else:
                ident = id(node)
                if ident in extent:
                    value = built[ident]
                    size, height = extent[ident]
                    if len(stack) + height > limits.MAX_YAML_DEPTH:
                        return DocumentFault(_path(stack), _too_deep(), _alias_site(stack))
                elif ident in open_ids:
                    return DocumentFault(
                        _path(stack), "an alias refers to a node that contains it",
                        _alias_site(stack),
                    )  # fmt: skip
                else:
                    if len(stack) >= limits.MAX_YAML_DEPTH:
                        return DocumentFault(_path(stack), _too_deep(), node)
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


def _too_deep() -> str:
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


# -- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document's value, with its node tree for locating fields by line."""

    node: Node
    value: Any


@dataclass(frozen=True)
class DocumentProblem:
    """A document refused before it was constructed; the file's others still count."""

    line: int
    """1-based line of the offending node."""
    manifest: Mapping[str, Any]
    """What could be read of the object's identity (`sketch`), to name it."""
    field: str | None
    message: str


NOT_A_MANIFEST = "a manifest must be a mapping (an object with apiVersion and kind)"
_MARKER = re.compile(r"^---(?=[ \t\r\n]|\Z)", re.MULTILINE)
_TEXT_KIND = re.compile(r"^kind:[ \t]*([A-Za-z0-9]{1,63})[ \t]*\r?$", re.MULTILINE)
_TEXT_METADATA = re.compile(r"^metadata:[ \t]*(.*)$", re.MULTILINE)
_TEXT_FIELD = re.compile(
    r"(?:^[ \t]+|[{,][ \t]*)(name|namespace):[ \t]*([a-z0-9.-]{1,253})[ \t]*(?=[,}\r]|$)"
)


def _text_sketch(head: str) -> dict[str, Any]:
    """kind and metadata name/namespace found in a document's text, without parsing it.

    Only the usual layouts (`kind: X` at the top; `metadata:` followed by a
    block or a flow mapping holding `name:`), which is all an error needs.
    """
    found: dict[str, Any] = {}
    kind = _TEXT_KIND.search(head)
    if kind:
        found["kind"] = kind.group(1)
    metadata = _TEXT_METADATA.search(head)
    if metadata is None:
        return found
    lines = [metadata.group(1)] if metadata.group(1).strip() else []
    if not lines:
        for line in head[metadata.end() + 1 :].splitlines()[:50]:
            if line.strip() and not line[:1].isspace():
                break
            lines.append(line)
    fields = {m.group(1): m.group(2) for line in lines for m in _TEXT_FIELD.finditer(line)}
    if "name" in fields:
        found["metadata"] = fields
    return found


def _blank_oversized(text: str) -> tuple[str, list[DocumentProblem]]:
    """`text` with each document over `MAX_DOCUMENT_BYTES` blanked, and a problem for each.

    Documents are split at `---` lines, as YAML itself splits them (a line
    starting `---` ends any scalar).  Blanking keeps the newlines, so every
    later line number is unchanged.
    """
    limit = limits.MAX_DOCUMENT_BYTES
    if len(text) * 4 <= limit:
        return text, []
    starts = [0, *(m.start() for m in _MARKER.finditer(text) if m.start() > 0)]
    parts: list[str] = []
    problems: list[DocumentProblem] = []
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        chunk = text[start:end]
        if len(chunk) * 4 <= limit or len(chunk.encode("utf-8", "surrogatepass")) <= limit:
            parts.append(chunk)
            continue
        line = text.count("\n", 0, start) + 1
        manifest = _text_sketch(chunk[: 64 * 1024])
        size = len(chunk.encode("utf-8", "surrogatepass"))
        problems.append(
            DocumentProblem(
                line, manifest, None,
                f"document is {size:,} bytes, over the limit of {limit:,} for one object "
                "(Kubernetes' own); not read",
            )
        )  # fmt: skip
        marker = "---" if chunk.startswith("---") else ""
        parts.append(marker + "\n" * chunk.count("\n"))
    return "".join(parts), problems


def read_documents(
    text: str, loader_class: type[Any] | None = None
) -> list[Document | DocumentProblem]:
    """Every document in `text`, in order: its value, or why it was refused.

    Empty documents are skipped (as kubectl does).  Raises `yaml.YAMLError`
    when the text is not YAML at all; a problem within one document is a
    `DocumentProblem` and the other documents are still read.  At most
    `MAX_DOCUMENTS_PER_FILE` documents are read; a problem says so if
    there were more.  `loader_class` is for tests (`PurePythonLoader`, to
    check that both parsers read alike).
    """
    text, problems = _blank_oversized(text)
    found: list[Document | DocumentProblem] = list(problems)
    loader_class = loader_class or ManifestLoader
    loader = loader_class(text)
    native = NATIVE_COMPOSE and loader_class is ManifestLoader
    count = 0
    try:
        for node in _nodes(loader, native):
            count += 1
            if count > limits.MAX_DOCUMENTS_PER_FILE:
                found.append(
                    DocumentProblem(
                        node.start_mark.line + 1, {}, None,
                        f"more than {limits.MAX_DOCUMENTS_PER_FILE:,} documents in one file; "
                        "this one and those after it are not read",
                    )
                )  # fmt: skip
                break
            if isinstance(node, ScalarNode) and node.tag == NULL and not node.value:
                continue  # an empty document: nothing but comments, or nothing at all
            value = construct_checked(node)
            if isinstance(value, DocumentFault):
                line = value.node.start_mark.line + 1
                message = value.message
                if isinstance(node, ScalarNode):  # not even an object: say that first
                    message = f"{NOT_A_MANIFEST}, got a scalar: {message}"
                found.append(DocumentProblem(line, sketch(node), value.field, message))
            else:
                found.append(Document(node, value))
    finally:
        loader.dispose()
    found.sort(key=lambda d: d.node.start_mark.line + 1 if isinstance(d, Document) else d.line)
    return found
