"""Push history: what each generation changed, who was sent it, and when each proxy ACKed.

`PushHistory` listens at the two seams that between them see a push from end
to end: the pipeline's `SnapshotBuilder.on_generation` (a `GenerationRecord`
per committed batch: its triggers, and which proxies' snapshots changed) and
the ADS server's `ServerCallbacks` (each response sent, each ACK and NACK).
Responses are matched to generations by `SentResponse.snapshot_version`,
which is the proxy's snapshot version in the record (`str(generation)`).

A proxy is ACKed for a generation once it has accepted every response it was
sent from that generation; a NACK of any of them marks it NACKed.  A proxy
whose generation is replaced by a newer one before it answered is superseded:
only its answer to the newer one counts, for the newer one.  So each proxy has
at most one live generation, and what is tracked live is one small entry per
proxy (`_Tracking`), whatever the churn.

Memory is bounded whatever the churn: `max_generations` generations are kept,
each with at most `max_proxies` proxies in detail (the rest are counted), and
every list of names or triggers is cut to `max_names` with its total kept.
The time from a source change (`observed_at`) to each proxy's ACK feeds the
`xds_push_ack_latency_seconds` histogram, once per proxy per generation.

Everything runs on the event loop that runs the streams and the pipeline, so
there is no locking; the admin reads frozen views built on demand.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from prometheus_client import CollectorRegistry, Histogram

from xds_server.history.views import (
    Answer,
    NameList,
    ProxyPushView,
    ProxyStatus,
    PushCounts,
    PushDetail,
    PushSummary,
    SentType,
)
from xds_server.pipeline.records import GenerationRecord, ProxyPush, Trigger
from xds_server.server.callbacks import SentResponse, StreamInfo
from xds_server.server.state import NackStatus

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds: from a millisecond (an endpoint change on a quiet mesh) to a minute."""
MAX_NACK_MESSAGE_CHARS = 2000


@dataclass(slots=True)
class _Proxy:
    """One proxy's part in one generation, while it is recorded."""

    node_id: str
    snapshot_version: str
    status: ProxyStatus = "pending"
    responses: int = 0
    sent: dict[str, SentType] = field(default_factory=dict)
    """By type URL; kept only for the proxies recorded in detail."""
    acked_at: float | None = None
    nacked_at: float | None = None
    nack: tuple[str, str] | None = None

    def view(self, observed_at: float | None) -> ProxyPushView:
        answered = self.acked_at if self.acked_at is not None else self.nacked_at
        latency = None
        if answered is not None and observed_at is not None:
            latency = max(0.0, answered - observed_at)
        return ProxyPushView(
            node_id=self.node_id,
            snapshot_version=self.snapshot_version,
            status=self.status,
            sent=tuple(self.sent.values()),
            acked_at=self.acked_at,
            nacked_at=self.nacked_at,
            nack_type=self.nack[0] if self.nack else None,
            nack_message=self.nack[1] if self.nack else None,
            latency=latency,
        )


@dataclass(slots=True)
class _Generation:
    generation: int
    observed_at: float | None
    committed_at: float
    triggers: tuple[Trigger, ...]
    triggers_total: int
    changed: dict[str, NameList]
    removed: dict[str, NameList]
    proxies: int
    detailed: dict[str, _Proxy] = field(default_factory=dict)
    sent: int = 0
    """Proxies sent at least one response of it."""
    settled: Counter[ProxyStatus] = field(default_factory=Counter)
    """Proxies by the status they ended in (pending ones are not counted)."""
    fastest_ack: float | None = None
    slowest_ack: float | None = None

    def evict(self) -> None:
        """Out of the history: keep only what proxies still live on it need."""
        self.detailed.clear()
        self.changed.clear()
        self.removed.clear()
        self.triggers = ()

    def summary(self) -> PushSummary:
        return PushSummary(
            generation=self.generation,
            observed_at=self.observed_at,
            committed_at=self.committed_at,
            triggers=self.triggers,
            triggers_total=self.triggers_total,
            changed=dict(self.changed),
            removed=dict(self.removed),
            counts=PushCounts(
                proxies=self.proxies,
                sent=self.sent,
                acked=self.settled["acked"],
                nacked=self.settled["nacked"],
                superseded=self.settled["superseded"],
                disconnected=self.settled["disconnected"],
            ),
            fastest_ack=self.fastest_ack,
            slowest_ack=self.slowest_ack,
        )


@dataclass(slots=True)
class _Tracking:
    """A proxy's live generation: the responses of it not answered yet."""

    generation: _Generation
    proxy: _Proxy
    """Kept in `generation.detailed` too if it is among the first `max_proxies`."""
    outstanding: dict[str, str] = field(default_factory=dict)
    """Type URL -> nonce of the latest response of that type not answered yet."""


def _deduplicated(pushes: Sequence[ProxyPush], removed: bool, limit: int) -> dict[str, NameList]:
    by_type: dict[str, dict[str, None]] = {}
    for push in pushes:
        for type_url, names in (push.removed if removed else push.changed).items():
            by_type.setdefault(type_url, {}).update(dict.fromkeys(names))
    return {type_url: NameList.of(names, limit) for type_url, names in by_type.items()}


class PushHistory:
    """The last `max_generations` pushes, per proxy to the ACK (see the module docstring).

    Implements `ServerCallbacks`; hand `generation_committed` to the builder's
    `on_generation`.  Without a registry the histogram goes to a registry of its own.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_generations: int = 100,
        max_proxies: int = 100,
        max_names: int = 100,
        max_tracked_proxies: int = 100_000,
    ) -> None:
        if min(max_generations, max_proxies, max_names, max_tracked_proxies) < 1:
            raise ValueError("push history bounds must be at least 1")
        self.max_generations = max_generations
        self.max_proxies = max_proxies
        self.max_names = max_names
        self.max_tracked_proxies = max_tracked_proxies
        self.registry = registry if registry is not None else CollectorRegistry()
        self.ack_latency = Histogram(
            "xds_push_ack_latency_seconds",
            "Seconds from a source change being observed to a proxy's ACK of the "
            "generation it caused; one observation per proxy per generation.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._generations: OrderedDict[int, _Generation] = OrderedDict()
        self._tracking: OrderedDict[str, _Tracking] = OrderedDict()
        """Node id -> its live generation, least recently pushed first."""
        self._streams: dict[int, str] = {}
        """Open stream id -> node id, for the streams that have named their node."""
        self._streams_of_node: dict[str, set[int]] = {}

    # -- what the admin reads -------------------------------------------------------------

    def pushes(self) -> list[PushSummary]:
        """Every recorded generation, newest first."""
        return [entry.summary() for entry in reversed(self._generations.values())]

    def push(self, generation: int) -> PushDetail | None:
        entry = self._generations.get(generation)
        if entry is None:
            return None
        proxies = tuple(proxy.view(entry.observed_at) for proxy in entry.detailed.values())
        return PushDetail(entry.summary(), proxies)

    def __len__(self) -> int:
        return len(self._generations)

    @property
    def tracked_proxies(self) -> int:
        return len(self._tracking)

    # -- the pipeline's side --------------------------------------------------------------

    def generation_committed(self, record: GenerationRecord) -> None:
        limit = self.max_names
        entry = _Generation(
            generation=record.generation,
            observed_at=record.observed_at,
            committed_at=record.committed_at,
            triggers=record.triggers[:limit],
            triggers_total=len(record.triggers),
            changed=_deduplicated(record.proxies, False, limit),
            removed=_deduplicated(record.proxies, True, limit),
            proxies=len(record.proxies),
        )
        self._generations[record.generation] = entry
        self._generations.move_to_end(record.generation)
        while len(self._generations) > self.max_generations:
            self._generations.popitem(last=False)[1].evict()
        for push in record.proxies:
            self._track(entry, push)

    def _track(self, entry: _Generation, push: ProxyPush) -> None:
        node_id = push.node_id
        previous = self._tracking.pop(node_id, None)
        if previous is not None and previous.proxy.status == "pending":
            self._settle(previous, "superseded")
        proxy = _Proxy(node_id, push.snapshot_version)
        if len(entry.detailed) < self.max_proxies:
            entry.detailed[node_id] = proxy
        self._tracking[node_id] = _Tracking(entry, proxy)
        while len(self._tracking) > self.max_tracked_proxies:
            _, dropped = self._tracking.popitem(last=False)
            logger.debug("push history: no longer tracking %s", dropped.proxy.node_id)

    def _settle(self, tracking: _Tracking, status: ProxyStatus) -> None:
        tracking.proxy.status = status
        tracking.generation.settled[status] += 1

    # -- the server's side (ServerCallbacks) ----------------------------------------------

    def _live(self, stream: StreamInfo, response: SentResponse) -> _Tracking | None:
        tracking = self._tracking.get(stream.node_id)
        if tracking is None or tracking.proxy.snapshot_version != response.snapshot_version:
            return None  # an older generation's response, or a proxy no record named
        return tracking

    def _name_stream(self, stream: StreamInfo) -> None:
        if stream.node_id and stream.stream_id not in self._streams:
            self._streams[stream.stream_id] = stream.node_id
            self._streams_of_node.setdefault(stream.node_id, set()).add(stream.stream_id)

    def stream_opened(self, stream: StreamInfo, at: float) -> None:
        self._name_stream(stream)

    def stream_closed(self, stream: StreamInfo, at: float) -> None:
        node_id = self._streams.pop(stream.stream_id, None)
        if node_id is None:
            return
        streams = self._streams_of_node[node_id]
        streams.discard(stream.stream_id)
        if streams:
            return
        del self._streams_of_node[node_id]
        tracking = self._tracking.pop(node_id, None)
        if tracking is not None and tracking.proxy.status == "pending":
            self._settle(tracking, "disconnected")

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        pass

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        pass  # `stream_closed` follows

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        self._name_stream(stream)

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        pass

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        self._name_stream(stream)
        tracking = self._live(stream, response)
        if tracking is None:
            return
        proxy, entry = tracking.proxy, tracking.generation
        if proxy.responses == 0:
            entry.sent += 1
        proxy.responses += 1
        tracking.outstanding[response.type_url] = response.nonce
        if proxy.node_id not in entry.detailed:
            return  # counted, not detailed
        earlier, limit = proxy.sent.get(response.type_url), self.max_names
        if earlier is None:
            proxy.sent[response.type_url] = SentType(
                response.type_url,
                response.version,
                response.nonce,
                NameList.of(response.resources, limit),
                NameList.of(response.removed, limit),
                response.size,
                1,
                at,
            )
            return
        # The same generation again: a new subscription answered from its snapshot.
        proxy.sent[response.type_url] = SentType(
            response.type_url, response.version, response.nonce,
            _joined(earlier.names, response.resources, limit),
            _joined(earlier.removed, response.removed, limit),
            earlier.bytes + response.size, earlier.responses + 1, at,
        )  # fmt: skip

    def _answered(self, tracking: _Tracking, response: SentResponse) -> bool:
        """Take `response` off the outstanding list, if it is the one outstanding."""
        if tracking.outstanding.get(response.type_url) != response.nonce:
            return False
        del tracking.outstanding[response.type_url]
        return True

    def _mark(self, proxy: _Proxy, response: SentResponse, answer: Answer, at: float) -> None:
        sent = proxy.sent.get(response.type_url)
        if sent is not None and sent.nonce == response.nonce:
            proxy.sent[response.type_url] = replace(sent, answer=answer, answered_at=at)

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        tracking = self._live(stream, response)
        if tracking is None or not self._answered(tracking, response):
            return
        proxy, entry = tracking.proxy, tracking.generation
        self._mark(proxy, response, "acked", at)
        if tracking.outstanding or proxy.status != "pending":
            return
        proxy.acked_at = at
        self._settle(tracking, "acked")
        if entry.observed_at is None:
            return
        latency = max(0.0, at - entry.observed_at)
        self.ack_latency.observe(latency)
        if entry.fastest_ack is None or latency < entry.fastest_ack:
            entry.fastest_ack = latency
        if entry.slowest_ack is None or latency > entry.slowest_ack:
            entry.slowest_ack = latency

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        tracking = self._live(stream, response)
        if tracking is None or not self._answered(tracking, response):
            return
        proxy = tracking.proxy
        self._mark(proxy, response, "nacked", at)
        if proxy.status == "nacked":
            return
        if proxy.status == "acked":  # a later response of the same generation was rejected
            tracking.generation.settled["acked"] -= 1
        proxy.nacked_at = at
        proxy.nack = (response.type_url, nack.message[:MAX_NACK_MESSAGE_CHARS])
        self._settle(tracking, "nacked")


def _joined(earlier: NameList, more: Sequence[str], limit: int) -> NameList:
    """`earlier` and `more`, the listed names deduplicated; the total counts every name sent."""
    names = dict.fromkeys(earlier.names)
    for name in more:
        if len(names) >= limit:
            break
        names[name] = None
    return NameList(tuple(names), earlier.total + len(more))
