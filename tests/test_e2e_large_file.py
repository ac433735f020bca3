"""End to end, with a real Envoy: a large manifest file never holds back the rest of the mesh.

A ~5 MB manifest (a Service, its EndpointSlice and a few thousand more
slices: seconds of parsing) and an edit to another file (a new endpoint on a
routed service) are written at the same moment: the edit reaches Envoy within
a second, the control plane's admin API keeps answering meanwhile, and the
large file's service is served once its parse ends.  A file over
`MAX_FILE_BYTES` is rejected from its size alone (a sparse terabyte: reading
it would take hours), and the objects it defined before stay in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    Sidecar,
    admin_json,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_apps,
    start_sidecar,
    write_documents,
)
from file_source_fixtures import slices_of_size

from xds_server.app import ControlPlane
from xds_server.sources import limits
from xds_server.sources.file import FileSource

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND_V1, BACKEND_V2, BULK = "127.0.46.1", "127.0.46.2", "127.0.46.3"
LARGE_FILE_BYTES = 5_000_000


@dataclass
class Mesh:
    directory: Path
    plane: ControlPlane
    sidecar: Sidecar
    port: int

    @property
    def source(self) -> FileSource:
        assert isinstance(self.plane.source, FileSource)
        return self.plane.source

    async def source_errors(self) -> list[str]:
        errors: list[str] = (await admin_json(self.plane, "/api/errors"))["source"]
        return errors


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Mesh]:
    """backend (v1 routed, v2 up but not yet an endpoint) and bulk, each a "pod"; one sidecar."""
    port = free_port()
    files = {
        "services.yaml": [service_yaml("backend")],
        "backend.yaml": [slice_yaml("backend", [BACKEND_V1], port)],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(
            stack,
            port,
            ("backend", "v1", BACKEND_V1),
            ("backend", "v2", BACKEND_V2),
            ("bulk", "v1", BULK),
        )
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)
        yield Mesh(directory, plane, sidecar, port)


@dataclass
class HealthProbe:
    """/healthz of the control plane's admin API, asked every 50 ms: how long each answer took."""

    url: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                sent = time.monotonic()
                try:
                    response = await client.get(self.url)
                    if response.status_code != 200:
                        self.failures.append(f"HTTP {response.status_code}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                self.latencies.append(time.monotonic() - sent)
                await asyncio.sleep(0.05)


async def first_answer_from(sidecar: Sidecar, host: str, wanted: str, within: float) -> float:
    """Ask `host` through the sidecar until `wanted` answers; when that request was sent."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sent = time.monotonic()
        if await sidecar.who_answers(host) == wanted:
            return sent
        await asyncio.sleep(0.01)
    raise AssertionError(f"{wanted} never answered for {host} within {within} s")


async def test_a_large_file_and_an_edit_written_together_the_edit_reaches_envoy_within_a_second(
    mesh: Mesh,
) -> None:
    assert {await mesh.sidecar.who_answers("backend") for _ in range(4)} == {"backend v1"}
    assert await mesh.sidecar.who_answers("bulk") == "HTTP 404"
    large = "---\n".join(
        [
            service_yaml("bulk"),
            slice_yaml("bulk", [BULK], mesh.port),
            slices_of_size("filler", LARGE_FILE_BYTES),
        ]
    )
    probe = HealthProbe(f"http://127.0.0.1:{mesh.plane.admin_port}/healthz")
    probing = asyncio.create_task(probe.run())
    try:
        written = time.monotonic()
        write_documents(mesh.directory / "bulk.yaml", large)
        write_documents(
            mesh.directory / "backend.yaml",
            slice_yaml("backend", [BACKEND_V1, BACKEND_V2], mesh.port),
        )
        edit_reached = await first_answer_from(mesh.sidecar, "backend", "backend v2", within=5)
        still_parsing = mesh.source.parsing

        async def parse_ended() -> bool:
            return not mesh.source.parsing

        await eventually(parse_ended, within=90, message="the large file's parse ends")
        parsed = time.monotonic()
        probes_while_parsing = list(probe.latencies)
        bulk_served = await first_answer_from(mesh.sidecar, "bulk", "bulk v1", within=30)
    finally:
        probing.cancel()

    edit_s, parse_s, bulk_s = edit_reached - written, parsed - written, bulk_served - written
    print(
        f"\nlarge file {len(large):,} bytes: other edit reached Envoy in {edit_s:.3f} s; "
        f"large file parsed in {parse_s:.1f} s, served by Envoy after {bulk_s:.1f} s; "
        f"/healthz answered {len(probes_while_parsing)} times while it parsed, "
        f"slowest {max(probes_while_parsing):.3f} s"
    )
    assert len(large) >= LARGE_FILE_BYTES
    assert still_parsing == {mesh.directory / "bulk.yaml"}, "the edit did not overtake the parse"
    assert edit_s < 1.0
    assert parse_s > 2 * edit_s  # the file really took a while: the overlap was real
    assert probe.failures == []
    assert len(probes_while_parsing) >= parse_s / 0.5  # answered throughout, not once at the end
    assert max(probes_while_parsing) < 1.0  # a parse on the event loop would stall it for seconds
    assert await mesh.source_errors() == []
    assert {await mesh.sidecar.who_answers("backend") for _ in range(6)} == {
        "backend v1",
        "backend v2",
    }


async def test_a_file_over_the_size_limit_is_rejected_unread_and_its_objects_stay(
    mesh: Mesh,
) -> None:
    path = mesh.directory / "backend.yaml"
    size = 1 << 40
    rejected_by = time.monotonic()
    os.truncate(path, size)  # a sparse terabyte: its first bytes are still the good slice

    errors = await eventually(mesh.source_errors, within=5, interval=0.02, message="an error")
    rejected_s = time.monotonic() - rejected_by
    print(f"\na sparse {size:,}-byte file was rejected in {rejected_s:.3f} s")
    assert errors == [
        f"{path}: file is {size:,} bytes, over the limit of {limits.MAX_FILE_BYTES:,} bytes "
        "(16 MiB): not read; the objects it defined before stay in force"
    ]
    assert rejected_s < 1.0
    assert {await mesh.sidecar.who_answers("backend") for _ in range(4)} == {"backend v1"}

    write_documents(path, slice_yaml("backend", [BACKEND_V2], mesh.port))
    await first_answer_from(mesh.sidecar, "backend", "backend v2", within=5)
    assert await mesh.source_errors() == []
