"""The ADS server's metrics, callback by callback: streams by variant, responses, bytes,
ACKs and NACKs by type, refusals and failures by reason.

`ServerMetrics` is a `ServerCallbacks`: each test makes the calls a stream makes
and reads the registry's samples back.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from xds_server.resources import CLUSTER, ENDPOINT, LISTENER
from xds_server.server import ServerMetrics
from xds_server.server.callbacks import SentResponse, StreamInfo
from xds_server.server.state import NackStatus

SOTW = StreamInfo(1, "sotw", "ipv4:127.0.0.1:5000", "client-0.default")
DELTA = StreamInfo(2, "delta", "ipv4:127.0.0.1:5001", "client-1.default")


def response(type_url: str, size: int = 100, nonce: str = "1") -> SentResponse:
    return SentResponse(type_url, nonce, "v1", "1", ("a",), (), size)


def nack(sent: SentResponse) -> NackStatus:
    return NackStatus(
        "client-0.default", sent.type_url, sent.version, "v0", sent.nonce, "bad", datetime.now(UTC)
    )


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("stream", [SOTW, DELTA], ids=["sotw", "delta"])
def test_connected_streams_are_counted_by_variant_while_open(stream: StreamInfo) -> None:
    metrics = ServerMetrics(CollectorRegistry())
    other = "delta" if stream.kind == "sotw" else "sotw"
    metrics.stream_opened(stream, 1.0)
    assert value(metrics, "xds_connected_streams", kind=stream.kind) == 1
    assert value(metrics, "xds_connected_streams", kind=other) == 0
    metrics.stream_closed(stream, 2.0)
    assert value(metrics, "xds_connected_streams", kind=stream.kind) == 0


def test_responses_and_their_bytes_are_counted_by_type_and_variant() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.response_sent(SOTW, response(CLUSTER, 300), 1.0)
    metrics.response_sent(DELTA, response(CLUSTER, 200), 1.0)
    metrics.response_sent(SOTW, response(ENDPOINT, 50), 1.0)

    assert value(metrics, "xds_responses_total", type="CDS", kind="sotw") == 1
    assert value(metrics, "xds_responses_total", type="CDS", kind="delta") == 1
    assert value(metrics, "xds_response_bytes_total", type="CDS") == 500
    assert value(metrics, "xds_response_bytes_total", type="EDS") == 50


def test_acks_and_nacks_are_counted_by_type() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    listeners = response(LISTENER)
    metrics.ack_received(SOTW, response(CLUSTER), 1.0)
    metrics.nack_received(SOTW, listeners, nack(listeners), 1.0)

    assert value(metrics, "xds_acks_total", type="CDS") == 1
    assert value(metrics, "xds_nacks_total", type="LDS") == 1
    assert value(metrics, "xds_nacks_total", type="CDS") == 0


def test_refused_and_failed_streams_are_counted_by_reason_and_code() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.stream_refused("ipv4:127.0.0.1:5002", "peer_limit", 1.0)
    metrics.stream_failed(SOTW, "INVALID_ARGUMENT", 1.0)
    metrics.request_paused(SOTW, 1.0)

    assert value(metrics, "xds_streams_refused_total", reason="peer_limit") == 1
    assert value(metrics, "xds_stream_errors_total", code="INVALID_ARGUMENT") == 1
    assert value(metrics, "xds_requests_paused_total") == 1


def test_no_sample_is_labelled_with_a_node_or_a_peer() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    metrics.stream_opened(SOTW, 1.0)
    metrics.response_sent(SOTW, response(CLUSTER), 1.0)
    metrics.ack_received(SOTW, response(CLUSTER), 1.0)
    labels = {
        label
        for family in metrics.registry.collect()
        for sample in family.samples
        for label in sample.labels.values()
    }
    assert not any("client" in label or "127.0.0.1" in label for label in labels), labels
