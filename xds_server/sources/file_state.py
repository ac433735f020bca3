"""The file source's state as values, and the pure functions that move it forward.

A directory of manifests is a set of `FileState`s, one per file, each holding
the objects that file contributes and the errors found in it.  `parse_file`
turns one file's bytes into its next `FileState`; `DirectoryState.update`
folds changed files in and returns the `ChangeSet` that takes the mesh from
the old directory contents to the new.  No I/O happens here, so every error
rule is a table-driven test away:

- a file that is not valid YAML keeps all its previous objects in force;
- an invalid object keeps its previous good version, and the file's other
  objects still apply;
- an object defined in two files is taken from the file that defined it
  first; the other definition is an error naming both files, and takes over
  only when the first goes away.  A rename, or an object moved between files
  in one burst of writes, is therefore an update, never a delete and re-add.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xds_server.model import ChangeSet, ObjectKey
from xds_server.model.changes import MeshObject
from xds_server.sources.convert import ManifestError, convert, describe


@dataclass(frozen=True, slots=True)
class SourceError:
    """One problem in the source's input, located as precisely as the input allows."""

    path: Path
    object_ref: str | None
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return ": ".join(
            part for part in (where, self.object_ref, self.field, self.message) if part
        )


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


def _step(prefix: str, name: str) -> str:
    """A field path step in the API server's notation: `.name`, or `[key]` for map keys."""
    if _PLAIN_NAME.fullmatch(name):
        return f"{prefix}.{name}" if prefix else name
    return f"{prefix}[{name}]"


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _duplicate_field(node: yaml.Node) -> str | None:
    """The path of the first field given twice in one mapping (YAML would keep the last)."""
    pending: list[tuple[yaml.Node, str]] = [(node, "")]
    visited: set[int] = set()  # aliases can share, and even nest, nodes
    while pending:
        node, path = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value in node.value:
                name = str(getattr(key_node, "value", ""))
                if name in seen:
                    return _step(path, name)
                seen.add(name)
                children.append((value, _step(path, name)))
        elif isinstance(node, yaml.SequenceNode):
            children.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
        pending.extend(reversed(children))  # depth first, in document order
    return None


def _documents(text: str) -> list[tuple[yaml.Node, Any]]:
    """Every document as (node, value): `yaml.safe_load_all`, keeping positions.

    A `kind: List` (what `kubectl get -o yaml` writes) is unpacked into its items.
    """
    loader = yaml.SafeLoader(text)
    documents: list[tuple[yaml.Node, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            value = loader.construct_document(node)
            if (
                isinstance(value, Mapping)
                and value.get("kind") == "List"
                and isinstance(value.get("items"), list)
                and isinstance(node, yaml.MappingNode)
            ):
                items = [v for k, v in node.value if getattr(k, "value", None) == "items"]
                nodes = items[-1].value if items else []
                documents.extend(zip(nodes, value["items"], strict=True))
            elif value is not None and node is not None:
                documents.append((node, value))
    finally:
        loader.dispose()
    return documents


def _yaml_error(path: Path, error: yaml.YAMLError) -> SourceError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    detail = f"{context}: {problem}" if context else problem
    return SourceError(path, None, None, f"invalid YAML: {detail}", mark.line + 1 if mark else None)


def _object_error(path: Path, node: yaml.Node, error: ManifestError) -> SourceError:
    line = _line_of(node, error.field)
    return SourceError(path, error.object_ref, error.field, error.message, line)


def parse_file(path: Path, data: bytes, previous: FileState | None = None) -> FileState:
    """The next state of the file at `path`, given its new bytes and its previous state."""
    kept: Mapping[ObjectKey, MeshObject] = previous.objects if previous else {}
    kept_lines: Mapping[ObjectKey, int] = previous.lines if previous else {}
    digest = digest_of(data)
    try:
        documents = _documents(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        problem = SourceError(path, None, None, f"not UTF-8 text: {error.reason}")
        return FileState(path, digest, kept, kept_lines, (problem,))
    except yaml.YAMLError as error:
        return FileState(path, digest, kept, kept_lines, (_yaml_error(path, error),))
    except RecursionError:
        problem = SourceError(path, None, None, "invalid YAML: nested too deeply")
        return FileState(path, digest, kept, kept_lines, (problem,))

    objects: dict[ObjectKey, MeshObject] = {}
    lines: dict[ObjectKey, int] = {}
    errors: list[SourceError] = []
    for node, manifest in documents:
        obj, invalid = None, None
        try:
            obj = convert(manifest)
        except ManifestError as caught:
            invalid = caught
        duplicate = _duplicate_field(node) if obj or invalid else None
        if duplicate:  # YAML keeps the last; an author meant one or the other
            ref, ref_key = describe(manifest)
            invalid = ManifestError(ref, duplicate, "field given more than once", ref_key)
        if invalid is not None:
            errors.append(_object_error(path, node, invalid))
            if invalid.key is not None and invalid.key in kept and invalid.key not in objects:
                objects[invalid.key] = kept[invalid.key]
                lines[invalid.key] = kept_lines.get(invalid.key, _line_of(node, None))
            continue
        if obj is None:
            continue
        key = ObjectKey.of(obj)
        line = _line_of(node, None)
        if key in objects:
            errors.append(
                SourceError(
                    path, str(key), None, f"defined again in this file, first at line "
                    f"{lines[key]}; the first definition is used", line,
                )
            )  # fmt: skip
            continue
        objects[key] = obj
        lines[key] = line
    return FileState(path, digest, objects, lines, tuple(errors))


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
            if before.get(key) != obj:
                changes.upsert(obj)
        return new, changes
