"""PeerAuthentication manifests (`policy.xds-server.dev/v1alpha1`) to model values.

The spec is checked against the generated CRD's schema by the same descriptor
walk as BackendPolicy (`convert_policy.check_message`: structure, JSON types,
enum names, unknown fields under `strict`), then parsed with protobuf's JSON
parser.  `portLevelMtls` is a map of messages, which the walk does not cover,
so it is checked here: each key a port number 1-65535 (JSON map keys are
strings), each value a `PeerAuthenticationMtls`; and, as in Istio, only on a
policy with a selector, since a namespace- or mesh-wide policy has no one
workload whose ports it could name.

Errors are `ManifestError`s: `PeerAuthentication default/web:
spec.portLevelMtls.70000: must be a port number 1-65535, got "70000"`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format

from xds_server.model.security import PeerAuthentication
from xds_server.policy_api import peer_authentication_pb2 as pa_pb2
from xds_server.provenance import Origin
from xds_server.sources.convert_common import object_meta
from xds_server.sources.convert_policy import POLICY_FIELDS, check_message
from xds_server.sources.object_reader import ObjectReader, show

__all__ = ["peer_authentication"]

_PORT = re.compile(r"[1-9][0-9]{0,4}")


def _check_ports(obj: ObjectReader, raw: Mapping[str, Any], selected: bool) -> None:
    ports = obj.mapping(raw.get("portLevelMtls"), "spec.portLevelMtls")
    if ports and not selected:
        obj.fail("spec.portLevelMtls", "needs spec.selector (a workload's ports), as in Istio")
    for key, value in ports.items():
        where = f"spec.portLevelMtls.{key}"
        text = str(key)
        if not _PORT.fullmatch(text) or int(text) > 65535:
            obj.fail(where, f"must be a port number 1-65535, got {show(text)}")
        check_message(obj, pa_pb2.PeerAuthenticationMtls.DESCRIPTOR, value, where)


def peer_authentication(
    obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None
) -> PeerAuthentication:
    """A PeerAuthentication manifest as a model value (module doc: validation)."""
    obj.mapping(manifest, "", POLICY_FIELDS)
    meta = object_meta(obj, manifest)
    raw = obj.mapping(manifest.get("spec") or {}, "spec")
    check_message(
        obj,
        pa_pb2.PeerAuthenticationSpec.DESCRIPTOR,
        {k: v for k, v in raw.items() if k != "portLevelMtls"},
        "spec",
    )
    selector = obj.mapping(raw.get("selector"), "spec.selector")
    labels = obj.labels(selector.get("matchLabels"), "spec.selector.matchLabels")
    _check_ports(obj, raw, bool(labels))
    spec = pa_pb2.PeerAuthenticationSpec()
    try:
        json_format.ParseDict(raw, spec, ignore_unknown_fields=not obj.strict)
    except (json_format.ParseError, ValueError, TypeError) as error:
        obj.fail("spec", str(error).split("\n")[0])
    return PeerAuthentication(
        namespace=meta.namespace,
        name=meta.name,
        spec_bytes=spec.SerializeToString(deterministic=True),
        selector=tuple(sorted(labels.items())) or None,
        creation_timestamp=meta.creation_timestamp,
        generation=meta.generation,
        origin=origin,
    )
