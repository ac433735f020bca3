"""Manifest fuzzing end to end: hostile files into a live mesh's watched directory.

    python bench/fuzz_manifests.py [--budget 500] [--seed 6] [--batch 20] [--max-rss-mb 400]

Everything runs as it would for a user, on loopback: three sample apps
(`python -m xds_server.sample_app`: backend v1 and v2, echo), the control plane
(`xds-server serve --source file:DIR` with an admin port) and a real Envoy
sidecar (bootstrap from `xds-server bootstrap`), each its own process.  A load
loop sends requests through the sidecar to backend and echo the whole time
(bounded in count and time); a monitor polls `/readyz` and the control plane's
memory (`/proc/PID/status`).

Mutations from `tests/manifest_mutations.py` (the regression cases, then
`--budget` random ones from `--seed`) are written `--batch` at a time, with a
sentinel Service written last.  Per batch: the sentinel's cluster must reach
Envoy (the mesh still follows edits), each file expected to be rejected must
be listed in `/api/errors` (matched by its path), no NACK may appear; then the
files go, the good files are restored, and their errors must clear.  Any
mutation of a good file keeps that object's identity, so its last good state
must keep serving.  If the control plane exits, it is restarted and the batch
replayed one file at a time to find the culprit, then started once more with
the culprit present to see whether it crash-loops.  Violations of any of these
are listed with the suspect mutations and their content as Python literals.

Prints a table of figures, then (last line) one JSON object with all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from manifest_mutations import (  # noqa: E402 - after the path to tests/ is known
    Expect,
    GoodFile,
    ManifestMutator,
    Mutation,
    endpoint_slice,
    render,
    service,
)

from xds_server.envoy_process import EnvoyProcess, free_port  # noqa: E402
from xds_server.sources.limits import MAX_ERROR_CHARS  # noqa: E402

logger = logging.getLogger("bench.fuzz_manifests")

BACKEND_V1, BACKEND_V2, ECHO = "127.0.77.1", "127.0.77.2", "127.0.77.3"
NODE_ID = "client-0.default"
STALL_S = 30.0
"""A good edit (the sentinel) that takes longer than this to reach Envoy is a hang."""
SLOW_S = 5.0
"""A good edit that takes longer than this is delayed by the hostile files around it."""
REPORT_S = 10.0
"""How long, after the sentinel arrived, a rejected file may take to be listed."""
CLEAR_S = 15.0
"""How long an error may stay listed after its file was removed or fixed."""
MAX_CONSECUTIVE_STALLS = 3
LOG_LINE_SLACK = 400
"""A log line may exceed MAX_ERROR_CHARS by this much (time, level, logger, file path)."""


# -- results ---------------------------------------------------------------------------


@dataclass
class Violation:
    check: str
    batch: int
    detail: str
    suspects: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    index: int
    category: str
    expect: str
    reported: bool
    """Listed in `/api/errors` as an error (rejected) or a warning (see `warned`)."""
    names_field: bool
    errors: list[str]
    longest_error: int
    crashed: bool = False
    warned: bool = False
    """Listed with warnings only: not rejected, but not silent either."""


@dataclass
class Culprit:
    index: int
    category: str
    description: str
    literal: str
    file_name: str
    target: str | None
    failure: str
    component: str
    crash_loop: bool | None = None


@dataclass(frozen=True)
class Record:
    """What a run keeps of a mutation once written (not its bytes: they may be megabytes)."""

    category: str
    description: str
    expect: str
    literal: str

    @classmethod
    def of(cls, mutation: Mutation) -> Record:
        return cls(
            mutation.category, mutation.description[:200], mutation.expect.value,
            mutation.literal(300),
        )  # fmt: skip


@dataclass
class Run:
    """Everything one fuzz run saw: outcomes per mutation, violations, and samples."""

    mutations: dict[int, Record] = field(default_factory=dict)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    culprits: list[Culprit] = field(default_factory=list)
    sentinel_latencies: list[float] = field(default_factory=list)
    requests: int = 0
    failed_requests: int = 0
    readyz_checks: int = 0
    readyz_failures: int = 0
    rss_samples: int = 0
    max_rss_kb: int = 0
    max_hwm_kb: int = 0
    baseline_rss_kb: int = 0
    restarts: int = 0
    max_errors_bytes: int = 0
    max_errors_ms: float = 0.0
    longest_log_line: int = 0
    started: float = field(default_factory=time.monotonic)
    fuzz_seconds: float = 0.0
    batch: int = -1
    in_flight: list[int] = field(default_factory=list)
    """The mutations of the batch being written, checked or removed: the suspects."""
    restarting: bool = False

    counts: Counter[str] = field(default_factory=Counter)
    """Every violation per check; `violations` keeps the first few per check and batch."""

    in_flight_targets: list[int] = field(default_factory=list)
    """Those of `in_flight` that replace a good file."""

    def suspects_for_traffic(self) -> list[int]:
        """Who broke the good services' traffic: their own files first, if any was touched."""
        return self.in_flight_targets or self.in_flight

    def violate(self, check: str, detail: str, suspects: Iterable[int] = ()) -> None:
        self.counts[check] += 1
        if sum(v.check == check and v.batch == self.batch for v in self.violations) >= 5:
            return
        logger.warning("batch %d: %s: %s", self.batch, check, detail[:300])
        self.violations.append(Violation(check, self.batch, detail, sorted(set(suspects))))


# -- reading what the control plane says ---------------------------------------------------

_FIELD = re.compile(r"[A-Za-z_][\w$-]*(?:\.[\w$/.-]+|\[[^\]]*\])*")
_NOT_FIELDS = frozenset({"object", "warning", "error"})


def error_text(entry: Any) -> str:
    """One `/api/errors` source entry as text (entries are strings, or objects)."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return str(entry.get("message") or entry.get("error") or json.dumps(entry))
    return str(entry)


def names_field(entry: Any) -> bool:
    """Whether an error names the field at fault (`path:line: object: FIELD: message`)."""
    if isinstance(entry, dict):
        return bool(entry.get("field"))
    parts = str(entry).split(": ")
    return any(
        _FIELD.fullmatch(part) is not None and part not in _NOT_FIELDS for part in parts[1:-1]
    )


def source_entries(payload: Any) -> list[Any]:
    """The source errors of an `/api/errors` answer, whether listed or paginated."""
    source = payload.get("source", []) if isinstance(payload, dict) else []
    if isinstance(source, dict):
        source = source.get("items", [])
    return list(source) if isinstance(source, list) else []


def is_warning(entry: Any) -> bool:
    """A warning (the mesh does not read it, but probably should) rather than a rejection."""
    if isinstance(entry, dict):
        return entry.get("severity") == "warning"
    return ": warning: " in str(entry)


def entry_matches(entry: Any, key: str) -> bool:
    if isinstance(entry, dict):
        return key in str(entry.get("path", "")) or key in error_text(entry)
    return key in str(entry)


def match_key(mutation: Mutation) -> str:
    """What the path in an error about `mutation`'s file contains."""
    return f"/{mutation.target}" if mutation.target else f"/{mutation.token}"


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB, or (0, 0) once it is gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


_FRAME = re.compile(r'File "([^"]*xds_server[^"]*)", line (\d+), in (\S+)')


_TRACEBACK = re.compile(r"^(?:  \+ Exception Group )?Traceback \(most recent call last\):", re.M)
_EXCEPTION = re.compile(
    r"^[\s|+-]*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Group|Warning)\b.*)$", re.M
)
_FRAME = re.compile(r'File "([^"]*xds_server[^"]*)", line (\d+), in (\S+)')


def tracebacks(log_text: str) -> list[tuple[str, str]]:
    """Each top-level traceback in a log: (its innermost exception, innermost xds_server frame)."""
    found = []
    for block in _TRACEBACK.split(log_text)[1:]:
        exceptions = _EXCEPTION.findall(block)
        frames = _FRAME.findall(block)
        component = ""
        if frames:
            path, line, function = frames[-1]
            component = f"{path.split('xds_server/', 1)[-1]}:{line} in {function}"
        found.append(((exceptions[-1] if exceptions else "?")[:300], component))
    return found


def last_failure(log_text: str) -> tuple[str, str]:
    """The last exception in a log and where in xds_server it was raised (else the last line)."""
    found = tracebacks(log_text)
    if found:
        return found[-1]
    lines = [line for line in log_text.splitlines() if line.strip()]
    return (lines[-1][:300] if lines else "", "")


# -- the mesh under test --------------------------------------------------------------------


def good_files(port: int) -> list[GoodFile]:
    return [
        GoodFile("g-backend-service.yaml", (service("backend", port),)),
        GoodFile(
            "g-backend-slice.yaml",
            (endpoint_slice("backend-slice", "backend", [BACKEND_V1, BACKEND_V2], port),),
        ),
        GoodFile(
            "g-echo.yaml",
            (service("echo", port), endpoint_slice("echo-slice", "echo", [ECHO], port)),
        ),
    ]


def write_atomically(path: Path | bytes, data: bytes) -> None:
    """As editors and `kubectl`-like tools write: a hidden staging file, then rename."""
    target = os.fsencode(path)
    directory, _, name = target.rpartition(b"/")
    staging = directory + b"/." + name + b".tmp"
    with open(staging, "wb") as out:
        out.write(data)
    os.replace(staging, target)


class Mesh:
    """Sample apps, a control plane and one sidecar, each a process we started and stop."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.directory = workdir / "manifests"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "control-plane.log"
        self.app_port = free_port(BACKEND_V1)
        self.xds_port, self.admin_port, self.outbound_port = free_port(), free_port(), free_port()
        self.good = good_files(self.app_port)
        self.apps: list[subprocess.Popen[bytes]] = []
        self.plane: subprocess.Popen[bytes] | None = None
        self.envoy: EnvoyProcess | None = None
        self.http = httpx.AsyncClient(timeout=5.0, trust_env=False)

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def hosts(self) -> list[tuple[str, str]]:
        """(Host header, the service that must answer) for the load loop."""
        return [(f"backend:{self.app_port}", "backend"), (f"echo:{self.app_port}", "echo")]

    async def start(self) -> None:
        for name, version, address in (
            ("backend", "v1", BACKEND_V1), ("backend", "v2", BACKEND_V2), ("echo", "v1", ECHO),
        ):  # fmt: skip
            self.apps.append(self._spawn(
                [sys.executable, "-m", "xds_server.sample_app", "--name", name, "--version",
                 version, "--listen", f"{address}:{self.app_port}", "--log-level", "WARNING"],
                self.workdir / f"app-{name}-{version}.log",
            ))  # fmt: skip
        for good in self.good:
            write_atomically(self.directory / good.name, good.data())
        for address in (BACKEND_V1, BACKEND_V2, ECHO):
            await _wait_tcp(address, self.app_port)
        await self.start_plane()
        bootstrap = self.workdir / "client.yaml"
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "xds_server.cli", "bootstrap", "--node-id", NODE_ID,
             "--namespace", "default", "--xds-address", f"127.0.0.1:{self.xds_port}",
             "--admin-port", "0", "--outbound-port", str(self.outbound_port), "-o",
             str(bootstrap), "--admin", self.admin,
             "--admin-token-file", str(self.workdir / "admin-token"),
             "--cert-dir", str(self.workdir / "client-xds")],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.envoy = EnvoyProcess(bootstrap, name="client", workdir=self.workdir)
        await self.envoy.start_async(timeout=30)
        await self.envoy.wait_live_async(timeout=30)
        await self.wait_serving(30.0)

    async def wait_serving(self, within: float) -> None:
        """Before any fuzzing: every good service answers through the sidecar."""
        deadline = time.monotonic() + within
        last = ""
        while time.monotonic() < deadline:
            answered = 0
            for host, expected in self.hosts():
                try:
                    response = await self.http.get(
                        f"http://127.0.0.1:{self.outbound_port}/", headers={"Host": host}
                    )
                    ok = response.status_code == 200 and expected in response.text
                    last = f"{host}: HTTP {response.status_code} {response.text[:100]}"
                except httpx.HTTPError as error:
                    ok, last = False, f"{host}: {type(error).__name__}"
                answered += ok
            if answered == len(self.hosts()):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"the mesh under test serves no traffic before fuzzing ({last}); "
            f"see {self.log} and {self.workdir / 'client.log'}"
        )

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    async def start_plane(self, *, wait_ready: bool = True) -> None:
        self.plane = self._spawn(
            [sys.executable, "-m", "xds_server.cli", "serve", "--source", f"file:{self.directory}",
             "--xds-listen", f"127.0.0.1:{self.xds_port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}",
             "--ca-dir", str(self.workdir / "ca"),
             "--admin-token-file", str(self.workdir / "admin-token")],
            self.log,
        )  # fmt: skip
        if wait_ready:
            await self.wait_ready(60.0)

    async def wait_ready(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not self.plane_alive():
                return False
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get(f"{self.admin}/readyz")).status_code == 200:
                    return True
            await asyncio.sleep(0.1)
        return False

    def plane_alive(self) -> bool:
        return self.plane is not None and self.plane.poll() is None

    def stop_plane(self) -> None:
        if self.plane is not None:
            _stop(self.plane)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.http.aclose()
        if self.envoy is not None:
            with contextlib.suppress(Exception):
                self.envoy.stop(grace=3.0)
        self.stop_plane()
        for app in self.apps:
            _stop(app)

    async def errors(self) -> tuple[dict[str, Any] | None, int, float]:
        """`/api/errors`, every page merged (None if it did not answer 200); bytes; seconds."""
        began = time.monotonic()
        merged: dict[str, Any] = {}
        size, offset = 0, 0
        for _ in range(100):  # pages of 1,000: far more than a run can produce
            response = await self.http.get(
                f"{self.admin}/api/errors", params={"limit": 1000, "offset": offset}, timeout=15.0
            )
            size += len(response.content)
            if response.status_code != 200:
                return None, size, time.monotonic() - began
            payload: dict[str, Any] = response.json()
            for name, value in payload.items():
                if isinstance(value, list):
                    merged.setdefault(name, []).extend(value)
            following = payload.get("next_offset")
            if not isinstance(following, int) or following <= offset:
                break
            offset = following
        return merged, size, time.monotonic() - began

    async def cluster_names(self) -> set[str]:
        assert self.envoy is not None
        return {status["name"] for status in await self.envoy.clusters_async()}


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def _wait_tcp(host: str, port: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


# -- background loops -----------------------------------------------------------------


async def load_loop(mesh: Mesh, run: Run, stop: asyncio.Event, *, max_requests: int) -> None:
    """Requests through the sidecar to the good services, bounded in count (and by `stop`)."""
    hosts = mesh.hosts()
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while not stop.is_set() and run.requests < max_requests:
            host, expected = hosts[run.requests % len(hosts)]
            run.requests += 1
            problem = ""
            try:
                response = await client.get(
                    f"http://127.0.0.1:{mesh.outbound_port}/", headers={"Host": host}
                )
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code}: {response.text[:120]}"
                elif json.loads(response.text).get("service") != expected:
                    problem = f"answered by {response.text[:120]}"
            except (httpx.HTTPError, ValueError) as error:
                problem = f"{type(error).__name__}: {error}"
            if problem:
                run.failed_requests += 1
                run.violate("request", f"{host}: {problem}", run.suspects_for_traffic())
            await asyncio.sleep(0.02)


async def monitor_loop(mesh: Mesh, run: Run, stop: asyncio.Event, max_rss_kb: int) -> None:
    """`/readyz` and the control plane's memory, every 100 ms until `stop`."""
    over = False
    while not stop.is_set():
        plane = mesh.plane
        if plane is not None and plane.poll() is None:
            current, peak = rss_kb(plane.pid)
            run.rss_samples += 1
            run.max_rss_kb = max(run.max_rss_kb, current)
            run.max_hwm_kb = max(run.max_hwm_kb, peak)
            if max(current, peak) > max_rss_kb and not over:
                over = True
                run.violate(
                    "rss", f"control plane memory {max(current, peak) / 1024:.0f} MB > "
                    f"{max_rss_kb / 1024:.0f} MB", run.in_flight,
                )  # fmt: skip
            run.readyz_checks += 1
            try:
                status = (await mesh.http.get(f"{mesh.admin}/readyz", timeout=2.0)).status_code
            except httpx.HTTPError as error:
                status = -1
                detail = f"{type(error).__name__}"
            else:
                detail = f"HTTP {status}"
            if status != 200 and plane.poll() is None and not run.restarting:
                run.readyz_failures += 1
                run.violate("readyz", detail, run.in_flight)
        await asyncio.sleep(0.1)


# -- batches ----------------------------------------------------------------------------


def _path_of(mesh: Mesh, mutation: Mutation) -> bytes:
    if mutation.target:
        return os.fsencode(mesh.directory / mutation.target)
    return os.fsencode(mesh.directory) + b"/" + mutation.file_name


def write_mutation(mesh: Mesh, mutation: Mutation) -> None:
    path = _path_of(mesh, mutation)
    if mutation.special == "fifo":
        os.mkfifo(path)
    elif mutation.special == "symlink-loop":
        os.symlink(os.path.basename(path), path)
    elif mutation.special == "dangling-symlink":
        os.symlink(b"nowhere-" + os.path.basename(path), path)
    elif mutation.special == "directory":
        os.mkdir(path)
        write_atomically(path + b"/inner.yaml", mutation.data)
    else:
        write_atomically(path, mutation.data)


def remove_mutation(mesh: Mesh, mutation: Mutation) -> None:
    path = _path_of(mesh, mutation)
    if mutation.target:
        good = next(g for g in mesh.good if g.name == mutation.target)
        write_atomically(path, good.data())
        return
    if mutation.special == "fifo":  # wake a reader blocked opening it
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    if mutation.special == "directory":
        with contextlib.suppress(OSError):
            os.unlink(path + b"/inner.yaml")
        with contextlib.suppress(OSError):
            os.rmdir(path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _log_size(mesh: Mesh) -> int:
    return mesh.log.stat().st_size


def _log_since(mesh: Mesh, offset: int) -> str:
    with mesh.log.open("rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


def sentinel_cluster(batch: int) -> str:
    return f"|sentinel-{batch}.default.svc.cluster.local"


def write_sentinel(mesh: Mesh, batch: int) -> Path:
    path = mesh.directory / f"s{batch:05d}-sentinel.yaml"
    write_atomically(path, render([service(f"sentinel-{batch}", 9000 + batch % 1000)]))
    return path


async def wait_sentinel(mesh: Mesh, batch: int, *, present: bool, within: float) -> float | None:
    """Seconds until the sentinel's cluster is (or is no longer) at Envoy; None if never."""
    began = time.monotonic()
    wanted = sentinel_cluster(batch)
    while time.monotonic() - began < within:
        if not mesh.plane_alive():
            return None
        with contextlib.suppress(Exception):
            names = await mesh.cluster_names()
            if any(wanted in name for name in names) == present:
                return time.monotonic() - began
        await asyncio.sleep(0.05)
    return None


class Fuzzer:
    """Runs batches of mutations against a mesh and records what happened."""

    def __init__(self, mesh: Mesh, run: Run) -> None:
        self.mesh = mesh
        self.run = run
        self.stalls = 0
        self.log_offset = 0

    async def batch(self, number: int, mutations: Sequence[Mutation]) -> None:
        run, mesh = self.run, self.mesh
        run.batch = number
        run.in_flight = [m.index for m in mutations]
        run.in_flight_targets = [m.index for m in mutations if m.target]
        for mutation in mutations:
            run.mutations[mutation.index] = Record.of(mutation)
        for mutation in mutations:
            write_mutation(mesh, mutation)
        sentinel = write_sentinel(mesh, number)
        latency = await wait_sentinel(mesh, number, present=True, within=STALL_S)
        if not mesh.plane_alive():
            await self.crashed(number, mutations, sentinel)
            return
        if latency is None:
            self.stalls += 1
            run.violate("stall", f"a good edit did not reach Envoy in {STALL_S:.0f}s",
                        run.in_flight)  # fmt: skip
        else:
            self.stalls = 0
            run.sentinel_latencies.append(latency)
            if latency > SLOW_S:
                run.violate("delayed", f"a good edit took {latency:.1f}s to reach Envoy",
                            run.in_flight)  # fmt: skip
        arrived = time.monotonic()
        await self.collect(mutations)
        collected = time.monotonic()
        for mutation in mutations:
            remove_mutation(mesh, mutation)
        _unlink(sentinel)
        await self.wait_cleared(number, mutations)
        self.scan_log(mutations)
        logger.info(
            "batch %d: %d mutations, sentinel %.2fs, collect %.2fs, clear %.2fs", number,
            len(mutations), latency or -1, collected - arrived, time.monotonic() - collected,
        )  # fmt: skip
        run.in_flight, run.in_flight_targets = [], []

    async def collect(self, mutations: Sequence[Mutation]) -> None:
        """Wait (bounded) for every file expected to be rejected; record every outcome."""
        run, mesh = self.run, self.mesh
        expected = {match_key(m) for m in mutations if m.expect is Expect.REJECT}
        deadline = time.monotonic() + REPORT_S
        entries: list[Any] = []
        while True:
            try:
                payload, size, took = await mesh.errors()
            except httpx.HTTPError as error:
                payload, size, took = None, 0, 0.0
                run.violate("admin", f"/api/errors failed: {type(error).__name__}: {error}")
            run.max_errors_bytes = max(run.max_errors_bytes, size)
            run.max_errors_ms = max(run.max_errors_ms, took * 1000)
            if payload is None:
                run.violate("admin", "/api/errors did not answer 200", [m.index for m in mutations])
            else:
                entries = source_entries(payload)
                seen = {key for key in expected if any(entry_matches(e, key) for e in entries)}
                if seen == expected or time.monotonic() > deadline:
                    self.check_proxies(payload, mutations)
                    break
            if time.monotonic() > deadline or not mesh.plane_alive():
                break
            await asyncio.sleep(0.1)
        for mutation in mutations:
            key = match_key(mutation)
            mine = [entry for entry in entries if entry_matches(entry, key)]
            rejections = [entry for entry in mine if not is_warning(entry)]
            texts = [error_text(entry) for entry in mine]
            outcome = Outcome(
                mutation.index, mutation.category, mutation.expect.value, bool(rejections),
                any(names_field(entry) for entry in rejections), [t[:300] for t in texts[:3]],
                max((len(t) for t in texts), default=0), warned=bool(mine) and not rejections,
            )  # fmt: skip
            run.outcomes[mutation.index] = outcome
            if mutation.expect is Expect.REJECT and not mine:
                run.violate("unreported", f"{mutation.description}: not in /api/errors",
                            [mutation.index])  # fmt: skip
            if mutation.expect is Expect.ACCEPT and rejections:
                run.violate("false-rejection",
                            f"{mutation.description}: {error_text(rejections[0])[:300]}",
                            [mutation.index])  # fmt: skip
            if outcome.longest_error > MAX_ERROR_CHARS:
                run.violate("error-length", f"{mutation.description}: an error of "
                            f"{outcome.longest_error:,} characters", [mutation.index])  # fmt: skip

    def check_proxies(self, payload: dict[str, Any], mutations: Sequence[Mutation]) -> None:
        suspects = [m.index for m in mutations]
        for kind in ("nacks", "snapshots", "metadata", "translation"):
            found = payload.get(kind) or []
            if found:
                self.run.violate(kind, json.dumps(found)[:600], suspects)

    async def wait_cleared(self, number: int, mutations: Sequence[Mutation]) -> None:
        """After removal: the sentinel leaves Envoy and no error names the batch's files."""
        run, mesh = self.run, self.mesh
        gone = await wait_sentinel(mesh, number, present=False, within=STALL_S)
        if not mesh.plane_alive():
            await self.crashed(number, mutations, None)
            return
        if gone is None:
            run.violate("stall", "removing the batch did not reach Envoy",
                        [m.index for m in mutations])  # fmt: skip
        keys = {match_key(m): m.index for m in mutations}
        deadline = time.monotonic() + CLEAR_S
        while True:
            stale: list[int] = []
            with contextlib.suppress(httpx.HTTPError):
                payload, _, _ = await mesh.errors()
                entries = source_entries(payload) if payload else []
                stale = [
                    i for key, i in keys.items() if any(entry_matches(e, key) for e in entries)
                ]
                if not stale:
                    return
            if time.monotonic() > deadline or not mesh.plane_alive():
                run.violate("stale-error", "errors still listed after their files were removed "
                            "or fixed", stale)  # fmt: skip
                return
            await asyncio.sleep(0.1)

    def scan_log(self, mutations: Sequence[Mutation]) -> None:
        run = self.run
        with self.mesh.log.open("rb") as log:
            log.seek(self.log_offset)
            text = log.read().decode("utf-8", "replace")
            self.log_offset = log.tell()
        suspects = [m.index for m in mutations]
        for summary, component in tracebacks(text):
            run.violate("traceback", f"{summary} (at {component or '?'})", suspects)
        if "--- Logging error ---" in text:
            run.violate("logging-error", "the log handler failed to write a record", suspects)
        longest = max((len(line) for line in text.splitlines()), default=0)
        run.longest_log_line = max(run.longest_log_line, longest)
        if longest > MAX_ERROR_CHARS + LOG_LINE_SLACK:
            run.violate("log-line", f"a log line of {longest:,} characters", suspects)

    # -- crashes -----------------------------------------------------------------------

    async def crashed(
        self, number: int, mutations: Sequence[Mutation], sentinel: Path | None
    ) -> None:
        """The control plane exited: record it, find the culprit, see if it crash-loops."""
        run, mesh = self.run, self.mesh
        code = mesh.plane.returncode if mesh.plane else None
        failure, component = last_failure(_log_since(mesh, self.log_offset))
        run.violate("exit", f"control plane exited with {code}: {failure} ({component})",
                    [m.index for m in mutations])  # fmt: skip
        for mutation in mutations:
            remove_mutation(mesh, mutation)
            if mutation.index not in run.outcomes:
                run.outcomes[mutation.index] = Outcome(
                    mutation.index, mutation.category, mutation.expect.value, False, False, [], 0,
                    crashed=True,
                )  # fmt: skip
        if sentinel is not None:
            _unlink(sentinel)
        await self.restart()
        if len(mutations) == 1:
            await self.blame(mutations[0], failure, component)
            self.log_offset = _log_size(mesh)
            return
        for i, mutation in enumerate(mutations):  # replay one at a time
            replay = number * 1000 + 500 + i
            write_mutation(mesh, mutation)
            sentinel = write_sentinel(mesh, replay)
            await wait_sentinel(mesh, replay, present=True, within=STALL_S)
            crashed = not mesh.plane_alive()
            remove_mutation(mesh, mutation)
            _unlink(sentinel)
            if crashed:
                failure, component = last_failure(_log_since(mesh, self.log_offset))
                await self.restart()
                await self.blame(mutation, failure, component)
        self.log_offset = _log_size(mesh)

    async def blame(self, mutation: Mutation, failure: str, component: str) -> None:
        """Record the culprit, then start the control plane with it present (crash loop?)."""
        mesh = self.mesh
        culprit = Culprit(
            mutation.index, mutation.category, mutation.description, mutation.literal(2000),
            repr(mutation.target or mutation.file_name), mutation.target, failure, component,
        )  # fmt: skip
        self.run.culprits.append(culprit)
        mesh.stop_plane()
        write_mutation(mesh, mutation)
        self.run.restarting = True
        await mesh.start_plane(wait_ready=False)
        up = await mesh.wait_ready(20.0)
        await asyncio.sleep(1.0)
        culprit.crash_loop = not (up and mesh.plane_alive())
        remove_mutation(mesh, mutation)
        await self.restart()

    async def restart(self) -> None:
        run, mesh = self.run, self.mesh
        run.restarting = True
        mesh.stop_plane()
        run.restarts += 1
        await mesh.start_plane(wait_ready=False)
        if not await mesh.wait_ready(60.0):
            run.violate("restart", "the control plane did not become ready again")
        run.restarting = False


def batches(mutations: Iterable[Mutation], size: int) -> Iterator[list[Mutation]]:
    """Groups of `size`, each touching any good file at most once (its restore is per batch).

    Lazy: a mutation that must wait for the next group is held, the rest stream through.
    """
    held: list[Mutation] = []
    source = iter(mutations)
    while True:
        batch: list[Mutation] = []
        targets: set[str] = set()
        waiting, held = held, []
        for mutation in itertools.chain(waiting, source):
            if mutation.target is not None and mutation.target in targets:
                held.append(mutation)
                continue
            batch.append(mutation)
            if mutation.target:
                targets.add(mutation.target)
            if len(batch) == size:
                break
        if not batch:
            return
        yield batch


@dataclass
class Options:
    budget: int = 500
    seed: int = 6
    batch: int = 20
    max_rss_mb: int = 400
    workdir: Path | None = None
    regressions: bool = True
    extra: Sequence[Mutation] = ()
    """Mutations tried after the others (e.g. a new kind's own cases), indices unique."""


@contextlib.asynccontextmanager
async def running_mesh(workdir: Path) -> AsyncIterator[Mesh]:
    mesh = Mesh(workdir)
    try:
        await mesh.start()
        yield mesh
    finally:
        await mesh.close()


async def fuzz(options: Options) -> dict[str, Any]:
    """One fuzz run; returns its figures (see `figures`)."""
    with contextlib.ExitStack() as stack:
        workdir = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        async with running_mesh(workdir) as mesh:
            return await _fuzz(mesh, options)


async def _fuzz(mesh: Mesh, options: Options) -> dict[str, Any]:
    run = Run()
    assert mesh.plane is not None
    run.baseline_rss_kb = rss_kb(mesh.plane.pid)[0]
    mutator = ManifestMutator(options.seed, mesh.good)
    corpus = itertools.chain(
        mutator.corpus(options.budget) if options.regressions else mutator.random(options.budget),
        options.extra,
    )
    stop = asyncio.Event()
    max_requests = 100 * (options.budget + len(options.extra) + 100)
    fuzzer = Fuzzer(mesh, run)
    began = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(load_loop(mesh, run, stop, max_requests=max_requests))
        tasks.create_task(monitor_loop(mesh, run, stop, options.max_rss_mb * 1024))
        try:
            for number, group in enumerate(batches(corpus, options.batch)):
                await fuzzer.batch(number, group)
                if fuzzer.stalls >= MAX_CONSECUTIVE_STALLS:
                    run.violate("aborted", f"{fuzzer.stalls} batches in a row stalled")
                    break
            await asyncio.sleep(0.5)  # the load loop sees the final state too
        finally:
            stop.set()
    run.fuzz_seconds = time.monotonic() - began
    if not mesh.plane_alive():
        run.violate("exit", "the control plane is not running at the end")
    return figures(run, options)


def figures(run: Run, options: Options) -> dict[str, Any]:
    outcomes = list(run.outcomes.values())
    rejected = [o for o in outcomes if o.reported]
    warned = [o for o in outcomes if o.warned]
    crashed = [o for o in outcomes if o.crashed]
    per_category: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        per_category[o.category]["tried"] += 1
        verdict = (
            "crashed" if o.crashed else "rejected" if o.reported else
            "warned" if o.warned else "accepted"
        )  # fmt: skip
        per_category[o.category][verdict] += 1
        if o.reported and o.names_field:
            per_category[o.category]["names-field"] += 1
    for v in run.violations:
        for index in v.suspects if v.check in ("unreported", "false-rejection") else ():
            per_category[run.mutations[index].category][v.check] += 1
    by_check = run.counts
    latencies = sorted(run.sentinel_latencies)
    return {
        "benchmark": "fuzz_manifests",
        "seed": options.seed,
        "budget": options.budget,
        "tried": len(outcomes),
        "rejected": len(rejected),
        "warned": len(warned),
        "accepted": len(outcomes) - len(rejected) - len(warned) - len(crashed),
        "crashes": by_check["exit"],
        "in_crashed_batches": len(crashed),
        "culprits": [asdict(c) for c in run.culprits],
        "violations_by_check": dict(by_check),
        "violations": [asdict(v) for v in run.violations],
        "rejections_naming_a_field": (
            round(sum(o.names_field for o in rejected) / len(rejected), 3) if rejected else None
        ),
        "max_rss_mb": round(max(run.max_rss_kb, run.max_hwm_kb) / 1024, 1),
        "baseline_rss_mb": round(run.baseline_rss_kb / 1024, 1),
        "requests": run.requests,
        "failed_requests": run.failed_requests,
        "readyz_checks": run.readyz_checks,
        "readyz_failures": run.readyz_failures,
        "restarts": run.restarts,
        "sentinel_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "sentinel_max_s": round(latencies[-1], 3) if latencies else None,
        "max_errors_response_bytes": run.max_errors_bytes,
        "max_errors_response_ms": round(run.max_errors_ms, 1),
        "longest_error_chars": max((o.longest_error for o in outcomes), default=0),
        "longest_log_line_chars": run.longest_log_line,
        "seconds": round(run.fuzz_seconds, 1),
        "ms_per_mutation": round(1000 * run.fuzz_seconds / max(len(outcomes), 1), 1),
        "per_category": {name: dict(counts) for name, counts in sorted(per_category.items())},
        "mutations": {
            str(i): asdict(record)
            for i, record in run.mutations.items()
            if any(i in v.suspects for v in run.violations)
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"manifest fuzzing: seed {result['seed']}, budget {result['budget']}")
    for key in ("tried", "rejected", "warned", "accepted", "crashes", "rejections_naming_a_field",
                "max_rss_mb", "baseline_rss_mb", "requests", "failed_requests", "readyz_checks",
                "readyz_failures", "restarts", "sentinel_p50_s", "sentinel_max_s",
                "longest_error_chars", "longest_log_line_chars", "max_errors_response_bytes",
                "seconds", "ms_per_mutation"):  # fmt: skip
        print(f"  {key:28} {result[key]}")
    columns = ("tried", "rejected", "names-field", "warned", "accepted", "unreported",
               "false-rejection")  # fmt: skip
    print(f"  per category: {' / '.join(columns)}")
    for name, counts in result["per_category"].items():
        print(f"    {name:16}" + "".join(f"{counts.get(c, 0):6}" for c in columns))
    print(f"  violations: {result['violations_by_check'] or 'none'}")
    for culprit in result["culprits"]:
        print(f"  CULPRIT m{culprit['index']:05d} [{culprit['category']}] {culprit['description']}"
              f"\n    fails in {culprit['component'] or '?'}: {culprit['failure']}"
              f"\n    crash loop at start-up: {culprit['crash_loop']}"
              f"\n    file {culprit['file_name']}: {culprit['literal'][:600]}")  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--budget", type=int, default=500, help="random mutations (default 500)")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--batch", type=int, default=20, help="mutations written per batch")
    parser.add_argument("--max-rss-mb", type=int, default=400)
    parser.add_argument("--no-regressions", action="store_true", help="random mutations only")
    parser.add_argument("--workdir", type=Path, help="keep files and logs here")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = Options(
        budget=args.budget, seed=args.seed, batch=args.batch, max_rss_mb=args.max_rss_mb,
        workdir=args.workdir, regressions=not args.no_regressions,
    )  # fmt: skip
    result = asyncio.run(fuzz(options))
    print_table(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
