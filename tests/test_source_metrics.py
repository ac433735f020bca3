"""Source metrics: object changes by source, kind and event; Kubernetes watch restarts.

The file source on a real directory; the Kubernetes source against the emulated
API server (`kube_fixtures`), made to expire its history (410 Gone) and to drop
its connections, as a real cluster does.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.register_assert_rewrite("kube_fixtures")

from file_source_fixtures import Mesh, key, svc, until, write
from kube_fixtures import FAST, SERVICES, ApiServerEmulator, endpoint_slice, service, unavailable
from kubernetes import client
from prometheus_client import CollectorRegistry

from xds_server.model import ChangeSet
from xds_server.model.changes import Kind, ObjectKey
from xds_server.sources.file import FileSource
from xds_server.sources.k8s_kinds import MESH_KINDS
from xds_server.sources.kubernetes import KubernetesSource
from xds_server.sources.metrics import SourceMetrics

pytest_plugins = ("kube_fixtures",)

pytestmark = pytest.mark.timeout(60)


def events(registry: CollectorRegistry, source: str, kind: str, event: str) -> float:
    labels = {"source": source, "kind": kind, "event": event}
    return registry.get_sample_value("xds_source_events_total", labels) or 0.0


def restarts(registry: CollectorRegistry, kind: str, reason: str) -> float:
    labels = {"kind": kind, "reason": reason}
    return registry.get_sample_value("xds_source_watch_restarts_total", labels) or 0.0


def test_a_change_set_counts_each_upsert_and_delete_by_kind() -> None:
    registry = CollectorRegistry()
    changes = ChangeSet()
    changes.delete(ObjectKey(Kind.SERVICE, "default", "gone"))
    changes.delete(ObjectKey(Kind.ENDPOINT_SLICE, "default", "gone-1"))
    changes.delete(ObjectKey(Kind.ENDPOINT_SLICE, "default", "gone-2"))

    SourceMetrics(registry).emitted("file", changes)

    assert events(registry, "file", "Service", "delete") == 1
    assert events(registry, "file", "EndpointSlice", "delete") == 2
    assert events(registry, "file", "Service", "upsert") == 0


async def test_the_file_source_counts_its_initial_load_and_every_later_change(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", svc("a"), svc("b"))
    registry = CollectorRegistry()
    source = FileSource(tmp_path, debounce_ms=10)
    source.metrics = SourceMetrics(registry)
    mesh, ready = Mesh(), asyncio.Event()
    task = asyncio.create_task(source.run(mesh.emit, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert events(registry, "file", "Service", "upsert") == 2

        write(tmp_path / "a.yaml", svc("a", 81))
        await until(lambda: key("b") not in mesh.objects)
        assert events(registry, "file", "Service", "upsert") == 3
        assert events(registry, "file", "Service", "delete") == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_kubernetes_watch_events_and_restarts_are_counted_by_kind_and_reason(
    api_server: ApiServerEmulator, kube_configuration: client.Configuration
) -> None:
    api_server.create(service("a"))
    api_server.create(endpoint_slice("a", ["10.1.0.5"], 8080))
    registry = CollectorRegistry()
    source = KubernetesSource(
        FAST,
        kinds=MESH_KINDS,
        configuration=kube_configuration,
        rng=random.Random(7),
        metrics=SourceMetrics(registry),
    )
    seen: list[ChangeSet] = []
    ready = asyncio.Event()
    task = asyncio.create_task(source.run(seen.append, ready))

    async def until_sample(check: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not check():  # noqa: ASYNC110 - counters have no event to wait on
                await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(ready.wait(), 10)
        assert events(registry, "kubernetes", "Service", "upsert") == 1
        assert events(registry, "kubernetes", "EndpointSlice", "upsert") == 1
        assert restarts(registry, "Service", "expired") == 0

        api_server.create(service("b"))
        await until_sample(lambda: events(registry, "kubernetes", "Service", "upsert") == 2)

        # A dropped connection: the watch failed, and is retried.
        await until_sample(lambda: api_server.open_watches >= 3)
        api_server.drop_watches()
        await until_sample(lambda: restarts(registry, "Service", "failed") >= 1)

        # Changes while the watches are down, then the history they would resume
        # from is gone: 410, relist.
        await until_sample(lambda: api_server.open_watches >= 3)
        with unavailable(api_server, "services"):
            api_server.drop_watches()
            api_server.create(service("c"))
            api_server.compact()
        await until_sample(lambda: restarts(registry, "Service", "expired") >= 1)
        await until_sample(lambda: events(registry, "kubernetes", "Service", "upsert") == 3)

        api_server.delete(SERVICES, "default", "b")
        await until_sample(lambda: events(registry, "kubernetes", "Service", "delete") == 1)
        kinds = {s.labels["kind"] for family in registry.collect() for s in family.samples}
        assert kinds <= {kind.value for kind in Kind} | {kind.kind for kind in MESH_KINDS}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
