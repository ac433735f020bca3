"""`xds-server status | config | explain` against a running control plane with real Envoys.

A real `xds-server serve --source file:DIR` process serves a two-service mesh
to two real Envoy sidecars (one SotW, one Delta).  The CLI runs as a user runs
it (`python -m xds_server.cli ...`, a subprocess) against the admin port, and
what it prints is checked against the admin API and against Envoy itself: a
type shown SYNCED carries the versions the API reports, the clusters `config`
lists are the clusters Envoy's own `/config_dump` holds.  The admin API's
answers are parsed with the models the CLI reads them through, and must
round-trip through them unchanged (the models are the contract).  Failures
are one line and exit 1: an unknown proxy, an admin nobody answers on.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    REJECTED_CLUSTER,
    Sidecar,
    eventually,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_sidecar,
    with_invalid_cluster,
    write_documents,
)
from plane_process import ControlPlaneProcess, get_json

from xds_server import cli_admin
from xds_server.admin import SyncStatus
from xds_server.admin.models import (
    SYNC_STATES,
    ExplainResult,
    ProxyConfig,
    ProxyDetail,
    ProxyStatus,
)
from xds_server.admin.paging import MAX_LIMIT
from xds_server.settings import Settings

XDS_TYPES = ("CDS", "EDS", "LDS", "RDS")
SIDECARS = {"client-sotw.default": False, "client-delta.default": True}
"""Node id -> Delta xDS."""


def xds_server(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """The `xds-server` command as a user runs it."""
    command = [sys.executable, "-m", "xds_server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`xds_server(...)` off the event loop (an in-process control plane keeps serving)."""
    return await asyncio.to_thread(xds_server, *args)


def table_rows(text: str) -> list[dict[str, str]]:
    """A table the CLI printed, as one dict per row keyed by its header (no cell is empty)."""
    header, *lines = text.splitlines()
    columns = re.split(r"\s{2,}", header.strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert all(len(row) == len(columns) for row in rows), text
    return [dict(zip(columns, row, strict=True)) for row in rows]


def round_trips(model: type[Any], body: Any) -> None:
    """`body` parses with `model` and renders back to itself: the model is the JSON."""
    assert model.model_validate(body).model_dump(mode="json", by_alias=True) == body


# -- a control plane process with two sidecars --------------------------------------------


@dataclass
class Mesh:
    plane: ControlPlaneProcess
    sidecars: dict[str, Sidecar]

    @property
    def admin(self) -> str:
        return self.plane.admin_url

    def api(self, path: str, **params: str) -> Any:
        query = "&".join(f"{key}={quote(value)}" for key, value in params.items())
        status, body = get_json(f"{self.admin}{path}" + (f"?{query}" if query else ""))
        assert status == 200, body
        return body


@pytest.fixture
def plane(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[ControlPlaneProcess]:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "services.yaml", service_yaml("backend"), service_yaml("web"))
    write_documents(
        directory / "endpoints.yaml",
        slice_yaml("backend", ["127.0.44.1", "127.0.44.2"], 9001),
        slice_yaml("web", ["127.0.44.3"], 9002),
    )
    process = ControlPlaneProcess(directory, free_port(), free_port(), tmp_path / "plane.log")
    try:
        process.start().wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
async def mesh(
    plane: ControlPlaneProcess, envoy_factory: EnvoyFactory, free_port: Callable[[], int]
) -> AsyncIterator[Mesh]:
    sidecars = {
        node_id: await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=delta, node_id=node_id
        )
        for node_id, delta in SIDECARS.items()
    }
    found = Mesh(plane, sidecars)

    def all_synced() -> bool:
        rows = found.api("/api/proxies")
        synced = {
            row["node_id"] for row in rows if all(row["sync"][t] == "SYNCED" for t in XDS_TYPES)
        }
        return synced == set(SIDECARS)

    await eventually(lambda: asyncio.to_thread(all_synced), within=15, message="both SYNCED")
    yield found


# -- status -------------------------------------------------------------------------------


@pytest.mark.envoy
@pytest.mark.timeout(120)
async def test_status_shows_every_proxy_synced_with_the_versions_the_admin_reports(
    mesh: Mesh,
) -> None:
    table, as_json = await asyncio.gather(
        cli("status", "--admin", mesh.admin), cli("status", "--admin", mesh.admin, "-o", "json")
    )
    api = {row["node_id"]: row for row in mesh.api("/api/proxies")}

    assert (table.returncode, table.stderr) == (0, "")
    rows = {(row["PROXY"], row["TYPE"]): row for row in table_rows(table.stdout)}
    for node_id, delta in SIDECARS.items():
        for type_name in XDS_TYPES:
            [reported] = [t for t in api[node_id]["types"] if t["type"] == type_name]
            row = rows[(node_id, type_name)]
            assert (row["STATUS"], row["KIND"], row["NAMESPACE"]) == (
                "SYNCED",
                "delta" if delta else "sotw",
                "default",
            )
            assert (row["SENT"], row["ACKED"]) == (
                reported["version_sent"],
                reported["acked_version"],
            )
            assert re.fullmatch(r"\d+s ago", row["LAST ACK"]), row

    assert as_json.returncode == 0, as_json.stderr
    shown = {row["node_id"]: ProxyStatus.model_validate(row) for row in json.loads(as_json.stdout)}
    assert set(shown) == set(SIDECARS)
    for node_id, proxy in shown.items():
        assert proxy.sync == api[node_id]["sync"]
        for type_name in XDS_TYPES:
            state = proxy.type_sync(type_name)
            [reported] = [t for t in api[node_id]["types"] if t["type"] == type_name]
            assert state is not None and state.status == "SYNCED"
            assert (state.version_sent, state.acked_version) == (
                reported["version_sent"],
                reported["acked_version"],
            )
            assert state.acked_at is not None
            assert timedelta(0) <= datetime.now(UTC) - state.acked_at < timedelta(seconds=60)


@pytest.mark.envoy
@pytest.mark.timeout(120)
async def test_the_admin_api_answers_are_exactly_what_the_cli_models_describe(
    mesh: Mesh,
) -> None:
    node_id = next(iter(SIDECARS))
    quoted = quote(node_id, safe="")

    for row in mesh.api("/api/proxies"):
        round_trips(ProxyStatus, row)
    round_trips(ProxyDetail, mesh.api(f"/api/proxies/{quoted}"))
    round_trips(ProxyConfig, mesh.api(f"/api/proxies/{quoted}/config"))
    round_trips(ProxyConfig, mesh.api(f"/api/proxies/{quoted}/config", type="EDS", limit="1"))
    round_trips(ExplainResult, mesh.api(f"/api/proxies/{quoted}/explain"))
    round_trips(ExplainResult, mesh.api(f"/api/proxies/{quoted}/explain", type="RDS"))


# -- config -------------------------------------------------------------------------------


@pytest.mark.envoy
@pytest.mark.timeout(120)
@pytest.mark.parametrize("node_id", list(SIDECARS))
async def test_config_lists_the_clusters_envoy_really_has(mesh: Mesh, node_id: str) -> None:
    table, as_json = await asyncio.gather(
        cli("config", node_id, "--type", "CDS", "--admin", mesh.admin),
        cli("config", node_id, "--type", "cds", "--admin", mesh.admin, "-o", "json"),
    )
    dump = await mesh.sidecars[node_id].envoy.config_dump_async(resource="dynamic_active_clusters")
    envoy_clusters = {entry["cluster"]["name"]: entry["cluster"] for entry in dump["configs"]}

    assert (table.returncode, table.stderr) == (0, "")
    rows = table_rows(table.stdout)
    assert {row["TYPE"] for row in rows} == {"CDS"}
    assert {row["NAME"] for row in rows} == set(envoy_clusters)
    assert len(envoy_clusters) == 2  # backend and web

    assert as_json.returncode == 0, as_json.stderr
    config = ProxyConfig.model_validate(json.loads(as_json.stdout))
    [cds] = config.types
    assert cds.total == len(cds.resources) == len(envoy_clusters)
    assert {row["NAME"]: row["VERSION"] for row in rows} == {
        resource.name: resource.version for resource in cds.resources
    }
    for resource in cds.resources:  # the config shown is the config Envoy runs
        running = {k: v for k, v in envoy_clusters[resource.name].items() if k != "@type"}
        assert resource.resource == running


@pytest.mark.envoy
@pytest.mark.timeout(120)
async def test_config_without_a_type_lists_every_type_by_name_and_version(mesh: Mesh) -> None:
    node_id = next(iter(SIDECARS))
    result = await cli("config", node_id, "--admin", mesh.admin)
    served = mesh.api(f"/api/proxies/{quote(node_id, safe='')}/config")

    assert result.returncode == 0, result.stderr
    expected = [
        {"TYPE": t["type"], "NAME": r["name"], "VERSION": r["version"]}
        for t in served["types"]
        for r in t["resources"]
    ]
    assert table_rows(result.stdout) == expected
    assert {row["TYPE"] for row in expected} == {*XDS_TYPES, "SDS"}
    # every proxy is served its identity's certificate and the trust bundle
    assert {row["NAME"] for row in expected if row["TYPE"] == "SDS"} == {"default", "ROOTCA"}


# -- failures -----------------------------------------------------------------------------


@pytest.mark.envoy
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args",
    [
        ("config", "nobody.default"),
        ("explain", "nobody.default"),
        ("explain", "client-sotw.default", "no-such-resource"),
    ],
    ids=["config", "explain", "explain-resource"],
)
async def test_an_unknown_proxy_or_resource_is_one_line_and_exit_1(
    mesh: Mesh, args: tuple[str, ...]
) -> None:
    result = await cli(*args, "--admin", mesh.admin)

    assert (result.returncode, result.stdout) == (1, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"xds-server {args[0]}: {mesh.admin}/api/proxies/")
    assert "HTTP 404" in line
    assert args[-1] in line


@pytest.mark.parametrize("command", [("status",), ("config", "p"), ("explain", "p", "r")])
def test_an_admin_nobody_answers_on_is_named_with_exit_1(
    command: tuple[str, ...], free_port: Callable[[], int]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = xds_server(*command, "--admin", url)

    assert (result.returncode, result.stdout) == (1, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"xds-server {command[0]}: cannot reach the admin API at {url}: ")


@pytest.mark.parametrize(
    "args",
    [
        ("config",),
        ("config", "p", "--type", "XDS"),
        ("status", "--admin", "127.0.0.1:15014"),
        ("status", "-o", "yaml"),
        ("explain", "p", "r", "extra"),
    ],
    ids=["no-proxy", "bad-type", "url-without-scheme", "bad-output", "extra-argument"],
)
def test_bad_usage_is_exit_2(args: tuple[str, ...]) -> None:
    result = xds_server(*args)

    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    assert re.match(rf"xds-server( {args[0]})?: error: .* \(see xds-server", line), line


def test_the_default_admin_is_where_serve_listens() -> None:
    assert f"http://{Settings.admin_listen}" == cli_admin.DEFAULT_ADMIN_URL
    assert cli_admin.PAGE_LIMIT == MAX_LIMIT
    assert set(SYNC_STATES) == {status.value for status in SyncStatus}


# -- a NACK, seen by the CLI --------------------------------------------------------------


@pytest.mark.envoy
@pytest.mark.timeout(120)
async def test_a_rejected_cluster_shows_nacked_in_status_and_its_json_round_trips(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "mesh.yaml", service_yaml("backend"))
    async with running_control_plane(directory, free_port) as plane:
        admin = f"http://127.0.0.1:{plane.admin_port}"
        sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)
        plane.pipeline.builder.resource_hook = with_invalid_cluster
        plane.pipeline.builder.republish()

        async def cds_nacked() -> dict[str, Any] | None:
            _, rows = await asyncio.to_thread(get_json, f"{admin}/api/proxies")
            row: dict[str, Any] | None = next(iter(rows), None)
            return row if row is not None and row["sync"]["CDS"] == "NACKED" else None

        row = await eventually(cds_nacked, within=15, message="CDS NACKED")
        result = await cli("status", "--admin", admin)

    round_trips(ProxyStatus, row)
    [cds] = [t for t in ProxyStatus.model_validate(row).types if t.type == "CDS"]
    assert cds.last_nack is not None and cds.last_nack.resources == [REJECTED_CLUSTER]
    assert result.returncode == 0, result.stderr
    statuses = {r["TYPE"]: r["STATUS"] for r in table_rows(result.stdout)}
    assert statuses == {
        "CDS": "NACKED",
        "EDS": "SYNCED",
        "LDS": "SYNCED",
        "RDS": "SYNCED",
        "SDS": "SYNCED",  # its certificate and the trust roots
    }
    assert sidecar.node_id in result.stdout


# -- formatting ---------------------------------------------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (192, "3m12s"), (7500, "2h5m"), (273600, "3d4h")],
)
def test_an_age_is_its_two_largest_units(seconds: int, shown: str) -> None:
    assert cli_admin.age(NOW - timedelta(seconds=seconds), NOW) == shown


def test_an_age_of_never_or_of_the_future() -> None:
    assert cli_admin.age(None, NOW) == "-"
    assert cli_admin.age(NOW + timedelta(seconds=3), NOW) == "0s"  # clocks a little apart


def test_a_table_pads_each_column_to_its_widest_cell() -> None:
    text = cli_admin.table(("A", "LONGER"), [("wide cell", "x"), ("y", "z")])
    assert text == "A          LONGER\nwide cell  x\ny          z\n"
