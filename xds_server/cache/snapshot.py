"""Per-proxy snapshots: every resource a proxy should have, by type, checked whole.

A snapshot is immutable.  Before one is served it must be consistent: every
reference a resource makes (an EDS cluster's load assignment, a listener's
route configuration) resolves inside the same snapshot, and every
ClusterLoadAssignment belongs to a cluster.  An inconsistent snapshot is
refused and the proxy keeps the last good one.

What may reference what is the type registry's (`XdsType.references`): a
reference to a type its registry entry does not declare is a problem too, so
push order (which relies on the registry) can never leave it dangling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xds_server.cache.resource_set import ResourceMap, changed_names, version_of
from xds_server.resources import CLUSTER, ENDPOINT, TYPES, Resource, load_assignment_owner


class InconsistentSnapshotError(ValueError):
    """A snapshot whose resources reference names it does not contain."""

    def __init__(self, node_id: str, problems: list[str]) -> None:
        self.node_id = node_id
        self.problems = problems
        shown = "; ".join(problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"inconsistent snapshot for {node_id}: {shown}{more}")


_NO_RESOURCES: Mapping[str, Resource] = {}


@dataclass(frozen=True)
class Snapshot:
    """All resources of one proxy, keyed by type URL then name."""

    resources: Mapping[str, ResourceMap] = field(default_factory=dict)
    version: str = ""

    def get(self, type_url: str) -> ResourceMap:
        return self.resources.get(type_url, _NO_RESOURCES)

    def type_version(self, type_url: str) -> str:
        return version_of(self.get(type_url))

    def changed(self, older: Snapshot | None, type_url: str) -> frozenset[str]:
        """Names of `type_url` that differ from `older` (all names if there is none)."""
        return changed_names(older.get(type_url) if older is not None else None, self.get(type_url))


def find_problems(snapshot: Snapshot, previous: Snapshot | None = None) -> list[str]:
    """Dangling references in `snapshot`, checked only where it changed since `previous`."""
    problems: list[str] = []
    removed: set[tuple[str, str]] = set()
    for type_url, resources in snapshot.resources.items():
        names = snapshot.changed(previous, type_url)
        for name in sorted(names):
            resource = resources.get(name)
            if resource is None:
                removed.add((type_url, name))
                continue
            declared = _declared_references(type_url)
            for ref_type, ref_name in sorted(resource.refs):
                if ref_type not in declared:
                    problems.append(
                        f"{_short(type_url)} {name!r} references {_short(ref_type)} "
                        f"{ref_name!r}, a type the registry does not declare it references"
                    )
                elif ref_name not in snapshot.get(ref_type):
                    problems.append(
                        f"{_short(type_url)} {name!r} references missing "
                        f"{_short(ref_type)} {ref_name!r}"
                    )
            # EDS names a load assignment after its cluster (a naming rule of the
            # protocol, not a reference the assignment makes), or after a variant
            # of it that some callers' copy of the cluster fetches.
            if type_url == ENDPOINT and load_assignment_owner(name) not in snapshot.get(CLUSTER):
                problems.append(f"EDS {name!r} has no cluster in CDS")
    if previous is not None:
        for type_url in previous.resources:
            if type_url not in snapshot.resources:
                removed.update((type_url, n) for n in previous.get(type_url))
    if removed:
        removed_types = {type_url for type_url, _ in removed}
        for type_url, resources in snapshot.resources.items():
            if removed_types.isdisjoint(_declared_references(type_url)):
                continue  # what this type may reference is all still there
            for resource in resources.values():
                dangling = resource.refs & removed
                for ref_type, ref_name in sorted(dangling):
                    problems.append(
                        f"{_short(type_url)} {resource.name!r} references removed "
                        f"{_short(ref_type)} {ref_name!r}"
                    )
        for type_url, name in sorted(removed):
            if type_url == CLUSTER and name in snapshot.get(ENDPOINT):
                problems.append(f"EDS {name!r} has no cluster in CDS")
    return problems


_REFERENCES: dict[str, tuple[str, ...]] = {url: known.references for url, known in TYPES.items()}


def _declared_references(type_url: str) -> tuple[str, ...]:
    return _REFERENCES.get(type_url, ())


def _short(type_url: str) -> str:
    known = TYPES.get(type_url)
    return known.short_name if known is not None else type_url.rsplit(".", 1)[-1]
