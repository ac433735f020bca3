"""End to end: `/api/certificates` and `xds-server status certificates` say what is served.

A real control plane issues the certificate of a real Envoy sidecar's
identity; the admin's view of that identity (SPIFFE ID, serial, holders,
issuer) is checked against the certificate in the SDS Secret the proxy is
served (parsed from the served config, its key redacted), and the CLI (a
subprocess, as a user runs it) prints the same.  Then `xds-server ca
rotate-root` (with the token the control plane wrote) starts a root rotation:
the admin shows both roots trusted, the identity re-issued under the new root
(the serial then served), and at the overlap's end the old root gone.  No
private key appears anywhere on the way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import EnvoyFactory
from cryptography import x509
from e2e_mesh import (
    admin_json,
    eventually,
    manifest_directory,
    plane_settings,
    service_yaml,
    start_sidecar,
)

from xds_server.admin.auth import TOKEN_ENV
from xds_server.admin.certificates import CertificateList, CertificateModel
from xds_server.admin.redact import REDACTED
from xds_server.app import ControlPlane
from xds_server.settings import SecuritySettings
from xds_server.translate.secrets import SVID_SECRET_NAME

NODE = "web-0.default"
SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/web"


async def served_serial(plane: ControlPlane) -> str | None:
    """The serial of the certificate in the SDS Secret the proxy is served now."""
    config = await admin_json(plane, f"/api/proxies/{NODE}/config", type="SDS")
    secrets = {r["name"]: r["resource"] for r in config["types"][0]["resources"]}
    if SVID_SECRET_NAME not in secrets:
        return None
    tls = secrets[SVID_SECRET_NAME]["tls_certificate"]
    assert tls["private_key"] == REDACTED
    leaf = x509.load_pem_x509_certificate(
        base64.b64decode(tls["certificate_chain"]["inline_bytes"])
    )
    number = leaf.serial_number
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big").hex()


async def identity(plane: Any) -> tuple[CertificateList, CertificateModel | None]:
    listed = CertificateList.model_validate(await admin_json(plane, "/api/certificates"))
    found = next((c for c in listed.certificates if c.spiffe_id == SPIFFE_ID), None)
    return listed, found


def xds_server(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "xds_server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def test_the_admin_shows_the_serial_envoy_holds_and_follows_a_root_rotation(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    directory = manifest_directory(tmp_path, {"web.yaml": [service_yaml("web")]})
    security = SecuritySettings(
        ca_dir=tmp_path / "ca", admin_token_file=tmp_path / "state" / "admin-token"
    )  # its own root: the rotation must not move the one other tests share
    plane = ControlPlane(plane_settings(f"file:{directory}", free_port, security=security))
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        await start_sidecar(  # a connected proxy of the identity: what gets it issued
            envoy_factory,
            plane.xds_port,
            free_port(),
            delta=False,
            node_id=NODE,
            service_account="web",
        )
        admin = f"http://127.0.0.1:{plane.admin_port}"

        async def held() -> CertificateModel | None:
            _, found = await identity(plane)
            if found is None or found.serial != await served_serial(plane):
                return None
            return found

        before = await eventually(held, within=20, message="the proxy is served that serial")
        listed, _ = await identity(plane)
        assert before.proxies == [NODE]
        assert [root.fingerprint for root in listed.trust_roots] == [before.issuer_fingerprint]

        table = await asyncio.to_thread(xds_server, "status", "certificates", "--admin", admin)
        assert table.returncode == 0, table.stderr
        assert SPIFFE_ID in table.stdout
        assert before.serial in table.stdout

        token_file = str(plane.settings.security.admin_token_file)
        rotate = ("ca", "rotate-root", "--overlap", "6s", "--admin", admin, "-o", "json")
        started = await asyncio.to_thread(xds_server, *rotate, "--admin-token-file", token_file)
        assert started.returncode == 0, started.stderr
        new_root = json.loads(started.stdout)["new_root_serial"]

        async def reissued() -> CertificateModel | None:
            listed, found = await identity(plane)
            if found is None or len(listed.trust_roots) != 2:
                return None
            new = next(r for r in listed.trust_roots if r.serial == new_root)
            if found.issuer_fingerprint != new.fingerprint:
                return None
            return found if found.serial == await served_serial(plane) else None

        after = await eventually(reissued, within=30, message="re-issued under the new root")
        assert after.serial != before.serial
        assert after.proxies == [NODE]
        for path in ("/api/certificates", f"/api/proxies/{NODE}/config?type=SDS"):
            assert "PRIVATE KEY" not in json.dumps(await admin_json(plane, path))

        async def old_root_dropped() -> bool:
            listed, found = await identity(plane)
            roots = [root.serial for root in listed.trust_roots]
            return roots == [new_root] and found is not None and found.serial == after.serial

        await eventually(old_root_dropped, within=20, message="the old root leaves at the end")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
