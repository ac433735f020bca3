"""The bounds of the xDS port: what one peer, one stream and one request may cost.

Everything an ADS client sends is untrusted, and the server must survive a
client that floods it, never reads, or lies.  The bounds are one frozen value
so they can be set from the command line, handed to the servicer and to the
gRPC server together, and quoted in the error a client gets when it hits one:

* gRPC itself refuses a request larger than `max_request_bytes` (with
  RESOURCE_EXHAUSTED) before any Python code sees it, and
  `max_streams_per_connection` is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
  Keepalive pings find peers that vanished without a FIN.
* The servicer refuses the stream beyond `max_streams_per_peer` from one
  address with RESOURCE_EXHAUSTED.  A stream disconnected for being stuck
  still counts until gRPC is done with it: gRPC holds its unsent response (and
  then its status) until the proxy reads again or its connection goes, so the
  limit bounds what a peer's stuck streams hold as well.
* A stream refuses a request that names more than `max_names_per_request`
  resources, a subscription beyond `max_subscribed_names`, or a node larger
  than `max_node_bytes`, with RESOURCE_EXHAUSTED; a string longer than
  `max_name_length` is an INVALID_ARGUMENT.  It reads at most `request_queue`
  requests ahead of the one it is handling (then gRPC flow control holds the
  client back), has at most one response in flight, and ends with
  RESOURCE_EXHAUSTED a stream whose proxy has taken no response for
  `stuck_stream_seconds` (its receive window full).
* A peer's requests wait once they have made the server walk more than
  `max_names_per_second` resource names (a token bucket), so that one client
  flooding large subscription changes cannot hold up everyone's pushes.

The defaults fit a mesh of 10,000 services (an EDS subscription of 10,000
names, a Delta reconnect declaring 10,000 versions) with room to spare.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

MAX_NACK_MESSAGE_CHARS = 4096
"""A NACK's error_detail message is cut to this before it is searched, kept or logged."""
MAX_SHOWN_CHARS = 80
"""A client-sent value quoted in an error or a log line is cut to this."""
MAX_REMEMBERED_UNSERVED_TYPES = 16
"""Per stream, the unserved type URLs logged once each; more are ignored unlogged."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Bounds on what ADS clients may make the server hold or do (see the module doc)."""

    max_request_bytes: int = 4 * 1024 * 1024
    """Largest DiscoveryRequest gRPC accepts (`grpc.max_receive_message_length`)."""
    max_response_bytes: int = 64 * 1024 * 1024
    """Largest response gRPC sends: 10,000 clusters make a CDS response of several MiB."""
    max_names_per_request: int = 100_000
    """Resource names in one request (SotW `resource_names`; Delta subscribe,
    unsubscribe and `initial_resource_versions` together)."""
    max_subscribed_names: int = 100_000
    """Resource names one stream may subscribe to, all types together."""
    max_name_length: int = 1024
    """Characters in a resource name, type URL, node id, version or nonce."""
    max_node_bytes: int = 256 * 1024
    """Serialized size of the node a stream's first request carries (Envoy 1.40's is
    about 60 KiB, mostly its list of extensions); the observer decodes its metadata."""
    max_streams_per_peer: int = 128
    """Open ADS streams from one peer address (any port); the next is refused."""
    max_names_per_second: int = 200_000
    """Resource names one peer's subscription changes may make the server walk per
    second (a burst of `max_names_per_request` or this, whichever is more);
    past it the peer's next requests wait (see `xds_server.server.budget`)."""
    max_streams_per_connection: int = 100
    """HTTP/2 concurrent streams on one connection (`grpc.max_concurrent_streams`)."""
    request_queue: int = 4
    """Requests a stream reads ahead of the one it handles; then it stops reading."""
    stuck_stream_seconds: float = 60.0
    """A stream whose proxy has taken no response for this long is disconnected."""
    keepalive_seconds: float = 30.0
    """Idle time after which the server pings a connection."""
    keepalive_timeout_seconds: float = 10.0
    """A ping unanswered for this long closes the connection (a dead peer)."""

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"ServerLimits.{spec.name} must be a number, got {value!r}")
            if spec.type == "int" and not isinstance(value, int):
                raise ValueError(f"ServerLimits.{spec.name} must be an integer, got {value!r}")
            if not value > 0:
                raise ValueError(f"ServerLimits.{spec.name} must be positive, got {value!r}")

    def grpc_options(self) -> tuple[tuple[str, int], ...]:
        """Channel arguments for `grpc.aio.server` that enforce the gRPC-level bounds."""
        return (
            ("grpc.max_send_message_length", self.max_response_bytes),
            ("grpc.max_receive_message_length", self.max_request_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_seconds)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.ping_timeout_ms", _ms(self.keepalive_timeout_seconds)),
            # Keep pinging an idle connection: an xDS stream may see no data for
            # hours, and gRPC's default stops pinging after two pings without data.
            ("grpc.http2.max_pings_without_data", 0),
            # Tolerate Envoy's own keepalive pings instead of answering with GOAWAY.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def shown(value: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`value` quoted for an error or a log line, cut with an ellipsis past `limit`."""
    text = value if len(value) <= limit else value[: limit - 1] + "…"
    return repr(text)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when anything was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
