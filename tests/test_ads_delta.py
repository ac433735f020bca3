"""Incremental (Delta) ADS, specified as conversations between a proxy and the servicer."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from ads_fakes import (
    FakeStream,
    cluster,
    current,
    delta_request,
    evolve,
    listener,
    load_assignment,
    mesh,
    new_servicer,
    real_server,
    resource_of,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.message import Message

from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.server import AggregatedDiscoveryServer
from xds_server.server.state import TypeState

NODE = "proxy-1"


def delivered(response: Any) -> dict[str, str]:
    """name -> version of the resources in a Delta response."""
    return {resource.name: resource.version for resource in response.resources}


async def ack(stream: FakeStream, response: Any) -> None:
    stream.send(delta_request(response.type_url, nonce=response.nonce))


async def connected(
    servicer: AggregatedDiscoveryServer, eds: tuple[str, ...] = ("a", "b")
) -> FakeStream:
    """A Delta stream subscribed like Envoy (CDS, LDS wildcard; EDS, RDS by name), all ACKed."""
    stream = FakeStream(servicer, delta=True)
    stream.send(delta_request(CLUSTER, node_id=NODE))
    await ack(stream, await stream.response())
    for type_url, names in ((ENDPOINT, eds), (LISTENER, ("*",)), (ROUTE, ("http",))):
        stream.send(delta_request(type_url, names))
        await ack(stream, await stream.response())
    await stream.silent()
    return stream


# --- subscriptions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "wildcard", "names"),
    [
        pytest.param([([], [])], True, set(), id="empty first request is legacy wildcard"),
        pytest.param([([], []), (["A"], [])], True, {"A"}, id="wildcard continues, A added"),
        pytest.param([([], []), (["A"], []), ([], ["*"])], False, {"A"}, id="* dropped, A kept"),
        pytest.param(
            [([], []), (["A"], []), ([], ["*"]), ([], ["A"])],
            False,
            set(),
            id="all dropped: nothing, not wildcard",
        ),
        pytest.param([(["A", "B"], []), ([], ["A"])], False, {"B"}, id="named, one dropped"),
        pytest.param([(["*"], [])], True, set(), id="explicit wildcard"),
    ],
)
def test_delta_subscription_follows_the_xds_spec_examples(
    requests: list[tuple[list[str], list[str]]], wildcard: bool, names: set[str]
) -> None:
    state = TypeState(CLUSTER)
    for subscribe, unsubscribe in requests:
        state.update_delta(subscribe, unsubscribe)
    assert (state.wildcard, state.names) == (wildcard, names)


@pytest.mark.parametrize("subscribe", [(), ("*",)], ids=["legacy wildcard", "explicit *"])
async def test_a_wildcard_subscription_gets_every_cluster_with_its_version(
    subscribe: tuple[str, ...],
) -> None:
    snap = mesh("v1", "a", "b")
    stream = FakeStream(new_servicer((NODE, snap)), delta=True)
    stream.send(delta_request(CLUSTER, subscribe, node_id=NODE))
    response = await stream.response()
    assert delivered(response) == {
        name: resource_of(snap, CLUSTER, name).version for name in ("a", "b")
    }
    assert (response.system_version_info, list(response.removed_resources)) == ("v1", [])


# --- add, update, remove ---------------------------------------------------------------


async def test_additions_updates_and_removals_each_send_just_themselves() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)

    v2 = evolve(v1, "v2", cluster("c"), load_assignment("c", 1))
    servicer.cache.set_snapshot(NODE, v2)
    assert set(delivered(await stream.response())) == {"c"}
    await stream.silent()  # nobody asked for c's endpoints yet

    v3 = evolve(v2, "v3", load_assignment("a", 5))
    servicer.cache.set_snapshot(NODE, v3)
    assert delivered(await stream.response()) == {"a": resource_of(v3, ENDPOINT, "a").version}

    v4 = evolve(v3, "v4", remove=[(CLUSTER, "b"), (ENDPOINT, "b")])
    servicer.cache.set_snapshot(NODE, v4)
    clusters, endpoints = await stream.responses(2)
    assert (clusters.type_url, list(clusters.removed_resources), delivered(clusters)) == (
        CLUSTER,
        ["b"],
        {},
    )
    assert (endpoints.type_url, list(endpoints.removed_resources)) == (ENDPOINT, ["b"])
    await stream.silent()


async def test_no_removal_for_a_name_the_proxy_never_received() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    # "c" comes and goes before the stream catches up: it never reached the proxy.
    v2 = evolve(v1, "v2", cluster("c"), load_assignment("c", 1))
    v3 = evolve(v2, "v3", remove=[(CLUSTER, "c"), (ENDPOINT, "c")])
    servicer.cache.set_snapshot(NODE, v2)
    servicer.cache.set_snapshot(NODE, v3)
    await stream.silent()


async def test_an_unsubscribed_name_is_neither_updated_nor_removed() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    stream.send(delta_request(ENDPOINT, unsubscribe=["b"]))
    await stream.silent()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("b", 9)))
    await stream.silent()
    servicer.cache.set_snapshot(
        NODE,
        evolve(current(servicer, NODE), "v3", remove=[(CLUSTER, "b"), (ENDPOINT, "b")]),
    )
    clusters = await stream.response()
    assert list(clusters.removed_resources) == ["b"]  # CDS is wildcard: the proxy had b
    await stream.silent()


async def test_a_name_subscribed_again_is_sent_again() -> None:
    servicer = new_servicer((NODE, mesh("v1", "a", "b")))
    stream = await connected(servicer)
    stream.send(delta_request(ENDPOINT, unsubscribe=["a"]))
    stream.send(delta_request(ENDPOINT, ["a"]))
    assert set(delivered(await stream.response())) == {"a"}


async def test_an_unsubscribed_stream_sends_nothing_for_an_unrelated_endpoint() -> None:
    names = [f"svc-{i}" for i in range(2000)]
    v1 = mesh("v1", *names)
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer, eds=("svc-0",))
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("svc-1999", 1)))
    status = await stream.silent()
    assert status.snapshot_version == "v2"


# --- ordering and warming ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            cluster("a", timeout_s=4), [(CLUSTER, {"a"}), (ENDPOINT, {"a"})], id="cluster"
        ),
        pytest.param(
            listener("http", "http", port=3),
            [(LISTENER, {"http"}), (ROUTE, {"http"})],
            id="listener",
        ),
    ],
)
async def test_a_changed_parent_is_followed_by_its_unchanged_child(
    change: Message, expected: list[tuple[str, set[str]]]
) -> None:
    """Envoy re-warms a changed cluster (listener): its endpoints (routes) go again, after it."""
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", change))
    await stream.settled()
    sent = [(r.type_url, set(delivered(r))) for r in await stream.responses(len(expected))]
    assert sent == expected
    await stream.silent()


# --- reconnects, ACK, NACK, nonces -------------------------------------------------------


async def test_a_reconnecting_proxy_gets_only_what_differs_from_what_it_holds() -> None:
    v1 = mesh("v1", "a", "b", "c")
    servicer = new_servicer((NODE, v1))
    clusters = v1.get(CLUSTER)
    held = {
        "a": clusters["a"].version,  # current: not resent
        "b": "an-old-version",  # stale: resent
        "gone": "whatever",  # no longer exists: removed
    }
    stream = FakeStream(servicer, delta=True)
    stream.send(delta_request(CLUSTER, ["*"], initial=held, node_id=NODE))
    response = await stream.response()
    assert set(delivered(response)) == {"b", "c"}
    assert list(response.removed_resources) == ["gone"]

    stream.send(delta_request(ENDPOINT, ["a"], initial={"a": v1.get(ENDPOINT)["a"].version}))
    await stream.silent()


async def test_a_nack_is_recorded_and_the_rejected_version_is_not_resent() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("a", 666)))
    rejected = await stream.response()
    stream.send(delta_request(ENDPOINT, nonce=rejected.nonce, error="port out of range"))
    status = await stream.silent()
    nack = status.types[ENDPOINT].last_nack
    assert nack is not None
    assert (nack.rejected_version, nack.message, nack.nonce) == (
        "v2",
        "port out of range",
        rejected.nonce,
    )
    assert servicer.nacks() == [nack]

    v3 = evolve(current(servicer, NODE), "v3", load_assignment("b", 7))
    servicer.cache.set_snapshot(NODE, v3)
    assert set(delivered(await stream.response())) == {"b"}  # not a@666 again
    v4 = evolve(v3, "v4", load_assignment("a", 8))
    servicer.cache.set_snapshot(NODE, v4)
    fixed = await stream.response()
    assert delivered(fixed) == {"a": resource_of(v4, ENDPOINT, "a").version}
    await ack(stream, fixed)
    status = await stream.settled()
    assert (status.types[ENDPOINT].acked_version, servicer.nacks()) == ("v4", [])


async def test_a_stale_nonce_is_no_ack_but_its_subscription_applies() -> None:
    v1 = mesh("v1", "a", "b", "c")
    servicer = new_servicer((NODE, v1))
    stream = FakeStream(servicer, delta=True)
    stream.send(delta_request(ENDPOINT, ["a"], node_id=NODE))
    first = await stream.response()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("a", 2)))
    await stream.response()
    stream.send(delta_request(ENDPOINT, ["c"], nonce=first.nonce))
    assert set(delivered(await stream.response())) == {"c"}
    assert (await stream.silent()).types[ENDPOINT].acks == 0


# --- over real gRPC ------------------------------------------------------------------------


async def test_delta_over_a_real_grpc_server() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    async with real_server(servicer) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(delta_request(CLUSTER, ["*"], node_id=NODE))
        clusters = await call.read()
        assert set(delivered(clusters)) == {"a", "b"}
        await call.write(delta_request(CLUSTER, nonce=clusters.nonce))  # ACK
        await call.write(delta_request(ENDPOINT, ["a"]))  # answered after the ACK is handled
        assert set(delivered(await call.read())) == {"a"}
        v2 = evolve(v1, "v2", remove=[(CLUSTER, "b"), (ENDPOINT, "b")])
        servicer.cache.set_snapshot(NODE, v2)
        assert list((await call.read()).removed_resources) == ["b"]
        assert servicer.streams()[0].types[CLUSTER].acks == 1
        servicer.close()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert servicer.streams() == []
