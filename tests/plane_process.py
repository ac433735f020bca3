"""Real processes for lifecycle tests: `xds-server serve`, sample apps, a bounded load loop.

A control plane started here is the command a user runs (`python -m
xds_server.cli serve`), so it can be killed with SIGKILL, terminated with
SIGTERM and restarted on the same ports.  Everything is on loopback; every
wait is bounded; `stop()` of each helper is idempotent and used in teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEST_CA_DIR = Path(tempfile.gettempdir()) / f"xds-server-test-ca-{os.getuid()}"
"""Where test control planes keep their root CA (`e2e_mesh` signs sidecars with it)."""

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, decoded JSON body) of a GET; OSError when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"null")


def poll(predicate: Any, *, within: float, interval: float = 0.01, message: str = "") -> Any:
    """Call `predicate()` until truthy (OSError counts as not yet); its value, or AssertionError."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = predicate()
        except OSError as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{message or 'condition'} not met in {within}s: {last!r}")
        time.sleep(interval)


def serve_command(directory: Path, xds_port: int, admin_port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "xds_server.cli", "serve",
        "--source", f"file:{directory}",
        "--xds-listen", f"127.0.0.1:{xds_port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
        "--ca-dir", str(TEST_CA_DIR),  # the test run's CA: what test sidecars are signed by
        *extra,
    ]  # fmt: skip


@dataclass
class ControlPlaneProcess:
    """`xds-server serve --source file:DIR` as a process, on fixed ports so it can restart."""

    directory: Path
    xds_port: int
    admin_port: int
    log: Path
    grace_seconds: float = 2.0
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    """More `serve` flags (they win over the defaults here, e.g. `--ca-dir`)."""

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def start(self) -> ControlPlaneProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        command = serve_command(
            self.directory,
            self.xds_port,
            self.admin_port,
            "--grace-seconds",
            str(self.grace_seconds),
            "--admin-token-file",
            str(self.token_file),
            *self.extra,
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def token_file(self) -> Path:
        """The admin token this control plane made (what `xds-server bootstrap` presents)."""
        return self.log.with_name(f"{self.log.stem}-admin-token")

    def ready(self) -> bool:
        self._require_running()
        status, _ = get_json(f"{self.admin_url}/readyz", timeout=1.0)
        return status == 200

    def wait_ready(self, within: float = 20.0) -> float:
        """Block until `/readyz` answers 200; return that moment (`time.monotonic()`)."""
        poll(self.ready, within=within, message=f"control plane on {self.xds_address} ready")
        return time.monotonic()

    def proxies(self) -> list[dict[str, Any]]:
        status, body = get_json(f"{self.admin_url}/api/proxies")
        assert status == 200, body
        found: list[dict[str, Any]] = body
        return found

    def serves(self, node_id: str) -> bool:
        """The node has an ADS stream on this process (`/api/proxies` lists it)."""
        return any(proxy.get("node_id") == node_id for proxy in self.proxies())

    def errors(self) -> dict[str, Any]:
        status, body = get_json(f"{self.admin_url}/api/errors")
        assert status == 200, body
        errors: dict[str, Any] = body
        return errors

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, within: float = 30.0) -> tuple[int, float]:
        """SIGTERM and wait; (exit code, seconds from the signal to the exit)."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=within)
        return code, time.monotonic() - began

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.grace_seconds + 5)
        except subprocess.TimeoutExpired:
            self.kill()

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _require_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise AssertionError(f"control plane exited ({code}):\n{self.logs()[-4000:]}")


@contextlib.contextmanager
def sample_apps(apps: dict[str, tuple[str, str, str]], log_dir: Path) -> Iterator[None]:
    """`python -m xds_server.sample_app` per `{label: (service, version, "IP:PORT")}`, all
    listening before the block runs, all stopped after it."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for label, (service, version, address) in apps.items():
            command = [
                sys.executable, "-m", "xds_server.sample_app",
                "--name", service, "--version", version,
                "--listen", address, "--log-level", "WARNING",
            ]  # fmt: skip
            with (log_dir / f"app-{label}.log").open("wb") as out:
                processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=out))
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()  # "listening on http://..." once bound
            assert line.startswith(b"listening on"), line
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class Load:
    """Steady HTTP load through a sidecar: `threads` keep-alive clients, `rate` requests/s
    in all, until `stop()`, `max_requests` or `max_seconds`, whichever comes first.

    A request fails if it raises or answers anything but 200 from `expect` (a JSON
    `service` field); each failure is kept with its time and reason.
    """

    def __init__(
        self,
        port: int,
        host_header: str,
        expect: str,
        *,
        rate: float = 250.0,
        threads: int = 6,
        max_requests: int = 60_000,
        max_seconds: float = 120.0,
    ) -> None:
        self.port, self.host_header, self.expect = port, host_header, expect
        self.interval = threads / rate
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(threads)]
        self._began = 0.0

    def __enter__(self) -> Load:
        self._began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if not self.result.seconds:
            self.result.seconds = time.monotonic() - self._began
        return self.result

    def _count(self) -> bool:
        with self._lock:
            if self.result.sent >= self.max_requests:
                return False
            self.result.sent += 1
            return True

    def _worker(self) -> None:
        connection: http.client.HTTPConnection | None = None
        deadline = self._began + self.max_seconds
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < deadline and self._count():
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/", headers={"Host": self.host_header})
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or json.loads(body).get("service") != self.expect:
                    raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            except Exception as error:
                with self._lock:
                    self.result.failures.append(f"{time.monotonic() - self._began:.3f}s {error!r}")
                if connection is not None:
                    connection.close()
                connection = None
            else:
                with self._lock:
                    self.result.ok += 1
            next_at += self.interval
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()
        if connection is not None:
            connection.close()
