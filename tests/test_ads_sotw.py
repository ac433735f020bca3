"""State-of-the-world ADS, specified as conversations between a proxy and the servicer."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from ads_fakes import (
    FakeStream,
    cluster,
    current,
    evolve,
    listener,
    load_assignment,
    mesh,
    names_in,
    new_servicer,
    real_server,
    request,
    resource_of,
    route_config,
)
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.message import Message

from xds_server.cache import ResourceSet, Snapshot, SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource
from xds_server.server import AggregatedDiscoveryServer
from xds_server.server.state import TypeState

NODE = "proxy-1"


async def connected(
    servicer: AggregatedDiscoveryServer, **subscriptions: tuple[str, ...]
) -> FakeStream:
    """A stream that subscribed (CDS wildcard first, as Envoy does) and ACKed everything."""
    stream = FakeStream(servicer)
    stream.send(request(CLUSTER, node_id=NODE))
    await ack(stream, await stream.response())
    for type_url, names in (
        (ENDPOINT, subscriptions.get("eds", ("a", "b"))),
        (LISTENER, ()),
        (ROUTE, subscriptions.get("rds", ("http",))),
    ):
        stream.send(request(type_url, *names))
        await ack(stream, await stream.response(), *names)
    await stream.silent()
    return stream


async def ack(stream: FakeStream, response: Any, *names: str) -> None:
    stream.send(
        request(
            response.type_url,
            *names,
            version=response.version_info,
            nonce=response.nonce,
        )
    )


# --- first request, ACK, NACK --------------------------------------------------


async def test_first_cds_request_gets_every_cluster_at_the_type_version() -> None:
    snap = mesh("v1", "a", "b")
    stream = FakeStream(new_servicer((NODE, snap)))
    stream.send(request(CLUSTER, node_id=NODE))
    response = await stream.response()
    assert response.type_url == CLUSTER
    assert sorted(names_in(response)) == ["a", "b"]
    assert response.version_info == snap.type_version(CLUSTER)
    assert response.nonce


async def test_a_proxy_connecting_before_its_snapshot_waits_then_gets_it() -> None:
    servicer = new_servicer()
    stream = FakeStream(servicer)
    stream.send(request(CLUSTER, node_id=NODE))
    await stream.silent()
    servicer.cache.set_snapshot(NODE, mesh("v1", "a"))
    assert names_in(await stream.response()) == ["a"]


async def test_an_empty_cluster_set_is_still_answered_so_envoy_can_initialize() -> None:
    snap = Snapshot(resources={CLUSTER: ResourceSet()}, version="empty")
    stream = FakeStream(new_servicer((NODE, snap)))
    stream.send(request(CLUSTER, node_id=NODE))
    assert names_in(await stream.response()) == []


async def test_an_ack_is_recorded_and_answered_with_nothing() -> None:
    stream = FakeStream(new_servicer((NODE, mesh())))
    stream.send(request(CLUSTER, node_id=NODE))
    response = await stream.response()
    await ack(stream, response)
    state = (await stream.silent()).types[CLUSTER]
    assert (state.acks, state.acked_version, state.nacks) == (1, response.version_info, 0)


async def test_a_repeated_nonce_is_a_subscription_update_not_a_second_ack() -> None:
    stream = FakeStream(new_servicer((NODE, mesh("v1", "a", "b"))))
    stream.send(request(CLUSTER, node_id=NODE))
    await stream.response()
    stream.send(request(ENDPOINT, "a"))
    response = await stream.response()
    await ack(stream, response, "a")
    await ack(stream, response, "a", "b")  # Envoy learns of b: same nonce, more names
    assert names_in(await stream.response()) == ["b"]
    assert (await stream.silent()).types[ENDPOINT].acks == 1


async def test_a_nack_is_recorded_and_the_rejected_version_is_not_resent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    v2 = evolve(v1, "v2", cluster("a", timeout_s=99))
    servicer.cache.set_snapshot(NODE, v2)
    rejected = await stream.response()
    await stream.response()  # the re-warming cluster's endpoints (see below)
    caplog.set_level(logging.WARNING)
    stream.send(
        request(
            CLUSTER, version=v1.type_version(CLUSTER), nonce=rejected.nonce, error="bad timeout"
        )
    )
    status = await stream.silent()

    nack = status.types[CLUSTER].last_nack
    assert nack is not None
    assert (nack.rejected_version, nack.kept_version, nack.message) == (
        v2.type_version(CLUSTER),
        v1.type_version(CLUSTER),
        "bad timeout",
    )
    assert status.types[CLUSTER].nacks == 1
    assert servicer.nacks(NODE) == [nack]
    assert "rejected CDS version" in caplog.text and "bad timeout" in caplog.text

    # An unrelated change of endpoints does not bring the rejected clusters back.
    servicer.cache.set_snapshot(NODE, evolve(v2, "v3", load_assignment("b", 9)))
    assert names_in(await stream.response()) == ["b"]
    await stream.silent()

    # A change of clusters does; its ACK resolves the NACK.
    v4 = evolve(current(servicer, NODE), "v4", cluster("a", timeout_s=2))
    servicer.cache.set_snapshot(NODE, v4)
    fixed = await stream.response()
    assert fixed.version_info == v4.type_version(CLUSTER)
    await ack(stream, fixed)
    await stream.response()  # endpoints of the re-warming cluster
    await stream.settled()
    assert servicer.nacks() == []


# --- subscriptions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "wildcard", "names"),
    [
        pytest.param([[]], True, set(), id="empty first request is legacy wildcard"),
        pytest.param([[], []], True, set(), id="still wildcard while nothing was named"),
        pytest.param([[], ["*", "A"]], True, {"A"}, id="wildcard plus a name"),
        pytest.param([[], ["*", "A"], ["A"]], False, {"A"}, id="dropping * leaves the name"),
        pytest.param([[], ["*", "A"], ["A"], []], False, set(), id="empty after naming is nothing"),
        pytest.param([["A", "B"], ["B"]], False, {"B"}, id="named, then one dropped"),
        pytest.param([["*"]], True, set(), id="explicit wildcard"),
    ],
)
def test_sotw_subscription_follows_the_xds_spec_examples(
    requests: list[list[str]], wildcard: bool, names: set[str]
) -> None:
    state = TypeState(CLUSTER)
    for names_requested in requests:
        state.update_sotw(names_requested)
    assert (state.wildcard, state.names) == (wildcard, names)


async def test_named_resources_are_sent_when_named_and_when_they_appear() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = FakeStream(servicer)
    stream.send(request(CLUSTER, node_id=NODE))
    await stream.response()
    stream.send(request(ENDPOINT, "a", "later"))
    assert names_in(await stream.response()) == ["a"]  # "later" does not exist: Envoy waits
    stream.send(request(ENDPOINT, "a", "b", "later"))
    assert names_in(await stream.response()) == ["b"]  # only the newly named one
    v2 = evolve(v1, "v2", cluster("later"), load_assignment("later", 1))
    servicer.cache.set_snapshot(NODE, v2)
    assert sorted(names_in(await stream.response())) == ["a", "b", "later"]  # CDS: full set
    assert names_in(await stream.response()) == ["later"]  # EDS: just the new one


async def test_an_unsubscribed_name_is_no_longer_sent() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer, eds=("a", "b"))
    stream.send(request(ENDPOINT, "a"))
    await stream.silent()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("b", 1)))
    await stream.silent()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(load_assignment("b", 1), [(ENDPOINT, ["b"])], id="endpoints: just them"),
        pytest.param(route_config("http", "b"), [(ROUTE, ["http"])], id="routes: just them"),
        pytest.param(
            cluster("c", timeout_s=3),
            [(CLUSTER, ["a", "b", "c"]), (ENDPOINT, ["c"])],
            id="a cluster: all clusters, then its endpoints for re-warming",
        ),
        pytest.param(
            listener("http", "http", port=2),
            [(LISTENER, ["http"]), (ROUTE, ["http"])],
            id="a listener: all listeners, then its routes for re-warming",
        ),
    ],
)
async def test_what_one_change_sends(
    change: Message, expected: list[tuple[str, list[str]]]
) -> None:
    """LDS and CDS go out whole (xDS spec); EDS and RDS only what changed; Envoy re-warms a
    changed cluster or listener and waits for its endpoints or routes, so they follow."""
    v1 = mesh("v1", "a", "b", "c")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer, eds=("a", "b", "c"))
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", change))
    await stream.settled()
    sent = [(r.type_url, sorted(names_in(r))) for r in await stream.responses(len(expected))]
    assert sent == expected
    await stream.silent()


async def test_a_removed_cluster_disappears_from_the_full_set() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    v2 = evolve(v1, "v2", remove=[(CLUSTER, "b"), (ENDPOINT, "b")])
    servicer.cache.set_snapshot(NODE, v2)
    response = await stream.response()
    assert (names_in(response), response.version_info) == (["a"], v2.type_version(CLUSTER))
    await stream.silent()  # EDS has no way to say "removed": nothing more


# --- ordering and warming ------------------------------------------------------------


async def test_one_wake_up_sends_clusters_endpoints_listeners_routes_in_that_order() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer)
    v2 = evolve(
        v1,
        "v2",
        route_config("http", "b"),
        listener("http", "http", port=15002),
        load_assignment("a", 1),
        cluster("a", timeout_s=5),
    )
    servicer.cache.set_snapshot(NODE, v2)
    await stream.settled()
    types = [response.type_url for response in await stream.responses(4)]
    assert types == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


# --- cost of a change ------------------------------------------------------------------


async def test_a_stream_not_subscribed_to_a_changed_endpoint_sends_nothing() -> None:
    names = [f"svc-{i}" for i in range(2000)]
    v1 = mesh("v1", *names)
    servicer = new_servicer((NODE, v1))
    stream = await connected(servicer, eds=("svc-0", "svc-1"))
    before = (await stream.settled()).types
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("svc-1500", 1)))
    after = await stream.silent()
    assert after.snapshot_version == "v2"
    assert {t: s.bytes_sent for t, s in after.types.items()} == {
        t: s.bytes_sent for t, s in before.items()
    }


async def test_streams_share_the_serialized_bytes_verbatim() -> None:
    """Resources are serialized once; no stream re-encodes them (these bytes are not canonical)."""
    bytes_out_of_order = b"\x12\x00\x0a\x01a"  # field 2 before field 1: a re-encode would reorder
    resource = Resource(
        type_url=ENDPOINT,
        name="a",
        version="hand-made",
        data=bytes_out_of_order,
    )
    snap = mesh("v1", "a")
    snap = Snapshot(resources={**snap.resources, ENDPOINT: ResourceSet([resource])}, version="v1")
    cache = SnapshotCache()
    cache.set_snapshot("one", snap, check=False)
    cache.set_snapshot("two", snap, check=False)
    servicer = AggregatedDiscoveryServer(cache)
    received = []
    for node_id in ("one", "two"):
        stream = FakeStream(servicer)
        stream.send(request(ENDPOINT, "a", node_id=node_id))
        received.append((await stream.response()).resources[0])
    assert [packed.value for packed in received] == [bytes_out_of_order] * 2
    assert received[0] == received[1] == resource.any


# --- nonces and reconnects ----------------------------------------------------------------


async def test_a_stale_nonce_is_no_ack_but_its_new_names_are_served() -> None:
    v1 = mesh("v1", "a", "b", "c")
    servicer = new_servicer((NODE, v1))
    stream = FakeStream(servicer)
    stream.send(request(CLUSTER, node_id=NODE))
    await stream.response()
    stream.send(request(ENDPOINT, "a"))
    first = await stream.response()
    servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("a", 1)))
    second = await stream.response()
    # Envoy ACKs the first response and names c, not having seen the second yet.
    stream.send(request(ENDPOINT, "a", "c", version=first.version_info, nonce=first.nonce))
    assert names_in(await stream.response()) == ["c"]
    status = await stream.silent()
    assert (status.types[ENDPOINT].acks, status.types[ENDPOINT].acked_version) == (0, "")
    assert second.nonce != first.nonce


async def test_a_reconnecting_proxy_holding_the_current_clusters_is_not_sent_them_again() -> None:
    snap = mesh("v1", "a", "b")
    stream = FakeStream(new_servicer((NODE, snap)))
    stream.send(request(CLUSTER, version=snap.type_version(CLUSTER), node_id=NODE))
    await stream.silent()
    stream.send(request(ENDPOINT, "a", "b", version=snap.type_version(ENDPOINT)))
    assert sorted(names_in(await stream.response())) == ["a", "b"]  # EDS: always sent


async def test_a_reconnecting_proxy_with_old_clusters_gets_the_current_ones() -> None:
    snap = mesh("v1", "a", "b")
    stream = FakeStream(new_servicer((NODE, snap)))
    stream.send(request(CLUSTER, version="some-older-version", node_id=NODE))
    assert sorted(names_in(await stream.response())) == ["a", "b"]


# --- status, observer, metrics ----------------------------------------------------------------


async def test_status_tells_what_each_stream_subscribes_to_and_was_sent() -> None:
    servicer = new_servicer((NODE, mesh("v1", "a", "b")))
    stream = await connected(servicer, eds=("a",))
    status = await stream.settled()
    assert (status.node_id, status.kind, status.snapshot_version) == (NODE, "sotw", "v1")
    assert list(status.types) == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    eds = status.types[ENDPOINT]
    assert (eds.wildcard, eds.names, eds.responses, eds.acks) == (False, ("a",), 1, 1)
    assert eds.version_sent == eds.acked_version
    assert eds.bytes_sent > len(resource_of(mesh(), ENDPOINT, "a").data)
    assert status.types[CLUSTER].wildcard
    registry = servicer.metrics.registry
    assert registry.get_sample_value("xds_responses_total", {"type": "EDS", "kind": "sotw"}) == 1
    assert registry.get_sample_value("xds_acks_total", {"type": "CDS"}) == 1
    assert registry.get_sample_value("xds_response_bytes_total", {"type": "EDS"}) == eds.bytes_sent
    assert registry.get_sample_value("xds_connected_streams", {"kind": "sotw"}) == 1


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def node_connected(self, node: Any) -> None:
        self.events.append(("connected", node.id))

    def node_disconnected(self, node_id: str) -> None:
        self.events.append(("disconnected", node_id))


async def test_the_observer_hears_of_each_stream_and_of_the_nodes_last_goodbye() -> None:
    observer = RecordingObserver()
    servicer = AggregatedDiscoveryServer(SnapshotCache(), observer)
    first, second = FakeStream(servicer), FakeStream(servicer)
    for stream in (first, second):
        stream.send(request(CLUSTER, node_id=NODE))
        await stream.settled()
    await first.end()
    assert observer.events == [("connected", NODE), ("connected", NODE)]
    await second.end()
    assert observer.events[-1] == ("disconnected", NODE)
    assert servicer.streams() == []
    assert (
        servicer.metrics.registry.get_sample_value("xds_connected_streams", {"kind": "sotw"}) == 0
    )


# --- over real gRPC ----------------------------------------------------------------------------


async def test_sotw_over_a_real_grpc_server() -> None:
    v1 = mesh("v1", "a", "b")
    servicer = new_servicer((NODE, v1))
    async with real_server(servicer) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        await call.write(request(CLUSTER, node_id=NODE))
        clusters = await call.read()
        assert sorted(names_in(clusters)) == ["a", "b"]
        await call.write(request(CLUSTER, version=clusters.version_info, nonce=clusters.nonce))
        await call.write(request(ENDPOINT, "a"))
        assert names_in(await call.read()) == ["a"]
        servicer.cache.set_snapshot(NODE, evolve(v1, "v2", load_assignment("a", 1)))
        assert names_in(await call.read()) == ["a"]
        assert servicer.streams()[0].types[CLUSTER].acks == 1
        servicer.close()  # how the app shuts down: streams end with OK, then the server stops
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    assert servicer.streams() == []
