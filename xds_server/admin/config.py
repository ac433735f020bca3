"""The config a proxy is served, as JSON a person can read.

Resources live in the cache only as serialized bytes (serialized once, shared
by every proxy); this module parses them back and converts them with
`json_format`, with proto field names as in Envoy's own `/config_dump`, and
with private key material redacted (`redact`).  That is costly at mesh
scale, so it runs only when someone asks, off the event loop (the app calls
it in a worker thread; snapshots are immutable).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, text_format

from xds_server.admin.paging import FIRST_PAGE, Page
from xds_server.admin.redact import REDACTED, redact
from xds_server.admin.views import short_name
from xds_server.cache import Snapshot
from xds_server.resources import BY_SHORT_NAME, PUSH_ORDER, TYPES, XDS_TYPES, Resource, unpack

logger = logging.getLogger(__name__)


def parse_type(value: str) -> str:
    """A type URL from a short name (`CDS`, any case) or a full type URL.

    Raises ValueError naming the accepted values.
    """
    if value in TYPES:
        return value
    known = BY_SHORT_NAME.get(value.strip().upper())
    if known is None:
        accepted = ", ".join(t.short_name for t in XDS_TYPES)
        raise ValueError(f"unknown type {value!r}: expected one of {accepted} or a type URL")
    return known.type_url


@dataclass(frozen=True, slots=True)
class ServedResource:
    name: str
    version: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServedType:
    type_url: str
    version: str
    resources: tuple[ServedResource, ...]
    """One page of them, by name."""
    total: int
    """How many resources of the type are served in all."""

    @property
    def short_name(self) -> str:
        return short_name(self.type_url)


def resource_body(resource: Resource) -> dict[str, Any]:
    """A resource as redacted JSON; as text if it holds an Any of an unknown type.

    `json_format` must resolve every nested `Any` (filters, extensions) in the
    default descriptor pool.  A type nobody imported cannot be shown as JSON,
    but the page must still show the rest, so that one falls back to text,
    redacted as a message; the bytes of an `Any` nobody can read stay opaque,
    so a secret type (the registry's `secret`) is then not shown at all.
    """
    message = unpack(resource)
    try:
        body: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    except (TypeError, KeyError) as error:
        logger.warning("cannot render %s %r as JSON: %s", resource.type_url, resource.name, error)
        known = TYPES.get(resource.type_url)
        secret = known is None or known.secret
        return {
            "@type": resource.type_url,
            "@error": f"cannot render as JSON: {error}",
            "text": REDACTED if secret else text_format.MessageToString(redact(message)),
        }
    return redact(body)


def served_config(
    snapshot: Snapshot, type_urls: Iterable[str] = PUSH_ORDER, page: Page = FIRST_PAGE
) -> list[ServedType]:
    """One page of the resources of each requested type in `snapshot`, sorted by name.

    Only the page is converted to JSON: the cost is the page's, not the mesh's.
    """
    served = []
    for type_url in type_urls:
        resources = snapshot.get(type_url)
        names = page.of(sorted(resources))
        served.append(
            ServedType(
                type_url=type_url,
                version=snapshot.type_version(type_url) if resources else "",
                resources=tuple(
                    ServedResource(name, resources[name].version, resource_body(resources[name]))
                    for name in names
                ),
                total=len(resources),
            )
        )
    return served


def config_json(
    node_id: str, snapshot: Snapshot | None, served: list[ServedType], page: Page = FIRST_PAGE
) -> dict[str, Any]:
    """`/api/proxies/{node_id}/config`: per type, each resource's name, version and body.

    One page of each type (the same slice of each), with each type's `total`.
    """
    return {
        "node_id": node_id,
        "snapshot_version": snapshot.version if snapshot is not None else None,
        "types": [
            {
                "type": served_type.short_name,
                "type_url": served_type.type_url,
                "version": served_type.version,
                "total": served_type.total,
                "resources": [
                    {"name": r.name, "version": r.version, "resource": r.body}
                    for r in served_type.resources
                ],
            }
            for served_type in served
        ],
        **page.json({served_type.short_name: served_type.total for served_type in served}),
    }
