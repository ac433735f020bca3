"""Control-plane metrics through real Envoys, read from `/metrics` on the admin port.

Two sidecars (one SotW, one Delta) connect, take a manifest edit and NACK a
cluster Envoy rejects (`with_invalid_cluster` as the builder's
`resource_hook`); one disconnects.  After each step the scrape, parsed with
`prometheus_client.parser` as Prometheus would read it, moves as it must:
streams by variant, pushes by xDS type and trigger, source events, build
time, bytes, ACK latency and NACKs by type.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_mesh import (
    eventually,
    manifest_directory,
    service_yaml,
    slice_yaml,
    start_sidecar,
    with_invalid_cluster,
    write_documents,
)
from metrics_scrape import Samples, metered_plane, scrape

from xds_server.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def until_scraped(
    plane: ControlPlane, check: Callable[[Samples], bool], message: str
) -> Samples:
    async def scraped() -> Samples | None:
        samples = await scrape(plane)
        return samples if check(samples) else None

    found: Samples = await eventually(scraped, within=20, message=message)
    return found


async def test_metrics_follow_proxies_pushes_and_nacks(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: Any
) -> None:
    directory = manifest_directory(
        tmp_path,
        {"backend.yaml": [service_yaml("backend"), slice_yaml("backend", ["127.0.30.1"], 8080)]},
    )
    async with metered_plane(directory, free_port) as plane:
        before = await scrape(plane)
        assert value(before, "xds_connected_streams", kind="sotw") == 0
        assert (
            value(before, "xds_source_events_total", source="file", kind="Service", event="upsert")
            == 1
        )

        await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)
        delta = await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=True, node_id="client-1.default"
        )
        connected = await until_scraped(
            plane,
            lambda s: (
                value(s, "xds_connected_streams", kind="sotw") == 1
                and value(s, "xds_connected_streams", kind="delta") == 1
                and value(s, "xds_acks_total", type="RDS") >= 2
            ),
            "both proxies connected and ACKed",
        )
        for type_ in ("CDS", "EDS", "LDS", "RDS"):
            assert value(connected, "xds_pushes_total", type=type_, trigger="proxy") >= 2, type_
            assert value(connected, "xds_response_bytes_total", type=type_) > 0, type_
        assert value(connected, "xds_responses_total", type="CDS", kind="sotw") >= 1
        assert value(connected, "xds_responses_total", type="CDS", kind="delta") >= 1
        assert value(connected, "xds_push_build_seconds_count", scope="proxy") >= 2

        # A manifest edit: the backend gains an endpoint.
        write_documents(
            directory / "backend.yaml",
            service_yaml("backend"),
            slice_yaml("backend", ["127.0.30.1", "127.0.30.2"], 8080),
        )
        edited = await until_scraped(
            plane,
            lambda s: (
                value(s, "xds_push_ack_latency_seconds_count")
                >= value(connected, "xds_push_ack_latency_seconds_count") + 2
            ),
            "both proxies ACKed the edit",
        )
        assert value(edited, "xds_pushes_total", type="EDS", trigger="EndpointSlice") == 2
        assert value(edited, "xds_pushes_total", type="CDS", trigger="EndpointSlice") == 0
        assert value(edited, "xds_push_triggers_total", kind="EndpointSlice") >= 1
        events = (
            "xds_source_events_total",
            {"source": "file", "kind": "EndpointSlice", "event": "upsert"},
        )
        assert value(edited, events[0], **events[1]) == value(connected, events[0], **events[1]) + 1
        assert value(edited, "xds_push_build_seconds_count", scope="batch") > value(
            connected, "xds_push_build_seconds_count", scope="batch"
        )
        assert value(edited, "xds_response_bytes_total", type="EDS") > value(
            connected, "xds_response_bytes_total", type="EDS"
        )
        assert value(edited, "xds_nacks_total", type="CDS") == 0

        # Both proxies are sent a cluster Envoy rejects.
        plane.pipeline.builder.resource_hook = with_invalid_cluster
        plane.pipeline.builder.republish()
        nacked = await until_scraped(
            plane, lambda s: value(s, "xds_nacks_total", type="CDS") == 2, "both proxies NACK CDS"
        )
        assert total(nacked, "xds_nacks_total") == 2, "only CDS was rejected"
        plane.pipeline.builder.resource_hook = None
        plane.pipeline.builder.republish()

        # One proxy goes away; the other stays connected.
        await delta.envoy.stop_async()
        gone = await until_scraped(
            plane, lambda s: value(s, "xds_connected_streams", kind="delta") == 0, "delta gone"
        )
        assert value(gone, "xds_connected_streams", kind="sotw") == 1
        assert value(gone, "xds_nacks_total", type="CDS") == 2
