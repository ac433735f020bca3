"""The xDS port's resource bounds: each limit holds at its value and refuses one past it.

A client that floods, lies or stops reading must cost its own stream and
nothing more.  Each bound of `ServerLimits` is shown twice: a request right at
the limit is served, one just past it ends the stream with a status that names
the limit.  The gRPC-level bounds (request bytes, streams per peer, keepalive)
run on a real grpc.aio server on loopback; the stream-level ones on the fake
stream, where "the proxy stopped reading" is exact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import grpc
import pytest
from ads_fakes import (
    TIMEOUT,
    FakeStream,
    cluster,
    current,
    delta_request,
    evolve,
    load_assignment,
    mesh,
    names_in,
    new_servicer,
    node,
    real_server,
    request,
    snapshot,
)
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_server.cache import Snapshot, SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, ROUTE
from xds_server.server import AggregatedDiscoveryServer, ServerLimits, bind_grpc_server
from xds_server.server.budget import NameBudget
from xds_server.server.limits import MAX_NACK_MESSAGE_CHARS, MAX_REMEMBERED_UNSERVED_TYPES
from xds_server.server.servicer import peer_address

NODE = "proxy-1"
PREFIX = "type.googleapis.com/"


def servicer_with(limits: ServerLimits) -> AggregatedDiscoveryServer:
    """A servicer with `limits` over a cache holding the small mesh for NODE."""
    return AggregatedDiscoveryServer(new_servicer((NODE, mesh())).cache, limits=limits)


def names(count: int, prefix: str = "n") -> list[str]:
    return [f"{prefix}{index}" for index in range(count)]


def node_of_size(size: int) -> Any:
    """NODE, padded (in `user_agent_name`) to exactly `size` serialized bytes."""
    padded = node(NODE)
    padded.user_agent_name = "x" * (size - padded.ByteSize() - 3)
    while padded.ByteSize() != size:
        grow = 1 if padded.ByteSize() < size else -1
        padded.user_agent_name = "x" * (len(padded.user_agent_name) + grow)
    return padded


def with_node(message: Any, size: int) -> Any:
    message.node.CopyFrom(node_of_size(size))
    return message


# --- each stream-level limit: served at the limit, refused one past it --------------------

Conversation = Callable[[int], list[Any]]
"""The requests of a stream that puts `n` against the limit under test."""

LIMITS = ServerLimits(
    max_names_per_request=10, max_subscribed_names=12, max_name_length=100, max_node_bytes=2048
)

BOUNDS: list[Any] = [
    pytest.param(
        False,
        "max_names_per_request",
        "RESOURCE_EXHAUSTED",
        lambda n: [request(ENDPOINT, *names(n), node_id=NODE)],
        id="sotw: names in one request",
    ),
    pytest.param(
        True,
        "max_names_per_request",
        "RESOURCE_EXHAUSTED",
        lambda n: [
            delta_request(ENDPOINT, names(n - 2), ["gone"], initial={"n0": "v"}, node_id=NODE)
        ],
        id="delta: subscribe + unsubscribe + initial versions in one request",
    ),
    pytest.param(
        False,
        "max_subscribed_names",
        "RESOURCE_EXHAUSTED",
        lambda n: [
            request(ENDPOINT, *names(6), node_id=NODE),
            request(ROUTE, *names(n - 6, "r")),
        ],
        id="sotw: names subscribed over all types of a stream",
    ),
    pytest.param(
        True,
        "max_subscribed_names",
        "RESOURCE_EXHAUSTED",
        lambda n: [
            delta_request(ENDPOINT, names(8), node_id=NODE),
            delta_request(ENDPOINT, names(n)[8:]),
        ],
        id="delta: names subscribed over successive requests",
    ),
    pytest.param(
        False,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [request(ENDPOINT, "e" * n, node_id=NODE)],
        id="sotw: resource name",
    ),
    pytest.param(
        True,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [delta_request(ENDPOINT, ["e" * n], node_id=NODE)],
        id="delta: resource name",
    ),
    pytest.param(
        False,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [request(CLUSTER, node_id="p" * n)],
        id="sotw: node id",
    ),
    pytest.param(
        False,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [request(PREFIX + "t" * (n - len(PREFIX)), node_id=NODE)],
        id="sotw: type URL",
    ),
    pytest.param(
        False,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [request(CLUSTER, node_id=NODE, version="v" * n)],
        id="sotw: version_info",
    ),
    pytest.param(
        True,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [delta_request(CLUSTER, node_id=NODE, nonce="9" * n)],
        id="delta: response_nonce",
    ),
    pytest.param(
        True,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [delta_request(ENDPOINT, ["a"], initial={"k" * n: "v"}, node_id=NODE)],
        id="delta: initial_resource_versions key",
    ),
    pytest.param(
        True,
        "max_name_length",
        "INVALID_ARGUMENT",
        lambda n: [delta_request(ENDPOINT, ["a"], initial={"a": "v" * n}, node_id=NODE)],
        id="delta: initial_resource_versions value",
    ),
    pytest.param(
        False,
        "max_node_bytes",
        "RESOURCE_EXHAUSTED",
        lambda n: [with_node(request(CLUSTER), n)],
        id="sotw: node size",
    ),
]


@pytest.mark.parametrize(("delta", "limit", "code", "conversation"), BOUNDS)
async def test_a_stream_is_served_at_a_limit_and_refused_one_past_it(
    delta: bool, limit: str, code: str, conversation: Conversation
) -> None:
    value = getattr(LIMITS, limit)
    servicer = servicer_with(LIMITS)

    at_limit = FakeStream(servicer, delta=delta)
    for message in conversation(value):
        at_limit.send(message)
    await at_limit.settled()
    assert not at_limit.task.done(), "the stream at the limit was ended"

    past = FakeStream(servicer, delta=delta)
    for message in conversation(value + 1):
        past.send(message)
    assert (await past.aborted()).name == code
    assert limit in past.context.details
    assert str(value) in past.context.details
    assert len(past.context.details) < 300, "the client's oversized value is quoted whole"
    assert [status.peer for status in servicer.streams()] == [at_limit.context.peer()]
    registry = servicer.metrics.registry
    assert registry.get_sample_value("xds_stream_errors_total", {"code": code}) == 1


# --- the gRPC-level limits, on a real server ------------------------------------------------


def stub(channel: grpc.aio.Channel) -> ads_pb2_grpc.AggregatedDiscoveryServiceStub:
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


async def eventually(condition: Callable[[], bool], within: float = TIMEOUT) -> float:
    """Wait (bounded) for `condition`; return how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not condition():
        assert loop.time() - started < within, "condition never held"
        await asyncio.sleep(0.01)
    return loop.time() - started


async def test_a_request_larger_than_max_request_bytes_is_refused_by_grpc() -> None:
    limit = 16 * 1024
    servicer = servicer_with(ServerLimits(max_request_bytes=limit))
    async with real_server(servicer) as channel:
        bystander = stub(channel).DeltaAggregatedResources()
        await bystander.write(delta_request(CLUSTER, node_id=NODE))
        await bystander.read()

        fits = stub(channel).StreamAggregatedResources()
        await fits.write(with_node(request(CLUSTER), limit - 64))
        assert sorted(names_in(await fits.read())) == ["a", "b"]

        too_big = stub(channel).StreamAggregatedResources()
        await too_big.write(with_node(request(CLUSTER), limit + 64))
        assert await too_big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert str(limit) in await too_big.details()

        servicer.cache.set_snapshot(
            NODE, evolve(current(servicer, NODE), "v2", cluster("c"), load_assignment("c", 1))
        )
        assert [r.name for r in (await bystander.read()).resources] == ["c"]
        bystander.cancel()
        fits.cancel()


async def test_streams_beyond_max_streams_per_peer_are_refused_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "xds_server.server")
    servicer = servicer_with(ServerLimits(max_streams_per_peer=3))
    async with real_server(servicer) as channel:
        held = []
        for _ in range(3):
            call = stub(channel).StreamAggregatedResources()
            await call.write(request(CLUSTER, node_id=NODE))
            await call.read()
            held.append(call)

        for _ in range(2):
            refused = stub(channel).DeltaAggregatedResources()
            assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = await refused.details()
            assert "max_streams_per_peer" in details
            assert "ipv4:127.0.0.1 already has 3" in details
        assert caplog.text.count("refusing ADS streams from ipv4:127.0.0.1") == 1

        elsewhere = FakeStream(servicer, peer="ipv4:127.0.0.2:40000")
        elsewhere.send(request(CLUSTER, node_id=NODE))
        assert sorted(names_in(await elsewhere.response())) == ["a", "b"]

        held.pop().cancel()
        await eventually(lambda: len(servicer.streams()) == 3)
        again = stub(channel).StreamAggregatedResources()
        await again.write(request(CLUSTER, node_id=NODE))
        assert sorted(names_in(await again.read())) == ["a", "b"]
        registry = servicer.metrics.registry
        assert registry.get_sample_value("xds_streams_refused_total", {"reason": "peer_limit"}) == 2
        for call in [*held, again]:
            call.cancel()


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.1:5000", "ipv4:10.0.0.1"),
        ("ipv6:[::1]:5000", "ipv6:[::1]"),
        ("ipv6:%5B::1%5D:443", "ipv6:%5B::1%5D"),
        ("unix:/run/xds.sock", "unix:/run/xds.sock"),
        ("unix-abstract:xds", "unix-abstract:xds"),
    ],
)
def test_streams_are_counted_per_peer_address_whatever_the_port(peer: str, address: str) -> None:
    assert peer_address(peer) == address


class FreezingRelay:
    """A loopback TCP relay that can go silent without closing: a peer that died
    without a FIN (power loss, a partition), as the server sees it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = asyncio.Event()
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FreezingRelay:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pipe in self._pipes:
            pipe.cancel()
        assert self._server is not None
        self._server.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self._pipes.add(asyncio.create_task(self._pipe(source, sink)))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with suppress(OSError):
            while data := await source.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # silent from now on, until cancelled
                sink.write(data)
                await sink.drain()
        sink.close()


async def test_keepalive_finds_a_peer_that_went_silent_and_keeps_one_that_is_idle() -> None:
    limits = ServerLimits(keepalive_seconds=0.2, keepalive_timeout_seconds=0.3)
    servicer = servicer_with(limits)
    server, port = bind_grpc_server(servicer, "127.0.0.1:0")
    await server.start()
    try:
        async with FreezingRelay(port) as relay:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}")
            call = stub(channel).StreamAggregatedResources()
            await call.write(request(CLUSTER, node_id=NODE))
            await call.read()
            await asyncio.sleep(1.5)  # idle for several keepalive periods: pings answered
            assert len(servicer.streams()) == 1

            relay.frozen.set()
            took = await eventually(lambda: not servicer.streams())
            assert took < 2.0, f"a silent peer was found only after {took:.2f} s"
            call.cancel()
            await channel.close()
    finally:
        await server.stop(0)


# --- the request queue and the send buffer of one stream ------------------------------------


async def test_a_stuck_stream_reads_at_most_request_queue_requests_ahead() -> None:
    servicer = servicer_with(ServerLimits(request_queue=4))
    stream = FakeStream(servicer)
    stream.context.stop_reading()
    stream.send(request(CLUSTER, node_id=NODE))
    for _ in range(200):
        stream.send(request(CLUSTER))
    await eventually(lambda: stream.context.writes_started == 1)
    for _ in range(50):
        await asyncio.sleep(0)  # the reader runs as far ahead as it may
    # Read: two handled before the write stalled, one taken by the loop's next get,
    # four queued, one in the reader's hand.  The rest wait in gRPC (flow control).
    read = 201 - stream.requests.pending()
    assert read <= 4 + 4, f"{read} requests read ahead of a stuck stream"

    stream.context.resume_reading()
    status = await stream.settled()  # every request handled in the end, none lost
    assert status.requests == 201


def padded_clusters(version: str, count: int = 200, padding: int = 10_000) -> Snapshot:
    """`count` static clusters of about `padding` bytes each, all new in each version:
    every push is a CDS response of `count * padding` bytes (2 MB by default)."""
    return snapshot(
        version,
        *(
            cluster_pb2.Cluster(
                name=f"c{index}",
                type=cluster_pb2.Cluster.STATIC,
                alt_stat_name=f"{version}-" + "s" * padding,
            )
            for index in range(count)
        ),
    )


async def push_until(
    servicer: AggregatedDiscoveryServer, done: Callable[[], bool], *, within: float
) -> int:
    """Publish a new padded snapshot for NODE every 50 ms until `done()`; the count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pushes = 0
    while not done() and loop.time() < deadline:
        pushes += 1
        servicer.cache.set_snapshot(NODE, padded_clusters(f"v{pushes}"))
        await asyncio.sleep(0.05)
    return pushes


async def test_a_proxy_that_takes_no_response_for_stuck_stream_seconds_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """And until gRPC has let go of it (the unread responses, then the status),
    it still counts as one of its peer's streams."""
    caplog.set_level(logging.WARNING, "xds_server.server")
    limits = ServerLimits(stuck_stream_seconds=0.5, max_streams_per_peer=1)
    servicer = AggregatedDiscoveryServer(SnapshotCache(), limits=limits)
    servicer.cache.set_snapshot(NODE, padded_clusters("v0"))
    async with real_server(servicer) as channel:
        stuck = stub(channel).StreamAggregatedResources()
        await stuck.write(request(CLUSTER, node_id=NODE))  # and reads nothing for now
        await eventually(lambda: len(servicer.streams()) == 1)
        started = asyncio.get_running_loop().time()
        await push_until(servicer, lambda: not servicer.streams(), within=10.0)
        took = asyncio.get_running_loop().time() - started
        assert not servicer.streams(), "the stuck stream was kept"
        assert took < 5.0
        assert "took no response for 0.5 s" in caplog.text

        meanwhile = stub(channel).StreamAggregatedResources()
        assert await meanwhile.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_peer" in await meanwhile.details()

        with suppress(grpc.aio.AioRpcError):
            async for _ in stuck:  # what gRPC had buffered, then the status
                pass
        assert await stuck.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stuck_stream_seconds" in await stuck.details()

        async def served_again() -> bool:
            call = stub(channel).StreamAggregatedResources()
            await call.write(request(CLUSTER, node_id=NODE))
            with suppress(grpc.aio.AioRpcError):
                await call.read()
                call.cancel()
                return True
            return False

        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not await served_again():
            assert loop.time() < deadline, "the peer never got its stream back"
            await asyncio.sleep(0.05)


async def test_a_proxy_that_reads_slowly_is_not_disconnected() -> None:
    servicer = AggregatedDiscoveryServer(
        SnapshotCache(), limits=ServerLimits(stuck_stream_seconds=0.5)
    )
    servicer.cache.set_snapshot(NODE, padded_clusters("v0"))
    async with real_server(servicer) as channel:
        slow = stub(channel).StreamAggregatedResources()
        await slow.write(request(CLUSTER, node_id=NODE))
        received = 0

        async def read_slowly() -> None:
            nonlocal received
            async for _ in slow:
                received += 1
                await asyncio.sleep(0.1)

        reader = asyncio.create_task(read_slowly())
        pushes = await push_until(servicer, lambda: False, within=1.5)
        assert servicer.streams(), "a proxy that keeps reading was disconnected"
        assert received >= 5
        assert servicer.streams()[0].types[CLUSTER].responses < pushes + 1
        reader.cancel()
        slow.cancel()


async def test_pushes_to_a_stream_that_stopped_reading_coalesce_into_the_latest_state(
    delta: bool,
) -> None:
    """While one response waits for the proxy, fifty snapshots come and go; once it
    reads again it gets a handful of responses that leave it holding the last one."""
    servicer = new_servicer((NODE, mesh("v0")))
    stream = FakeStream(servicer, delta=delta)
    if delta:
        stream.send(delta_request(CLUSTER, node_id=NODE))
        stream.send(delta_request(ENDPOINT, ["a", "b"]))
    else:
        stream.send(request(CLUSTER, node_id=NODE))
        stream.send(request(ENDPOINT, "a", "b"))
    await stream.settled()
    while not stream.context.written.empty():
        stream.context.written.get_nowait()

    stream.context.stop_reading()
    before = stream.context.writes_started
    for generation in range(1, 51):
        servicer.cache.set_snapshot(
            NODE,
            evolve(
                current(servicer, NODE),
                f"v{generation}",
                cluster("a", timeout_s=generation),
                load_assignment("a", 9000 + generation),
                load_assignment("b", 9500 + generation),
            ),
        )
        for _ in range(5):
            await asyncio.sleep(0)
    assert stream.context.writes_started - before == 1, "responses were queued, not coalesced"

    stream.context.resume_reading()
    await stream.settled()
    responses = []
    while not stream.context.written.empty():
        responses.append(stream.context.written.get_nowait())
    assert len(responses) <= 5, f"{len(responses)} responses for 50 pushes"
    final = current(servicer, NODE)
    held: dict[tuple[str, str], Any] = {}
    for response in responses:
        for packed in getattr(response, "resources", ()):
            wrapped = packed.resource if delta else packed
            name = packed.name if delta else names_in(_one(response, packed))[0]
            held[response.type_url, name] = wrapped
    for type_url, name in [(CLUSTER, "a"), (ENDPOINT, "a"), (ENDPOINT, "b")]:
        assert held[type_url, name] == final.get(type_url)[name].any, (type_url, name)


def _one(response: Any, packed: Any) -> Any:
    """A SotW response holding only `packed`, for `names_in`."""
    return discovery_pb2.DiscoveryResponse(type_url=response.type_url, resources=[packed])


async def test_closing_the_server_ends_a_stuck_stream_at_once() -> None:
    servicer = servicer_with(ServerLimits(stuck_stream_seconds=60))
    stream = FakeStream(servicer)
    stream.context.stop_reading()
    stream.send(request(CLUSTER, node_id=NODE))
    await eventually(lambda: stream.context.writes_started == 1)
    servicer.close()
    assert await asyncio.wait_for(stream.aborted(), 1.0) is None  # status OK, no waiting


# --- the names a peer may make the server walk ---------------------------------------------


@pytest.mark.parametrize(
    ("charges", "pauses"),
    [
        pytest.param([(0.0, 500), (0.0, 500)], [0.0, 0.0], id="within the burst: no wait"),
        pytest.param([(0.0, 1000), (0.0, 500)], [0.0, 0.5], id="past it: wait off the debt"),
        pytest.param([(0.0, 1000), (0.5, 500)], [0.0, 0.0], id="refilled at the rate"),
        pytest.param([(0.0, 1000), (10.0, 1500)], [0.0, 0.5], id="saved up to the burst only"),
        pytest.param([(0.0, 0), (0.0, 0)], [0.0, 0.0], id="nothing walked, nothing charged"),
    ],
)
def test_a_peer_has_a_budget_of_names_per_second(
    charges: list[tuple[float, int]], pauses: list[float]
) -> None:
    now = [0.0]
    budget = NameBudget(rate=1000, burst=1000, clock=lambda: now[0])
    taken = []
    for at, names in charges:
        now[0] = at
        taken.append(budget.charge(names))
    assert taken == pytest.approx(pauses)


async def test_a_peer_flooding_subscription_changes_waits_and_others_do_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "xds_server.server")
    limits = ServerLimits(max_names_per_second=2000, max_names_per_request=1000)
    servicer = servicer_with(limits)
    loop = asyncio.get_running_loop()
    flood = FakeStream(servicer)
    flood.send(request(ENDPOINT, *names(1000, "a"), node_id=NODE))
    for round in range(1, 4):  # each a different list of 1,000 names: 4,000 in all
        flood.send(request(ENDPOINT, *names(1000, f"r{round}-")))
    started = loop.time()

    elsewhere = FakeStream(servicer, peer="ipv4:127.0.0.2:40000")
    elsewhere.send(request(ENDPOINT, *names(1000, "b"), node_id=NODE))
    await elsewhere.settled()
    assert loop.time() - started < 0.3, "another peer waited for the flooding one"

    await flood.settled()
    # 2,000 names free (the burst); the third request leaves the peer 1,000 names
    # in debt, so the fourth is taken half a second later.
    assert loop.time() - started >= 0.45
    assert servicer.metrics.registry.get_sample_value("xds_requests_paused_total") >= 1
    assert caplog.text.count("past its budget of 2000 resource names per second") == 1

    # An ACK that repeats an unchanged list walks nothing and waits for nothing.
    await asyncio.sleep(0.6)  # the fourth request's debt is paid off
    acks_from = loop.time()
    for _ in range(20):
        flood.send(request(ENDPOINT, *names(1000, "r3-")))
    await flood.settled()
    assert loop.time() - acks_from < 0.3


# --- what streams leave behind ---------------------------------------------------------------


async def test_streams_of_strangers_leave_nothing_behind_when_they_go(delta: bool) -> None:
    """Clients may connect under ever new node ids that never get a snapshot."""
    servicer = new_servicer((NODE, mesh()))
    make = delta_request if delta else request
    strangers = [FakeStream(servicer, delta=delta) for _ in range(50)]
    for index, stream in enumerate(strangers):
        stream.send(make(CLUSTER, node_id=f"stranger-{index}"))
    for stream in strangers:
        await stream.settled()
    await eventually(lambda: servicer.cache.watched_nodes() == 50)
    for stream in strangers:
        await stream.end()
    assert servicer.cache.watched_nodes() == 0
    assert (servicer.streams(), servicer.connected_nodes()) == ([], [])


async def test_a_nack_message_is_kept_and_logged_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "xds_server.server")
    servicer = new_servicer((NODE, mesh()))
    stream = FakeStream(servicer)
    stream.send(request(CLUSTER, node_id=NODE))
    response = await stream.response()
    huge = "cluster 'a' rejected: " + "x" * 1_000_000
    stream.send(request(CLUSTER, nonce=response.nonce, error=huge))
    status = await stream.settled()
    nack = status.types[CLUSTER].last_nack
    assert nack is not None
    assert len(nack.message) == MAX_NACK_MESSAGE_CHARS
    assert nack.message.startswith("cluster 'a' rejected")
    assert nack.resources == ("a",)
    assert max(len(record.getMessage()) for record in caplog.records) < 2 * MAX_NACK_MESSAGE_CHARS


async def test_unserved_types_are_logged_a_bounded_number_of_times(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "xds_server.server")
    stream = FakeStream(new_servicer((NODE, mesh())))
    stream.send(request(PREFIX + "unserved.T0", node_id=NODE))
    for index in range(1, 3 * MAX_REMEMBERED_UNSERVED_TYPES):
        stream.send(request(PREFIX + f"unserved.T{index}"))
        stream.send(request(PREFIX + f"unserved.T{index}"))
    await stream.silent()
    stream.send(request(CLUSTER))
    assert sorted(names_in(await stream.response())) == ["a", "b"]
    assert caplog.text.count("unsupported type") == MAX_REMEMBERED_UNSERVED_TYPES


# --- the limits themselves ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_streams_per_peer", 0, "must be positive"),
        ("request_queue", -1, "must be positive"),
        ("stuck_stream_seconds", 0.0, "must be positive"),
        ("max_request_bytes", 1.5, "must be an integer"),
        ("keepalive_seconds", "30", "must be a number"),
        ("max_names_per_request", True, "must be a number"),
    ],
)
def test_limits_that_make_no_sense_are_refused_naming_the_field(
    field: str, value: Any, says: str
) -> None:
    with pytest.raises(ValueError, match=f"ServerLimits.{field} {says}"):
        ServerLimits(**{field: value})


def test_the_grpc_server_enforces_the_servicers_limits() -> None:
    limits = ServerLimits(max_request_bytes=1234, keepalive_seconds=7, max_streams_per_connection=9)
    options = dict(limits.grpc_options())
    assert options["grpc.max_receive_message_length"] == 1234
    assert options["grpc.max_concurrent_streams"] == 9
    assert options["grpc.keepalive_time_ms"] == 7000
    # Without a ping timeout, gRPC waits 60 s for a ping ack whatever the keepalive timeout.
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]
