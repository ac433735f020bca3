"""The Kubernetes source: the mesh as the API server holds it, listed then watched.

`KubernetesSource` runs one `ResourceWatch` (list, then watch, for ever; see
`k8s_watch`) per kind in `MESH_KINDS` and per namespace, and reports what
changed as `ChangeSet`s through `emit`, like the file source, converting with
the same `convert`.  Its first emit is the whole mesh: it holds every change
back until each watch has applied its first full list, emits them as one
ChangeSet and sets `ready` (the pipeline's `initial_sync` opens the gate to
proxies on it), so no proxy is ever served a half-listed mesh.  After that
every change is emitted as it arrives; an API server outage keeps the last
known mesh in force and readiness stays true, and when the API is back the
watches notice within a second and catch up (relisting at once if its
history moved on; see `k8s_retry`).

Why threads.  The official `kubernetes` client, which the product already
depends on, is synchronous (urllib3).  Each watch runs in a thread of its
own, blocked on its HTTP stream, and hands what it learns to the event loop
with `loop.call_soon_threadsafe`, so all the source's state that the loop sees
is touched by the loop only, and each watch's own state by its thread only.
The alternatives were `kubernetes_asyncio` (a second, separately versioned
client to depend on, for a handful of long-lived requests that threads carry
well) or hand-written aiohttp calls (re-implementing kubeconfig, exec
plugins, in-cluster token refresh).  A thread blocked in a read is stopped by
shutting its socket down (`ResourceWatch.stop`), and every read has a
client-side timeout, so shutdown is prompt and every thread is joined.

Namespaces.  With no `namespaces` there is one cluster-wide watch per kind,
which needs a ClusterRole.  With `namespaces` there is one watch per kind per
namespace, so a namespaced Role (get, list, watch) in each of them is enough,
and objects in other namespaces never cross the wire: least privilege, and
less traffic, for the price of a few more connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kubernetes import client, config

from xds_server.model import ChangeSet
from xds_server.settings import KubernetesSettings
from xds_server.sources.k8s_kinds import MESH_KINDS, WatchedKind
from xds_server.sources.k8s_retry import Backoff
from xds_server.sources.k8s_state import KubernetesSourceError
from xds_server.sources.k8s_watch import ResourceWatch, WatchReport
from xds_server.sources.metrics import SourceMetrics

__all__ = ["KubernetesSource", "KubernetesSourceError", "load_configuration"]

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
"""How long shutdown waits for the watch threads.  They stop in milliseconds, unless
one is waiting for the headers of a list, which only its request timeout ends; such
a (daemon) thread is left behind with a warning rather than holding up shutdown."""
POOL_HEADROOM = 4
"""Connections beyond one per watch, for the lists that run beside them."""


def load_configuration(kubeconfig: Path | None = None) -> client.Configuration:
    """The client configuration: `kubeconfig` if given, else in-cluster, else the default.

    Raises `kubernetes.config.ConfigException` (or OSError) with the reason.
    """
    configuration = client.Configuration()
    if kubeconfig is not None:
        if not kubeconfig.is_file():
            raise FileNotFoundError(f"kubeconfig {kubeconfig}: no such file")
        try:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig),
                client_configuration=configuration,
                persist_config=False,
            )
        except config.ConfigException as error:
            raise config.ConfigException(f"kubeconfig {kubeconfig}: {error}") from error
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, persist_config=False
        )
    return configuration


KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 15, 5, 3
UNACKNOWLEDGED_MAX_S = 30
"""How long sent data may stay unacknowledged before the kernel gives up on the connection."""


def _keepalive_options() -> list[tuple[int, int, int]]:
    """Socket options so a vanished API server is noticed in about 30 s, on any request.

    A watch is mostly silent, and the only client-side bound on a silent read
    is its read timeout: the watch's `timeoutSeconds` plus a margin, 5-10
    minutes.  TCP keepalive (a probe after 15 s idle, every 5 s, 3 of them)
    ends a connection whose peer vanished without a reset (a crashed node, a
    partition) in about 30 s.  Keepalive does not run while data we sent is
    unacknowledged, which is the state of a request written to a dead pooled
    connection, whose headers would otherwise be awaited for the same read
    timeout; `TCP_USER_TIMEOUT` (Linux) bounds that to 30 s too.  Each probe
    is one empty segment per idle connection every 15 s.  Keeps urllib3's
    default of no Nagle; options the platform lacks are left out.
    """
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", UNACKNOWLEDGED_MAX_S * 1000),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class KubernetesSource:
    """Lists and watches the mesh's kinds in the API server; emits what changed."""

    def __init__(
        self,
        settings: KubernetesSettings,
        *,
        kinds: Sequence[WatchedKind] = MESH_KINDS,
        configuration: client.Configuration | None = None,
        rng: random.Random | None = None,
        metrics: SourceMetrics | None = None,
    ) -> None:
        """`configuration` overrides `settings.kubeconfig` (tests point it at a fake API)."""
        self.metrics = metrics
        """Counts watch events and restarts (read when `run` starts the watches)."""
        self._settings = settings
        self._kinds = tuple(kinds)
        namespaces = tuple(dict.fromkeys(settings.namespaces))  # each once, in order
        self._namespaces: tuple[str | None, ...] = namespaces or (None,)
        self._configuration = configuration
        self._rng = rng or random.Random()
        self._errors: dict[str, tuple[KubernetesSourceError, ...]] = {}
        self._config_error: KubernetesSourceError | None = None
        self._synced: set[str] = set()
        self._pending = ChangeSet()
        self._initial_sync_done = False
        self._watches: list[ResourceWatch] = []

    @property
    def watches(self) -> list[str]:
        """The names of the running watches (`v1 services in all namespaces`, ...)."""
        return [watch.name for watch in self._watches]

    @property
    def synced(self) -> bool:
        """Every watch has applied a full list, and the mesh was emitted."""
        return self._initial_sync_done

    @property
    def errors(self) -> list[KubernetesSourceError]:
        """The problems now: objects that fail conversion, watches that are failing."""
        found = [error for errors in self._errors.values() for error in errors]
        return [self._config_error, *found] if self._config_error else found

    async def run(
        self, emit: Callable[[ChangeSet], None], ready: asyncio.Event | None = None
    ) -> None:
        """Watch until cancelled: emit the full mesh once (then set `ready`), then every change."""
        configuration = self._configuration or await self._load_configuration()
        configuration.connection_pool_maxsize = max(
            configuration.connection_pool_maxsize or 0,
            len(self._kinds) * len(self._namespaces) + POOL_HEADROOM,
        )
        if getattr(configuration, "socket_options", None) is None:
            configuration.socket_options = _keepalive_options()
        api_client = client.ApiClient(configuration)
        loop = asyncio.get_running_loop()
        stopping = threading.Event()

        def post(report: WatchReport) -> None:  # called from watch threads
            if stopping.is_set():
                return
            try:
                loop.call_soon_threadsafe(self._receive, report, emit, ready)
            except RuntimeError:  # the loop is closed: we are shutting down
                stopping.set()

        self._watches = [
            ResourceWatch(
                kind,
                namespace,
                kind.lists(api_client),
                self._settings,
                post,
                rng=random.Random(self._rng.random()),
                metrics=self.metrics,
            )
            for kind in self._kinds
            for namespace in self._namespaces
        ]
        threads = [
            threading.Thread(target=watch.run, name=f"watch {watch.name}", daemon=True)
            for watch in self._watches
        ]
        logger.info("watching %s", ", ".join(self.watches))
        try:
            for thread in threads:
                thread.start()
            await asyncio.Future()  # until cancelled
        finally:
            stopping.set()
            for watch in self._watches:
                watch.stop()
            await asyncio.to_thread(_join, threads)
            api_client.close()  # type: ignore[no-untyped-call]

    async def _load_configuration(self) -> client.Configuration:
        """Load the client configuration, retrying (with backoff) until it works."""
        backoff = Backoff(self._settings.backoff_initial, self._settings.backoff_max, self._rng)
        while True:
            try:
                configuration = await asyncio.to_thread(
                    load_configuration, self._settings.kubeconfig
                )
            except Exception as error:
                delay = backoff.next()
                self._config_error = KubernetesSourceError(
                    "kubernetes", None, None, f"cannot load the client configuration: {error}"
                )
                logger.error("%s; retrying in %.1fs", self._config_error, delay)
                await asyncio.sleep(delay)
                continue
            self._config_error = None
            return configuration

    def _receive(
        self,
        report: WatchReport,
        emit: Callable[[ChangeSet], None],
        ready: asyncio.Event | None,
    ) -> None:
        """In the event loop: record a watch's report and emit what changed."""
        if report.errors is not None:
            self._errors[report.watch] = report.errors
        if self.metrics is not None and report.changes:
            self.metrics.emitted("kubernetes", report.changes)
        if self._initial_sync_done:
            if report.changes:
                self._emit(emit, report.changes)
            return
        self._pending.merge(report.changes)
        if report.synced:
            self._synced.add(report.watch)
        if len(self._synced) < len(self._watches):
            return
        self._initial_sync_done = True
        changes, self._pending = self._pending, ChangeSet()
        logger.info("initial sync: %d objects from %d watches", len(changes), len(self._synced))
        self._emit(emit, changes)
        if ready is not None:
            ready.set()

    @staticmethod
    def _emit(emit: Callable[[ChangeSet], None], changes: ChangeSet) -> None:
        try:
            emit(changes)
        except Exception:  # a consumer bug must not stop the source, nor go unnoticed
            logger.exception("applying %d changes failed", len(changes))


def _join(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + STOP_GRACE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("%s did not stop within %.0fs", thread.name, STOP_GRACE_S)
