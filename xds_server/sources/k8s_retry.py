"""When a watch tries again: at once after 410 Gone, at a probe's pace through an outage,
patiently when the API server refuses us.

A retry delay answers "what will be different next time?", and the answer
depends on what failed, so `RetryPolicy` keeps one pace per kind of failure:

* **The API is not there** (connection refused or reset, a timeout, a stream
  cut mid-way, HTTP 5xx): nothing we do brings it back; what matters is to
  notice at once when it is back.  Retries back off from `backoff_initial`
  but never wait longer than `probe_max` (`OUTAGE_PROBE_MAX_S`, 1 s), so the
  API's return is seen within a second however long the outage lasted.  (A
  single backoff, as before, grew to `backoff_max` during a long outage, and
  every watch then waited most of that after the API was back: 15 s after an
  8 s outage, up to 30 s after a longer one.)
* **The API answers, but refuses** (403, 404, 422, an ERROR event, a
  malformed response, a watch it ends at once with nothing in it): retrying
  fast changes nothing until someone fixes RBAC or the server, so back off up
  to `backoff_max`.  `429 Too Many Requests` is the server asking us to slow
  down: the same patient backoff (and never sooner than its `Retry-After`,
  which a 503 may also carry).
* **410 Gone**: the server is there and says exactly what to do, relist, so
  the relist starts at once.  Only a 410 that follows a relist with no
  progress in between backs off (patiently), so a server that expires every
  version we list cannot make us relist in a loop.

Any answer from the server (a response, an HTTP 4xx, the 410 itself) ends the
outage pace: the API is back, and the next retry starts from
`backoff_initial` again.  Progress (an event on a watch, or a watch that ran
its course) ends the patient pace.

Many replicas, many watches (the thundering herd).  Each watch probes on its
own jittered schedule (each delay is its backoff times a random 0.5-1), so
the probes of R replicas x W watches are spread over the probe interval, not
in step: about R*W/0.75 requests a second while the API is away, each a
refused connection or a 503 (10 replicas x 3 kinds: 40 tiny requests a
second, nothing to an API server or its load balancer).  On its return each
watch makes one relist, as client-go's reflectors do after a compaction,
spread over the same interval; an API server that needs them slower says so
with 429 or `Retry-After`, and is obeyed.  A deployment of thousands of
replicas would want a longer `probe_max`: it is a parameter of the policy.
"""

from __future__ import annotations

import http.client
import random
from collections.abc import Mapping
from dataclasses import dataclass

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

__all__ = [
    "OUTAGE_PROBE_MAX_S",
    "Backoff",
    "ResourceExpired",
    "Retry",
    "RetryPolicy",
    "WatchFailed",
]

OUTAGE_PROBE_MAX_S = 1.0
"""The longest wait between two attempts while the API server is unreachable."""
RELIST_AFTER_REFUSALS = 3
"""Consecutive requests the server refused after which we relist instead of resuming."""
LATER_STATUSES = frozenset({429, 503})
"""HTTP statuses that mean "come back later", not "this watch is wrong"."""
RETRY_AFTER_JITTER = 0.25
"""A `Retry-After` of N seconds is waited as N to N*(1+this), so clients told alike part."""


class ResourceExpired(Exception):
    """410: the resourceVersion (or continue token) is older than the server's history."""


class WatchFailed(Exception):
    """The server ended a watch with an ERROR event other than 410."""


class Backoff:
    """Exponential backoff with jitter: initial * 2^(n-1), capped, times a random 0.5-1."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        delay = min(self._maximum, self._initial * 2.0 ** min(self.failures - 1, 64))
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


@dataclass(frozen=True)
class Retry:
    """What to do after a failure: wait `delay` seconds, then relist (or resume)."""

    delay: float
    relist: bool = False


class RetryPolicy:
    """The retry pace of one watch, moved by what happens to its requests; no I/O."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: random.Random,
        *,
        probe_max: float = OUTAGE_PROBE_MAX_S,
    ) -> None:
        self._rng = rng
        self._maximum = maximum
        self._unreachable = Backoff(initial, min(maximum, probe_max), rng)
        self._refused = Backoff(initial, maximum, rng)
        self._refusals = 0
        self._expiries = 0

    def answered(self) -> None:
        """The server sent a response (headers, or a 4xx): it is up, the outage pace ends."""
        self._unreachable.reset()

    def progressed(self) -> None:
        """A watch delivered an event or ran its course: whatever was refused is no longer."""
        self._refused.reset()
        self._refusals = 0
        self._expiries = 0

    def watch_ended(self, healthy: bool) -> float:
        """The server ended a watch; unhealthy: at once, with nothing in it."""
        if healthy:
            self.progressed()
            return 0.0
        return self._refused.next()

    def expired(self) -> float:
        """A 410: relist at once, unless the last relist got us nowhere either."""
        self.answered()
        self._expiries += 1
        return 0.0 if self._expiries == 1 else self._refused.next()

    def failed(self, error: Exception) -> Retry:
        """Any other failure of a list or a watch."""
        status = error.status if isinstance(error, ApiException) else None
        if isinstance(status, int) and status < 500:
            self.answered()
        relist = False
        if refused(error):
            self._refusals += 1
            if self._refusals >= RELIST_AFTER_REFUSALS:
                relist, self._refusals = True, 0
        delay = self._unreachable.next() if unreachable(error) else self._refused.next()
        retry_after = _retry_after(error)
        if retry_after is not None:
            told = min(self._maximum, retry_after)
            delay = max(delay, told * self._rng.uniform(1.0, 1.0 + RETRY_AFTER_JITTER))
        return Retry(delay, relist)


def unreachable(error: Exception) -> bool:
    """The API server is not there (or not working): no answer, a cut stream, or a 5xx."""
    if isinstance(error, ApiException):
        return isinstance(error.status, int) and error.status >= 500
    return isinstance(error, urllib3.exceptions.HTTPError | http.client.HTTPException | OSError)


def refused(error: Exception) -> bool:
    """The server answered, and not with "later": the watch itself may be the problem."""
    if isinstance(error, WatchFailed):
        return True
    return isinstance(error, ApiException) and error.status not in LATER_STATUSES


def _retry_after(error: Exception) -> float | None:
    """The seconds of a `Retry-After` header on a 429 or 503 (HTTP dates are ignored)."""
    if not isinstance(error, ApiException) or error.status not in LATER_STATUSES:
        return None
    headers = error.headers
    value = headers.get("Retry-After") if isinstance(headers, Mapping) else None
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds is not None and 0 <= seconds < float("inf") else None
