"""Kubernetes manifests to mesh model values: the one conversion both sources share.

This module owns the mapping from Kubernetes object shapes (`v1/Service`,
`discovery.k8s.io/v1/EndpointSlice`, `v1/Pod`, as plain dicts) to the frozen
model values; the traffic-policy kinds (Gateway API `HTTPRoute` and
`GRPCRoute`, the project's `BackendPolicy`) are read by `convert_routes` and
`convert_policy` and dispatched from here.  The file source feeds it documents parsed from YAML; the
Kubernetes watcher feeds it objects from the API server; so a manifest means
the same thing whichever way it arrives.

Validation follows the API server's, so that a hand-written file fails here
with the error `kubectl apply` would give, and an object the API server
accepted is never refused: required fields, types, enums, ranges, names,
labels and annotations, IP addresses and their families, duplicate ports, the
API server's caps (1,000 endpoints and 100 ports a slice, 100 addresses an
endpoint), and strict decoding (a field we do not know, such as a typo
`spec.prots`, is an error naming it).  Beyond the API server, every string
the mesh hands to Envoy is bounded and free of control characters and lone
surrogates (which protobuf cannot encode), so a converted object always
translates.  Two deliberate differences, for a mesh that may run on one
host: loopback and link-local endpoint addresses are accepted, and a Pod
needs no containers.

Every `ManifestError` names the object and the field path, e.g.
`Service default/backend: spec.ports[1].port: must be an integer 1-65535, got 'abc'`.
A kind the mesh does not read converts to None; a near miss of one it reads
(`kind: Services`, `Service ` with a space, `endpointslice`, a Service in
`apps/v1`) raises a ManifestError of severity "warning" with a "did you
mean", keyed by the object it probably meant (see `kinds`).
Conversion is pure: no I/O, no clock, the same input always gives the same value
(and the origin it is given, which equality ignores).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
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
from xds_server.provenance import Origin
from xds_server.sources import limits
from xds_server.sources.convert_authorization import authorization_policy
from xds_server.sources.convert_common import core_meta
from xds_server.sources.convert_peer_authentication import peer_authentication
from xds_server.sources.convert_policy import POLICY_API_VERSION, backend_policy
from xds_server.sources.convert_routes import GATEWAY_API_VERSION_V1, grpc_route, http_route
from xds_server.sources.convert_telemetry import telemetry
from xds_server.sources.kinds import near_miss
from xds_server.sources.object_reader import (
    ManifestError,
    ObjectReader,
    check_values,
    escaped,
    key_path,
    show,
)
from xds_server.sources.schema import (
    ADDRESS_TYPES,
    CONDITION_FIELDS,
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENDPOINT_FIELDS,
    HINT_FIELDS,
    HINTS_FIELDS,
    IP_FAMILIES,
    IP_FAMILY_POLICIES,
    OBJECT_REFERENCE_FIELDS,
    POD_FIELDS,
    POD_IP_FIELDS,
    POD_PHASES,
    POD_SPEC_FIELDS,
    POD_STATUS_FIELDS,
    PROTOCOLS,
    SERVICE_FIELDS,
    SERVICE_PORT_FIELDS,
    SERVICE_SPEC_FIELDS,
    SERVICE_TYPES,
    SESSION_AFFINITIES,
    SLICE_FIELDS,
    SLICE_PORT_FIELDS,
    TRAFFIC_POLICIES,
)

__all__ = ["SERVICE_NAME_LABEL", "ManifestError", "convert", "describe"]

logger = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def describe(manifest: Mapping[str, Any]) -> tuple[str, ObjectKey | None]:
    """How errors name a manifest ("Service default/backend") and its key, best effort.

    Every part is cut and escaped, so a 5 MB name makes a short reference.
    """
    kind = manifest.get("kind")
    kind_name = escaped(kind) if isinstance(kind, str) and kind else "object"
    metadata = manifest.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name = name if isinstance(name, str) and name else None
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    shown_name = escaped(name) if name else None
    where = f"{escaped(namespace)}/{shown_name}" if shown_name else None
    if kind_name == "object":
        ref = f"object {where}" if where else "object"
    else:
        ref = f"{kind_name} {where or escaped(namespace) + '/<unnamed>'}"
    try:
        key = ObjectKey(Kind(kind), namespace, name) if name else None
    except ValueError:
        key = None
    return ref, key


def _app_protocol(obj: ObjectReader, value: Any, field: str) -> str | None:
    text = obj.string(value, field)
    return obj.qualified_name(text, field, "appProtocol") if text else None


def _cluster_ip(obj: ObjectReader, value: Any, field: str) -> str | None:
    """`None` marks a headless Service: like an unset one, it has no virtual IP."""
    text = obj.string(value, field)
    if not text or text == "None":
        return None
    return obj.ip(text, field)


def _target_port(obj: ObjectReader, value: Any, field: str, number: int) -> int | str:
    if value is None or value == 0 or value == "":
        return number  # the API server's default
    if isinstance(value, str):
        if (
            len(value) > 15
            or not DNS_LABEL.pattern.fullmatch(value)
            or "--" in value
            or not any(c.isalpha() for c in value)
        ):
            obj.fail(
                field,
                f"must be a port number 1-65535 or a port name (at most 15 lowercase letters, "
                f"digits and '-', with at least one letter), got {show(value)}",
            )
        return value
    return obj.port_number(value, field)


def _service_port(obj: ObjectReader, value: Any, field: str, named: bool) -> ServicePort:
    port = obj.mapping(value, field, SERVICE_PORT_FIELDS)
    name = obj.string(port.get("name"), f"{field}.name") or ""
    if name:
        obj.dns_name(name, f"{field}.name", DNS_LABEL)
    elif named:
        obj.fail(f"{field}.name", "required when the Service has more than one port")
    number = obj.port_number(port.get("port"), f"{field}.port")
    target = _target_port(obj, port.get("targetPort"), f"{field}.targetPort", number)
    obj.integer(port.get("nodePort"), f"{field}.nodePort", 0, 65535)
    return ServicePort(
        port=number,
        name=name,
        target_port=target,
        protocol=obj.one_of(port.get("protocol"), f"{field}.protocol", PROTOCOLS, "TCP"),
        app_protocol=_app_protocol(obj, port.get("appProtocol"), f"{field}.appProtocol"),
    )


def _service_ports(obj: ObjectReader, raw_ports: list[Any], node_ports: bool) -> list[ServicePort]:
    ports: list[ServicePort] = []
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    for i, raw in enumerate(raw_ports):
        field = f"spec.ports[{i}]"
        port = _service_port(obj, raw, field, named=len(raw_ports) > 1)
        if port.name in names:
            obj.fail(f"{field}.name", f"duplicate port name {port.name!r}")
        if (port.port, port.protocol) in numbers:
            obj.fail(f"{field}.port", f"duplicate port {port.port}/{port.protocol}")
        if not node_ports and raw.get("nodePort"):
            obj.fail(f"{field}.nodePort", "only a NodePort or LoadBalancer Service has node ports")
        if port.name:
            names.add(port.name)
        numbers.add((port.port, port.protocol))
        ports.append(port)
    return ports


def _cluster_ips(obj: ObjectReader, spec: Mapping[str, Any]) -> str | None:
    """clusterIP and clusterIPs agree, one address per family, matching ipFamilies."""
    cluster_ip = _cluster_ip(obj, spec.get("clusterIP"), "spec.clusterIP")
    raw = obj.sequence(spec.get("clusterIPs"), "spec.clusterIPs", 2)
    families = obj.sequence(spec.get("ipFamilies"), "spec.ipFamilies", 2)
    for i, family in enumerate(families):
        obj.one_of(family, f"spec.ipFamilies[{i}]", IP_FAMILIES, "")
    if len(set(families)) < len(families):
        obj.fail("spec.ipFamilies[1]", f"duplicate family {families[1]!r}")
    policy = obj.one_of(spec.get("ipFamilyPolicy"), "spec.ipFamilyPolicy", IP_FAMILY_POLICIES, "")
    if raw and spec.get("clusterIP") is not None and raw[0] != spec.get("clusterIP"):
        obj.fail("spec.clusterIPs[0]", f"must equal spec.clusterIP, got {show(raw[0])}")
    if "None" in raw and len(raw) > 1:
        obj.fail("spec.clusterIPs", "'None' must be the only entry of a headless Service")
    versions = [
        ipaddress.ip_address(address).version
        for address in (_cluster_ip(obj, ip, f"spec.clusterIPs[{i}]") for i, ip in enumerate(raw))
        if address is not None
    ]
    if len(versions) == 2 and versions[0] == versions[1]:
        obj.fail("spec.clusterIPs[1]", "a dual-stack Service needs one IPv4 and one IPv6 address")
    if len(versions) == 2 and policy == "SingleStack":
        obj.fail("spec.clusterIPs", "a SingleStack Service has one cluster IP")
    for i, version in enumerate(versions[: len(families)]):
        if families[i] != f"IPv{version}":
            obj.fail(f"spec.ipFamilies[{i}]", f"must be IPv{version}, as spec.clusterIPs[{i}] is")
    return cluster_ip


def _service(obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None) -> Service:
    obj.mapping(manifest, "", SERVICE_FIELDS)
    meta = core_meta(obj, manifest, DNS_1035_LABEL)
    spec = obj.mapping(manifest.get("spec"), "spec", SERVICE_SPEC_FIELDS)
    service_type = obj.one_of(spec.get("type"), "spec.type", SERVICE_TYPES, "ClusterIP")
    obj.one_of(spec.get("sessionAffinity"), "spec.sessionAffinity", SESSION_AFFINITIES, "None")
    for policy in ("externalTrafficPolicy", "internalTrafficPolicy"):
        obj.one_of(spec.get(policy), f"spec.{policy}", TRAFFIC_POLICIES, "Cluster")
    obj.integer(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort", 0, 65535)
    for i, ip in enumerate(spec.get("externalIPs") or ()):
        obj.ip(ip, f"spec.externalIPs[{i}]")
    headless = spec.get("clusterIP") == "None"
    cluster_ip = _cluster_ips(obj, spec)
    if service_type == "ExternalName":
        external = obj.required_string(spec.get("externalName"), "spec.externalName")
        obj.dns_name(external.removesuffix("."), "spec.externalName", DNS_SUBDOMAIN)
        if cluster_ip is not None:
            obj.fail("spec.clusterIP", "must be empty for an ExternalName Service")
    raw_ports = obj.sequence(spec.get("ports"), "spec.ports", limits.MAX_SERVICE_PORTS)
    if not raw_ports and not headless and service_type != "ExternalName":
        obj.fail("spec.ports", "required: a Service needs at least one port")
    node_ports = service_type in ("NodePort", "LoadBalancer")
    ports = _service_ports(obj, raw_ports, node_ports)
    selector = obj.labels(spec.get("selector"), "spec.selector")
    return Service(
        namespace=meta.namespace,
        name=meta.name,
        ports=tuple(ports),
        selector=labels_of(selector) if selector else None,
        cluster_ip=cluster_ip,
        origin=origin,
    )


def _slice_port(obj: ObjectReader, value: Any, field: str) -> EndpointPort | None:
    port = obj.mapping(value, field, SLICE_PORT_FIELDS)
    name = obj.string(port.get("name"), f"{field}.name") or ""
    if name:
        obj.dns_name(name, f"{field}.name", DNS_LABEL)
    protocol = obj.one_of(port.get("protocol"), f"{field}.protocol", PROTOCOLS, "TCP")
    app_protocol = _app_protocol(obj, port.get("appProtocol"), f"{field}.appProtocol")
    if port.get("port") is None:
        return None  # "all ports": nothing a proxy can route to by number
    number = obj.port_number(port.get("port"), f"{field}.port")
    return EndpointPort(port=number, name=name, protocol=protocol, app_protocol=app_protocol)


def _address(obj: ObjectReader, value: Any, field: str, address_type: str) -> str:
    address = obj.required_string(value, field)
    if address_type == "FQDN":
        name = obj.dns_name(address.removesuffix("."), field, DNS_SUBDOMAIN)
        if "." not in name:
            obj.fail(field, f"must be a fully qualified domain name, got {show(address)}")
        return address
    text = obj.ip(address, field, 4 if address_type == "IPv4" else 6)
    ip = ipaddress.ip_address(text)
    if ip.is_unspecified or ip.is_multicast:
        obj.fail(field, f"must be a unicast address, got {show(address)}")
    return text


def _endpoint(obj: ObjectReader, value: Any, field: str, address_type: str) -> Endpoint:
    raw = obj.mapping(value, field, ENDPOINT_FIELDS)
    where = f"{field}.addresses"
    raw_addresses = obj.sequence(raw.get("addresses"), where, limits.MAX_ADDRESSES_PER_ENDPOINT)
    if not raw_addresses:
        obj.fail(where, "required: an endpoint needs at least one address")
    addresses = tuple(
        _address(obj, item, f"{where}[{i}]", address_type) for i, item in enumerate(raw_addresses)
    )
    conditions = obj.mapping(raw.get("conditions"), f"{field}.conditions", CONDITION_FIELDS)
    ready = conditions.get("ready")
    serving = conditions.get("serving")
    ready = True if ready is None else ready  # unknown readiness counts as ready
    target = obj.mapping(raw.get("targetRef"), f"{field}.targetRef", OBJECT_REFERENCE_FIELDS)
    for name, text in target.items():
        obj.text(text, f"{field}.targetRef.{name}", limits.MAX_NAME_LENGTH)
    hostname = obj.string(raw.get("hostname"), f"{field}.hostname")
    if hostname is not None:
        obj.dns_name(hostname, f"{field}.hostname", DNS_LABEL)
    node_name = obj.string(raw.get("nodeName"), f"{field}.nodeName")
    if node_name:
        obj.dns_name(node_name, f"{field}.nodeName", DNS_SUBDOMAIN)
    hints = obj.mapping(raw.get("hints"), f"{field}.hints", HINTS_FIELDS)
    for group in ("forZones", "forNodes"):
        for i, hint in enumerate(obj.sequence(hints.get(group), f"{field}.hints.{group}", 8)):
            where = f"{field}.hints.{group}[{i}]"
            obj.text(obj.mapping(hint, where, HINT_FIELDS).get("name"), f"{where}.name")
    obj.labels(raw.get("deprecatedTopology"), f"{field}.deprecatedTopology")
    return Endpoint(
        addresses=addresses,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(conditions.get("terminating")),
        zone=obj.text(raw.get("zone"), f"{field}.zone") or None,
        node_name=node_name or None,
        target_pod=(target.get("name") or None) if target.get("kind") == "Pod" else None,
    )


def _endpoint_slice(
    obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None
) -> EndpointSlice:
    obj.mapping(manifest, "", SLICE_FIELDS)
    meta = core_meta(obj, manifest, DNS_SUBDOMAIN)
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
    names: set[str] = set()
    for i, raw in enumerate(
        obj.sequence(manifest.get("ports"), "ports", limits.MAX_PORTS_PER_SLICE)
    ):
        port = _slice_port(obj, raw, f"ports[{i}]")
        name = port.name if port else (obj.mapping(raw, "").get("name") or "")
        if name in names:
            obj.fail(f"ports[{i}].name", f"duplicate port name {name!r}")
        names.add(name)
        if port is not None:
            ports.append(port)
    raw_endpoints = obj.sequence(
        manifest.get("endpoints"), "endpoints", limits.MAX_ENDPOINTS_PER_SLICE
    )
    endpoints = tuple(
        _endpoint(obj, raw, f"endpoints[{i}]", address_type) for i, raw in enumerate(raw_endpoints)
    )
    return EndpointSlice(
        namespace=meta.namespace,
        name=meta.name,
        service_name=service_name,
        address_type=address_type,
        ports=tuple(ports),
        endpoints=endpoints,
        origin=origin,
    )


_TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})


def _pod(obj: ObjectReader, manifest: Mapping[str, Any], origin: Origin | None) -> Workload:
    obj.mapping(manifest, "", POD_FIELDS)
    meta = core_meta(obj, manifest, DNS_SUBDOMAIN)
    spec = obj.mapping(manifest.get("spec"), "spec", POD_SPEC_FIELDS)
    status = obj.mapping(manifest.get("status"), "status", POD_STATUS_FIELDS)
    accounts = [
        obj.dns_name(account, f"spec.{field}", DNS_SUBDOMAIN)
        for field in ("serviceAccountName", "serviceAccount")
        if (account := obj.string(spec.get(field), f"spec.{field}"))
    ]
    node_name = obj.string(spec.get("nodeName"), "spec.nodeName")
    if node_name:
        obj.dns_name(node_name, "spec.nodeName", DNS_SUBDOMAIN)
    for i, entry in enumerate(obj.sequence(status.get("podIPs"), "status.podIPs", 2)):
        ip = obj.mapping(entry, f"status.podIPs[{i}]", POD_IP_FIELDS).get("ip")
        obj.ip(obj.required_string(ip, f"status.podIPs[{i}].ip"), f"status.podIPs[{i}].ip")
    if status.get("hostIP"):
        obj.ip(status["hostIP"], "status.hostIP")
    pod_ip = obj.string(status.get("podIP"), "status.podIP")
    phase = obj.one_of(status.get("phase"), "status.phase", POD_PHASES, "Pending")
    if phase in _TERMINATED_PHASES:
        pod_ip = ""  # released: the kubelet may already have given it to another pod
    return Workload(
        namespace=meta.namespace,
        name=meta.name,
        labels=labels_of(meta.labels),
        service_account=accounts[0] if accounts else "default",
        ip=obj.ip(pod_ip, "status.podIP") if pod_ip else None,
        node_name=node_name or None,
        origin=origin,
    )


_Converter = Callable[[ObjectReader, Mapping[str, Any], Origin | None], MeshObject]
_CONVERTERS: dict[tuple[str, str], _Converter] = {
    ("v1", "Service"): _service,
    ("discovery.k8s.io/v1", "EndpointSlice"): _endpoint_slice,
    ("v1", "Pod"): _pod,
    (GATEWAY_API_VERSION_V1, "HTTPRoute"): http_route,
    (GATEWAY_API_VERSION_V1, "GRPCRoute"): grpc_route,
    (POLICY_API_VERSION, "BackendPolicy"): backend_policy,
    (POLICY_API_VERSION, "AuthorizationPolicy"): authorization_policy,
    (POLICY_API_VERSION, "PeerAuthentication"): peer_authentication,
    (POLICY_API_VERSION, "Telemetry"): telemetry,
}


def convert(
    manifest: Mapping[str, Any], *, strict: bool = True, origin: Origin | None = None
) -> MeshObject | None:
    """The model value a manifest describes, or None for a kind the mesh does not use.

    Raises ManifestError naming the object and field when the manifest is not
    valid, and a ManifestError of severity "warning" when its kind or
    apiVersion is a near miss of one the mesh reads.  `strict` rejects fields
    Kubernetes does not define (as `kubectl apply` does); a watcher of the
    API server, whose objects are already validated and may carry fields
    newer than this module, can pass False.  `origin` (where the source read the
    manifest) is stamped on the value; it is provenance, not part of the value.
    """
    if not isinstance(manifest, Mapping):
        raise ManifestError("object", None, f"must be a mapping, got {show(manifest)}")
    ref, key = describe(manifest)
    obj = ObjectReader(ref, key, strict)
    kind = obj.required_string(manifest.get("kind"), "kind")
    api_version = obj.required_string(manifest.get("apiVersion"), "apiVersion")
    converter = _CONVERTERS.get((api_version, kind))
    if converter is None:
        miss = near_miss(api_version, kind, _CONVERTERS)
        if miss is None:
            logger.debug("ignoring %s (%s)", ref, escaped(api_version))
            return None
        meant = describe(dict(manifest, kind=miss.kind))[1] if miss.kind else None
        raise ManifestError(ref, miss.field, miss.message, meant, miss.severity)
    check_values(obj, manifest)
    return converter(obj, manifest, origin)
