"""The sample app: it says who it is, echoes what it saw, and calls an upstream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from xds_server.sample_app import parse_address, start_sample_app

if TYPE_CHECKING:
    from conftest import SampleAppFactory


async def get(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        return await client.get(url, headers=headers)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes on one connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_it_says_who_it_is_and_echoes_the_request(sample_app: SampleAppFactory) -> None:
    app = await sample_app(name="backend", version="v3")

    response = await get(f"{app.url}/some/path?q=1", **{"x-mesh-source": "frontend"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["service"] == "backend"
    assert body["version"] == "v3"
    assert (body["host"], body["port"]) == ("127.0.0.1", app.port)
    assert (body["method"], body["path"]) == ("GET", "/some/path?q=1")
    assert body["headers"]["x-mesh-source"] == "frontend"


@pytest.mark.parametrize("code", [200, 404, 503])
async def test_status_path_answers_with_that_status(
    sample_app: SampleAppFactory, code: int
) -> None:
    app = await sample_app()
    response = await get(f"{app.url}/status/{code}")
    assert response.status_code == code
    assert response.json()["service"] == "backend"


async def test_keep_alive_serves_several_requests_on_one_connection(
    sample_app: SampleAppFactory,
) -> None:
    app = await sample_app()
    one = b"GET /one HTTP/1.1\r\nHost: backend\r\n\r\n"
    last = b"GET /two HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"

    raw = await exchange(app.port, one + one + last)

    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.count(b"Connection: keep-alive") == 2
    assert raw.count(b"Connection: close") == 1
    assert raw.endswith(b"}\n"), "each body is exactly Content-Length bytes"


async def test_http_1_0_closes_unless_asked_to_keep_alive(sample_app: SampleAppFactory) -> None:
    app = await sample_app()
    raw = await exchange(app.port, b"GET / HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"Connection: close" in raw


async def test_a_chunked_request_body_is_read(sample_app: SampleAppFactory) -> None:
    app = await sample_app()
    chunked = (
        b"POST /upload HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    raw = await exchange(app.port, chunked)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["method"] == "POST"


async def test_a_malformed_request_gets_400(sample_app: SampleAppFactory) -> None:
    app = await sample_app()
    raw = await exchange(app.port, b"NONSENSE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400 Bad Request")


async def test_call_reaches_the_upstream(sample_app: SampleAppFactory) -> None:
    # No sidecar here: the "proxy" is the backend itself, which ignores the Host name.
    backend = await sample_app(name="backend", version="v1")
    frontend = await sample_app(
        name="frontend", upstream_proxy=backend.address, upstream_host="backend:8080"
    )

    response = await get(f"{frontend.url}/call?path=/items", **{"x-request-id": "abc-123"})

    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "frontend"
    assert body["upstream"] == "backend:8080"
    assert body["upstream_status"] == 200
    upstream: dict[str, Any] = body["upstream_response"]
    assert (upstream["service"], upstream["path"]) == ("backend", "/items")
    assert upstream["headers"]["host"] == "backend:8080"
    assert upstream["headers"]["x-request-id"] == "abc-123", "tracing headers are propagated"


async def test_call_passes_on_the_upstream_status(sample_app: SampleAppFactory) -> None:
    backend = await sample_app()
    frontend = await sample_app(
        name="frontend", upstream_proxy=f"http://{backend.address}", upstream_host="backend"
    )
    response = await get(f"{frontend.url}/call?path=/status/503")
    assert response.status_code == 503
    assert response.json()["upstream_status"] == 503


async def test_call_without_an_upstream_is_501(sample_app: SampleAppFactory) -> None:
    app = await sample_app()
    response = await get(f"{app.url}/call")
    assert response.status_code == 501


async def test_call_to_a_dead_upstream_is_502(sample_app: SampleAppFactory, free_port: Any) -> None:
    frontend = await sample_app(
        name="frontend", upstream_proxy=f"127.0.0.1:{free_port()}", upstream_host="backend"
    )
    response = await get(f"{frontend.url}/call")
    assert response.status_code == 502
    assert "upstream request failed" in response.json()["error"]


async def test_close_ends_open_connections() -> None:
    app = await start_sample_app("backend", "v1")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"}\n")
        await app.close()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:15001", ("127.0.0.1", 15001)),
        ("http://127.0.0.1:15001", ("127.0.0.1", 15001)),
        ("[::1]:80", ("::1", 80)),
    ],
)
def test_parse_address(value: str, expected: tuple[str, int]) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1", "host:port", ":80", "127.0.0.1:70000"])
def test_parse_address_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(value)


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "xds_server.sample_app", "--name", "cli", "--version", "v9"]
    process = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the first line, printed once bound
        assert line.startswith("listening on http://127.0.0.1:"), process.stderr
        with httpx.Client(trust_env=False, timeout=10.0) as client:
            body = client.get(line.split()[-1]).json()
        assert (body["service"], body["version"]) == ("cli", "v9")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_rejects_half_an_upstream() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xds_server.sample_app", "--name", "x", "--upstream-host", "b:80"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "go together" in result.stderr
