"""The bootstrap of an injected sidecar, rendered inside its pod when the pod starts.

Envoy does not expand environment variables in its bootstrap, and the values
that identify a sidecar (pod name, namespace, IP, service account, labels) are
known only once the pod exists, so the injected `mesh-bootstrap` init container
runs `xds-server sidecar-bootstrap` with those values from the downward API and
writes the result to an emptyDir that the Envoy container mounts read-only.

On top of the canonical sidecar bootstrap (`xds_server.bootstrap`, in REDIRECT
interception mode for the transparent-capture listeners) this adds one static
listener for the kubelet: Envoy's admin API stays on 127.0.0.1, where the
kubelet cannot reach it and where no one else can call `/quitquitquit`, and the
`mesh_health` listener on `0.0.0.0:15021` forwards exactly `GET /ready` to it
(Istio exposes its readiness on 15021 the same way).  `/ready` answers 200 only
once Envoy is LIVE, i.e. after its first LDS and CDS have arrived (Envoy binds
no listener before that, so the probe is refused until then, and the initial
fetch never times out, as in Istio), so the probe means "this sidecar has its
mesh config".  Every other path gets a 404 from
the listener itself.  The capture rules exclude 15021 from inbound redirection.

The sidecar speaks TLS to the control plane and proves its identity with the
Pod's projected ServiceAccount token (`token_client_tls`): the token is sent
as `authorization: Bearer` metadata on the ADS stream, and Envoy accepts the
xDS server only with a certificate chaining to the mesh's roots (read from the
mounted ConfigMap by file name, through file-based SDS watching its
directory, so a refreshed bundle is used on the next connection) and naming
the control plane's SPIFFE ID.  Envoy sends the token it was started with:
the token must outlive the Pod's last reconnection to the control plane
(`InjectionConfig.token_expiration_seconds`).

The node id is `POD_NAME.POD_NAMESPACE`, the key under which the Kubernetes
source knows the Pod; the workload name is derived from the pod's labels (see
`workload_name`) so that every replica of a workload shares a node cluster.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import yaml

from xds_server.bootstrap import XdsClientTls, file_source, render_bootstrap
from xds_server.security.xds_tls import xds_server_id

logger = logging.getLogger(__name__)

ADMIN_PORT = 15000
HEALTH_PORT = 15021
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
READY_PATH = "/ready"
TOKEN_DIR = "/var/run/secrets/xds-server"
TOKEN_PATH = f"{TOKEN_DIR}/token"
"""The projected ServiceAccount token the sidecar proves itself with."""
ROOTS_DIR = "/etc/mesh/xds-roots"
ROOTS_PATH = f"{ROOTS_DIR}/root-cert.pem"
"""The mesh's trust bundle, from the ConfigMap the control plane publishes."""
HEALTH_LISTENER_NAME = "mesh_health"
ADMIN_CLUSTER_NAME = "mesh_admin"

# Labels the workload controllers put on their pods, and how each names its pods.
_POD_TEMPLATE_HASH = "pod-template-hash"  # Deployment -> ReplicaSet: NAME-HASH-xxxxx
_CONTROLLER_REVISION_HASH = "controller-revision-hash"  # DaemonSet, StatefulSet
_STATEFULSET_POD_NAME = "statefulset.kubernetes.io/pod-name"  # NAME-ORDINAL
_JOB_NAME = "job-name"  # a Job (and a CronJob's Jobs): NAME-xxxxx
_NAME_LABELS = ("app.kubernetes.io/name", "app")
_DOWNWARD_LINE = re.compile(r'^(?P<key>[^=\s]+)="(?P<value>(?:[^"\\]|\\.)*)"$')


def workload_name(pod_name: str, labels: Mapping[str, str]) -> str:
    """The workload a pod belongs to, from what the pod itself can see.

    `app.kubernetes.io/name` or `app` when set (what operators name things by),
    else the owning controller's name recovered from the pod name and the
    labels the controller stamps: Job pods carry `job-name`; StatefulSet pods
    are `NAME-ORDINAL`; Deployment pods `NAME-HASH-xxxxx` with the hash in
    `pod-template-hash`; DaemonSet pods `NAME-xxxxx`.  A bare pod is its own
    workload.
    """
    for key in _NAME_LABELS:
        if labels.get(key):
            return labels[key]
    if labels.get(_JOB_NAME):
        return labels[_JOB_NAME]
    if _STATEFULSET_POD_NAME in labels:
        head, sep, ordinal = pod_name.rpartition("-")
        if sep and ordinal.isdigit():
            return head
    template_hash = labels.get(_POD_TEMPLATE_HASH)
    if template_hash:
        head, sep, _suffix = pod_name.rpartition("-")
        marker = f"-{template_hash}"
        if sep and head.endswith(marker):
            return head[: -len(marker)]
    if _CONTROLLER_REVISION_HASH in labels:
        head, sep, _suffix = pod_name.rpartition("-")
        if sep and head:
            return head
    return pod_name


def parse_downward_labels(text: str) -> dict[str, str]:
    """Labels from a downward API `metadata.labels` file: `key="value"` lines.

    The kubelet writes values Go-quoted; label values are restricted to
    `[A-Za-z0-9._-]`, so JSON string decoding reads them exactly.
    """
    labels: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _DOWNWARD_LINE.match(line.strip())
        if match is None:
            raise ValueError(f'labels file line {number}: expected key="value", got {line!r}')
        labels[match["key"]] = json.loads(f'"{match["value"]}"')
    return labels


def readiness_resources(
    *, health_port: int = HEALTH_PORT, admin_port: int = ADMIN_PORT, ipv6: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `mesh_health` listener and the `mesh_admin` cluster it forwards `/ready` to."""
    listen: dict[str, Any] = {"address": "::" if ipv6 else "0.0.0.0", "port_value": health_port}
    if ipv6:
        listen["ipv4_compat"] = True
    listener = {
        "name": HEALTH_LISTENER_NAME,
        "address": {"socket_address": listen},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": HEALTH_LISTENER_NAME,
                            "route_config": {
                                "name": HEALTH_LISTENER_NAME,
                                "virtual_hosts": [
                                    {
                                        "name": HEALTH_LISTENER_NAME,
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {
                                                    "path": READY_PATH,
                                                    "headers": [
                                                        {
                                                            "name": ":method",
                                                            "string_match": {"exact": "GET"},
                                                        }
                                                    ],
                                                },
                                                "route": {
                                                    "cluster": ADMIN_CLUSTER_NAME,
                                                    "timeout": "2s",
                                                },
                                            }
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    cluster = {
        "name": ADMIN_CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER_NAME,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": admin_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return listener, cluster


def token_client_tls(
    *,
    token: str,
    roots_file: str,
    trust_domain: str = "cluster.local",
    control_plane_namespace: str = "mesh-system",
    sds_directory: str | None = None,
) -> XdsClientTls:
    """The sidecar's xDS credential: its token, and the roots by file name.

    With `sds_directory` (where the bootstrap is written) the roots are read
    through file-based SDS kept there, watching the roots' directory (the
    mounted ConfigMap); without, Envoy reads them once, at start.
    """
    token = token.strip()
    if not token:
        raise ValueError("the ServiceAccount token is empty")
    return XdsClientTls(
        server_id=xds_server_id(trust_domain, control_plane_namespace),
        roots=file_source(roots_file),
        token=token,
        watched_directory=str(PurePosixPath(roots_file).parent) if sds_directory else None,
        sds_directory=sds_directory,
    )


def render_pod_bootstrap(
    *,
    pod_name: str,
    namespace: str,
    pod_ip: str,
    service_account: str,
    xds_address: str,
    labels: Mapping[str, str] | None = None,
    admin_port: int = ADMIN_PORT,
    health_port: int = HEALTH_PORT,
    outbound_port: int = OUTBOUND_PORT,
    inbound_port: int = INBOUND_PORT,
    delta: bool = False,
    xds_tls: XdsClientTls | None = None,
) -> str:
    """The bootstrap YAML of an injected sidecar (see the module docstring); `xds_tls`
    None is plaintext xDS (a control plane with `--insecure-xds`).

    Raises `ValueError` for a missing pod name or namespace, a malformed IP or
    address, or a port clash between the admin and health listeners.
    """
    if not pod_name or not namespace:
        raise ValueError("the pod name and namespace are required (downward API env vars)")
    ports = {admin_port, health_port, outbound_port, inbound_port}
    if len(ports) != 4:
        raise ValueError(
            f"the admin ({admin_port}), health ({health_port}), outbound ({outbound_port}) "
            f"and inbound ({inbound_port}) ports must differ"
        )
    try:
        ipv6 = ipaddress.ip_address(pod_ip).version == 6
    except ValueError:
        raise ValueError(f"the pod IP {pod_ip!r} is not an IP address (INSTANCE_IP)") from None
    pod_labels = dict(labels or {})
    text = render_bootstrap(
        node_id=f"{pod_name}.{namespace}",
        namespace=namespace,
        xds_address=xds_address,
        admin_port=admin_port,
        delta=delta,
        workload=workload_name(pod_name, pod_labels),
        service_account=service_account or "default",
        labels=pod_labels,
        instance_ip=pod_ip,
        outbound_port=outbound_port,
        interception="redirect",
        inbound_capture_port=inbound_port,
        xds_tls=xds_tls,
    )
    bootstrap = yaml.safe_load(text)
    listener, cluster = readiness_resources(
        health_port=health_port, admin_port=admin_port, ipv6=ipv6
    )
    # Wait for the control plane however long it takes: by default Envoy gives up on the
    # first CDS and LDS after 15 s and goes LIVE empty, which would pass the readiness
    # probe and start the app without its mesh config.
    for source in ("cds_config", "lds_config"):
        bootstrap["dynamic_resources"][source]["initial_fetch_timeout"] = "0s"
    static = bootstrap.setdefault("static_resources", {})
    static.setdefault("listeners", []).append(listener)
    static.setdefault("clusters", []).append(cluster)
    header = (
        f"# Envoy bootstrap for pod {namespace}/{pod_name}, rendered at pod start by\n"
        "# `xds-server sidecar-bootstrap` (xds_server.inject.pod_bootstrap).\n"
    )
    body = yaml.safe_dump(bootstrap, sort_keys=False, width=1_000_000, allow_unicode=True)
    return header + body
