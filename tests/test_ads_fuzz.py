"""Protocol fuzzing of the ADS port: hostile clients beside healthy proxies, on a real server.

Three layers, from exact to wide:

* A corpus of the hostile conversations the issue names (unknown type URLs,
  nonces never sent, ACKs of versions never sent, SotW misuse across types,
  Delta subscribing and unsubscribing a name at once, wildcard flips, a
  half-close, garbage on the wire): each gets its status or is tolerated, and
  a legitimate request on the same stream is still answered correctly.
* A seeded fuzzer (fixed seed; a budget of 300 exchanges that `XDS_FUZZ_BUDGET`
  changes, 3,000 behind the `slow` marker) in a process of its own, against a
  full control plane on loopback with a real Envoy sidecar and healthy SotW
  and Delta clients attached, while a manifest edit is pushed every quarter
  second.  Every exchange must end in a status other than INTERNAL/UNKNOWN or
  be tolerated; nothing may escape the servicer; the healthy proxies see every
  edit as fast as without the fuzzer; nothing is left behind per stream or node.
* A proxy that never reads, with pushes going on, beside twenty healthy ones:
  its pushes coalesce, it is disconnected after `stuck_stream_seconds`, the
  others' p99 stays under 300 ms and memory stays bounded.

The figures (exchanges, outcomes, latencies, RSS) are printed; run with `-s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from ads_fakes import (
    FakeStream,
    cluster,
    current,
    delta_request,
    load_assignment,
    mesh,
    names_in,
    new_servicer,
    real_server,
    request,
    snapshot,
)
from e2e_mesh import (
    TEST_CA_DIR,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_sidecar,
    write_documents,
)
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.server import AggregatedDiscoveryServer, ServerLimits, bind_grpc_server
from xds_server.settings import SecuritySettings

NODE = "proxy-1"
PREFIX = "type.googleapis.com/"
RUNTIME = PREFIX + "envoy.service.runtime.v3.Runtime"
SERVER_FAULTS = {"INTERNAL", "UNKNOWN"}
"""Statuses that would mean an exception escaped the servicer."""


def rss_mb() -> float:
    """This process's resident set size, in MiB (server and clients share it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# --- the corpus: each hostile conversation the issue names, and what it gets ---------------


async def first_cds(stream: FakeStream, delta: bool) -> Any:
    stream.send((delta_request if delta else request)(CLUSTER, node_id=NODE))
    return await stream.response()


async def unknown_type_urls(stream: FakeStream, delta: bool) -> None:
    make = delta_request if delta else request
    stream.send(make(RUNTIME, node_id=NODE))
    stream.send(make(PREFIX + "no.such.Type"))
    stream.send(make(PREFIX + "ünïcødé.Type"))
    await stream.silent()
    assert (await first_cds(stream, delta)).type_url == CLUSTER  # the stream goes on


async def nonces_never_sent(stream: FakeStream, delta: bool) -> None:
    await first_cds(stream, delta)
    if delta:
        stream.send(delta_request(CLUSTER, nonce="424242"))
        stream.send(delta_request(CLUSTER, nonce="424243", error="rejected, says who?"))
    else:
        stream.send(request(CLUSTER, nonce="424242", version="v1"))
        stream.send(request(CLUSTER, nonce="424243", error="rejected, says who?"))
    status = await stream.silent()
    assert (status.types[CLUSTER].acks, status.types[CLUSTER].nacks) == (0, 0)


async def acks_of_versions_never_sent(stream: FakeStream, delta: bool) -> None:
    response = await first_cds(stream, delta)
    if delta:  # Delta ACKs carry no version: a bogus system version is not theirs to send
        stream.send(delta_request(CLUSTER, nonce=response.nonce))
        assert (await stream.silent()).types[CLUSTER].acks == 1
        return
    stream.send(request(CLUSTER, nonce=response.nonce, version="never-sent"))
    status = await stream.silent()
    assert status.types[CLUSTER].acks == 0
    assert status.types[CLUSTER].acked_version != "never-sent"
    stream.send(request(CLUSTER, nonce=response.nonce, version=response.version_info))
    assert (await stream.silent()).types[CLUSTER].acks == 1  # the real ACK still counts


async def sotw_misuse_across_types(stream: FakeStream, delta: bool) -> None:
    assert not delta
    stream.send(request(ENDPOINT, "a", node_id=NODE))  # EDS before CDS
    assert names_in(await stream.response()) == ["a"]
    eds = current(stream.servicer, NODE).get(ENDPOINT)["a"]
    cds = await first_cds(stream, delta)
    assert names_in(await stream.response()) == ["a"]  # resent: its cluster was (re)sent
    # An EDS request answering the CDS nonce, and a CDS one answering nothing of its own.
    stream.send(request(ENDPOINT, "a", "b", nonce=cds.nonce, version=cds.version_info))
    assert names_in(await stream.response()) == ["b"]
    stream.send(request(CLUSTER, nonce="1", version=eds.version))
    status = await stream.silent()
    assert status.types[CLUSTER].acks == 0
    assert status.types[ENDPOINT].names == ("a", "b")


async def subscribe_and_unsubscribe_at_once(stream: FakeStream, delta: bool) -> None:
    assert delta
    stream.send(delta_request(ENDPOINT, ["a", "b"], ["a"], node_id=NODE))
    response = await stream.response()
    assert [resource.name for resource in response.resources] == ["b"]
    assert (await stream.silent()).types[ENDPOINT].names == ("b",)
    stream.send(delta_request(ENDPOINT, ["a"], nonce=response.nonce))
    assert [resource.name for resource in (await stream.response()).resources] == ["a"]


async def wildcard_flips(stream: FakeStream, delta: bool) -> None:
    if delta:
        stream.send(delta_request(CLUSTER, ["*"], ["*"], node_id=NODE))
        for _ in range(5):
            stream.send(delta_request(CLUSTER, ["*"]))
            stream.send(delta_request(CLUSTER, [], ["*"]))
        stream.send(delta_request(CLUSTER, ["*"]))
    else:
        stream.send(request(CLUSTER, "*", node_id=NODE))
        for _ in range(5):
            stream.send(request(CLUSTER, "a"))
            stream.send(request(CLUSTER, "*"))
    await stream.settled()
    received: set[str] = set()
    while not stream.context.written.empty():
        response = stream.context.written.get_nowait()
        if delta:
            received |= {resource.name for resource in response.resources}
            received -= set(response.removed_resources)
        else:
            received = set(names_in(response))
    assert received == {"a", "b"}  # it ends where it asked to be: every cluster


async def half_close(stream: FakeStream, delta: bool) -> None:
    await first_cds(stream, delta)
    await stream.end()  # the handler returns: status OK


CORPUS = [
    pytest.param(unknown_type_urls, False, id="sotw: unknown type URLs"),
    pytest.param(unknown_type_urls, True, id="delta: unknown type URLs"),
    pytest.param(nonces_never_sent, False, id="sotw: nonces never sent"),
    pytest.param(nonces_never_sent, True, id="delta: nonces never sent"),
    pytest.param(acks_of_versions_never_sent, False, id="sotw: ACK of a version never sent"),
    pytest.param(acks_of_versions_never_sent, True, id="delta: ACK without a version"),
    pytest.param(sotw_misuse_across_types, False, id="sotw: types interleaved, nonces mixed"),
    pytest.param(
        subscribe_and_unsubscribe_at_once, True, id="delta: subscribe+unsubscribe at once"
    ),
    pytest.param(wildcard_flips, False, id="sotw: wildcard flips"),
    pytest.param(wildcard_flips, True, id="delta: wildcard flips"),
    pytest.param(half_close, False, id="sotw: half-close"),
    pytest.param(half_close, True, id="delta: half-close"),
]


@pytest.mark.parametrize(("conversation", "delta"), CORPUS)
async def test_each_hostile_conversation_is_tolerated_with_the_protocol_kept(
    conversation: Callable[[FakeStream, bool], Any], delta: bool
) -> None:
    """Each conversation checks what the protocol requires of it; the stream is never
    aborted for it, and another stream of the same node is served as usual."""
    servicer = new_servicer((NODE, mesh()))
    stream = FakeStream(servicer, delta=delta)
    await conversation(stream, delta)
    if stream.task.done():  # only a half-close ends it: with status OK
        assert await stream.aborted() is None
    bystander = FakeStream(servicer, delta=not delta)
    assert (await first_cds(bystander, not delta)).type_url == CLUSTER


@pytest.mark.parametrize(
    ("method", "payload", "says"),
    [
        ("StreamAggregatedResources", b"\xff\xfe\x00 not a protobuf", "not a valid Discovery"),
        ("DeltaAggregatedResources", b"\x0a\xff\xff\xff\xff\x0f", "not a valid DeltaDiscovery"),
        # type_url (field 4) holding invalid UTF-8
        ("StreamAggregatedResources", b"\x22\x03\xff\xfe\xfd", "not a valid Discovery"),
        # a valid request cut short
        (
            "StreamAggregatedResources",
            request(CLUSTER, "a", node_id=NODE).SerializeToString()[:-3],
            "not a valid Discovery",
        ),
        ("DeltaAggregatedResources", b"", "must carry a node"),  # an empty, valid message
    ],
)
async def test_bytes_that_are_not_a_request_end_the_stream_with_invalid_argument(
    method: str, payload: bytes, says: str
) -> None:
    servicer = new_servicer((NODE, mesh()))
    async with real_server(servicer) as channel:
        call = raw_call(channel, method)
        await call.write(payload)
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in await call.details()
        registry = servicer.metrics.registry
        assert registry.get_sample_value("xds_stream_errors_total", {"code": "INTERNAL"}) is None


def raw_call(channel: grpc.aio.Channel, method: str) -> Any:
    """A call that sends bytes as they are on an ADS method."""
    return channel.stream_stream(
        f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )()


# --- hostile clients, generated from a seed ---------------------------------------------------

CALL_ENDED = (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError)
"""What a client call raises once the server has ended it."""
CLIENT_WRITE_RACE = "Internal error from Core"
"""What grpc.aio's client reports, instead of the server's status, when a write is
in flight as the server ends the call and a read receives the status (checked by
hand: the server sent INVALID_ARGUMENT)."""

TYPES = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET]


@dataclass
class Seen:
    """What one hostile stream has received, to echo back (rightly or wrongly)."""

    nonces: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def take(self, response: Any) -> None:
        self.nonces[response.type_url] = response.nonce
        self.versions[response.type_url] = getattr(response, "version_info", "")
        if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
            self.names += [resource.name for resource in response.resources]


class Mutator:
    """Draws hostile requests from one seeded `random.Random`."""

    def __init__(self, rng: random.Random, node_id: str) -> None:
        self.rng = rng
        self.node_id = node_id
        self.seen = Seen()

    def text(self, longest: int = 40) -> str:
        alphabet = "abc-./|*:_ 0123456789ñ☃\u200b"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, longest)))

    def type_url(self) -> str:
        rng = self.rng
        return rng.choice(
            [
                *TYPES,
                *TYPES,
                *TYPES,
                RUNTIME,
                PREFIX + self.text(),
                "",
                "garbage/" + self.text(),
                PREFIX,
                PREFIX + "x" * rng.choice([900, 2000]),
                PREFIX + "envoy.config.cluster.v3.Cluster ",
            ]
        )

    def node(self, first: bool) -> base_pb2.Node | None:
        rng = self.rng
        choice = rng.random()
        if not first and choice < 0.6:
            return None
        node = base_pb2.Node(id=self.node_id, cluster="fuzz")
        if choice < 0.75:
            return node
        kind = rng.choice(["long", "control", "empty", "other", "metadata", "deep", "wrong", "big"])
        if kind == "long":
            node.id = "n" * rng.choice([1025, 5000])
        elif kind == "control":
            node.id = rng.choice(["a\nb", "a\x00b", "a\u2028b", "a\x1b[31mred"])
        elif kind == "empty":
            node.id = ""
        elif kind == "other":
            node.id = f"{self.node_id}-changed"
        elif kind == "metadata":
            node.metadata.update({f"k{i}": self.text(20) for i in range(rng.randint(1, 3000))})
        elif kind == "deep":
            inner = struct_pb2.Struct()
            for _ in range(rng.randint(20, 140)):
                outer = struct_pb2.Struct()
                outer.fields["x"].struct_value.CopyFrom(inner)
                inner = outer
            node.metadata.CopyFrom(inner)
        elif kind == "wrong":
            node.metadata.update(
                {"INSTANCE_IP": 12345, "OUTBOUND_PORT": "banana", "LABELS": "x", "NAMESPACE": 7}
            )
        else:
            node.user_agent_name = "u" * rng.choice([200_000, 300_000])
        return node

    def names(self) -> list[str]:
        rng = self.rng
        kind = rng.choice(["none", "star", "known", "random", "dups", "long", "many", "over"])
        known = self.seen.names or ["a"]
        if kind == "none":
            return []
        if kind == "star":
            return ["*"] + ([self.text()] if rng.random() < 0.5 else [])
        if kind == "known":
            return rng.sample(known, min(len(known), rng.randint(1, 3)))
        if kind == "random":
            return [self.text() for _ in range(rng.randint(1, 20))]
        if kind == "dups":
            return [self.text(8)] * rng.randint(2, 50)
        if kind == "long":
            return ["n" * rng.choice([1025, 10_000])]
        if kind == "many":
            return [f"n{i}" for i in range(rng.randint(1000, 5000))]
        return [f"n{i}" for i in range(100_001)]  # past max_names_per_request

    def nonce(self) -> str:
        rng = self.rng
        own = list(self.seen.nonces.values())
        return rng.choice(["", "", "0", "999999", "n" * 1025, self.text(), *own, *own])

    def version(self) -> str:
        own = list(self.seen.versions.values())
        return self.rng.choice(["", "v-never-sent", "v" * 1025, *own, *own])

    def error(self) -> status_pb2.Status | None:
        if self.rng.random() > 0.2:
            return None
        message = self.rng.choice(["rejected", "x" * 100_000, self.text(200), ""])
        return status_pb2.Status(code=self.rng.randint(0, 16), message=message)

    def sotw(self, first: bool) -> discovery_pb2.DiscoveryRequest:
        message = discovery_pb2.DiscoveryRequest(
            type_url=self.type_url(),
            resource_names=self.names(),
            version_info=self.version(),
            response_nonce=self.nonce(),
        )
        self._decorate(message, first)
        return message

    def delta(self, first: bool) -> discovery_pb2.DeltaDiscoveryRequest:
        rng = self.rng
        subscribe = self.names()
        unsubscribe = rng.choice([[], [], self.names(), subscribe, ["*"]])
        message = discovery_pb2.DeltaDiscoveryRequest(
            type_url=self.type_url(),
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            response_nonce=self.nonce(),
        )
        if rng.random() < 0.2:
            for name in self.names()[:50]:
                message.initial_resource_versions[name] = self.version()
        self._decorate(message, first)
        return message

    def _decorate(self, message: Any, first: bool) -> None:
        node = self.node(first)
        if node is not None:
            message.node.CopyFrom(node)
        error = self.error()
        if error is not None:
            message.error_detail.CopyFrom(error)

    def garbage(self) -> bytes:
        rng = self.rng
        valid = self.sotw(True).SerializeToString()
        return rng.choice(
            [
                rng.randbytes(rng.randint(1, 2000)),
                valid[: rng.randint(0, max(0, len(valid) - 1))],
                valid + rng.randbytes(rng.randint(1, 50)),
                b"\x22\x03\xff\xfe\xfd",
                b"\x12" + b"\xff" * 10,
                b"\x00" * rng.randint(1, 100),
            ]
        )


@dataclass
class FuzzReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    details: dict[str, list[str]] = field(default_factory=dict)
    """A few status details per code, to tell what happened."""
    kinds: Counter[str] = field(default_factory=Counter)
    responses: int = 0

    @property
    def exchanges(self) -> int:
        return sum(self.kinds.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "exchanges": self.exchanges,
            "streams": sum(self.outcomes.values()),
            "kinds": dict(self.kinds),
            "outcomes": dict(self.outcomes),
            "details": self.details,
            "responses": self.responses,
        }


class HostileClients:
    """Runs seeded hostile exchanges against an ADS port, several at a time."""

    KINDS = (
        ["sotw"] * 30
        + ["delta"] * 30
        + ["garbage"] * 10
        + ["never_reads"] * 8
        + ["burst"] * 3
        + ["oversized"] * 2
        + ["flood"] * 2
    )

    def __init__(self, channels: list[grpc.aio.Channel], seed: int) -> None:
        self.channels = channels
        self.seed = seed
        self.report = FuzzReport()

    async def run(self, budget: int, seconds: float, workers: int = 6) -> FuzzReport:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        indices: Iterator[int] = iter(range(budget))

        async def worker() -> None:
            for index in indices:
                if loop.time() > deadline:
                    return
                await self.exchange(index)

        await asyncio.gather(*(worker() for _ in range(workers)))
        return self.report

    async def exchange(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-{index}")
        kind = rng.choice(self.KINDS)
        self.report.kinds[kind] += 1
        channel = self.channels[index % len(self.channels)]
        mutator = Mutator(rng, f"fuzz-{index}.default")
        if kind == "burst":
            await self._burst(channel, mutator)
        elif kind == "garbage":
            call = raw_call(
                channel, rng.choice(["StreamAggregatedResources", "DeltaAggregatedResources"])
            )
            await self._conversation(call, [mutator.garbage()], rng, mutator)
        elif kind == "oversized":
            call = stub(channel).StreamAggregatedResources()
            huge = request(CLUSTER, *(f"{i:08d}" * 50 for i in range(11_000)), node_id="x")
            await self._conversation(call, [huge], rng, mutator)
        elif kind == "flood":  # large subscription changes back to back (the name budget)
            call = stub(channel).DeltaAggregatedResources()
            messages = [
                delta_request(
                    ENDPOINT,
                    (f"flood-{index}-{round}-{i}" for i in range(rng.randint(10_000, 40_000))),
                    node_id=mutator.node_id if round == 0 else None,
                )
                for round in range(rng.randint(3, 8))
            ]
            await self._conversation(call, messages, rng, mutator)
        elif kind == "never_reads":
            call = stub(channel).DeltaAggregatedResources()
            with contextlib.suppress(*CALL_ENDED):
                await call.write(delta_request(CLUSTER, node_id=mutator.node_id))
                await call.write(delta_request(ENDPOINT, ["*"]))
            await asyncio.sleep(rng.uniform(0.2, 1.5))  # pushes go on meanwhile
            self.report.outcomes[await self._end(call)] += 1
        else:
            delta = kind == "delta"
            call = (
                stub(channel).DeltaAggregatedResources
                if delta
                else stub(channel).StreamAggregatedResources
            )()
            make = mutator.delta if delta else mutator.sotw
            messages = [make(first=position == 0) for position in range(rng.randint(1, 6))]
            if rng.random() < 0.7:  # mostly start as a real proxy would, to get further in
                valid = (delta_request if delta else request)(CLUSTER, node_id=mutator.node_id)
                messages.insert(0, valid)
            await self._conversation(call, messages, rng, mutator)

    async def _conversation(
        self,
        call: Any,
        messages: list[Any],
        rng: random.Random,
        mutator: Mutator,
    ) -> None:
        """Send `messages` (reading now and then), end in a random way, record the outcome.

        Responses are read by a task of their own: cancelling a pending `read()`
        would cancel the whole call, so a read is never given a timeout.
        """
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.create_task(self._read_all(call, inbox, mutator))
        try:
            for message in messages:
                await call.write(message)
                if rng.random() < 0.5:
                    await self._next(inbox, 0.1)
            ending = rng.choice(["read", "read", "half_close", "cancel", "abandon"])
            if ending == "read":
                while await self._next(inbox, 0.15):
                    pass
            elif ending == "half_close":
                await call.done_writing()
                while await self._next(inbox, 1.0):
                    pass
            elif ending == "abandon":
                await asyncio.sleep(rng.uniform(0.05, 0.5))
        except CALL_ENDED:
            pass  # the call ended: its status is read below
        self.report.outcomes[await self._end(call)] += 1
        reader.cancel()

    async def _read_all(self, call: Any, inbox: asyncio.Queue[Any], mutator: Mutator) -> None:
        with contextlib.suppress(*CALL_ENDED):
            while (response := await call.read()) is not grpc.aio.EOF:
                self.report.responses += 1
                if not isinstance(response, bytes):
                    mutator.seen.take(response)
                inbox.put_nowait(response)
        inbox.put_nowait(None)

    async def _next(self, inbox: asyncio.Queue[Any], within: float) -> bool:
        """Whether a response came `within` seconds (False once the call ended)."""
        try:
            return await asyncio.wait_for(inbox.get(), within) is not None
        except TimeoutError:
            return False

    async def _end(self, call: Any) -> str:
        """The call's status code name, or "tolerated" if it was still open (then cancel it)."""
        await asyncio.sleep(0.02)
        if not call.done():
            call.cancel()
            return "tolerated"
        code = str((await call.code()).name)
        details = await call.details()
        if code == "INTERNAL" and details == CLIENT_WRITE_RACE:
            code = "INTERNAL (client side: a write raced the status)"
        shown = self.report.details.setdefault(code, [])
        if len(shown) < 3 and details[:120] not in shown:
            shown.append(details[:120])
        return code

    async def _burst(self, channel: grpc.aio.Channel, mutator: Mutator) -> None:
        calls = [stub(channel).StreamAggregatedResources() for _ in range(40)]
        for call in calls:
            with contextlib.suppress(*CALL_ENDED):  # refused past max_streams_per_peer
                await call.write(request(CLUSTER, node_id=mutator.node_id))
        await asyncio.sleep(0.2)
        for call in calls:
            self.report.outcomes[await self._end(call)] += 1


def stub(channel: grpc.aio.Channel) -> ads_pb2_grpc.AggregatedDiscoveryServiceStub:
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


# --- well-behaved clients, to show that the hostile ones cost them nothing ------------------


def _unpack(packed: Any, message_type: type[Any]) -> Any:
    message = message_type()
    packed.Unpack(message)
    return message


class HealthyProxy:
    """A well-behaved ADS client: every cluster, then the endpoints of each EDS cluster;
    it ACKs every response and notes when it first held each endpoint address."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, *, delta: bool) -> None:
        self.node_id = node_id
        self.delta = delta
        methods = stub(channel)
        self.call = (
            methods.DeltaAggregatedResources() if delta else methods.StreamAggregatedResources()
        )
        self.first_seen: dict[str, float] = {}
        self.responses = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> HealthyProxy:
        self.task = asyncio.create_task(self._run())
        return self

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first = (delta_request if self.delta else request)(CLUSTER, node_id=self.node_id)
        await self.call.write(first)
        endpoints: set[str] = set()
        while (response := await self.call.read()) is not grpc.aio.EOF:
            self.responses += 1
            now = loop.time()
            resources = [r.resource if self.delta else r for r in response.resources]
            if response.type_url == CLUSTER:
                clusters = [_unpack(r, cluster_pb2.Cluster) for r in resources]
                wanted = {
                    c.eds_cluster_config.service_name or c.name
                    for c in clusters
                    if c.type == cluster_pb2.Cluster.EDS
                }
                await self._ack(response, ())
                if self.delta:
                    if wanted - endpoints:
                        await self.call.write(delta_request(ENDPOINT, sorted(wanted - endpoints)))
                elif wanted != endpoints:
                    await self.call.write(request(ENDPOINT, *sorted(wanted)))
                endpoints = wanted if not self.delta else endpoints | wanted
            elif response.type_url == ENDPOINT:
                for packed in resources:
                    assignment = _unpack(packed, endpoint_pb2.ClusterLoadAssignment)
                    for locality in assignment.endpoints:
                        for host in locality.lb_endpoints:
                            address = host.endpoint.address.socket_address.address
                            self.first_seen.setdefault(address, now)
                await self._ack(response, sorted(endpoints))
            else:
                await self._ack(response, ())

    async def _ack(self, response: Any, names: Any) -> None:
        if self.delta:
            await self.call.write(delta_request(response.type_url, nonce=response.nonce))
        else:
            await self.call.write(
                request(
                    response.type_url, *names, version=response.version_info, nonce=response.nonce
                )
            )

    def stop(self) -> None:
        self.call.cancel()
        if self.task is not None:
            self.task.cancel()


class ServerFaults(logging.Handler):
    """Records what would mean the server itself failed: an exception logged with its
    traceback by the ADS server, or any error from gRPC's own machinery."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        from_grpc = record.name.startswith("grpc")
        from_server = record.name.startswith(("xds_server.server", "xds_server.cache"))
        if (from_grpc and record.levelno >= logging.ERROR) or (
            (from_grpc or from_server) and (record.exc_info or "Traceback" in record.getMessage())
        ):
            self.records.append(record)


@contextlib.contextmanager
def watching_for_server_faults() -> Iterator[ServerFaults]:
    handler = ServerFaults()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# --- the fuzz run -------------------------------------------------------------------------------

SEED = 60061
BUDGET = int(os.environ.get("XDS_FUZZ_BUDGET", "300"))
WARM_UP = 30
"""Exchanges run before memory is first measured (gRPC and the allocator settle)."""
WEB = "web"


def live_rss_mb() -> float:
    """RSS once the C allocator has returned what it can (glibc `malloc_trim`).

    Still noisy (gRPC's and the allocator's arenas stay fragmented after a
    burst of multi-megabyte requests), so it gets a loose bound; the Python
    heap is measured exactly by `python_blocks`.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb()


def python_blocks() -> int:
    """Live Python memory blocks after a full collection: grows with anything the
    server keeps per stream or per node once they are gone."""
    gc.collect()
    return sys.getallocatedblocks()


async def hostile_process(port: int, seed: int, budget: int, seconds: float) -> Any:
    """This file run as a script: the hostile clients, in a process of their own, so
    their own work (building 100,000-name requests) does not load the server's loop."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        str(port),
        str(seed),
        str(budget),
        str(seconds),
        str(WARM_UP),
        stdout=asyncio.subprocess.PIPE,
    )


async def hostile_main(port: int, seed: int, budget: int, seconds: float, warm_up: int) -> None:
    """Warm up, say so on stdout, fuzz, print the report as one JSON line."""
    logging.disable(logging.CRITICAL)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    await HostileClients(channels, seed + 1).run(budget=warm_up, seconds=seconds)
    print("warm", flush=True)
    report = await HostileClients(channels, seed).run(budget=budget, seconds=seconds)
    print(json.dumps(report.as_json()), flush=True)
    for channel in channels:
        await channel.close()


async def edit_and_time(
    directory: Path,
    generation: int,
    healthy: list[HealthyProxy],
    envoy_hosts: Callable[[], Any],
    latencies: dict[str, list[float]],
) -> None:
    """Move WEB's second endpoint to a new address; time its arrival at each proxy."""
    loop = asyncio.get_running_loop()
    address = f"10.1.{generation // 200}.{generation % 200 + 1}"
    write_documents(
        directory / "web.yaml",
        service_yaml(WEB),
        slice_yaml(WEB, ["10.0.0.1", address], 8080),
    )
    written = loop.time()
    deadline = written + 5.0
    envoy_latency: float | None = None
    while loop.time() < deadline:
        if envoy_latency is None and address in await envoy_hosts():
            envoy_latency = loop.time() - written
        if envoy_latency is not None and all(address in p.first_seen for p in healthy):
            break
        await asyncio.sleep(0.02)
    for proxy in healthy:
        seen = proxy.first_seen.get(address)
        latencies["clients"].append(float("inf") if seen is None else seen - written)
    latencies["envoy"].append(float("inf") if envoy_latency is None else envoy_latency)


def summary(times: list[float]) -> tuple[int, int, int]:
    """p50, p99 and max, in ms."""
    shown = (statistics.median(times), percentile(times, 0.99), max(times))
    return tuple(round(1000 * value) for value in shown)  # type: ignore[return-value]


@pytest.mark.fuzz
@pytest.mark.envoy
@pytest.mark.parametrize(
    "budget",
    [
        pytest.param(BUDGET, id=f"budget-{BUDGET}"),
        pytest.param(3000, id="budget-3000", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
async def test_hostile_ads_clients_never_hurt_the_server_or_the_healthy_proxies(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: Any, budget: int
) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    api = slice_yaml("api", ["10.0.2.1"], 8080)
    write_documents(directory / "api.yaml", service_yaml("api"), api)
    write_documents(directory / "web.yaml", service_yaml(WEB), slice_yaml(WEB, ["10.0.0.1"], 8080))

    with watching_for_server_faults() as faults:
        # Plaintext, so the hostile clients reach the protocol itself: what an
        # authenticated but hostile proxy (or anyone, with --insecure-xds) can send.
        insecure = SecuritySettings(ca_dir=TEST_CA_DIR, insecure_xds=True)
        async with running_control_plane(directory, free_port, security=insecure) as plane:
            sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)

            async def envoy_hosts() -> set[str]:
                return {
                    host["address"]["socket_address"]["address"]
                    for status in await sidecar.envoy.clusters_async()
                    if f"{WEB}.default" in status["name"]
                    for host in status.get("host_statuses", [])
                }

            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}") for _ in range(4)]
            healthy = [
                HealthyProxy(channel, f"healthy-{index}.default", delta=index % 2 == 1).start()
                for index, channel in enumerate(channels)
            ]
            seconds = max(30.0, budget / 10)  # a cap: the budget is normally spent first
            hostile = await hostile_process(plane.xds_port, SEED, budget, seconds)
            try:
                baseline: dict[str, list[float]] = {"clients": [], "envoy": []}
                under_fuzz: dict[str, list[float]] = {"clients": [], "envoy": []}
                assert hostile.stdout is not None
                assert await asyncio.wait_for(hostile.stdout.readline(), 30) == b"warm\n"
                for generation in range(1, 5):  # the warm-up is over: a quiet moment
                    await edit_and_time(directory, generation, healthy, envoy_hosts, baseline)
                rss_before, blocks_before = live_rss_mb(), python_blocks()

                finished = asyncio.ensure_future(hostile.stdout.readline())
                generation = 4
                while not finished.done():
                    generation += 1
                    await edit_and_time(directory, generation, healthy, envoy_hosts, under_fuzz)
                    await asyncio.sleep(0.25)
                report = json.loads(await finished)
                await asyncio.wait_for(hostile.wait(), 10)
                for _ in range(50):  # the last hostile streams wind down
                    if len(plane.ads.streams()) == len(healthy) + 1:
                        break
                    await asyncio.sleep(0.1)
                rss_after, blocks_after = live_rss_mb(), python_blocks()
            finally:
                if hostile.returncode is None:
                    hostile.kill()
                    await hostile.wait()
                for proxy in healthy:
                    proxy.stop()
                for channel in channels:
                    await channel.close()

            registry = plane.ads.metrics.registry
            server_errors = {
                sample.labels["code"]: sample.value
                for metric in registry.collect()
                if metric.name == "xds_stream_errors"
                for sample in metric.samples
                if sample.name.endswith("_total")
            }
            figures = {
                **report,
                "server-side stream errors": server_errors,
                "requests paused by the name budget": registry.get_sample_value(
                    "xds_requests_paused_total"
                ),
                "edits pushed": generation,
                "live RSS MiB after warm-up / after fuzz": (round(rss_before), round(rss_after)),
                "Python blocks after warm-up / after fuzz": (blocks_before, blocks_after),
                "baseline clients ms p50/p99/max": summary(baseline["clients"]),
                "baseline envoy ms p50/p99/max": summary(baseline["envoy"]),
                "under fuzz clients ms p50/p99/max": summary(under_fuzz["clients"]),
                "under fuzz envoy ms p50/p99/max": summary(under_fuzz["envoy"]),
            }
            print("\nADS fuzz:", *(f"  {key}: {value}" for key, value in figures.items()), sep="\n")

            assert report["exchanges"] >= min(budget, 200), "the fuzzer ran too few exchanges"
            assert not {"INTERNAL", "UNKNOWN"} & set(report["outcomes"]), report["details"]
            assert {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "tolerated"} <= set(
                report["outcomes"]
            )
            assert "INTERNAL" not in server_errors, "an exception escaped a stream"
            assert not faults.records, [r.getMessage()[:300] for r in faults.records[:5]]

            assert all(proxy.alive for proxy in healthy), "a healthy proxy lost its stream"
            assert sidecar.envoy.is_running
            assert max(under_fuzz["clients"] + under_fuzz["envoy"]) < 2.0, figures
            assert len(plane.ads.streams()) == len(healthy) + 1, "hostile streams linger"
            assert set(plane.pipeline.builder.proxies) == {
                sidecar.node_id,
                *(proxy.node_id for proxy in healthy),
            }, "hostile nodes left proxies behind"
            assert plane.cache.watched_nodes() <= len(healthy) + 1
            assert blocks_after - blocks_before < 20_000, figures
            # Loose: after bursts of multi-megabyte requests glibc's and gRPC's arenas stay
            # fragmented (64 MiB was crossed on an unchanged server on a busy machine); a
            # leak per stream or node shows exactly in the Python blocks above.
            assert rss_after - rss_before < 128, figures


# --- a proxy that never reads, beside twenty that do -------------------------------------------


def stuck_mesh(generation: int) -> Any:
    """Cluster `a` and its endpoints (moved on each generation), plus 200 clusters of
    10 kB that all change on each generation: a 2 MB CDS response per push."""
    return snapshot(
        f"v{generation}",
        cluster("a"),
        load_assignment("a", 10_000 + generation),
        *(
            cluster_pb2.Cluster(
                name=f"c{index}",
                type=cluster_pb2.Cluster.STATIC,
                alt_stat_name=f"{generation}-" + "s" * 10_000,
            )
            for index in range(200)
        ),
    )


async def test_a_proxy_that_never_reads_costs_only_its_own_stream() -> None:
    """Three proxies subscribe to a 2 MB CDS and never read it; twenty others follow
    an endpoint that moves every 50 ms.  The stuck ones get a handful of responses
    (the pushes coalesce), are cut after `stuck_stream_seconds`, and the others'
    p99 from publication to receipt stays under 300 ms."""
    stuck_seconds = 3.0
    limits = ServerLimits(stuck_stream_seconds=stuck_seconds)
    servicer = AggregatedDiscoveryServer(SnapshotCache(), limits=limits)
    servicer.cache.set_snapshot(NODE, stuck_mesh(0))
    server, port = bind_grpc_server(servicer, "127.0.0.1:0")
    await server.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(23)]
    followers: list[asyncio.Task[None]] = []
    calls: list[Any] = []
    try:
        published: dict[int, float] = {}
        latencies: list[float] = []
        for index in range(20):
            follower = EndpointFollower(channels[index], delta=index % 2 == 1)
            await follower.subscribe()
            calls.append(follower.call)
            followers.append(asyncio.create_task(follower.follow(published, latencies)))
        for channel in channels[20:]:
            call = stub(channel).StreamAggregatedResources()
            await call.write(request(CLUSTER, node_id=NODE))  # 2 MB per push; never read
            calls.append(call)

        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.2)
        rss_before = rss_mb()
        most_to_stuck = 0
        generation = 0
        started = loop.time()
        while loop.time() - started < stuck_seconds + 2.0:
            generation += 1
            servicer.cache.set_snapshot(NODE, stuck_mesh(generation))
            published[generation] = loop.time()
            sent = [s.types[CLUSTER].responses for s in servicer.streams() if CLUSTER in s.types]
            most_to_stuck = max([most_to_stuck, *sent])
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        rss_after = rss_mb()
        still_open = Counter(
            "follower" if ENDPOINT in s.types else "stuck" for s in servicer.streams()
        )
        cut = servicer.metrics.registry.get_sample_value(
            "xds_stream_errors_total", {"code": "RESOURCE_EXHAUSTED"}
        )
        figures = {
            "pushes": generation,
            "healthy latency ms p50/p99/max": tuple(
                round(1000 * value)
                for value in (
                    statistics.median(latencies),
                    percentile(latencies, 0.99),
                    max(latencies),
                )
            ),
            "most responses sent to one stuck stream": most_to_stuck,
            "stuck streams disconnected": cut,
            "rss MiB before / after": (round(rss_before), round(rss_after)),
        }
        print("\nnever-reading proxies:", *(f"  {k}: {v}" for k, v in figures.items()), sep="\n")

        assert len(latencies) >= 0.9 * 20 * generation, "healthy proxies missed pushes"
        assert percentile(latencies, 0.99) < 0.3, figures
        assert most_to_stuck <= 4, "pushes to a stuck stream were queued, not coalesced"
        assert still_open == {"follower": 20}, "a stuck stream was kept or a healthy one cut"
        assert cut == 3
        assert rss_after - rss_before < 64, figures
    finally:
        for task in followers:
            task.cancel()
        for call in calls:
            call.cancel()
        servicer.close()  # streams end with OK, so stopping cancels no handler
        for channel in channels:
            await channel.close()
        await server.stop(1.0)


class EndpointFollower:
    """A healthy proxy that subscribes to the endpoints of `a` and ACKs every update,
    noting how long each took from its publication."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool) -> None:
        self.delta = delta
        methods = stub(channel)
        self.call = (
            methods.DeltaAggregatedResources() if delta else methods.StreamAggregatedResources()
        )

    async def subscribe(self) -> None:
        first = (
            delta_request(ENDPOINT, ["a"], node_id=NODE)
            if self.delta
            else request(ENDPOINT, "a", node_id=NODE)
        )
        await self.call.write(first)
        await self._ack(await self.call.read())

    async def follow(self, published: dict[int, float], latencies: list[float]) -> None:
        loop = asyncio.get_running_loop()
        while (response := await self.call.read()) is not grpc.aio.EOF:
            now = loop.time()
            packed = response.resources[0].resource if self.delta else response.resources[0]
            assignment = _unpack(packed, endpoint_pb2.ClusterLoadAssignment)
            port = assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
            generation = port.port_value - 10_000
            if generation in published:
                latencies.append(now - published[generation])
            await self._ack(response)

    async def _ack(self, response: Any) -> None:
        await self.call.write(
            delta_request(ENDPOINT, nonce=response.nonce)
            if self.delta
            else request(ENDPOINT, "a", version=response.version_info, nonce=response.nonce)
        )


if __name__ == "__main__":  # the hostile clients of the fuzz run, in their own process
    port, seed, budget, seconds, warm_up = sys.argv[1:6]
    asyncio.run(hostile_main(int(port), int(seed), int(budget), float(seconds), int(warm_up)))
