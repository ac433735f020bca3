"""A grpc.aio server carrying the ADS servicer, with options Envoy gets along with.

Large meshes make large CDS responses (10,000 clusters is several MiB), so
the message limits are raised well above gRPC's 4 MiB default.  The server
pings idle connections to find proxies that vanished without a FIN, and
tolerates Envoy's own keepalive pings instead of answering them with GOAWAY.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
)


def bind_grpc_server(servicer: Any, address: str) -> tuple[grpc.aio.Server, int]:
    """A not-yet-started server for `servicer`, bound to `address`, and its port.

    The port is what `address` asked for, or the one the kernel chose for port 0.
    """
    server = grpc.aio.server(options=GRPC_OPTIONS)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = int(server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}")
    return server, port


def build_grpc_server(servicer: Any, address: str) -> grpc.aio.Server:
    """A not-yet-started server for `servicer`, bound to `address`.

    The bound port is also left on the server as `bound_port` (grpc.aio has
    no way to ask a server for it, and port 0 is common in tests).
    """
    server, port = bind_grpc_server(servicer, address)
    server.bound_port = port
    return server
