"""The control plane as the benchmarks run it: the real serving path, in process.

`MeshPipeline`, `SnapshotCache` and `AggregatedDiscoveryServer` are wired as
`xds_server.app.ControlPlane` wires them (the pipeline is the server's node
observer, so a proxy that connects gets its snapshot built), and served by
`bind_grpc_server` on a free loopback port.  The file source, the debouncer
and the admin app are left out: a benchmark feeds ChangeSets to the builder
itself, as `MeshPipeline.run` does after debouncing.

The benchmarks also measure checkouts older than the server callbacks
(`bench-results`: before and after a change), so the ACK count is
feature-detected: through a `ServerCallbacks` implementation where
`xds_server.server` has them, else through the servicer's own `ack_received`
hook, which older servers call for the same event.

It also owns watching the serving path against the client processes
(`ads_clients.ClientProcess`): `wait_synced` (nothing in flight on any
stream), `wait_disconnected`, the bytes the server counted per proxy (`server_bytes`,
`bytes_growth`), and what a change cost (`PushCost`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ads_clients import ClientProcess, ClientStatus

from xds_server import server as ads_server
from xds_server.cache import SnapshotCache
from xds_server.envoy_process import wait_for_async
from xds_server.pipeline import MeshPipeline
from xds_server.resources import SHORT_NAMES
from xds_server.server import (
    AggregatedDiscoveryServer,
    ServerLimits,
    StreamStatus,
    bind_grpc_server,
)

logger = logging.getLogger(__name__)


_Callbacks: Any = getattr(ads_server, "NoCallbacks", object)
"""The do-nothing callbacks to extend, on a server that has callbacks."""
HAS_CALLBACKS = _Callbacks is not object


class AckCounter(_Callbacks):  # type: ignore[misc]
    """Server callbacks counting ACKs by type, so a benchmark can await them.

    A stream reports an ACK of its latest response as it processes it:
    waiting on the count costs the server nothing (no polling of stream status).
    """

    def __init__(self) -> None:
        self.acks: Counter[str] = Counter()
        self._target: tuple[str, int] | None = None
        self._reached = asyncio.Event()

    def ack_received(self, stream: Any, response: Any, at: float) -> None:
        self.count(response.type_url)

    def count(self, type_url: str) -> None:
        self.acks[type_url] += 1
        target = self._target
        if target is not None and target[0] == type_url and self.acks[type_url] >= target[1]:
            self._reached.set()

    async def wait_acks(self, type_url: str, total: int) -> None:
        """Return once `acks[type_url]` reaches `total`."""
        self._target = (type_url, total)
        self._reached.clear()
        try:
            if self.acks[type_url] < total:
                await self._reached.wait()
        finally:
            self._target = None


class AckCountingServer(AggregatedDiscoveryServer):
    """The ADS servicer with an `AckCounter` among its callbacks: `acks`, `wait_acks`."""

    def __init__(
        self, cache: SnapshotCache, observer: MeshPipeline, *, limits: ServerLimits
    ) -> None:
        counter = AckCounter()
        if HAS_CALLBACKS:
            super().__init__(cache, observer=observer, limits=limits, callbacks=counter)
        else:
            super().__init__(cache, observer=observer, limits=limits)
        self._counter = counter
        self.acks = counter.acks
        self.wait_acks = counter.wait_acks

    def ack_received(self, *args: Any) -> None:
        """The older servers' hook: (node_id, type_url) for each ACK of a latest response."""
        parent = getattr(super(), "ack_received", None)
        if parent is not None:
            parent(*args)
        if not HAS_CALLBACKS:
            self._counter.count(args[1])


class ControlPlaneUnderTest:
    """Pipeline, cache and ADS server on 127.0.0.1:<free port>; an async context manager."""

    def __init__(self) -> None:
        self.cache = SnapshotCache()
        self.pipeline = MeshPipeline(self.cache)
        # Every simulated proxy connects from 127.0.0.1: lift the per-peer stream cap.
        limits = ServerLimits(max_streams_per_peer=1_000_000)
        self.ads = AckCountingServer(self.cache, self.pipeline, limits=limits)
        self.server, self.port = bind_grpc_server(self.ads, "127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> ControlPlaneUnderTest:
        await self.server.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.ads.close()
        await self.server.stop(1.0)


@dataclass(frozen=True)
class PushCost:
    """What one change cost: `SnapshotBuilder.apply` alone (wall, CPU), from `apply` until
    the ACKs awaited (wall, the server's CPU), and the bytes each proxy received by type
    (client side) and the server counted sending it (`server_bytes` growth)."""

    apply_wall_s: float
    apply_cpu_s: float
    push_wall_s: float
    push_cpu_s: float
    client_bytes: dict[str, dict[str, int]]
    server_bytes: dict[str, dict[str, int]]


def server_bytes(plane: ControlPlaneUnderTest, nodes: set[str]) -> dict[str, dict[str, int]]:
    """The bytes the server has sent each of `nodes`, by short type name."""
    return {
        status.node_id: {
            SHORT_NAMES[url]: type_status.bytes_sent for url, type_status in status.types.items()
        }
        for status in plane.ads.streams()
        if status.node_id in nodes
    }


def bytes_growth(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What grew from `before` to `after` (one proxy's `server_bytes`), by type."""
    return {name: n - before.get(name, 0) for name, n in after.items() if n > before.get(name, 0)}


async def wait_synced(
    plane: ControlPlaneUnderTest,
    clients: ClientProcess,
    nodes: set[str],
    version: Callable[[str], str | None] | None = None,
) -> float:
    """Wait until nothing is in flight on any node's stream; return the seconds it took.

    That is: every stream has processed the snapshot it should be at
    (`version(node)`; by default the builder's latest generation) and every
    request its client queued, and the latest response of each type the server
    sent is the one the client last received (and ACKed).
    """
    started = time.monotonic()
    while True:
        latest = str(plane.pipeline.builder.generation)
        seen: dict[str, ClientStatus] = await clients.ask("status")
        streams = {s.node_id: s for s in plane.ads.streams() if s.node_id in nodes}
        if len(streams) == len(nodes) and all(
            _in_step(streams[node], seen[node], latest if version is None else version(node))
            for node in nodes
        ):
            return time.monotonic() - started
        await asyncio.sleep(0.25)


def _in_step(stream: StreamStatus, client: ClientStatus, version: str | None) -> bool:
    return (
        version is not None
        and stream.snapshot_version == version
        and stream.requests == client.requests
        and set(stream.types) == set(client.nonces)
        and all(state.nonce == client.nonces[url] for url, state in stream.types.items())
    )


async def wait_disconnected(plane: ControlPlaneUnderTest, nodes: set[str]) -> None:
    """Wait until none of `nodes` has a stream open."""
    await wait_for_async(
        lambda: not nodes & set(plane.ads.connected_nodes()),
        timeout=10.0,
        message="the proxies disconnected",
    )
