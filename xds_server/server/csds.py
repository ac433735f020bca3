"""The Client Status Discovery Service: each connected proxy's config and sync state.

`envoy.service.status.v3.ClientStatusDiscoveryService` is what standard xDS
debugging tools ask a control plane (as they ask Istio's): for every client a
`ClientConfig` with its node and one `GenericXdsConfig` per resource it is
served.  The facts are the server's own (the newest stream of each node, its
per-type `TypeStatus`, the node's snapshot); what is mesh-specific is injected:

- `sync_of` classifies a type's status (the admin's `sync_status`, so CSDS and
  `/api/proxies` cannot disagree): SYNCED, STALE, NACKED or NOT SENT;
- `show` gives a resource's content as it may leave the control plane (the
  admin's redaction; None withholds it), `clean_text` Envoy's NACK messages
  (`redact_text`);
- `authorize` decides who may call (a reason refuses PERMISSION_DENIED).

Per resource: `config_status` SYNCED, STALE, ERROR (the type's latest response
was NACKed) or NOT_SENT; `client_status` ACKED, REQUESTED (sent, no reply yet),
NACKED with `error_state` (Envoy's message, the rejected version, when), or
DOES_NOT_EXIST for a name the proxy subscribes to that its snapshot lacks.
`version_info` is the type's version last sent on the stream; `xds_config` is
the resource the node's snapshot holds now (newer than what was sent while a
push is on its way, which is then STALE).  A NACK rejects a whole response, so
every resource of a NACKed type reads ERROR/NACKED, as the admin shows the type.

`node_matchers` choose clients (any matcher; all when none): the node id by
Envoy's `StringMatcher` (exact, prefix, suffix, contains, safe_regex,
ignore_case) and node metadata by `StructMatcher` paths with string, bool,
presence or null values; other value matchers are refused INVALID_ARGUMENT.
Building a response unpacks and redacts, so it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2, struct_pb2, value_pb2
from google.protobuf import any_pb2
from google.protobuf import struct_pb2 as pb_struct

from xds_server.cache import Snapshot
from xds_server.resources import PUSH_ORDER, Resource
from xds_server.server.state import StreamStatus, TypeStatus

logger = logging.getLogger(__name__)

SYNCED, STALE, NACKED, NOT_SENT = "SYNCED", "STALE", "NACKED", "NOT SENT"
"""The values `sync_of` returns (the admin's `SyncStatus`)."""

_CONFIG_STATUS = {
    SYNCED: csds_pb2.SYNCED,
    STALE: csds_pb2.STALE,
    NACKED: csds_pb2.ERROR,
    NOT_SENT: csds_pb2.NOT_SENT,
}
_Resource = config_dump_shared_pb2.ClientResourceStatus
_CLIENT_STATUS = {
    SYNCED: _Resource.ACKED,
    STALE: _Resource.REQUESTED,
    NACKED: _Resource.NACKED,
    NOT_SENT: _Resource.REQUESTED,
}

Authorize = Callable[[Any], Awaitable[str | None]]
"""The gRPC context of a call → None to serve it, or why it is refused."""


class MatcherError(ValueError):
    """A node matcher this server cannot evaluate (the call is INVALID_ARGUMENT)."""


def string_matches(matcher: string_pb2.StringMatcher, value: str) -> bool:
    """Envoy's `StringMatcher` on `value` (safe_regex matches the whole value)."""
    pattern = matcher.WhichOneof("match_pattern")
    if pattern is None:
        raise MatcherError("a StringMatcher sets none of exact, prefix, suffix, contains, regex")
    if pattern == "safe_regex":
        flags = re.IGNORECASE if matcher.ignore_case else 0
        try:
            return re.fullmatch(matcher.safe_regex.regex, value, flags) is not None
        except re.error as error:
            raise MatcherError(f"safe_regex {matcher.safe_regex.regex!r}: {error}") from None
    if pattern not in ("exact", "prefix", "suffix", "contains"):
        raise MatcherError(f"the StringMatcher {pattern} is not supported")
    expected: str = getattr(matcher, pattern)
    if matcher.ignore_case:
        expected, value = expected.lower(), value.lower()
    if pattern == "exact":
        return value == expected
    if pattern == "prefix":
        return value.startswith(expected)
    if pattern == "suffix":
        return value.endswith(expected)
    return expected in value


_ABSENT = object()


def _value_at(metadata: pb_struct.Struct, matcher: struct_pb2.StructMatcher) -> object:
    """The metadata value at the matcher's path, or `_ABSENT`."""
    current: object = metadata
    for segment in matcher.path:
        if not isinstance(current, pb_struct.Struct) or segment.key not in current.fields:
            return _ABSENT
        value = current.fields[segment.key]
        current = value.struct_value if value.HasField("struct_value") else value
    return current


def _value_matches(matcher: value_pb2.ValueMatcher, found: object) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "present_match":
        return (found is not _ABSENT) == bool(matcher.present_match)
    if found is _ABSENT:
        return False
    if not isinstance(found, pb_struct.Value):
        return False  # a struct: only presence says anything about it
    if kind == "null_match":
        return bool(found.HasField("null_value"))
    if kind == "bool_match":
        return found.HasField("bool_value") and bool(found.bool_value) == bool(matcher.bool_match)
    if kind == "string_match":
        return found.HasField("string_value") and string_matches(
            matcher.string_match, str(found.string_value)
        )
    raise MatcherError(f"the metadata ValueMatcher {kind} is not supported")


def node_matches(matcher: node_pb2.NodeMatcher, node: Node) -> bool:
    """Whether `node` has the matcher's id (if it names one) and all its metadata."""
    if matcher.HasField("node_id") and not string_matches(matcher.node_id, node.id):
        return False
    for metadata in matcher.node_metadatas:
        if not metadata.path:
            raise MatcherError("a node_metadatas matcher has an empty path")
        if not _value_matches(metadata.value, _value_at(node.metadata, metadata)):
            return False
    return True


def newest_streams(streams: Iterable[StreamStatus]) -> list[StreamStatus]:
    """The newest identified stream of each node (an older one is a reconnect's), by node id."""
    newest: dict[str, StreamStatus] = {}
    for stream in streams:
        if not stream.node_id:
            continue
        known = newest.get(stream.node_id)
        if known is None or stream.stream_id > known.stream_id:
            newest[stream.node_id] = stream
    return [newest[node_id] for node_id in sorted(newest)]


def _timestamp(when: datetime | None, into: Any) -> None:
    if when is not None:
        into.FromDatetime(when)


class ClientStatusBuilder:
    """Turns the server's stream facts into CSDS `ClientConfig`s (pure; no gRPC)."""

    def __init__(
        self,
        *,
        streams: Callable[[], Iterable[StreamStatus]],
        snapshot_of: Callable[[str], Snapshot | None],
        sync_of: Callable[[TypeStatus], str],
        show: Callable[[Resource], any_pb2.Any | None],
        clean_text: Callable[[str], str],
    ) -> None:
        self.streams = streams
        self.snapshot_of = snapshot_of
        self.sync_of = sync_of
        self.show = show
        self.clean_text = clean_text

    def response(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        """The configs of the clients `request.node_matchers` choose; MatcherError if bad."""
        matchers: Sequence[node_pb2.NodeMatcher] = request.node_matchers
        response = csds_pb2.ClientStatusResponse()
        shown: dict[tuple[str, str, str], any_pb2.Any | None] | None = (
            None if request.exclude_resource_contents else {}
        )
        for stream in newest_streams(self.streams()):
            node = stream.node if stream.node is not None else Node(id=stream.node_id)
            if matchers and not any(node_matches(m, node) for m in matchers):
                continue
            config = response.config.add()
            config.node.CopyFrom(node)
            self._fill(config, stream, shown)
        return response

    def _fill(
        self,
        config: csds_pb2.ClientConfig,
        stream: StreamStatus,
        shown: dict[tuple[str, str, str], any_pb2.Any | None] | None,
    ) -> None:
        """`stream`'s entries into `config`; contents through `shown` (None: none), which
        keeps each resource shown once per answer (most are shared by many proxies)."""
        snapshot = self.snapshot_of(stream.node_id)
        for type_url in PUSH_ORDER:
            status = stream.types.get(type_url)
            if status is None:
                continue
            served = snapshot.get(type_url) if snapshot is not None else {}
            sync = self.sync_of(status)
            names = sorted(served) if status.wildcard else list(status.names)
            for name in names:
                entry = config.generic_xds_configs.add(
                    type_url=type_url, name=name, version_info=status.version_sent
                )
                resource = served.get(name)
                if resource is None:
                    entry.config_status = csds_pb2.NOT_SENT
                    entry.client_status = _Resource.DOES_NOT_EXIST
                    continue
                self._status(entry, status, sync)
                if shown is not None:
                    key = (type_url, name, resource.version)
                    if key not in shown:
                        shown[key] = self.show(resource)
                    content = shown[key]
                    if content is not None:
                        entry.xds_config.CopyFrom(content)

    def _status(
        self, entry: csds_pb2.ClientConfig.GenericXdsConfig, status: TypeStatus, sync: str
    ) -> None:
        entry.config_status = _CONFIG_STATUS.get(sync, csds_pb2.UNKNOWN)
        entry.client_status = _CLIENT_STATUS.get(sync, _Resource.UNKNOWN)
        nack = status.last_nack
        if sync == NACKED and nack is not None:
            entry.error_state.details = self.clean_text(nack.message)
            entry.error_state.version_info = nack.rejected_version
            _timestamp(nack.at, entry.error_state.last_update_attempt)
            _timestamp(nack.at, entry.last_updated)
        else:
            _timestamp(status.acked_at, entry.last_updated)


class ClientStatusServer(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """CSDS over a `ClientStatusBuilder`, every call first passing `authorize`."""

    def __init__(self, builder: ClientStatusBuilder, authorize: Authorize) -> None:
        self.builder = builder
        self.authorize = authorize

    def add_to_server(self, server: grpc.aio.Server) -> None:
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(self, server)

    async def _admit(self, context: Any) -> None:
        refusal = await self.authorize(context)
        if refusal is not None:
            logger.warning("CSDS call from %s refused: %s", context.peer(), refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)

    async def _answer(
        self, request: csds_pb2.ClientStatusRequest, context: Any
    ) -> csds_pb2.ClientStatusResponse:
        try:
            response = await asyncio.to_thread(self.builder.response, request)
        except MatcherError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise  # abort raises; this keeps the type checker sure of it
        return response

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: Any
    ) -> csds_pb2.ClientStatusResponse:
        await self._admit(context)
        return await self._answer(request, context)

    async def StreamClientStatus(
        self, request_iterator: AsyncIterator[csds_pb2.ClientStatusRequest], context: Any
    ) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        await self._admit(context)
        async for request in request_iterator:
            yield await self._answer(request, context)
