"""The loop from source changes to published snapshots.

Sources `submit` ChangeSets; the debouncer merges bursts; the builder applies
each batch and publishes snapshots.  It is also the ADS server's NodeObserver:
a proxy that connects gets a snapshot built for its node metadata.
"""

from __future__ import annotations

import asyncio
import logging

from envoy.config.core.v3 import base_pb2

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet
from xds_server.node_metadata import proxy_from_node
from xds_server.pipeline.builder import SnapshotBuilder
from xds_server.pipeline.debounce import Debouncer
from xds_server.settings import DebounceSettings

logger = logging.getLogger(__name__)

__all__ = ["MeshPipeline", "SnapshotBuilder"]


class MeshPipeline:
    def __init__(self, cache: SnapshotCache, debounce: DebounceSettings | None = None) -> None:
        self.builder = SnapshotBuilder(cache)
        self._debouncer = Debouncer(debounce or DebounceSettings())
        self.node_errors: dict[str, str] = {}
        self.pushes = 0

    @property
    def ready(self) -> bool:
        return self.builder.synced

    def submit(self, changes: ChangeSet) -> None:
        self._debouncer.submit(changes)

    def initial_sync(self, changes: ChangeSet) -> None:
        """Apply a source's first full load at once and open the gate to proxies."""
        self.builder.apply(changes)
        self.builder.mark_synced()

    def node_connected(self, node: base_pb2.Node) -> None:
        try:
            proxy = proxy_from_node(node)
        except ValueError as error:
            self.node_errors[node.id] = str(error)
            logger.error("node %s has invalid metadata: %s", node.id, error)
            return
        self.node_errors.pop(node.id, None)
        self.builder.add_proxy(proxy)

    def node_disconnected(self, node_id: str) -> None:
        self.builder.remove_proxy(node_id)

    async def run(self) -> None:
        """Apply debounced batches forever (until cancelled)."""
        while True:
            batch = await self._debouncer.next_batch()
            started = asyncio.get_running_loop().time()
            self.builder.apply(batch)
            self.pushes += 1
            logger.info(
                "applied %d change(s) in %.1f ms (generation %d)",
                len(batch),
                (asyncio.get_running_loop().time() - started) * 1000,
                self.builder.generation,
            )
