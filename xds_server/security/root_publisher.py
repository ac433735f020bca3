"""The mesh's trust bundle as a ConfigMap in every namespace with workloads (Kubernetes).

An injected sidecar checks the xDS server's certificate against the mesh's
roots before it sends anything, so it needs them before it has a config: the
control plane publishes `issuer.bundle` as the ConfigMap `xds-server-root-cert`
(key `root-cert.pem`) in each namespace it serves, as Istio publishes
`istio-ca-root-cert`, and the injector mounts it.  The kubelet refreshes a
mounted ConfigMap by moving a new directory into place, which Envoy's
watched directory notices, so a root rotation's bundle (old and new roots
during the overlap, then the new one only) reaches running sidecars with no
restart.

The namespaces are the configured ones (`--namespace`), or else those of the
Pods the source sees: a Pod appears there as soon as it is created, before
its containers start, and the kubelet retries a missing ConfigMap volume, so
the first injected Pod of a new namespace starts once its ConfigMap exists.

`RootPublisher.run` compares the bundle and the namespaces with what it wrote
every `interval` seconds (in memory, cheap), writes only what changed, and
re-checks every ConfigMap each `resync_seconds` (one deleted by hand comes
back).  A namespace whose write fails is retried on the next round, its error
logged once; the others go on.  Replicas all publish the same bundle (they
share the root and follow each other's rotations within a poll), and each
writes only when its own bundle changed, or at its resync, so they do not
fight over the ConfigMap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from xds_server.model import MeshSnapshot
from xds_server.settings import SOURCE_KUBERNETES, Settings

if TYPE_CHECKING:
    from xds_server.pipeline import MeshPipeline
    from xds_server.security.certificates import CertificateIssuer

logger = logging.getLogger(__name__)

ROOT_CONFIGMAP = "xds-server-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
MANAGED_BY = {"app.kubernetes.io/managed-by": "xds-server"}


class ConfigMapApi(Protocol):
    """What publishing needs of the API (blocking calls; run in a thread)."""

    def write(self, namespace: str, name: str, data: dict[str, str]) -> bool:
        """Make the ConfigMap hold `data`; True when it was written, False if it did."""
        ...


class KubernetesConfigMaps:
    """`ConfigMapApi` through the official client: read, then create or replace."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CoreV1Api(api_client)

    def write(self, namespace: str, name: str, data: dict[str, str]) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            current = self._api.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            metadata = client.V1ObjectMeta(name=name, namespace=namespace, labels=MANAGED_BY)
            self._api.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=metadata, data=data)
            )
            return True
        if (current.data or {}) == data:
            return False
        # The read's resourceVersion: a concurrent writer makes this a 409, retried next round.
        current.data = data
        self._api.replace_namespaced_config_map(name, namespace, current)
        return True


class RootPublisher:
    """Keeps `name` (key `ROOT_CERT_KEY`) equal to `bundle()` in each of `namespaces()`."""

    def __init__(
        self,
        api: Callable[[], ConfigMapApi],
        bundle: Callable[[], bytes],
        namespaces: Callable[[], Iterable[str]],
        *,
        name: str = ROOT_CONFIGMAP,
        interval: float = 1.0,
        resync_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make_api = api
        self._api: ConfigMapApi | None = None
        self._bundle = bundle
        self._namespaces = namespaces
        self.name = name
        self.interval = interval
        self.resync_seconds = resync_seconds
        self._clock = clock
        self.published: dict[str, bytes] = {}
        """Namespace -> the bundle last known to be in its ConfigMap."""
        self._errors: dict[str, str] = {}
        self._next_resync = 0.0

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(self.interval)

    async def sync(self) -> list[str]:
        """One round: the namespaces whose ConfigMap was written (sorted)."""
        pem = self._bundle()
        wanted = set(self._namespaces())
        if self._clock() >= self._next_resync:
            self._next_resync = self._clock() + self.resync_seconds
            self.published.clear()
        for gone in set(self.published) - wanted:
            del self.published[gone]  # not deleted from the API: a Pod may still mount it
        due = sorted(ns for ns in wanted if self.published.get(ns) != pem)
        if not due:
            return []
        return await asyncio.to_thread(self._write_all, due, pem)

    def _write_all(self, namespaces: list[str], pem: bytes) -> list[str]:
        data = {ROOT_CERT_KEY: pem.decode()}
        written = []
        for namespace in namespaces:
            try:
                if self._api is None:
                    self._api = self._make_api()
                if self._api.write(namespace, self.name, data):
                    written.append(namespace)
                    logger.info("trust bundle published to %s/%s", namespace, self.name)
            except Exception as error:  # the client's ApiException, urllib3's errors
                message = f"{type(error).__name__}: {error}".splitlines()[0]
                if self._errors.get(namespace) != message:
                    logger.warning(
                        "cannot publish the trust bundle to %s/%s (retrying): %s",
                        namespace, self.name, message,
                    )  # fmt: skip
                self._errors[namespace] = message
                continue
            self._errors.pop(namespace, None)
            self.published[namespace] = pem
        return written


def mesh_namespaces(settings: Settings, mesh: Callable[[], MeshSnapshot]) -> Callable[[], set[str]]:
    """The configured namespaces, or those of the Pods in the current mesh."""
    configured = set(settings.kubernetes.namespaces)
    if configured:
        return lambda: configured
    return lambda: {namespace for namespace, _ in mesh().workloads}


class _Plane(Protocol):
    """What of `app.ControlPlane` the publisher reads."""

    settings: Settings

    @property
    def issuer(self) -> CertificateIssuer: ...

    @property
    def pipeline(self) -> MeshPipeline: ...


def root_publisher(plane: _Plane) -> Callable[[], Awaitable[None]] | None:
    """The publishing task of `plane` (None out of Kubernetes or with `--insecure-xds`,
    where no sidecar checks the xDS server)."""
    settings = plane.settings
    if settings.source_kind != SOURCE_KUBERNETES or settings.security.insecure_xds:
        return None

    def api() -> ConfigMapApi:
        from kubernetes import client

        from xds_server.sources.kubernetes import load_configuration

        configuration = load_configuration(settings.kubernetes.kubeconfig)
        return KubernetesConfigMaps(client.ApiClient(configuration))

    namespaces = mesh_namespaces(settings, lambda: plane.pipeline.builder.mesh)
    publisher = RootPublisher(api, lambda: plane.issuer.bundle.to_pem(), namespaces)
    return publisher.run
