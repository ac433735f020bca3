"""Small builders for `envoy.config.core.v3` values every other module needs.

The ADS config source, socket addresses, durations and `typed_config` packing
recur in clusters, listeners and routes; building them here keeps each of
those modules about its own concern and makes every ADS reference identical.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::"})


def ads_config_source() -> config_source_pb2.ConfigSource:
    """`{ads: {}, resource_api_version: V3}`: fetch over the proxy's one ADS stream."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def socket_address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(
            protocol=address_pb2.SocketAddress.TCP, address=ip, port_value=port
        )
    )


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(value * 1_000_000_000))
    return duration


def packed(message: Message) -> any_pb2.Any:
    """`message` as a `google.protobuf.Any`, for `typed_config` fields."""
    value = any_pb2.Any()
    value.Pack(message)
    return value


def addresses_overlap(a: str, b: str) -> bool:
    """Whether two listeners on the same port would fight over the bind."""
    return a == b or a in WILDCARD_ADDRESSES or b in WILDCARD_ADDRESSES
