"""Wiring: source -> pipeline -> cache -> ADS server, plus the admin app.

The only module that imports everything.  `ControlPlane.run()` is structured
concurrency: one TaskGroup owns the pipeline loop, the source watcher and the
admin HTTP server; cancelling it stops all three and the gRPC server is given
`grace_seconds` to finish in-flight streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xds_server.admin import ProxyView, create_app
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.model import ChangeSet
from xds_server.pipeline import MeshPipeline
from xds_server.server import AggregatedDiscoveryServer, bind_grpc_server
from xds_server.settings import SOURCE_KUBERNETES, Settings, split_host_port
from xds_server.sources.file import FileSource

logger = logging.getLogger(__name__)


class MeshSource(Protocol):
    """Where the mesh comes from: the file source or the Kubernetes source.

    `run` emits the whole mesh first, then sets `ready`, then emits every change
    until cancelled; `errors` are the problems in its input right now.
    """

    @property
    def errors(self) -> Sequence[object]: ...

    async def run(
        self, emit: Callable[[ChangeSet], None], ready: asyncio.Event | None = None
    ) -> None: ...


def create_source(settings: Settings) -> MeshSource:
    """`--source kubernetes` watches the API server; `--source file:DIR` a directory."""
    if settings.source_kind == SOURCE_KUBERNETES:
        from xds_server.sources.kubernetes import KubernetesSource  # the client loads slowly

        return KubernetesSource(settings.kubernetes)
    return FileSource(settings.source_directory)


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = SnapshotCache()
        self.pipeline = MeshPipeline(self.cache, settings.debounce)
        self.ads = AggregatedDiscoveryServer(self.cache, observer=self.pipeline)
        self.source: MeshSource = create_source(settings)
        self.xds_serving = False
        self.listening = asyncio.Event()
        """Both ports are bound (`xds_port`, `admin_port` known); the mesh may not be synced."""
        self.started = asyncio.Event()
        """Listening, and the source's initial sync has been applied."""
        self.xds_port = 0
        self.admin_port = 0

    # -- AdminView ---------------------------------------------------------
    def is_ready(self) -> bool:
        return self.xds_serving and self.pipeline.ready

    def readiness_detail(self) -> dict[str, Any]:
        return {
            "xds_serving": self.xds_serving,
            "sources_synced": self.pipeline.ready,
            "source": self.settings.source,
        }

    def proxies(self) -> list[ProxyView]:
        builder = self.pipeline.builder
        known = builder.proxies
        return [
            ProxyView(
                stream=stream,
                proxy=known.get(stream.node_id),
                snapshot_error=builder.proxy_error(stream.node_id),
                metadata_error=self.pipeline.node_errors.get(stream.node_id),
            )
            for stream in self.ads.streams()
        ]

    def snapshot(self, node_id: str) -> Snapshot | None:
        return self.cache.get_snapshot(node_id)

    def source_errors(self) -> list[str]:
        return [str(error) for error in self.source.errors]

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.ads.metrics.registry), CONTENT_TYPE_LATEST

    # -- lifecycle ---------------------------------------------------------
    def _on_source_changes(self, changes: ChangeSet) -> None:
        if not self.pipeline.ready:
            self.pipeline.initial_sync(changes)
        else:
            self.pipeline.submit(changes)

    async def run(self) -> None:
        xds_host, xds_port = split_host_port(self.settings.xds_listen)
        admin_host, admin_port = split_host_port(self.settings.admin_listen)
        grpc_server, self.xds_port = bind_grpc_server(self.ads, f"{xds_host}:{xds_port}")
        await grpc_server.start()
        self.xds_serving = True
        logger.info("xDS (ADS) listening on %s:%d", xds_host, self.xds_port)
        config = uvicorn.Config(
            create_app(self),
            host=admin_host,
            port=admin_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        admin = _QuietUvicorn(config)
        source_ready = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.pipeline.run(), name="pipeline")
                tasks.create_task(
                    self.source.run(self._on_source_changes, source_ready), name="source"
                )
                tasks.create_task(admin.serve(), name="admin")
                while not admin.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                    await asyncio.sleep(0.01)
                self.admin_port = admin.servers[0].sockets[0].getsockname()[1]
                logger.info("admin listening on http://%s:%d", admin_host, self.admin_port)
                self.listening.set()
                await source_ready.wait()  # /readyz says false until then
                self.started.set()
        finally:
            self.xds_serving = False
            admin.should_exit = True
            self.ads.close()
            await grpc_server.stop(self.settings.grace_seconds)
