"""The file source's state as values, and the pure functions that move it forward.

A directory of manifests is a set of `FileState`s, one per file, each holding
the objects that file contributes and the errors found in it.  `parse_file`
turns one file's bytes into its next `FileState`; `DirectoryState.update`
folds changed files in and returns the `ChangeSet` that takes the mesh from
the old directory contents to the new.  No I/O happens here, so every error
rule is a table-driven test away:

- a file that is not valid YAML (or not UTF-8) keeps all its previous
  objects in force;
- an invalid object keeps its previous good version, and the file's other
  objects still apply; so does a document refused before it is built (too
  big, too deep, an alias bomb, a duplicate key: see `yaml_reader`), and a
  near miss of a mesh kind (`kind: Services`), reported as a warning;
- a conversion that fails unexpectedly costs that object only;
- documents that are null, or not objects at all, are reported (a null one
  as a warning); kinds the mesh does not read are ignored quietly;
- an object defined in two files is taken from the file that defined it
  first; the other definition is an error naming both files, and takes over
  only when the first goes away.  A rename, or an object moved between files
  in one burst of writes, is therefore an update, never a delete and re-add.

Every object carries its `Origin`: the file (as errors show its path: the
watched directory joined with the path under it) and the index of the YAML
document it was read from.  An origin is where the value in force was read,
so an invalid new version leaves the last good one with its old origin.  An
object that moves (to another document, or file) with its value unchanged is
still in the ChangeSet, so the mesh holds its new origin.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xds_server.model import ChangeSet, ObjectKey
from xds_server.model.changes import MeshObject
from xds_server.provenance import Origin
from xds_server.sources import limits
from xds_server.sources.convert import ManifestError, convert, describe
from xds_server.sources.object_reader import show
from xds_server.sources.schema import Severity
from xds_server.sources.yaml_reader import (
    NOT_A_MANIFEST,
    Document,
    DocumentProblem,
    read_documents,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceError:
    """One problem in the source's input, located as precisely as the input allows.

    Its parts are cut to bounded lengths when it is made, and `str()` is at
    most `limits.MAX_ERROR_CHARS`, whatever the input.  A "warning" (a
    manifest the mesh does not read but probably should) says so in `str()`.
    """

    path: Path
    object_ref: str | None
    field: str | None
    message: str
    line: int | None = None
    severity: Severity = "error"

    def __post_init__(self) -> None:
        if self.object_ref:
            object.__setattr__(
                self, "object_ref", limits.clip(self.object_ref, 2 * limits.MAX_SHOWN_VALUE_CHARS)
            )
        if self.field:
            object.__setattr__(self, "field", limits.clip(self.field, limits.MAX_FIELD_CHARS))
        object.__setattr__(self, "message", limits.clip(self.message))

    def __str__(self) -> str:
        shown = shown_path(self.path)
        where = f"{shown}:{self.line}" if self.line else shown
        severity = "warning" if self.severity == "warning" else None
        parts = (where, severity, self.object_ref, self.field, self.message)
        return limits.clip(": ".join(part for part in parts if part))


def shown_path(path: Path) -> str:
    """`path` as errors and origins show it: undecodable bytes as `\\x` escapes (valid text)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class FileState:
    """What one file currently contributes: its last good objects, and its errors."""

    path: Path
    digest: str = ""
    objects: Mapping[ObjectKey, MeshObject] = field(default_factory=dict)
    lines: Mapping[ObjectKey, int] = field(default_factory=dict)
    errors: tuple[SourceError, ...] = ()


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FIELD_STEP = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def _line_of(node: yaml.Node, field: str | None) -> int:
    """The 1-based line of `field` (e.g. `spec.ports[1].port`) under a document node.

    Follows the path as far as the YAML goes and reports the deepest node
    found, so a missing field points at its parent.
    """
    line = node.start_mark.line
    for match in _FIELD_STEP.finditer(field or ""):
        step = match.group(1) if match.group(1) is not None else match.group(2)
        if isinstance(node, yaml.SequenceNode) and step.isdigit() and int(step) < len(node.value):
            node = node.value[int(step)]
            line = node.start_mark.line
        elif isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == step]
            if not found:
                break
            key_node, node = found[-1]
            line = key_node.start_mark.line
        else:
            break
    return line + 1


def _yaml_error(path: Path, error: yaml.YAMLError) -> SourceError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}: {problem}" if context else problem
    return SourceError(path, None, None, f"invalid YAML: {detail}", mark.line + 1 if mark else None)


def _not_utf8(path: Path, data: bytes, error: UnicodeDecodeError) -> SourceError:
    line = data.count(b"\n", 0, error.start) + 1
    where = f"line {line}, byte {error.start:,}"
    return SourceError(path, None, None, f"not UTF-8 text: {error.reason} ({where})")


def _manifests(
    path: Path, document: Document, errors: list[SourceError]
) -> Iterator[tuple[yaml.Node, Mapping[str, Any]]]:
    """The objects one document holds (a `kind: List` holds its items); problems to `errors`."""
    node, value = document.node, document.value
    line = node.start_mark.line + 1
    if value is None:
        errors.append(SourceError(path, None, None, "document is null: nothing to read", line,
                                  "warning"))  # fmt: skip
        return
    if not isinstance(value, Mapping):
        hint = (
            "; separate objects with '---', or use kind: List"
            if isinstance(value, list) and value and isinstance(value[0], Mapping)
            else ""
        )
        errors.append(SourceError(path, None, None, f"{NOT_A_MANIFEST}, got {show(value)}{hint}",
                                  line))  # fmt: skip
        return
    if value.get("kind") != "List":
        yield node, value
        return
    items = value.get("items")
    items_node = next(
        (v for k, v in getattr(node, "value", ()) if getattr(k, "value", None) == "items"), None
    )
    if not isinstance(items, list) or not isinstance(items_node, yaml.SequenceNode):
        got = "nothing" if items is None else show(items)
        errors.append(SourceError(path, "List", "items", f"must be a list of objects, got {got}",
                                  _line_of(node, "items")))  # fmt: skip
        return
    for i, (item_node, item) in enumerate(zip(items_node.value, items, strict=True)):
        if isinstance(item, Mapping):
            yield item_node, item
        else:
            errors.append(SourceError(path, "List", f"items[{i}]",
                                      f"{NOT_A_MANIFEST}, got {show(item)}",
                                      item_node.start_mark.line + 1))  # fmt: skip


class _Parse:
    """One file's parse in progress: the objects and errors found so far."""

    def __init__(self, path: Path, previous: FileState | None) -> None:
        self.path = path
        self.shown_path = shown_path(path)
        self.kept: Mapping[ObjectKey, MeshObject] = previous.objects if previous else {}
        self.kept_lines: Mapping[ObjectKey, int] = previous.lines if previous else {}
        self.objects: dict[ObjectKey, MeshObject] = {}
        self.lines: dict[ObjectKey, int] = {}
        self.errors: list[SourceError] = []
        self.count = 0

    def keep(self, key: ObjectKey | None, line: int) -> None:
        """An invalid version of `key`: its previous good version stays in force."""
        if key is not None and key in self.kept and key not in self.objects:
            self.objects[key] = self.kept[key]
            self.lines[key] = self.kept_lines.get(key, line)

    def problem(self, problem: DocumentProblem) -> None:
        named = problem.manifest or problem.field  # a field is in some object, named or not
        ref, key = describe(problem.manifest) if named else (None, None)
        self.errors.append(SourceError(self.path, ref, problem.field, problem.message,
                                       problem.line))  # fmt: skip
        self.keep(key, problem.line)

    def manifest(self, node: yaml.Node, manifest: Mapping[str, Any], document: int) -> None:
        line = node.start_mark.line + 1
        try:
            obj = convert(manifest, origin=Origin(file=self.shown_path, document=document))
        except ManifestError as error:
            self.errors.append(
                SourceError(self.path, error.object_ref, error.field, error.message,
                            _line_of(node, error.field), error.severity)
            )  # fmt: skip
            self.keep(error.key, line)
            return
        except Exception as error:  # a bug in conversion costs this object only
            logger.exception("%s:%d: converting a manifest failed", self.path, line)
            ref, key = describe(manifest)
            self.errors.append(SourceError(self.path, ref, None,
                                           f"could not be converted: {error!r}", line))  # fmt: skip
            self.keep(key, line)
            return
        if obj is None:
            return
        key = ObjectKey.of(obj)
        if key in self.objects:
            self.errors.append(
                SourceError(
                    self.path, str(key), None, f"defined again in this file, first at line "
                    f"{self.lines[key]}; the first definition is used", line,
                )
            )  # fmt: skip
            return
        self.objects[key] = obj
        self.lines[key] = line


def parse_file(path: Path, data: bytes, previous: FileState | None = None) -> FileState:
    """The next state of the file at `path`, given its new bytes and its previous state.

    Never raises for any input: every problem is a SourceError naming the
    file and, where the YAML is readable, the object and field.
    """
    kept = previous or FileState(path)
    digest = digest_of(data)
    try:
        documents = read_documents(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        return FileState(path, digest, kept.objects, kept.lines, (_not_utf8(path, data, error),))
    except yaml.YAMLError as error:
        return FileState(path, digest, kept.objects, kept.lines, (_yaml_error(path, error),))
    parse = _Parse(path, previous)
    for document in documents:
        if isinstance(document, DocumentProblem):
            parse.problem(document)
            continue
        for node, manifest in _manifests(path, document, parse.errors):
            parse.count += 1
            if parse.count > limits.MAX_DOCUMENTS_PER_FILE:
                parse.errors.append(SourceError(
                    path, None, None, f"more than {limits.MAX_DOCUMENTS_PER_FILE:,} objects in "
                    "one file; this one and those after it are not read",
                    node.start_mark.line + 1,
                ))  # fmt: skip
                break
            parse.manifest(node, manifest, document.index)
        if parse.count > limits.MAX_DOCUMENTS_PER_FILE:
            break
    return FileState(path, digest, parse.objects, parse.lines, tuple(parse.errors))


def missing_directory_error(directory: Path, detail: str) -> SourceError:
    return SourceError(
        directory, None, None, f"{detail}; objects loaded from it stay in force until it returns"
    )


@dataclass(frozen=True)
class DirectoryState:
    """Every file's state, and for each object the files defining it in claim order.

    The first file in an object's claim list is the one whose definition is in
    force; later ones are duplicates and reported as errors.
    """

    files: Mapping[Path, FileState] = field(default_factory=dict)
    claims: Mapping[ObjectKey, tuple[Path, ...]] = field(default_factory=dict)

    def objects(self) -> dict[ObjectKey, MeshObject]:
        """The objects in force: each from the first file that claims it."""
        return {key: self.files[paths[0]].objects[key] for key, paths in self.claims.items()}

    def errors(self) -> list[SourceError]:
        found = [error for state in self.files.values() for error in state.errors]
        found.extend(self._duplicates())
        return sorted(found, key=lambda e: (e.path, e.line or 0, str(e)))

    def _duplicates(self) -> Iterator[SourceError]:
        for key, paths in self.claims.items():
            for path in paths[1:]:
                yield SourceError(
                    path, str(key), None,
                    f"also defined in {paths[0]}, whose definition stays in force",
                    self.files[path].lines.get(key),
                )  # fmt: skip

    def update(self, changed: Mapping[Path, FileState | None]) -> tuple[DirectoryState, ChangeSet]:
        """Fold in changed files (None: the file is gone); return the new state and its diff."""
        files = dict(self.files)
        for path, state in changed.items():
            if state is None:
                files.pop(path, None)
            else:
                files[path] = state
        claims: dict[ObjectKey, tuple[Path, ...]] = {}
        for key, paths in self.claims.items():
            still = tuple(p for p in paths if p in files and key in files[p].objects)
            if still:
                claims[key] = still
        for path in sorted(changed):
            state = files.get(path)
            for key in state.objects if state else ():
                if path not in claims.get(key, ()):
                    claims[key] = (*claims.get(key, ()), path)
        new = DirectoryState(files, claims)

        before, after = self.objects(), new.objects()
        changes = ChangeSet()
        for key in before.keys() - after.keys():
            changes.delete(key)
        for key, obj in after.items():
            old = before.get(key)
            if old != obj or old.origin != obj.origin:  # a move alone is news: provenance
                changes.upsert(obj)
        return new, changes
