"""Server callbacks: one seam for everything that watches the ADS protocol.

Like go-control-plane's `Callbacks`, the servicer and its streams report each
protocol event here, with a wall-clock timestamp (`time.time()`), and do
nothing else with it.  Metrics, push history (time from a source change to
each proxy's ACK) and, later, authentication hang off this one Protocol
instead of each growing its own hook in the stream code.  `Fanout` hands every
event to several implementations; one that raises is logged, never lets a
stream fail.

`NoCallbacks` hears nothing: subclass it to implement only the events you
need.  `MonotonicWallClock` is the servicer's clock: wall-clock time (so `at`
compares with a source's `observed_at`) that never steps back, so the events
of one server are ordered by their timestamps even across an NTP step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from xds_server.server.state import NackStatus, StreamKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """Who is at the other end of a stream, as far as the server knows now."""

    stream_id: int
    kind: StreamKind
    peer: str
    node_id: str = ""
    """Empty until the first request names the node."""
    identity: str | None = None
    """The authenticated principal (a SPIFFE ID, from the client certificate or a
    token; `xds_server.server.auth`); None when the server authenticates no one."""


@dataclass(frozen=True, slots=True)
class SentResponse:
    """One response as sent: enough to match the proxy's ACK or NACK to it."""

    type_url: str
    nonce: str
    version: str
    """The type's version in this response (SotW version_info; Delta system_version_info)."""
    snapshot_version: str
    """The version of the snapshot it came from: the pipeline's generation."""
    resources: tuple[str, ...]
    """Names it adds or changes."""
    removed: tuple[str, ...]
    """Names it removes: Delta `removed_resources`; for SotW LDS and CDS, the names
    the subscription covers that the snapshot change removed (a full-state response
    drops them).  Empty for a response that resends the whole set, as after a
    reconnect, where the server does not know what the proxy held."""
    size: int
    """Serialized bytes."""


class ServerCallbacks(Protocol):
    """Protocol events of the ADS server.

    `at` is when it happened, in wall-clock seconds (`time.time()`, from the
    servicer's `MonotonicWallClock`).  A callback runs on the stream's task, on
    the push path: it must be quick and must not block.
    """

    def stream_opened(self, stream: StreamInfo, at: float) -> None:
        """A stream is served; its `node_id` is still empty (the first request names it)."""
        ...

    def stream_closed(self, stream: StreamInfo, at: float) -> None:
        """A served stream ended, whatever the reason (after `stream_failed` if it failed)."""
        ...

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        """Refused before serving (`peer_limit`, `shutting_down`, `unauthenticated`)."""
        ...

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        """Ended with an error status (the gRPC status code's name)."""
        ...

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        """A request for a type the server serves (ACKs and NACKs included), before it
        is applied, with the names it subscribes (SotW) or adds (Delta).

        `names` is the request's own list: read it during the call, copy it to keep it.
        """
        ...

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        """A request held back because its peer is past its names-per-second budget."""
        ...

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        """`response` was handed to gRPC; its ACK or NACK, if any, is reported later."""
        ...

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        """The proxy accepted `response` (the latest of its type)."""
        ...

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        """The proxy rejected `response` and keeps running its previous config."""
        ...


class NoCallbacks:
    """A `ServerCallbacks` that ignores every event; subclass it to hear some of them."""

    def stream_opened(self, stream: StreamInfo, at: float) -> None:
        pass

    def stream_closed(self, stream: StreamInfo, at: float) -> None:
        pass

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        pass

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        pass

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        pass

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        pass

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        pass

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        pass

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        pass


class Fanout:
    """Hands every event to each of several `ServerCallbacks`, in order.

    A callback that raises is logged with its traceback the first time it
    fails on a kind of event, and only counted after that (a callback broken
    on every ACK would otherwise log a traceback per ACK); the others still
    hear the event, and the stream that reported it never knows.
    """

    __slots__ = ("_callbacks", "_logged", "failures")

    def __init__(self, callbacks: Iterable[ServerCallbacks] = ()) -> None:
        self._callbacks: tuple[ServerCallbacks, ...] = tuple(callbacks)
        self._logged: set[tuple[int, str]] = set()
        self.failures = 0
        """How many times a callback raised."""

    @property
    def callbacks(self) -> tuple[ServerCallbacks, ...]:
        return self._callbacks

    def add(self, callbacks: ServerCallbacks) -> None:
        """Hand `callbacks` every event from now on, after those already here."""
        self._callbacks = (*self._callbacks, callbacks)

    def _failed(self, callbacks: ServerCallbacks, event: str) -> None:
        self.failures += 1
        key = (id(callbacks), event)
        if key in self._logged:
            logger.debug("server callback %r failed again on %s", callbacks, event)
            return
        self._logged.add(key)
        logger.exception(
            "server callback %r failed on %s; the stream goes on "
            "(logged once per callback and event)",
            callbacks,
            event,
        )

    def stream_opened(self, stream: StreamInfo, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.stream_opened(stream, at)
            except Exception:
                self._failed(callbacks, "stream_opened")

    def stream_closed(self, stream: StreamInfo, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.stream_closed(stream, at)
            except Exception:
                self._failed(callbacks, "stream_closed")

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.stream_refused(peer, reason, at)
            except Exception:
                self._failed(callbacks, "stream_refused")

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.stream_failed(stream, code, at)
            except Exception:
                self._failed(callbacks, "stream_failed")

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.request_received(stream, type_url, names, at)
            except Exception:
                self._failed(callbacks, "request_received")

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.request_paused(stream, at)
            except Exception:
                self._failed(callbacks, "request_paused")

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.response_sent(stream, response, at)
            except Exception:
                self._failed(callbacks, "response_sent")

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.ack_received(stream, response, at)
            except Exception:
                self._failed(callbacks, "ack_received")

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        for callbacks in self._callbacks:
            try:
                callbacks.nack_received(stream, response, nack, at)
            except Exception:
                self._failed(callbacks, "nack_received")


class MonotonicWallClock:
    """`time.time()`, except that it never returns less than it returned before."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self) -> float:
        now = time.time()
        if now < self._last:
            return self._last
        self._last = now
        return now
