"""What Kubernetes allows in the objects the mesh reads: field types, enums, name rules.

The field tables map the real Kubernetes field names, including ones the
mesh never reads, to their JSON types, so valid manifests pass, an unknown
field is refused under strict decoding (as `kubectl apply` refuses it), and
a wrongly typed field is refused even where the mesh ignores it (as the API
server would refuse it).  The name rules are the API server's own (DNS
labels and subdomains, label keys and values, qualified names), with its
length limits from `limits`.  `object_reader` applies them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, NamedTuple

from xds_server.sources import limits

Severity = Literal["error", "warning"]
FieldType = Literal["string", "integer", "port", "boolean", "mapping", "list", "strings",
                    "string-map", "int-or-string", "any"]  # fmt: skip
Fields = Mapping[str, FieldType]

_OBJECT: Fields = {"apiVersion": "string", "kind": "string", "metadata": "mapping"}
METADATA_FIELDS: Fields = {
    "name": "string", "generateName": "string", "namespace": "string", "selfLink": "string",
    "uid": "string", "resourceVersion": "string", "generation": "integer",
    "creationTimestamp": "string", "deletionTimestamp": "string",
    "deletionGracePeriodSeconds": "integer", "labels": "string-map",
    "annotations": "string-map", "ownerReferences": "list", "finalizers": "strings",
    "managedFields": "list",
}  # fmt: skip
SERVICE_FIELDS: Fields = {**_OBJECT, "spec": "mapping", "status": "mapping"}
SERVICE_SPEC_FIELDS: Fields = {
    "ports": "list", "selector": "string-map", "clusterIP": "string", "clusterIPs": "strings",
    "type": "string", "externalIPs": "strings", "sessionAffinity": "string",
    "sessionAffinityConfig": "mapping", "loadBalancerIP": "string",
    "loadBalancerSourceRanges": "strings", "loadBalancerClass": "string",
    "externalName": "string", "externalTrafficPolicy": "string",
    "internalTrafficPolicy": "string", "healthCheckNodePort": "integer",
    "publishNotReadyAddresses": "boolean", "ipFamilies": "strings", "ipFamilyPolicy": "string",
    "allocateLoadBalancerNodePorts": "boolean", "trafficDistribution": "string",
}  # fmt: skip
SERVICE_PORT_FIELDS: Fields = {
    "name": "string", "protocol": "string", "appProtocol": "string", "port": "port",
    "targetPort": "int-or-string", "nodePort": "integer",
}  # fmt: skip
SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
SESSION_AFFINITIES = frozenset({"None", "ClientIP"})
TRAFFIC_POLICIES = frozenset({"Cluster", "Local"})
IP_FAMILIES = frozenset({"IPv4", "IPv6"})
IP_FAMILY_POLICIES = frozenset({"SingleStack", "PreferDualStack", "RequireDualStack"})
PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
SLICE_FIELDS: Fields = {
    **_OBJECT, "addressType": "string", "endpoints": "list", "ports": "list",
}  # fmt: skip
SLICE_PORT_FIELDS: Fields = {
    "name": "string", "protocol": "string", "port": "port", "appProtocol": "string",
}  # fmt: skip
ENDPOINT_FIELDS: Fields = {
    "addresses": "strings", "conditions": "mapping", "hostname": "string",
    "targetRef": "mapping", "nodeName": "string", "zone": "string", "hints": "mapping",
    "deprecatedTopology": "string-map",
}  # fmt: skip
CONDITION_FIELDS: Fields = {"ready": "boolean", "serving": "boolean", "terminating": "boolean"}
HINTS_FIELDS: Fields = {"forZones": "list", "forNodes": "list"}
HINT_FIELDS: Fields = {"name": "string"}
OBJECT_REFERENCE_FIELDS: Fields = {
    "kind": "string", "namespace": "string", "name": "string", "uid": "string",
    "apiVersion": "string", "resourceVersion": "string", "fieldPath": "string",
}  # fmt: skip
ADDRESS_TYPES = frozenset({"IPv4", "IPv6", "FQDN"})
POD_FIELDS: Fields = {**_OBJECT, "spec": "mapping", "status": "mapping"}
POD_SPEC_FIELDS: Fields = {
    "activeDeadlineSeconds": "integer", "affinity": "mapping",
    "automountServiceAccountToken": "boolean", "containers": "list", "dnsConfig": "mapping",
    "dnsPolicy": "string", "enableServiceLinks": "boolean", "ephemeralContainers": "list",
    "hostAliases": "list", "hostIPC": "boolean", "hostNetwork": "boolean", "hostPID": "boolean",
    "hostUsers": "boolean", "hostname": "string", "hostnameOverride": "string",
    "imagePullSecrets": "list", "initContainers": "list", "nodeName": "string",
    "nodeSelector": "string-map", "os": "mapping", "overhead": "mapping",
    "preemptionPolicy": "string", "priority": "integer", "priorityClassName": "string",
    "readinessGates": "list", "resourceClaims": "list", "resources": "mapping",
    "restartPolicy": "string", "runtimeClassName": "string", "schedulerName": "string",
    "schedulingGates": "list", "securityContext": "mapping", "serviceAccount": "string",
    "serviceAccountName": "string", "setHostnameAsFQDN": "boolean",
    "shareProcessNamespace": "boolean", "subdomain": "string",
    "terminationGracePeriodSeconds": "integer", "tolerations": "list",
    "topologySpreadConstraints": "list", "volumes": "list",
}  # fmt: skip
POD_STATUS_FIELDS: Fields = {
    "conditions": "list", "containerStatuses": "list", "ephemeralContainerStatuses": "list",
    "hostIP": "string", "hostIPs": "list", "initContainerStatuses": "list", "message": "string",
    "nominatedNodeName": "string", "observedGeneration": "integer", "phase": "string",
    "podIP": "string", "podIPs": "list", "qosClass": "string", "reason": "string",
    "resize": "string", "resourceClaimStatuses": "list", "startTime": "string",
}  # fmt: skip
POD_IP_FIELDS: Fields = {"ip": "string"}
POD_PHASES = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})


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
    limits.MAX_NAME_LENGTH,
    "a DNS subdomain (lowercase letters, digits, '-' and '.')",
)
LABEL_NAME = NameRule(
    re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"),
    limits.MAX_LABEL_NAME_LENGTH,
    "a name of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
)
LABEL_VALUE = NameRule(
    re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"),
    limits.MAX_LABEL_VALUE_LENGTH,
    "empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
)
