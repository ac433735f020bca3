"""CSDS end to end: real Envoys, and what the xDS port's Client Status Discovery Service says.

An in-process control plane (TLS, client certificates) serves a one-service
mesh to two real Envoy sidecars over SotW and Delta.  A debugging client asks
`envoy.service.status.v3.ClientStatusDiscoveryService` on the same port,
holding a client certificate of the control plane's own namespace: what it
answers is what `/api/proxies/<id>` and `/api/proxies/<id>/config` show (each
type's status, version and resources), with secrets redacted, and a cluster
Envoy rejects reads NACKED with Envoy's own message.  A caller of another
namespace is refused unless it presents the admin token; with `--insecure-xds`
only the admin token admits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    REJECTED_CLUSTER,
    TEST_CA_DIR,
    Sidecar,
    admin_json,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_apps,
    start_sidecar,
    with_invalid_cluster,
)
from envoy.admin.v3.config_dump_shared_pb2 import ClientResourceStatus
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2

from xds_server.app import ControlPlane
from xds_server.resources import CLUSTER, SECRET, XDS_TYPES
from xds_server.security.xds_client import new_key_and_csr, write_client_tls
from xds_server.settings import SecuritySettings

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(150)]

BACKEND = "127.0.36.1"
CLIENTS = ("client-0.default", "client-1.default")
CONFIG_STATUS = {
    "SYNCED": csds_pb2.SYNCED,
    "STALE": csds_pb2.STALE,
    "NACKED": csds_pb2.ERROR,
    "NOT SENT": csds_pb2.NOT_SENT,
}
Configs = dict[str, csds_pb2.ClientConfig]


@dataclass
class Mesh:
    plane: ControlPlane
    sidecars: list[Sidecar]


@contextlib.asynccontextmanager
async def mesh_of(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    delta: bool,
    **settings: Any,
) -> AsyncIterator[Mesh]:
    """`backend` (one pod) and a client sidecar per `CLIENTS`, all LIVE."""
    upstream_port = free_port()
    files = {
        "services.yaml": [service_yaml("backend")],
        "endpoints.yaml": [slice_yaml("backend", [BACKEND], upstream_port)],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, upstream_port, ("backend", "v1", BACKEND))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(
            running_control_plane(directory, free_port, **settings)
        )
        sidecars = [
            await start_sidecar(
                envoy_factory, plane.xds_port, free_port(), delta=delta, node_id=node_id
            )
            for node_id in CLIENTS
        ]
        yield Mesh(plane, sidecars)


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory, delta: bool
) -> AsyncIterator[Mesh]:
    async with mesh_of(tmp_path, free_port, envoy_factory, delta) as mesh:
        yield mesh


def channel_credentials(plane: ControlPlane, namespace: str) -> grpc.ChannelCredentials:
    """TLS with a client certificate of `namespace` signed by the plane (as bootstrap has it)."""
    key_pem, csr_pem = new_key_and_csr()
    signed = plane.sign_xds_client_certificate(namespace, "debugger", csr_pem, 600.0)
    return grpc.ssl_channel_credentials(
        signed.roots_pem.encode(), key_pem, signed.chain_pem.encode()
    )


async def fetch(
    plane: ControlPlane,
    *matchers: node_pb2.NodeMatcher,
    namespace: str | None = None,
    token: str | None = None,
) -> Configs:
    """FetchClientStatus on the xDS port, as a caller of `namespace` (the control plane's by
    default; None on an insecure plane: plaintext), with `token` as its bearer token."""
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    request = csds_pb2.ClientStatusRequest(node_matchers=matchers)
    address = f"127.0.0.1:{plane.xds_port}"
    if plane.settings.security.insecure_xds:
        channel = grpc.aio.insecure_channel(address)
    else:
        credentials = channel_credentials(plane, namespace or plane.settings.security.ca_namespace)
        options = [("grpc.ssl_target_name_override", "localhost")]
        channel = grpc.aio.secure_channel(address, credentials, options)
    async with channel:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        response = await stub.FetchClientStatus(request, metadata=metadata, timeout=10)
    return {config.node.id: config for config in response.config}


def by_type(config: csds_pb2.ClientConfig) -> dict[str, dict[str, Any]]:
    """Per type URL: each resource's entry, by name."""
    types: dict[str, dict[str, Any]] = {}
    for entry in config.generic_xds_configs:
        types.setdefault(entry.type_url, {})[entry.name] = entry
    return types


async def admin_state(plane: ControlPlane, node_id: str) -> dict[str, dict[str, Any]]:
    """Per type URL, what the admin API shows: status, version sent, NACK, resources served."""
    row = await admin_json(plane, f"/api/proxies/{node_id}")
    config = await admin_json(plane, f"/api/proxies/{node_id}/config", limit="1000")
    served = {t["type_url"]: {r["name"] for r in t["resources"]} for t in config["types"]}
    return {
        t["type_url"]: {
            "status": t["status"],
            "version_sent": t["version_sent"],
            "nack": (t["last_nack"] or {}).get("message"),
            "names": set(t["names"]),
            "wildcard": t["wildcard"],
            "served": served.get(t["type_url"], set()),
        }
        for t in row["types"]
    }


async def disagreements(
    plane: ControlPlane, node_id: str, config: csds_pb2.ClientConfig
) -> list[str]:
    """Where CSDS's answer for `node_id` differs from the admin API's (empty: they agree)."""
    admin = await admin_state(plane, node_id)
    csds = by_type(config)
    problems = []
    for type_url, shown in admin.items():
        entries = csds.get(type_url, {})
        expected_names = shown["served"] if shown["wildcard"] else shown["names"]
        if set(entries) != expected_names:
            problems.append(
                f"{type_url}: CSDS names {sorted(entries)}, admin {sorted(expected_names)}"
            )
        for name, entry in entries.items():
            if name not in shown["served"]:
                if entry.client_status != ClientResourceStatus.DOES_NOT_EXIST:
                    problems.append(f"{type_url} {name}: not served, yet not DOES_NOT_EXIST")
                continue
            if entry.config_status != CONFIG_STATUS[shown["status"]]:
                problems.append(f"{type_url} {name}: {entry.config_status} vs {shown['status']}")
            if entry.version_info != shown["version_sent"]:
                problems.append(f"{type_url} {name}: version {entry.version_info} vs admin's")
            if shown["status"] == "NACKED" and entry.error_state.details != shown["nack"]:
                problems.append(f"{type_url} {name}: NACK {entry.error_state.details!r}")
    if set(csds) - set(admin):
        problems.append(f"CSDS types {sorted(set(csds) - set(admin))} the admin does not show")
    return problems


async def agreeing(
    plane: ControlPlane, node_ids: tuple[str, ...], settled: Callable[[Configs], bool]
) -> Configs:
    """CSDS's answer once `settled` by it and, for every node, the admin API agrees."""

    async def check() -> Configs | None:
        configs = await fetch(plane)
        if not settled(configs) or set(node_ids) - set(configs):
            return None
        for node_id in node_ids:
            if await disagreements(plane, node_id, configs[node_id]):
                return None
        return configs

    try:
        configs: Configs = await eventually(check, within=15, message="CSDS agrees with the admin")
    except AssertionError:
        configs = await fetch(plane)
        for node_id in node_ids:
            print(
                node_id,
                await disagreements(plane, node_id, configs.get(node_id, csds_pb2.ClientConfig())),
            )
        raise
    return configs


def unpacked(entry: Any, message: secret_pb2.Secret) -> secret_pb2.Secret:
    assert entry.xds_config.Unpack(message), entry.name
    return message


def all_synced(configs: Configs) -> bool:
    return bool(configs) and all(
        e.config_status == csds_pb2.SYNCED
        for config in configs.values()
        for e in config.generic_xds_configs
    )


async def test_csds_shows_each_real_envoy_as_the_admin_api_does_with_secrets_redacted(
    mesh: Mesh,
) -> None:
    configs = await agreeing(mesh.plane, CLIENTS, all_synced)

    assert sorted(configs) == sorted(CLIENTS)
    for sidecar in mesh.sidecars:
        config = configs[sidecar.node_id]
        types = by_type(config)
        assert {t.type_url for t in XDS_TYPES} <= set(types)
        assert all(
            e.client_status == ClientResourceStatus.ACKED for e in config.generic_xds_configs
        )
        assert set(types[CLUSTER]) <= await sidecar.cluster_names()  # what Envoy runs
        assert config.node.metadata.fields  # the node Envoy sent, metadata included
        secrets = [unpacked(e, secret_pb2.Secret()) for e in types[SECRET].values()]
        [certificate] = [s.tls_certificate for s in secrets if s.HasField("tls_certificate")]
        assert certificate.private_key.inline_string == "[redacted]"
        assert certificate.HasField("certificate_chain")
        assert b"PRIVATE KEY" not in config.SerializeToString()


async def test_a_cluster_envoy_rejects_reads_nacked_with_envoys_error_until_fixed(
    mesh: Mesh,
) -> None:
    await agreeing(mesh.plane, CLIENTS, all_synced)
    builder = mesh.plane.pipeline.builder
    builder.resource_hook = with_invalid_cluster
    builder.republish()

    def rejected(configs: Configs) -> bool:
        return all(
            by_type(config).get(CLUSTER, {}).get(REJECTED_CLUSTER) is not None
            and by_type(config)[CLUSTER][REJECTED_CLUSTER].config_status == csds_pb2.ERROR
            for config in configs.values()
        )

    configs = await agreeing(mesh.plane, CLIENTS, rejected)

    for sidecar in mesh.sidecars:
        entry = by_type(configs[sidecar.node_id])[CLUSTER][REJECTED_CLUSTER]
        assert entry.client_status == ClientResourceStatus.NACKED
        assert "positive duration" in entry.error_state.details  # Envoy's own words
        assert entry.error_state.version_info == entry.version_info
        assert REJECTED_CLUSTER not in await sidecar.cluster_names()

    builder.resource_hook = None
    builder.republish()
    configs = await agreeing(mesh.plane, CLIENTS, all_synced)
    assert all(REJECTED_CLUSTER not in by_type(c)[CLUSTER] for c in configs.values())


async def test_node_matchers_choose_the_proxies_answered(mesh: Mesh) -> None:
    await agreeing(mesh.plane, CLIENTS, all_synced)

    def node_id(**match: str) -> node_pb2.NodeMatcher:
        return node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(**match))

    assert sorted(await fetch(mesh.plane, node_id(exact=CLIENTS[1]))) == [CLIENTS[1]]
    assert sorted(await fetch(mesh.plane, node_id(prefix="client-"))) == sorted(CLIENTS)
    assert sorted(await fetch(mesh.plane, node_id(prefix="client-0"))) == [CLIENTS[0]]
    assert await fetch(mesh.plane, node_id(exact="backend-0.default")) == {}


@pytest.mark.parametrize("delta", [False], ids=["sotw"])
async def test_a_caller_of_another_namespace_needs_the_admin_token(mesh: Mesh) -> None:
    plane = mesh.plane
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await fetch(plane, namespace="default")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://cluster.local/ns/default/sa/debugger" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await fetch(plane, namespace="default", token="x" * 43)
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED

    assert plane.admin_token is not None
    admitted = await fetch(plane, namespace="default", token=plane.admin_token.value)
    assert sorted(admitted) == sorted(CLIENTS)
    # Refusing debuggers costs the proxies nothing: both still have the backend.
    for sidecar in mesh.sidecars:
        assert await sidecar.who_answers("backend") == "backend v1"


async def test_with_insecure_xds_only_the_admin_token_admits(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    insecure = SecuritySettings(ca_dir=TEST_CA_DIR, insecure_xds=True)
    async with mesh_of(tmp_path, free_port, envoy_factory, False, security=insecure) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await fetch(mesh.plane)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--insecure-xds" in (refused.value.details() or "")
        assert mesh.plane.admin_token is not None
        configs = await fetch(mesh.plane, token=mesh.plane.admin_token.value)
        assert sorted(configs) == sorted(CLIENTS)


async def cli_status(plane: ControlPlane, *args: str, token: str | None = None) -> tuple[int, str]:
    """`xds-server status --csds ARGS` as a user runs it: exit code and output."""
    env = {**os.environ, "XDS_SERVER_ADMIN_TOKEN": token} if token else dict(os.environ)
    if not token:
        env.pop("XDS_SERVER_ADMIN_TOKEN", None)
    command = [sys.executable, "-m", "xds_server.cli", "status", "--csds"]
    command += ["--xds-address", f"127.0.0.1:{plane.xds_port}", *args]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


@pytest.mark.parametrize("delta", [False], ids=["sotw"])
async def test_status_csds_prints_what_csds_answers(mesh: Mesh, tmp_path: Path) -> None:
    plane = mesh.plane
    await agreeing(plane, CLIENTS, all_synced)
    key_pem, csr_pem = new_key_and_csr()
    signed = plane.sign_xds_client_certificate("default", "debugger", csr_pem, 600.0)
    write_client_tls(signed, key_pem, tmp_path / "debugger")
    assert plane.admin_token is not None
    token = plane.admin_token.value
    credential = ("--cert-dir", str(tmp_path / "debugger"), "--admin-token-file", "/nonexistent")

    code, table = await cli_status(plane, *credential, "--node", CLIENTS[1], token=token)
    assert code == 0, table
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["PROXY", "TYPE", "NAME", "STATUS", "CLIENT", "VERSION", "ERROR"]
    assert {row[0] for row in rows[1:]} == {CLIENTS[1]}
    assert {row[1] for row in rows[1:]} == {"CDS", "EDS", "LDS", "RDS", "SDS"}
    assert all(row[3:5] == ["SYNCED", "ACKED"] for row in rows[1:])

    code, dumped = await cli_status(plane, *credential, "-o", "json", token=token)
    assert code == 0, dumped
    answered = {c["node"]["id"] for c in json.loads(dumped)["config"]}
    assert answered == set(CLIENTS)
    assert "PRIVATE KEY" not in dumped

    code, refused = await cli_status(plane, *credential)
    assert code == 1
    assert "PERMISSION_DENIED" in refused
