"""What one Kubernetes watch has seen, as plain state moved forward by pure methods.

`WatchedObjects` holds, for each object of one watch (a kind in a namespace,
or in all), its last resourceVersion, the model value last emitted for it and
its current conversion error.  A full list (`replace`) and each watch event
(`apply_event`) return the `ChangeSet` that takes the mesh from what was
emitted before to what the API server holds now, so:

- a relist after `410 Gone` emits exactly the difference: objects changed or
  added while we were away once each, objects deleted while we were away as
  deletions, unchanged objects not at all;
- an object whose new version fails conversion keeps its last good value in
  force, and the error (naming the object and field) stays until a good
  version or a deletion replaces it;
- every value carries its `Origin` (metadata.uid and metadata.resourceVersion),
  so an update that does not change the model value (a Pod's container
  status, say) is still emitted: the mesh must hold the version in force for
  provenance to name it.  It costs the pipeline no translation (an equal
  value touches nothing); the version we already hold (a relist, a replayed
  event) emits nothing.

No I/O and no threads here; `k8s_watch` owns those.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from xds_server.model import ChangeSet, ObjectKey
from xds_server.model.changes import MeshObject
from xds_server.provenance import Origin
from xds_server.sources.convert import ManifestError, describe

__all__ = ["KubernetesSourceError", "WatchedObjects", "origin_of", "resource_version_of"]

logger = logging.getLogger(__name__)

Converter = Callable[[Mapping[str, Any]], MeshObject | None]


@dataclass(frozen=True, slots=True)
class KubernetesSourceError:
    """A problem the Kubernetes source has now: with one object, or with a whole watch.

    `watch` names the watch (`v1 services in all namespaces`); for an object
    error `object_ref` and `field` say which object and field, as the file
    source's errors do: `v1 services in all namespaces: Service default/web:
    spec.ports[0].port: must be an integer 1-65535, got 0`.
    """

    watch: str
    object_ref: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        return ": ".join(
            part for part in (self.watch, self.object_ref, self.field, self.message) if part
        )


@dataclass(slots=True)
class _Entry:
    resource_version: str
    value: MeshObject | None
    error: KubernetesSourceError | None = None


def resource_version_of(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping):
        version = metadata.get("resourceVersion")
        if isinstance(version, str):
            return version
    return ""


def origin_of(obj: Mapping[str, Any]) -> Origin:
    """Where an API object was read: its uid and resourceVersion (None when missing)."""
    metadata = obj.get("metadata")
    uid = metadata.get("uid") if isinstance(metadata, Mapping) else None
    return Origin(uid=uid if isinstance(uid, str) and uid else None,
                  resource_version=resource_version_of(obj) or None)  # fmt: skip


def _name_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace") or ""
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return namespace, name


class WatchedObjects:
    """The objects of one watch as last seen; turns lists and events into ChangeSets."""

    def __init__(self, watch: str, api_version: str, kind: str, convert: Converter) -> None:
        self.watch = watch
        self._api_version = api_version
        self._kind = kind
        self._convert = convert
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._unnamed: KubernetesSourceError | None = None
        self.resource_version: str | None = None
        """Where the next watch resumes; None until the first list."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def errors(self) -> tuple[KubernetesSourceError, ...]:
        found = [entry.error for entry in self._entries.values() if entry.error is not None]
        if self._unnamed is not None:
            found.append(self._unnamed)
        return tuple(sorted(found, key=str))

    def values(self) -> dict[ObjectKey, MeshObject]:
        """The model values currently in force (for tests and diagnostics)."""
        return {
            ObjectKey.of(entry.value): entry.value
            for entry in self._entries.values()
            if entry.value is not None
        }

    def replace(self, items: Iterable[Mapping[str, Any]], resource_version: str) -> ChangeSet:
        """A full list at `resource_version`: the changes since what we held before."""
        changes = ChangeSet()
        listed: set[tuple[str, str]] = set()
        self._unnamed = None
        for item in items:
            name = self._upsert(item, changes)
            if name is not None:
                listed.add(name)
        for name in self._entries.keys() - listed:
            self._remove(name, changes)
        self.resource_version = resource_version
        return changes

    def apply_event(self, event_type: str, obj: Mapping[str, Any]) -> ChangeSet:
        """One ADDED, MODIFIED or DELETED watch event."""
        changes = ChangeSet()
        if event_type == "DELETED":
            name = _name_of(obj)
            if name is not None:
                self._remove(name, changes)
        else:
            self._upsert(obj, changes)
        version = resource_version_of(obj)
        if version:
            self.resource_version = version
        return changes

    def bookmark(self, resource_version: str) -> None:
        """The server says everything up to `resource_version` has been sent."""
        if resource_version:
            self.resource_version = resource_version

    # -- one object --------------------------------------------------------
    def _manifest(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """List items come without apiVersion and kind; conversion needs both."""
        if "apiVersion" in obj and "kind" in obj:
            return obj
        return {"apiVersion": self._api_version, "kind": self._kind, **obj}

    def _upsert(self, obj: Mapping[str, Any], changes: ChangeSet) -> tuple[str, str] | None:
        manifest = self._manifest(obj)
        name = _name_of(manifest)
        if name is None:
            ref, _ = describe(manifest)
            self._unnamed = KubernetesSourceError(
                self.watch, ref, "metadata.name", "the API server sent an object without a name"
            )
            return None
        version = resource_version_of(manifest)
        entry = self._entries.get(name)
        if entry is not None and version and entry.resource_version == version:
            return name  # the very version we already hold
        previous = entry.value if entry is not None else None
        try:
            value = self._convert(manifest)
        except ManifestError as error:
            problem = KubernetesSourceError(
                self.watch, error.object_ref, error.field, error.message
            )
            self._entries[name] = _Entry(version, previous, problem)
            return name
        except Exception as error:  # a bug in conversion must not stop the watch
            logger.exception("%s: converting %s/%s failed", self.watch, *name)
            ref, _ = describe(manifest)
            problem = KubernetesSourceError(self.watch, ref, None, f"conversion failed: {error!r}")
            self._entries[name] = _Entry(version, previous, problem)
            return name
        if value is not None:
            value = replace(value, origin=origin_of(manifest))
        self._entries[name] = _Entry(version, value)
        if previous is not None and (
            value is None or ObjectKey.of(value) != ObjectKey.of(previous)
        ):
            changes.delete(ObjectKey.of(previous))  # no longer a mesh object, or another key
        if value is not None and (value != previous or value.origin != previous.origin):
            changes.upsert(value)
        return name

    def _remove(self, name: tuple[str, str], changes: ChangeSet) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None and entry.value is not None:
            changes.delete(ObjectKey.of(entry.value))
