"""Envoy bootstrap files for sidecars: the canonical template, filled in per proxy.

The template (`envoy-bootstrap/sidecar.yaml`, shipped as `xds_server/templates/
sidecar.yaml`) is itself a complete bootstrap that Envoy accepts, so users can read
and adapt it.  Rendering does no text substitution: it loads the template as data,
overwrites the few fields that identify one proxy, and dumps the result with
`yaml.safe_dump`, so no label value or node id can break the YAML or inject fields.

The fields set per proxy are `node` (id, cluster, metadata from
`xds_server.node_metadata`, `locality.zone` when the proxy has a zone), the ADS
`api_type` (SotW or delta), the control plane
cluster (its name, STATIC for IPs or STRICT_DNS for host names, and its addresses)
and the admin address.  Everything else in the template is kept as written,
notably how the sidecar comes back after losing the control plane: the ADS
stream is re-established after a short, capped, jittered backoff
(`envoy_grpc.retry_policy.retry_back_off`, 0.1 s doubling to at most 1 s,
instead of Envoy's 0.5 s growing to 30 s), so a restarted control plane is
rejoined within a second of being ready; and with several control plane
addresses (replicas), a stream that cannot connect to one is retried at once on
another (`grpc_services[0].retry_policy`, `previous_hosts`).
"""

from __future__ import annotations

import copy
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from xds_server.model.types import Proxy, is_zone, labels_of
from xds_server.node_metadata import metadata_of

logger = logging.getLogger(__name__)

TEMPLATE_RESOURCE = "templates/sidecar.yaml"
"""The packaged copy of `envoy-bootstrap/sidecar.yaml`, relative to `xds_server`."""

XdsAddresses = str | Sequence[str]
"""One `HOST:PORT`, several separated by commas, or a sequence of them."""

DataSource = dict[str, str]
"""An Envoy `DataSource`: `{"filename": PATH}` or `{"inline_string": TEXT}`."""


def file_source(path: Path | str) -> DataSource:
    return {"filename": str(path)}


def inline_source(text: str | bytes) -> DataSource:
    return {"inline_string": text.decode() if isinstance(text, bytes) else text}


@dataclass(frozen=True)
class XdsClientTls:
    """How a sidecar checks the xDS server and proves who it is (issue 9).

    The server's certificate must chain to `roots` and name `server_id` (its SPIFFE
    ID); the sidecar proves itself with a client certificate (`certificate` and
    `private_key`, file mode: what `xds-server bootstrap` obtains from the CA) or
    with a bearer `token` sent as `authorization` metadata on the ADS stream
    (Kubernetes: the pod's projected ServiceAccount token), or both.

    With `watched_directory` (file sources only) Envoy reads them through file-based
    SDS (`sds_files`, kept in `sds_directory`, by default the watched one) and reads
    them again whenever a file is moved into `watched_directory`: a renewed
    credential or a new trust bundle (after a root rotation) takes effect on the next
    connection to the control plane, without restarting Envoy.  Without it they are
    read once, at start.
    """

    server_id: str
    roots: DataSource
    certificate: DataSource | None = None
    private_key: DataSource | None = None
    token: str | None = None
    watched_directory: str | None = None
    sds_directory: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate goes with its private key")
        if self.certificate is None and not self.token:
            raise ValueError("the sidecar needs a client certificate or a token for xDS")
        sources = [self.roots, self.certificate, self.private_key]
        if self.watched_directory and any(s is not None and "filename" not in s for s in sources):
            raise ValueError("a watched xDS credential is read from files")

    def sds_files(self) -> dict[str, str]:
        """Path -> YAML of the file-based SDS Secrets a watched credential is read through."""
        if not self.watched_directory:
            return {}
        files = {self._sds_path(ROOTS_SECRET): _sds_yaml(ROOTS_SECRET, self._roots_secret())}
        if self.certificate is not None and self.private_key is not None:
            certificate = {
                "certificate_chain": dict(self.certificate),
                "private_key": dict(self.private_key),
                "watched_directory": {"path": self.watched_directory},
            }
            files[self._sds_path(CERTIFICATE_SECRET)] = _sds_yaml(
                CERTIFICATE_SECRET, {"tls_certificate": certificate}
            )
        return files

    def _roots_secret(self) -> dict[str, Any]:
        return {
            "validation_context": {
                "trusted_ca": dict(self.roots),
                "watched_directory": {"path": self.watched_directory},
            }
        }

    def _sds_path(self, name: str) -> str:
        directory = self.sds_directory or self.watched_directory or ""
        return str(Path(directory) / f"{name}.yaml")

    def _sds_config(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "sds_config": {
                "path_config_source": {
                    "path": self._sds_path(name),
                    "watched_directory": {"path": self.watched_directory},
                },
                "resource_api_version": "V3",
            },
        }

    def transport_socket(self) -> dict[str, Any]:
        """The xDS cluster's UpstreamTlsContext (HTTP/2 by ALPN, as gRPC requires)."""
        if self.watched_directory:
            return self._watched_transport_socket()
        common: dict[str, Any] = {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": dict(self.roots),
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": self.server_id}}
                ],
            },
        }
        if self.certificate is not None and self.private_key is not None:
            common["tls_certificates"] = [
                {"certificate_chain": dict(self.certificate), "private_key": dict(self.private_key)}
            ]
        return {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS_CONTEXT,
                "common_tls_context": common,
            },
        }

    def _watched_transport_socket(self) -> dict[str, Any]:
        common: dict[str, Any] = {
            "alpn_protocols": ["h2"],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": self.server_id}}
                    ]
                },
                "validation_context_sds_secret_config": self._sds_config(ROOTS_SECRET),
            },
        }
        if self.certificate is not None:
            common["tls_certificate_sds_secret_configs"] = [self._sds_config(CERTIFICATE_SECRET)]
        return {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS_CONTEXT, "common_tls_context": common},
        }


UPSTREAM_TLS_CONTEXT = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ROOTS_SECRET = "xds-server-roots"
CERTIFICATE_SECRET = "xds-client-certificate"


def _sds_yaml(name: str, secret: dict[str, Any]) -> str:
    resource = {"@type": SECRET_TYPE, "name": name, **secret}
    return yaml.safe_dump({"resources": [resource]}, sort_keys=False)


def render_bootstrap(
    *,
    node_id: str,
    namespace: str,
    xds_address: XdsAddresses,
    admin_port: int,
    delta: bool = False,
    cluster_name_for_xds: str = "xds_cluster",
    workload: str = "",
    service_account: str = "default",
    labels: Mapping[str, str] | None = None,
    instance_ip: str | None = None,
    app_address: str = "127.0.0.1",
    outbound_address: str = "127.0.0.1",
    outbound_port: int = 15001,
    interception: Literal["none", "redirect"] = "none",
    inbound_capture_port: int = 15006,
    admin_address: str = "127.0.0.1",
    template_path: Path | None = None,
    zone: str | None = None,
    xds_tls: XdsClientTls | None = None,
) -> str:
    """The bootstrap YAML for one sidecar.

    `xds_address` is `HOST:PORT` (`[v6]:PORT` for IPv6), or several (a sequence, or
    comma-separated): the replicas of the control plane, between which the sidecar
    fails over.  `admin_port` may be 0 to let
    the kernel choose (Envoy reports it through `--admin-address-path`).
    `interception="redirect"` is for a sidecar whose pod has the capture rules of
    `xds_server.capture` installed (outbound to `outbound_port`, inbound to
    `inbound_capture_port`).  `zone` is the sidecar's zone (`node.locality.zone`),
    where locality-aware routing keeps its traffic.  `xds_tls` makes the sidecar
    speak TLS to the control plane and prove its identity (without it, plaintext:
    only a control plane started with `--insecure-xds` accepts that).  Raises
    `ValueError` for a malformed address, port, zone or metadata value.
    """
    proxy = Proxy(
        node_id=node_id,
        namespace=namespace,
        workload=workload,
        service_account=service_account,
        labels=labels_of(dict(labels or {})),
        ip=instance_ip,
        app_address=app_address,
        outbound_address=outbound_address,
        outbound_port=outbound_port,
        interception=interception,
        inbound_capture_port=inbound_capture_port,
        zone=zone or None,
    )
    return render_bootstrap_for_proxy(
        proxy,
        xds_address=xds_address,
        admin_port=admin_port,
        delta=delta,
        cluster_name_for_xds=cluster_name_for_xds,
        admin_address=admin_address,
        template_path=template_path,
        xds_tls=xds_tls,
    )


def render_bootstrap_for_proxy(
    proxy: Proxy,
    *,
    xds_address: XdsAddresses,
    admin_port: int,
    delta: bool = False,
    cluster_name_for_xds: str = "xds_cluster",
    admin_address: str = "127.0.0.1",
    template_path: Path | None = None,
    xds_tls: XdsClientTls | None = None,
) -> str:
    """`render_bootstrap` for an existing `Proxy` value (the inverse of `proxy_from_node`)."""
    bootstrap = build_bootstrap(
        proxy,
        xds_address=xds_address,
        admin_port=admin_port,
        delta=delta,
        cluster_name_for_xds=cluster_name_for_xds,
        admin_address=admin_address,
        template=load_template(template_path),
        xds_tls=xds_tls,
    )
    header = (
        f"# Envoy bootstrap for node {proxy.node_id!r}, rendered by xds_server.bootstrap\n"
        "# from envoy-bootstrap/sidecar.yaml; change the template, not this file.\n"
    )
    body = yaml.safe_dump(bootstrap, sort_keys=False, width=1_000_000, allow_unicode=True)
    return header + body


def load_template(path: Path | None = None) -> dict[str, Any]:
    """The template bootstrap as data: `path`, or the copy packaged with `xds_server`."""
    if path is not None:
        text = path.read_text(encoding="utf-8")
    else:
        text = resources.files("xds_server").joinpath(TEMPLATE_RESOURCE).read_text("utf-8")
    loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"bootstrap template {path or TEMPLATE_RESOURCE} is not a YAML mapping")
    return loaded


def build_bootstrap(
    proxy: Proxy,
    *,
    xds_address: XdsAddresses,
    admin_port: int,
    delta: bool = False,
    cluster_name_for_xds: str = "xds_cluster",
    admin_address: str = "127.0.0.1",
    template: Mapping[str, Any] | None = None,
    xds_tls: XdsClientTls | None = None,
) -> dict[str, Any]:
    """The bootstrap as a dict: `template` (default: the packaged one) filled in for `proxy`.

    The control plane cluster is found through the template's ADS `envoy_grpc`
    reference, so a template that renames it still renders correctly.
    """
    if not proxy.node_id:
        raise ValueError("node_id must not be empty")
    if not cluster_name_for_xds:
        raise ValueError("cluster_name_for_xds must not be empty")
    xds_endpoints = parse_xds_addresses(xds_address)
    if not 0 <= admin_port <= 65535:
        raise ValueError(f"admin_port {admin_port} is not a port number (0-65535)")
    _require_ip(admin_address, "admin_address")

    bootstrap = copy.deepcopy(dict(template if template is not None else load_template()))

    bootstrap["node"] = {
        "id": proxy.node_id,
        "cluster": f"{proxy.workload}.{proxy.namespace}" if proxy.workload else proxy.namespace,
        "metadata": metadata_of(proxy),
    }
    if proxy.zone:
        if not is_zone(proxy.zone):
            raise ValueError(f"zone {proxy.zone!r} is not a zone (a label value)")
        bootstrap["node"]["locality"] = {"zone": proxy.zone}

    ads = _section(bootstrap, "dynamic_resources", "ads_config")
    ads["api_type"] = "DELTA_GRPC" if delta else "GRPC"
    grpc_services = ads.get("grpc_services")
    if not isinstance(grpc_services, list) or not grpc_services:
        raise ValueError("bootstrap template: ads_config has no grpc_services")
    envoy_grpc = grpc_services[0].setdefault("envoy_grpc", {})
    template_cluster = envoy_grpc.get("cluster_name", cluster_name_for_xds)
    envoy_grpc["cluster_name"] = cluster_name_for_xds

    cluster = _xds_cluster(bootstrap, template_cluster)
    cluster["name"] = cluster_name_for_xds
    if all(_is_ip(host) for host, _ in xds_endpoints):
        cluster["type"] = "STATIC"
        cluster.pop("dns_lookup_family", None)
    else:  # STRICT_DNS resolves each endpoint on its own; IP literals resolve to themselves
        cluster["type"] = "STRICT_DNS"
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    cluster["load_assignment"] = {
        "cluster_name": cluster_name_for_xds,
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": _socket_address(host, port)}}
                    for host, port in xds_endpoints
                ]
            }
        ],
    }

    if xds_tls is not None:
        cluster["transport_socket"] = xds_tls.transport_socket()
        if xds_tls.token:
            grpc_services[0]["initial_metadata"] = [
                {"key": "authorization", "value": f"Bearer {xds_tls.token}"}
            ]

    admin = bootstrap.setdefault("admin", {})
    admin["address"] = _socket_address(admin_address, admin_port)
    return bootstrap


def parse_xds_addresses(value: XdsAddresses, *, what: str = "xds_address") -> list[tuple[str, int]]:
    """The control plane addresses as `(host, port)`s, in order; `ValueError` naming `what`.

    Accepts one `HOST:PORT`, several separated by commas, or a sequence of either.
    At least one is required and none may repeat.
    """
    items = [value] if isinstance(value, str) else list(value)
    texts = [part.strip() for item in items for part in item.split(",")]
    if not texts or any(not text for text in texts):
        raise ValueError(f"{what} {value!r}: expected HOST:PORT[,HOST:PORT...]")
    addresses = [parse_host_port(text, what=what) for text in texts]
    seen: set[tuple[str, int]] = set()
    for text, address in zip(texts, addresses, strict=True):
        if address in seen:
            raise ValueError(f"{what} {text!r} is given twice")
        seen.add(address)
    return addresses


def parse_host_port(value: str, *, what: str = "address") -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` as `(host, port)`; raises `ValueError` naming `what`."""
    host, sep, port_text = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{what} {value!r} is not HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} {value!r}: port is not in 1-65535")
    if ":" in host and not (bracketed and _is_ip(host)):
        raise ValueError(f"{what} {value!r}: write an IPv6 address in brackets, [addr]:port")
    return host, port


def _xds_cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    clusters = bootstrap.setdefault("static_resources", {}).setdefault("clusters", [])
    for cluster in clusters:
        if isinstance(cluster, dict) and cluster.get("name") == name:
            return cluster
    raise ValueError(f"bootstrap template: no static cluster named {name!r} for ADS")


def _section(bootstrap: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = bootstrap
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ValueError(f"bootstrap template: missing {'.'.join(keys)}")
    result: dict[str, Any] = node
    return result


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _require_ip(value: str, what: str) -> None:
    if not _is_ip(value):
        raise ValueError(f"{what} {value!r} is not an IP address")
