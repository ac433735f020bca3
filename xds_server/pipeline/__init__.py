"""The loop from source changes to published snapshots.

Sources `submit` ChangeSets; the debouncer merges bursts; the builder applies
each batch and publishes snapshots.  It is also the ADS server's NodeObserver:
a proxy that connects gets a snapshot built for its node metadata.

Nothing a batch does may end the loop: the builder isolates a translation
failure to the object that caused it, and anything else a batch raises is
logged, its changes are applied one by one (those that still raise are listed
in `translation_errors` until their next change) and the loop goes on.
Only cancellation stops `run`.  Every error kept here is keyed by what it is
about (see `errors`), so memory stays bounded whatever the churn.
"""

from __future__ import annotations

import asyncio
import logging

from envoy.config.core.v3 import base_pb2

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, ObjectKey
from xds_server.node_metadata import proxy_from_node
from xds_server.pipeline import isolation
from xds_server.pipeline.builder import SnapshotBuilder
from xds_server.pipeline.debounce import Debouncer
from xds_server.pipeline.errors import ErrorTable, bounded, describe, frames
from xds_server.pipeline.metrics import PipelineMetrics
from xds_server.settings import DebounceSettings

logger = logging.getLogger(__name__)

__all__ = ["MeshPipeline", "PipelineMetrics", "SnapshotBuilder"]

MAX_SHOWN_NODE_ID_CHARS = 300


class MeshPipeline:
    def __init__(
        self,
        cache: SnapshotCache,
        debounce: DebounceSettings | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.builder = SnapshotBuilder(cache)
        self._debouncer = Debouncer(debounce or DebounceSettings())
        self.metrics = metrics
        self.node_errors: ErrorTable[str] = ErrorTable()
        """By node id, while that node is connected: why its metadata was refused."""
        self.batch_errors: ErrorTable[ObjectKey] = ErrorTable()
        """Changes that raised outside translation (a bug): not applied until their next change."""
        self.pushes = 0

    @property
    def metrics(self) -> PipelineMetrics | None:
        """Where the builder and the debouncer count (None: nothing is counted)."""
        return self.builder.metrics

    @metrics.setter
    def metrics(self, metrics: PipelineMetrics | None) -> None:
        self.builder.metrics = self._debouncer.metrics = metrics

    @property
    def ready(self) -> bool:
        return self.builder.synced

    def translation_errors(self) -> list[tuple[str, str]]:
        """(object or unit, error): what translation left out or kept, and what failed to apply."""
        batches = [(isolation.shown_key(key), error) for key, error in self.batch_errors.items()]
        return self.builder.translation_errors() + batches

    def submit(self, changes: ChangeSet) -> None:
        self._debouncer.submit(changes)

    def initial_sync(self, changes: ChangeSet) -> None:
        """Apply a source's first full load at once and open the gate to proxies.

        A bad object is left out (the builder isolates it); should the batch
        raise anyway, the gate opens on what could be built, and says so.
        """
        self._apply(changes)
        self.builder.mark_synced()

    def node_connected(self, node: base_pb2.Node) -> None:
        try:
            proxy = proxy_from_node(node)
        except Exception as error:  # a ValueError naming the key, or worse: refuse the node
            message = bounded(str(error)) if isinstance(error, ValueError) else describe(error)
            self.node_errors.set(node.id, message)
            shown = bounded(node.id, MAX_SHOWN_NODE_ID_CHARS)
            logger.error("node %s has invalid metadata: %s", shown, message)
            return
        self.node_errors.clear(node.id)
        self.builder.add_proxy(proxy)

    def node_disconnected(self, node_id: str) -> None:
        self.node_errors.clear(node_id)
        self.builder.remove_proxy(node_id)

    async def run(self) -> None:
        """Apply debounced batches until cancelled; a batch that raises is logged, not fatal."""
        while True:
            batch = await self._debouncer.next_batch()
            started = asyncio.get_running_loop().time()
            if not self._apply(batch):
                continue
            self.pushes += 1
            logger.info(
                "applied %d change(s) in %.1f ms (generation %d)",
                len(batch),
                (asyncio.get_running_loop().time() - started) * 1000,
                self.builder.generation,
            )

    def _apply(self, batch: ChangeSet) -> bool:
        """Apply `batch`; if it raises, apply its changes one by one, skipping those that do."""
        try:
            self.builder.apply(batch)
        except Exception as error:  # one batch must never end the loop, nor the process
            logger.error(
                "a batch of %d change(s) raised %s; applying them one by one\n%s",
                len(batch),
                describe(error),
                frames(error),
            )
            for key in batch.deletes:
                self._apply_one(key, isolation.changes_of([key], []))
            for key, obj in batch.upserts.items():
                self._apply_one(key, isolation.changes_of([], [obj]))
            return False
        for key in (*batch.upserts, *batch.deletes):
            self.batch_errors.clear(key)
        return True

    def _apply_one(self, key: ObjectKey, change: ChangeSet) -> None:
        try:
            self.builder.apply(change)
        except Exception as error:
            message = (
                f"{isolation.shown_key(key)}: applying it raised {describe(error)}; "
                "it is not applied until its next change"
            )
            self.batch_errors.set(key, message)
            logger.error("%s\n%s", message, frames(error))
        else:
            self.batch_errors.clear(key)
