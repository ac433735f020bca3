"""Typed settings for the control plane, filled from CLI flags (no globals)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def split_host_port(value: str) -> tuple[str, int]:
    """'127.0.0.1:15010' or '[::1]:15010' -> (host, port), with a clear error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]"), number


@dataclass(frozen=True)
class DebounceSettings:
    """Bursts of changes are merged: wait for `quiet` seconds of calm, never more
    than `max_delay` after the first change; endpoint-only bursts use `endpoint_quiet`."""

    quiet: float = 0.1
    max_delay: float = 1.0
    endpoint_quiet: float = 0.01


@dataclass(frozen=True)
class KubernetesSettings:
    """How the Kubernetes source reaches and watches the API server.

    `kubeconfig` None means in-cluster config (the pod's service account), or
    the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`) outside a cluster.
    `namespaces` empty means every namespace (one cluster-wide watch per kind).
    A watch asks the server to end it after `watch_timeout` seconds (jittered
    up to twice that, as client-go does, so watches do not reconnect in step);
    the client gives up on a connection that stays silent for longer than
    that watch's timeout plus `read_timeout_margin`, which is how a dead
    connection is noticed even when no TCP reset ever arrives.  Failed
    requests are retried after `backoff_initial` seconds, doubling up to
    `backoff_max`, with jitter, when the server refuses them (4xx, errors);
    while it is unreachable (refused connections, 5xx, cut streams) retries are
    at most `outage_probe_max` apart, so its return is noticed within a second.
    """

    kubeconfig: Path | None = None
    namespaces: tuple[str, ...] = ()
    watch_timeout: float = 300.0
    read_timeout_margin: float = 30.0
    connect_timeout: float = 3.0
    list_timeout: float = 60.0
    list_page_size: int = 500
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    outage_probe_max: float = 1.0


@dataclass(frozen=True)
class SupervisionSettings:
    """How a long-running task (source, pipeline, admin) that failed is restarted.

    The first restart comes after about `restart_initial` seconds, doubling (with
    jitter) up to `restart_max` while the task keeps failing; a task that ran for
    `healthy_after` seconds before failing starts again from `restart_initial`.
    """

    restart_initial: float = 0.1
    restart_max: float = 10.0
    healthy_after: float = 30.0


@dataclass(frozen=True)
class SecuritySettings:
    """The mesh's identity and the xDS port's security (issue 9).

    `trust_domain` is the first part of every SPIFFE ID
    (`spiffe://<trust_domain>/ns/<ns>/sa/<sa>`).  The root CA lives in `ca_dir`
    (file mode; generated there on first start) or in the Kubernetes Secret
    `ca_secret` of `ca_namespace` (cluster mode), unless `ca_cert_file` and
    `ca_key_file` name a user-supplied root or intermediate.  Workload
    certificates live `svid_ttl_seconds` and are re-issued at half of that.
    `insecure_xds` serves xDS in plaintext with no proxy authentication (for
    development only; logged loudly).  `token_audience` is the audience of the
    projected ServiceAccount tokens proxies present in Kubernetes mode.
    `admin_token_file` holds the bearer token the admin API's state-changing
    endpoints require (generated there, mode 0600, when missing).
    `root_poll_seconds` is how often each replica reads the root's store to
    adopt a root rotation another replica began (0: never, one replica only);
    a rotation's certificates move to the new root that much later.
    """

    trust_domain: str = "cluster.local"
    ca_dir: Path = Path(".xds-server/ca")
    ca_secret: str = "xds-server-ca"
    ca_namespace: str = "mesh-system"
    ca_cert_file: Path | None = None
    ca_key_file: Path | None = None
    svid_ttl_seconds: float = 24 * 3600.0
    insecure_xds: bool = False
    token_audience: str = "xds-server"
    admin_token_file: Path = Path(".xds-server/admin-token")
    root_poll_seconds: float = 2.0
    xds_client_auth: str | None = None
    """How proxies prove themselves on the xDS port: `certificate` (a client certificate
    of the mesh CA, required in the TLS handshake) or `token` (a projected ServiceAccount
    token, TokenReview); None: `certificate` in file mode, `token` in Kubernetes mode.
    (gRPC Python can require a client certificate or not ask for one, not ask and
    accept either, so one port takes one of the two.)"""

    def client_auth(self, source_kind: str) -> str:
        """`certificate` or `token`, as `xds_client_auth` says or the mode implies."""
        if self.xds_client_auth is not None:
            if self.xds_client_auth not in XDS_CLIENT_AUTH:
                raise ValueError(
                    f"xds_client_auth {self.xds_client_auth!r} is not one of {XDS_CLIENT_AUTH}"
                )
            return self.xds_client_auth
        return "token" if source_kind == SOURCE_KUBERNETES else "certificate"


XDS_CLIENT_AUTH = ("certificate", "token")


SOURCE_KUBERNETES = "kubernetes"


@dataclass(frozen=True)
class Settings:
    """Everything `xds-server serve` is told.

    `grace_seconds` bounds a graceful shutdown (SIGTERM): connected proxies are
    told to go at once, and whatever has not finished after that long is cut.
    The `xds_*` bounds guard the xDS port (see `server.ServerLimits`): request
    size, concurrent streams from one peer address, and how long a proxy that
    stops reading keeps its stream.
    """

    source: str = "file:examples"
    xds_listen: str = "127.0.0.1:15010"
    admin_listen: str = "127.0.0.1:15014"
    debounce: DebounceSettings = DebounceSettings()
    grace_seconds: float = 2.0
    xds_max_request_bytes: int = 4 * 1024 * 1024
    xds_max_streams_per_peer: int = 128
    xds_stuck_stream_seconds: float = 60.0
    kubernetes: KubernetesSettings = KubernetesSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    security: SecuritySettings = SecuritySettings()
    envoy_validation: bool = True
    """Check every generated resource against Envoy's validate.rules before serving it
    (`pipeline.validation`); off only for benchmarks (`--no-envoy-validation`)."""

    @property
    def source_kind(self) -> str:
        """`"file"` or `"kubernetes"`; ValueError with a clear message for anything else."""
        if self.source == SOURCE_KUBERNETES:
            return SOURCE_KUBERNETES
        self.source_directory  # noqa: B018 - raises for a malformed source
        return "file"

    @property
    def source_directory(self) -> Path:
        kind, _, rest = self.source.partition(":")
        if kind != "file" or not rest:
            raise ValueError(
                f"unsupported source {self.source!r}; expected file:DIR or {SOURCE_KUBERNETES}"
            )
        return Path(rest)
