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
    def __init__(self) -> None:
        self._readers: dict[Fact, set[Unit]] = {}
        self._reads: dict[Unit, frozenset[Fact]] = {}
        self._built: dict[Unit, frozenset[ResourceKey]] = {}
        self._shared = _Shared()
        self._views: set[str] = set()
        """The compared views some unit reads (kept, not scanned for: batches ask each time)."""

    def __len__(self) -> int:
        return len(self._reads)

    def __contains__(self, unit: object) -> bool:
        return unit in self._reads

    def record(self, unit: Unit, reads: Iterable[Fact], built: Iterable[ResourceKey]) -> None:
        """`unit` ran, read `reads` and built `built` (replacing what it had)."""
        new = self._shared.take(reads)
        old = self._reads.get(unit, _EMPTY)
        for fact in old - new:
            readers = self._readers.get(fact)
            if readers is not None:
                readers.discard(unit)
                if not readers:
                    del self._readers[fact]
                    if fact[0] == "view":
                        self._views.discard(fact[1])
        for fact in new - old:
            self._readers.setdefault(fact, set()).add(unit)
            if fact[0] == "view":
                self._views.add(fact[1])
        self._shared.release(old)
        self._shared.release(self._built.get(unit, _EMPTY))
        self._reads[unit] = new
        self._built[unit] = self._shared.take(built)

    def drop(self, unit: Unit) -> None:
        self.record(unit, (), ())
        del self._reads[unit]
        del self._built[unit]

    def hit(self, facts: Iterable[Fact]) -> set[Unit]:
        """Every unit that read any of `facts`."""
        units: set[Unit] = set()
        for fact in facts:
            readers = self._readers.get(fact)
            if readers:
                units |= readers
        return units

    def reads_of(self, unit: Unit) -> frozenset[Fact]:
        return self._reads.get(unit, frozenset())

    def built_by(self, unit: Unit) -> frozenset[ResourceKey]:
        return self._built.get(unit, frozenset())

    def views_read(self) -> list[str]:
        """The compared views some unit reads."""
        return sorted(self._views)

    def units(self) -> list[Unit]:
        return list(self._reads)

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
        resources = sorted({r for unit in units for r in self._built.get(unit, ())})
        return Dependents(tuple(units), tuple(resources))
