"""End to end: `xds-server diff` predicts exactly what applying a file then changes.

A file-mode control plane serves two namespaces (`default`, `shop`), each
with a `backend` and a real Envoy sidecar.  For each proposed file, the CLI
(`xds-server diff -f FILE -o json`, a real process over HTTP) is asked what
would change; the file is then really written into the watched directory,
and once the batch is committed and both Envoys have ACKed it, the set of
(proxy, type, resource, added / changed / removed) read off each proxy's
served config before and after is compared with the prediction: equal,
exactly, proxy by proxy, including a proxy the change must not touch.  What
the admin says is served is checked against what Envoy runs (`/config_dump`).
A manifest with an error is reported by file, line and field, and nothing is
applied.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    SERVICE_PORT,
    Sidecar,
    eventually,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_sidecar,
    write_documents,
)

from xds_server.admin.diff import DiffResponse
from xds_server.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]

NAMESPACES = ("default", "shop")
BACKEND_IPS = {"default": "127.0.36.1", "shop": "127.0.36.2"}
NODES = {ns: f"client-0.{ns}" for ns in NAMESPACES}
XDS_TYPES = ("CDS", "EDS", "LDS", "RDS")
Change = tuple[str, str, str, str]
"""(node id, type, resource name, added / changed / removed)."""


def pod_yaml(name: str, namespace: str, app: str, ip: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Pod
        metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}
        spec: {{containers: [{{name: app, image: sample}}]}}
        status: {{podIP: {ip}, phase: Running}}
        """
    )


@dataclass
class Mesh:
    directory: Path
    plane: ControlPlane
    sidecars: dict[str, Sidecar]

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.plane.admin_port}"

    async def api(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.admin, timeout=10.0) as client:
            response = await client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    async def served(self) -> dict[str, dict[tuple[str, str], str]]:
        """Per proxy: (type, name) -> version of every resource it is served."""
        found: dict[str, dict[tuple[str, str], str]] = {}
        for node_id in NODES.values():
            config = await self.api(f"/api/proxies/{node_id}/config", limit="1000")
            found[node_id] = {
                (served["type"], resource["name"]): resource["version"]
                for served in config["types"]
                for resource in served["resources"]
            }
            assert all(t["total"] == len(t["resources"]) for t in config["types"])
        return found

    async def synced(self) -> bool:
        rows = await self.api("/api/proxies")
        return {row["node_id"] for row in rows} == set(NODES.values()) and all(
            row["sync"][t] == "SYNCED" for row in rows for t in XDS_TYPES
        )


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Mesh]:
    directory = tmp_path / "manifests"
    directory.mkdir()
    for ns in NAMESPACES:
        write_documents(
            directory / f"backend-{ns}.yaml",
            service_yaml("backend", namespace=ns),
            slice_yaml("backend", [BACKEND_IPS[ns]], SERVICE_PORT, namespace=ns),
        )
    async with running_control_plane(directory, free_port) as plane:
        sidecars = {
            ns: await start_sidecar(
                envoy_factory,
                plane.xds_port,
                free_port(),
                delta=False,
                node_id=NODES[ns],
                namespace=ns,
            )
            for ns in NAMESPACES
        }
        found = Mesh(directory, plane, sidecars)
        await eventually(found.synced, within=15, message="both sidecars SYNCED")
        yield found


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


async def diff_cli(mesh: Mesh, path: Path, *extra: str) -> Ran:
    """`xds-server diff -f PATH` as a user runs it, against the mesh's admin port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xds_server.cli", "diff", "-f", str(path),
        "--admin", mesh.admin, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def predicted(answer: DiffResponse) -> set[Change]:
    return {
        (proxy.node_id, change.type, change.name, change.change)
        for proxy in answer.proxies
        for change in proxy.changes
    }


def observed(
    before: dict[str, dict[tuple[str, str], str]], after: dict[str, dict[tuple[str, str], str]]
) -> set[Change]:
    found: set[Change] = set()
    for node_id in NODES.values():
        old, new = before[node_id], after[node_id]
        for key in old.keys() | new.keys():
            if key not in new:
                found.add((node_id, *key, "removed"))
            elif key not in old:
                found.add((node_id, *key, "added"))
            elif old[key] != new[key]:
                found.add((node_id, *key, "changed"))
    return found


ENVOY_RESOURCES = {
    "CDS": ("dynamic_active_clusters", lambda entry: entry["cluster"]),
    "LDS": ("dynamic_listeners", lambda entry: entry["active_state"]["listener"]),
    "RDS": ("dynamic_route_configs", lambda entry: entry["route_config"]),
}


async def assert_envoy_runs_what_is_served(mesh: Mesh) -> None:
    """Each sidecar's clusters, listeners and route tables are those served, byte for byte."""
    for ns, sidecar in mesh.sidecars.items():
        for type_name, (resource, body_of) in ENVOY_RESOURCES.items():
            config = await mesh.api(f"/api/proxies/{NODES[ns]}/config", type=type_name)
            [served] = config["types"]
            dump = await sidecar.envoy.config_dump_async(resource=resource)
            running = {body_of(e)["name"]: body_of(e) for e in dump.get("configs", [])}
            assert {r["name"] for r in served["resources"]} == set(running), (ns, type_name)
            for r in served["resources"]:
                shown = {k: v for k, v in running[r["name"]].items() if k != "@type"}
                assert r["resource"] == shown, (ns, type_name, r["name"])


def cart_in_shop() -> tuple[str, list[str]]:
    return "cart.yaml", [
        service_yaml("cart", namespace="shop"),
        slice_yaml("cart", ["127.0.36.3"], SERVICE_PORT, namespace="shop"),
    ]


def backend_in_shop_moves() -> tuple[str, list[str]]:
    return "backend-shop.yaml", [
        service_yaml("backend", namespace="shop"),
        slice_yaml("backend", ["127.0.36.2", "127.0.36.4"], SERVICE_PORT, namespace="shop"),
    ]


def shops_pod_serves_backend() -> tuple[str, list[str]]:
    return "pods.yaml", [pod_yaml("client-0", "shop", "backend", "127.0.36.5")]


PROPOSALS = [
    pytest.param(cart_in_shop, set(NODES.values()), id="a-new-service-every-proxy-sees"),
    pytest.param(backend_in_shop_moves, set(NODES.values()), id="an-edited-endpoint-slice"),
    pytest.param(shops_pod_serves_backend, {NODES["shop"]}, id="a-pod-only-its-proxy-runs-in"),
]


@pytest.mark.parametrize(("proposal", "affected"), PROPOSALS)
async def test_diff_predicts_exactly_what_writing_the_file_changes_in_each_proxy(
    mesh: Mesh,
    tmp_path: Path,
    proposal: Callable[[], tuple[str, list[str]]],
    affected: set[str],
) -> None:
    name, documents = proposal()
    proposed = tmp_path / "proposed" / name
    proposed.parent.mkdir()
    write_documents(proposed, *documents)
    before, generation = await mesh.served(), mesh.plane.pipeline.builder.generation

    ran = await diff_cli(mesh, proposed, "-o", "json")
    table = await diff_cli(mesh, proposed)

    assert (ran.code, ran.stderr) == (1, ""), ran.stderr
    answer = DiffResponse.model_validate(json.loads(ran.stdout))
    prediction = predicted(answer)
    assert {change[0] for change in prediction} == affected
    assert answer.proxies_unaffected == len(NODES) - len(affected)
    assert all(answer.diffs[c.diff].ops for p in answer.proxies for c in p.changes if c.diff)
    assert table.code == 1
    assert {tuple(line.split()) for line in table.stdout.splitlines()[1:len(prediction) + 1]} == {
        change for change in prediction
    }  # fmt: skip
    # Asking changed nothing:
    assert mesh.plane.pipeline.builder.generation == generation
    assert await mesh.served() == before

    write_documents(mesh.directory / name, *documents)

    async def committed() -> bool:
        return mesh.plane.pipeline.builder.generation > generation and await mesh.synced()

    await eventually(committed, within=15, message="the written file pushed and ACKed")
    assert observed(before, await mesh.served()) == prediction
    await assert_envoy_runs_what_is_served(mesh)
    # Nothing more would change now: the dry run of the applied file is empty.
    again = await diff_cli(mesh, mesh.directory / name)
    assert (again.code, again.stdout) == (0, "no changes: no proxy would change (2 unaffected)\n")


async def test_a_manifest_with_an_error_is_reported_by_file_and_field_and_nothing_applies(
    mesh: Mesh, tmp_path: Path
) -> None:
    proposed = tmp_path / "backend-shop.yaml"
    broken = service_yaml("backend", namespace="shop").replace("port: 8080,", "port: 99999,")
    write_documents(proposed, broken, slice_yaml("backend", [], SERVICE_PORT, namespace="shop"))
    before, generation = await mesh.served(), mesh.plane.pipeline.builder.generation
    on_disk = (mesh.directory / "backend-shop.yaml").read_bytes()

    ran = await diff_cli(mesh, proposed, "-o", "json")

    assert ran.code == 2
    answer = DiffResponse.model_validate(json.loads(ran.stdout))
    [problem] = answer.source_errors
    assert (problem.file, problem.field, problem.object) == (
        "backend-shop.yaml", "spec.ports[0].port", "Service shop/backend",
    )  # fmt: skip
    assert problem.line == 7
    assert ran.stderr.startswith("error: backend-shop.yaml:7: Service shop/backend: ")
    # The valid part (the emptied slice) is still previewed, for every proxy holding it.
    assert {(c[1], c[3]) for c in predicted(answer)} == {("EDS", "changed")}
    await asyncio.sleep(0.3)  # a push, were one made, would be committed by now
    assert mesh.plane.pipeline.builder.generation == generation
    assert await mesh.served() == before
    assert (mesh.directory / "backend-shop.yaml").read_bytes() == on_disk
    assert await mesh.synced()
