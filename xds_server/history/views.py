"""The values push history shows: frozen, so the admin renders them off the event loop.

`PushHistory` builds them on demand from its live records (`pushes()`,
`push(generation)`); every list of names in them is bounded (`NameList` keeps
the first names and the total).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from xds_server.pipeline.records import Trigger

ProxyStatus = Literal["pending", "acked", "nacked", "superseded", "disconnected"]
"""pending: sent (or about to be), no answer yet; superseded: a newer generation
replaced it before the proxy answered; disconnected: its last stream closed first."""
Answer = Literal["pending", "acked", "nacked"]


@dataclass(frozen=True, slots=True)
class NameList:
    """At most `max_names` names, and how many there were in all."""

    names: tuple[str, ...] = ()
    total: int = 0

    @classmethod
    def of(cls, names: Iterable[str], limit: int) -> NameList:
        listed = list(names)
        return cls(tuple(listed[:limit]), len(listed))


@dataclass(frozen=True, slots=True)
class SentType:
    """What one proxy was sent of one type from one generation (all its responses)."""

    type_url: str
    version: str
    nonce: str
    """The latest response's nonce."""
    names: NameList
    removed: NameList
    bytes: int
    responses: int
    sent_at: float
    answer: Answer = "pending"
    answered_at: float | None = None


@dataclass(frozen=True, slots=True)
class ProxyPushView:
    """One proxy's part in one generation."""

    node_id: str
    snapshot_version: str
    status: ProxyStatus
    sent: tuple[SentType, ...]
    acked_at: float | None
    nacked_at: float | None
    nack_type: str | None
    nack_message: str | None
    latency: float | None
    """Seconds from the generation's `observed_at` to this proxy's ACK (or NACK)."""


@dataclass(frozen=True, slots=True)
class PushCounts:
    """How many proxies the generation changed, and where each stands."""

    proxies: int = 0
    sent: int = 0
    """Proxies sent at least one response from the generation."""
    acked: int = 0
    nacked: int = 0
    superseded: int = 0
    disconnected: int = 0

    @property
    def pending(self) -> int:
        return self.proxies - self.acked - self.nacked - self.superseded - self.disconnected


@dataclass(frozen=True, slots=True)
class PushSummary:
    """One generation as listed: triggers, resources changed, counts and ACK latencies."""

    generation: int
    observed_at: float | None
    committed_at: float
    triggers: tuple[Trigger, ...]
    triggers_total: int
    changed: Mapping[str, NameList]
    """Resources added or changed, by type URL, deduplicated across proxies."""
    removed: Mapping[str, NameList]
    counts: PushCounts
    fastest_ack: float | None
    """Seconds from `observed_at` to the first proxy's ACK (None: none yet, or unknown)."""
    slowest_ack: float | None
    """... to the latest proxy's ACK so far."""


@dataclass(frozen=True, slots=True)
class PushDetail:
    summary: PushSummary
    proxies: tuple[ProxyPushView, ...]
    """The first `max_proxies` proxies of the generation; `summary.counts` counts them all."""
