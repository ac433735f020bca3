"""End to end, with real Envoy sidecars, over both state-of-the-world and Delta xDS.

Manifests in a watched directory -> control plane -> a real Envoy -> real HTTP
to sample upstreams on their own loopback IPs.  Every behaviour here is
checked on traffic or on Envoy's own admin API, never on our internal state
alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    REJECTED_CLUSTER,
    SERVICE_PORT,
    TEST_CA_DIR,
    Sidecar,
    eventually,
    running_control_plane,
    service_yaml,
    sidecar_bootstrap,
    slice_yaml,
    start_sidecar,
    with_invalid_cluster,
    write_documents,
)

from xds_server.app import ControlPlane
from xds_server.resources import CLUSTER
from xds_server.sample_app import SampleApp, start_sample_app

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND_V1, BACKEND_V2, ECHO = "127.0.31.1", "127.0.31.2", "127.0.31.3"


@dataclass
class Upstreams:
    port: int
    apps: list[SampleApp]


@pytest.fixture
async def upstreams(free_port: Callable[[], int]) -> AsyncIterator[Upstreams]:
    """backend v1 and v2, and echo, each a "pod" on its own loopback IP, same port."""
    port = free_port()
    apps = [
        await start_sample_app("backend", "v1", BACKEND_V1, port),
        await start_sample_app("backend", "v2", BACKEND_V2, port),
        await start_sample_app("echo", "v1", ECHO, port),
    ]
    yield Upstreams(port, apps)
    for app in apps:
        await app.close()


def write_mesh(directory: Path, upstream_port: int) -> None:
    write_documents(directory / "services.yaml", service_yaml("backend"), service_yaml("echo"))
    write_documents(
        directory / "backend-endpoints.yaml",
        slice_yaml("backend", [BACKEND_V1, BACKEND_V2], upstream_port),
    )
    write_documents(directory / "echo-endpoints.yaml", slice_yaml("echo", [ECHO], upstream_port))


@dataclass
class InProcessMesh:
    directory: Path
    plane: ControlPlane
    upstream_port: int


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], upstreams: Upstreams
) -> AsyncIterator[InProcessMesh]:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_mesh(directory, upstreams.port)
    async with running_control_plane(directory, free_port) as plane:
        yield InProcessMesh(directory, plane, upstreams.port)


@pytest.fixture
async def sidecar(
    mesh: InProcessMesh, envoy_factory: EnvoyFactory, free_port: Callable[[], int], delta: bool
) -> Sidecar:
    return await start_sidecar(envoy_factory, mesh.plane.xds_port, free_port(), delta=delta)


async def answers(sidecar: Sidecar, host: str, count: int) -> set[str]:
    return {await sidecar.who_answers(host) for _ in range(count)}


async def test_a_request_through_the_sidecar_reaches_the_named_service(sidecar: Sidecar) -> None:
    assert await answers(sidecar, "backend", 6) == {"backend v1", "backend v2"}
    assert await answers(sidecar, f"echo.default.svc.cluster.local:{SERVICE_PORT}", 3) == {
        "echo v1"
    }
    assert await answers(sidecar, "echo.default", 2) == {"echo v1"}
    assert await sidecar.who_answers("nobody.default") == "HTTP 404"


async def test_an_edited_endpoint_slice_moves_traffic_within_one_second(
    mesh: InProcessMesh, sidecar: Sidecar
) -> None:
    loop = asyncio.get_running_loop()
    assert await answers(sidecar, "backend", 6) == {"backend v1", "backend v2"}

    edited_at = loop.time()
    write_documents(
        mesh.directory / "backend-endpoints.yaml",
        slice_yaml("backend", [BACKEND_V2], mesh.upstream_port),
    )
    # Traffic has moved once 10 requests in a row land on v2; the move is
    # dated by the first of them.
    run_started: float | None = None
    run_length = 0
    while run_length < 10:
        assert loop.time() - edited_at < 5, "traffic never settled on backend v2"
        sent_at = loop.time()
        if await sidecar.who_answers("backend") == "backend v2":
            run_started = sent_at if run_length == 0 else run_started
            run_length += 1
        else:
            run_length = 0
    assert run_started is not None
    assert run_started - edited_at < 1.0


async def test_a_deleted_service_disappears_from_envoy(
    mesh: InProcessMesh, sidecar: Sidecar
) -> None:
    echo_cluster = f"outbound|{SERVICE_PORT}||echo.default.svc.cluster.local"
    assert echo_cluster in await sidecar.cluster_names()
    assert await sidecar.who_answers("echo") == "echo v1"

    write_documents(mesh.directory / "services.yaml", service_yaml("backend"))

    async def echo_gone() -> bool:
        return echo_cluster not in await sidecar.cluster_names()

    await eventually(echo_gone, within=5, message="echo cluster removed from Envoy")
    assert await sidecar.who_answers("echo") == "HTTP 404"
    assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}


async def test_a_proxy_that_nacks_keeps_its_last_good_config_and_the_nack_is_recorded(
    mesh: InProcessMesh, sidecar: Sidecar
) -> None:
    assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}
    mesh.plane.pipeline.builder.resource_hook = with_invalid_cluster
    mesh.plane.pipeline.builder.republish()

    async def nack_recorded() -> list[dict[str, object]]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            proxies = (
                await client.get(f"http://127.0.0.1:{mesh.plane.admin_port}/api/proxies")
            ).json()
        return [
            t["last_nack"]
            for p in proxies
            if p["node_id"] == sidecar.node_id
            for t in p["types"]
            if t["type_url"] == CLUSTER and t["last_nack"]
        ]

    nacks = await eventually(nack_recorded, within=5, message="CDS NACK in /api/proxies")
    # Envoy's message says what is wrong; the record names the object to blame.
    assert "positive duration" in str(nacks[0]["message"])
    assert nacks[0]["resources"] == [REJECTED_CLUSTER]
    # The last good config keeps serving, and the rejected cluster never went live.
    assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}
    assert REJECTED_CLUSTER not in await sidecar.cluster_names()
    # The server does not loop re-sending the rejected version.
    stats = await sidecar.envoy.stats_async(filter=r"^cluster_manager\.cds\.update_rejected$")
    await asyncio.sleep(1.0)
    again = await sidecar.envoy.stats_async(filter=r"^cluster_manager\.cds\.update_rejected$")
    assert again == stats

    # Fixed config: the next push is ACKed and traffic still flows.
    mesh.plane.pipeline.builder.resource_hook = None
    mesh.plane.pipeline.builder.republish()

    async def acked() -> bool:
        for stream in mesh.plane.ads.streams():
            for status in stream.types.values():
                if stream.node_id == sidecar.node_id and status.type_url == CLUSTER:
                    return bool(status.acked_version) and status.acked_version == (
                        status.version_sent
                    )
        return False

    await eventually(acked, within=5, message="CDS ACKed after the fix")
    assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}


# -- a control plane that dies and comes back ---------------------------------------


def start_control_plane(
    directory: Path, xds_port: int, admin_port: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "xds_server.cli", "serve",
        "--source", f"file:{directory}",
        "--xds-listen", f"127.0.0.1:{xds_port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
        "--ca-dir", str(TEST_CA_DIR),
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def test_killing_and_restarting_the_control_plane_keeps_traffic_flowing_and_resyncs(
    tmp_path: Path,
    free_port: Callable[[], int],
    upstreams: Upstreams,
    envoy_factory: EnvoyFactory,
    delta: bool,
) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_mesh(directory, upstreams.port)
    xds_port, admin_port, outbound_port = free_port(), free_port(), free_port()
    log = tmp_path / "control-plane.log"
    plane = start_control_plane(directory, xds_port, admin_port, log)
    try:
        envoy = envoy_factory(
            sidecar_bootstrap("client-0.default", xds_port, outbound_port, delta=delta),
            name="client",
            start=False,
        )
        await envoy.start_async()
        await envoy.wait_live_async(timeout=30)
        sidecar = Sidecar(envoy, "client-0.default", outbound_port)
        assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}

        kill(plane)
        assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}

        async def disconnected() -> bool:
            stats = await envoy.stats_async(filter=r"^control_plane\.connected_state$")
            return stats.get("control_plane.connected_state") == 0

        await eventually(disconnected, within=10, message="Envoy sees the control plane gone")

        plane = start_control_plane(directory, xds_port, admin_port, log)

        async def connected() -> bool:
            stats = await envoy.stats_async(filter=r"^control_plane\.connected_state$")
            return stats.get("control_plane.connected_state") == 1

        await eventually(connected, within=40, interval=0.2, message="Envoy reconnected")
        assert await answers(sidecar, "backend", 4) == {"backend v1", "backend v2"}

        # Resynced: a change made now reaches Envoy through the new control plane.
        write_documents(
            directory / "backend-endpoints.yaml",
            slice_yaml("backend", [BACKEND_V1], upstreams.port),
        )

        async def only_v1() -> bool:
            return await answers(sidecar, "backend", 6) == {"backend v1"}

        await eventually(only_v1, within=10, message="traffic follows the new control plane")
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        kill(plane)


async def test_a_malformed_manifest_is_reported_by_name_and_the_mesh_keeps_its_config(
    mesh: InProcessMesh, sidecar: Sidecar
) -> None:
    broken = mesh.directory / "backend-endpoints.yaml"
    broken.write_text("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n  bad: [indent\n")
    invalid = mesh.directory / "echo-endpoints.yaml"
    invalid.write_text(slice_yaml("echo", ["not-an-ip"], mesh.upstream_port))

    async def errors() -> list[str]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            url = f"http://127.0.0.1:{mesh.plane.admin_port}/api/errors"
            found: list[str] = (await client.get(url)).json()["source"]
        return found if len(found) == 2 else []

    reported = sorted(await eventually(errors, within=5, message="both errors reported"))
    assert "backend-endpoints.yaml" in reported[0]
    assert "echo-endpoints.yaml" in reported[1]
    assert "EndpointSlice default/echo-slice" in reported[1]
    assert "endpoints[0].addresses[0]" in reported[1]
    # Both files keep their last good objects: nothing reaching Envoy changed.
    assert await answers(sidecar, "backend", 6) == {"backend v1", "backend v2"}
    assert await answers(sidecar, "echo", 2) == {"echo v1"}
