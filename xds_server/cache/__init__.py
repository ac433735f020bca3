"""Versioned, immutable xDS snapshots per node, generic over protobuf resources."""

from xds_server.cache.resource_set import (
    LayeredResources,
    ResourceMap,
    ResourceSet,
    changed_names,
    version_of,
)
from xds_server.cache.snapshot import InconsistentSnapshotError, Snapshot, find_problems
from xds_server.cache.snapshot_cache import SnapshotCache

__all__ = [
    "InconsistentSnapshotError",
    "LayeredResources",
    "ResourceMap",
    "ResourceSet",
    "Snapshot",
    "SnapshotCache",
    "changed_names",
    "find_problems",
    "version_of",
]
