"""When to rescan a manifest directory: native file events, polling, and recovery from failures.

`DirectoryWatcher.run` calls `rescan` whenever the directory may have
changed: on each burst of native file events (`watchfiles`, debounced), on
every tick when polling was asked for (NFS, some bind mounts), and once at
the start of every watch, so writes made before the watch was in place are
not missed.  The directory's own identity is checked on every wake-up: if it
is deleted or replaced, the watch restarts on the new one; while it is
missing, it is looked for every MISSING_POLL_S.

The native watcher can fail: the inotify watch limit, or `watchfiles`
meeting a file name that is not UTF-8 ("Unable to decode path").  That is
logged as one line, the directory is polled meanwhile (by rescanning, not
with `watchfiles`' poller, which fails on the same name), and native events
are tried again after RETRY_S, doubling to MAX_RETRY_S while failures repeat
and starting over once native events have run for HEALTHY_AFTER_S.

Each call of `rescan` is given the wall-clock time (`time.time()`) the
change was seen: when `watchfiles` delivered the burst of events (at the end
of its debounce, which is as early as it tells), or the poll tick that looks.
The source stamps it on the ChangeSet as `observed_at`, where the push
latency a proxy's ACK is measured against starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Literal

import watchfiles

from xds_server.sources import limits

logger = logging.getLogger(__name__)

CHECK_INTERVAL_MS = 250
"""How often a quiet watcher wakes to check the directory is still the same one."""
MISSING_POLL_S = 0.2
"""How often to look for a missing directory."""
RETRY_S = 1.0
MAX_RETRY_S = 30.0
"""Polling time before native file events are tried again, doubling while they keep failing."""
HEALTHY_AFTER_S = 30.0
"""Native events that ran this long before failing count as healthy: the backoff starts over."""
POLL_DELAY_MS = 200
"""Polling period: when asked for, or while native file events are failing."""

WatchMode = Literal["events", "polling", "fallback-polling"]
Rescan = Callable[[float], Awaitable[None]]
"""Called with the time (`time.time()`) the change was seen."""


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = directory.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _reason(error: BaseException) -> str:
    """The innermost failure as one bounded line (`watchfiles` wraps its errors in groups)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return limits.clip(f"{type(error).__name__}: {error}", 300)


class DirectoryWatcher:
    """Calls `rescan` whenever a directory may have changed; never gives up."""

    def __init__(self, directory: Path, *, debounce_ms: int, force_polling: bool) -> None:
        self._directory = directory
        self._debounce_ms = debounce_ms
        self._force_polling = force_polling
        self._failures = 0
        self._fallback_until = 0.0
        self._mode: WatchMode = "polling" if force_polling else "events"

    @property
    def mode(self) -> WatchMode:
        """`events` (native), `polling` (asked for), or `fallback-polling` while events fail."""
        return self._mode

    async def run(self, rescan: Rescan) -> None:
        """Watch until cancelled, calling `rescan` (with the time) after every wake-up."""
        loop = asyncio.get_running_loop()
        while True:
            identity = _identity(self._directory)
            if identity is None:
                await self._wait_for_directory()
            elif loop.time() < self._fallback_until:
                await self._poll(rescan, identity)
            else:
                await self._watch(rescan, identity)
            await rescan(time.time())

    async def _wait_for_directory(self) -> None:
        while _identity(self._directory) is None:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(MISSING_POLL_S)
        logger.info("%s: directory is back", self._directory)

    async def _poll(self, rescan: Rescan, identity: tuple[int, int]) -> None:
        """Rescan every POLL_DELAY_MS until native events are due again or the directory changes."""
        loop = asyncio.get_running_loop()
        while loop.time() < self._fallback_until:
            await asyncio.sleep(POLL_DELAY_MS / 1000)
            if _identity(self._directory) != identity:
                return
            await rescan(time.time())
        logger.info("%s: watching for file events again", self._directory)

    async def _watch(self, rescan: Rescan, identity: tuple[int, int]) -> None:
        """Rescan on every wake-up until the directory is gone or replaced, or the watcher fails."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._mode = "polling" if self._force_polling else "events"
        wake_ups = self._wake_ups(identity)
        async with contextlib.aclosing(wake_ups):
            while True:
                try:
                    seen_at = await anext(wake_ups)
                except StopAsyncIteration:
                    return
                except Exception as error:
                    if _identity(self._directory) != identity:
                        return  # the directory went away under the watcher
                    self._watcher_failed(error, loop.time() - started)
                    return
                await rescan(seen_at)

    def _watcher_failed(self, error: Exception, ran_for: float) -> None:
        """Poll for a while (doubling while failures repeat), then try native events again."""
        if ran_for >= HEALTHY_AFTER_S:
            self._failures = 0
        self._failures += 1
        delay = min(RETRY_S * 2 ** (self._failures - 1), MAX_RETRY_S)
        self._fallback_until = asyncio.get_running_loop().time() + delay
        self._mode = "fallback-polling"
        logger.warning(
            "%s: file watcher failed (%s); polling every %d ms, watching again in %.0f s",
            self._directory, _reason(error), POLL_DELAY_MS, delay,
        )  # fmt: skip

    async def _wake_ups(self, identity: tuple[int, int]) -> AsyncGenerator[float, None]:
        """Yields when the directory should be rescanned (the time it woke); ends when it is
        gone or replaced.

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
            force_polling=True if self._force_polling else None,
            poll_delay_ms=POLL_DELAY_MS,
        )
        started = False
        async with contextlib.aclosing(watcher) as events:
            async for batch in events:
                seen_at = time.time()
                if _identity(self._directory) != identity:
                    logger.warning("%s: directory removed or replaced", self._directory)
                    return
                if batch or not started or self._force_polling:  # polling: rescan every tick
                    started = True
                    yield seen_at
