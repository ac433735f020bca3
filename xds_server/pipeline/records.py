"""What the pipeline tells the outside about its work: generations pushed and dry runs.

Values only, frozen, so the admin view and push history can keep and render
them without copying.  `SnapshotBuilder` produces both: a `GenerationRecord`
each time a batch is committed (to `SnapshotBuilder.on_generation`), and a
`Preview` from `SnapshotBuilder.preview(changes)`, which translates a proposed
ChangeSet on a copy of the state and commits nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from xds_server.provenance import SourceRef
from xds_server.resources import Resource

ChangeKind = Literal["added", "changed", "removed"]


@dataclass(frozen=True, slots=True)
class Trigger:
    """One source object change that a generation applied."""

    change: Literal["upserted", "deleted"]
    source: SourceRef


@dataclass(frozen=True, slots=True)
class ProxyPush:
    """What one proxy's new snapshot changed, by type URL."""

    node_id: str
    snapshot_version: str
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Names added or changed, by type URL (types with none are absent)."""
    removed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Names removed, by type URL."""


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """One committed batch: what triggered it, what it changed, who was given what."""

    generation: int
    observed_at: float | None
    """`time.time()` when a source first saw a change of this batch (None: unknown)."""
    committed_at: float
    triggers: tuple[Trigger, ...]
    proxies: tuple[ProxyPush, ...]
    """Every proxy whose snapshot changed (proxies whose resources did not are absent)."""
    units: tuple[str, ...] = ()
    """The generator units that ran (`service:ns/name`, `routes:ns`, `proxy:node`)."""

    @property
    def snapshot_version(self) -> str:
        return str(self.generation)


@dataclass(frozen=True, slots=True)
class ResourceChange:
    type_url: str
    name: str
    change: ChangeKind
    before: Resource | None
    after: Resource | None


@dataclass(frozen=True, slots=True)
class Preview:
    """What a proposed ChangeSet would do, proxy by proxy, if it were applied now."""

    proxies: Mapping[str, tuple[ResourceChange, ...]]
    """Node id -> the resources that would change for it (proxies with none are absent)."""
    errors: tuple[tuple[str, str], ...] = ()
    """(object, error) for proposed objects translation would leave out."""
