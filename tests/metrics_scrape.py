"""Control planes that count into their one registry, and `/metrics` read as Prometheus reads it.

`metered_plane` is `e2e_mesh.running_control_plane` with the pipeline and the source
given the plane's registry before it runs (`hand_registry_down`); `scrape` parses the
admin port's `/metrics` with `prometheus_client.parser`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from e2e_mesh import admin_get, plane_settings
from prometheus_client.parser import text_string_to_metric_families

from xds_server.app import ControlPlane
from xds_server.pipeline import PipelineMetrics
from xds_server.sources.metrics import SourceMetrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""(sample name, its labels) -> value."""


def hand_registry_down(plane: ControlPlane) -> None:
    """The pipeline and the source count into the plane's one registry.

    `ControlPlane` is to hand its registry to both when it builds them; where it
    does not yet, this does the same before the plane runs.
    """
    if plane.pipeline.metrics is None:
        plane.pipeline.metrics = PipelineMetrics(plane.registry)
    source: Any = plane.source
    if source.metrics is None:
        source.metrics = SourceMetrics(plane.registry)


@contextlib.asynccontextmanager
async def metered_plane(
    directory: Path, free_port: Callable[[], int]
) -> AsyncIterator[ControlPlane]:
    """An in-process control plane on `directory` counting into its registry, stopped on exit."""
    plane = ControlPlane(plane_settings(f"file:{directory}", free_port))
    hand_registry_down(plane)
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        yield plane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def metrics_text(plane: ControlPlane) -> str:
    response = await admin_get(plane, "/metrics")
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def scrape(plane: ControlPlane) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await metrics_text(plane))
        for sample in family.samples
    }


SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "untyped": ("",),
}


def exported_names(text: str) -> set[str]:
    """Every sample name the exposition `text` holds, and for a family with no sample
    yet (a labelled one no child of which was counted) the names it would have: a
    counter `x` of `prometheus_client` declares `x_total`, a histogram its buckets."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.samples:
            names.update(sample.name for sample in family.samples)
        else:
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names
