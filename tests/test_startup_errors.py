"""`xds-server serve` either starts or says in one line why it cannot; bad input never stops it.

The process exits non-zero only when it cannot start at all: a port in use
(by anything, including another control plane), a source directory that is
missing or unreadable, a bad flag.  Each is one line on stderr and no
traceback, exit 1 (2 for a usage error).  A hostile manifest is not such a
reason: a control plane started on a directory holding one starts, is ready,
serves the good services to a real Envoy and names the file in `/api/errors`,
so a bad file cannot put it in a crash loop.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import EnvoyFactory
from e2e_mesh import service_yaml, sidecar_bootstrap, slice_yaml, write_documents
from plane_process import ControlPlaneProcess, poll, sample_apps, serve_command

pytestmark = [pytest.mark.timeout(120)]

BACKEND = "127.0.47.1"


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = serve_command(Path("unused"), 0, 0)[:3] + list(args)  # python -m xds_server.cli
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert says in lines[0], lines[0]


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "services.yaml", service_yaml("backend"))
    return directory


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve_on(source: Path, xds: int, admin: int) -> subprocess.CompletedProcess[str]:
    return run_serve(
        "serve", "--source", f"file:{source}",
        "--xds-listen", f"127.0.0.1:{xds}", "--admin-listen", f"127.0.0.1:{admin}",
    )  # fmt: skip


def test_xds_port_in_use(manifests: Path, held_port: int, free_port: Callable[[], int]) -> None:
    result = serve_on(manifests, held_port, free_port())
    assert_one_line_failure(
        result, 1, f"cannot listen for xDS on 127.0.0.1:{held_port}: address already in use"
    )


def test_admin_port_in_use(manifests: Path, held_port: int, free_port: Callable[[], int]) -> None:
    result = serve_on(manifests, free_port(), held_port)
    assert_one_line_failure(
        result, 1, f"cannot listen for the admin API on 127.0.0.1:{held_port}: address already in"
    )


def test_a_second_control_plane_on_the_same_xds_port_does_not_share_it(
    manifests: Path, free_port: Callable[[], int], tmp_path: Path
) -> None:
    # gRPC binds with SO_REUSEPORT: without a check the second would silently share the port.
    first = ControlPlaneProcess(manifests, free_port(), free_port(), tmp_path / "first.log")
    try:
        first.start().wait_ready()
        result = serve_on(manifests, first.xds_port, free_port())
        assert_one_line_failure(result, 1, f"cannot listen for xDS on {first.xds_address}")
        assert first.ready()
    finally:
        first.stop()


@pytest.mark.parametrize(
    ("make_source", "says"),
    [
        (lambda tmp: tmp / "nowhere", "not found"),
        (lambda tmp: (tmp / "file.yaml", (tmp / "file.yaml").write_text(""))[0], "not a directory"),
    ],
    ids=["missing", "a file"],
)
def test_source_directory_must_exist(
    tmp_path: Path,
    free_port: Callable[[], int],
    make_source: Callable[[Path], Path],
    says: str,
) -> None:
    source = make_source(tmp_path)
    result = serve_on(source, free_port(), free_port())
    assert_one_line_failure(result, 1, says)
    assert str(source) in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_source_directory_must_be_readable(manifests: Path, free_port: Callable[[], int]) -> None:
    manifests.chmod(0)
    try:
        result = serve_on(manifests, free_port(), free_port())
    finally:
        manifests.chmod(0o755)
    assert_one_line_failure(result, 1, "permission denied")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--xds-listen", "nowhere"], "--xds-listen: expected HOST:PORT"),
        (["--admin-listen", "127.0.0.1:99999"], "--admin-listen: port out of range"),
        (["--grace-seconds", "soon"], "--grace-seconds: expected seconds"),
        (["--grace-seconds", "-1"], "--grace-seconds: expected 0 to 3600 seconds"),
        (["--source", "ftp:/x"], "unsupported source 'ftp:/x'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
    ids=["xds-listen", "admin-port", "grace-word", "grace-negative", "source", "unknown-flag"],
)
def test_bad_flags_are_a_usage_error(flags: list[str], says: str) -> None:
    assert_one_line_failure(run_serve("serve", *flags), 2, says)


# -- the crash-loop guard -------------------------------------------------------------------

HOSTILE_ZONE = textwrap.dedent(
    """\
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: hostile-slice
      namespace: default
      labels: {kubernetes.io/service-name: hostile}
    addressType: IPv4
    ports:
      - {name: http, port: 8080, protocol: TCP}
    endpoints:
      - addresses: ["127.0.47.9"]
        conditions: {ready: true}
        zone: "x\\uD800y"
    """
)
"""A lone surrogate in a zone: valid YAML, not encodable as UTF-8 (protobuf strings are)."""


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A Service whose spec expands to width**levels nodes once aliases are followed."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    anchors = "\n".join(f"    {line}" for line in lines)
    return (
        "apiVersion: v1\nkind: Service\nmetadata: {name: bomb, namespace: default}\n"
        f"spec:\n  selector: {{app: bomb}}\n  ports: [{{port: 80}}]\n  x:\n{anchors}\n"
        f"  y: *a{levels}\n"
    )


@pytest.mark.envoy
def test_a_hostile_file_at_start_up_is_reported_and_the_rest_is_served(
    manifests: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory, tmp_path: Path
) -> None:
    port = free_port()
    # `hostile` is a real Service: its slice is translated, not just parsed.
    write_documents(manifests / "services.yaml", service_yaml("backend"), service_yaml("hostile"))
    write_documents(manifests / "backend-endpoints.yaml", slice_yaml("backend", [BACKEND], port))
    hostile = {"hostile-zone.yaml": HOSTILE_ZONE, "alias-bomb.yaml": alias_bomb()}
    for name, text in hostile.items():
        (manifests / name).write_text(text, encoding="utf-8")

    plane = ControlPlaneProcess(manifests, free_port(), free_port(), tmp_path / "plane.log")
    with sample_apps({"backend": ("backend", "v1", f"{BACKEND}:{port}")}, tmp_path):
        try:
            plane.start().wait_ready(within=60)
            outbound = free_port()
            envoy = envoy_factory(
                sidecar_bootstrap("client-0.default", plane.xds_port, outbound, delta=False)
            )
            envoy.wait_live(timeout=30)

            def backend_answers() -> bool:
                connection = http.client.HTTPConnection("127.0.0.1", outbound, timeout=5)
                try:
                    connection.request("GET", "/", headers={"Host": "backend"})
                    return connection.getresponse().status == 200
                finally:
                    connection.close()

            poll(backend_answers, within=10, message="backend through the sidecar")
            reported = "\n".join(
                poll(lambda: len(plane.errors()["source"]) >= 2 and plane.errors()["source"],
                     within=10, message="both hostile files in /api/errors")
            )  # fmt: skip
            for name in hostile:
                assert name in reported, reported
            assert plane.ready(), "the control plane is still up and ready"
        finally:
            plane.stop()
            print(f"--- control plane log ---\n{plane.logs()[-6000:]}")
