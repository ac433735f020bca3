"""Parsing a manifest file in a worker process, so that a large file cannot stall the event loop.

A 5 MB manifest takes seconds to parse; in a thread it would hold the GIL
against the event loop (gRPC streams, the admin API) for all that time.
`ParserProcess` runs `parse_isolated` in one child process instead: a
`ProcessPoolExecutor` of one worker, started with `spawn` (the parent runs
gRPC and asyncio threads, which a plain `fork` would copy mid-flight), only
when a large file first needs it, and started again after it dies.

Everything that can go wrong in the child becomes an exception naming what
happened, for the caller to report on the file: `ParserDied` (killed, out of
memory), `ParseTimeout` (the parse ran past its bound; the child is killed,
as a `ProcessPoolExecutor` cannot abandon a running call), and
`ParseCancelled` (the caller killed the parse because its result was no
longer wanted).  The child ends itself if the control plane dies (even by
SIGKILL), so no worker is left behind.  The child's pid is learnt from a first call, so killing it
needs no private API; only a busy worker is killed (an idle one is asked to
exit), so a pid is never signalled after its process may have been reaped.

As always with `spawn`, the child imports the parent's main module: a program
embedding the file source must guard its start with `if __name__ == "__main__"`
(the `xds-server` entry point does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from xds_server.sources.file_state import FileState, SourceError, digest_of, parse_file

logger = logging.getLogger(__name__)


def parse_isolated(path: Path, data: bytes, previous: FileState | None) -> FileState:
    """Parse one file such that no input, however odd, stops the other files loading."""
    try:
        return parse_file(path, data, previous)
    except Exception as error:  # includes RecursionError from deep nesting, MemoryError
        logger.exception("%s: unexpected failure while parsing", path)
        kept = previous or FileState(path)
        problem = SourceError(path, None, None, f"could not be parsed: {error!r}")
        return FileState(path, digest_of(data), kept.objects, kept.lines, (problem,))


START_TIMEOUT_S = 60.0
"""A worker that has not started (imported the parser) in this time is given up on."""


ORPHAN_CHECK_S = 0.5
"""How often the worker checks that its parent is still alive."""


def _worker_pid() -> int:
    return os.getpid()


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end the worker when the control plane ends, however it ends.

    A `ProcessPoolExecutor` worker outlives a parent killed with SIGKILL (it
    waits on its call queue for good); this watchdog thread ends it instead.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class ParserDied(Exception):
    """The worker process ended while parsing (killed, or out of memory)."""


class ParseTimeout(Exception):
    """The parse ran longer than its bound; the worker was killed."""


class ParseCancelled(Exception):
    """`cancel()` killed the worker while it parsed: the result is not wanted."""


class ParserProcess:
    """One worker process for parsing files, one file at a time; restarted when it dies."""

    def __init__(self, time_limit: float) -> None:
        """`time_limit`: seconds a parse may take once the worker runs."""
        self._time_limit = time_limit
        self._pool: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._busy = False
        self._cancelled = False

    @property
    def pid(self) -> int | None:
        """The worker's process id, once started (for diagnostics and fault tests)."""
        return self._pid

    async def parse(self, path: Path, data: bytes, previous: FileState | None) -> FileState:
        """`parse_isolated` in the worker, within the time limit (start-up not counted)."""
        if self._busy:
            raise RuntimeError("ParserProcess parses one file at a time")
        self._busy, self._cancelled = True, False
        try:
            future = await self._submit(path, data, previous)
            async with asyncio.timeout(self._time_limit):
                return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            if self._pool is not None:
                self._discard(self._pool)  # its worker is dead already: no kill
            if self._cancelled:
                raise ParseCancelled from None
            raise ParserDied("the parser process died") from None
        except TimeoutError:
            self._kill()
            raise ParseTimeout(f"parsing took longer than {self._time_limit:g} s") from None
        except asyncio.CancelledError:
            self._kill()  # nobody waits for the result: stop the work too
            raise
        finally:
            self._busy = False

    async def _submit(
        self, path: Path, data: bytes, previous: FileState | None
    ) -> Future[FileState]:
        """The parse, handed to a running worker (one that died idle is replaced first)."""
        pool = await self._running_pool()
        try:
            return pool.submit(parse_isolated, path, data, previous)
        except BrokenProcessPool:  # it died while idle: not this file's fault
            self._discard(pool)
        pool = await self._running_pool()
        return pool.submit(parse_isolated, path, data, previous)

    async def _running_pool(self) -> ProcessPoolExecutor:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                return await self._started()
        except TimeoutError:
            self._kill()
            raise ParserDied(f"the parser process did not start in {START_TIMEOUT_S:g} s") from None

    def cancel(self) -> None:
        """Abandon the parse in progress (if any): its `parse` raises ParseCancelled."""
        if self._busy:
            self._cancelled = True
            self._kill()

    def close(self) -> None:
        """Stop the worker (at once if mid-parse); a later `parse` starts a new one."""
        if self._busy:
            self._cancelled = True
            self._kill()
        elif self._pool is not None:
            self._discard(self._pool)  # an idle worker exits on its own

    async def _started(self) -> ProcessPoolExecutor:
        pool = self._pool
        if pool is None:
            context = multiprocessing.get_context("spawn")
            pool = self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            try:
                pid = await asyncio.wrap_future(pool.submit(_worker_pid))
            except BaseException:
                self._discard(pool)  # without its pid: it exits once the call ends
                raise
            if self._pool is not pool:  # cancelled or closed while it started
                raise ParseCancelled
            self._pid = pid
            logger.debug("parser process %d started", pid)
        return pool

    def _kill(self) -> None:
        pool, pid = self._pool, self._pid
        if pool is None:
            return
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._discard(pool)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Forget `pool`; its manager thread reaps the worker once it has ended."""
        if self._pool is pool:
            self._pool, self._pid = None, None
        pool.shutdown(wait=False)
