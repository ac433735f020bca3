"""A grpc.aio server carrying the ADS servicer, with the bounds of `ServerLimits`.

Large meshes make large CDS responses (10,000 clusters is several MiB), so
the send limit is well above gRPC's 4 MiB default, while requests (which only
name resources) keep a tight limit.  The server pings idle connections to find
proxies that vanished without a FIN, and tolerates Envoy's own keepalive pings
instead of answering them with GOAWAY.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from xds_server.server.limits import ServerLimits

GRPC_OPTIONS: tuple[tuple[str, int], ...] = ServerLimits().grpc_options()
"""The options of a server with the default limits."""


class GrpcService(Protocol):
    """Another service the xDS port serves besides ADS (CSDS: `ClientStatusServer`)."""

    def add_to_server(self, server: grpc.aio.Server) -> None: ...


def bind_grpc_server(
    servicer: Any,
    address: str,
    limits: ServerLimits | None = None,
    credentials: grpc.ServerCredentials | None = None,
    services: Iterable[GrpcService] = (),
) -> tuple[grpc.aio.Server, int]:
    """A not-yet-started server for `servicer`, bound to `address`, and its port.

    `limits` default to the servicer's own (`AggregatedDiscoveryServer.limits`),
    so the gRPC-level and stream-level bounds always agree.  With `credentials` the
    port serves TLS (`grpc.ssl_server_credentials`), else plaintext.  The port is what
    `address` asked for, or the one the kernel chose for port 0.  `services` are
    served on the same port, behind the same TLS, each checking its own callers.
    """
    if limits is None:
        limits = getattr(servicer, "limits", None) or ServerLimits()
    server = grpc.aio.server(options=limits.grpc_options())
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    for service in services:
        service.add_to_server(server)
    if credentials is None:
        port = int(server.add_insecure_port(address))
    else:
        port = int(server.add_secure_port(address, credentials))
    if port == 0:
        raise OSError(f"cannot bind the xDS server to {address}")
    return server, port


def build_grpc_server(
    servicer: Any, address: str, limits: ServerLimits | None = None
) -> grpc.aio.Server:
    """A not-yet-started server for `servicer`, bound to `address`.

    The bound port is also left on the server as `bound_port` (grpc.aio has
    no way to ask a server for it, and port 0 is common in tests).
    """
    server, port = bind_grpc_server(servicer, address, limits)
    server.bound_port = port
    return server
