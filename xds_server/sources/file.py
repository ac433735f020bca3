"""The file source: a directory of Kubernetes manifests as the mesh's configuration.

This is the embedded default: no cluster needed, `kubectl`-style YAML in a
directory (recursively; `*.yaml` and `*.yml`, multi-document).  It owns the
I/O only: listing and reading files, watching the directory with
`watchfiles`, and reporting errors.  What the files mean and what changed is
decided by the pure functions in `file_state`.

Every filesystem event triggers a rescan of the whole directory that rereads
every file but reparses only files whose bytes changed.  That keeps the
watcher simple and correct for every way a directory changes: editors that
save by rename, files moved between subdirectories, and a Kubernetes
ConfigMap volume, whose files are symlinks swapped all at once through a
hidden `..data` directory (hidden files and directories are never read, so
its timestamped copies do not count twice).  The directory's own identity is
checked on every wake-up: if it is deleted or replaced, the watcher restarts
on the new one; while it is missing, the objects last loaded stay in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

import watchfiles

from xds_server.model import ChangeSet
from xds_server.sources.file_state import (
    DirectoryState,
    FileState,
    SourceError,
    digest_of,
    missing_directory_error,
    parse_file,
)

logger = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")
CHECK_INTERVAL_MS = 250
"""How often a quiet watcher wakes to check the directory is still the same one."""
MISSING_POLL_S = 0.2
"""How often to look for a missing directory."""
RETRY_S = 1.0
MAX_RETRY_S = 30.0
"""Pause before restarting a watcher that failed, doubling while it keeps failing."""
POLL_DELAY_MS = 200
"""Polling period once native file events have failed."""


def list_manifest_files(directory: Path) -> list[Path]:
    """Every manifest file under `directory`, sorted; hidden files and directories skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root, name)
            for name in files
            if name.endswith(SUFFIXES) and not name.startswith(".")
        )
    return sorted(found)


def _parse_isolated(path: Path, data: bytes, previous: FileState | None) -> FileState:
    """Parse one file such that no input, however odd, stops the other files loading."""
    try:
        return parse_file(path, data, previous)
    except Exception as error:  # includes RecursionError from deep nesting
        logger.exception("%s: unexpected failure while parsing", path)
        kept = previous or FileState(path)
        problem = SourceError(path, None, None, f"could not be parsed: {error!r}")
        return FileState(path, digest_of(data), kept.objects, kept.lines, (problem,))


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = directory.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


class FileSource:
    """Watches a directory of manifests and emits what changed as ChangeSets."""

    def __init__(
        self, directory: Path, *, debounce_ms: int = 50, force_polling: bool = False
    ) -> None:
        """`force_polling` is for filesystems without change events (NFS, some bind mounts)."""
        self._directory = Path(directory)
        self._debounce_ms = debounce_ms
        self._state = DirectoryState()
        self._directory_error: SourceError | None = None
        self._reported: set[SourceError] = set()
        self._polling = force_polling
        self._failures = 0

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def errors(self) -> list[SourceError]:
        """The problems in the directory right now; each goes away when it is fixed."""
        found = self._state.errors()
        return [self._directory_error, *found] if self._directory_error else found

    def load(self) -> ChangeSet:
        """Rescan the directory; return what changed since the last scan (at first: all).

        Files that vanish take their objects with them; files whose bytes are
        unchanged are not parsed again.  If the directory itself is missing,
        nothing changes and the error says so.
        """
        if not self._directory.is_dir():
            detail = "not a directory" if self._directory.exists() else "directory not found"
            self._directory_error = missing_directory_error(self._directory, detail)
            self._report()
            return ChangeSet()
        self._directory_error = None
        changed: dict[Path, FileState | None] = {}
        present = list_manifest_files(self._directory)
        for path in present:
            previous = self._state.files.get(path)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed while we listed; its deletion is handled below
            except OSError as error:
                problem = SourceError(path, None, None, f"cannot read: {error.strerror}")
                kept = previous or FileState(path)
                changed[path] = FileState(path, "", kept.objects, kept.lines, (problem,))
                continue
            if previous is None or previous.digest != digest_of(data):
                changed[path] = _parse_isolated(path, data, previous)
        for path in self._state.files.keys() - set(present):
            changed[path] = None
        self._state, changes = self._state.update(changed)
        self._report()
        if changes:
            logger.info(
                "%s: %d objects changed, %d removed",
                self._directory, len(changes.upserts), len(changes.deletes),
            )  # fmt: skip
        return changes

    def _report(self) -> None:
        """Log each new error once, and each fixed one as resolved."""
        current = set(self.errors)
        for error in sorted(current - self._reported, key=str):
            logger.error("%s", error)
        for error in sorted(self._reported - current, key=str):
            logger.info("resolved: %s", error)
        self._reported = current

    async def _rescan(self, emit: Callable[[ChangeSet], None]) -> None:
        try:
            changes = await asyncio.to_thread(self.load)
        except Exception:  # a bug, not bad input (load reports that); the next change retries
            logger.exception("%s: rescan failed", self._directory)
            return
        if changes:
            emit(changes)  # outside the try: a failing consumer must not go unnoticed

    async def run(
        self, emit: Callable[[ChangeSet], None], ready: asyncio.Event | None = None
    ) -> None:
        """Load, emit the initial state, set `ready`, then emit every change until cancelled."""
        emit(await asyncio.to_thread(self.load))
        if ready is not None:
            ready.set()
        while True:
            identity = _identity(self._directory)
            if identity is None:
                await self._wait_for_directory()
            else:
                await self._watch(emit, identity)
            await self._rescan(emit)

    async def _wait_for_directory(self) -> None:
        while _identity(self._directory) is None:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(MISSING_POLL_S)
        logger.info("%s: directory is back", self._directory)

    async def _watch(self, emit: Callable[[ChangeSet], None], identity: tuple[int, int]) -> None:
        """Rescan on every wake-up until the directory is gone or replaced, or the watcher fails."""
        wake_ups = self._wake_ups(identity)
        async with contextlib.aclosing(wake_ups):
            while True:
                try:
                    await anext(wake_ups)
                except StopAsyncIteration:
                    return
                except Exception:
                    if _identity(self._directory) != identity:
                        return  # the directory went away under the watcher
                    await self._watcher_failed()
                    return
                self._failures = 0
                await self._rescan(emit)

    async def _watcher_failed(self) -> None:
        """Native file events failed (e.g. the inotify watch limit): poll from now on."""
        self._failures += 1
        self._polling = True
        delay = min(RETRY_S * 2 ** (self._failures - 1), MAX_RETRY_S)
        logger.exception(
            "%s: watcher failed; polling for changes instead, in %.0fs", self._directory, delay
        )
        await asyncio.sleep(delay)

    async def _wake_ups(self, identity: tuple[int, int]) -> AsyncGenerator[None, None]:
        """Yields when the directory should be rescanned; ends when it is gone or replaced.

        The first wake-up (at most CHECK_INTERVAL_MS after the watch starts)
        always yields, so writes made before the watch was in place are not missed.
        """
        watcher = watchfiles.awatch(
            self._directory,
            watch_filter=None,
            step=self._debounce_ms,  # quiet period that ends a burst
            debounce=self._debounce_ms * 10,  # longest a burst is held back
            rust_timeout=CHECK_INTERVAL_MS,
            yield_on_timeout=True,
            force_polling=True if self._polling else None,
            poll_delay_ms=POLL_DELAY_MS,
        )
        started = False
        async with contextlib.aclosing(watcher) as events:
            async for batch in events:
                if _identity(self._directory) != identity:
                    logger.warning("%s: directory removed or replaced", self._directory)
                    return
                if batch or not started or self._polling:  # polling: rescan on every tick
                    started = True
                    yield
