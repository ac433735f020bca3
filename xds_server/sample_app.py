"""A tiny HTTP service for the demo and end-to-end tests: it says who it is and what it saw.

`GET /` (any path) answers JSON naming the service, its version and listen
address, and echoing the request method, path and headers, so a test can see
which backend a sidecar chose and which headers the mesh added (`x-mesh-*`,
`x-request-id`, ...).  `GET /status/<code>` answers with that status, for retry
and outlier tests; `GET /delay/<ms>` answers after that many milliseconds (at
most 60 s), for circuit breaker and timeout tests.  An app can also play a
broken or slow instance: its `fail_status` (when set) answers every request
with that status, its `delay_seconds` holds every request that long first;
both may change while it runs (and are `--fail-status` and `--delay-ms`).
`?fail_every=<n>` on any path answers 503 to all but every n-th such request
the app sees (`fail_every=2`: fails every other one, for retry tests), and
`hits` counts the requests an app has answered but `/call` (mirror and retry tests).
`GET /call` makes one request to an upstream service through the caller's
sidecar: it connects to `upstream_proxy` (the sidecar's outbound
listener) and sends `Host: <upstream_host>`, and answers with the upstream's
status and its decoded response.  `/call?host=other:8080&path=/x` overrides both.

It is a small HTTP/1.1 server on asyncio streams, stdlib only, correct enough for
Envoy as a client: Content-Length on every response, chunked request bodies,
keep-alive by default and `Connection: close` honoured.  Run it in-process with
`start_sample_app()` or as a process:

    python -m xds_server.sample_app --name backend --version v1 --listen 127.0.0.1:8080 \
        [--upstream-proxy 127.0.0.1:15001 --upstream-host backend:8080]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_COUNTED_PATHS = 1000
"""Distinct paths `path_hits` counts (bounded: the demo runs for as long as it is left)."""
UPSTREAM_TIMEOUT_S = 10.0
MAX_DELAY_MS = 60_000
# Forwarded from the inbound request on /call so a trace spans both hops.
PROPAGATED_HEADERS = ("x-request-id", "traceparent", "tracestate", "b3")
PROPAGATED_PREFIXES = ("x-b3-",)

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(eq=False)
class SampleApp:
    """A running sample app; `await close()` stops it and its open connections."""

    name: str
    version: str
    host: str
    port: int
    upstream_proxy: tuple[str, int] | None = None
    upstream_host: str | None = None
    fail_status: int | None = None
    """When set, every request (but `/call`) is answered with this status."""
    delay_seconds: float = 0.0
    """Every request is held this long before it is answered."""
    hits: int = 0
    """Requests answered so far (any path but `/call`)."""
    path_hits: Counter[str] = field(default_factory=Counter)
    """`hits` by path, for the first `MAX_COUNTED_PATHS` distinct paths."""
    _fail_every_seen: int = field(default=0, repr=False)
    _server: asyncio.Server | None = field(default=None, repr=False)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5.0)
        await self._server.wait_closed()
        self._server = None

    async def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("the sample app is closed")
        await self._server.serve_forever()

    async def __aenter__(self) -> SampleApp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- HTTP server ------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _BadRequest as error:
                    await _write_response(writer, error.status, {"error": str(error)}, False)
                    return
                if request is None:
                    return
                status, payload = await self._respond(request)
                keep_alive = request.keep_alive
                await _write_response(
                    writer, status, payload, keep_alive, head=request.method == "HEAD"
                )
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, request: _Request) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(request.target)
        query = dict(urllib.parse.parse_qsl(url.query))
        if self.delay_seconds > 0:
            await asyncio.sleep(self.delay_seconds)
        if url.path == "/call":
            return await self._call(request, query)
        status = 200
        if url.path.startswith("/delay/"):
            millis = url.path.removeprefix("/delay/")
            if not (millis.isdigit() and int(millis) <= MAX_DELAY_MS):
                return 400, {"error": f"bad delay {millis!r} (0..{MAX_DELAY_MS} ms)"}
            await asyncio.sleep(int(millis) / 1000)
        self.hits += 1
        if url.path in self.path_hits or len(self.path_hits) < MAX_COUNTED_PATHS:
            self.path_hits[url.path] += 1
        fail_every = query.get("fail_every", "")
        if self.fail_status is not None:
            status = self.fail_status
        elif fail_every:
            if not (fail_every.isdigit() and int(fail_every) >= 1):
                return 400, {"error": f"bad fail_every {fail_every!r} (an integer >= 1)"}
            self._fail_every_seen += 1
            status = 200 if self._fail_every_seen % int(fail_every) == 0 else 503
        elif url.path.startswith("/status/"):
            code = url.path.removeprefix("/status/")
            if not (code.isdigit() and 200 <= int(code) <= 599):
                return 400, {"error": f"bad status code {code!r}"}
            status = int(code)
        return status, self._identity() | {
            "method": request.method,
            "path": request.target,
            "headers": {key: request.header(key) for key, _ in request.headers},
        }

    def _identity(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "version": self.version,
            "host": self.host,
            "port": self.port,
            "hostname": socket.gethostname(),
        }

    # -- /call ------------------------------------------------------------------

    async def _call(self, request: _Request, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        upstream_host = query.get("host") or self.upstream_host
        if self.upstream_proxy is None or not upstream_host:
            return 501, self._identity() | {"error": "no upstream configured"}
        path = query.get("path", "/")
        if not path.startswith("/"):
            return 400, self._identity() | {"error": f"path {path!r} must start with /"}
        forwarded = [
            (key, value)
            for key, value in request.headers
            if key in PROPAGATED_HEADERS or key.startswith(PROPAGATED_PREFIXES)
        ]
        result = self._identity() | {"upstream": upstream_host, "upstream_path": path}
        try:
            async with asyncio.timeout(UPSTREAM_TIMEOUT_S):
                status, body = await _http_get(self.upstream_proxy, upstream_host, path, forwarded)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _BadRequest) as error:
            status = 504 if isinstance(error, TimeoutError) else 502
            return status, result | {"error": f"upstream request failed: {error!r}"}
        try:
            decoded: Any = json.loads(body)
        except ValueError:
            decoded = body.decode("utf-8", errors="replace")
        return status, result | {"upstream_status": status, "upstream_response": decoded}


async def start_sample_app(
    name: str,
    version: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    upstream_proxy: str | None = None,
    upstream_host: str | None = None,
    fail_status: int | None = None,
    delay_seconds: float = 0.0,
) -> SampleApp:
    """Start serving on `host:port` (0 picks a free port; read it from `.port`).

    `upstream_proxy` is `HOST:PORT` (or `http://HOST:PORT`) of the sidecar's outbound
    listener; `upstream_host` is the `Host` header `/call` sends, e.g. `backend:8080`.
    """
    app = SampleApp(
        name=name,
        version=version,
        host=host,
        port=port,
        upstream_proxy=parse_address(upstream_proxy) if upstream_proxy else None,
        upstream_host=upstream_host,
        fail_status=fail_status,
        delay_seconds=delay_seconds,
    )
    server = await asyncio.start_server(
        app._serve_connection, host, port, limit=MAX_HEADER_BYTES, reuse_address=True
    )
    app._server = server
    app.port = server.sockets[0].getsockname()[1]
    logger.info("sample app %s %s listening on %s", name, version, app.url)
    return app


def run_sample_app(
    name: str,
    version: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    upstream_proxy: str | None = None,
    upstream_host: str | None = None,
    fail_status: int | None = None,
    delay_seconds: float = 0.0,
) -> None:
    """Serve until SIGINT or SIGTERM; prints `listening on http://HOST:PORT` once bound."""

    async def main() -> None:
        app = await start_sample_app(
            name,
            version,
            host,
            port,
            upstream_proxy=upstream_proxy,
            upstream_host=upstream_host,
            fail_status=fail_status,
            delay_seconds=delay_seconds,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"listening on {app.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await app.close()

    asyncio.run(main())


def parse_address(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `http://HOST:PORT` as `(host, port)`."""
    if "//" in value:
        value = urllib.parse.urlsplit(value).netloc
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


# -- HTTP/1.1 wire format ---------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on a connection, or None when the client closed it cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise _BadRequest(400, "truncated request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, f"bad request line {lines[0]!r}")
    method, target, version = parts
    headers = _parse_headers(lines[1:])
    body = await _read_body(reader, headers)
    return _Request(method, target, version, headers, body)


async def _http_get(
    proxy: tuple[str, int], host: str, path: str, headers: Sequence[tuple[str, str]]
) -> tuple[int, bytes]:
    """One GET through `proxy` with `Host: host`; the response status and body."""
    reader, writer = await asyncio.open_connection(*proxy, limit=MAX_HEADER_BYTES)
    try:
        request = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        request += [f"{key}: {value}" for key, value in headers]
        writer.write(("\r\n".join(request) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status_parts = lines[0].split(" ", 2)
        if len(status_parts) < 2 or not status_parts[1].isdigit():
            raise _BadRequest(502, f"bad status line {lines[0]!r}")
        response_headers = _parse_headers(lines[1:])
        names = {key for key, _ in response_headers}
        if "content-length" in names or "transfer-encoding" in names:
            body = await _read_body(reader, response_headers)
        else:
            body = await reader.read()
        return int(status_parts[1]), body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _parse_headers(lines: Sequence[str]) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or key != key.strip():
            raise _BadRequest(400, f"bad header line {line!r}")
        headers.append((key.lower(), value.strip()))
    return tuple(headers)


async def _read_body(reader: asyncio.StreamReader, headers: Sequence[tuple[str, str]]) -> bytes:
    fields = dict(headers)
    if "chunked" in fields.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(400, f"bad chunk size {size_text!r}") from None
            if size == 0:
                # Trailers, if any, end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length_text = fields.get("content-length", "0")
    if not length_text.isdigit():
        raise _BadRequest(400, f"bad content-length {length_text!r}")
    return await reader.readexactly(int(length_text))


async def _write_response(
    writer: asyncio.StreamWriter,
    status: int,
    payload: dict[str, Any],
    keep_alive: bool,
    *,
    head: bool = False,
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    if status in (204, 304):
        # These never carry a body (RFC 9110 §15.3.5, §15.4.5).
        body = b""
    else:
        body = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))
    await writer.drain()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xds_server.sample_app", description=__doc__)
    parser.add_argument("--name", required=True, help="service name reported in responses")
    parser.add_argument("--version", default="v1", help="version reported in responses")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (port 0: any)")
    parser.add_argument("--upstream-proxy", help="HOST:PORT of the sidecar outbound listener")
    parser.add_argument("--upstream-host", help="Host header for /call, e.g. backend:8080")
    parser.add_argument(
        "--fail-status", type=int, help="answer every request with this status (a broken pod)"
    )
    parser.add_argument(
        "--delay-ms", type=int, default=0, help="hold every request this long (a slow pod)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if bool(args.upstream_proxy) != bool(args.upstream_host):
        parser.error("--upstream-proxy and --upstream-host go together")
    try:
        host, port = parse_address(args.listen)
        if args.upstream_proxy:
            parse_address(args.upstream_proxy)
    except ValueError as error:
        parser.error(str(error))
    if args.fail_status is not None and not 200 <= args.fail_status <= 599:
        parser.error("--fail-status must be 200..599")
    if not 0 <= args.delay_ms <= MAX_DELAY_MS:
        parser.error(f"--delay-ms must be 0..{MAX_DELAY_MS}")
    run_sample_app(
        args.name,
        args.version,
        host,
        port,
        upstream_proxy=args.upstream_proxy,
        upstream_host=args.upstream_host,
        fail_status=args.fail_status,
        delay_seconds=args.delay_ms / 1000,
    )


if __name__ == "__main__":
    main()
