"""Manifests and a running file source, shared by the file source's tests.

`running_source` runs a real `FileSource` on a real directory in the test's
event loop, with a `Mesh` recording what a consumer sees; `endpoint_slices`
builds a valid multi-document manifest of a chosen size, for the tests that
need a file that takes seconds to parse.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from xds_server.model import ChangeSet, Kind, ObjectKey, Service, ServicePort
from xds_server.model.changes import MeshObject
from xds_server.sources.file import FileSource

TIMEOUT = 5.0


def svc(name: str, port: int = 80, namespace: str = "default") -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{selector: {{app: {name}}}, ports: [{{name: http, port: {port}}}]}}\n"
    )


def service(name: str, port: int = 80, namespace: str = "default") -> Service:
    return Service(
        namespace=namespace,
        name=name,
        ports=(ServicePort(port, name="http", target_port=port),),
        selector=(("app", name),),
    )


def key(name: str, namespace: str = "default") -> ObjectKey:
    return ObjectKey(Kind.SERVICE, namespace, name)


def slice_key(name: str, namespace: str = "default") -> ObjectKey:
    return ObjectKey(Kind.ENDPOINT_SLICE, namespace, name)


def write(path: Path, *documents: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("---\n".join(documents))


def replace_file(path: Path, text: str) -> None:
    """Write atomically (a rename), so the source never sees half a large file."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.replace(path)


ENDPOINTS_PER_SLICE = 250
"""Endpoints in each generated slice; a slice is then about 20 KB of YAML."""


def endpoint_slices(
    prefix: str, count: int, *, service: str | None = None, namespace: str = "default"
) -> str:
    """`count` valid EndpointSlices `{prefix}-0`... of ENDPOINTS_PER_SLICE endpoints each.

    They belong to `service` (default: each to its own `{prefix}-{i}`).  Parsing
    takes about 1.6 s per MB here with libyaml.
    """
    documents = []
    for i in range(count):
        endpoints = "".join(
            f"  - addresses: ['10.{i // 256 % 256}.{i % 256}.{j}']\n"
            f"    conditions: {{ready: true}}\n    nodeName: node-{j}\n"
            for j in range(ENDPOINTS_PER_SLICE)
        )
        documents.append(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            f"metadata:\n  name: {prefix}-{i}\n  namespace: {namespace}\n"
            f"  labels: {{kubernetes.io/service-name: {service or f'{prefix}-{i}'}}}\n"
            "addressType: IPv4\nports:\n  - {name: http, port: 8080, protocol: TCP}\n"
            f"endpoints:\n{endpoints}"
        )
    return "---\n".join(documents)


def slices_of_size(prefix: str, approx_bytes: int, **options: Any) -> str:
    one = len(endpoint_slices(prefix, 1, **options))
    return endpoint_slices(prefix, max(1, approx_bytes // one), **options)


class Mesh:
    """What a consumer of the source sees: every ChangeSet, applied in order."""

    def __init__(self) -> None:
        self.changes: list[ChangeSet] = []
        self.objects: dict[ObjectKey, MeshObject] = {}
        self.times: list[float] = []
        self.received_at: list[float] = []
        """Wall-clock (`time.time()`) arrival of each ChangeSet, to compare with `observed_at`."""

    def emit(self, changes: ChangeSet) -> None:
        self.changes.append(changes)
        self.times.append(time.monotonic())
        self.received_at.append(time.time())
        for k in changes.deletes:
            self.objects.pop(k, None)
        self.objects.update(changes.upserts)

    def deleted(self) -> set[ObjectKey]:
        return {k for c in self.changes for k in c.deletes}

    def ever_upserted(self) -> set[ObjectKey]:
        return {k for c in self.changes for k in c.upserts}

    def arrival(self, wanted: ObjectKey) -> float:
        """When `wanted` was first emitted (monotonic time)."""
        return next(t for c, t in zip(self.changes, self.times, strict=True) if wanted in c.upserts)


async def until(predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Wait (bounded) for the source to reach a state; polls, as errors emit nothing."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running_source(directory: Path, **options: Any) -> AsyncIterator[tuple[FileSource, Mesh]]:
    """A FileSource running on `directory` (its initial load emitted), cancelled on exit."""
    source = FileSource(directory, **options)
    mesh, ready = Mesh(), asyncio.Event()
    task = asyncio.create_task(source.run(mesh.emit, ready))
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=3 * TIMEOUT, return_when="FIRST_COMPLETED")
        if task.done():
            task.result()  # run() failed: say how
        assert ready.is_set(), "the source's initial load did not finish"
        yield source, mesh
    finally:
        waiter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
