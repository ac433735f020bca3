"""Provenance: which source objects a resource was made from, and where they live.

A neutral module (it imports nothing of the project) because every layer
speaks it: sources stamp an `Origin` on each object they read, translation
names the objects behind each resource, the cache and server carry the
`SourceRef`s on each `Resource` without looking inside, and the admin view
and CLI show them (`explain`, NACKs named on their manifests).

Provenance is never part of a resource's version: moving a Service to another
file, or a new resourceVersion with the same spec, changes no byte pushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROVENANCE_KEY = "xds-server"
"""The `filter_metadata` key under which resources name their sources in Envoy's config."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a source object was read: a file document, or a Kubernetes object version."""

    file: str | None = None
    """File mode: the manifest's path."""
    document: int | None = None
    """File mode: the YAML document's index in the file, from 0."""
    uid: str | None = None
    """Kubernetes mode: metadata.uid."""
    resource_version: str | None = None
    """Kubernetes mode: metadata.resourceVersion."""

    def as_json(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in (
                ("file", self.file),
                ("document", self.document),
                ("uid", self.uid),
                ("resourceVersion", self.resource_version),
            )
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class SourceRef:
    """One source object behind a resource: kind/namespace/name, and where it was read."""

    kind: str
    namespace: str
    name: str
    origin: Origin | None = None

    @property
    def key(self) -> str:
        """`Kind/namespace/name`: how the object is named in Envoy metadata and the CLI."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        }
        if self.origin is not None:
            shown.update(self.origin.as_json())
        return shown

    def describe(self, *, resource_version: bool = True) -> str:
        """`Service default/web (services.yaml, document 0)`: the object, and where it was
        read.  Without `resource_version` for text that must not change when only the
        object's version does (an error that becomes a status message)."""
        where = []
        origin = self.origin
        if origin is not None:
            if origin.file is not None:
                where.append(origin.file)
            if origin.document is not None:
                where.append(f"document {origin.document}")
            if origin.uid is not None:
                where.append(f"uid {origin.uid}")
            if resource_version and origin.resource_version is not None:
                where.append(f"resourceVersion {origin.resource_version}")
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.kind} {self.namespace}/{self.name}{place}"

    @classmethod
    def parse(cls, key: str) -> SourceRef:
        """The inverse of `key` (names and namespaces hold no '/')."""
        kind, namespace, name = key.split("/", 2)
        return cls(kind, namespace, name)
