"""The admin API's bearer token: what needs it, what stays open, where it lives.

In process against a fake view: every route that is not a GET (found by
walking the app's routes, so a new one cannot slip through) answers 401 with
`WWW-Authenticate: Bearer` without the token and with a wrong one, and does
its work with the right one; every GET without parameters stays open.  The
token file is created 0600 in a 0700 directory, read back rather than
replaced, overridden by `$XDS_SERVER_ADMIN_TOKEN`, and compared with
`hmac.compare_digest`.  Then a real control plane: it writes its token file
at start-up, guards its dry run, and `xds-server diff` (a subprocess, as a
user runs it) sends the token from the file or the environment, or fails
in one line that says what to do.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_mesh import plane_settings, service_yaml, write_documents
from fastapi.routing import APIRoute

from xds_server.admin import ProxyView, create_app
from xds_server.admin.auth import (
    TOKEN_ENV,
    AdminToken,
    TokenError,
    client_token,
    load_or_create,
)
from xds_server.admin.root_rotation import RootRotationModel
from xds_server.app import ControlPlane, StartupError, _is_loopback
from xds_server.cache import Snapshot
from xds_server.cli import _parser
from xds_server.settings import SecuritySettings, Settings, split_host_port

TOKEN = AdminToken("the-right-token-" + "r" * 20, "tests")


@dataclass(frozen=True)
class Rotation:
    new_serial: str = "0a"
    old_serial: str = "01"
    reissue_at: float = 1_800_000_000.0
    overlap_ends_at: float = 1_800_000_060.0


@dataclass
class FakePlane:
    """An AdminView that can also rotate its root (recording each request)."""

    rotations: list[float] = field(default_factory=list)
    refuse: str | None = None

    def is_ready(self) -> bool:
        return True

    def readiness_detail(self) -> dict[str, Any]:
        return {"xds_serving": True, "sources_synced": True}

    def proxies(self) -> list[ProxyView]:
        return []

    def snapshot(self, node_id: str) -> Snapshot | None:
        return None

    def source_errors(self) -> list[str]:
        return []

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"

    async def rotate_root(self, overlap_seconds: float) -> Rotation:
        if self.refuse is not None:
            raise ValueError(self.refuse)
        self.rotations.append(overlap_seconds)
        return Rotation()


BODIES = {
    "/api/diff": {"files": {}},
    "/api/ca/rotate-root": {"overlap_seconds": 60},
    "/api/xds/client-certificate": {
        "namespace": "default",
        "service_account": "web",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----",
    },
}
"""A valid body for each guarded endpoint."""


async def call(
    plane: FakePlane, method: str, path: str, token: str | None, body: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.request(method, path, json=body, headers=headers)


def routes() -> list[APIRoute]:
    return [r for r in create_app(FakePlane(), TOKEN).routes if isinstance(r, APIRoute)]


GUARDED = sorted(
    (method, route.path) for route in routes() for method in route.methods - {"GET", "HEAD"}
)
OPEN = sorted(route.path for route in routes() if "GET" in route.methods and "{" not in route.path)


def test_the_guarded_and_open_endpoints_are_the_expected_ones() -> None:
    assert GUARDED == [
        ("POST", "/api/ca/rotate-root"),
        ("POST", "/api/diff"),
        ("POST", "/api/xds/client-certificate"),
    ]
    assert {"/api/proxies", "/api/certificates", "/api/policies", "/", "/metrics"} <= set(OPEN)


@pytest.mark.parametrize(("method", "path"), GUARDED)
@pytest.mark.parametrize(
    ("token", "challenge"),
    [(None, "Bearer"), ("wrong-" + "w" * 30, 'Bearer error="invalid_token"'), ("", "Bearer")],
    ids=["missing", "wrong", "empty"],
)
async def test_a_state_changing_endpoint_refuses_a_missing_or_wrong_token(
    method: str, path: str, token: str | None, challenge: str
) -> None:
    plane = FakePlane()

    response = await call(plane, method, path, token, BODIES[path])

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == challenge
    assert "admin token" in response.json()["detail"]
    assert plane.rotations == []


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_a_state_changing_endpoint_serves_the_right_token(method: str, path: str) -> None:
    response = await call(FakePlane(), method, path, TOKEN.value, BODIES[path])

    # the fake has no dry run (501): past the guard, either way
    assert response.status_code in (200, 501), response.text


async def test_another_scheme_is_no_token() -> None:
    transport = httpx.ASGITransport(app=create_app(FakePlane(), TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        response = await client.post(
            "/api/diff", json={"files": {}}, headers={"Authorization": f"Basic {TOKEN.value}"}
        )

    assert response.status_code == 401


@pytest.mark.parametrize("path", OPEN)
async def test_read_only_endpoints_stay_open(path: str) -> None:
    response = await call(FakePlane(), "GET", path, None)

    assert response.status_code == 200, response.text


async def test_rotate_root_starts_a_rotation_and_says_when_it_ends() -> None:
    plane = FakePlane()

    response = await call(plane, "POST", "/api/ca/rotate-root", TOKEN.value, BODIES[
        "/api/ca/rotate-root"])  # fmt: skip

    assert response.status_code == 200
    assert plane.rotations == [60.0]
    answer = RootRotationModel.model_validate(response.json())
    assert answer.new_root_serial == "0a"
    assert answer.old_root_serial == "01"
    assert answer.overlap_ends_at.timestamp() == Rotation.overlap_ends_at


@pytest.mark.parametrize("overlap", [0, -5, "soon", None])
async def test_rotate_root_refuses_a_bad_overlap_naming_the_field(overlap: Any) -> None:
    plane = FakePlane()

    response = await call(
        plane, "POST", "/api/ca/rotate-root", TOKEN.value, {"overlap_seconds": overlap}
    )

    assert response.status_code == 422
    assert "overlap_seconds" in json.dumps(response.json())
    assert plane.rotations == []


async def test_a_refused_rotation_is_a_409_saying_why() -> None:
    plane = FakePlane(refuse="a root rotation is under way until 1800000060")

    response = await call(plane, "POST", "/api/ca/rotate-root", TOKEN.value, {
        "overlap_seconds": 60})  # fmt: skip

    assert response.status_code == 409
    assert response.json()["detail"] == "a root rotation is under way until 1800000060"


# -- the token ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_token_file_is_generated_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "state" / "admin-token"

    token = load_or_create(path, environ={})

    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert path.read_text().strip() == token.value
    assert len(token.value) >= 40
    assert [p.name for p in path.parent.iterdir()] == ["admin-token"]  # no temporary left
    assert token.value not in repr(token)
    again = load_or_create(path, environ={})
    assert again.value == token.value  # read back, not replaced
    assert load_or_create(tmp_path / "other", environ={}).value != token.value


def test_of_two_processes_creating_the_token_at_once_one_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "admin-token"
    real_link = os.link

    def link_after_the_other(source: str, target: Path) -> None:
        target.write_text("the-other-process-token-" + "o" * 10 + "\n")  # got there first
        real_link(source, target)

    monkeypatch.setattr(os, "link", link_after_the_other)

    token = load_or_create(path, environ={})

    assert token.value == "the-other-process-token-" + "o" * 10
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    value = "from-the-environment-" + "e" * 10

    token = load_or_create(path, environ={TOKEN_ENV: value})

    assert token.value == value
    assert not path.exists()
    assert client_token(path, environ={TOKEN_ENV: value}) == value


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.write_text("short\n"), "shorter than 16 characters"),
        (lambda p: p.mkdir(), "cannot read the admin token"),
        (lambda p: p.parent.rmdir() or p.parent.write_text(""), "cannot read the admin token"),
    ],
    ids=["too-short", "a-directory", "parent-is-a-file"],
)
def test_a_token_that_cannot_be_had_is_an_error_naming_the_file(
    tmp_path: Path, setup: Callable[[Path], Any], message: str
) -> None:
    path = tmp_path / "dir" / "admin-token"
    path.parent.mkdir()
    setup(path)

    with pytest.raises(TokenError, match=message) as raised:
        load_or_create(path, environ={})
    assert str(path) in str(raised.value)


UNWRITABLE = Path("/proc/xds-server-admin/admin-token")
"""A file nobody can create, root included (procfs takes no new directories)."""


def test_a_token_file_that_cannot_be_written_is_an_error_naming_it() -> None:
    with pytest.raises(TokenError, match=f"cannot write the admin token {UNWRITABLE}: "):
        load_or_create(UNWRITABLE, environ={})


def test_the_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    assert TOKEN.matches(TOKEN.value)
    assert not TOKEN.matches(TOKEN.value[:-1] + "x")
    assert not TOKEN.matches("")
    assert len(compared) == 3


def test_the_admin_api_listens_on_loopback_by_default() -> None:
    assert split_host_port(Settings().admin_listen)[0] == "127.0.0.1"
    args = _parser().parse_args(["serve"])
    assert split_host_port(args.admin_listen)[0] == "127.0.0.1"
    assert args.admin_token_file == SecuritySettings().admin_token_file


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.9", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False)],
)  # fmt: skip
def test_an_admin_listening_beyond_this_host_is_told_apart(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


# -- a real control plane and the CLI ---------------------------------------------------------


def xds_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "xds_server.cli", *args]
    environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | (env or {})
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environ)


async def test_a_control_plane_writes_its_token_and_the_cli_sends_it(
    tmp_path: Path, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_documents(manifests / "web.yaml", service_yaml("web"))
    token_file = tmp_path / "state" / "admin-token"
    settings = plane_settings(
        f"file:{manifests}",
        free_port,
        security=SecuritySettings(admin_token_file=token_file, ca_dir=tmp_path / "ca"),
    )
    plane = ControlPlane(settings)
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        assert mode(token_file) == 0o600
        token = token_file.read_text().strip()
        admin = f"http://127.0.0.1:{plane.admin_port}"
        async with httpx.AsyncClient(base_url=admin, timeout=10) as client:
            refused = await client.post("/api/diff", json={"files": {}})
            allowed = await client.post(
                "/api/diff", json={"files": {}}, headers={"Authorization": f"Bearer {token}"}
            )
            listed = await client.get("/api/proxies")
        assert refused.status_code == 401
        assert allowed.status_code == 200, allowed.text
        assert listed.status_code == 200

        proposed = tmp_path / "web.yaml"
        proposed.write_text(service_yaml("web", port=8081))
        diff = ("diff", "-f", str(proposed), "--admin", admin)
        with_file = await asyncio.to_thread(
            xds_server, *diff, "--admin-token-file", str(token_file)
        )
        with_env = await asyncio.to_thread(
            xds_server, *diff, "--admin-token-file", str(tmp_path / "none"), env={
                TOKEN_ENV: token})  # fmt: skip
        without = await asyncio.to_thread(
            xds_server, *diff, "--admin-token-file", str(tmp_path / "none")
        )
        wrong = await asyncio.to_thread(xds_server, *diff, env={TOKEN_ENV: "x" * 32})
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert with_file.returncode in (0, 1), with_file.stderr
    assert with_env.returncode == with_file.returncode, with_env.stderr
    assert without.returncode == 2
    assert "HTTP 401" in without.stderr
    assert f"no admin token: set ${TOKEN_ENV} or --admin-token-file" in without.stderr
    assert len(without.stderr.splitlines()) == 1
    assert wrong.returncode == 2
    assert "the admin token is wrong" in wrong.stderr


async def test_a_token_file_that_cannot_be_written_stops_start_up(
    tmp_path: Path, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    (tmp_path / "manifests").mkdir()
    settings = plane_settings(
        f"file:{tmp_path / 'manifests'}",
        free_port,
        security=SecuritySettings(admin_token_file=UNWRITABLE, ca_dir=tmp_path / "ca"),
    )

    with pytest.raises(StartupError, match=f"cannot write the admin token {UNWRITABLE}"):
        await ControlPlane(settings).run()
