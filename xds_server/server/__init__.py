"""The gRPC Aggregated Discovery Service: SotW and Delta streams over a snapshot cache."""

from xds_server.server.callbacks import (
    Fanout,
    MonotonicWallClock,
    NoCallbacks,
    SentResponse,
    ServerCallbacks,
    StreamInfo,
)
from xds_server.server.grpc_server import GRPC_OPTIONS, bind_grpc_server, build_grpc_server
from xds_server.server.limits import ServerLimits
from xds_server.server.metrics import ServerMetrics
from xds_server.server.servicer import AggregatedDiscoveryServer, NodeObserver
from xds_server.server.state import NackStatus, StreamKind, StreamStatus, TypeStatus
from xds_server.server.stream import ProtocolError

__all__ = [
    "GRPC_OPTIONS",
    "AggregatedDiscoveryServer",
    "Fanout",
    "MonotonicWallClock",
    "NackStatus",
    "NoCallbacks",
    "NodeObserver",
    "ProtocolError",
    "SentResponse",
    "ServerCallbacks",
    "ServerLimits",
    "ServerMetrics",
    "StreamInfo",
    "StreamKind",
    "StreamStatus",
    "TypeStatus",
    "bind_grpc_server",
    "build_grpc_server",
]
