"""Run real Envoy processes: for end-to-end tests, the demo and the benchmarks.

`EnvoyProcess` starts one stock `envoy` binary from a bootstrap file, waits until
its admin API answers, reads it (config dump, clusters, listeners, stats) and stops
it by PID.  It uses only the standard library, so it works anywhere Envoy does.

Flags, and why:

* `--disable-hot-restart`: no shared memory region and no hot-restart domain
  socket, so any number of Envoys run side by side without `--base-id` juggling
  and nothing is left in `/dev/shm` after a crash or SIGKILL.
* `--admin-address-path FILE`: Envoy writes the admin address it actually bound,
  so a bootstrap may use admin port 0 and no free-port race is possible.
* `--drain-time-s 1`: a listener replaced or removed over LDS drains in a second
  instead of ten minutes, which keeps update tests fast.
* `--concurrency 1`: one worker thread; deterministic and cheap when many run.
* stdout and stderr go to one log file per process (`logs()`), which also
  catches what Envoy prints before its logger is set up.

A `weakref.finalize` hook kills the process if its owner forgets to stop it, also
at interpreter exit.  Blocking methods have `*_async` twins that run them in a
thread, for use from asyncio tests.
"""

# ruff: noqa: ASYNC109 - the *_async twins keep the sync API's polling deadline `timeout=`.

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, overload

logger = logging.getLogger(__name__)

T = TypeVar("T")

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Admin requests go straight to loopback, whatever `http_proxy` says."""


class EnvoyError(RuntimeError):
    """Envoy failed to start, exited, or its admin API refused a request."""


def envoy_binary() -> str | None:
    """The `envoy` executable on PATH, or None."""
    return shutil.which("envoy")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (bind to port 0 and release it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def validate_bootstrap(config_path: str | os.PathLike[str], *, binary: str | None = None) -> str:
    """Run `envoy --mode validate`; return its output, or raise `EnvoyError` with it."""
    exe = binary or envoy_binary()
    if exe is None:
        raise EnvoyError("envoy is not on PATH")
    result = subprocess.run(
        [exe, "--mode", "validate", "-c", os.fspath(config_path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise EnvoyError(f"envoy rejected {config_path}:\n{output}")
    return output


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    Exceptions of the types in `ignore` count as "not yet"; any other propagates.
    Raises `TimeoutError` with the last value or error seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as error:
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message or 'condition'} not met in {timeout}s (last: {last!r})")
        time.sleep(interval)


@overload
async def wait_for_async(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...
@overload
async def wait_for_async(
    predicate: Callable[[], T],
    *,
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...
async def wait_for_async(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """`wait_for` for asyncio: `predicate` may be a plain or an async function."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            value: T = await result if inspect.isawaitable(result) else result
        except ignore as error:
            last = error
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message or 'condition'} not met in {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


class EnvoyProcess:
    """One `envoy` process, its log file and its admin API."""

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        *,
        name: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        concurrency: int = 1,
        log_level: str = "warn",
        component_log_level: str | None = None,
        drain_time_s: int = 1,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.name = name or self.config_path.stem
        directory = Path(workdir) if workdir is not None else self.config_path.parent
        self.log_path = directory / f"{self.name}.log"
        self.admin_address_path = directory / f"{self.name}.admin-address"
        self.concurrency = concurrency
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.drain_time_s = drain_time_s
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EnvoyProcess] | None = None
        self._admin: tuple[str, int] | None = None

    @classmethod
    def from_yaml(
        cls,
        bootstrap_yaml: str,
        workdir: str | os.PathLike[str],
        *,
        name: str = "envoy",
        concurrency: int = 1,
        log_level: str = "warn",
        component_log_level: str | None = None,
        drain_time_s: int = 1,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> EnvoyProcess:
        """Write `bootstrap_yaml` to `workdir/<name>.yaml` and describe an Envoy for it."""
        directory = Path(workdir)
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / f"{name}.yaml"
        config_path.write_text(bootstrap_yaml, encoding="utf-8")
        return cls(
            config_path,
            name=name,
            workdir=directory,
            concurrency=concurrency,
            log_level=log_level,
            component_log_level=component_log_level,
            drain_time_s=drain_time_s,
            extra_args=extra_args,
            binary=binary,
        )

    def __repr__(self) -> str:
        return f"<EnvoyProcess {self.name} pid={self.pid} admin={self._admin}>"

    # -- lifecycle ---------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line `start()` runs."""
        exe = self.binary or envoy_binary()
        if exe is None:
            raise EnvoyError("envoy is not on PATH")
        args = [
            exe,
            "-c",
            str(self.config_path),
            "--disable-hot-restart",
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--drain-time-s",
            str(self.drain_time_s),
            "--admin-address-path",
            str(self.admin_address_path),
        ]
        if self.component_log_level:
            args += ["--component-log-level", self.component_log_level]
        return args + list(self.extra_args)

    def start(self, *, timeout: float = 15.0) -> Self:
        """Start Envoy and wait until its admin API answers; raise `EnvoyError` otherwise.

        The admin API answers before the first xDS response arrives; use
        `wait_live()` to wait for Envoy to finish initializing.
        """
        if self._process is not None:
            raise EnvoyError(f"{self.name} was already started")
        command = self.command()
        self.admin_address_path.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill, self._process)
        logger.info("started envoy %s (pid %d)", self.name, self._process.pid)
        try:
            self._admin = wait_for(
                self._admin_answers, timeout=timeout, interval=0.05, message="admin API"
            )
        except BaseException as error:
            self.stop(grace=1.0)
            if isinstance(error, TimeoutError | EnvoyError):
                raise EnvoyError(
                    f"envoy {self.name} did not start: {error}\n--- log ---\n{self.logs()}"
                ) from None
            raise
        return self

    def stop(self, *, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; return the exit code (None if never run)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("envoy %s ignored SIGTERM for %.1fs; killing", self.name, grace)
                process.kill()
                process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
        logger.info(
            "stopped envoy %s (pid %d): exit %s", self.name, process.pid, process.returncode
        )
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would; return the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
        return process.returncode

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def logs(self) -> str:
        """Everything Envoy wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop_async()

    # -- admin API -----------------------------------------------------------------

    @property
    def admin_address(self) -> tuple[str, int]:
        """(host, port) the admin API is bound to, as Envoy reported it."""
        if self._admin is None:
            raise EnvoyError(f"envoy {self.name} is not started")
        return self._admin

    @property
    def admin_port(self) -> int:
        return self.admin_address[1]

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def admin_request(self, path: str, *, method: str = "GET", timeout: float = 5.0) -> Response:
        """One admin request; any HTTP status is returned, connection errors raise OSError."""
        return _request(self.admin_url + path, method=method, timeout=timeout)

    def admin_get(self, path: str, *, timeout: float = 5.0) -> str | dict[str, Any]:
        """GET an admin path: decoded JSON when Envoy sends JSON, else text."""
        response = self._ok(self.admin_request(path, timeout=timeout), path)
        if response.is_json:
            return response.json()
        return response.text

    def admin_json(self, path: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """GET an admin path that answers JSON."""
        return self._ok(self.admin_request(path, timeout=timeout), path).json()

    def admin_post(self, path: str, *, timeout: float = 5.0) -> str:
        """POST to an admin path (`/healthcheck/fail`, `/drain_listeners`, ...); the text."""
        return self._ok(self.admin_request(path, method="POST", timeout=timeout), path).text

    def server_info(self) -> dict[str, Any]:
        return self.admin_json("/server_info")

    def ready(self) -> bool:
        """Whether `/ready` says LIVE (initialized: the first xDS fetches are done)."""
        try:
            return self.admin_request("/ready", timeout=2.0).status == 200
        except OSError:
            return False

    def wait_live(self, *, timeout: float = 20.0) -> None:
        """Wait until Envoy has initialized (CDS and LDS fetched, or timed out)."""
        self.wait_for(self.ready, timeout=timeout, message=f"envoy {self.name} LIVE")

    def config_dump(
        self, *, resource: str | None = None, mask: str | None = None, include_eds: bool = False
    ) -> dict[str, Any]:
        """`/config_dump`, optionally one `resource` (e.g. `dynamic_active_clusters`)."""
        query: dict[str, str] = {}
        if resource:
            query["resource"] = resource
        if mask:
            query["mask"] = mask
        if include_eds:
            query["include_eds"] = ""
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self.admin_json("/config_dump" + suffix)

    def clusters(self) -> list[dict[str, Any]]:
        """`/clusters?format=json` cluster statuses (hosts with health and stats)."""
        statuses: list[dict[str, Any]] = self.admin_json("/clusters?format=json").get(
            "cluster_statuses", []
        )
        return statuses

    def listeners(self) -> list[dict[str, Any]]:
        """`/listeners?format=json` listener statuses (name and bound addresses)."""
        statuses: list[dict[str, Any]] = self.admin_json("/listeners?format=json").get(
            "listener_statuses", []
        )
        return statuses

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges from `/stats?format=json`, optionally `filter`ed (a regex)."""
        path = "/stats?format=json"
        if filter:
            path += "&" + urllib.parse.urlencode({"filter": filter})
        stats: dict[str, int] = {}
        for entry in self.admin_json(path).get("stats", []):
            if "name" in entry and isinstance(entry.get("value"), int):
                stats[entry["name"]] = entry["value"]
        return stats

    def wait_for(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str = "",
        ignore: tuple[type[BaseException], ...] = (),
    ) -> T:
        """`wait_for`, failing at once if Envoy exits, with its log in the error."""

        def alive_and() -> T:
            if not self.is_running:
                raise EnvoyError(f"envoy {self.name} exited with {self.returncode}")
            return predicate()

        try:
            return wait_for(
                alive_and, timeout=timeout, interval=interval, message=message, ignore=ignore
            )
        except (TimeoutError, EnvoyError) as error:
            raise type(error)(f"{error}\n--- envoy {self.name} log ---\n{self.logs()}") from None

    # -- asyncio twins ------------------------------------------------------------

    async def start_async(self, *, timeout: float = 15.0) -> Self:
        return await asyncio.to_thread(lambda: self.start(timeout=timeout))

    async def stop_async(self, *, grace: float = 5.0) -> int | None:
        return await asyncio.to_thread(lambda: self.stop(grace=grace))

    async def admin_get_async(self, path: str) -> str | dict[str, Any]:
        return await asyncio.to_thread(self.admin_get, path)

    async def config_dump_async(
        self, *, resource: str | None = None, include_eds: bool = False
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            lambda: self.config_dump(resource=resource, include_eds=include_eds)
        )

    async def clusters_async(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.clusters)

    async def listeners_async(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.listeners)

    async def stats_async(self, filter: str | None = None) -> dict[str, int]:
        return await asyncio.to_thread(self.stats, filter)

    async def wait_live_async(self, *, timeout: float = 20.0) -> None:
        await asyncio.to_thread(lambda: self.wait_live(timeout=timeout))

    @overload
    async def wait_for_async(
        self,
        predicate: Callable[[], Awaitable[T]],
        *,
        timeout: float = ...,
        interval: float = ...,
        message: str = ...,
        ignore: tuple[type[BaseException], ...] = ...,
    ) -> T: ...
    @overload
    async def wait_for_async(
        self,
        predicate: Callable[[], T],
        *,
        timeout: float = ...,
        interval: float = ...,
        message: str = ...,
        ignore: tuple[type[BaseException], ...] = ...,
    ) -> T: ...
    async def wait_for_async(
        self,
        predicate: Callable[[], Awaitable[T]] | Callable[[], T],
        *,
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str = "",
        ignore: tuple[type[BaseException], ...] = (),
    ) -> T:
        """`wait_for_async`, failing at once if Envoy exits, with its log in the error."""

        async def alive_and() -> T:
            if not self.is_running:
                raise EnvoyError(f"envoy {self.name} exited with {self.returncode}")
            result = predicate()
            value: T = await result if inspect.isawaitable(result) else result
            return value

        try:
            return await wait_for_async(
                alive_and, timeout=timeout, interval=interval, message=message, ignore=ignore
            )
        except (TimeoutError, EnvoyError) as error:
            raise type(error)(f"{error}\n--- envoy {self.name} log ---\n{self.logs()}") from None

    # -- internals ------------------------------------------------------------------

    def _admin_answers(self) -> tuple[str, int] | None:
        """The admin address once Envoy wrote it and `/server_info` answers, else None."""
        if not self.is_running:
            raise EnvoyError(f"exited with {self.returncode}")
        try:
            text = self.admin_address_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            return None
        self._admin = (host.strip("[]"), int(port))
        try:
            self.admin_request("/server_info", timeout=1.0)
        except OSError:
            return None
        return self._admin

    def _ok(self, response: Response, path: str) -> Response:
        if not 200 <= response.status < 300:
            raise EnvoyError(f"envoy {self.name} admin {path}: {response.status} {response.text}")
        return response


class Response:
    """An admin API response: status, content type and body."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def is_json(self) -> bool:
        return self.content_type.split(";")[0].strip() == "application/json"

    def json(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


def _request(url: str, *, method: str = "GET", timeout: float = 5.0) -> Response:
    request = urllib.request.Request(url, method=method)
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as reply:
            return Response(reply.status, reply.headers.get("content-type", ""), reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers.get("content-type", ""), error.read())


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Finalizer: an EnvoyProcess was dropped (or the interpreter exits) while running."""
    if process.poll() is None:
        process.kill()
        process.wait()
