"""What a proxy's new snapshot changes, and the shared sets snapshots are layered on.

Pure functions over snapshots, used by the builder both when it publishes
(`proxy_push` and `generation_record`, for push history) and when it
previews a proposed change without publishing (`resource_changes`, for the
dry-run diff).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from xds_server.cache import ResourceSet, Snapshot
from xds_server.model.mesh import NamespacedName
from xds_server.pipeline.deps import Unit, unit_name
from xds_server.pipeline.reads import Changed
from xds_server.pipeline.records import (
    ChangeKind,
    GenerationRecord,
    ProxyPush,
    ResourceChange,
    Trigger,
)
from xds_server.provenance import SourceRef
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource

logger = logging.getLogger(__name__)


class OwnedSet:
    """A shared ResourceSet whose members are owned by services, updated per service."""

    def __init__(self) -> None:
        self.resources = ResourceSet()
        self._owned: dict[NamespacedName, frozenset[str]] = {}

    def copy(self) -> OwnedSet:
        copied = OwnedSet()
        copied.resources, copied._owned = self.resources, dict(self._owned)
        return copied

    def update(self, updates: dict[NamespacedName, list[Resource]]) -> None:
        upserts: list[Resource] = []
        removals: list[str] = []
        for owner, resources in updates.items():
            names = frozenset(r.name for r in resources)
            removals.extend(self._owned.get(owner, frozenset()) - names)
            if names:
                self._owned[owner] = names
            else:
                self._owned.pop(owner, None)
            upserts.extend(resources)
        self.resources = self.resources.evolve(upserts, removals)


def proxy_push(node_id: str, previous: Snapshot | None, snapshot: Snapshot) -> ProxyPush | None:
    """What `snapshot` changes for a proxy that held `previous` (None: nothing)."""
    changed: dict[str, tuple[str, ...]] = {}
    removed: dict[str, tuple[str, ...]] = {}
    for type_url in snapshot.resources.keys() | (previous.resources.keys() if previous else set()):
        names = snapshot.changed(previous, type_url)
        if not names:
            continue
        present = snapshot.get(type_url)
        if kept := tuple(sorted(n for n in names if n in present)):
            changed[type_url] = kept
        if gone := tuple(sorted(n for n in names if n not in present)):
            removed[type_url] = gone
    if not changed and not removed:
        return None
    return ProxyPush(node_id, snapshot.version, changed, removed)


def resource_changes(
    current: Snapshot, proposed: Mapping[str, Mapping[str, Resource]]
) -> tuple[ResourceChange, ...]:
    """Resources added, changed or removed from `current` to `proposed`, in push order."""
    found: list[ResourceChange] = []
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        before = current.get(type_url)
        after = proposed[type_url]
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name), after.get(name)
            if old is not None and new is not None and old.version == new.version:
                continue
            change: ChangeKind = "added" if old is None else "removed" if new is None else "changed"
            found.append(ResourceChange(type_url, name, change, old, new))
    return tuple(found)


def generation_record(
    generation: int,
    observed_at: float | None,
    changed: Iterable[Changed],
    units: Iterable[Unit],
    pushes: list[ProxyPush],
) -> GenerationRecord:
    """The record of a committed batch: its triggers, the units that ran, who got what."""
    triggers = tuple(
        Trigger(
            "deleted" if after is None else "upserted",
            SourceRef(
                key.kind.value, key.namespace, key.name, getattr(after or before, "origin", None)
            ),
        )
        for key, before, after in changed
    )
    return GenerationRecord(
        generation=generation,
        observed_at=observed_at,
        committed_at=time.time(),
        triggers=triggers,
        proxies=tuple(pushes),
        units=tuple(sorted(unit_name(unit) for unit in units)),
    )
