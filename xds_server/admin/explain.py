"""Why a proxy has each resource: the source objects behind what it is served.

Every `Resource` in a proxy's snapshot carries its provenance (the Services,
EndpointSlices and Pods it was made from, with the file document or
Kubernetes object version each was read from).  A route configuration made
for a whole namespace names no objects itself: its virtual hosts do, in the
metadata translation stamps on them (`filter_metadata["xds-server"]`), so
those are read back from the resource's bytes and each key is resolved to the
object (and its origin) the snapshot holds.

Everything is bounded like the rest of the admin: one page of resources
(`?offset=&limit=`), at most `MAX_NAMES_SHOWN` sources and virtual hosts per
resource with their totals.  It is pure: the app runs it in a worker thread
on the snapshot it gathered on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from envoy.config.route.v3 import route_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from xds_server.admin.models import (
    ExplainResult,
    Generator,
    ResourceExplain,
    SourceObject,
    VirtualHostExplain,
)
from xds_server.admin.paging import FIRST_PAGE, MAX_NAMES_SHOWN, Page, shown, shown_names
from xds_server.admin.views import short_name
from xds_server.cache import Snapshot
from xds_server.provenance import PROVENANCE_KEY, SourceRef
from xds_server.resources import PUSH_ORDER, Resource, unpack

logger = logging.getLogger(__name__)

SOURCES = "sources"
GENERATOR = "generator"
NAMESPACE = "namespace"


def explain(
    node_id: str,
    snapshot: Snapshot | None,
    type_urls: Sequence[str] = PUSH_ORDER,
    name: str | None = None,
    page: Page = FIRST_PAGE,
) -> ExplainResult:
    """One page of the resources of `type_urls` (only those called `name`, if given),
    in push order then by name, each with the source objects that made it."""
    matching = list(_resources(snapshot, type_urls, name)) if snapshot is not None else []
    known: dict[str, SourceRef] | None = None

    def objects() -> Mapping[str, SourceRef]:
        nonlocal known
        if known is None:  # only when a virtual host names an object its table does not
            assert snapshot is not None
            known = _all_sources(snapshot)
        return known

    return ExplainResult(
        node_id=node_id,
        snapshot_version=snapshot.version if snapshot is not None else None,
        resources=[resource_explain(resource, objects) for resource in page.of(matching)],
        offset=page.offset,
        limit=page.limit,
        total=len(matching),
        next_offset=page.next_offset(len(matching)),
    )


def resource_explain(
    resource: Resource, objects: Callable[[], Mapping[str, SourceRef]] | None = None
) -> ResourceExplain:
    """One resource's sources, generator stamp and (for a route table) virtual hosts."""
    message = unpack(resource)
    own = {ref.key: ref for ref in resource.provenance}
    routes = message.virtual_hosts if isinstance(message, route_pb2.RouteConfiguration) else ()
    virtual_hosts = list(routes)

    def resolve(key: str) -> SourceObject:
        ref = own.get(key)
        if ref is None and objects is not None:
            ref = objects().get(key)
        return source_object(ref if ref is not None else _parse(key))

    return ResourceExplain(
        type=short_name(resource.type_url),
        type_url=resource.type_url,
        name=shown(resource.name),
        version=resource.version,
        sources=[source_object(ref) for ref in resource.provenance[:MAX_NAMES_SHOWN]],
        sources_total=len(resource.provenance),
        generator=_generator(message),
        virtual_hosts=[
            VirtualHostExplain(
                name=shown(host.name),
                domains=shown_names(list(host.domains)),
                sources=[resolve(key) for key in _stamped_keys(host)[:MAX_NAMES_SHOWN]],
            )
            for host in virtual_hosts[:MAX_NAMES_SHOWN]
        ],
        virtual_hosts_total=len(virtual_hosts),
    )


def source_object(ref: SourceRef) -> SourceObject:
    return SourceObject.model_validate(ref.as_json())


def _resources(
    snapshot: Snapshot, type_urls: Iterable[str], name: str | None
) -> Iterable[Resource]:
    for type_url in type_urls:
        resources = snapshot.get(type_url)
        if name is not None:
            found = resources.get(name)
            if found is not None:
                yield found
            continue
        for resource_name in sorted(resources):
            yield resources[resource_name]


def _all_sources(snapshot: Snapshot) -> dict[str, SourceRef]:
    """Every source object any resource of the snapshot names, by key."""
    found: dict[str, SourceRef] = {}
    for type_url in PUSH_ORDER:
        for resource in snapshot.get(type_url).values():
            for ref in resource.provenance:
                if ref.origin is not None or ref.key not in found:
                    found[ref.key] = ref
    return found


def _stamp(message: Message) -> struct_pb2.Struct | None:
    metadata = getattr(message, "metadata", None)
    if metadata is None or PROVENANCE_KEY not in metadata.filter_metadata:
        return None
    stamp: struct_pb2.Struct = metadata.filter_metadata[PROVENANCE_KEY]
    return stamp


def _stamped_keys(message: Message) -> list[str]:
    stamp = _stamp(message)
    if stamp is None or SOURCES not in stamp.fields:
        return []
    return [value.string_value for value in stamp.fields[SOURCES].list_value.values]


def _generator(message: Message) -> Generator | None:
    stamp = _stamp(message)
    if stamp is None or GENERATOR not in stamp.fields:
        return None
    namespace = stamp.fields[NAMESPACE].string_value if NAMESPACE in stamp.fields else None
    return Generator(generator=stamp.fields[GENERATOR].string_value, namespace=namespace)


def _parse(key: str) -> SourceRef:
    """A stamped key the snapshot has no object for (kept whole if it is not Kind/ns/name)."""
    try:
        return SourceRef.parse(key)
    except ValueError:
        return SourceRef(kind="", namespace="", name=shown(key))
