"""The Aggregated Discovery Service servicer: streams in, status and protocol events out.

The servicer owns the set of open streams, counts streams per node (so an
observer hears of a node when its first stream says who it is and of its
departure when its last stream closes), keeps the latest unresolved NACK of
every (node, type) of a connected node for the admin view, and turns
`ProtocolError` into a gRPC status.  All protocol logic lives in the stream
classes.

Every protocol event goes to one `Fanout` of `ServerCallbacks`: the servicer's
own book of open NACKs, `ServerMetrics`, then whatever the caller adds
(`callbacks=`, or `callbacks.add` later), each stamped by one
`MonotonicWallClock`.

It also counts streams per peer address (the port left out, so one host's
connections count together) and refuses the stream beyond
`ServerLimits.max_streams_per_peer` with RESOURCE_EXHAUSTED, logging that once
per peer until the peer is back under its limit.  Whatever a stream raises
ends that stream only: a `ProtocolError` with its status, anything else with
INTERNAL (logged with its traceback, and counted in `xds_stream_errors`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest

from xds_server.cache import SnapshotCache
from xds_server.resources import TYPES
from xds_server.server.auth import AuthenticationError, NodeAuthorizer, StreamAuthenticator
from xds_server.server.budget import NameBudget
from xds_server.server.callbacks import (
    Fanout,
    MonotonicWallClock,
    NoCallbacks,
    SentResponse,
    ServerCallbacks,
    StreamInfo,
)
from xds_server.server.delta import DeltaStream
from xds_server.server.limits import ServerLimits
from xds_server.server.metrics import ServerMetrics
from xds_server.server.sotw import SotwStream
from xds_server.server.state import NackStatus, StreamStatus
from xds_server.server.stream import AdsStream, ProtocolError, StreamContext

logger = logging.getLogger(__name__)


class NodeObserver(Protocol):
    """Told when a node connects and when its last stream goes away."""

    def node_connected(self, node: Node) -> None: ...

    def node_disconnected(self, node_id: str) -> None: ...


class AggregatedDiscoveryServer:
    """ADS over gRPC (SotW and Delta) serving the snapshots of a `SnapshotCache`.

    `metrics` default to a `ServerMetrics` in a registry of its own; `callbacks`
    (one or several) hear every protocol event after the metrics; `clock`
    stamps the events (tests may pass their own).
    """

    def __init__(
        self,
        cache: SnapshotCache,
        observer: NodeObserver | None = None,
        *,
        callbacks: ServerCallbacks | Sequence[ServerCallbacks] = (),
        metrics: ServerMetrics | None = None,
        limits: ServerLimits | None = None,
        clock: Callable[[], float] | None = None,
        authenticator: StreamAuthenticator | None = None,
        authorizer: NodeAuthorizer | None = None,
    ) -> None:
        self.cache = cache
        self.authenticator = authenticator
        """Proves who opened each stream; None serves every stream anonymously."""
        self.authorizer = authorizer
        """Checks the node and names an authenticated stream asks for."""
        self.observer = observer
        self.limits = limits if limits is not None else ServerLimits()
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self._nacks: dict[tuple[str, str], NackStatus] = {}
        extra = list(callbacks) if isinstance(callbacks, Sequence) else [callbacks]
        self.callbacks = Fanout([_OpenNacks(self._nacks), self.metrics, *extra])
        """Every protocol event goes here; `callbacks.add` hands them to one more."""
        self._clock = clock if clock is not None else MonotonicWallClock()
        self._ids = itertools.count(1)
        self._streams: dict[int, AdsStream[Any]] = {}
        self._streams_of_node: Counter[str] = Counter()
        self._streams_of_peer: Counter[str] = Counter()
        self._budgets: dict[str, NameBudget] = {}
        """Per peer with open streams: the names its requests may still make us walk."""
        self._peers_refused: set[str] = set()
        """Peers at their stream limit whose refusal was logged (once each)."""
        self._closing = False

    def now(self) -> float:
        """The timestamp of a protocol event (wall-clock seconds, never stepping back)."""
        return self._clock()

    # --- gRPC methods (names fixed by the generated service) ------------------

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: StreamContext
    ) -> None:
        await self._serve(SotwStream(self, next(self._ids), context), request_iterator)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: StreamContext
    ) -> None:
        await self._serve(DeltaStream(self, next(self._ids), context), request_iterator)

    async def _serve(self, stream: AdsStream[Any], requests: AsyncIterator[Any]) -> None:
        if self._closing:
            self.callbacks.stream_refused(stream.context.peer(), "shutting_down", self.now())
            await stream.context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            return
        peer = peer_address(stream.context.peer())
        if self._streams_of_peer[peer] >= self.limits.max_streams_per_peer:
            await self._refuse(stream, peer)
            return
        if self.authenticator is not None and not await self._authenticate(stream):
            return
        self._streams_of_peer[peer] += 1
        if peer not in self._budgets:
            limits = self.limits
            burst = max(limits.max_names_per_second, limits.max_names_per_request)
            loop = asyncio.get_running_loop()
            self._budgets[peer] = NameBudget(limits.max_names_per_second, burst, loop.time)
        self._streams[stream.stream_id] = stream
        self.callbacks.stream_opened(stream.info, self.now())
        try:
            await stream.run(requests)
        except ProtocolError as error:
            logger.warning(
                "closing %s stream %d of node %s (%s): %s",
                stream.kind,
                stream.stream_id,
                stream.node_id or "unknown",
                stream.context.peer(),
                error.details,
            )
            self.callbacks.stream_failed(stream.info, error.code.name, self.now())
            await _end_call(stream, error.code, error.details)
        except Exception:
            logger.exception("%s stream %d failed", stream.kind, stream.stream_id)
            self.callbacks.stream_failed(stream.info, grpc.StatusCode.INTERNAL.name, self.now())
            await _end_call(stream, grpc.StatusCode.INTERNAL, "internal error in the server")
        finally:
            self._stream_ended(stream)
            if stream.write_abandoned:
                # gRPC holds the call (an unsent response, then the status) until the
                # proxy reads or its connection goes: until then it counts for its peer.
                stream.context.add_done_callback(lambda _: self._peer_stream_ended(peer))
            else:
                self._peer_stream_ended(peer)

    async def _authenticate(self, stream: AdsStream[Any]) -> bool:
        """Fill the stream's identity, or end it UNAUTHENTICATED."""
        assert self.authenticator is not None
        try:
            identity = await self.authenticator.authenticate(stream.context)
        except AuthenticationError as error:
            self.callbacks.stream_refused(stream.context.peer(), "unauthenticated", self.now())
            logger.warning("refusing ADS stream from %s: %s", stream.context.peer(), error)
            await stream.context.abort(grpc.StatusCode.UNAUTHENTICATED, str(error))
            return False
        stream.identity = identity
        stream.authorizer = self.authorizer
        stream.info = replace(stream.info, identity=identity.principal)
        return True

    async def _refuse(self, stream: AdsStream[Any], peer: str) -> None:
        limit = self.limits.max_streams_per_peer
        self.callbacks.stream_refused(stream.context.peer(), "peer_limit", self.now())
        if peer not in self._peers_refused:
            self._peers_refused.add(peer)
            logger.warning(
                "refusing ADS streams from %s beyond its %d open streams "
                "(max_streams_per_peer); logged once until it is under the limit",
                peer,
                limit,
            )
        await stream.context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{peer} already has {limit} open ADS streams, the limit (max_streams_per_peer)",
        )

    def _peer_stream_ended(self, peer: str) -> None:
        self._streams_of_peer[peer] -= 1
        left = self._streams_of_peer[peer]
        if left <= 0:
            del self._streams_of_peer[peer]
            self._budgets.pop(peer, None)
        if left < self.limits.max_streams_per_peer:
            self._peers_refused.discard(peer)

    # --- called by streams ----------------------------------------------------

    def node_identified(self, stream: AdsStream[Any]) -> None:
        node_id = stream.node_id or ""
        self._streams_of_node[node_id] += 1
        logger.info(
            "node %s connected (%s stream %d from %s)",
            node_id,
            stream.kind,
            stream.stream_id,
            stream.context.peer(),
        )
        if self.observer is not None:
            try:
                self.observer.node_connected(stream.node)
            except Exception:
                logger.exception("node observer failed on connect of %s", node_id)

    def names_read(self, stream: AdsStream[Any], count: int) -> float:
        budget = self._budgets.get(peer_address(stream.context.peer()))
        if budget is None:
            return 0.0
        pause = budget.charge(count)
        if pause > 0:
            self.callbacks.request_paused(stream.info, self.now())
            if not budget.warned:
                budget.warned = True
                logger.warning(
                    "%s is past its budget of %d resource names per second "
                    "(max_names_per_second): its requests wait; logged once",
                    peer_address(stream.context.peer()),
                    self.limits.max_names_per_second,
                )
        return pause

    def _stream_ended(self, stream: AdsStream[Any]) -> None:
        if self._streams.pop(stream.stream_id, None) is None:
            return
        self.callbacks.stream_closed(stream.info, self.now())
        node_id = stream.node_id
        if node_id is None:
            return
        logger.info("%s stream %d of node %s closed", stream.kind, stream.stream_id, node_id)
        self._streams_of_node[node_id] -= 1
        if self._streams_of_node[node_id] > 0:
            return
        del self._streams_of_node[node_id]
        for type_url in TYPES:  # a NACK of a node that is gone is stale
            self._nacks.pop((node_id, type_url), None)
        if self.observer is not None:
            try:
                self.observer.node_disconnected(node_id)
            except Exception:
                logger.exception("node observer failed on disconnect of %s", node_id)

    # --- admin and lifecycle --------------------------------------------------

    def streams(self) -> list[StreamStatus]:
        """A frozen picture of every open stream, oldest first."""
        return [self._streams[key].status() for key in sorted(self._streams)]

    def nacks(self, node_id: str | None = None) -> list[NackStatus]:
        """The latest NACK of each (connected node, type) not since resolved by an ACK."""
        return [
            nack
            for (nack_node, _), nack in sorted(self._nacks.items())
            if node_id is None or nack_node == node_id
        ]

    def connected_nodes(self) -> list[str]:
        return sorted(self._streams_of_node)

    def close(self) -> None:
        """End every stream (with an OK status) and refuse new ones.

        Call before `grpc.aio.Server.stop(grace)` so the grace period is not
        spent waiting for streams that never end on their own.
        """
        self._closing = True
        for stream in list(self._streams.values()):
            stream.close()


class _OpenNacks(NoCallbacks):
    """The servicer's book of NACKs not yet resolved, kept from the events it hears."""

    def __init__(self, nacks: dict[tuple[str, str], NackStatus]) -> None:
        self._nacks = nacks

    def ack_received(self, stream: StreamInfo, response: SentResponse, at: float) -> None:
        self._nacks.pop((stream.node_id, response.type_url), None)

    def nack_received(
        self, stream: StreamInfo, response: SentResponse, nack: NackStatus, at: float
    ) -> None:
        self._nacks[nack.node_id, nack.type_url] = nack


ABORT_WAIT_SECONDS = 1.0
"""How long ending a call waits for its status to go out (see `_end_call`)."""


async def _end_call(stream: AdsStream[Any], code: grpc.StatusCode, details: str) -> None:
    """End the call with `code` without waiting on a proxy that does not read.

    A status queues behind the responses the proxy has not read: `abort` would
    wait for it to go out, for good with a stuck proxy, holding the handler and
    its stream.  So a stream that abandoned a write sets the status and returns,
    and `abort` is given `ABORT_WAIT_SECONDS`.  Either way gRPC keeps the status
    queued, and a proxy that reads again still gets it.
    """
    if stream.write_abandoned:
        stream.context.set_code(code)
        stream.context.set_details(details)
        return
    try:
        await asyncio.wait_for(stream.context.abort(code, details), ABORT_WAIT_SECONDS)
    except TimeoutError:
        stream.write_abandoned = True  # the status waits behind responses not yet read


def peer_address(peer: str) -> str:
    """A gRPC peer (`ipv4:10.0.0.1:5000`, `ipv6:[::1]:5000`, `unix:/path`) without its port."""
    host, colon, port = peer.rpartition(":")
    if colon and port.isdigit() and host.count(":") >= 1:
        return host
    return peer
