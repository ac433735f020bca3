"""Spawn a real Envoy and time it until every cluster and endpoint is live.

`EnvoyProcess` (from the package) owns the command line and the file layout;
this module spawns that command itself, because a start-up benchmark needs
the spawn instant and a finer poll than `EnvoyProcess.start()` uses.

How "loaded" is observed without disturbing what is measured: Envoy answers
admin requests on its main thread, the same thread that applies xDS updates,
and a regex-filtered `/stats` request walks every stat of 1,000 clusters
(about 50 ms of that thread).  So the poll loop asks only `/ready` (well under
a millisecond) every `interval`; `/ready` turns LIVE once the initial CDS,
EDS, LDS and RDS fetches are applied.  Each LIVE answer is then checked with
one full `/stats` read (outbound clusters present, none warming, every
endpoint in `membership_total`, listeners active), and the figure reported is
the instant that check was sent: LIVE on its own would also be reached when
an initial fetch times out.
"""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass

from xds_server.envoy_process import EnvoyError, EnvoyProcess

logger = logging.getLogger(__name__)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_STATS_FILTER = (
    r"^cluster_manager\.(active|warming)_clusters$"
    r"|^listener_manager\.total_listeners_(active|warming)$"
    r"|\.membership_total$"
)
_STAT_LINE = re.compile(r"^(?P<name>\S+): (?P<value>\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class Expectation:
    """What "everything is live" means for one configuration."""

    cluster_prefix: str
    clusters: int
    endpoints: int
    listeners: int


@dataclass(frozen=True)
class LoadedState:
    active_clusters: int
    warming_clusters: int
    clusters: int
    endpoints: int
    listeners_active: int
    listeners_warming: int

    def satisfies(self, expect: Expectation) -> bool:
        return (
            self.warming_clusters == 0
            and self.clusters == expect.clusters
            and self.endpoints == expect.endpoints
            and self.listeners_warming == 0
            and self.listeners_active >= expect.listeners
        )


@dataclass(frozen=True)
class StartupTiming:
    """Seconds from spawn to: admin API answering, `/ready` LIVE, everything verified."""

    admin_s: float
    live_s: float
    loaded_s: float
    state: LoadedState
    polls: int


class SpawnedEnvoy:
    """One Envoy process started from `envoy.command()`; `stop()` ends it by PID."""

    def __init__(self, envoy: EnvoyProcess) -> None:
        self.envoy = envoy
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self.spawned_wall_clock = 0.0
        self._admin_url = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def spawn(self) -> None:
        command = self.envoy.command()
        self.envoy.admin_address_path.unlink(missing_ok=True)
        with self.envoy.log_path.open("wb") as log:
            self._spawned_at = time.monotonic()
            self.spawned_wall_clock = time.time()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # A safety net should the owner never reach its `finally`: kill at collection or exit.
        weakref.finalize(self, _kill, self._process)

    def stop(self, grace: float = 5.0) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def wait_loaded(
        self, expect: Expectation, *, timeout: float, interval: float = 0.02
    ) -> StartupTiming:
        """Poll until `expect` holds; raise EnvoyError on exit or timeout (with the log)."""
        deadline = self._spawned_at + timeout
        polls = 0
        admin_s = live_s = 0.0
        while not self._admin_url:
            self._check(deadline, "the admin address")
            polls += 1
            self._admin_url = self._read_admin_url()
            if not self._admin_url:
                time.sleep(interval)
        while True:
            self._check(deadline, "LIVE")
            polls += 1
            status = self._status("/ready")
            answered = time.monotonic() - self._spawned_at
            if status and not admin_s:
                admin_s = answered
            if status == 200:
                if not live_s:
                    live_s = answered
                checked = time.monotonic()
                state = self.read_state(expect.cluster_prefix)
                if state.satisfies(expect):
                    return StartupTiming(
                        admin_s=admin_s,
                        live_s=live_s,
                        loaded_s=checked - self._spawned_at,
                        state=state,
                        polls=polls,
                    )
                logger.info("LIVE but not loaded yet: %s", state)
            time.sleep(interval)

    def read_state(self, cluster_prefix: str) -> LoadedState:
        query = urllib.parse.urlencode({"filter": _STATS_FILTER})
        text = self._get(f"/stats?{query}")
        values: dict[str, int] = {m["name"]: int(m["value"]) for m in _STAT_LINE.finditer(text)}
        prefix = f"cluster.{cluster_prefix}"
        members = [
            value
            for name, value in values.items()
            if name.startswith(prefix) and name.endswith(".membership_total")
        ]
        return LoadedState(
            active_clusters=values.get("cluster_manager.active_clusters", 0),
            warming_clusters=values.get("cluster_manager.warming_clusters", 0),
            clusters=len(members),
            endpoints=sum(members),
            listeners_active=values.get("listener_manager.total_listeners_active", 0),
            listeners_warming=values.get("listener_manager.total_listeners_warming", 0),
        )

    # -- internals ----------------------------------------------------------------

    def _check(self, deadline: float, what: str) -> None:
        process = self._process
        if process is None:
            raise EnvoyError("envoy was not spawned")
        if process.poll() is not None:
            raise EnvoyError(f"envoy exited with {process.returncode}\n{self.envoy.logs()}")
        if time.monotonic() > deadline:
            raise EnvoyError(f"envoy: no {what} before the deadline\n{self.envoy.logs()}")

    def _read_admin_url(self) -> str:
        try:
            text = self.envoy.admin_address_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            return ""
        return f"http://{host}:{port}"

    def _status(self, path: str) -> int:
        """The HTTP status of an admin GET, or 0 while the admin API does not answer."""
        try:
            with _NO_PROXY.open(self._admin_url + path, timeout=5.0) as reply:
                reply.read()
                return int(reply.status)
        except urllib.error.HTTPError as error:
            with error:
                return int(error.code)
        except OSError:
            return 0

    def _get(self, path: str) -> str:
        with _NO_PROXY.open(self._admin_url + path, timeout=30.0) as reply:
            body: bytes = reply.read()
            return body.decode("utf-8", errors="replace")


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
