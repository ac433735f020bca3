"""The registry of xDS types, deterministic serialization and content-hash versions.

`XDS_TYPES` is the one table of the types the control plane serves: type URL,
message class, short name, whether a SotW response carries the full set
(LDS, CDS) or only the names asked for (RDS, EDS, SDS), and which other types
its resources may reference.  resources/, cache/, server/ and admin/ all read
it, so adding a type is one entry.

A `Resource` is serialized exactly once, when it is built: its `Any` (and the
bytes inside it) are then shared by every snapshot and every proxy that
receives it.  Its version is a hash of those bytes, so two translations that
produce the same proto produce the same version and nothing is re-pushed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

from xds_server.provenance import SourceRef

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

logger = logging.getLogger(__name__)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True, slots=True)
class XdsType:
    """One xDS resource type as every layer needs to know it."""

    type_url: str
    message: type[Message]
    short_name: str
    """CDS, EDS, LDS, RDS, SDS: what operators and Envoy's stats call it."""
    full_state: bool
    """SotW responses carry every resource of the type (LDS, CDS), not only those named."""
    references: tuple[str, ...] = ()
    """Type URLs its resources may name (and must exist for it to be usable)."""
    secret: bool = False
    """Holds private key material: admin views and logs redact it."""


# In push order, so nothing dangles: a cluster exists before its endpoints,
# a listener before its routes (xDS protocol, "eventual consistency").
XDS_TYPES: tuple[XdsType, ...] = (
    XdsType(CLUSTER, cluster_pb2.Cluster, "CDS", True, (ENDPOINT, SECRET)),
    XdsType(ENDPOINT, endpoint_pb2.ClusterLoadAssignment, "EDS", False),
    XdsType(LISTENER, listener_pb2.Listener, "LDS", True, (ROUTE, SECRET)),
    XdsType(ROUTE, route_pb2.RouteConfiguration, "RDS", False, (CLUSTER,)),
    XdsType(SECRET, secret_pb2.Secret, "SDS", False, secret=True),
)
TYPES: dict[str, XdsType] = {t.type_url: t for t in XDS_TYPES}
"""The registry by type URL."""
BY_SHORT_NAME: dict[str, XdsType] = {t.short_name: t for t in XDS_TYPES}

PUSH_ORDER: tuple[str, ...] = tuple(t.type_url for t in XDS_TYPES)
KNOWN_TYPES: frozenset[str] = frozenset(PUSH_ORDER)
SHORT_NAMES: dict[str, str] = {t.type_url: t.short_name for t in XDS_TYPES}
FULL_STATE_TYPES: frozenset[str] = frozenset(t.type_url for t in XDS_TYPES if t.full_state)

_TYPE_OF_MESSAGE: dict[str, str] = {t.message.DESCRIPTOR.full_name: t.type_url for t in XDS_TYPES}

Ref = tuple[str, str]
"""A reference from one resource to another: (type URL, name)."""


def content_hash(data: bytes) -> str:
    """A short, stable version string for serialized bytes."""
    return hashlib.blake2b(data, digest_size=10).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One named xDS resource, serialized once, versioned by content.

    It holds the serialized bytes, not an `Any`: a protobuf message owns an
    arena of about 1 KB whatever its size, which for the 20,000 clusters and
    load assignments of a 10,000-service mesh is 20 MB.  Responses are
    assembled from the bytes (`add_to`).
    """

    type_url: str
    name: str
    version: str
    data: bytes = field(repr=False, compare=False)
    refs: frozenset[Ref] = field(default=frozenset(), compare=False)
    provenance: tuple[SourceRef, ...] = field(default=(), compare=False)
    """The source objects this resource was made from; not part of its version."""
    _delta: list[discovery_pb2.Resource] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def any(self) -> any_pb2.Any:
        """A new `Any` holding the resource (for tests and views; pushes use `add_to`)."""
        return any_pb2.Any(type_url=self.type_url, value=self.data)

    def add_to(self, resources: RepeatedCompositeFieldContainer[any_pb2.Any]) -> None:
        """Append the resource to a response's `resources`, with no message in between."""
        resources.add(type_url=self.type_url, value=self.data)

    def delta_proto(self) -> discovery_pb2.Resource:
        """The Delta xDS wrapper, built on first use and shared by every stream.

        Building it per stream cost ~4x the SotW path for a proxy's first push
        (bench/push.py); a resource is immutable, so one wrapper per version does.
        """
        if not self._delta:
            wrapper = discovery_pb2.Resource(name=self.name, version=self.version)
            wrapper.resource.type_url = self.type_url
            wrapper.resource.value = self.data
            self._delta.append(wrapper)
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


VARIANT_SEPARATOR = "|"


def load_assignment_variant(cluster: str, key: str, value: str) -> str:
    """The name of a variant of `cluster`'s load assignment (`<cluster>|key=value`): the
    same cluster's endpoints arranged for some callers (by zone, see
    `translate.locality`), fetched by a copy of the cluster naming it as its EDS
    service name.  `key` and `value` hold no separator."""
    if VARIANT_SEPARATOR in key + value or "=" in key:
        raise ValueError(f"load assignment variant {key}={value!r} of {cluster!r} is malformed")
    return f"{cluster}{VARIANT_SEPARATOR}{key}={value}"


def load_assignment_owner(name: str) -> str:
    """The cluster a load assignment belongs to: its name, or for a variant
    (`load_assignment_variant`) the cluster it is a variant of."""
    base, sep, variant = name.rpartition(VARIANT_SEPARATOR)
    return base if sep and "=" in variant else name


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


def make_resource(message: Message, provenance: tuple[SourceRef, ...] = ()) -> Resource:
    """Serialize a resource once, deterministically, and version it by content."""
    return serialized_resource(
        type_url_of(message),
        name_of(message),
        message.SerializeToString(deterministic=True),
        references_of(message),
        provenance,
    )


def serialized_resource(
    type_url: str,
    name: str,
    data: bytes,
    refs: frozenset[Ref] = frozenset(),
    provenance: tuple[SourceRef, ...] = (),
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
        data=data,
        refs=refs,
        provenance=provenance,
    )


def unpack(resource: Resource) -> Message:
    """The proto behind a resource (for admin views and tests, never on a push path)."""
    message = TYPES[resource.type_url].message()
    message.ParseFromString(resource.data)
    return message
