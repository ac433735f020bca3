"""What injection adds to a pod: two init containers, the Envoy sidecar and four volumes.

Everything here is a pure function of `InjectionConfig`, so a pod injected by
the CLI and one injected by the webhook get byte-identical additions.

* `mesh-capture` (control-plane image, root with NET_ADMIN and NET_RAW only)
  runs `xds-server capture-init`: iptables rules that send the pod's outbound
  TCP to Envoy's port 15001 and inbound TCP to 15006, except traffic of the
  proxy's UID 1337 and the excluded ports.  It is the only privileged piece.
* `mesh-bootstrap` (control-plane image, UID 1337, no capabilities, read-only
  root) runs `xds-server sidecar-bootstrap`, rendering Envoy's bootstrap from
  downward-API values into the `mesh-bootstrap` emptyDir.  It is a separate
  container from the capture step so that the YAML renderer never runs with
  NET_ADMIN, and a failure shows under its own name in `kubectl describe`.
* The xDS port serves TLS and authenticates proxies (issue 9), so the
  bootstrap step also mounts a projected ServiceAccount token for the control
  plane's audience (`mesh-xds-token`, bound to the Pod, which is what the
  control plane checks with TokenReview and matches to the node) and the
  mesh's trust bundle (`mesh-xds-roots`, the ConfigMap the control plane
  publishes in each namespace, `security.root_publisher`).  The token goes
  into the bootstrap as the ADS stream's `authorization` metadata; Envoy
  checks the xDS server's SPIFFE ID against the roots, which it reads from the
  ConfigMap's mount by file name and re-reads when the kubelet refreshes it (a
  root rotation).  With `insecure_xds` neither is added and the sidecar
  speaks plaintext, to a control plane started with `--insecure-xds`.
* `mesh-proxy`, the stock Envoy image, is a native sidecar: an init container
  with `restartPolicy: Always` (Kubernetes 1.29+, on by default).  The kubelet
  starts it after the two steps above and starts the app containers only once
  its startup probe passes, so the app never runs without its proxy's config;
  on shutdown it stops after the app containers, and it does not keep a Job
  from completing.  Its probes hit the bootstrap's `mesh_health` listener on
  15021 (`GET /ready`, forwarded to the loopback-only admin API).

The three go first among the init containers, so that the pod's own init
containers already run inside the mesh, with their traffic captured and
proxied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from xds_server import __version__
from xds_server.inject.pod_bootstrap import (
    ADMIN_PORT,
    HEALTH_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    READY_PATH,
    ROOTS_DIR,
    ROOTS_PATH,
    TOKEN_DIR,
    TOKEN_PATH,
)
from xds_server.security.root_publisher import ROOT_CERT_KEY, ROOT_CONFIGMAP

logger = logging.getLogger(__name__)

ENVOY_VERSION = "1.40.0"
"""The Envoy release the mesh is tested with (`envoy --version` in CI)."""
PROXY_IMAGE = f"envoyproxy/envoy:v{ENVOY_VERSION}"
CONTROL_PLANE_IMAGE = f"xds-server:{__version__}"
XDS_ADDRESS = "xds-server.mesh-system.svc:15010"

CAPTURE_CONTAINER = "mesh-capture"
BOOTSTRAP_CONTAINER = "mesh-bootstrap"
PROXY_CONTAINER = "mesh-proxy"
BOOTSTRAP_VOLUME = "mesh-bootstrap"
PODINFO_VOLUME = "mesh-podinfo"
TOKEN_VOLUME = "mesh-xds-token"
ROOTS_VOLUME = "mesh-xds-roots"
INJECTED_CONTAINERS = (CAPTURE_CONTAINER, BOOTSTRAP_CONTAINER, PROXY_CONTAINER)
INJECTED_VOLUMES = (BOOTSTRAP_VOLUME, PODINFO_VOLUME, TOKEN_VOLUME, ROOTS_VOLUME)
"""Every volume name injection may add (all reserved, whichever a config adds)."""
TOKEN_EXPIRATION_SECONDS = 43200
MIN_TOKEN_EXPIRATION_SECONDS = 600
"""The API server's minimum for a projected token's `expirationSeconds`."""

BOOTSTRAP_DIR = "/etc/envoy"
BOOTSTRAP_PATH = f"{BOOTSTRAP_DIR}/bootstrap.yaml"
PODINFO_DIR = "/etc/mesh/podinfo"
LABELS_PATH = f"{PODINFO_DIR}/labels"

PROXY_UID = 1337


@dataclass(frozen=True)
class InjectionConfig:
    """How to inject: images, where the control plane is, the proxy's ports and UID,
    and how the sidecar authenticates to the control plane (`trust_domain` and
    `control_plane_namespace` make the xDS server's SPIFFE ID it checks;
    `token_audience` must be the control plane's `--token-audience`)."""

    xds_address: str = XDS_ADDRESS
    proxy_image: str = PROXY_IMAGE
    control_plane_image: str = CONTROL_PLANE_IMAGE
    image_pull_policy: str = "IfNotPresent"
    proxy_uid: int = PROXY_UID
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    admin_port: int = ADMIN_PORT
    health_port: int = HEALTH_PORT
    exclude_outbound_ports: tuple[int, ...] = (15010, 15014)
    exclude_inbound_ports: tuple[int, ...] = (15020, HEALTH_PORT)
    concurrency: int = 2
    log_level: str = "warning"
    delta: bool = False
    insecure_xds: bool = False
    trust_domain: str = "cluster.local"
    control_plane_namespace: str = "mesh-system"
    token_audience: str = "xds-server"
    token_expiration_seconds: int = TOKEN_EXPIRATION_SECONDS
    roots_configmap: str = ROOT_CONFIGMAP

    def __post_init__(self) -> None:
        ports = {
            "outbound_port": self.outbound_port,
            "inbound_port": self.inbound_port,
            "admin_port": self.admin_port,
            "health_port": self.health_port,
        }
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} {port} is not a port number (1-65535)")
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"the proxy's ports must differ: {ports}")
        if self.health_port not in self.exclude_inbound_ports:
            raise ValueError(
                f"health_port {self.health_port} must be excluded from inbound capture, "
                "or the kubelet's probes are redirected into the mesh"
            )
        if not 0 < self.proxy_uid < 2**31:
            raise ValueError(f"proxy_uid {self.proxy_uid} must be a non-root UID")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.token_expiration_seconds < MIN_TOKEN_EXPIRATION_SECONDS:
            raise ValueError(
                f"token_expiration_seconds {self.token_expiration_seconds} is below the "
                f"API server's minimum of {MIN_TOKEN_EXPIRATION_SECONDS}"
            )
        for name in ("trust_domain", "control_plane_namespace", "token_audience"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    @property
    def reserved_ports(self) -> frozenset[int]:
        """Ports the sidecar binds in the pod's network namespace."""
        return frozenset({self.outbound_port, self.inbound_port, self.admin_port, self.health_port})


def _ports_csv(ports: tuple[int, ...]) -> str:
    return ",".join(str(port) for port in ports)


def _non_root(uid: int) -> dict[str, Any]:
    return {
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def capture_container(config: InjectionConfig) -> dict[str, Any]:
    """The init container that installs the pod's iptables capture rules."""
    return {
        "name": CAPTURE_CONTAINER,
        "image": config.control_plane_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["xds-server"],
        "args": [
            "capture-init",
            "--outbound-port",
            str(config.outbound_port),
            "--inbound-port",
            str(config.inbound_port),
            "--proxy-uid",
            str(config.proxy_uid),
            "--exclude-outbound-ports",
            _ports_csv(config.exclude_outbound_ports),
            "--exclude-inbound-ports",
            _ports_csv(config.exclude_inbound_ports),
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            # iptables needs root in the pod's network namespace; nothing else is granted.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            # iptables takes its lock under /run; the container lives for one command.
            "readOnlyRootFilesystem": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def bootstrap_container(config: InjectionConfig) -> dict[str, Any]:
    """The init container that renders Envoy's bootstrap from the downward API."""
    args = [
        "sidecar-bootstrap",
        "--xds-address",
        config.xds_address,
        "--admin-port",
        str(config.admin_port),
        "--health-port",
        str(config.health_port),
        "--outbound-port",
        str(config.outbound_port),
        "--inbound-port",
        str(config.inbound_port),
        "--labels-file",
        LABELS_PATH,
        "--output",
        BOOTSTRAP_PATH,
    ]
    if config.delta:
        args.append("--delta")
    mounts = [
        {"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR},
        {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIR, "readOnly": True},
    ]
    if config.insecure_xds:
        args.append("--insecure-xds")
    else:
        args += [
            "--token-file",
            TOKEN_PATH,
            "--roots-file",
            ROOTS_PATH,
            "--trust-domain",
            config.trust_domain,
            "--control-plane-namespace",
            config.control_plane_namespace,
        ]
        mounts += [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": ROOTS_VOLUME, "mountPath": ROOTS_DIR, "readOnly": True},
        ]
    return {
        "name": BOOTSTRAP_CONTAINER,
        "image": config.control_plane_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["xds-server"],
        "args": args,
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("INSTANCE_IP", "status.podIP"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "64Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "securityContext": _non_root(config.proxy_uid),
        "volumeMounts": mounts,
    }


def _ready_probe(config: InjectionConfig, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": READY_PATH, "port": config.health_port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def proxy_container(config: InjectionConfig) -> dict[str, Any]:
    """The Envoy sidecar, as a native sidecar (restartable init container)."""
    mounts = [{"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR, "readOnly": True}]
    if not config.insecure_xds:  # Envoy reads the roots itself, and again when they change
        mounts.append({"name": ROOTS_VOLUME, "mountPath": ROOTS_DIR, "readOnly": True})
    return {
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["envoy"],
        "args": [
            "-c",
            BOOTSTRAP_PATH,
            "--disable-hot-restart",
            # Envoy sizes its worker pool by the node's CPUs, not the container's.
            "--concurrency",
            str(config.concurrency),
            "--log-level",
            config.log_level,
        ],
        "ports": [{"name": "mesh-health", "containerPort": config.health_port, "protocol": "TCP"}],
        # Up to 10 minutes for the first config; the app containers wait for it.
        "startupProbe": _ready_probe(config, period=1, failures=600),
        "readinessProbe": _ready_probe(config, period=5, failures=3),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "securityContext": _non_root(config.proxy_uid),
        "volumeMounts": mounts,
    }


def injected_init_containers(config: InjectionConfig) -> list[dict[str, Any]]:
    """In start order: capture rules, bootstrap, then the proxy itself."""
    return [capture_container(config), bootstrap_container(config), proxy_container(config)]


def injected_volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    volumes = [
        {"name": BOOTSTRAP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {
                "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
            },
        },
    ]
    if config.insecure_xds:
        return volumes
    token = {
        "audience": config.token_audience,
        "expirationSeconds": config.token_expiration_seconds,
        "path": TOKEN_PATH.rpartition("/")[2],
    }
    roots = {
        "name": config.roots_configmap,
        "items": [{"key": ROOT_CERT_KEY, "path": ROOTS_PATH.rpartition("/")[2]}],
    }
    return [
        *volumes,
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": token}]}},
        {"name": ROOTS_VOLUME, "configMap": roots},
    ]
