"""The mesh as immutable values: what sources produce and translation consumes."""

from xds_server.model.changes import ChangeSet, Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.types import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    PortProtocol,
    Proxy,
    Service,
    ServicePort,
    Workload,
)

__all__ = [
    "ChangeSet",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "Kind",
    "MeshSnapshot",
    "ObjectKey",
    "PortProtocol",
    "Proxy",
    "Service",
    "ServicePort",
    "Workload",
]
