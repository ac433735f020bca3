"""What is on disk in a manifest directory: which files count, and their bytes, within bounds.

The file source's only contact with the filesystem's contents, kept apart
so every hostile case is a small test: a file name that is not UTF-8 (it
cannot be shown, logged or watched reliably, so it is reported and never
read), a FIFO or device named `*.yaml` (opening it could block the scan for
good), and a file too large to hold (rejected from `stat` alone; and since a
file can grow between `stat` and `read`, at most `limit + 1` bytes are ever
read).  Each problem becomes a `ReadProblem`, which the source turns into a
`SourceError` naming the file while the file's last good objects stay in force.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".yaml", ".yml")
MIB = 1024 * 1024


def is_undecodable(name: str) -> bool:
    """True for a name holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True)
class Listing:
    """The manifest files under a directory, sorted, and the names that could not be decoded."""

    files: list[Path] = field(default_factory=list)
    undecodable: list[Path] = field(default_factory=list)
    """Manifest files and (non-hidden) directories whose names are not UTF-8; not read."""


def list_directory(directory: Path) -> Listing:
    """Every `*.yaml`/`*.yml` under `directory`; hidden files and directories skipped."""
    files: list[Path] = []
    undecodable: list[Path] = []
    for root, dirs, names in os.walk(directory):
        visible = sorted(d for d in dirs if not d.startswith("."))
        undecodable.extend(Path(root, d) for d in visible if is_undecodable(d))
        dirs[:] = [d for d in visible if not is_undecodable(d)]
        for name in names:
            if name.endswith(SUFFIXES) and not name.startswith("."):
                (undecodable if is_undecodable(name) else files).append(Path(root, name))
    return Listing(sorted(files), sorted(undecodable))


def list_manifest_files(directory: Path) -> list[Path]:
    """Every readable-by-name manifest file under `directory`, sorted."""
    return list_directory(directory).files


@dataclass(frozen=True)
class ReadProblem:
    """Why a file's bytes were not taken; `marker` changes when the file does (for a digest)."""

    message: str
    marker: str


def _too_large(size: int, limit: int, *, grew: bool) -> str:
    how = f"more than {limit:,} bytes (it grew while being read)" if grew else f"{size:,} bytes"
    return (
        f"file is {how}, over the limit of {limit:,} bytes ({limit / MIB:g} MiB): not read; "
        "the objects it defined before stay in force"
    )


def read_manifest(path: Path, limit: int) -> bytes | ReadProblem | None:
    """The bytes of the file at `path`, or why not; None if the file is gone.

    `stat` comes first: a file over `limit`, or not a regular file, is never
    opened.  The open does not block (O_NONBLOCK, should a FIFO be swapped in
    after the `stat`), the opened file is checked again, and at most
    `limit + 1` bytes are read, so a file growing meanwhile is caught too.
    """
    try:
        info = os.stat(path)
        marker = f"stat:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"
        if not stat.S_ISREG(info.st_mode):
            return ReadProblem("not a regular file: not read", marker)
        if info.st_size > limit:
            return ReadProblem(_too_large(info.st_size, limit, grew=False), marker)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as opened:
            if not stat.S_ISREG(os.fstat(opened.fileno()).st_mode):
                return ReadProblem("not a regular file: not read", marker)
            data = opened.read(limit + 1)
    except FileNotFoundError:
        return None  # removed while we listed; its deletion is handled by the caller
    except OSError as error:
        return ReadProblem(f"cannot read: {error.strerror or error}", "")
    if len(data) > limit:
        return ReadProblem(_too_large(len(data), limit, grew=True), marker)
    return data
