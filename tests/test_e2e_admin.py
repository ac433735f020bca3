"""The admin view end to end: a real Envoy sidecar, and what the admin says of it.

An in-process control plane serves a one-service mesh to a real Envoy over
SotW and Delta.  The admin's claims are checked against Envoy itself: a type
shown SYNCED is running in Envoy, the CDS config shown is the set of clusters
Envoy's own admin lists, and a cluster Envoy rejects shows as NACKED, named,
on the page and in the API.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    REJECTED_CLUSTER,
    SERVICE_PORT,
    Sidecar,
    eventually,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_sidecar,
    with_invalid_cluster,
    write_documents,
)

from xds_server import translate
from xds_server.app import ControlPlane
from xds_server.model import Service
from xds_server.sample_app import start_sample_app

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND = "127.0.33.1"
BACKEND_CLUSTER = f"outbound|{SERVICE_PORT}||backend.default.svc.cluster.local"
XDS_TYPES = ("CDS", "EDS", "LDS", "RDS", "SDS")
"""Every proxy is served SDS too: its identity's certificate and the trust roots."""


@dataclass
class Admin:
    """The control plane under test and an HTTP client for its admin port."""

    plane: ControlPlane
    url: str
    backend_port: int
    """Where the backend sample app listens (its slice's port)."""

    async def get(self, path: str, **params: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            return await client.get(path, params=params)

    async def json(self, path: str, **params: str) -> Any:
        response = await self.get(path, **params)
        response.raise_for_status()
        return response.json()


@pytest.fixture
async def admin(tmp_path: Path, free_port: Callable[[], int]) -> AsyncIterator[Admin]:
    """A control plane serving `backend` (one pod, a sample app on its own loopback IP)."""
    upstream_port = free_port()
    backend = await start_sample_app("backend", "v1", BACKEND, upstream_port)
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "services.yaml", service_yaml("backend"))
    write_documents(directory / "endpoints.yaml", slice_yaml("backend", [BACKEND], upstream_port))
    try:
        async with running_control_plane(directory, free_port) as plane:
            yield Admin(plane, f"http://127.0.0.1:{plane.admin_port}", upstream_port)
    finally:
        await backend.close()


@pytest.fixture
async def sidecar(
    admin: Admin, envoy_factory: EnvoyFactory, free_port: Callable[[], int], delta: bool
) -> Sidecar:
    return await start_sidecar(envoy_factory, admin.plane.xds_port, free_port(), delta=delta)


async def row_of(admin: Admin, node_id: str) -> dict[str, Any] | None:
    rows: list[dict[str, Any]] = await admin.json("/api/proxies")
    return next((row for row in rows if row["node_id"] == node_id), None)


async def wait_synced(admin: Admin, sidecar: Sidecar) -> dict[str, Any]:
    async def synced() -> dict[str, Any] | None:
        row = await row_of(admin, sidecar.node_id)
        if row is None or any(row["sync"][t] != "SYNCED" for t in XDS_TYPES):
            return None
        return row

    row: dict[str, Any] = await eventually(synced, within=10, message="CDS/EDS/LDS/RDS/SDS SYNCED")
    return row


async def inject_nack(admin: Admin, sidecar: Sidecar) -> dict[str, Any]:
    """Publish the invalid cluster; return the proxy's row once CDS shows NACKED."""
    await wait_synced(admin, sidecar)
    admin.plane.pipeline.builder.resource_hook = with_invalid_cluster
    admin.plane.pipeline.builder.republish()

    async def nacked() -> dict[str, Any] | None:
        row = await row_of(admin, sidecar.node_id)
        return row if row is not None and row["sync"]["CDS"] == "NACKED" else None

    row: dict[str, Any] = await eventually(nacked, within=10, message="CDS NACKED")
    return row


async def test_a_synced_sidecar_and_the_config_it_runs_are_shown(
    admin: Admin, sidecar: Sidecar, delta: bool
) -> None:
    assert await sidecar.who_answers("backend") == "backend v1"

    row = await wait_synced(admin, sidecar)
    assert row["kind"] == ("delta" if delta else "sotw")
    assert (row["namespace"], row["snapshot_error"]) == ("default", None)
    assert {t["type"]: t["status"] for t in row["types"]} == dict.fromkeys(XDS_TYPES, "SYNCED")
    detail = await admin.json(f"/api/proxies/{quote(sidecar.node_id, safe='')}")
    assert (detail["node_id"], detail["stream_id"]) == (sidecar.node_id, row["stream_id"])

    config = await admin.json(f"/api/proxies/{sidecar.node_id}/config", type="CDS")
    [cds] = config["types"]
    assert cds["type"] == "CDS"
    served = {resource["name"]: resource["resource"] for resource in cds["resources"]}
    assert served[BACKEND_CLUSTER]["name"] == BACKEND_CLUSTER
    assert served[BACKEND_CLUSTER]["type"] == "EDS"
    # Every cluster the admin says it serves is one Envoy runs (Envoy adds its static ones).
    envoy_clusters = await sidecar.cluster_names()
    assert BACKEND_CLUSTER in envoy_clusters
    assert set(served) <= envoy_clusters

    index = await admin.get("/")
    assert index.status_code == 200
    assert f'<a href="proxies/{sidecar.node_id}"><code>{sidecar.node_id}</code></a>' in index.text
    page = (await admin.get(f"/proxies/{sidecar.node_id}")).text
    assert f"<code>{BACKEND_CLUSTER}</code>" in page
    assert 'class="sync sync-nacked"' not in page


async def test_a_rejected_cluster_shows_as_nacked_with_its_name_until_fixed(
    admin: Admin, sidecar: Sidecar
) -> None:
    row = await inject_nack(admin, sidecar)

    [cds] = [t for t in row["types"] if t["type"] == "CDS"]
    assert "positive duration" in cds["last_nack"]["message"]
    assert cds["last_nack"]["resources"] == [REJECTED_CLUSTER]
    assert all(row["sync"][t] == "SYNCED" for t in ("EDS", "LDS", "RDS"))
    errors = await admin.json("/api/errors")
    assert [(n["node_id"], n["type"], n["resources"]) for n in errors["nacks"]] == [
        (sidecar.node_id, "CDS", [REJECTED_CLUSTER])
    ]
    index = (await admin.get("/")).text
    assert "CDS NACKED" in index
    assert f"<code>{REJECTED_CLUSTER}</code>" in index
    assert "positive duration" in index
    page = (await admin.get(f"/proxies/{sidecar.node_id}", type="CDS")).text
    assert f'<details class="resource blamed"><summary><code>{REJECTED_CLUSTER}</code>' in page
    # Envoy kept its previous clusters: the admin's NACKED is Envoy's truth.
    assert REJECTED_CLUSTER not in await sidecar.cluster_names()

    admin.plane.pipeline.builder.resource_hook = None
    admin.plane.pipeline.builder.republish()
    await wait_synced(admin, sidecar)
    assert (await admin.json("/api/errors"))["nacks"] == []
    assert 'class="sync sync-nacked"' not in (await admin.get("/")).text


async def envoy_hosts(sidecar: Sidecar, cluster: str) -> set[str]:
    """The addresses Envoy itself holds for `cluster`."""
    for status in await sidecar.envoy.clusters_async():
        if status["name"] == cluster:
            return {
                host["address"]["socket_address"]["address"]
                for host in status.get("host_statuses", [])
            }
    return set()


POISON = "127.0.33.9"
"""An address the injected failure refuses to translate."""
ECHO = "127.0.33.3"


async def test_an_object_whose_translation_raises_costs_only_that_object(
    admin: Admin,
    sidecar: Sidecar,
    tmp_path: Path,
    free_port: Callable[[], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await wait_synced(admin, sidecar)
    original = translate.load_assignments_for_service

    def failing(service: Service, slices: Any, *args: Any) -> Any:
        if any(POISON in e.addresses for eps in slices for e in eps.endpoints):
            raise ValueError(f"injected: cannot translate {POISON}")
        return original(service, slices, *args)

    monkeypatch.setattr(translate, "load_assignments_for_service", failing)
    echo_port = free_port()
    echo = await start_sample_app("echo", "v1", ECHO, echo_port)
    directory = tmp_path / "manifests"
    original_slice = (directory / "endpoints.yaml").read_text()
    try:
        write_documents(
            directory / "endpoints.yaml",
            slice_yaml("backend", [BACKEND, POISON], admin.backend_port),
        )
        write_documents(
            directory / "echo.yaml", service_yaml("echo"), slice_yaml("echo", [ECHO], echo_port)
        )

        async def echo_answers() -> bool:
            return await sidecar.who_answers("echo") == "echo v1"

        await eventually(echo_answers, within=10, message="echo reachable through the sidecar")
        # The poisoned slice was left out: Envoy keeps backend's last good endpoints.
        assert await envoy_hosts(sidecar, BACKEND_CLUSTER) == {BACKEND}
        assert await sidecar.who_answers("backend") == "backend v1"
        [(shown, error)] = admin.plane.pipeline.translation_errors()
        assert shown == "EndpointSlice default/backend-slice"
        assert f"injected: cannot translate {POISON}" in error
        [listed] = (await admin.json("/api/errors"))["translation"]
        assert listed["object"] == "EndpointSlice default/backend-slice"
        assert f"injected: cannot translate {POISON}" in listed["error"]
        assert (await admin.json("/readyz"))["ready"] is True

        monkeypatch.undo()
        (directory / "endpoints.yaml").write_text(original_slice)

        async def cleared() -> bool:
            return (await admin.json("/api/errors"))["translation"] == []

        await eventually(cleared, within=10, message="the error cleared by the fix")
        assert await envoy_hosts(sidecar, BACKEND_CLUSTER) == {BACKEND}
    finally:
        await echo.close()


async def test_the_admin_lists_are_paged_against_a_real_proxy(
    admin: Admin, sidecar: Sidecar
) -> None:
    await wait_synced(admin, sidecar)

    response = await admin.get("/api/proxies", limit="1")
    config = await admin.json(f"/api/proxies/{sidecar.node_id}/config", type="CDS", limit="1")
    errors = await admin.json("/api/errors")

    assert response.headers["x-total-count"] == "1"
    assert [row["node_id"] for row in response.json()] == [sidecar.node_id]
    [cds] = config["types"]
    assert len(cds["resources"]) == 1
    assert cds["total"] == len(await admin_clusters(admin, sidecar)) >= 1
    assert config["next_offset"] == (1 if cds["total"] > 1 else None)
    assert errors["total"] == dict.fromkeys(
        ["source", "translation", "nacks", "snapshots", "metadata"], 0
    )


async def admin_clusters(admin: Admin, sidecar: Sidecar) -> list[str]:
    config = await admin.json(f"/api/proxies/{sidecar.node_id}/config", type="CDS", limit=str(1000))
    return [resource["name"] for resource in config["types"][0]["resources"]]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


async def screenshot(url: str, path: Path) -> None:
    browser = chromium()
    assert browser is not None
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1400,900", f"--screenshot={path}", url,
    ]  # fmt: skip
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt install chromium)")
@pytest.mark.parametrize("delta", [False], ids=["sotw"])
async def test_the_pages_render_in_a_real_browser(
    admin: Admin, sidecar: Sidecar, tmp_path: Path
) -> None:
    await inject_nack(admin, sidecar)
    for name, path in [("index", "/"), ("proxy", f"/proxies/{sidecar.node_id}")]:
        shot = tmp_path / f"admin-{name}.png"
        await screenshot(admin.url + path, shot)
        image = await asyncio.to_thread(shot.read_bytes)
        assert image.startswith(b"\x89PNG\r\n\x1a\n")
