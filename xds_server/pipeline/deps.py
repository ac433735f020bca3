"""The dependency index: from source object facts to the units built from them.

A *unit* is one run of one generator over one scope instance (a Service's
clusters, a namespace's route table, a proxy's own listeners).  Each unit
reports what it read (`reads.Fact`) and what it built; the index keeps

* fact -> units that read it (what a change must re-run),
* unit -> facts it read (so a re-run replaces, never accumulates),
* unit -> resources it built, as (type URL, name),

and answers, for a source object, which units, resources and proxies depend on
it.  It holds only keys and names: memory is proportional to what is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xds_server.model import ObjectKey
from xds_server.pipeline.reads import SURFACES, Fact, object_fact

logger = logging.getLogger(__name__)

Unit = tuple[str, ...]
"""("service", namespace, name) | ("routes", namespace) | ("proxy", node_id)."""
ResourceKey = tuple[str, str]
"""(type URL, name)."""


def unit_name(unit: Unit) -> str:
    """`service:ns/name`, `routes:ns`, `proxy:node-id`: how history and the admin show a unit."""
    scope, *rest = unit
    return f"{scope}:{'/'.join(rest)}"


@dataclass(frozen=True, slots=True)
class Dependents:
    """What depends on one source object."""

    units: tuple[Unit, ...]
    resources: tuple[ResourceKey, ...]


class _Shared:
    """Equal frozensets stored once, counted, dropped with their last holder.

    Proxies of one namespace and labels read the same facts and build the
    same names: sharing the sets keeps the index at a few pointers per proxy.
    """

    def __init__(self) -> None:
        self._sets: dict[frozenset[Any], list[Any]] = {}

    def take(self, items: Iterable[Any]) -> frozenset[Any]:
        value = frozenset(items)
        if not value:
            return _EMPTY
        entry = self._sets.get(value)
        if entry is None:
            entry = self._sets[value] = [value, 0]
        entry[1] += 1
        shared: frozenset[Any] = entry[0]
        return shared

    def release(self, value: frozenset[Any]) -> None:
        entry = self._sets.get(value) if value else None
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._sets[value]

    def __len__(self) -> int:
        return len(self._sets)


_EMPTY: frozenset[Any] = frozenset()


class DependencyIndex:
    """Fact -> read sets holding it -> the units that read exactly that set.

    Units are grouped by their (shared) read set: the proxies of one namespace
    and shape read the same facts, so each costs one membership, not one per
    fact, and a lookup walks a handful of groups.
    """

    def __init__(self) -> None:
        self._readers: dict[Fact, set[frozenset[Fact]]] = {}
        self._holders: dict[frozenset[Fact], tuple[frozenset[Fact], set[Unit]]] = {}
        """By read set: the one stored copy of it, and the units that read exactly it."""
        self._units: dict[Unit, tuple[frozenset[Fact], frozenset[ResourceKey]]] = {}
        self._built = _Shared()
        self._views: dict[str, int] = {}
        """Compared view -> how many read sets name it (kept, not scanned for)."""

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, unit: object) -> bool:
        return unit in self._units

    def record(self, unit: Unit, reads: Iterable[Fact], built: Iterable[ResourceKey]) -> None:
        """`unit` ran, read `reads` and built `built` (replacing what it had)."""
        self._forget(unit)
        self._units[unit] = (self._join(unit, frozenset(reads)), self._built.take(built))

    def drop(self, unit: Unit) -> None:
        self._forget(unit)

    def _join(self, unit: Unit, reads: frozenset[Fact]) -> frozenset[Fact]:
        if not reads:
            return _EMPTY
        entry = self._holders.get(reads)
        if entry is None:
            entry = self._holders[reads] = (reads, set())
            for fact in reads:
                self._readers.setdefault(fact, set()).add(reads)
                if fact[0] == "view":
                    self._views[fact[1]] = self._views.get(fact[1], 0) + 1
        entry[1].add(unit)
        return entry[0]

    def _forget(self, unit: Unit) -> None:
        known = self._units.pop(unit, None)
        if known is None:
            return
        reads, built = known
        self._built.release(built)
        entry = self._holders.get(reads) if reads else None
        if entry is None:
            return
        entry[1].discard(unit)
        if entry[1]:
            return
        del self._holders[reads]
        for fact in reads:
            groups = self._readers.get(fact)
            if groups is not None:
                groups.discard(reads)
                if not groups:
                    del self._readers[fact]
            if fact[0] == "view":
                left = self._views.get(fact[1], 0) - 1
                if left > 0:
                    self._views[fact[1]] = left
                else:
                    self._views.pop(fact[1], None)

    def hit(self, facts: Iterable[Fact]) -> set[Unit]:
        """Every unit that read any of `facts`."""
        units: set[Unit] = set()
        for fact in facts:
            for reads in self._readers.get(fact, ()):
                units |= self._holders[reads][1]
        return units

    def built_by(self, unit: Unit) -> frozenset[ResourceKey]:
        known = self._units.get(unit)
        return known[1] if known is not None else frozenset()

    def views_read(self) -> list[str]:
        """The compared views some unit reads."""
        return sorted(self._views)

    def units(self) -> list[Unit]:
        return list(self._units)

    def dependents(self, key: ObjectKey, also: Iterable[Fact] = ()) -> Dependents:
        """The units that read `key` (itself, its namespace, its kind, one of the kind's
        surfaces, or the facts in `also`), and what they built."""
        facts: set[Fact] = {
            object_fact(key),
            ("ns", key.kind, key.namespace),
            ("all", key.kind),
            *(("all", key.kind, surface) for surface in SURFACES.get(key.kind, {})),
            *also,
        }
        units = sorted(self.hit(facts))
        resources = sorted({r for unit in units for r in self.built_by(unit)})
        return Dependents(tuple(units), tuple(resources))
