"""`/api/certificates`, the index page's certificates, and the CLI that reads them.

Real certificates (issued by `ca.CertificateAuthority`, two roots as during a
rotation's overlap) behind a fake view whose proxies are also served their
SDS Secrets, private keys included: the endpoint shows each identity's SPIFFE
ID, serial, validity, issuer fingerprint (by signature, so the right one of
the two roots) and holders, and the roots' fingerprints; and no admin
response, with or without the token, carries a private key in any form
(PEM, or the base64 that JSON makes of inline bytes).  The CLI runs as a
user runs it, a subprocess against the app served on a loopback port:
`status certificates` (table and `-o json`) and `ca rotate-root`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server.admin import ProxyView, create_app
from xds_server.admin.auth import TOKEN_ENV, AdminToken
from xds_server.admin.certificates import CertificateList, MeshCertificates
from xds_server.admin.redact import REDACTED
from xds_server.ca import CertificateAuthority, TrustBundle
from xds_server.cache import ResourceSet, Snapshot
from xds_server.model import Proxy
from xds_server.model.security import TrustRoots, WorkloadCertificate
from xds_server.resources import SECRET, make_resource
from xds_server.server import StreamStatus
from xds_server.translate.secrets import svid_secret, trust_roots_secret

TOKEN = AdminToken("certificates-test-token-" + "c" * 10, "tests")
TRUST_DOMAIN = "cluster.local"
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def serial_hex(number: int) -> str:
    return number.to_bytes((number.bit_length() + 7) // 8 or 1, "big").hex()


def workload(ca: CertificateAuthority, namespace: str, account: str) -> WorkloadCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    svid = ca.issue_svid(namespace, account, key.public_key(), now=NOW)
    return WorkloadCertificate(
        namespace=namespace,
        name=account,
        spiffe_id=svid.spiffe_id,
        certificate_chain=svid.chain_pem(),
        private_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        serial=serial_hex(svid.certificate.serial_number),
        not_before=svid.certificate.not_valid_before_utc.timestamp(),
        not_after=svid.certificate.not_valid_after_utc.timestamp(),
    )


def fingerprint(ca: CertificateAuthority) -> str:
    return ca.certificate.fingerprint(hashes.SHA256()).hex()


@dataclass
class Mesh:
    old: CertificateAuthority
    new: CertificateAuthority
    web: WorkloadCertificate
    """Issued by the new root."""
    db: WorkloadCertificate
    """Issued by the old root (not re-issued yet)."""
    roots: TrustRoots


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    old = CertificateAuthority.generate_root(TRUST_DOMAIN, now=NOW)
    new = CertificateAuthority.generate_root(TRUST_DOMAIN, now=NOW)
    bundle = TrustBundle.of(old.certificate).with_root(new.certificate)
    roots = TrustRoots(
        roots_pem=bundle.to_pem(),
        fingerprints=tuple(c.fingerprint(hashes.SHA256()).hex() for c in bundle.roots),
    )
    return Mesh(old, new, workload(new, "shop", "web"), workload(old, "shop", "db"), roots)


def view(node_id: str, namespace: str, account: str) -> ProxyView:
    stream = StreamStatus(
        stream_id=hash(node_id) % 1000,
        node_id=node_id,
        kind="sotw",
        peer="ipv4:127.0.0.1:40000",
        connected_at=NOW,
        snapshot_version="1",
        requests=1,
    )
    proxy = Proxy(node_id=node_id, namespace=namespace, service_account=account, workload=account)
    return ProxyView(stream, proxy)


@dataclass
class FakePlane:
    """Proxies of two identities, each served its SDS Secrets (keys included)."""

    mesh: Mesh
    rotations: list[float] = field(default_factory=list)

    def is_ready(self) -> bool:
        return True

    def readiness_detail(self) -> dict[str, Any]:
        return {}

    def proxies(self) -> list[ProxyView]:
        return [
            view("web-1.shop", "shop", "web"),
            view("web-2.shop", "shop", "web"),
            view("db-1.shop", "shop", "db"),
        ]

    def snapshot(self, node_id: str) -> Snapshot | None:
        certificate = self.mesh.web if node_id.startswith("web") else self.mesh.db
        secrets = [svid_secret(certificate), trust_roots_secret(self.mesh.roots)]
        resources = ResourceSet([make_resource(secret) for secret in secrets])
        return Snapshot(resources={SECRET: resources}, version="1")

    def source_errors(self) -> list[str]:
        return []

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"

    def mesh_certificates(self) -> MeshCertificates:
        return MeshCertificates((self.mesh.web, self.mesh.db), self.mesh.roots)

    async def rotate_root(self, overlap_seconds: float) -> Any:
        self.rotations.append(overlap_seconds)

        @dataclass(frozen=True)
        class Started:
            new_serial: str = "0b"
            old_serial: str = "0a"
            reissue_at: float = NOW.timestamp() + 5
            overlap_ends_at: float = NOW.timestamp() + overlap_seconds

        return Started()


async def get(plane: FakePlane, path: str, token: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN.value}"} if token else {}
    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.get(path, headers=headers)


async def test_each_identity_is_shown_with_its_issuer_and_holders(mesh: Mesh) -> None:
    response = await get(FakePlane(mesh), "/api/certificates")

    assert response.status_code == 200
    listed = CertificateList.model_validate(response.json())
    assert [r.fingerprint for r in listed.trust_roots] == list(mesh.roots.fingerprints)
    assert {fingerprint(mesh.old), fingerprint(mesh.new)} == set(mesh.roots.fingerprints)
    by_account = {c.service_account: c for c in listed.certificates}
    assert [c.service_account for c in listed.certificates] == ["db", "web"]
    web, db = by_account["web"], by_account["db"]
    assert web.spiffe_id == f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/web"
    assert web.serial == mesh.web.serial
    assert web.not_before.timestamp() == mesh.web.not_before
    assert web.not_after.timestamp() == mesh.web.not_after
    assert web.issuer_fingerprint == fingerprint(mesh.new)
    assert db.issuer_fingerprint == fingerprint(mesh.old)
    assert (web.proxies, web.proxies_total) == (["web-1.shop", "web-2.shop"], 2)
    assert (db.proxies, db.proxies_total) == (["db-1.shop"], 1)
    assert listed.total == 2
    assert listed.next_offset is None


async def test_an_issuer_no_longer_trusted_is_unknown_and_pages_are_bounded(mesh: Mesh) -> None:
    plane = FakePlane(mesh)
    only_new = TrustRoots(
        roots_pem=mesh.new.certificate.public_bytes(serialization.Encoding.PEM),
        fingerprints=(fingerprint(mesh.new),),
    )
    plane.mesh = Mesh(mesh.old, mesh.new, mesh.web, mesh.db, only_new)

    first = CertificateList.model_validate((await get(plane, "/api/certificates?limit=1")).json())
    second = CertificateList.model_validate(
        (await get(plane, "/api/certificates?offset=1&limit=1")).json()
    )

    assert [c.service_account for c in first.certificates] == ["db"]
    assert first.certificates[0].issuer_fingerprint is None  # the old root has gone
    assert (first.total, first.next_offset) == (2, 1)
    assert second.certificates[0].issuer_fingerprint == fingerprint(mesh.new)
    assert second.next_offset is None


def key_traces(mesh: Mesh) -> list[str]:
    """Every form a private key could take in a response."""
    traces = []
    for certificate in (mesh.web, mesh.db):
        pem = certificate.private_key
        body_line = pem.decode().splitlines()[1]
        traces += [body_line, base64.b64encode(pem).decode()[:40]]
    return ["PRIVATE KEY", *traces]


def admin_paths() -> list[str]:
    node = quote("web-1.shop", safe="")
    return [
        "/",
        "/api/certificates",
        "/api/proxies",
        f"/api/proxies/{node}",
        f"/api/proxies/{node}/config",
        f"/api/proxies/{node}/config?type=SDS",
        f"/api/proxies/{node}/explain",
        f"/api/proxies/{node}/explain?type=SDS&name=default",
        f"/proxies/{node}",
        f"/proxies/{node}?type=SDS",
        "/api/errors",
    ]


@pytest.mark.parametrize("token", [False, True], ids=["anonymous", "with-token"])
@pytest.mark.parametrize("path", admin_paths())
async def test_no_response_carries_a_private_key(mesh: Mesh, path: str, token: bool) -> None:
    response = await get(FakePlane(mesh), path, token=token)

    assert response.status_code == 200, response.text
    for trace in key_traces(mesh):
        assert trace not in response.text, (path, trace)


async def test_the_served_secret_shows_its_key_redacted_and_its_certificate(mesh: Mesh) -> None:
    node = quote("web-1.shop", safe="")

    config = (await get(FakePlane(mesh), f"/api/proxies/{node}/config?type=SDS", True)).json()

    secrets = {r["name"]: r["resource"] for r in config["types"][0]["resources"]}
    tls = secrets["default"]["tls_certificate"]
    assert tls["private_key"] == REDACTED
    chain = base64.b64decode(tls["certificate_chain"]["inline_bytes"])
    assert chain == mesh.web.certificate_chain
    assert "trusted_ca" in secrets["ROOTCA"]["validation_context"]


async def test_the_index_page_lists_the_certificates_and_roots(mesh: Mesh) -> None:
    page = (await get(FakePlane(mesh), "/")).text

    assert '<h2 id="certificates">Certificates (2)</h2>' in page
    assert "Trust roots (2)" in page
    assert f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/web" in page
    assert f"<code>{mesh.web.serial}</code>" in page
    assert fingerprint(mesh.new)[:16] in page
    assert "web-1.shop, web-2.shop" in page


async def test_a_view_without_certificates_lists_none() -> None:
    @dataclass
    class Bare(FakePlane):
        def mesh_certificates(self) -> MeshCertificates:
            return MeshCertificates((), None)

    plane = Bare(Mesh(*([None] * 5)))  # type: ignore[arg-type]
    listed = CertificateList.model_validate((await get(plane, "/api/certificates")).json())

    assert (listed.certificates, listed.trust_roots, listed.total) == ([], [], 0)


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def served(mesh: Mesh) -> Iterator[tuple[str, FakePlane]]:
    """The admin app on the fake plane, on a loopback port, in a thread."""
    plane = FakePlane(mesh)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(plane, TOKEN), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", plane
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def xds_server(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        environ[TOKEN_ENV] = token
    command = [sys.executable, "-m", "xds_server.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environ)


def test_status_certificates_prints_a_row_per_identity_and_the_roots(
    served: tuple[str, FakePlane], mesh: Mesh
) -> None:
    url, _ = served

    table = xds_server("status", "certificates", "--admin", url)
    as_json = xds_server("status", "certificates", "--admin", url, "-o", "json")

    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SPIFFE", "ID", "SERIAL", "NOT", "AFTER", "EXPIRES", "ISSUER",
                                "PROXIES"]  # fmt: skip
    db, web = lines[1].split(), lines[2].split()
    assert db[:2] == [f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/db", mesh.db.serial]
    assert web[-2:] == [fingerprint(mesh.new)[:16], "web-1.shop,web-2.shop"]
    assert web[3] == "expired"  # issued at NOW, a day long, NOW is in the past
    assert lines[4].split()[:2] == ["TRUST", "ROOT"]
    assert {line.split()[0] for line in lines[5:7]} == {f[:16] for f in mesh.roots.fingerprints}
    assert as_json.returncode == 0, as_json.stderr
    listed = CertificateList.model_validate(json.loads(as_json.stdout))
    assert [c.serial for c in listed.certificates] == [mesh.db.serial, mesh.web.serial]
    assert "PRIVATE KEY" not in table.stdout + as_json.stdout


def test_ca_rotate_root_sends_the_token_and_the_overlap(served: tuple[str, FakePlane]) -> None:
    url, plane = served

    started = xds_server("ca", "rotate-root", "--overlap", "90s", "--admin", url, token=TOKEN.value)
    in_json = xds_server(
        "ca", "rotate-root", "--overlap", "2m", "--admin", url, "-o", "json", token=TOKEN.value
    )

    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("root rotation started: new root serial 0b (old 0a)\n")
    assert "the old root is trusted until 2026-01-02T03:05:35Z" in started.stdout
    assert json.loads(in_json.stdout)["new_root_serial"] == "0b"
    assert plane.rotations == [90.0, 120.0]


@pytest.mark.parametrize("token", [None, "not-the-token-" + "n" * 20], ids=["none", "wrong"])
def test_ca_rotate_root_without_the_token_fails_in_one_line(
    served: tuple[str, FakePlane], token: str | None, tmp_path: Any
) -> None:
    url, plane = served

    ran = xds_server(
        "ca", "rotate-root", "--overlap", "60", "--admin", url,
        "--admin-token-file", str(tmp_path / "missing"), token=token,
    )  # fmt: skip

    assert ran.returncode == 1
    assert ran.stderr.startswith(f"xds-server ca rotate-root: {url}/api/ca/rotate-root: HTTP 401")
    assert "--admin-token-file" in ran.stderr
    assert len(ran.stderr.splitlines()) == 1
    assert plane.rotations == []


@pytest.mark.parametrize("overlap", ["0", "-1m", "soon"])
def test_ca_rotate_root_refuses_a_bad_overlap_as_a_usage_error(overlap: str) -> None:
    ran = xds_server("ca", "rotate-root", "--overlap", overlap, "--admin", "http://127.0.0.1:9")

    assert ran.returncode == 2
    assert "--overlap" in ran.stderr
