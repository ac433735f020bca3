"""Server callbacks, specified as what a recording `ServerCallbacks` hears of a conversation.

Every protocol event reaches the callbacks in the order it happened, stamped
with a wall-clock time that never steps back; an ACK or NACK arrives with the
`SentResponse` it answers (and so with the snapshot version it came from); a
reply that answers nothing (a stale nonce) is a request and nothing more; a
callback that raises is logged once and harms no stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from ads_fakes import (
    FakeStream,
    cluster,
    delta_request,
    evolve,
    mesh,
    request,
)
from envoy.config.cluster.v3 import cluster_pb2

from xds_server.app import ControlPlane
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.server import (
    AggregatedDiscoveryServer,
    Fanout,
    MonotonicWallClock,
    NackStatus,
    NoCallbacks,
    SentResponse,
    ServerLimits,
    StreamInfo,
)
from xds_server.settings import Settings

NODE = "proxy-1"


@dataclass(frozen=True)
class Event:
    kind: str
    at: float
    stream: StreamInfo | None = None
    detail: Any = None


class Recorder:
    """Every event, in the order heard; a complete `ServerCallbacks`."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def kinds(self, *, without: Sequence[str] = ()) -> list[str]:
        return [event.kind for event in self.events if event.kind not in without]

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]

    def stream_opened(self, stream: StreamInfo, at: float) -> None:
        self.events.append(Event("open", at, stream))

    def stream_closed(self, stream: StreamInfo, at: float) -> None:
        self.events.append(Event("close", at, stream))

    def stream_refused(self, peer: str, reason: str, at: float) -> None:
        self.events.append(Event("refused", at, None, (peer, reason)))

    def stream_failed(self, stream: StreamInfo, code: str, at: float) -> None:
        self.events.append(Event("failed", at, stream, code))

    def request_received(
        self, stream: StreamInfo, type_url: str, names: Sequence[str], at: float
    ) -> None:
        self.events.append(Event("request", at, stream, (type_url, tuple(names))))

    def request_paused(self, stream: StreamInfo, at: float) -> None:
        self.events.append(Event("paused", at, stream))

    def response_sent(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        self.events.append(Event("response", at, stream, response))

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        self.events.append(Event("ack", at, stream, response))

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        self.events.append(Event("nack", at, stream, (response, nack)))


def servicer_with(
    *callbacks: Any, snapshot: Snapshot | None = None, limits: ServerLimits | None = None
) -> AggregatedDiscoveryServer:
    cache = SnapshotCache()
    cache.set_snapshot(NODE, snapshot or mesh("v1", "a", "b"))
    return AggregatedDiscoveryServer(cache, callbacks=list(callbacks), limits=limits)


# --- the two protocol variants, as one conversation ------------------------------------


@dataclass(frozen=True)
class Variant:
    """How a proxy of one variant asks for clusters and answers a response."""

    delta: bool
    ask: Callable[..., Any]
    reply: Callable[..., Any]
    version: Callable[[Any], str]

    def __str__(self) -> str:
        return "delta" if self.delta else "sotw"


def _sotw_reply(response: Any, *, error: str | None = None) -> Any:
    return request(
        response.type_url, version=response.version_info, nonce=response.nonce, error=error
    )


def _delta_reply(response: Any, *, error: str | None = None) -> Any:
    return delta_request(response.type_url, nonce=response.nonce, error=error)


SOTW = Variant(
    False,
    lambda node_id=None: request(CLUSTER, node_id=node_id),
    _sotw_reply,
    lambda response: response.version_info,
)
DELTA = Variant(
    True,
    lambda node_id=None: delta_request(CLUSTER, node_id=node_id),
    _delta_reply,
    lambda response: response.system_version_info,
)
VARIANTS = pytest.mark.parametrize("variant", [SOTW, DELTA], ids=str)


def cluster_names(response: Any) -> tuple[str, ...]:
    """The clusters in a SotW response, sorted."""
    names = []
    for packed in response.resources:
        message = cluster_pb2.Cluster()
        packed.Unpack(message)
        names.append(message.name)
    return tuple(sorted(names))


async def connected(
    variant: Variant, servicer: AggregatedDiscoveryServer
) -> tuple[FakeStream, Any]:
    """A stream that asked for clusters; the first response, not yet answered."""
    stream = FakeStream(servicer, delta=variant.delta)
    stream.send(variant.ask(node_id=NODE))
    return stream, await stream.response()


# --- the order of events and what they carry ----------------------------------------------


@VARIANTS
async def test_a_conversation_is_heard_in_order_open_request_response_ack_close(
    variant: Variant,
) -> None:
    recorder = Recorder()
    stream, response = await connected(variant, servicer_with(recorder))
    stream.send(variant.reply(response))
    await stream.silent()
    await stream.end()

    assert recorder.kinds() == ["open", "request", "response", "request", "ack", "close"]
    sent = recorder.of("response")[0].detail
    assert sent == SentResponse(
        type_url=CLUSTER,
        nonce=response.nonce,
        version=variant.version(response),
        snapshot_version="v1",
        resources=("a", "b"),
        removed=(),
        size=response.ByteSize(),
    )
    assert recorder.of("ack")[0].detail is sent
    assert recorder.of("request")[0].detail == (CLUSTER, ())


@VARIANTS
async def test_the_stream_is_named_by_its_peer_and_by_its_node_once_known(
    variant: Variant,
) -> None:
    recorder = Recorder()
    stream, response = await connected(variant, servicer_with(recorder))
    stream.send(variant.reply(response))
    await stream.silent()
    await stream.end()

    opened, *later = [event.stream for event in recorder.events]
    kind = "delta" if variant.delta else "sotw"
    assert opened == StreamInfo(opened.stream_id, kind, stream.context.peer(), "", None)
    assert set(later) == {StreamInfo(opened.stream_id, kind, stream.context.peer(), NODE, None)}


@VARIANTS
async def test_an_ack_is_matched_to_the_response_it_answers_and_its_snapshot(
    variant: Variant,
) -> None:
    recorder = Recorder()
    v1 = mesh("v1", "a", "b")
    servicer = servicer_with(recorder, snapshot=v1)
    stream, first = await connected(variant, servicer)
    stream.send(variant.reply(first))
    await stream.silent()

    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", cluster("a", timeout_s=7)))
    second = await stream.response()
    stream.send(variant.reply(second))
    await stream.silent()

    acked = [event.detail for event in recorder.of("ack")]
    assert [(r.nonce, r.snapshot_version) for r in acked] == [
        (first.nonce, "v1"),
        (second.nonce, "v2"),
    ]
    assert acked[1].resources == ("a",)
    assert acked[1] is recorder.of("response")[1].detail


@VARIANTS
async def test_a_nack_is_heard_with_its_status_and_the_response_it_rejects(
    variant: Variant,
) -> None:
    recorder = Recorder()
    stream, response = await connected(variant, servicer_with(recorder))
    stream.send(variant.reply(response, error="cluster 'b': timeout too long"))
    await stream.silent()

    assert recorder.kinds() == ["open", "request", "response", "request", "nack"]
    rejected, nack = recorder.of("nack")[0].detail
    assert rejected is recorder.of("response")[0].detail
    assert (nack.node_id, nack.type_url, nack.nonce) == (NODE, CLUSTER, response.nonce)
    assert (nack.rejected_version, nack.message) == (
        rejected.version,
        "cluster 'b': timeout too long",
    )
    assert nack.resources == ("b",)
    assert nack.at.timestamp() == pytest.approx(recorder.of("nack")[0].at, abs=1e-6)
    assert stream.servicer.nacks(NODE) == [nack]


@VARIANTS
async def test_an_ack_after_a_nack_resolves_it_in_the_servicer(variant: Variant) -> None:
    v1 = mesh("v1", "a", "b")
    servicer = servicer_with(snapshot=v1)
    stream, response = await connected(variant, servicer)
    stream.send(variant.reply(response, error="no"))
    await stream.silent()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", cluster("a", timeout_s=7)))
    stream.send(variant.reply(await stream.response()))
    await stream.silent()
    assert servicer.nacks() == []


@VARIANTS
async def test_a_reply_with_a_stale_nonce_is_a_request_and_nothing_more(
    variant: Variant,
) -> None:
    recorder = Recorder()
    v1 = mesh("v1", "a", "b")
    servicer = servicer_with(recorder, snapshot=v1)
    stream, first = await connected(variant, servicer)
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", cluster("a", timeout_s=7)))
    await stream.response()
    await stream.silent()
    heard = len(recorder.events)

    stream.send(variant.reply(first))  # answers a response that is no longer the latest
    stream.send(variant.reply(first, error="late"))
    await stream.silent()
    assert recorder.kinds()[heard:] == ["request", "request"]


async def test_a_delta_response_names_what_it_removes() -> None:
    recorder = Recorder()
    v1 = mesh("v1", "a", "b")
    servicer = servicer_with(recorder, snapshot=v1)
    stream, response = await connected(DELTA, servicer)
    stream.send(DELTA.reply(response))
    await stream.silent()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", remove=[(CLUSTER, "b"), (ENDPOINT, "b")]))
    removal = await stream.response()

    sent = recorder.of("response")[-1].detail
    assert (sent.resources, sent.removed) == ((), ("b",))
    assert list(removal.removed_resources) == ["b"]


async def test_a_sotw_full_state_response_names_what_the_change_removed() -> None:
    recorder = Recorder()
    v1 = mesh("v1", "a", "b", "c")
    servicer = servicer_with(recorder, snapshot=v1)
    stream, response = await connected(SOTW, servicer)
    stream.send(SOTW.reply(response))
    await stream.silent()
    servicer.cache.set_snapshot(
        NODE, evolve(v1, "v2", cluster("a", timeout_s=7), remove=[(CLUSTER, "b"), (ENDPOINT, "b")])
    )
    full_set = await stream.response()

    sent = recorder.of("response")[-1].detail
    assert (sent.resources, sent.removed) == (("a",), ("b",))
    assert cluster_names(full_set) == ("a", "c")


# --- refused, failed and paused streams --------------------------------------------------


async def test_a_stream_past_its_peer_limit_is_heard_as_refused() -> None:
    recorder = Recorder()
    servicer = servicer_with(recorder, limits=ServerLimits(max_streams_per_peer=1))
    peer = "ipv4:10.0.0.1:5000"
    first = FakeStream(servicer, peer=peer)
    first.send(request(CLUSTER, node_id=NODE))
    await first.response()
    second = FakeStream(servicer, peer="ipv4:10.0.0.1:5001")
    assert await second.aborted() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert recorder.of("refused")[0].detail == ("ipv4:10.0.0.1:5001", "peer_limit")


@VARIANTS
async def test_a_stream_ended_by_a_protocol_error_is_heard_as_failed_then_closed(
    variant: Variant,
) -> None:
    recorder = Recorder()
    stream = FakeStream(servicer_with(recorder), delta=variant.delta)
    stream.send(variant.ask())  # a first request without a node
    assert await stream.aborted() == grpc.StatusCode.INVALID_ARGUMENT
    assert recorder.kinds() == ["open", "failed", "close"]
    assert recorder.of("failed")[0].detail == "INVALID_ARGUMENT"


async def test_a_request_held_back_by_the_name_budget_is_heard_as_paused() -> None:
    recorder = Recorder()
    limits = ServerLimits(max_names_per_second=1000, max_names_per_request=1000)
    servicer = servicer_with(recorder, limits=limits)
    stream = FakeStream(servicer)
    stream.send(request(ENDPOINT, *(f"n{i}" for i in range(1000)), node_id=NODE))
    stream.send(request(ENDPOINT, *(f"m{i}" for i in range(50))))  # 50 ms in debt
    await stream.settled()
    assert len(recorder.of("paused")) == 1


# --- callbacks that fail, timestamps, wiring -----------------------------------------------


class Broken(NoCallbacks):
    """Raises on every event it is told of."""

    def _fail(self, *args: object) -> None:
        raise RuntimeError("broken callback")

    stream_opened = stream_closed = request_received = response_sent = _fail
    ack_received = nack_received = _fail


@VARIANTS
async def test_a_raising_callback_harms_no_stream_and_is_logged_once_per_event(
    variant: Variant, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    v1 = mesh("v1", "a", "b")
    servicer = servicer_with(Broken(), recorder, snapshot=v1)
    stream, first = await connected(variant, servicer)
    stream.send(variant.reply(first))
    await stream.silent()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", cluster("a", timeout_s=7)))
    stream.send(variant.reply(await stream.response()))
    await stream.silent()
    await stream.end()

    assert stream.context.code is None, "the stream was ended with an error"
    assert recorder.kinds().count("ack") == 2, "a later callback missed events"
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(r.args[1] for r in failures) == [  # type: ignore[index]
        "ack_received",
        "request_received",
        "response_sent",
        "stream_closed",
        "stream_opened",
    ]
    assert all("broken callback" in (r.exc_text or "") for r in failures)
    registry = servicer.metrics.registry
    assert registry.get_sample_value("xds_acks_total", {"type": "CDS"}) == 2


def test_a_fanout_hands_events_to_callbacks_added_later() -> None:
    early, late = Recorder(), Recorder()
    fanout = Fanout([early])
    info = StreamInfo(1, "sotw", "ipv4:127.0.0.1:1")
    fanout.stream_opened(info, 1.0)
    fanout.add(late)
    fanout.stream_closed(info, 2.0)
    assert (early.kinds(), late.kinds()) == (["open", "close"], ["close"])


@VARIANTS
async def test_timestamps_are_wall_clock_times_that_never_step_back(variant: Variant) -> None:
    recorder = Recorder()
    before = time.time()
    stream, response = await connected(variant, servicer_with(recorder))
    stream.send(variant.reply(response))
    await stream.silent()
    await stream.end()
    after = time.time()

    times = [event.at for event in recorder.events]
    assert times == sorted(times)
    assert before <= times[0] and times[-1] <= after


def test_the_clock_holds_still_when_the_wall_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    readings = iter([100.0, 101.0, 90.0, 100.5, 102.0])
    monkeypatch.setattr(time, "time", lambda: next(readings))
    clock = MonotonicWallClock()
    assert [clock() for _ in range(5)] == [100.0, 101.0, 101.0, 101.0, 102.0]


@pytest.mark.parametrize("single", [True, False], ids=["one callback", "a list"])
async def test_the_servicer_takes_one_callback_or_several(single: bool) -> None:
    recorder = Recorder()
    cache = SnapshotCache()
    cache.set_snapshot(NODE, mesh())
    servicer = AggregatedDiscoveryServer(cache, callbacks=recorder if single else [recorder])
    stream, _ = await connected(SOTW, servicer)
    await stream.silent()
    assert recorder.kinds()[:3] == ["open", "request", "response"]


def test_the_control_plane_serves_one_registry_the_server_metrics_register_in(
    tmp_path: Path,
) -> None:
    plane = ControlPlane(Settings(source=f"file:{tmp_path}"))
    assert plane.ads.metrics.registry is plane.registry
    body, _ = plane.metrics()
    assert b"xds_connected_streams" in body
    assert plane.ads.metrics in plane.ads.callbacks.callbacks
