"""Per-stream, per-type xDS state, and the frozen status views the admin reads.

A `TypeState` belongs to one stream and one type URL and is only touched by
that stream's task, so it is plain mutable data with no locking.  It holds the
three things the protocol makes the server remember: what the proxy subscribes
to (wildcard and/or names), what it was last sent (nonce, version, and for
Delta the version of every resource the proxy holds), and what it said back
(ACKed version, last NACK, counters).

Subscription rules follow the xDS spec ("How the client specifies what
resources to return"): the name `*` is an explicit wildcard; and, for legacy
clients, as long as a type has never been sent a non-empty name list its empty
requests mean wildcard too.  Once any name was named, an empty list means "no
names", not "everything".  The legacy rule applies to every type, as the spec
and go-control-plane do; Envoy itself only relies on it for LDS and CDS and
takes care not to send an empty first request for types it has unsubscribed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from envoy.config.core.v3.base_pb2 import Node

from xds_server.resources import TYPES

if TYPE_CHECKING:
    from xds_server.server.callbacks import SentResponse

WILDCARD = "*"

StreamKind = Literal["sotw", "delta"]


@dataclass(frozen=True, slots=True)
class NackStatus:
    """A proxy rejected a response: kept as data for the admin view, never raised."""

    node_id: str
    type_url: str
    rejected_version: str
    kept_version: str
    nonce: str
    message: str
    at: datetime
    resources: tuple[str, ...] = ()
    """The resources blamed: those of the rejected response that Envoy's message
    names, else every resource that response added or changed."""


@dataclass(frozen=True, slots=True)
class TypeStatus:
    """What one stream knows about one resource type, at the moment it was asked."""

    type_url: str
    wildcard: bool
    names: tuple[str, ...]
    version_sent: str
    nonce: str
    acked_version: str
    last_nack: NackStatus | None
    responses: int
    bytes_sent: int
    acks: int
    nacks: int
    acked_at: datetime | None = None
    """When the proxy last ACKed this type on this stream (None: not yet)."""


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A read-only picture of one ADS stream.

    `snapshot_version` is the version of the last snapshot fully pushed to it
    (None before the first); `requests` counts the requests it has handled.
    """

    stream_id: int
    node_id: str
    kind: StreamKind
    peer: str
    connected_at: datetime
    snapshot_version: str | None
    requests: int
    types: Mapping[str, TypeStatus] = field(default_factory=dict)
    node: Node | None = field(default=None, compare=False)
    """The node the stream's first request carried (None before it): CSDS answers with
    it and matches its metadata.  Shared with the stream, so never to be mutated."""


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    """What a request added to a subscription: the names the proxy must now be sent.

    `names_read` is how many names applying it walked: 0 when Envoy repeated an
    unchanged list (the common ACK), the whole list otherwise.
    """

    added: frozenset[str] = frozenset()
    became_wildcard: bool = False
    names_read: int = 0

    def __bool__(self) -> bool:
        return self.became_wildcard or bool(self.added)


class TypeState:
    """Subscription, delivery and reply state of one type on one stream."""

    __slots__ = (
        "_last_sotw_names",
        "acked_at",
        "acked_version",
        "acks",
        "answered_nonce",
        "bytes_sent",
        "full_state",
        "last_nack",
        "last_response",
        "legacy_wildcard",
        "nacks",
        "names",
        "nonce",
        "responses",
        "sent",
        "type_url",
        "version_sent",
        "wildcard",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.full_state = TYPES[type_url].full_state
        """SotW responses carry every subscribed resource (LDS, CDS; xDS spec)."""
        self.wildcard = False
        self.names: set[str] = set()
        self.legacy_wildcard = True
        self.nonce = ""
        self.answered_nonce = ""
        self.version_sent = ""
        self.acked_version = ""
        self.acked_at: float | None = None
        """`time.time()` of the last ACK on this stream."""
        self.last_nack: NackStatus | None = None
        # The latest response: what an ACK or NACK answers (its names are the suspects).
        self.last_response: SentResponse | None = None
        self._last_sotw_names: list[str] | None = None
        self.responses = 0
        self.bytes_sent = 0
        self.acks = 0
        self.nacks = 0
        # Delta only: the version of every resource the proxy holds, as far as we know.
        self.sent: dict[str, str] = {}

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def interest(self, names: Iterable[str]) -> set[str]:
        """The subset of `names` this subscription covers."""
        if self.wildcard:
            return set(names)
        return {name for name in names if name in self.names}

    def update_sotw(self, resource_names: Iterable[str]) -> SubscriptionChange:
        """Replace the subscription with a SotW request's full list of names.

        Envoy repeats the whole list on every ACK (10,000 names at 10,000
        clusters); an unchanged list is recognised by one C-level comparison
        instead of rebuilding a set.
        """
        if self._last_sotw_names is not None and resource_names == self._last_sotw_names:
            return SubscriptionChange()
        self._last_sotw_names = list(resource_names)
        requested = set(self._last_sotw_names)
        if self.legacy_wildcard and not requested:
            return self._become_wildcard()
        self.legacy_wildcard = False
        wildcard = WILDCARD in requested
        requested.discard(WILDCARD)
        change = SubscriptionChange(
            added=frozenset(requested - self.names),
            became_wildcard=wildcard and not self.wildcard,
            names_read=len(self._last_sotw_names),
        )
        self.wildcard = wildcard
        self.names = requested
        return change

    def update_delta(
        self, subscribe: Iterable[str], unsubscribe: Iterable[str]
    ) -> SubscriptionChange:
        """Apply a Delta request's subscribe and unsubscribe lists.

        Names the proxy drops are forgotten from `sent`: Envoy deletes them
        from its cache, so a later subscription must deliver them again and
        a later deletion must not be announced.

        Both lists are applied as sets, subscriptions first (a name in both
        ends unsubscribed): a request may name 100,000 resources.
        """
        requested = set(subscribe)
        if self.legacy_wildcard and not requested:
            change = self._become_wildcard()
        else:
            became_wildcard = False
            if requested:
                self.legacy_wildcard = False
            if WILDCARD in requested:
                requested.discard(WILDCARD)
                became_wildcard = not self.wildcard
                self.wildcard = True
            added = requested - self.names
            self.names |= added
            change = SubscriptionChange(frozenset(added), became_wildcard)
        gone = set(unsubscribe)
        drops_wildcard = WILDCARD in gone
        gone.discard(WILDCARD)
        self.names -= gone
        if drops_wildcard:
            self.legacy_wildcard = False
            if self.wildcard:
                self.wildcard = False
                self.sent = {n: v for n, v in self.sent.items() if n in self.names}
                return change
        if not self.wildcard:
            for name in gone:
                self.sent.pop(name, None)
        return change

    def _become_wildcard(self) -> SubscriptionChange:
        was_wildcard = self.wildcard
        self.wildcard = True
        return SubscriptionChange(became_wildcard=not was_wildcard)

    def status(self) -> TypeStatus:
        return TypeStatus(
            type_url=self.type_url,
            wildcard=self.wildcard,
            names=tuple(sorted(self.names)),
            version_sent=self.version_sent,
            nonce=self.nonce,
            acked_version=self.acked_version,
            last_nack=self.last_nack,
            responses=self.responses,
            bytes_sent=self.bytes_sent,
            acks=self.acks,
            nacks=self.nacks,
            acked_at=None if self.acked_at is None else datetime.fromtimestamp(self.acked_at, UTC),
        )
