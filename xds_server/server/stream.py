"""The life of one ADS stream, shared by the SotW and Delta variants.

A stream is one task reading requests into an inbox and one loop that waits
for whichever comes first: the next request, or `SnapshotCache.watch` handing
over a snapshot that is not the one last processed.  Both paths end in the
same `_push`: a `Push` names, per type, the resources worth considering, and
the resources are sent type by type in `PUSH_ORDER` so nothing dangles.  A
resource sent in one type marks what it references (a cluster's load
assignment, a listener's route configuration) for a resend later in the same
pass, because Envoy re-warms a changed cluster or listener and waits for them.

A snapshot change costs `Snapshot.changed` per subscribed type, which is
O(changes): a stream that does not subscribe to what changed sends nothing and
does almost nothing.

Protocol misuse raises `ProtocolError`, which the servicer turns into a gRPC
status; a NACK is recorded as data and answered with nothing.  Each request,
response, ACK and NACK is reported to the host's `callbacks`
(`xds_server.server.callbacks`) with its timestamp, an ACK or NACK together
with the `SentResponse` it answers: metrics and push history hang off that.

What a stream may hold is bounded (`ServerLimits`), so a proxy that floods or
never reads costs its own stream and nothing else:

* Requests: the reader task puts at most `request_queue` requests in the
  inbox; when it is full the reader stops reading and gRPC's flow control
  holds the client back.  Garbage on the wire (not a valid protobuf) ends the
  stream with INVALID_ARGUMENT.  Request sizes, name counts, string lengths
  and the stream's total subscription are checked before anything is kept.
  Once the stream's peer has made the server walk more resource names than
  its budget allows (`xds_server.server.budget`), the stream waits before it
  takes its next request.
* Responses: one response at a time is in flight; the loop awaits its write,
  and neither re-arms the snapshot watch nor takes the next request meanwhile.
  So pushes coalesce by construction: snapshots published while a write is
  blocked are skipped, and the next pass sends the difference from what the
  stream last processed to the newest snapshot (for SotW the latest full
  state, for Delta the union of the changes, diffed against what the proxy
  holds).  A write that does not complete within `stuck_stream_seconds` ends
  the stream with RESOURCE_EXHAUSTED: a proxy stuck that long is not coming
  back, and its reconnect starts from a clean state.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import grpc
from envoy.config.core.v3.base_pb2 import Node
from google.protobuf.message import DecodeError

from xds_server.cache import LayeredResources, Snapshot, SnapshotCache
from xds_server.resources import PUSH_ORDER, SHORT_NAMES, TYPES, Resource
from xds_server.server.auth import NodeAuthorizer, PeerIdentity
from xds_server.server.callbacks import SentResponse, ServerCallbacks, StreamInfo
from xds_server.server.limits import (
    MAX_NACK_MESSAGE_CHARS,
    MAX_REMEMBERED_UNSERVED_TYPES,
    MAX_SHOWN_CHARS,
    ServerLimits,
    clip,
    shown,
)
from xds_server.server.state import (
    NackStatus,
    StreamKind,
    StreamStatus,
    SubscriptionChange,
    TypeState,
)

logger = logging.getLogger(__name__)

_TYPE_URL_PREFIX = "type.googleapis.com/"

RequestT = TypeVar("RequestT")


class ProtocolError(Exception):
    """A request that breaks the xDS protocol; ends the stream with `code`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class StreamContext(Protocol):
    """The part of `grpc.aio.ServicerContext` a stream uses (and a test fake provides)."""

    async def write(self, message: Any) -> None: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> None: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def add_done_callback(self, callback: Callable[[Any], None]) -> None: ...

    def peer(self) -> str: ...


class StreamHost(Protocol):
    """What a stream needs from the servicer that owns it."""

    cache: SnapshotCache
    limits: ServerLimits

    @property
    def callbacks(self) -> ServerCallbacks:
        """Where the stream reports every protocol event (`xds_server.server.callbacks`)."""
        ...

    def now(self) -> float:
        """The timestamp of an event: wall-clock seconds, never stepping back."""
        ...

    def node_identified(self, stream: AdsStream[Any]) -> None: ...

    def names_read(self, stream: AdsStream[Any], count: int) -> float:
        """Charge `count` names to the stream's peer; the seconds it must now wait."""
        ...


@dataclass
class Push:
    """What one pass must consider sending, by type URL.

    `candidates` are names that changed or were newly subscribed; `everything`
    means every name the subscription covers (a first response or a catch-up);
    `forced` names are resent even if the proxy already holds their version
    (a re-warming cluster's load assignment).
    """

    candidates: dict[str, set[str]] = field(default_factory=dict)
    everything: set[str] = field(default_factory=set)
    forced: dict[str, set[str]] = field(default_factory=dict)

    def add(self, type_url: str, names: Iterable[str]) -> None:
        self.candidates.setdefault(type_url, set()).update(names)

    def add_dependent(self, type_url: str, name: str) -> None:
        self.candidates.setdefault(type_url, set()).add(name)
        self.forced.setdefault(type_url, set()).add(name)

    def touches(self, type_url: str) -> bool:
        return type_url in self.everything or bool(self.candidates.get(type_url))


class _EndOfStream:
    pass


_END = _EndOfStream()


class _Closed(Exception):
    """`close` was called while the stream was blocked writing."""


class AdsStream(abc.ABC, Generic[RequestT]):
    """One ADS stream: its node, its per-type state, and the loop that serves it."""

    kind: ClassVar[StreamKind]
    _request_type: ClassVar[str]
    """The request message's name, for errors."""

    def __init__(self, host: StreamHost, stream_id: int, context: StreamContext) -> None:
        self.host = host
        self.limits = host.limits
        self.stream_id = stream_id
        self.context = context
        self.info = StreamInfo(stream_id, self.kind, context.peer())
        """Who is at the other end, as callbacks are told (the node id once known)."""
        self.node: Node | None = None
        self.node_id: str | None = None
        self.identity: PeerIdentity | None = None
        """Who proved to be at the other end (set by the servicer when it opens)."""
        self.authorizer: NodeAuthorizer | None = None
        """Checks the node claimed and the names asked for against `identity`."""
        self.connected_at = datetime.now(UTC)
        self.snapshot: Snapshot | None = None
        self.pushed_version: str | None = None
        self.types: dict[str, TypeState] = {}
        self._nonces = itertools.count(1)
        self._inbox: asyncio.Queue[RequestT | _EndOfStream | Exception] = asyncio.Queue(
            maxsize=self.limits.request_queue
        )
        self._closing = asyncio.Event()
        self._write_deadline: asyncio.Timeout | None = None
        self.write_abandoned = False
        """A response was left half-written: gRPC holds it, and then the call's
        status, until the proxy reads again or its connection goes."""
        self._ignored_types: set[str] = set()
        self.requests_handled = 0

    # --- the loop -------------------------------------------------------------

    async def run(self, requests: AsyncIterator[RequestT]) -> None:
        """Serve until the proxy closes the stream or `close` is called."""
        reader = asyncio.create_task(self._read(requests))
        inbox: asyncio.Future[RequestT | _EndOfStream | Exception] = asyncio.ensure_future(
            self._inbox.get()
        )
        closing = asyncio.ensure_future(self._closing.wait())
        watch: asyncio.Future[Snapshot] | None = None
        try:
            while not self._closing.is_set():
                if watch is None and self.node_id is not None:
                    watch = asyncio.ensure_future(
                        self.host.cache.watch(self.node_id, self.snapshot)
                    )
                waiting: set[asyncio.Future[Any]] = {inbox, closing}
                if watch is not None:
                    waiting.add(watch)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if inbox in done:
                    item = inbox.result()
                    if isinstance(item, _EndOfStream):
                        return
                    if isinstance(item, ProtocolError):
                        raise item
                    if isinstance(item, Exception):
                        logger.info("stream %d: reading requests failed: %r", self.stream_id, item)
                        return
                    names = await self._on_request(item)
                    self.requests_handled += 1
                    pause = self.host.names_read(self, names) if names else 0.0
                    if pause > 0:  # the peer is over its budget: its requests wait
                        await asyncio.wait({closing}, timeout=pause)
                    inbox = asyncio.ensure_future(self._inbox.get())
                if watch is not None and watch in done:
                    snapshot = watch.result()
                    watch = None
                    await self._on_snapshot(snapshot)
        except _Closed:
            return
        finally:
            tasks = [task for task in (reader, inbox, closing, watch) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    def close(self) -> None:
        """End the stream (status OK) after the request being handled, or at once if
        it is blocked writing to its proxy (server shutdown)."""
        self._closing.set()
        if self._write_deadline is not None:
            self._write_deadline.reschedule(asyncio.get_running_loop().time())

    async def _read(self, requests: AsyncIterator[RequestT]) -> None:
        """Read requests into the bounded inbox, in order, then the end of the stream."""
        try:
            async for request in requests:
                await self._inbox.put(request)
        except DecodeError as error:  # the client sent bytes that are not a request
            await self._inbox.put(
                ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a request is not a valid {self._request_type}: "
                    f"{clip(str(error), 4 * MAX_SHOWN_CHARS)}",
                )
            )
        except Exception as error:  # a broken transport ends the stream, not the server
            await self._inbox.put(error)
        else:
            await self._inbox.put(_END)

    async def _on_snapshot(self, snapshot: Snapshot) -> None:
        """Send what changed between the last processed snapshot and `snapshot`."""
        older, self.snapshot = self.snapshot, snapshot
        push = Push()
        for type_url, state in self.types.items():
            if older is None:
                self._catch_up(push, state)
                continue
            changed = snapshot.changed(older, type_url)
            if changed:
                push.add(type_url, changed if state.wildcard else state.interest(changed))
        await self._push(push)
        self.pushed_version = snapshot.version

    async def _push(self, push: Push) -> None:
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is None or not push.touches(type_url):
                continue
            for resource in await self._send_type(state, push):
                for ref_type, ref_name in resource.refs:
                    push.add_dependent(ref_type, ref_name)

    # --- variant-specific -----------------------------------------------------

    @abc.abstractmethod
    async def _on_request(self, request: RequestT) -> int:
        """Handle one request; return how many resource names it made us walk."""

    @abc.abstractmethod
    def _catch_up(self, push: Push, state: TypeState) -> None:
        """Add to `push` what a type needs when the stream sees its first snapshot."""

    @abc.abstractmethod
    async def _send_type(self, state: TypeState, push: Push) -> list[Resource]:
        """Send one type's response if `push` calls for one; return what changed."""

    # --- helpers for the variants ---------------------------------------------

    def _identify(self, request: Any) -> None:
        """Take the node from the stream's first request; later ones may omit it."""
        has_node = request.HasField("node")
        node_id = str(request.node.id) if has_node else ""
        if len(node_id) > self.limits.max_name_length:
            raise too_long("node.id", node_id, self.limits.max_name_length)
        if not node_id.isprintable():  # it goes into log lines and the admin page
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node.id {shown(node_id)} holds control or separator characters",
            )
        if self.node_id is None:
            size = request.node.ByteSize() if has_node else 0
            if size > self.limits.max_node_bytes:
                raise ProtocolError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the node is {size} bytes; the limit is {self.limits.max_node_bytes} "
                    "(max_node_bytes)",
                )
            if not node_id:
                raise ProtocolError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the first request on a stream must carry a node with an id",
                )
            self._authorize(node_id, self._authorizer_on_node(request.node))
            self.node = request.node
            self.node_id = node_id
            self.info = replace(self.info, node_id=node_id)
            self.host.node_identified(self)
        elif node_id and node_id != self.node_id:
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"node id changed on the stream from {shown(self.node_id)} to {shown(node_id)}",
            )

    def _authorizer_on_node(self, node: Node) -> str | None:
        if self.authorizer is None or self.identity is None:
            return None
        return self.authorizer.authorize_node(self.identity, node)

    def _authorize(self, asked: str, denial: str | None) -> None:
        """End the stream PERMISSION_DENIED if the authorizer gave a reason."""
        if denial is None:
            return
        principal = self.identity.principal if self.identity is not None else "anonymous"
        logger.warning(
            "denied %s (node %s, identity %s) asking for %s: %s",
            self.context.peer(),
            self.node_id or "unknown",
            principal,
            clip(asked, MAX_SHOWN_CHARS),
            denial,
        )
        raise ProtocolError(grpc.StatusCode.PERMISSION_DENIED, denial)

    def _accept(
        self, request: Any, version_info: str | None, names: int, subscribed: Sequence[str]
    ) -> tuple[TypeState, bool] | None:
        """The steps every request takes first, in both variants: check its sizes
        (`names` resource names in all), identify the node, find the type's state,
        report the request (with the names it `subscribed`), and count it as an ACK
        or NACK of our last response.  Returns the state and whether this is the
        type's first request, or None for a type we do not serve."""
        limits = self.limits
        if names > limits.max_names_per_request:
            raise ProtocolError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a request names {names} resources; the limit is "
                f"{limits.max_names_per_request} (max_names_per_request)",
            )
        if len(request.response_nonce) > limits.max_name_length:
            raise too_long("response_nonce", request.response_nonce, limits.max_name_length)
        if version_info is not None and len(version_info) > limits.max_name_length:
            raise too_long("version_info", version_info, limits.max_name_length)
        self._identify(request)
        found = self._state_for(request.type_url)
        if found is None:
            return None
        state, _ = found
        if self.authorizer is not None and self.identity is not None and self.node is not None:
            denial = self.authorizer.authorize_names(
                self.identity, self.node, state.type_url, subscribed
            )
            self._authorize(
                f"{SHORT_NAMES.get(state.type_url, state.type_url)} {list(subscribed)}", denial
            )
        self.host.callbacks.request_received(self.info, state.type_url, subscribed, self.host.now())
        error = request.error_detail if request.HasField("error_detail") else None
        self._record_reply(state, request.response_nonce, version_info, error)
        return found

    def _state_for(self, type_url: str) -> tuple[TypeState, bool] | None:
        """The state of a requested type and whether this is its first request.

        A missing or malformed type URL cannot be served and is an
        INVALID_ARGUMENT.  A well-formed type we do not serve is logged and
        ignored rather than refused: Envoy
        multiplexes every ADS-sourced type (runtime, extension configs, VHDS,
        ...) on this one stream, and aborting it would also cut off clusters,
        listeners and endpoints, only to fail again on reconnect.  Envoy waits
        for the unserved type (bounded by its initial_fetch_timeout).
        """
        if not type_url:
            raise ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, "request without a type_url")
        if len(type_url) > self.limits.max_name_length:
            raise too_long("type_url", type_url, self.limits.max_name_length)
        if not type_url.startswith(_TYPE_URL_PREFIX):
            raise ProtocolError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown type URL {shown(type_url)}: expected {_TYPE_URL_PREFIX}<message type>",
            )
        if type_url not in TYPES:
            ignored = self._ignored_types
            if type_url not in ignored and len(ignored) < MAX_REMEMBERED_UNSERVED_TYPES:
                ignored.add(type_url)
                logger.warning(
                    "node %s asked for unsupported type %s; ignoring it",
                    self.node_id,
                    shown(type_url),
                )
            return None
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(type_url)
            return state, True
        return state, False

    def _record_reply(
        self, state: TypeState, nonce: str, version_info: str | None, error: Any | None
    ) -> None:
        """Count an ACK or NACK of the latest response; ignore stale or repeated nonces.

        `version_info` is what a SotW proxy says it now runs; Delta requests
        carry none (None), and an ACK there accepts the version last sent.  A
        SotW "ACK" naming a version that response did not carry is no ACK: it
        is ignored, so a confused or lying client cannot show as in sync.
        """
        if not nonce or nonce == state.answered_nonce:
            return
        if nonce != state.nonce:
            logger.debug(
                "node %s: %s request with stale nonce %s (latest %s)",
                self.node_id,
                SHORT_NAMES[state.type_url],
                shown(nonce),
                state.nonce or "none",
            )
            return
        if error is None and version_info is not None and version_info != state.version_sent:
            logger.debug(
                "node %s: %s ACK of nonce %s names version %s, not the %s sent; ignored",
                self.node_id,
                SHORT_NAMES[state.type_url],
                nonce,
                shown(version_info),
                state.version_sent,
            )
            return
        state.answered_nonce = nonce
        response = state.last_response
        assert response is not None  # the nonce matched the latest response's
        at = self.host.now()
        if error is None:
            state.acks += 1
            state.acked_at = at
            state.acked_version = state.version_sent if version_info is None else version_info
            self.host.callbacks.ack_received(self.info, response, at)
            return
        message = clip(str(error.message), MAX_NACK_MESSAGE_CHARS)
        named = tuple(name for name in response.resources if name and name in message)
        nack = NackStatus(
            node_id=self.node_id or "",
            type_url=state.type_url,
            rejected_version=state.version_sent,
            kept_version=version_info or "",
            nonce=nonce,
            message=message,
            at=datetime.fromtimestamp(at, UTC),
            resources=named or response.resources,
        )
        state.nacks += 1
        state.last_nack = nack
        self.host.callbacks.nack_received(self.info, response, nack, at)
        logger.warning(
            "node %s rejected %s version %s (nonce %s; %s), keeping %s: %s",
            nack.node_id,
            SHORT_NAMES[state.type_url],
            nack.rejected_version,
            nonce,
            _describe_blamed(nack.resources),
            version_info or "its previous config",
            nack.message,
        )

    def _check_subscription(self, change: SubscriptionChange) -> None:
        """Refuse names too long to be real and a subscription beyond the stream's bound.

        Only the names a request added are measured: Envoy repeats its whole
        list on every ACK, and those names were measured when they were added.
        """
        limits = self.limits
        if change.added and max(map(len, change.added)) > limits.max_name_length:
            longest = max(change.added, key=len)
            raise too_long("a resource name", longest, limits.max_name_length)
        total = sum(len(state.names) for state in self.types.values())
        if total > limits.max_subscribed_names:
            raise ProtocolError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the stream subscribes to {total} resource names; the limit is "
                f"{limits.max_subscribed_names} (max_subscribed_names)",
            )

    def _next_nonce(self) -> str:
        return str(next(self._nonces))

    async def _send(
        self,
        state: TypeState,
        response: Any,
        version: str,
        changed: Iterable[str],
        removed: Sequence[str] = (),
    ) -> None:
        """Send a response from `self.snapshot`; `changed` names what it adds or changes
        (blamed on NACK), `removed` what it removes.  Reported once gRPC has it."""
        assert self.snapshot is not None
        size = int(response.ByteSize())
        sent = SentResponse(
            type_url=state.type_url,
            nonce=str(response.nonce),
            version=version,
            snapshot_version=self.snapshot.version,
            resources=tuple(sorted(changed)),
            removed=tuple(removed),
            size=size,
        )
        state.last_response = sent
        state.nonce = sent.nonce
        state.version_sent = version
        state.responses += 1
        state.bytes_sent += size
        await self._write(response)
        self.host.callbacks.response_sent(self.info, sent, self.host.now())

    async def _write(self, response: Any) -> None:
        """Write one response, waiting at most `stuck_stream_seconds` for the proxy
        to make room for it (gRPC buffers about one flow-control window)."""
        if self._closing.is_set():
            raise _Closed
        seconds = self.limits.stuck_stream_seconds
        try:
            async with asyncio.timeout(seconds) as deadline:
                self._write_deadline = deadline
                await self.context.write(response)
        except TimeoutError:
            self.write_abandoned = True
            if self._closing.is_set():
                raise _Closed from None
            raise ProtocolError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the proxy took no response for {seconds:g} s (its receive window is "
                "full; stuck_stream_seconds); disconnecting it",
            ) from None
        finally:
            self._write_deadline = None

    def status(self) -> StreamStatus:
        return StreamStatus(
            stream_id=self.stream_id,
            node_id=self.node_id or "",
            kind=self.kind,
            peer=self.context.peer(),
            connected_at=self.connected_at,
            snapshot_version=self.pushed_version,
            requests=self.requests_handled,
            types=MappingProxyType(
                {url: self.types[url].status() for url in PUSH_ORDER if url in self.types}
            ),
            node=self.node,
        )


def present(names: Collection[str], resources: Mapping[str, object]) -> Iterator[str]:
    """The names that `resources` holds, found by walking the smaller of the two.

    One endpoint change walks one name, not 10,000 clusters; a request that
    names 100,000 resources walks the few that exist, not the 100,000.
    """
    if len(names) <= _size(resources):
        return (name for name in names if name in resources)
    return (name for name in resources if name in names)


def _size(resources: Mapping[str, object]) -> int:
    """`len(resources)`, or an upper bound where counting would walk every name."""
    if isinstance(resources, LayeredResources):
        return sum(len(layer) for layer in resources.layers)
    return len(resources)


def too_long(what: str, value: str, limit: int) -> ProtocolError:
    """The INVALID_ARGUMENT for a client-sent string longer than `max_name_length`."""
    return ProtocolError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{what} {shown(value)} is {len(value)} characters; the limit is {limit} (max_name_length)",
    )


def _describe_blamed(names: tuple[str, ...]) -> str:
    if not names:
        return "no resource changed"
    shown = ", ".join(repr(name) for name in names[:5])
    return f"resources {shown}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")
