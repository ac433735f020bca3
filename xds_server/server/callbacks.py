"""Server callbacks: one seam for everything that watches the ADS protocol.

Like go-control-plane's `Callbacks`, the servicer and its streams report each
protocol event here, with a wall-clock timestamp (`time.time()`), and do
nothing else with it.  Metrics, push history (time from a source change to
each proxy's ACK) and, later, authentication hang off this one Protocol
instead of each growing its own hook in the stream code.  `Fanout` hands every
event to several implementations; one that raises is logged, never lets a
stream fail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    """The authenticated identity (a SPIFFE ID from the client certificate); None
    until the security work authenticates streams."""


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
    """Names it removes (Delta `removed_resources`; SotW full-state types drop them)."""
    size: int
    """Serialized bytes."""


class ServerCallbacks(Protocol):
    """Protocol events of the ADS server; `at` is `time.time()` when it happened."""

    def stream_opened(self, stream: StreamInfo, at: float) -> None: ...

    def stream_closed(self, stream: StreamInfo, at: float) -> None: ...

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        """Refused before serving (`peer_limit`, `shutting_down`)."""
        ...

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        """Ended with an error status (the gRPC status code's name)."""
        ...

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        """A discovery request, with the names it subscribes (SotW) or adds (Delta)."""
        ...

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        """A request held back because its peer is past its names-per-second budget."""
        ...

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None: ...

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        """The proxy accepted `response` (the latest of its type)."""
        ...

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        """The proxy rejected `response` and keeps running its previous config."""
        ...
