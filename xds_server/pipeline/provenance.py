"""Provenance of built resources: the source objects named, with where they were read.

Translation stamps the keys of the objects behind a resource into its Envoy
metadata (`filter_metadata["xds-server"].sources`); here they are resolved
against the mesh into `SourceRef`s carrying each object's `Origin` (file and
document, or uid and resourceVersion) and put on the `Resource`, outside its
version.  A `RefCache` shared across batches keeps one SourceRef per object
value, so naming the 10,000 Services behind a route table costs a lookup each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from google.protobuf.message import Message

from xds_server.model import Kind, MeshSnapshot
from xds_server.model.changes import KIND_OF_TYPE, MeshObject
from xds_server.provenance import SourceRef
from xds_server.translate.provenance import stamped_sources

logger = logging.getLogger(__name__)

RefCache = dict[str, tuple[object, SourceRef]]
"""By "Kind/ns/name": the object a SourceRef was made for, and the SourceRef."""

_KIND_OF_VALUE = {kind.value: kind for kind in Kind}


class Provenance:
    """Resolves source keys against one mesh snapshot."""

    def __init__(self, mesh: MeshSnapshot, cache: RefCache | None = None) -> None:
        self._mesh = mesh
        self._cache: RefCache = cache if cache is not None else {}
        self._lists: dict[tuple[str, ...], tuple[SourceRef, ...]] = {}
        self._tables: dict[Kind, Any] = {kind: mesh.table(kind) for kind in Kind}

    def ref(self, key: str) -> SourceRef:
        """The SourceRef of "Kind/ns/name", with its origin if the mesh holds it."""
        kind_name, _, rest = key.partition("/")
        namespace, _, name = rest.partition("/")
        kind = _KIND_OF_VALUE.get(kind_name)
        obj = self._tables[kind].get((namespace, name)) if kind is not None else None
        known = self._cache.get(key)
        if known is not None and known[0] is obj:
            return known[1]
        ref = SourceRef(kind_name, namespace, name, getattr(obj, "origin", None))
        if obj is not None:
            self._cache[key] = (obj, ref)
        return ref

    def refs_of(self, objects: Iterable[MeshObject]) -> tuple[SourceRef, ...]:
        refs = []
        for obj in objects:
            kind = _kind_of(obj)
            refs.append(self.ref(f"{kind.value}/{obj.namespace}/{obj.name}"))
        return tuple(refs)

    def refs(self, keys: Iterable[str]) -> tuple[SourceRef, ...]:
        return tuple(self.ref(key) for key in keys)

    def refs_of_keys(self, keys: tuple[str, ...]) -> tuple[SourceRef, ...]:
        """`refs(keys)`, once per distinct key list on this snapshot.

        Every namespace's route table names (nearly) the same 10,000 Services:
        resolving them once, not once per namespace, is what keeps a Service
        change in a 20-namespace mesh from costing 20 x 10,000 lookups.
        """
        found = self._lists.get(keys)
        if found is None:
            found = self._lists[keys] = self.refs(keys)
        return found

    def stamped(self, message: Message) -> tuple[SourceRef, ...]:
        return self.refs(stamped_sources(message))


def _kind_of(obj: MeshObject) -> Kind:
    return KIND_OF_TYPE[type(obj)]
