"""Supervision of the control plane's long-running tasks: a failure is a restart, never an exit.

The source watcher, the pipeline loop and the admin server each run under a
`Supervisor`.  An exception escaping one of them is a bug or an input nobody
foresaw; ending the process for it would drop every connected proxy and, if
the input is still there at start-up, loop in a crash.  Instead the failure
is logged (with its traceback the first time that failure is seen, then as
one line with a count, so a task failing in a loop does not flood the log)
and the task is started again after a capped, jittered backoff.  Each task
keeps its state across a restart: the source object still holds the last
good state of its input and the pipeline the last snapshots, so proxies keep
being served what they had.

Only cancellation (a deliberate shutdown) ends a supervised task; a task that
returns on its own is restarted too, unless the supervisor is `stopping`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from xds_server.settings import SupervisionSettings
from xds_server.sources.limits import clip

logger = logging.getLogger(__name__)

MAX_REMEMBERED_FAILURES = 100
"""Distinct failures remembered (to log each traceback once); older ones are forgotten."""
MAX_FAILURE_CHARS = 300
"""A failure as shown in the admin API: its type and message, cut to this length."""


@dataclass
class RestartBackoff:
    """Exponential, capped and jittered ("equal jitter": half fixed, half random)."""

    settings: SupervisionSettings
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, ran_for: float) -> float:
        """The pause before the next start, given how long the failed run lasted."""
        if ran_for >= self.settings.healthy_after:
            self.failures = 0
        ceiling: float = min(
            self.settings.restart_max, self.settings.restart_initial * 2.0**self.failures
        )
        self.failures = min(self.failures + 1, 62)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


def describe(error: BaseException) -> str:
    """`Type: message`, bounded, for the admin API and one-line log entries."""
    return clip(f"{type(error).__name__}: {error}", MAX_FAILURE_CHARS)


def _signature(error: BaseException) -> tuple[str, str, str]:
    """What makes two failures "the same": type, message and the frame that raised."""
    frame = ""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:
        frame = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
    return (type(error).__qualname__, clip(str(error), MAX_FAILURE_CHARS), frame)


class Supervisor:
    """Runs named tasks forever, restarting each after a failure; counts and shows failures."""

    def __init__(self, settings: SupervisionSettings | None = None) -> None:
        self.settings = settings or SupervisionSettings()
        self.stopping = False
        """Set at shutdown: a task that returns now is not restarted."""
        self.restarts: Counter[str] = Counter()
        self.last_failure: dict[str, str] = {}
        self._logged: dict[tuple[str, str, str], int] = {}

    def status(self) -> dict[str, dict[str, object]]:
        """Per task that ever failed: how often it was restarted and its last failure."""
        return {
            name: {"restarts": self.restarts[name], "last_failure": self.last_failure.get(name)}
            for name in sorted(self.restarts.keys() | self.last_failure.keys())
        }

    async def run(self, name: str, start: Callable[[], Awaitable[None]]) -> None:
        """Await `start()` again and again until cancelled (or it returns while stopping)."""
        backoff = RestartBackoff(self.settings)
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await start()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.failed(name, error)
            else:
                if self.stopping:
                    return
                logger.error("%s ended on its own; it should run until shutdown", name)
                self.last_failure[name] = "returned"
            self.restarts[name] += 1
            delay = backoff.next_delay(loop.time() - began)
            logger.warning("restarting %s in %.2f s (restart %d)", name, delay, self.restarts[name])
            await asyncio.sleep(delay)

    def failed(self, name: str, error: Exception) -> None:
        """Record and log one failure of `name`: the traceback only the first time."""
        self.last_failure[name] = describe(error)
        key = _signature(error)
        seen = self._logged.get(key, 0)
        if seen == 0:
            if len(self._logged) >= MAX_REMEMBERED_FAILURES:
                del self._logged[next(iter(self._logged))]
            logger.error("%s failed: %s", name, describe(error), exc_info=error)
        else:
            logger.error(
                "%s failed: %s (the same failure as before, %d times now)",
                name,
                describe(error),
                seen + 1,
            )
        self._logged[key] = seen + 1
