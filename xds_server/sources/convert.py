"""Kubernetes manifests to mesh model values: the one conversion both sources share.

This module owns the mapping from Kubernetes object shapes (`v1/Service`,
`discovery.k8s.io/v1/EndpointSlice`, `v1/Pod`, as plain dicts) to the frozen
model values.  The file source feeds it documents parsed from YAML; the
Kubernetes watcher feeds it objects from the API server; so a manifest means
the same thing whichever way it arrives.

Validation follows the API server's, so that a hand-written file fails here
with the error `kubectl apply` would give, and an object the API server
accepted is never refused: required fields, port numbers and names, IP
addresses, duplicate ports, and strict decoding (a field we do not know, such
as a typo `spec.prots`, is an error naming it).  Every `ManifestError` names
the object and the field path, e.g.
`Service default/backend: spec.ports[1].port: must be an integer 1-65535, got 'abc'`.
Conversion is pure: no I/O, no clock, the same input always gives the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from xds_server.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    ObjectKey,
    Service,
    ServicePort,
    Workload,
)
from xds_server.model.changes import MeshObject
from xds_server.model.types import labels_of
from xds_server.sources.schema import (
    ADDRESS_TYPES,
    CONDITION_FIELDS,
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENDPOINT_FIELDS,
    METADATA_FIELDS,
    OBJECT_REFERENCE_FIELDS,
    POD_FIELDS,
    POD_SPEC_FIELDS,
    POD_STATUS_FIELDS,
    PROTOCOLS,
    SERVICE_FIELDS,
    SERVICE_PORT_FIELDS,
    SERVICE_SPEC_FIELDS,
    SERVICE_TYPES,
    SLICE_FIELDS,
    SLICE_PORT_FIELDS,
    ManifestError,
    NameRule,
    ObjectReader,
    key_path,
    show,
)

__all__ = ["SERVICE_NAME_LABEL", "ManifestError", "convert", "describe"]

logger = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class _Metadata:
    namespace: str
    name: str
    labels: dict[str, str]


def describe(manifest: Mapping[str, Any]) -> tuple[str, ObjectKey | None]:
    """How errors name a manifest ("Service default/backend") and its key, best effort."""
    kind = manifest.get("kind")
    kind_name = kind if isinstance(kind, str) and kind else "object"
    metadata = manifest.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name = name if isinstance(name, str) and name else None
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    if kind_name == "object":
        ref = f"object {namespace}/{name}" if name else "object"
    else:
        ref = f"{kind_name} {namespace}/{name or '<unnamed>'}"
    try:
        key = ObjectKey(Kind(kind_name), namespace, name) if name else None
    except ValueError:
        key = None
    return ref, key


def _metadata(obj: ObjectReader, manifest: Mapping[str, Any], name_rule: NameRule) -> _Metadata:
    metadata = obj.mapping(manifest.get("metadata"), "metadata", METADATA_FIELDS)
    name = obj.required_string(metadata.get("name"), "metadata.name")
    obj.dns_name(name, "metadata.name", name_rule)
    namespace = obj.string(metadata.get("namespace"), "metadata.namespace") or "default"
    obj.dns_name(namespace, "metadata.namespace", DNS_LABEL)
    obj.string_map(metadata.get("annotations"), "metadata.annotations")
    labels = obj.string_map(metadata.get("labels"), "metadata.labels")
    return _Metadata(namespace, name, labels)


def _cluster_ip(obj: ObjectReader, value: Any, field: str) -> str | None:
    """`None` marks a headless Service: like an unset one, it has no virtual IP."""
    text = obj.string(value, field)
    if not text or text == "None":
        return None
    return obj.ip(text, field)


def _service_port(obj: ObjectReader, value: Any, field: str, named: bool) -> ServicePort:
    port = obj.mapping(value, field, SERVICE_PORT_FIELDS)
    name = obj.string(port.get("name"), f"{field}.name") or ""
    if name:
        obj.dns_name(name, f"{field}.name", DNS_LABEL)
    elif named:
        obj.fail(f"{field}.name", "required when the Service has more than one port")
    number = obj.port_number(port.get("port"), f"{field}.port")
    target = port.get("targetPort")
    if isinstance(target, str):
        if (
            len(target) > 15
            or not DNS_LABEL.pattern.fullmatch(target)
            or "--" in target
            or not any(c.isalpha() for c in target)
        ):
            obj.fail(
                f"{field}.targetPort",
                f"must be a port number 1-65535 or a port name (at most 15 lowercase letters, "
                f"digits and '-', with at least one letter), got {show(target)}",
            )
    elif target is None:
        target = number  # the API server's default
    else:
        target = obj.port_number(target, f"{field}.targetPort")
    if port.get("nodePort") is not None:
        obj.port_number(port.get("nodePort"), f"{field}.nodePort")
    return ServicePort(
        port=number,
        name=name,
        target_port=target,
        protocol=obj.one_of(port.get("protocol"), f"{field}.protocol", PROTOCOLS, "TCP"),
        app_protocol=obj.string(port.get("appProtocol"), f"{field}.appProtocol") or None,
    )


def _service(obj: ObjectReader, manifest: Mapping[str, Any]) -> Service:
    obj.mapping(manifest, "", SERVICE_FIELDS)
    meta = _metadata(obj, manifest, DNS_1035_LABEL)
    spec = obj.mapping(manifest.get("spec"), "spec", SERVICE_SPEC_FIELDS)
    service_type = obj.one_of(spec.get("type"), "spec.type", SERVICE_TYPES, "ClusterIP")
    headless = spec.get("clusterIP") == "None"
    cluster_ip = _cluster_ip(obj, spec.get("clusterIP"), "spec.clusterIP")
    for i, ip in enumerate(obj.sequence(spec.get("clusterIPs"), "spec.clusterIPs")):
        _cluster_ip(obj, ip, f"spec.clusterIPs[{i}]")
    raw_ports = obj.sequence(spec.get("ports"), "spec.ports")
    if not raw_ports and not headless and service_type != "ExternalName":
        obj.fail("spec.ports", "required: a Service needs at least one port")
    ports: list[ServicePort] = []
    for i, raw in enumerate(raw_ports):
        field = f"spec.ports[{i}]"
        port = _service_port(obj, raw, field, named=len(raw_ports) > 1)
        for other in ports:
            if port.name and port.name == other.name:
                obj.fail(f"{field}.name", f"duplicate port name {port.name!r}")
            if (port.port, port.protocol) == (other.port, other.protocol):
                obj.fail(f"{field}.port", f"duplicate port {port.port}/{port.protocol}")
        ports.append(port)
    selector = obj.string_map(spec.get("selector"), "spec.selector")
    return Service(
        namespace=meta.namespace,
        name=meta.name,
        ports=tuple(ports),
        selector=labels_of(selector) if selector else None,
        cluster_ip=cluster_ip,
    )


def _slice_port(obj: ObjectReader, value: Any, field: str) -> EndpointPort | None:
    port = obj.mapping(value, field, SLICE_PORT_FIELDS)
    name = obj.string(port.get("name"), f"{field}.name") or ""
    if name:
        obj.dns_name(name, f"{field}.name", DNS_LABEL)
    protocol = obj.one_of(port.get("protocol"), f"{field}.protocol", PROTOCOLS, "TCP")
    app_protocol = obj.string(port.get("appProtocol"), f"{field}.appProtocol") or None
    if port.get("port") is None:
        return None  # "all ports": nothing a proxy can route to by number
    number = obj.port_number(port.get("port"), f"{field}.port")
    return EndpointPort(port=number, name=name, protocol=protocol, app_protocol=app_protocol)


def _endpoint(obj: ObjectReader, value: Any, field: str, address_type: str) -> Endpoint:
    raw = obj.mapping(value, field, ENDPOINT_FIELDS)
    addresses: list[str] = []
    for i, item in enumerate(obj.sequence(raw.get("addresses"), f"{field}.addresses")):
        where = f"{field}.addresses[{i}]"
        address = obj.required_string(item, where)
        if address_type == "FQDN":
            addresses.append(obj.dns_name(address, where, DNS_SUBDOMAIN))
        else:
            addresses.append(obj.ip(address, where, 4 if address_type == "IPv4" else 6))
    if not addresses:
        obj.fail(f"{field}.addresses", "required: an endpoint needs at least one address")
    conditions = obj.mapping(raw.get("conditions"), f"{field}.conditions", CONDITION_FIELDS)
    ready = obj.boolean(conditions.get("ready"), f"{field}.conditions.ready")
    serving = obj.boolean(conditions.get("serving"), f"{field}.conditions.serving")
    terminating = obj.boolean(conditions.get("terminating"), f"{field}.conditions.terminating")
    ready = True if ready is None else ready  # unknown readiness counts as ready
    target = obj.mapping(raw.get("targetRef"), f"{field}.targetRef", OBJECT_REFERENCE_FIELDS)
    target_kind = obj.string(target.get("kind"), f"{field}.targetRef.kind")
    target_name = obj.string(target.get("name"), f"{field}.targetRef.name")
    obj.string(raw.get("hostname"), f"{field}.hostname")
    obj.mapping(raw.get("hints"), f"{field}.hints", frozenset({"forZones", "forNodes"}))
    return Endpoint(
        addresses=tuple(addresses),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(terminating),
        zone=obj.string(raw.get("zone"), f"{field}.zone") or None,
        node_name=obj.string(raw.get("nodeName"), f"{field}.nodeName") or None,
        target_pod=(target_name or None) if target_kind == "Pod" else None,
    )


def _endpoint_slice(obj: ObjectReader, manifest: Mapping[str, Any]) -> EndpointSlice:
    obj.mapping(manifest, "", SLICE_FIELDS)
    meta = _metadata(obj, manifest, DNS_SUBDOMAIN)
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    if not service_name:
        obj.fail(
            key_path("metadata.labels", SERVICE_NAME_LABEL),
            "required: names the Service this slice belongs to",
        )
    if manifest.get("addressType") is None:
        obj.fail("addressType", "required: one of FQDN, IPv4, IPv6")
    address_type = obj.one_of(manifest.get("addressType"), "addressType", ADDRESS_TYPES, "")
    ports: list[EndpointPort] = []
    for i, raw in enumerate(obj.sequence(manifest.get("ports"), "ports")):
        port = _slice_port(obj, raw, f"ports[{i}]")
        if port is None:
            continue
        if any(port.name == other.name for other in ports):
            obj.fail(f"ports[{i}].name", f"duplicate port name {port.name!r}")
        ports.append(port)
    endpoints = tuple(
        _endpoint(obj, raw, f"endpoints[{i}]", address_type)
        for i, raw in enumerate(obj.sequence(manifest.get("endpoints"), "endpoints"))
    )
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service_name=service_name,
        address_type=address_type,
        ports=tuple(ports),
        endpoints=endpoints,
    )


_TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})


def _pod(obj: ObjectReader, manifest: Mapping[str, Any]) -> Workload:
    obj.mapping(manifest, "", POD_FIELDS)
    meta = _metadata(obj, manifest, DNS_SUBDOMAIN)
    spec = obj.mapping(manifest.get("spec"), "spec", POD_SPEC_FIELDS)
    status = obj.mapping(manifest.get("status"), "status", POD_STATUS_FIELDS)
    account = obj.string(spec.get("serviceAccountName"), "spec.serviceAccountName") or (
        obj.string(spec.get("serviceAccount"), "spec.serviceAccount")
    )
    pod_ip = obj.string(status.get("podIP"), "status.podIP")
    if obj.string(status.get("phase"), "status.phase") in _TERMINATED_PHASES:
        pod_ip = ""  # released: the kubelet may already have given it to another pod
    return Workload(
        namespace=meta.namespace,
        name=meta.name,
        labels=labels_of(meta.labels),
        service_account=account or "default",
        ip=obj.ip(pod_ip, "status.podIP") if pod_ip else None,
        node_name=obj.string(spec.get("nodeName"), "spec.nodeName") or None,
    )


_Converter = Callable[[ObjectReader, Mapping[str, Any]], MeshObject]
_CONVERTERS: dict[tuple[str, str], _Converter] = {
    ("v1", "Service"): _service,
    ("discovery.k8s.io/v1", "EndpointSlice"): _endpoint_slice,
    ("v1", "Pod"): _pod,
}
_API_VERSION_OF_KIND = {kind: api_version for api_version, kind in _CONVERTERS}


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def convert(manifest: Mapping[str, Any], *, strict: bool = True) -> MeshObject | None:
    """The model value a manifest describes, or None for a kind the mesh does not use.

    Raises ManifestError naming the object and field when the manifest is not
    valid.  `strict` rejects fields Kubernetes does not define (as `kubectl
    apply` does); a watcher of the API server, whose objects are already
    validated and may carry fields newer than this module, can pass False.
    """
    if not isinstance(manifest, Mapping):
        raise ManifestError("object", None, f"must be a mapping, got {show(manifest)}")
    ref, key = describe(manifest)
    obj = ObjectReader(ref, key, strict)
    kind = obj.required_string(manifest.get("kind"), "kind")
    api_version = obj.required_string(manifest.get("apiVersion"), "apiVersion")
    converter = _CONVERTERS.get((api_version, kind))
    if converter is None:
        supported = _API_VERSION_OF_KIND.get(kind)
        if supported is not None and _group(supported) == _group(api_version):
            obj.fail("apiVersion", f"unsupported version {api_version!r}, use {supported!r}")
        logger.debug("ignoring %s (%s)", ref, api_version)
        return None
    return converter(obj, manifest)
