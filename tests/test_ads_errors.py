"""Protocol misuse becomes a gRPC status; shutdown and disconnects end streams cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from ads_fakes import (
    TIMEOUT,
    FakeStream,
    delta_request,
    mesh,
    names_in,
    new_servicer,
    request,
)
from envoy.service.discovery.v3 import ads_pb2_grpc

from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.server import AggregatedDiscoveryServer, bind_grpc_server
from xds_server.server.sotw import SotwStream

NODE = "proxy-1"
RUNTIME = "type.googleapis.com/envoy.service.runtime.v3.Runtime"

Conversation = list[Any]


def sotw(*messages: Any) -> tuple[bool, Conversation]:
    return False, list(messages)


def delta(*messages: Any) -> tuple[bool, Conversation]:
    return True, list(messages)


@pytest.mark.parametrize(
    ("stream_kind", "conversation"),
    [
        pytest.param(*sotw(request(CLUSTER)), id="sotw: first request without node"),
        pytest.param(*sotw(request(CLUSTER, node_id="")), id="sotw: node without id"),
        pytest.param(*sotw(request("", node_id=NODE)), id="sotw: first request without type"),
        pytest.param(
            *sotw(request(CLUSTER, node_id=NODE), request("")),
            id="sotw: later request without type",
        ),
        pytest.param(
            *sotw(request(CLUSTER, node_id=NODE), request(ENDPOINT, "a", node_id="someone-else")),
            id="sotw: node changes mid-stream",
        ),
        pytest.param(
            *sotw(request(CLUSTER, node_id=NODE), request("envoy.config.cluster.v3.Cluster")),
            id="sotw: malformed type URL",
        ),
        pytest.param(
            *delta(delta_request("not/a/type", node_id=NODE)), id="delta: malformed type URL"
        ),
        pytest.param(*delta(delta_request(CLUSTER)), id="delta: first request without node"),
        pytest.param(
            *delta(delta_request("", node_id=NODE)), id="delta: first request without type"
        ),
        pytest.param(
            *delta(delta_request(CLUSTER, node_id=NODE), delta_request("")),
            id="delta: later request without type",
        ),
    ],
)
async def test_misuse_ends_the_stream_with_invalid_argument(
    stream_kind: bool, conversation: Conversation
) -> None:
    servicer = new_servicer((NODE, mesh()))
    stream = FakeStream(servicer, delta=stream_kind)
    for message in conversation:
        stream.send(message)
    assert await stream.aborted() == grpc.StatusCode.INVALID_ARGUMENT
    assert stream.context.details
    assert servicer.streams() == []


@pytest.mark.parametrize(
    ("stream_kind", "first", "then"),
    [
        pytest.param(False, request(RUNTIME, "layer", node_id=NODE), request(CLUSTER), id="sotw"),
        pytest.param(
            True,
            delta_request(RUNTIME, ["layer"], node_id=NODE),
            delta_request(CLUSTER),
            id="delta",
        ),
    ],
)
async def test_an_unserved_type_is_ignored_and_the_stream_goes_on(
    stream_kind: bool, first: Any, then: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Envoy puts every ADS type on one stream; refusing one would cut off all the others."""
    caplog.set_level(logging.WARNING)
    stream = FakeStream(new_servicer((NODE, mesh())), delta=stream_kind)
    stream.send(first)
    stream.send(first)
    await stream.silent()
    stream.send(then)
    response = await stream.response()
    assert response.type_url == CLUSTER
    assert caplog.text.count("unsupported type") == 1


async def test_an_unexpected_failure_is_an_internal_status_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(SotwStream, "_send_type", broken)
    servicer = new_servicer((NODE, mesh()))
    stream = FakeStream(servicer)
    stream.send(request(CLUSTER, node_id=NODE))
    assert await stream.aborted() == grpc.StatusCode.INTERNAL
    healthy = FakeStream(servicer, delta=True)
    healthy.send(delta_request(CLUSTER, node_id=NODE))
    assert (await healthy.response()).type_url == CLUSTER


# --- shutdown and disconnects -----------------------------------------------------------


class RecordingObserver:
    def __init__(self) -> None:
        self.gone: list[str] = []

    def node_connected(self, node: Any) -> None:
        pass

    def node_disconnected(self, node_id: str) -> None:
        self.gone.append(node_id)


async def test_close_ends_every_stream_with_ok_and_refuses_new_ones() -> None:
    observer = RecordingObserver()
    servicer = new_servicer((NODE, mesh()))
    servicer.observer = observer
    streams = [FakeStream(servicer), FakeStream(servicer, delta=True)]
    for stream in streams:
        stream.send((delta_request if stream is streams[1] else request)(CLUSTER, node_id=NODE))
        await stream.response()
    servicer.close()
    for stream in streams:
        assert await stream.aborted() is None  # returned normally: status OK
    assert (servicer.streams(), observer.gone) == ([], [NODE])
    late = FakeStream(servicer)
    assert await late.aborted() == grpc.StatusCode.UNAVAILABLE


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for a condition another process (the gRPC core) makes true."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_a_proxy_that_goes_away_leaves_no_stream_behind() -> None:
    observer = RecordingObserver()
    servicer = AggregatedDiscoveryServer(new_servicer((NODE, mesh())).cache, observer)
    server, port = bind_grpc_server(servicer, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            await call.write(request(CLUSTER, node_id=NODE))
            assert sorted(names_in(await call.read())) == ["a", "b"]
            call.cancel()
            await eventually(lambda: servicer.streams() == [])
        assert observer.gone == [NODE]
    finally:
        await server.stop(None)


async def test_stopping_the_grpc_server_ends_its_streams() -> None:
    servicer = new_servicer((NODE, mesh()))
    server, port = bind_grpc_server(servicer, "127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(delta_request(CLUSTER, node_id=NODE))
        await call.read()
        await server.stop(0.1)
        await eventually(lambda: servicer.streams() == [])
        assert await call.code() != grpc.StatusCode.OK
