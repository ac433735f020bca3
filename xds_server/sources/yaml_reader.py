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

Each document's node tree is built into values by `yaml_tree`, which
checks every bound as it goes (depth, alias expansion, integer digits,
duplicate and non-scalar keys, tags) and names the field that breaks one.
The size of each document is checked on the text before it is parsed at
all: an oversized document is blanked (its lines kept, so later line
numbers hold) and reported, and at most `MAX_DOCUMENTS_PER_FILE` documents
are read.  A problem in one document leaves the file's other documents
readable; only text that is not YAML at all fails the whole file (as a
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
from xds_server.sources.yaml_tree import (
    BOOL,
    BOOL_PATTERN,
    FLOAT,
    FLOAT_PATTERN,
    INT,
    INT_PATTERN,
    MAP,
    MERGE,
    MERGE_PATTERN,
    NULL,
    NULL_PATTERN,
    SEQ,
    STR,
    DocumentFault,
    construct_checked,
    float_value,
    int_value,
    shown,
    sketch,
    too_deep,
)

__all__ = [
    "NATIVE_COMPOSE",
    "NOT_A_MANIFEST",
    "Document",
    "DocumentProblem",
    "ManifestLoader",
    "PurePythonLoader",
    "read_documents",
]

_IMPLICIT: dict[str, tuple[tuple[str, re.Pattern[str]], ...]] = {}
for _tag, _pattern, _first in (
    (BOOL, BOOL_PATTERN, "yYnNtTfFoO"),
    (INT, INT_PATTERN, "-+0123456789"),
    (FLOAT, FLOAT_PATTERN, "-+0123456789."),
    (NULL, NULL_PATTERN, "~nN"),
    (MERGE, MERGE_PATTERN, "<"),
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
                    None, None, f"found undefined alias {shown(str(event.anchor))}", start
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
                    f"second occurrence of {shown(str(event.anchor))}", start,
                )  # fmt: skip
            tag = event.tag
            if isinstance(event, ScalarEvent):
                if tag is None or tag == "!":
                    tag = loader.resolve(ScalarNode, event.value, event.implicit)
                node = ScalarNode(tag, event.value, start, end, event.style)
            else:
                assert isinstance(event, CollectionStartEvent)
                if len(stack) >= limits.MAX_YAML_DEPTH:
                    raise ComposerError(None, None, too_deep(), start)
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


# -- documents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document's value, with its node tree for locating fields by line."""

    node: Node
    value: Any
    index: int = 0
    """Its position in the YAML stream, from 0, empty documents counted: where provenance
    (`Origin.document`) says an object was read."""


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
    later line number is unchanged, and leaves an empty document (a leading
    one gets a `---` of its own), so every later document keeps its index.
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
        parts.append("---" + "\n" * chunk.count("\n"))
    return "".join(parts), problems


def read_documents(
    text: str, loader_class: type[Any] | None = None
) -> list[Document | DocumentProblem]:
    """Every document in `text`, in order: its value, or why it was refused.

    Empty documents are skipped (as kubectl does).  Raises `yaml.YAMLError`
    when the text is not YAML at all; a problem within one document is a
    `DocumentProblem` and the other documents are still read.  At most
    `MAX_DOCUMENTS_PER_FILE` documents are read; a problem says so if
    there were more.  Each `Document` knows its index in the stream.
    `loader_class` is for tests (`PurePythonLoader`, to check that both
    parsers read alike).
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
                found.append(Document(node, value, count - 1))
    finally:
        loader.dispose()
    found.sort(key=lambda d: d.node.start_mark.line + 1 if isinstance(d, Document) else d.line)
    return found
