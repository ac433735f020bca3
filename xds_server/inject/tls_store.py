"""Self-managed webhook TLS: one certificate shared by every replica through a Secret.

`kubectl apply -k manifests/` works with no certificate tooling: each webhook
replica, at start and then periodically, calls `ensure_webhook_tls`, which

1. reads the Secret (`tls.crt`, `tls.key` and `ca.crt`);
2. if it is missing, or its certificate is expiring, unreadable or does not
   name the Service, generates a new CA and serving certificate and writes
   them, with create (fails on 409 if another replica created it first) or
   replace at the read resourceVersion (fails on 409 if another replica
   renewed it first); a replica that loses such a race reads the winner's;
3. patches the CA into the MutatingWebhookConfiguration's `caBundle`, plus the
   CA it replaced while that is still valid (kept in the Secret as
   `ca-previous.crt`), so replicas still serving the previous certificate keep
   working until their next refresh, and every replica patches the same bundle.

So replicas converge on one certificate without a leader.  The manifests
create the (empty, `Opaque`) Secret, so the injector needs only get and update
on that one Secret and patch on that one webhook configuration, all by
resourceName; `create` (which RBAC cannot restrict by name) is used only where
someone runs the webhook without a pre-made Secret.  The API calls sit behind
the `WebhookTlsStore` protocol; `KubernetesTlsStore` is the real one.
"""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509

from xds_server.inject.certs import TlsBundle, generate_tls, renewal_reason

logger = logging.getLogger(__name__)

CA_KEY = "ca.crt"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"
PREVIOUS_CA_KEY = "ca-previous.crt"


@dataclass(frozen=True)
class StoredTls:
    """The Secret as read: its bundle (None when a key is missing), the CA it replaced
    (empty when none) and its resourceVersion."""

    bundle: TlsBundle | None
    resource_version: str
    previous_ca: bytes = b""


class WebhookTlsStore(Protocol):
    def read(self) -> StoredTls | None:
        """The Secret, or None when it does not exist."""
        ...

    def create(self, bundle: TlsBundle, previous_ca: bytes) -> bool:
        """Create the Secret; False when it already exists."""
        ...

    def replace(self, bundle: TlsBundle, previous_ca: bytes, resource_version: str) -> bool:
        """Replace the Secret at `resource_version`; False when it changed meanwhile."""
        ...

    def patch_ca_bundle(self, ca_pem: bytes) -> None:
        """Set `caBundle` on the webhook configuration's injection webhooks."""
        ...


def ensure_webhook_tls(
    store: WebhookTlsStore,
    dns_names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
    attempts: int = 5,
) -> TlsBundle:
    """The bundle every replica serves (see the module docstring), with caBundle patched."""
    moment = now or datetime.datetime.now(datetime.UTC)
    for _ in range(attempts):
        stored = store.read()
        if stored is not None and stored.bundle is not None:
            reason = renewal_reason(stored.bundle, dns_names, now=moment)
            if not reason:
                previous = _still_valid(stored.previous_ca, moment)
                store.patch_ca_bundle(stored.bundle.ca_pem + previous)
                return stored.bundle
            logger.info("renewing the webhook certificate: %s", reason)
        fresh = generate_tls(dns_names, now=moment)
        old_ca = stored.bundle.ca_pem if stored is not None and stored.bundle else b""
        previous = _still_valid(old_ca, moment)
        if stored is None:
            written = store.create(fresh, previous)
        else:
            written = store.replace(fresh, previous, stored.resource_version)
        if written:
            store.patch_ca_bundle(fresh.ca_pem + previous)
            logger.info("wrote a new webhook certificate for %s", ", ".join(dns_names))
            return fresh
        logger.info("another replica wrote the webhook certificate first; reading it")
    raise RuntimeError(f"could not settle the webhook certificate in {attempts} attempts")


def _still_valid(ca_pem: bytes, now: datetime.datetime) -> bytes:
    if not ca_pem:
        return b""
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return b""
    return ca_pem if ca.not_valid_after_utc > now else b""


def bundle_from_secret_data(data: dict[str, str] | None) -> TlsBundle | None:
    """A TlsBundle from a Secret's base64 `data`, or None when a key is missing."""
    data = data or {}
    try:
        return TlsBundle(
            ca_pem=base64.b64decode(data[CA_KEY]),
            cert_pem=base64.b64decode(data[CERT_KEY]),
            key_pem=base64.b64decode(data[KEY_KEY]),
        )
    except (KeyError, ValueError):
        return None


def previous_ca_from_secret_data(data: dict[str, str] | None) -> bytes:
    try:
        return base64.b64decode((data or {}).get(PREVIOUS_CA_KEY, ""))
    except ValueError:
        return b""


def secret_data(bundle: TlsBundle, previous_ca: bytes = b"") -> dict[str, str]:
    data = {
        CA_KEY: base64.b64encode(bundle.ca_pem).decode("ascii"),
        CERT_KEY: base64.b64encode(bundle.cert_pem).decode("ascii"),
        KEY_KEY: base64.b64encode(bundle.key_pem).decode("ascii"),
    }
    if previous_ca:
        data[PREVIOUS_CA_KEY] = base64.b64encode(previous_ca).decode("ascii")
    return data


def ca_bundle_patch(webhook_names: Sequence[str], ca_pem: bytes) -> dict[str, Any]:
    """A strategic merge patch: `webhooks` merge by `name`, so no index is needed."""
    ca = base64.b64encode(ca_pem).decode("ascii")
    return {
        "webhooks": [{"name": name, "clientConfig": {"caBundle": ca}} for name in webhook_names]
    }


class KubernetesTlsStore:
    """`WebhookTlsStore` on the official client.

    Synchronous: it runs at start-up and then every few minutes, in a worker thread.
    Writes do not decode the API's answer (`_preload_content=False`): only the status
    matters, and non-2xx statuses still raise `ApiException`.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        namespace: str,
        secret_name: str,
        webhook_configuration: str,
        webhook_names: Sequence[str],
    ) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)
        self.namespace = namespace
        self.secret_name = secret_name
        self.webhook_configuration = webhook_configuration
        self.webhook_names = tuple(webhook_names)

    def read(self) -> StoredTls | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._core.read_namespaced_secret(self.secret_name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data = {key: _text(value) for key, value in (secret.data or {}).items()}
        version = secret.metadata.resource_version if secret.metadata else None
        return StoredTls(
            bundle=bundle_from_secret_data(data),
            resource_version=str(version),
            previous_ca=previous_ca_from_secret_data(data),
        )

    def create(self, bundle: TlsBundle, previous_ca: bytes) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.create_namespaced_secret(
                self.namespace, self._secret(bundle, previous_ca, None), _preload_content=False
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def replace(self, bundle: TlsBundle, previous_ca: bytes, resource_version: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.replace_namespaced_secret(
                self.secret_name,
                self.namespace,
                self._secret(bundle, previous_ca, resource_version),
                _preload_content=False,
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    def patch_ca_bundle(self, ca_pem: bytes) -> None:
        self._admission.patch_mutating_webhook_configuration(
            self.webhook_configuration,
            ca_bundle_patch(self.webhook_names, ca_pem),
            _content_type="application/strategic-merge-patch+json",
            _preload_content=False,
        )

    def _secret(self, bundle: TlsBundle, previous_ca: bytes, resource_version: str | None) -> Any:
        from kubernetes import client

        data: dict[str, bytes | str] = dict(
            secret_data(bundle, previous_ca)
        )  # base64 text, as the API has it
        return client.V1Secret(
            api_version="v1",
            kind="Secret",
            # Opaque, not kubernetes.io/tls: the manifests create it empty, and a
            # Secret's type cannot change.
            type="Opaque",
            metadata=client.V1ObjectMeta(
                name=self.secret_name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/name": "mesh-injector"},
                resource_version=resource_version,
            ),
            data=data,
        )


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value
