"""Push history: each generation, from its triggers to every proxy's ACK or NACK.

Driven by hand-built `GenerationRecord`s (what the builder hands `on_generation`)
and the server callbacks a stream would make, in the order a stream makes them.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from xds_server.history import LATENCY_BUCKETS, PushHistory, PushSummary
from xds_server.pipeline.records import GenerationRecord, ProxyPush, Trigger
from xds_server.provenance import Origin, SourceRef
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.server.callbacks import SentResponse, StreamInfo
from xds_server.server.state import NackStatus

OBSERVED = 1_000.0
SLICE = SourceRef("EndpointSlice", "default", "backend-slice", Origin("/m/eps.yaml", 0))
SERVICE = SourceRef("Service", "default", "backend", Origin("/m/svc.yaml", 0))
BACKEND_EDS = "outbound|8080||backend.default.svc.cluster.local"

_nonces = itertools.count(1)


def push(node_id: str, generation: int, **changed: Sequence[str]) -> ProxyPush:
    """A proxy's push; `changed` by short type name: cds=[...], eds=[...]."""
    urls = {"cds": CLUSTER, "eds": ENDPOINT, "lds": LISTENER, "rds": ROUTE}
    return ProxyPush(
        node_id, str(generation), changed={urls[k]: tuple(v) for k, v in changed.items()}
    )


def record(
    generation: int,
    *proxies: ProxyPush,
    observed_at: float | None = OBSERVED,
    triggers: Sequence[SourceRef] = (SLICE,),
) -> GenerationRecord:
    return GenerationRecord(
        generation=generation,
        observed_at=observed_at,
        committed_at=(observed_at or OBSERVED) + 0.01,
        triggers=tuple(Trigger("upserted", source) for source in triggers),
        proxies=proxies,
    )


def stream(node_id: str, stream_id: int = 1) -> StreamInfo:
    return StreamInfo(stream_id, "sotw", "ipv4:127.0.0.1:5000", node_id)


def sent(
    type_url: str, generation: int, *names: str, removed: Sequence[str] = (), size: int = 100
) -> SentResponse:
    return SentResponse(
        type_url=type_url,
        nonce=str(next(_nonces)),
        version=f"v{generation}",
        snapshot_version=str(generation),
        resources=names,
        removed=tuple(removed),
        size=size,
    )


def nack_of(response: SentResponse, message: str = "rejected: bad cluster") -> NackStatus:
    return NackStatus(
        node_id="",
        type_url=response.type_url,
        rejected_version=response.version,
        kept_version="",
        nonce=response.nonce,
        message=message,
        at=datetime.now(UTC),
    )


def deliver(
    history: PushHistory, node_id: str, *responses: SentResponse, at: float = OBSERVED + 0.02
) -> None:
    for response in responses:
        history.response_sent(stream(node_id), response, at)


def ack(history: PushHistory, node_id: str, *responses: SentResponse, at: float) -> None:
    for response in responses:
        history.ack_received(stream(node_id), response, at)


def observations(history: PushHistory) -> tuple[float, float]:
    """(count, sum) of the ACK latency histogram."""
    count = history.registry.get_sample_value("xds_push_ack_latency_seconds_count")
    total = history.registry.get_sample_value("xds_push_ack_latency_seconds_sum")
    return count or 0.0, total or 0.0


def only(history: PushHistory) -> PushSummary:
    [summary] = history.pushes()
    return summary


def status_of(history: PushHistory, generation: int, node_id: str) -> str:
    detail = history.push(generation)
    assert detail is not None
    [proxy] = [p for p in detail.proxies if p.node_id == node_id]
    return proxy.status


def test_a_generation_lists_its_triggers_and_the_resources_it_changed_once_per_type() -> None:
    history = PushHistory()
    history.generation_committed(
        record(
            7,
            push("a", 7, eds=[BACKEND_EDS], cds=["c1"]),
            push("b", 7, eds=[BACKEND_EDS]),
            triggers=(SLICE, SERVICE),
        )
    )

    summary = only(history)
    assert (summary.generation, summary.observed_at) == (7, OBSERVED)
    assert [trigger.source for trigger in summary.triggers] == [SLICE, SERVICE]
    assert summary.changed[ENDPOINT].names == (BACKEND_EDS,)
    assert summary.changed[ENDPOINT].total == 1
    assert summary.changed[CLUSTER].names == ("c1",)
    assert (summary.counts.proxies, summary.counts.pending, summary.counts.sent) == (2, 2, 0)


def test_a_proxy_is_acked_once_every_response_of_the_generation_is_accepted() -> None:
    history = PushHistory()
    history.generation_committed(record(3, push("a", 3, cds=["c1"], eds=["c1"])))
    cds, eds = sent(CLUSTER, 3, "c1", size=120), sent(ENDPOINT, 3, "c1", size=80)
    deliver(history, "a", cds, eds)

    ack(history, "a", cds, at=OBSERVED + 0.1)
    assert status_of(history, 3, "a") == "pending"
    ack(history, "a", eds, at=OBSERVED + 0.25)

    detail = history.push(3)
    assert detail is not None
    [proxy] = detail.proxies
    assert (proxy.status, proxy.acked_at) == ("acked", OBSERVED + 0.25)
    assert proxy.latency == pytest.approx(0.25)
    assert [(s.type_url, s.names.names, s.bytes, s.answer) for s in proxy.sent] == [
        (CLUSTER, ("c1",), 120, "acked"),
        (ENDPOINT, ("c1",), 80, "acked"),
    ]
    assert (detail.summary.counts.sent, detail.summary.counts.acked) == (1, 1)
    assert detail.summary.fastest_ack == detail.summary.slowest_ack == pytest.approx(0.25)
    assert observations(history) == (1.0, pytest.approx(0.25))


def test_a_nack_marks_the_proxy_nacked_with_envoys_message_and_observes_nothing() -> None:
    history = PushHistory()
    history.generation_committed(record(4, push("a", 4, cds=["bad"]), push("b", 4, cds=["bad"])))
    response_a, response_b = sent(CLUSTER, 4, "bad"), sent(CLUSTER, 4, "bad")
    deliver(history, "a", response_a)
    deliver(history, "b", response_b)

    history.nack_received(stream("a"), response_a, nack_of(response_a), OBSERVED + 0.5)
    ack(history, "b", response_b, at=OBSERVED + 0.3)

    detail = history.push(4)
    assert detail is not None
    a, b = detail.proxies
    assert (a.status, a.nack_type, a.nack_message) == ("nacked", CLUSTER, "rejected: bad cluster")
    assert (a.nacked_at, a.acked_at, a.latency) == (OBSERVED + 0.5, None, pytest.approx(0.5))
    assert b.status == "acked"
    counts = detail.summary.counts
    assert (counts.acked, counts.nacked, counts.pending) == (1, 1, 0)
    assert observations(history)[0] == 1.0


def test_a_generation_replaced_before_the_ack_is_superseded_and_the_ack_counts_once() -> None:
    history = PushHistory()
    history.generation_committed(record(1, push("a", 1, eds=["e"])))
    first = sent(ENDPOINT, 1, "e")
    deliver(history, "a", first)
    history.generation_committed(record(2, push("a", 2, eds=["e"]), observed_at=OBSERVED + 1))
    second = sent(ENDPOINT, 2, "e")
    deliver(history, "a", second)

    ack(history, "a", first, at=OBSERVED + 1.1)  # late: the proxy already has 2 coming
    ack(history, "a", second, at=OBSERVED + 1.2)

    assert status_of(history, 1, "a") == "superseded"
    assert status_of(history, 2, "a") == "acked"
    newest, oldest = history.pushes()
    assert (newest.counts.acked, oldest.counts.acked, oldest.counts.superseded) == (1, 0, 1)
    assert observations(history) == (1.0, pytest.approx(0.2))


@pytest.mark.parametrize(
    ("what", "answer"),
    [
        ("an ACK of an older response of the type", "older"),
        ("an ACK for a proxy no record named", "stranger"),
        ("an ACK naming another generation", "other generation"),
    ],
)
def test_answers_that_are_not_to_the_live_generation_change_nothing(what: str, answer: str) -> None:
    history = PushHistory()
    history.generation_committed(record(5, push("a", 5, eds=["e1", "e2"])))
    older, latest = sent(ENDPOINT, 5, "e1"), sent(ENDPOINT, 5, "e2")
    deliver(history, "a", older, latest)

    if answer == "older":
        ack(history, "a", older, at=OBSERVED + 1)
    elif answer == "stranger":
        deliver(history, "b", latest)
        ack(history, "b", latest, at=OBSERVED + 1)
    else:
        ack(history, "a", sent(ENDPOINT, 4, "e1"), at=OBSERVED + 1)

    assert status_of(history, 5, "a") == "pending", what
    assert observations(history)[0] == 0.0


def test_without_an_observed_time_the_ack_is_recorded_but_not_observed() -> None:
    history = PushHistory()
    history.generation_committed(record(1, push("a", 1, lds=["l"]), observed_at=None))
    response = sent(LISTENER, 1, "l")
    deliver(history, "a", response)
    ack(history, "a", response, at=OBSERVED)

    detail = history.push(1)
    assert detail is not None
    assert (detail.proxies[0].status, detail.proxies[0].latency) == ("acked", None)
    assert observations(history)[0] == 0.0


def test_a_proxy_whose_last_stream_closes_before_answering_is_disconnected() -> None:
    history = PushHistory()
    history.generation_committed(record(1, push("a", 1, cds=["c"]), push("b", 1, cds=["c"])))
    for node_id, stream_id in (("a", 1), ("a", 2), ("b", 3)):
        history.request_received(stream(node_id, stream_id), CLUSTER, (), OBSERVED)

    history.stream_closed(stream("a", 1), OBSERVED + 1)  # "a" still has stream 2
    history.stream_closed(stream("b", 3), OBSERVED + 1)

    assert status_of(history, 1, "a") == "pending"
    assert status_of(history, 1, "b") == "disconnected"
    assert history.tracked_proxies == 1


def test_a_later_response_of_the_same_generation_is_added_and_its_nack_counts() -> None:
    history = PushHistory()
    history.generation_committed(record(1, push("a", 1, lds=["l"], rds=["r1"])))
    lds, rds = sent(LISTENER, 1, "l"), sent(ROUTE, 1, "r1")
    deliver(history, "a", lds, rds)
    ack(history, "a", lds, rds, at=OBSERVED + 0.1)
    more = sent(ROUTE, 1, "r1", "r2")  # a new subscription answered from the same snapshot
    deliver(history, "a", more)
    history.nack_received(stream("a"), more, nack_of(more, "bad route"), OBSERVED + 0.2)

    detail = history.push(1)
    assert detail is not None
    [proxy] = detail.proxies
    route = next(s for s in proxy.sent if s.type_url == ROUTE)
    assert (route.names.names, route.names.total, route.responses) == (("r1", "r2"), 3, 2)
    assert (proxy.status, proxy.nack_message) == ("nacked", "bad route")
    assert (detail.summary.counts.acked, detail.summary.counts.nacked) == (0, 1)


def test_history_keeps_the_newest_generations_newest_first() -> None:
    history = PushHistory(max_generations=3)
    for generation in range(1, 6):
        history.generation_committed(record(generation, push("a", generation, eds=["e"])))

    assert [summary.generation for summary in history.pushes()] == [5, 4, 3]
    assert history.push(2) is None
    assert len(history) == 3


def test_proxies_beyond_the_detail_bound_are_counted_and_still_observed() -> None:
    history = PushHistory(max_proxies=2)
    nodes = [f"proxy-{i}" for i in range(5)]
    history.generation_committed(record(1, *(push(node, 1, eds=["e"]) for node in nodes)))
    for node in nodes:
        response = sent(ENDPOINT, 1, "e")
        deliver(history, node, response)
        ack(history, node, response, at=OBSERVED + 0.5)

    detail = history.push(1)
    assert detail is not None
    assert [proxy.node_id for proxy in detail.proxies] == nodes[:2]
    assert (detail.summary.counts.proxies, detail.summary.counts.acked) == (5, 5)
    assert detail.summary.counts.sent == 5
    assert observations(history)[0] == 5.0


def test_names_and_triggers_are_cut_to_the_bound_with_their_totals() -> None:
    history = PushHistory(max_names=3)
    names = [f"cluster-{i}" for i in range(10)]
    triggers = [SourceRef("Service", "default", f"s{i}") for i in range(8)]
    history.generation_committed(record(1, push("a", 1, cds=names), triggers=triggers))
    deliver(history, "a", sent(CLUSTER, 1, *names))

    summary = only(history)
    assert (summary.changed[CLUSTER].names, summary.changed[CLUSTER].total) == (
        tuple(names[:3]),
        10,
    )
    assert (len(summary.triggers), summary.triggers_total) == (3, 8)
    detail = history.push(1)
    assert detail is not None
    assert (detail.proxies[0].sent[0].names.total, len(detail.proxies[0].sent[0].names.names)) == (
        10,
        3,
    )


def churn(history: PushHistory, generations: range, proxies: int) -> None:
    """Generations that each change every proxy: half of them ACK, some NACK, the rest
    are superseded by the next generation."""
    for generation in generations:
        pushes = [push(f"p{i}", generation, eds=[f"e{generation}-{i}"]) for i in range(proxies)]
        history.generation_committed(record(generation, *pushes, observed_at=float(generation)))
        for i in range(proxies):
            node = f"p{i}"
            response = sent(ENDPOINT, generation, f"e{generation}-{i}")
            history.response_sent(stream(node, i), response, generation + 0.01)
            if i % 2 == 0:
                ack(history, node, response, at=generation + 0.02)
            elif i % 7 == 0:
                history.nack_received(stream(node), response, nack_of(response), generation + 0.02)


def footprint(history: PushHistory) -> dict[str, int]:
    """Everything the history holds that churn could grow."""
    entries = list(history._generations.values())
    rows = [proxy for entry in entries for proxy in entry.detailed.values()]
    return {
        "generations": len(entries),
        "detailed proxies": len(rows),
        "sent types": sum(len(proxy.sent) for proxy in rows),
        "names": sum(
            len(names.names)
            for entry in entries
            for names in [*entry.changed.values(), *entry.removed.values()]
        )
        + sum(len(sent.names.names) for proxy in rows for sent in proxy.sent.values()),
        "triggers": sum(len(entry.triggers) for entry in entries),
        "tracked proxies": history.tracked_proxies,
        "streams": len(history._streams) + len(history._streams_of_node),
    }


def test_what_is_held_stops_growing_once_the_bounds_are_reached() -> None:
    history = PushHistory(max_generations=20, max_proxies=5, max_names=5)
    proxies = 12
    churn(history, range(1, 1_001), proxies)
    steady = footprint(history)
    churn(history, range(1_001, 10_001), proxies)

    assert footprint(history) == steady
    assert steady["generations"] == 20
    assert steady["detailed proxies"] == 20 * 5
    assert steady["tracked proxies"] == proxies
    assert observations(history)[0] == 10_000 * proxies / 2


def test_memory_does_not_grow_with_churn() -> None:
    history = PushHistory(max_generations=20, max_proxies=5, max_names=5)
    tracemalloc.start()
    try:
        churn(history, range(1, 201), 12)  # every bound reached, what is held traced
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        churn(history, range(201, 1_201), 12)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Keeping one 48-byte object per generation would be 48 KiB.
    assert after - before < 32 * 1024, f"grew by {after - before} bytes over 1,000 generations"


def test_the_latency_histogram_spans_a_millisecond_to_a_minute_in_the_given_registry() -> None:
    registry = CollectorRegistry()
    history = PushHistory(registry)
    assert history.registry is registry
    assert (LATENCY_BUCKETS[0], LATENCY_BUCKETS[-1]) == (0.001, 60.0)
    history.generation_committed(record(1, push("a", 1, cds=["c"])))
    response = sent(CLUSTER, 1, "c")
    deliver(history, "a", response)
    ack(history, "a", response, at=OBSERVED + 0.004)

    bucket = "xds_push_ack_latency_seconds_bucket"
    assert registry.get_sample_value(bucket, {"le": "0.0025"}) == 0.0
    assert registry.get_sample_value(bucket, {"le": "0.005"}) == 1.0


@pytest.mark.parametrize("bound", ["max_generations", "max_proxies", "max_names"])
def test_bounds_must_be_positive(bound: str) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PushHistory(**{bound: 0})  # type: ignore[arg-type]
