"""xDS type URLs, deterministic serialization and content-hash versions.

A `Resource` is serialized exactly once, when it is built: its `Any` (and the
bytes inside it) are then shared by every snapshot and every proxy that
receives it.  Its version is a hash of those bytes, so two translations that
produce the same proto produce the same version and nothing is re-pushed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

logger = logging.getLogger(__name__)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order in which a push is sent so nothing dangles: a cluster exists before
# its endpoints, a listener before its routes (xDS protocol, "eventual consistency").
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
KNOWN_TYPES: frozenset[str] = frozenset(PUSH_ORDER)

SHORT_NAMES: dict[str, str] = {
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    LISTENER: "LDS",
    ROUTE: "RDS",
    SECRET: "SDS",
}

_TYPE_OF_MESSAGE: dict[str, str] = {
    cluster_pb2.Cluster.DESCRIPTOR.full_name: CLUSTER,
    endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name: ENDPOINT,
    listener_pb2.Listener.DESCRIPTOR.full_name: LISTENER,
    route_pb2.RouteConfiguration.DESCRIPTOR.full_name: ROUTE,
    secret_pb2.Secret.DESCRIPTOR.full_name: SECRET,
}

Ref = tuple[str, str]
"""A reference from one resource to another: (type URL, name)."""


def content_hash(data: bytes) -> str:
    """A short, stable version string for serialized bytes."""
    return hashlib.blake2b(data, digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One named xDS resource, serialized once, versioned by content."""

    type_url: str
    name: str
    version: str
    any: any_pb2.Any = field(repr=False, compare=False)
    refs: frozenset[Ref] = field(default=frozenset(), compare=False)
    _delta: list[discovery_pb2.Resource] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @property
    def size(self) -> int:
        return len(self.any.value)

    def delta_proto(self) -> discovery_pb2.Resource:
        """The Delta xDS wrapper, built on first use and shared by every stream.

        Building it per stream cost ~4x the SotW path for a proxy's first push
        (bench/push.py); a resource is immutable, so one wrapper per version does.
        """
        if not self._delta:
            self._delta.append(
                discovery_pb2.Resource(name=self.name, version=self.version, resource=self.any)
            )
        return self._delta[0]


def type_url_of(message: Message) -> str:
    full_name = message.DESCRIPTOR.full_name
    try:
        return _TYPE_OF_MESSAGE[full_name]
    except KeyError:
        raise ValueError(f"not an xDS resource type: {full_name}") from None


def name_of(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(getattr(message, "name"))  # noqa: B009 - every other xDS type has .name


def references_of(message: Message) -> frozenset[Ref]:
    """What a resource needs to exist elsewhere in the snapshot to be usable.

    EDS clusters need their ClusterLoadAssignment; listeners using RDS need
    their RouteConfiguration.  The cache checks these before serving.
    """
    refs: set[Ref] = set()
    if isinstance(message, cluster_pb2.Cluster):
        if message.type == cluster_pb2.Cluster.EDS:
            service_name = message.eds_cluster_config.service_name or message.name
            refs.add((ENDPOINT, service_name))
    elif isinstance(message, listener_pb2.Listener):
        chains = list(message.filter_chains)
        if message.HasField("default_filter_chain"):
            chains.append(message.default_filter_chain)
        for chain in chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.type_url.endswith(
                    hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
                ):
                    hcm = hcm_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(hcm)
                    if hcm.HasField("rds"):
                        refs.add((ROUTE, hcm.rds.route_config_name))
    return frozenset(refs)


def make_resource(message: Message) -> Resource:
    """Serialize a resource once, deterministically, and version it by content."""
    return serialized_resource(
        type_url_of(message),
        name_of(message),
        message.SerializeToString(deterministic=True),
        references_of(message),
    )


def serialized_resource(
    type_url: str, name: str, data: bytes, refs: frozenset[Ref] = frozenset()
) -> Resource:
    """A resource from its deterministic serialization, versioned by content.

    For a producer that assembles the bytes itself (the outbound route tables
    concatenate virtual hosts serialized once); `data` and `refs` must be what
    `make_resource` would derive from the message, so the version is the same.
    """
    return Resource(
        type_url=type_url,
        name=name,
        version=content_hash(data),
        any=any_pb2.Any(type_url=type_url, value=data),
        refs=refs,
    )


def unpack(resource: Resource) -> Message:
    """The proto behind a resource (for admin views and tests, never on a push path)."""
    classes: dict[str, type[Message]] = {
        CLUSTER: cluster_pb2.Cluster,
        ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
        SECRET: secret_pb2.Secret,
    }
    message = classes[resource.type_url]()
    message.ParseFromString(resource.any.value)
    return message
