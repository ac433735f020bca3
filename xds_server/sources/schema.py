"""What Kubernetes allows in the objects we read, and a reader that names fields.

`convert` reads manifests through `ObjectReader`, which checks each field's type
as it is read and, when strict, rejects field names Kubernetes does not define
(the API server's strict decoding).  The field tables hold the real Kubernetes
field names, including ones the mesh never reads, so valid manifests pass.  A
failure is a `ManifestError` naming the object and the field path, in the
API server's notation: `spec.ports[1].port`, `metadata.labels[app]`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

from xds_server.model import ObjectKey

METADATA_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion",
    "generation", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
    "labels", "annotations", "ownerReferences", "finalizers", "managedFields",
})  # fmt: skip
SERVICE_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
SERVICE_SPEC_FIELDS = frozenset({
    "ports", "selector", "clusterIP", "clusterIPs", "type", "externalIPs", "sessionAffinity",
    "sessionAffinityConfig", "loadBalancerIP", "loadBalancerSourceRanges", "loadBalancerClass",
    "externalName", "externalTrafficPolicy", "internalTrafficPolicy", "healthCheckNodePort",
    "publishNotReadyAddresses", "ipFamilies", "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts", "trafficDistribution",
})  # fmt: skip
SERVICE_PORT_FIELDS = frozenset(
    {"name", "protocol", "appProtocol", "port", "targetPort", "nodePort"}
)
SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
SLICE_FIELDS = frozenset({"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"})
SLICE_PORT_FIELDS = frozenset({"name", "protocol", "port", "appProtocol"})
ENDPOINT_FIELDS = frozenset({
    "addresses", "conditions", "hostname", "targetRef", "nodeName", "zone", "hints",
    "deprecatedTopology",
})  # fmt: skip
CONDITION_FIELDS = frozenset({"ready", "serving", "terminating"})
OBJECT_REFERENCE_FIELDS = frozenset(
    {"kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"}
)
ADDRESS_TYPES = frozenset({"IPv4", "IPv6", "FQDN"})
POD_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
POD_SPEC_FIELDS = frozenset({
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers",
    "dnsConfig", "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases",
    "hostIPC", "hostNetwork", "hostPID", "hostUsers", "hostname", "hostnameOverride",
    "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims",
    "resources", "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates",
    "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN",
    "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds", "tolerations",
    "topologySpreadConstraints", "volumes",
})  # fmt: skip
POD_STATUS_FIELDS = frozenset({
    "conditions", "containerStatuses", "ephemeralContainerStatuses", "hostIP", "hostIPs",
    "initContainerStatuses", "message", "nominatedNodeName", "observedGeneration", "phase",
    "podIP", "podIPs", "qosClass", "reason", "resize", "resourceClaimStatuses", "startTime",
})  # fmt: skip


class NameRule(NamedTuple):
    pattern: re.Pattern[str]
    limit: int
    description: str


DNS_LABEL = NameRule(
    re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"),
    63,
    "a DNS label (lowercase letters, digits and '-')",
)
DNS_1035_LABEL = NameRule(
    re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?"),
    63,
    "a DNS label starting with a letter (lowercase letters, digits and '-')",
)
DNS_SUBDOMAIN = NameRule(
    re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"),
    253,
    "a DNS subdomain (lowercase letters, digits, '-' and '.')",
)


class ManifestError(ValueError):
    """A manifest that is not a valid object; says which object, which field, and why.

    `key` is the object's identity when the manifest names one, so a caller can
    keep the object's previous good version in force.
    """

    def __init__(
        self, object_ref: str, field: str | None, message: str, key: ObjectKey | None = None
    ) -> None:
        self.object_ref = object_ref
        self.field = field
        self.message = message
        self.key = key
        super().__init__(object_ref, field, message)

    def __str__(self) -> str:
        return ": ".join(part for part in (self.object_ref, self.field, self.message) if part)


def show(value: Any) -> str:
    """A value as the manifest author wrote it, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def key_path(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]"


@dataclass(frozen=True)
class ObjectReader:
    """The object being converted: reads its fields and names them on failure."""

    ref: str
    key: ObjectKey | None
    strict: bool

    def fail(self, field: str | None, message: str) -> NoReturn:
        raise ManifestError(self.ref, field, message, self.key)

    def mapping(
        self, value: Any, field: str, allowed: frozenset[str] | None = None
    ) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(field, f"must be a mapping, got {show(value)}")
        for name in value:
            if not isinstance(name, str):
                self.fail(field, f"field names must be strings, got {show(name)}")
            if allowed is not None and self.strict and name not in allowed:
                self.fail(f"{field}.{name}" if field else name, "unknown field")
        return value

    def sequence(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(field, f"must be a list, got {show(value)}")
        return value

    def string(self, value: Any, field: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(field, f"must be a string, got {show(value)}")
        return value

    def required_string(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if not text:
            self.fail(field, "required")
        return text

    def boolean(self, value: Any, field: str) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {show(value)}")
        return value

    def one_of(self, value: Any, field: str, allowed: frozenset[str], default: str) -> str:
        text = self.string(value, field)
        if text is None:
            return default
        if text not in allowed:
            self.fail(field, f"must be one of {', '.join(sorted(allowed))}, got {show(text)}")
        return text

    def port_number(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.fail(field, f"must be an integer 1-65535, got {show(value)}")
        return value

    def dns_name(self, value: str, field: str, rule: NameRule) -> str:
        if len(value) > rule.limit or not rule.pattern.fullmatch(value):
            self.fail(
                field,
                f"must be {rule.description}, at most {rule.limit} characters, got {show(value)}",
            )
        return value

    def string_map(self, value: Any, field: str) -> dict[str, str]:
        result: dict[str, str] = {}
        for name, item in self.mapping(value, field).items():
            if not isinstance(item, str):
                self.fail(key_path(field, name), f"must be a string, got {show(item)}")
            result[name] = item
        return result

    def ip(self, value: str, field: str, version: int | None = None) -> str:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            self.fail(field, f"must be an IP address, got {show(value)}")
        if version is not None and address.version != version:
            self.fail(field, f"must be an IPv{version} address, got {show(value)}")
        return str(address)
