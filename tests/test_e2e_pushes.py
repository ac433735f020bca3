"""Push history end to end: two real Envoys, an EndpointSlice edit, and each proxy's ACK.

An in-process control plane watches a manifest directory and serves one
Service to two real Envoy sidecars, one over SotW and one over Delta.  The
test writes an edited EndpointSlice into the directory (as `kubectl`-like
tools do, atomically) and checks what `/api/pushes` says against Envoy itself:
the generation names the slice (and its file) as its trigger, lists both
proxies, each with an ACK time after the change was seen, and Envoy runs the
new endpoint; the ACK latency histogram on `/metrics` gained exactly one
observation per proxy.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    SERVICE_PORT,
    Sidecar,
    admin_get,
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

from xds_server.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

FIRST, SECOND = "127.0.44.1", "127.0.44.2"
BACKEND_CLUSTER = f"outbound|{SERVICE_PORT}||backend.default.svc.cluster.local"
SLICE_KEY = "EndpointSlice/default/backend-slice"
XDS_TYPES = ("CDS", "EDS", "LDS", "RDS")


@dataclass
class Mesh:
    plane: ControlPlane
    directory: Path
    backend_port: int

    async def json(self, path: str) -> Any:
        return await admin_json(self.plane, path)

    async def text(self, path: str) -> str:
        return (await admin_get(self.plane, path)).text


@pytest.fixture
async def mesh(tmp_path: Path, free_port: Callable[[], int]) -> AsyncIterator[Mesh]:
    """`backend` with two pods (sample apps); its slice names only the first for now."""
    port = free_port()
    files = {
        "services.yaml": [service_yaml("backend")],
        "endpoints.yaml": [slice_yaml("backend", [FIRST], port)],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", FIRST), ("backend", "v1", SECOND))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        yield Mesh(plane, directory, port)


async def all_synced(mesh: Mesh, sidecars: list[Sidecar]) -> bool:
    rows = {row["node_id"]: row for row in await mesh.json("/api/proxies")}
    return all(
        s.node_id in rows and all(rows[s.node_id]["sync"][t] == "SYNCED" for t in XDS_TYPES)
        for s in sidecars
    )


async def quiet(mesh: Mesh) -> bool:
    """No generation kept is waiting on a proxy."""
    pushes = (await mesh.json("/api/pushes"))["pushes"]
    return all(push["counts"]["pending"] == 0 for push in pushes)


def ack_observations(metrics: str) -> float:
    found = re.search(r"^xds_push_ack_latency_seconds_count (\S+)$", metrics, re.MULTILINE)
    assert found is not None, "the ACK latency histogram is not on /metrics"
    return float(found.group(1))


async def hosts(sidecar: Sidecar) -> set[str]:
    return set(await sidecar.cluster_hosts(BACKEND_CLUSTER))


def moment(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_an_endpoint_slice_edit_is_shown_to_each_proxys_ack(
    mesh: Mesh, envoy_factory: EnvoyFactory, free_port: Callable[[], int]
) -> None:
    xds = mesh.plane.xds_port
    sidecars = [
        await start_sidecar(envoy_factory, xds, free_port(), delta=False, node_id="sotw-0.default"),
        await start_sidecar(envoy_factory, xds, free_port(), delta=True, node_id="delta-0.default"),
    ]
    await eventually(lambda: all_synced(mesh, sidecars), within=15, message="both SYNCED")
    await eventually(lambda: quiet(mesh), within=10, message="no push pending")
    before = ack_observations(await mesh.text("/metrics"))
    kept = (await mesh.json("/api/pushes"))["pushes"]
    newest_before = max((push["generation"] for push in kept), default=0)

    write_documents(
        mesh.directory / "endpoints.yaml", slice_yaml("backend", [FIRST, SECOND], mesh.backend_port)
    )

    async def acked_by_both() -> dict[str, Any] | None:
        for push in (await mesh.json("/api/pushes"))["pushes"]:
            if push["generation"] > newest_before and push["counts"]["acked"] == 2:
                return push
        return None

    summary = await eventually(acked_by_both, within=15, message="a push ACKed by both proxies")
    [trigger] = summary["triggers"]
    assert (trigger["key"], trigger["change"]) == (SLICE_KEY, "upserted")
    assert trigger["file"] == str(mesh.directory / "endpoints.yaml")
    assert BACKEND_CLUSTER in summary["changed"]["EDS"]["names"]
    assert summary["counts"]["nacked"] == summary["counts"]["pending"] == 0

    detail = await mesh.json(f"/api/pushes/{summary['generation']}")
    by_node = {proxy["node_id"]: proxy for proxy in detail["proxies"]}
    assert set(by_node) == {sidecar.node_id for sidecar in sidecars}
    observed = moment(detail["observed_at"])
    for node_id, proxy in by_node.items():
        assert proxy["status"] == "acked", node_id
        assert moment(proxy["acked_at"]) >= observed, node_id
        assert 0 <= proxy["latency_seconds"] < 15, node_id
        eds = [sent for sent in proxy["sent"] if sent["type"] == "EDS"]
        assert eds and all(sent["answer"] == "acked" for sent in eds), node_id
        assert BACKEND_CLUSTER in eds[0]["resources"]["names"], node_id
    # The ACK is Envoy's truth: both run the new endpoint.
    for sidecar in sidecars:
        assert await hosts(sidecar) == {FIRST, SECOND}

    assert ack_observations(await mesh.text("/metrics")) == before + 2
    page = await mesh.text("/")
    assert f'<a href="api/pushes/{summary["generation"]}">' in page
    assert f"<code>{SLICE_KEY}</code>" in page
