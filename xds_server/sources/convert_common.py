"""What the conversions share: object metadata, and the bounded strings of CRD schemas.

Every kind's metadata is checked the same way (`core_meta`: name, namespace,
annotations, labels).  `convert_routes` (HTTPRoute, GRPCRoute) and
`convert_policy` (BackendPolicy) read custom resources, whose metadata
carries two things the built-in kinds' conversion does not need
(`object_meta`): `creationTimestamp`, which breaks ties between
conflicting routes and policies (the oldest wins), and `generation`, which
status conditions report as `observedGeneration`.

Timestamps are RFC 3339 as the API server writes them.  They are kept
normalised to UTC with second precision (`2024-05-01T12:00:00Z`, the form
`metav1.Time` serialises to), so comparing two of them as strings orders
them in time, whatever offset or fraction a hand-written file used.

A file need not give a timestamp.  Where the spec breaks ties by creation time
(conflicting routes, policies attached at the same level), an undated object
counts as newer than every dated one, and ties (equal or no timestamps) go to
the first by namespace/name (`model.policy._order`; docs/sources.md), so the
order never depends on the order files or documents are read in.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xds_server.sources.object_reader import ObjectReader, show
from xds_server.sources.schema import DNS_LABEL, DNS_SUBDOMAIN, METADATA_FIELDS, NameRule

__all__ = ["CoreMeta", "ObjectMeta", "bounded_string", "core_meta", "object_meta", "timestamp"]

logger = logging.getLogger(__name__)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
_MAX_GENERATION = 2**63 - 1


@dataclass(frozen=True)
class CoreMeta:
    """The metadata every kind's model value keeps."""

    namespace: str
    name: str
    labels: dict[str, str]


@dataclass(frozen=True)
class ObjectMeta(CoreMeta):
    """The metadata a custom resource's model value keeps."""

    creation_timestamp: str | None
    generation: int


def timestamp(obj: ObjectReader, value: Any, field: str) -> str | None:
    """An RFC 3339 time, normalised to UTC seconds (`2024-05-01T12:00:00Z`); None if unset."""
    text = obj.string(value, field)
    if not text:
        return None
    match = _RFC3339.fullmatch(text)
    when: datetime.datetime | None = None
    if match is not None:
        try:
            when = datetime.datetime.fromisoformat(
                text[: match.start(7) if match.group(7) else match.start(8)]
                + ("+00:00" if match.group(8) in ("Z", "z") else match.group(8))
            )
        except ValueError:
            when = None
    if when is None:
        obj.fail(field, f"must be an RFC 3339 time such as 2024-05-01T12:00:00Z, got {show(text)}")
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _checked_metadata(
    obj: ObjectReader, manifest: Mapping[str, Any], name_rule: NameRule
) -> tuple[Mapping[str, Any], CoreMeta]:
    metadata = obj.mapping(manifest.get("metadata"), "metadata", METADATA_FIELDS)
    name = obj.required_string(metadata.get("name"), "metadata.name")
    obj.dns_name(name, "metadata.name", name_rule)
    namespace = obj.string(metadata.get("namespace"), "metadata.namespace") or "default"
    obj.dns_name(namespace, "metadata.namespace", DNS_LABEL)
    obj.annotations(metadata.get("annotations"), "metadata.annotations")
    labels = obj.labels(metadata.get("labels"), "metadata.labels")
    return metadata, CoreMeta(namespace, name, labels)


def core_meta(obj: ObjectReader, manifest: Mapping[str, Any], name_rule: NameRule) -> CoreMeta:
    """metadata of a namespaced object: its name (as `name_rule` says), namespace
    (default "default"), annotations and labels, checked."""
    return _checked_metadata(obj, manifest, name_rule)[1]


def object_meta(obj: ObjectReader, manifest: Mapping[str, Any]) -> ObjectMeta:
    """metadata of a namespaced custom resource: a DNS-subdomain name, as CRDs require."""
    metadata, core = _checked_metadata(obj, manifest, DNS_SUBDOMAIN)
    namespace, name, labels = core.namespace, core.name, core.labels
    created = timestamp(obj, metadata.get("creationTimestamp"), "metadata.creationTimestamp")
    generation = obj.integer(metadata.get("generation"), "metadata.generation", 0, _MAX_GENERATION)
    return ObjectMeta(namespace, name, labels, created, generation or 0)


def bounded_string(
    obj: ObjectReader,
    value: Any,
    field: str,
    *,
    max_length: int,
    min_length: int = 1,
    pattern: re.Pattern[str] | None = None,
    what: str | None = None,
    required: bool = False,
) -> str | None:
    """A string field of a CRD schema: minLength, maxLength and pattern, as the API checks them.

    Every string is also free of control characters (`ObjectReader.text`): the
    mesh hands these to Envoy.  `what` describes `pattern` in the error.
    """
    if value is None:
        if required:
            obj.fail(field, "required")
        return None
    text = obj.text(value, field, max(max_length, 1))
    assert text is not None
    if len(text) < min_length:
        if required and not text:
            obj.fail(field, "required")
        obj.fail(field, "must not be empty" if not text else f"at least {min_length} characters")
    if pattern is not None and not pattern.fullmatch(text):
        obj.fail(field, f"must be {what or 'match ' + pattern.pattern}, got {show(text)}")
    return text
