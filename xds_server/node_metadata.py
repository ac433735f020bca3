"""Who a connected Envoy is: the node metadata contract between bootstrap and server.

A sidecar introduces itself on the first xDS request with its `Node`: `id` plus a
`metadata` Struct written into its bootstrap by `xds_server.bootstrap`.  This module
owns both directions of that contract, so the keys are spelled in one place:

* `metadata_of(proxy)` turns a `Proxy` into the metadata dict a bootstrap carries;
* `proxy_from_node(node)` turns the `Node` the server receives back into a `Proxy`.

Reading is tolerant of missing keys (a hand-written bootstrap may carry none of
them) and strict about malformed ones: a value that is present but wrong raises
`NodeMetadataError` (a `ValueError`) naming the key, so the server can reject the
stream with a message the operator can act on instead of translating for a proxy
that does not exist.

| key                    | Proxy field            | default when missing or empty             |
|------------------------|------------------------|-------------------------------------------|
| `NAMESPACE`            | `namespace`            | `"default"`                               |
| `WORKLOAD_NAME`        | `workload`             | `""`                                      |
| `SERVICE_ACCOUNT`      | `service_account`      | `"default"`                               |
| `LABELS`               | `labels`               | `()` (a Struct of strings)                |
| `INSTANCE_IP`          | `ip`                   | `None` (an IPv4/IPv6 address)             |
| `APP_ADDRESS`          | `app_address`          | `"127.0.0.1"` (an IP address)             |
| `OUTBOUND_ADDRESS`     | `outbound_address`     | `"127.0.0.1"` (an IP address)             |
| `OUTBOUND_PORT`        | `outbound_port`        | `15001` (string or integer, 1-65535)      |
| `INTERCEPTION_MODE`    | `interception`         | `"none"` (`NONE` or `REDIRECT`, any case) |
| `INBOUND_CAPTURE_PORT` | `inbound_capture_port` | `15006` (string or integer, 1-65535)      |

`INTERCEPTION_MODE` is Istio's key and spelling: `REDIRECT` means iptables sends
the pod's TCP to the sidecar (`OUTBOUND_PORT` for outbound, `INBOUND_CAPTURE_PORT`
for inbound), so the server gives it the virtual listeners of
`xds_server.translate.capture`.  Istio's `TPROXY` is not supported and is rejected,
as is a redirecting proxy whose two capture ports are one.

The proxy's zone (`Proxy.zone`, the caller zone of locality-aware routing) is
not metadata but Envoy's own `node.locality.zone`, which the bootstrap sets;
a zone that is not a label value is refused, naming `locality.zone`.

Any other key is kept in `Proxy.metadata` as sorted `(key, value)` pairs: string
values as they are, other values as compact JSON, so the result stays hashable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
from collections.abc import Mapping
from typing import Any, Literal

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from xds_server.model.types import Proxy, is_zone, labels_of

logger = logging.getLogger(__name__)

NAMESPACE = "NAMESPACE"
WORKLOAD_NAME = "WORKLOAD_NAME"
SERVICE_ACCOUNT = "SERVICE_ACCOUNT"
LABELS = "LABELS"
INSTANCE_IP = "INSTANCE_IP"
APP_ADDRESS = "APP_ADDRESS"
OUTBOUND_ADDRESS = "OUTBOUND_ADDRESS"
OUTBOUND_PORT = "OUTBOUND_PORT"
INTERCEPTION_MODE = "INTERCEPTION_MODE"
INBOUND_CAPTURE_PORT = "INBOUND_CAPTURE_PORT"
LOCALITY_ZONE = "locality.zone"
"""Not a metadata key: the `Node` field holding the zone (named in errors)."""

KNOWN_KEYS: frozenset[str] = frozenset(
    {
        NAMESPACE,
        WORKLOAD_NAME,
        SERVICE_ACCOUNT,
        LABELS,
        INSTANCE_IP,
        APP_ADDRESS,
        OUTBOUND_ADDRESS,
        OUTBOUND_PORT,
        INTERCEPTION_MODE,
        INBOUND_CAPTURE_PORT,
    }
)

DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_ACCOUNT = "default"
DEFAULT_APP_ADDRESS = "127.0.0.1"
DEFAULT_OUTBOUND_ADDRESS = "127.0.0.1"
DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_INBOUND_CAPTURE_PORT = 15006
INTERCEPTION_MODES: dict[str, Literal["none", "redirect"]] = {
    "NONE": "none",
    "REDIRECT": "redirect",
}


class NodeMetadataError(ValueError):
    """A node metadata value is present but malformed; `field` names the key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"node metadata {field}: {message}")
        self.field = field


def proxy_from_node(node: base_pb2.Node) -> Proxy:
    """The `Proxy` a connected Envoy describes with its `Node` (see the module table)."""
    if not node.id:
        raise NodeMetadataError("id", "the node has no id")
    metadata: dict[str, Any] = json_format.MessageToDict(node.metadata)
    proxy = proxy_from_metadata(node.id, metadata)
    zone = node.locality.zone
    if not zone:
        return proxy
    if not is_zone(zone):
        raise NodeMetadataError(LOCALITY_ZONE, f"{zone!r} is not a zone (a label value)")
    return dataclasses.replace(proxy, zone=zone)


def proxy_from_metadata(node_id: str, metadata: Mapping[str, Any]) -> Proxy:
    """Like `proxy_from_node`, from a node id and metadata already decoded to JSON values."""
    extra = tuple(
        sorted(
            (key, value if isinstance(value, str) else _compact_json(value))
            for key, value in metadata.items()
            if key not in KNOWN_KEYS
        )
    )
    proxy = Proxy(
        node_id=node_id,
        namespace=_string(metadata, NAMESPACE) or DEFAULT_NAMESPACE,
        workload=_string(metadata, WORKLOAD_NAME),
        service_account=_string(metadata, SERVICE_ACCOUNT) or DEFAULT_SERVICE_ACCOUNT,
        labels=_labels(metadata),
        ip=_ip(metadata, INSTANCE_IP) or None,
        app_address=_ip(metadata, APP_ADDRESS) or DEFAULT_APP_ADDRESS,
        outbound_address=_ip(metadata, OUTBOUND_ADDRESS) or DEFAULT_OUTBOUND_ADDRESS,
        outbound_port=_port(metadata, OUTBOUND_PORT, DEFAULT_OUTBOUND_PORT),
        interception=_interception(metadata),
        inbound_capture_port=_port(metadata, INBOUND_CAPTURE_PORT, DEFAULT_INBOUND_CAPTURE_PORT),
        metadata=extra,
    )
    if proxy.interception == "redirect" and proxy.inbound_capture_port == proxy.outbound_port:
        raise NodeMetadataError(
            INBOUND_CAPTURE_PORT, f"{proxy.inbound_capture_port} is also the OUTBOUND_PORT"
        )
    return proxy


def metadata_of(proxy: Proxy) -> dict[str, Any]:
    """The node metadata a bootstrap carries for `proxy`; validates like the reader does.

    `INSTANCE_IP` is left out when the proxy has no IP.  `Proxy.metadata` pairs are
    added as string values, after the known keys, which they may not shadow.
    """
    metadata: dict[str, Any] = {
        NAMESPACE: proxy.namespace,
        WORKLOAD_NAME: proxy.workload,
        SERVICE_ACCOUNT: proxy.service_account,
        LABELS: dict(proxy.labels),
    }
    if proxy.ip is not None:
        metadata[INSTANCE_IP] = proxy.ip
    metadata[APP_ADDRESS] = proxy.app_address
    metadata[OUTBOUND_ADDRESS] = proxy.outbound_address
    metadata[OUTBOUND_PORT] = str(proxy.outbound_port)
    metadata[INTERCEPTION_MODE] = proxy.interception.upper()
    metadata[INBOUND_CAPTURE_PORT] = str(proxy.inbound_capture_port)
    for key, value in proxy.metadata:
        if key in KNOWN_KEYS:
            raise NodeMetadataError(key, "is a reserved key and cannot be set as extra metadata")
        metadata[key] = value
    # Fail at render time, not when the sidecar first connects.
    proxy_from_metadata(proxy.node_id, metadata)
    return metadata


def _string(metadata: Mapping[str, Any], key: str) -> str:
    value = metadata.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise NodeMetadataError(key, f"expected a string, got {_compact_json(value)}")
    return value


def _ip(metadata: Mapping[str, Any], key: str) -> str:
    value = _string(metadata, key)
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise NodeMetadataError(key, f"{value!r} is not an IP address") from None
    return value


def _interception(metadata: Mapping[str, Any]) -> Literal["none", "redirect"]:
    value = _string(metadata, INTERCEPTION_MODE)
    if not value:
        return "none"
    mode = INTERCEPTION_MODES.get(value.upper())
    if mode is None:
        choices = " or ".join(INTERCEPTION_MODES)
        raise NodeMetadataError(INTERCEPTION_MODE, f"{value!r} is not supported; use {choices}")
    return mode


def _port(metadata: Mapping[str, Any], key: str, default: int) -> int:
    value = metadata.get(key)
    if value is None or value == "":
        return default
    port: int | None = None
    if isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    elif isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
        # A Struct holds every number as a double.
        port = int(value)
    if port is None or not 1 <= port <= 65535:
        raise NodeMetadataError(key, f"{_compact_json(value)} is not a port number (1-65535)")
    return port


def _labels(metadata: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    value = metadata.get(LABELS)
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise NodeMetadataError(LABELS, f"expected a map of strings, got {_compact_json(value)}")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise NodeMetadataError(
                LABELS, f"label {key!r} has a non-string value {_compact_json(item)}"
            )
        labels[str(key)] = item
    return labels_of(labels)


def _compact_json(value: object) -> str:
    return json.dumps(_integral(value), sort_keys=True, separators=(",", ":"), default=str)


def _integral(value: object) -> object:
    """Whole doubles back to integers: a Struct turns `2` into `2.0`."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value
