"""Prometheus metrics of the ADS server: one `ServerCallbacks` implementation.

The metrics hear the protocol through the same callbacks as everything else
that watches the server (`xds_server.server.callbacks`), so the stream code
knows nothing of Prometheus.  Nothing is registered at import time: the
control plane hands its one `CollectorRegistry` down (`xds_server.app`), and
tests and several servers in one process, each given (or owning) a registry
of their own, never collide.  Label children are bound once per type, so
counting on the push path is an attribute lookup and an increment.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from xds_server.resources import XDS_TYPES, XdsType
from xds_server.server.callbacks import SentResponse, StreamInfo
from xds_server.server.state import NackStatus


class _TypeCounters:
    __slots__ = ("acks", "bytes", "nacks", "responses")

    def __init__(self, metrics: ServerMetrics, xds_type: XdsType) -> None:
        short = xds_type.short_name
        self.responses = {
            kind: metrics.responses.labels(type=short, kind=kind) for kind in ("sotw", "delta")
        }
        self.bytes = metrics.response_bytes.labels(type=short)
        self.acks = metrics.acks.labels(type=short)
        self.nacks = metrics.nacks.labels(type=short)


class ServerMetrics:
    """Counters of responses, bytes, ACKs and NACKs by type; a gauge of open streams;
    streams refused and streams ended with an error status, by reason.

    `xds_stream_errors{code="INTERNAL"}` counts failures of the server itself
    (an exception escaping a stream): it should stay at zero whatever clients send.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.responses = Counter(
            "xds_responses",
            "xDS responses sent, by resource type and protocol variant.",
            ["type", "kind"],
            registry=self.registry,
        )
        self.response_bytes = Counter(
            "xds_response_bytes",
            "Serialized bytes of xDS responses sent, by resource type.",
            ["type"],
            registry=self.registry,
        )
        self.acks = Counter(
            "xds_acks", "Responses accepted by proxies, by type.", ["type"], registry=self.registry
        )
        self.nacks = Counter(
            "xds_nacks", "Responses rejected by proxies, by type.", ["type"], registry=self.registry
        )
        self.streams = Gauge(
            "xds_connected_streams",
            "Open ADS streams, by protocol variant.",
            ["kind"],
            registry=self.registry,
        )
        self.streams_refused = Counter(
            "xds_streams_refused",
            "ADS streams refused before serving, by reason (peer_limit, shutting_down).",
            ["reason"],
            registry=self.registry,
        )
        self.stream_errors = Counter(
            "xds_stream_errors",
            "ADS streams ended with an error status, by gRPC status code.",
            ["code"],
            registry=self.registry,
        )
        self.requests_paused = Counter(
            "xds_requests_paused",
            "Requests held back because their peer was past max_names_per_second.",
            registry=self.registry,
        )
        self._by_type = {t.type_url: _TypeCounters(self, t) for t in XDS_TYPES}
        self._streams = {kind: self.streams.labels(kind=kind) for kind in ("sotw", "delta")}

    # --- ServerCallbacks --------------------------------------------------------

    def stream_opened(self, stream: StreamInfo, at: float) -> None:
        self._streams[stream.kind].inc()

    def stream_closed(self, stream: StreamInfo, at: float) -> None:
        self._streams[stream.kind].dec()

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        self.streams_refused.labels(reason=reason).inc()

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        self.stream_errors.labels(code=code).inc()

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        pass

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        self.requests_paused.inc()

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        counters = self._by_type[response.type_url]
        counters.responses[stream.kind].inc()
        counters.bytes.inc(response.size)

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        self._by_type[response.type_url].acks.inc()

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        self._by_type[response.type_url].nacks.inc()
