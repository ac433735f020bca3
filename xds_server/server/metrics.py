"""Prometheus metrics of the ADS server, registered in a registry of its own.

Nothing is registered at import time: each `ServerMetrics` owns (or is given)
a `CollectorRegistry`, so tests and several servers in one process never
collide.  Label children are bound once per type, so counting on the push path
is an attribute lookup and an increment.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from xds_server.resources import PUSH_ORDER, SHORT_NAMES


class _TypeCounters:
    __slots__ = ("acks", "bytes", "nacks", "responses")

    def __init__(self, metrics: ServerMetrics, type_url: str) -> None:
        short = SHORT_NAMES[type_url]
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
        self._by_type = {type_url: _TypeCounters(self, type_url) for type_url in PUSH_ORDER}
        self._streams = {kind: self.streams.labels(kind=kind) for kind in ("sotw", "delta")}

    def response_sent(self, type_url: str, kind: str, size: int) -> None:
        counters = self._by_type[type_url]
        counters.responses[kind].inc()
        counters.bytes.inc(size)

    def ack(self, type_url: str) -> None:
        self._by_type[type_url].acks.inc()

    def nack(self, type_url: str) -> None:
        self._by_type[type_url].nacks.inc()

    def stream_opened(self, kind: str) -> None:
        self._streams[kind].inc()

    def stream_closed(self, kind: str) -> None:
        self._streams[kind].dec()

    def stream_refused(self, reason: str) -> None:
        self.streams_refused.labels(reason=reason).inc()

    def request_paused(self) -> None:
        self.requests_paused.inc()

    def stream_failed(self, code: str) -> None:
        self.stream_errors.labels(code=code).inc()
