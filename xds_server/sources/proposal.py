"""What a proposed set of manifest files would change, before anything is written.

`xds-server diff` sends files; this module turns them into the ChangeSet the
source would emit if they were applied, and the errors it would report about
them.  It reuses the source's own functions (`parse_isolated`, that is
`parse_file` with its failures contained, and `DirectoryState.update`), so a
dry run can never disagree with the real thing about what a file means.

- File mode (`propose_files`): each file is taken as written into the watched
  directory at its relative path.  A file of the same path is replaced: the
  objects its new bytes no longer hold disappear, an invalid object keeps its
  previous good version, an object another file already defines stays that
  file's (all as the source does).  Other files are untouched.  A name the
  source would never read (hidden, or not `*.yaml`/`*.yml`) is an error on
  that file, which then proposes nothing.
- Kubernetes mode (`propose_apply`): as `kubectl apply`, every proposed object
  is upserted and nothing is deleted; an object defined twice is taken from
  the first file (in path order), and the second is an error.

Pure and without I/O: the current `DirectoryState` is a frozen value, so this
runs in a worker thread while the source moves on.  A path that is absolute
or climbs out of the directory is not a proposal but a bad request
(`ValueError`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from xds_server.model import ChangeSet
from xds_server.sources.file_read import SUFFIXES, is_undecodable
from xds_server.sources.file_state import DirectoryState, FileState, SourceError
from xds_server.sources.parse_worker import parse_isolated

logger = logging.getLogger(__name__)

MAX_PATH_CHARS = 1024
NOT_READ = (
    "not read by the file source (only *.yaml and *.yml files, none hidden): proposes nothing"
)


@dataclass(frozen=True, slots=True)
class Proposal:
    """The ChangeSet a set of files would make, and the errors the source would report."""

    changes: ChangeSet
    errors: tuple[SourceError, ...]
    """Each names the file as proposed (its relative path), the line, object and field."""


def proposed_path(name: str) -> PurePosixPath:
    """`name` as a path relative to the watched directory; ValueError if it cannot be one."""
    if not name or "\x00" in name or len(name) > MAX_PATH_CHARS:
        raise ValueError(f"file name {name[:80]!r}: expected a relative path of 1 to "
                         f"{MAX_PATH_CHARS} characters")  # fmt: skip
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ValueError(f"file name {name!r}: must be relative to the watched directory")
    if ".." in path.parts:
        raise ValueError(f"file name {name!r}: must not leave the watched directory ('..')")
    if not path.parts:
        raise ValueError(f"file name {name!r}: names no file")
    return path


def proposed_paths(files: Mapping[str, bytes]) -> dict[PurePosixPath, bytes]:
    """The files by normalised relative path; ValueError for a bad or repeated name."""
    found: dict[PurePosixPath, bytes] = {}
    for name, data in files.items():
        path = proposed_path(name)
        if path in found:
            raise ValueError(f"file name {name!r}: the same file as another name given")
        found[path] = data
    return found


def is_read_by_source(path: PurePosixPath) -> bool:
    """Whether the file source would read a file at `path` (see `file_read.list_directory`)."""
    return (
        path.name.endswith(SUFFIXES)
        and not any(part.startswith(".") for part in path.parts)
        and not any(is_undecodable(part) for part in path.parts)
    )


def propose_files(state: DirectoryState, directory: Path, files: Mapping[str, bytes]) -> Proposal:
    """What writing `files` into `directory` (whose source is in `state`) would change."""
    proposed = proposed_paths(files)
    shown: dict[Path, PurePosixPath] = {}
    changed: dict[Path, FileState | None] = {}
    unread: list[SourceError] = []
    for relative, data in sorted(proposed.items()):
        if not is_read_by_source(relative):
            unread.append(SourceError(Path(relative), None, None, NOT_READ))
            continue
        path = directory / relative
        shown[path] = relative
        changed[path] = parse_isolated(path, data, state.files.get(path))
    new, changes = state.update(changed)
    before = set(state.errors())
    errors = [
        _as_proposed(error, shown)
        for error in new.errors()
        if error.path in shown or error not in before
    ]
    return Proposal(changes, (*unread, *errors))


def propose_apply(files: Mapping[str, bytes]) -> Proposal:
    """What `kubectl apply -f` of `files` would change: an upsert of every object in them."""
    proposed = proposed_paths(files)
    changed: dict[Path, FileState | None] = {
        Path(relative): parse_isolated(Path(relative), data, None)
        for relative, data in sorted(proposed.items())
    }
    new, changes = DirectoryState().update(changed)
    return Proposal(changes, tuple(new.errors()))


def _as_proposed(error: SourceError, shown: Mapping[Path, PurePosixPath]) -> SourceError:
    """The error naming the proposed file as the caller named it (its relative path)."""
    relative = shown.get(error.path)
    return replace(error, path=Path(relative)) if relative is not None else error
