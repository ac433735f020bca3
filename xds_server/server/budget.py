"""How many resource names a peer may make the server walk per second.

Requests are cheap to send and can be dear to serve: a 4 MiB request that
names 70,000 resources costs the event loop about 70 ms to apply, and every
stream shares that loop.  A client that sends such requests back to back
would hold up every other proxy's pushes.  So each peer address (all its
streams together) has a token bucket of names: a request is always handled,
but once the peer is past its budget its next request waits until the debt is
paid off, and gRPC flow control holds the peer back meanwhile.

Only the names the server actually walks are charged: an unchanged SotW list
(Envoy repeats its whole list on every ACK) and a Delta ACK cost nothing, so a
legitimate proxy pays only when its subscription changes.
"""

from __future__ import annotations

from collections.abc import Callable


class NameBudget:
    """A token bucket of resource names: `rate` per second, at most `burst` saved up."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate", "warned")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()
        self.warned = False
        """Whether the owner has said (once) that this peer went past its budget."""

    def charge(self, names: int) -> float:
        """Take `names` from the bucket; the seconds until it is out of debt (0 if not in debt)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= names
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
