"""Debounce: merge bursts of ChangeSets into one push.

A burst ends after a quiet period with no new change, or at a maximum delay
after its first change, whichever comes first, so a steady trickle of edits
cannot starve pushes.  Endpoint-only bursts (pods scaling) use a much shorter
quiet period: they touch few resources and users expect them to apply fast.  So do
certificate-only bursts: a new proxy's TLS contexts wait for its certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from xds_server.model import ChangeSet, Kind
from xds_server.pipeline.metrics import PipelineMetrics
from xds_server.settings import DebounceSettings

logger = logging.getLogger(__name__)

# Deadlines closer than this count as reached (as asyncio's own clock resolution
# does), so float rounding can never spin the loop on zero-length waits.
_RESOLUTION = 0.001

FAST_KINDS = frozenset({Kind.ENDPOINT_SLICE, Kind.WORKLOAD_CERTIFICATE, Kind.TRUST_ROOTS})
"""A burst of only these kinds uses the short quiet period."""


class Debouncer:
    def __init__(self, settings: DebounceSettings) -> None:
        self._settings = settings
        self._pending = ChangeSet()
        self._first_at: float | None = None
        self._last_at = 0.0
        self._wakeup = asyncio.Event()
        self.metrics: PipelineMetrics | None = None
        """Counts change sets merged into a waiting burst."""

    def submit(self, changes: ChangeSet) -> None:
        if not changes:
            return
        now = asyncio.get_running_loop().time()
        if self._first_at is None:
            self._first_at = now
        elif self.metrics is not None:
            self.metrics.merged()
        self._last_at = now
        self._pending.merge(changes)
        self._wakeup.set()

    async def next_batch(self) -> ChangeSet:
        """Wait for a burst to settle and return it merged."""
        loop = asyncio.get_running_loop()
        while True:
            while self._first_at is None:
                self._wakeup.clear()
                await self._wakeup.wait()
            quiet = (
                self._settings.endpoint_quiet
                if self._pending and self._pending.kinds <= FAST_KINDS
                else self._settings.quiet
            )
            deadline = min(self._last_at + quiet, self._first_at + self._settings.max_delay)
            remaining = deadline - loop.time()
            if remaining <= _RESOLUTION:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
        batch, self._pending = self._pending, ChangeSet()
        self._first_at = None
        return batch
