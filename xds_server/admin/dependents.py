"""`/api/objects/{kind}/{namespace}/{name}`: what one source object feeds, and who holds it.

`explain` goes from a proxy's resource to the objects behind it; this is the
other direction, read from the pipeline's dependency index
(`SnapshotBuilder.dependents`): the generator units that read the object
(and so re-run when it changes), the resources they built, and the proxies
holding each one.  It answers "what does this Service reach?" before an edit,
as `xds-server affected Service/ns/name`.

The index records what a unit *read*, which is wider than what it was made
from: a proxy's own listeners read every Service of its namespace (a selector
scan), so a new Service there lists them even if it selects nothing.  That is
the honest answer to "what would re-translate", and `explain` says which of
them the object actually made.

`gather` runs on the event loop (the builder, the cache and the index at one
moment) and returns frozen values; `render` turns them into JSON in a worker
thread.  Bounded like every admin response: one page of resources and of
proxies (`?offset=&limit=`, totals per list), at most `MAX_NAMES_SHOWN` units
and holders per resource, with their totals.  An object nothing depends on is
empty lists, and `in_mesh` says whether the mesh holds it at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from xds_server.admin.models import ApiModel, SourceObject
from xds_server.admin.paging import Page, shown_names
from xds_server.admin.views import short_name
from xds_server.cache import Snapshot
from xds_server.model import Kind, MeshSnapshot, ObjectKey
from xds_server.provenance import SourceRef

if TYPE_CHECKING:
    from xds_server.pipeline.builder import SnapshotBuilder

logger = logging.getLogger(__name__)

KIND_NAMES: dict[str, Kind] = {
    **{kind.value.lower(): kind for kind in Kind},
    **{f"{kind.value.lower()}s": kind for kind in Kind},
    "svc": Kind.SERVICE,
    "po": Kind.WORKLOAD,
}
"""How a kind may be named (any case): as manifests do, plural, or kubectl's short name."""


def parse_kind(text: str) -> Kind:
    """`Service`, `services`, `svc`, `EndpointSlice`, `pod`, ...; ValueError naming the kinds."""
    kind = KIND_NAMES.get(text.strip().lower())
    if kind is None:
        kinds = ", ".join(k.value for k in Kind)
        raise ValueError(f"unknown kind {text!r}: expected one of {kinds}")
    return kind


# -- what the view gathers ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldResource:
    type_url: str
    name: str
    proxies: tuple[str, ...]
    """The proxies whose served snapshot holds this resource, as built from the object."""


@dataclass(frozen=True, slots=True)
class ObjectDependents:
    """What depends on one source object, at one moment."""

    key: ObjectKey
    source: SourceRef | None
    """The object as the mesh holds it (with where it was read); None if it holds none."""
    units: tuple[str, ...]
    """The generator units that read it (`deps.unit_name`)."""
    resources: tuple[HeldResource, ...]
    proxies: tuple[str, ...]
    """The proxies holding anything built from it."""


@runtime_checkable
class DependentsView(Protocol):
    """What a view offers for `/api/objects/...` (`ControlPlane` implements it)."""

    def dependents(self, key: ObjectKey) -> ObjectDependents: ...


def _mesh_object_ref(mesh: MeshSnapshot, key: ObjectKey) -> SourceRef | None:
    obj = mesh.table(key.kind).get((key.namespace, key.name))
    if obj is None:
        return None
    return SourceRef(key.kind.value, key.namespace, key.name, obj.origin)


def _unit_holders(unit: tuple[str, ...], namespaces: Mapping[str, str]) -> Iterable[str]:
    """The proxies whose snapshots layer in what `unit` builds (as the builder composes
    them: a Service's sets are shared by all, a route table by its namespace's proxies)."""
    scope = unit[0]
    if scope == "proxy":
        return (unit[1],) if unit[1] in namespaces else ()
    if scope == "routes":
        return (node for node, namespace in namespaces.items() if namespace == unit[1])
    return namespaces


def gather(
    key: ObjectKey,
    builder: SnapshotBuilder,
    snapshot_of: Callable[[str], Snapshot | None],
) -> ObjectDependents:
    """What depends on `key` now: run on the loop that applies batches (one moment)."""
    from xds_server.pipeline.deps import unit_name

    found, _ = builder.dependents(key)
    units = set(found.units)
    namespaces = {node: proxy.namespace for node, proxy in builder.proxies.items()}
    proxies: set[str] = set()
    holders: dict[tuple[str, str], set[str]] = {}
    for unit in units:
        built = builder.index.built_by(unit)
        for resource in built:
            holders.setdefault(resource, set())
        for node in _unit_holders(unit, namespaces):
            proxies.add(node)
            snapshot = snapshot_of(node)
            if snapshot is None:
                continue
            for type_url, name in built:
                if name in snapshot.get(type_url):
                    holders[type_url, name].add(node)
    return ObjectDependents(
        key=key,
        source=_mesh_object_ref(builder.mesh, key),
        units=tuple(unit_name(unit) for unit in sorted(units)),
        resources=tuple(
            HeldResource(type_url, name, tuple(sorted(holders[type_url, name])))
            for type_url, name in sorted(holders)
        ),
        proxies=tuple(sorted(proxies)),
    )


# -- the models -----------------------------------------------------------------------------


class DependentResource(ApiModel):
    type: str
    """The short type name (CDS, EDS, LDS, RDS, ...)."""
    type_url: str
    name: str
    proxies: list[str]
    """The proxies holding it (at most `MAX_NAMES_SHOWN`)."""
    proxies_total: int


class DependentsResponse(ApiModel):
    key: str
    """`Kind/namespace/name`."""
    object: SourceObject
    """The object, with where it was read when the mesh holds it."""
    in_mesh: bool
    units: list[str]
    """The generator units that read it (at most `MAX_NAMES_SHOWN`)."""
    units_total: int
    resources: list[DependentResource]
    """One page, in push order's type URL then name (as the index sorts them)."""
    proxies: list[str]
    """One page of the proxies holding anything built from it."""
    offset: int
    limit: int
    total: dict[str, int]
    """Per list: `resources` and `proxies`."""
    next_offset: int | None


def response(found: ObjectDependents, page: Page) -> DependentsResponse:
    key = found.key
    source = found.source or SourceRef(key.kind.value, key.namespace, key.name)
    totals = {"resources": len(found.resources), "proxies": len(found.proxies)}
    return DependentsResponse(
        key=source.key,
        object=SourceObject.model_validate(source.as_json()),
        in_mesh=found.source is not None,
        units=shown_names(found.units),
        units_total=len(found.units),
        resources=[
            DependentResource(
                type=short_name(held.type_url),
                type_url=held.type_url,
                name=held.name,
                proxies=shown_names(held.proxies),
                proxies_total=len(held.proxies),
            )
            for held in page.of(found.resources)
        ],
        proxies=page.of(found.proxies),
        offset=page.offset,
        limit=page.limit,
        total=totals,
        next_offset=page.next_offset(max(totals.values())),
    )


def render(found: ObjectDependents, page: Page) -> bytes:
    """The JSON body (run in a worker thread)."""
    body = response(found, page).model_dump(mode="json", by_alias=True)
    return json.dumps(body, separators=(",", ":")).encode()
