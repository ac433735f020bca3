"""Provenance in Envoy's own config: which source objects each resource came from.

Clusters, listeners (and their filter chains), route configurations and
virtual hosts carry `metadata.filter_metadata["xds-server"]`, so Envoy's
`/config_dump` names the manifests behind what it runs, as Istio's does:

* `{"sources": ["Service/shop/backend", "EndpointSlice/shop/backend-x1", ...]}`,
  keys `Kind/namespace/name` (`SourceRef.key`), sorted and each once;
* or, for a resource made for a whole namespace or proxy rather than from
  particular objects, `{"generator": "outbound-routes", "namespace": "shop"}`;
  its parts (virtual hosts, filter chains) then name their own sources.

The stamp is a `Struct` with one list of short strings: it sits on every
virtual host of the outbound route tables (10,000 of them in a large mesh), so
it holds nothing else.  The Struct is deterministic to serialize (map keys are
sorted), so stamped resources stay content-hashed.

`stamped_sources` reads the keys back from a message and the parts it holds
(a listener's filter chains, a route table's virtual hosts).  An inline route
table (an inbound port's) is stamped with its listener's or chain's sources,
so reading the listener's is enough.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeAlias

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import struct_pb2

from xds_server.model import EndpointSlice, Service
from xds_server.model.changes import Kind
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import HTTPRoute, MeshRoute
from xds_server.provenance import PROVENANCE_KEY

logger = logging.getLogger(__name__)

SOURCES = "sources"
GENERATOR = "generator"
NAMESPACE = "namespace"

Stamped: TypeAlias = (
    cluster_pb2.Cluster
    | listener_pb2.Listener
    | listener_components_pb2.FilterChain
    | route_pb2.RouteConfiguration
    | route_components_pb2.VirtualHost
)
"""The messages that carry a stamp (each has a `metadata` field)."""


def service_key(service: Service) -> str:
    """`Service/namespace/name`."""
    return f"{Kind.SERVICE.value}/{service.namespace}/{service.name}"


def slice_key(eps: EndpointSlice) -> str:
    """`EndpointSlice/namespace/name`."""
    return f"{Kind.ENDPOINT_SLICE.value}/{eps.namespace}/{eps.name}"


def policy_key(policy: BackendPolicy) -> str:
    """`BackendPolicy/namespace/name`."""
    return f"{Kind.BACKEND_POLICY.value}/{policy.namespace}/{policy.name}"


def route_key(route: MeshRoute) -> str:
    """`HTTPRoute/namespace/name` or `GRPCRoute/namespace/name`."""
    kind = Kind.HTTP_ROUTE if isinstance(route, HTTPRoute) else Kind.GRPC_ROUTE
    return f"{kind.value}/{route.namespace}/{route.name}"


def stamp_sources(message: Stamped, keys: Iterable[str]) -> None:
    """Name `keys` (sorted, each once) as the sources of `message`; nothing if there are none."""
    keys = tuple(keys)
    ordered = keys if len(keys) == 1 else sorted(set(keys))
    if not ordered:
        return
    values = _stamp(message).fields[SOURCES].list_value.values
    for key in ordered:
        values.add().string_value = key


def sources_metadata(keys: Iterable[str]) -> base_pb2.Metadata:
    """The `metadata` that `stamp_sources` sets, to `stamp` on many messages.

    Built once and merged where many messages name the same objects (the
    filter chains of one Service port in a capture listener).
    """
    metadata = base_pb2.Metadata()
    ordered = sorted(set(keys))
    if ordered:
        values = metadata.filter_metadata[PROVENANCE_KEY].fields[SOURCES].list_value.values
        for key in ordered:
            values.add().string_value = key
    return metadata


def stamp(message: Stamped, metadata: base_pb2.Metadata) -> None:
    """Stamp `message` with a value of `sources_metadata` or `generator_metadata`."""
    message.metadata.MergeFrom(metadata)


def stamp_generator(message: Stamped, generator: str, namespace: str | None = None) -> None:
    """Name what made `message` when no particular objects did (a namespace's, a proxy's)."""
    fields = _stamp(message).fields
    fields[GENERATOR].string_value = generator
    if namespace is not None:
        fields[NAMESPACE].string_value = namespace


def generator_metadata(generator: str, namespace: str | None = None) -> base_pb2.Metadata:
    """The `metadata` value `stamp_generator` sets, for producers that assemble bytes."""
    config = route_pb2.RouteConfiguration()
    stamp_generator(config, generator, namespace)
    return config.metadata


def stamped_sources(message: Stamped) -> tuple[str, ...]:
    """The source keys stamped on `message` and on the parts it holds, sorted, each once.

    A listener's parts are its filter chains (the default one too), a route
    table's its virtual hosts.  A route table inlined in a listener names the
    same sources as its listener or filter chain, so it is not unpacked (that
    would cost a connection manager's parse per chain).  Unstamped: `()`.
    """
    return tuple(sorted({key for part in _parts(message) for key in _own_sources(part)}))


def stamped_generator(message: Stamped) -> tuple[str, str] | None:
    """`(generator, namespace)` from a generator stamp ("" for no namespace), else None."""
    found = message.metadata.filter_metadata.get(PROVENANCE_KEY)
    if found is None or GENERATOR not in found.fields:
        return None
    namespace = found.fields[NAMESPACE].string_value if NAMESPACE in found.fields else ""
    return found.fields[GENERATOR].string_value, namespace


def _stamp(message: Stamped) -> struct_pb2.Struct:
    stamp: struct_pb2.Struct = message.metadata.filter_metadata[PROVENANCE_KEY]
    return stamp


def _own_sources(message: Stamped) -> Iterator[str]:
    found = message.metadata.filter_metadata.get(PROVENANCE_KEY)
    if found is None or SOURCES not in found.fields:
        return
    for value in found.fields[SOURCES].list_value.values:
        yield value.string_value


def _parts(message: Stamped) -> Iterator[Stamped]:
    yield message
    if isinstance(message, route_pb2.RouteConfiguration):
        yield from message.virtual_hosts
    elif isinstance(message, listener_pb2.Listener):
        yield from message.filter_chains
        if message.HasField("default_filter_chain"):
            yield message.default_filter_chain
