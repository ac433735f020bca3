"""The file source: a directory of Kubernetes manifests as the mesh's configuration.

This is the embedded default: no cluster needed, `kubectl`-style YAML in a
directory (recursively; `*.yaml` and `*.yml`, multi-document).  It owns the
scheduling of rescans and parses and the reporting of errors.  When to
rescan is `file_watch`'s; which files count and how their bytes are read
within bounds is `file_read`'s; what the bytes mean and what changed is
decided by the pure functions in `file_state`.

Every wake-up of the watcher triggers a rescan of the whole directory that
rereads every file but reparses only files whose bytes changed.  That keeps
the watcher simple and correct for every way a directory changes: editors
that save by rename, files moved between subdirectories, and a Kubernetes
ConfigMap volume, whose files are symlinks swapped all at once through a
hidden `..data` directory (hidden files and directories are never read, so
its timestamped copies do not count twice).  While the directory is
missing, the objects last loaded stay in force.

One large file must never hold back an edit to another.  A rescan parses
small files in a thread and emits their changes at once; a file larger than
`worker_parse_bytes` is queued for a worker process (`parse_worker`: a
thread would hold the GIL against the event loop for the seconds a
multi-megabyte file takes), and its changes are folded in and emitted when
its parse ends.  All state changes (rescans, finished parses) are serialised
by one lock, and a parse in flight is the file's only while the file still
holds the bytes it parses: a rescan that finds newer bytes (or no file)
cancels it, so a file always ends in the state of its latest bytes.  Objects
defined in two files belong to the file folded in first, as ever; at start-up
every file, large or small, is folded in at once, in path order.

Each ChangeSet's `observed_at` is when the watcher saw the change (see
`file_watch`), not when parsing ended: a large file's ChangeSet carries the
time its bytes (or the earlier bytes they superseded) were seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from xds_server.model import ChangeSet
from xds_server.sources import limits
from xds_server.sources.file_read import (
    ReadProblem,
    list_directory,
    list_manifest_files,
    read_manifest,
)
from xds_server.sources.file_state import (
    DirectoryState,
    FileState,
    SourceError,
    digest_of,
    missing_directory_error,
)
from xds_server.sources.file_watch import DirectoryWatcher, WatchMode
from xds_server.sources.metrics import SourceMetrics
from xds_server.sources.parse_worker import (
    ParseCancelled,
    ParserDied,
    ParserProcess,
    ParseTimeout,
    parse_isolated,
)

__all__ = ["FileSource", "WatchMode", "list_manifest_files"]

logger = logging.getLogger(__name__)

WORKER_PARSE_BYTES = 256 * 1024
"""Files larger than this are parsed in the worker process (about 0.3 s of parsing here)."""
PARSE_TIMEOUT_S = 120.0
"""A parse in the worker taking longer is abandoned (16 MiB, the largest file, takes ~30 s)."""

UNDECODABLE_NAME = (
    "the name is not valid UTF-8 (undecodable bytes shown as \\x escapes): not read; rename it"
)


@dataclass(eq=False)
class _Job:
    """A large file's bytes waiting for, or in, the worker process."""

    path: Path
    digest: str
    data: bytes
    previous: FileState | None
    observed_at: float = 0.0  # set when queued: when the watcher saw these (or older) bytes


@dataclass
class _Scan:
    """What one pass over the directory found."""

    changed: dict[Path, FileState | None] = field(default_factory=dict)
    large: list[_Job] = field(default_factory=list)
    """Changed files to parse in the worker."""
    superseded: set[Path] = field(default_factory=set)
    """Files whose parse in flight no longer matches their bytes (or who are gone)."""
    directory_error: SourceError | None = None


class FileSource:
    """Watches a directory of manifests and emits what changed as ChangeSets."""

    def __init__(
        self,
        directory: Path,
        *,
        debounce_ms: int = 50,
        force_polling: bool = False,
        max_file_bytes: int = limits.MAX_FILE_BYTES,
        worker_parse_bytes: int = WORKER_PARSE_BYTES,
        parse_timeout: float = PARSE_TIMEOUT_S,
        metrics: SourceMetrics | None = None,
    ) -> None:
        """`force_polling` is for filesystems without change events (NFS, some bind mounts)."""
        self._directory = Path(directory)
        self._max_file_bytes = max_file_bytes
        self._worker_parse_bytes = worker_parse_bytes
        self._parse_timeout = parse_timeout
        self._state = DirectoryState()
        self._directory_error: SourceError | None = None
        self._reported: set[SourceError] = set()
        self._watcher = DirectoryWatcher(
            self._directory, debounce_ms=debounce_ms, force_polling=force_polling
        )
        self._jobs: dict[Path, _Job] = {}
        """Large files queued for or in the worker, oldest first; at most one per file."""
        self._running: _Job | None = None
        self._parser: ParserProcess | None = None
        self._lock: asyncio.Lock | None = None  # made by run(), in its event loop
        self.metrics = metrics
        """Counts the changes emitted (`xds_source_events{source="file"}`)."""
        self._work: asyncio.Event | None = None

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def state(self) -> DirectoryState:
        """Every file's state as last folded in (a frozen value; dry runs start from it)."""
        return self._state

    @property
    def errors(self) -> list[SourceError]:
        """The problems in the directory right now; each goes away when it is fixed."""
        found = self._state.errors()
        return [self._directory_error, *found] if self._directory_error else found

    @property
    def parsing(self) -> frozenset[Path]:
        """Large files whose new bytes are queued for, or in, the worker process."""
        return frozenset(self._jobs)

    @property
    def parser_pid(self) -> int | None:
        """The worker process's id while it runs (it is started for the first large file)."""
        return self._parser.pid if self._parser else None

    @property
    def watch_mode(self) -> WatchMode:
        """`events` (native), `polling` (asked for), or `fallback-polling` while events fail."""
        return self._watcher.mode

    # -- scanning ------------------------------------------------------------------------------

    def load(self) -> ChangeSet:
        """Rescan the directory; return what changed since the last scan (at first: all).

        Synchronous, for callers without an event loop: every changed file is
        parsed here, large or small.  Files that vanish take their objects
        with them; files whose bytes are unchanged are not parsed again.  If
        the directory itself is missing, nothing changes and the error says so.
        """
        if self._jobs:
            raise RuntimeError("FileSource.load() called while run() is parsing files")
        observed_at = time.time()
        scan = self._scan(self._state, {}, inline=True)
        self._state, changes = self._state.update(scan.changed)
        changes.observed_at = observed_at
        self._directory_error = scan.directory_error
        self._report()
        self._log_changes(changes)
        return changes

    def _scan(self, state: DirectoryState, pending: Mapping[Path, str], *, inline: bool) -> _Scan:
        """List and read the directory against `state`; parse changed small files (or all).

        Runs in a thread; reads `state` and `pending` (the digest each queued
        parse is for) and changes nothing.
        """
        scan = _Scan()
        if not self._directory.is_dir():
            detail = "not a directory" if self._directory.exists() else "directory not found"
            scan.directory_error = missing_directory_error(self._directory, detail)
            return scan
        listing = list_directory(self._directory)
        present: set[Path] = set()
        for path in listing.files:
            if self._scan_file(path, state.files.get(path), pending.get(path), inline, scan):
                present.add(path)
        for path in listing.undecodable:
            present.add(path)
            error = SourceError(path, None, None, UNDECODABLE_NAME)
            previous = state.files.get(path)
            if previous is None or previous.errors != (error,):
                scan.changed[path] = FileState(path, "undecodable name", errors=(error,))
        for path in state.files.keys() - present:
            scan.changed[path] = None
        scan.superseded.update(pending.keys() - present)
        return scan

    def _scan_file(
        self, path: Path, previous: FileState | None, pending: str | None, inline: bool, scan: _Scan
    ) -> bool:
        """Read one file into `scan`; False if it is gone."""
        read = read_manifest(path, self._max_file_bytes)
        if read is None:
            return False
        kept = previous or FileState(path)
        if isinstance(read, ReadProblem):
            error = SourceError(path, None, None, read.message)
            if pending is not None:
                scan.superseded.add(path)
            state = FileState(path, read.marker, kept.objects, kept.lines, (error,))
            if previous != state:
                scan.changed[path] = state
            return True
        digest = digest_of(read)
        if pending is not None:
            if pending == digest and not inline:
                return True  # its parse is in flight
            scan.superseded.add(path)
        if previous is not None and previous.digest == digest:
            return True
        if len(read) > self._worker_parse_bytes and not inline:
            scan.large.append(_Job(path, digest, read, previous))
        else:
            scan.changed[path] = parse_isolated(path, read, previous)
        return True

    def _report(self) -> None:
        """Log each new error once, and each fixed one as resolved."""
        current = set(self.errors)
        for error in sorted(current - self._reported, key=str):
            level = logging.WARNING if error.severity == "warning" else logging.ERROR
            logger.log(level, "%s", error)
        for error in sorted(self._reported - current, key=str):
            logger.info("resolved: %s", error)
        self._reported = current

    def _log_changes(self, changes: ChangeSet) -> None:
        if changes:
            logger.info(
                "%s: %d objects changed, %d removed",
                self._directory, len(changes.upserts), len(changes.deletes),
            )  # fmt: skip

    # -- the event loop's side: rescans and large files ----------------------------------------

    async def run(
        self, emit: Callable[[ChangeSet], None], ready: asyncio.Event | None = None
    ) -> None:
        """Load, emit the initial state, set `ready`, then emit every change until cancelled.

        The initial state includes every file, large ones too.  The worker
        process (if one was started) is stopped when this returns or raises.
        """
        self._lock, self._work = asyncio.Lock(), asyncio.Event()
        self._jobs.clear()
        emit = self._counted(emit)
        try:
            changes = await self._initial_load()
            emit(changes)
            if ready is not None:
                ready.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._parse_large_files(emit), name="parse-large-files")
                await self._watcher.run(lambda seen_at: self._rescan(emit, seen_at))
        finally:
            self._jobs.clear()
            self._running = None
            if self._parser is not None:
                self._parser.close()

    def _counted(self, emit: Callable[[ChangeSet], None]) -> Callable[[ChangeSet], None]:
        def counted(changes: ChangeSet) -> None:
            if self.metrics is not None:
                self.metrics.emitted("file", changes)
            emit(changes)

        return counted

    async def _initial_load(self) -> ChangeSet:
        assert self._lock is not None
        observed_at = time.time()
        async with self._lock:
            state = self._state
            scan = await asyncio.to_thread(self._scan, state, {}, inline=False)
            for job in scan.large:
                scan.changed[job.path] = await self._parse_in_worker(job) or job.previous
            self._state, changes = await asyncio.to_thread(state.update, scan.changed)
            changes.observed_at = observed_at
            self._directory_error = scan.directory_error
            self._report()
        self._log_changes(changes)
        return changes

    async def _rescan(self, emit: Callable[[ChangeSet], None], observed_at: float) -> None:
        """Fold in every changed small file and emit; queue changed large files.

        A superseded parse's (earlier) `observed_at` passes to the file's newer state.
        """
        assert self._lock is not None
        try:
            async with self._lock:
                state = self._state
                pending = {path: job.digest for path, job in self._jobs.items()}
                scan = await asyncio.to_thread(self._scan, state, pending, inline=False)
                cancelled = {path: self._cancel_parse(path) for path in scan.superseded}
                earlier = {path: seen for path, seen in cancelled.items() if seen is not None}
                self._state, changes = await asyncio.to_thread(state.update, scan.changed)
                changes.observed_at = min(
                    [observed_at, *(earlier[p] for p in scan.changed & earlier.keys())]
                )
                self._directory_error = scan.directory_error
                for job in scan.large:
                    job.observed_at = min(observed_at, earlier.get(job.path, observed_at))
                    self._queue_parse(job)
                self._report()
        except Exception:  # a bug, not bad input (that is reported); the next change retries
            logger.exception("%s: rescan failed", self._directory)
            return
        self._log_changes(changes)
        if changes:
            emit(changes)  # outside the try: a failing consumer must not go unnoticed

    def _queue_parse(self, job: _Job) -> None:
        assert self._work is not None
        self._jobs[job.path] = job
        self._work.set()

    def _cancel_parse(self, path: Path) -> float | None:
        """Drop the file's queued parse (killing it if running); when its bytes were seen."""
        job = self._jobs.pop(path, None)
        if job is not None and job is self._running and self._parser is not None:
            self._parser.cancel()
        return job.observed_at if job is not None else None

    async def _parse_large_files(self, emit: Callable[[ChangeSet], None]) -> None:
        """Parse queued large files one at a time, folding each in when it is still current."""
        assert self._lock is not None and self._work is not None
        while True:
            job = next(iter(self._jobs.values()), None)
            if job is None:
                self._work.clear()
                await self._work.wait()
                continue
            self._running = job
            try:
                parsed = await self._parse_in_worker(job)
            finally:
                self._running = None
            if parsed is None:  # cancelled: newer bytes are queued, or the file is gone
                continue
            async with self._lock:
                if self._jobs.get(job.path) is not job:
                    continue  # superseded while its result waited for the lock
                del self._jobs[job.path]
                try:
                    self._state, changes = await asyncio.to_thread(
                        self._state.update, {job.path: parsed}
                    )
                    changes.observed_at = job.observed_at
                except Exception:  # a bug; the file is parsed again when it changes
                    logger.exception("%s: folding in a parsed file failed", job.path)
                    continue
                self._report()
            self._log_changes(changes)
            if changes:
                emit(changes)

    async def _parse_in_worker(self, job: _Job) -> FileState | None:
        """The file's next state, parsed in the worker; None if the parse was cancelled.

        A worker that dies or overruns `parse_timeout` is an error on the
        file, whose last good objects stay in force until it changes again.
        """
        if self._parser is None:
            self._parser = ParserProcess(self._parse_timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            state = await self._parser.parse(job.path, job.data, job.previous)
        except ParseCancelled:
            return None
        except ParserDied:
            message = ("the parser process died while parsing this file (killed, or out of "
                       "memory); it is parsed again when it changes")  # fmt: skip
        except ParseTimeout:
            message = (f"parsing took longer than {self._parse_timeout:g} s and was abandoned; "
                       "it is parsed again when it changes")  # fmt: skip
        else:
            logger.info(
                "%s: %s bytes parsed in the worker process in %.1f s",
                job.path, f"{len(job.data):,}", loop.time() - started,
            )  # fmt: skip
            return state
        kept = job.previous or FileState(job.path)
        error = SourceError(job.path, None, None, message)
        return FileState(job.path, job.digest, kept.objects, kept.lines, (error,))
