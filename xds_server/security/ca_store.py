"""The mesh's root in a Kubernetes Secret (cluster mode), so every replica shares it.

`KubernetesRootStore.load` reads Secret `ca_secret` in `ca_namespace` (keys
`root-cert.pem`, `root-key.pem`, and during a rotation's overlap
`previous-root-cert.pem` with `previous-root-until` and `root-reissue-at`);
when it does not exist,
a new root is generated and the Secret created with it.  Two replicas
starting at once both generate, one create wins, the other gets 409 Conflict
and reads (and uses) the winner's root.  Rotations replace the Secret at the
resourceVersion read, so a concurrent writer's 409 is an error naming the
Secret, never a silent overwrite; ending an overlap is idempotent (every
replica ends it, the first one wins, and a newer rotation is left alone).
`read` (what each replica polls) is one GET and never writes.  Synchronous
(the official client): the issuer calls it at start-up and in a worker thread.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from cryptography import x509

from xds_server.ca import CertificateAuthority
from xds_server.security.roots import StoredRoot, certificate_pem

logger = logging.getLogger(__name__)

CERT_KEY = "root-cert.pem"
KEY_KEY = "root-key.pem"
PREVIOUS_KEY = "previous-root-cert.pem"
PREVIOUS_UNTIL_KEY = "previous-root-until"
REISSUE_AT_KEY = "root-reissue-at"
_OVERLAP_KEYS = (PREVIOUS_KEY, PREVIOUS_UNTIL_KEY, REISSUE_AT_KEY)


class KubernetesRootStore:
    """`RootStore` on a Secret: shared by every replica of the control plane."""

    def __init__(self, api_client: Any, *, namespace: str, secret_name: str, trust_domain: str):
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.secret_name = secret_name
        self.trust_domain = trust_domain
        self._resource_version: str | None = None

    @property
    def shown(self) -> str:
        return f"Secret {self.namespace}/{self.secret_name}"

    def _read(self) -> dict[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self._core.read_namespaced_secret(self.secret_name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        self._resource_version = secret.metadata.resource_version if secret.metadata else None
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    def load(self) -> StoredRoot:
        data = self._read()
        if data is None or not data.get(CERT_KEY):
            authority = CertificateAuthority.generate_root(self.trust_domain)
            if self._create(authority, exists=data is not None):
                logger.info("stored the new root CA in %s", self.shown)
                return StoredRoot(authority)
            data = self._read()  # another replica won: use its root
            if data is None:
                raise ValueError(f"{self.shown} vanished while it was being created")
        stored = self._stored(data)
        logger.info("loaded the root CA from %s", self.shown)
        return stored

    def read(self) -> StoredRoot | None:
        data = self._read()
        if data is None or not data.get(CERT_KEY):
            return None
        return self._stored(data)

    def _stored(self, data: dict[str, bytes]) -> StoredRoot:
        if not data.get(KEY_KEY):
            raise ValueError(
                f"{self.shown} has {CERT_KEY} but no {KEY_KEY}: refusing to replace it"
            )
        try:
            authority = CertificateAuthority.from_pem(
                self.trust_domain, data[CERT_KEY], data[KEY_KEY]
            )
        except ValueError as error:
            raise ValueError(f"{self.shown}: {error}") from None
        previous = data.get(PREVIOUS_KEY)
        if not previous:
            return StoredRoot(authority)
        return StoredRoot(
            authority,
            x509.load_pem_x509_certificate(previous),
            _epoch(data.get(PREVIOUS_UNTIL_KEY)),
            _epoch(data.get(REISSUE_AT_KEY)),
        )

    def _create(self, authority: CertificateAuthority, *, exists: bool) -> bool:
        """Create (or, when it exists empty, fill) the Secret; False if another replica won."""
        from kubernetes.client.exceptions import ApiException

        cert_pem, key_pem = authority.root_pem_for_storage()
        body = self._secret({CERT_KEY: cert_pem, KEY_KEY: key_pem})
        try:
            if exists:
                self._core.replace_namespaced_secret(
                    self.secret_name, self.namespace, body, _preload_content=False
                )
            else:
                self._core.create_namespaced_secret(self.namespace, body, _preload_content=False)
        except ApiException as error:
            if error.status == 409:
                logger.info("another replica created the root in %s first", self.shown)
                return False
            raise
        return True

    def begin_rotation(
        self,
        new: CertificateAuthority,
        previous: x509.Certificate,
        until: float,
        reissue_at: float = 0.0,
    ) -> None:
        cert_pem, key_pem = new.root_pem_for_storage()
        self._replace(
            {
                CERT_KEY: cert_pem,
                KEY_KEY: key_pem,
                PREVIOUS_KEY: certificate_pem(previous),
                PREVIOUS_UNTIL_KEY: f"{until:.3f}".encode(),
                REISSUE_AT_KEY: f"{reissue_at:.3f}".encode(),
            }
        )

    def end_rotation(self, previous: x509.Certificate | None = None) -> None:
        for _ in range(3):  # another replica ending it at the same time: read again
            data = self._read()
            if data is None:
                raise ValueError(f"{self.shown} is gone")
            stored = data.get(PREVIOUS_KEY)
            if not stored or (previous is not None and stored != certificate_pem(previous)):
                return  # ended already, or a newer rotation's overlap
            try:
                self._replace({k: v for k, v in data.items() if k not in _OVERLAP_KEYS})
            except ValueError:
                continue
            return

    def _replace(self, data: dict[str, bytes]) -> None:
        from kubernetes.client.exceptions import ApiException

        if self._resource_version is None:
            self._read()
        try:
            self._core.replace_namespaced_secret(
                self.secret_name, self.namespace, self._secret(data), _preload_content=False
            )
        except ApiException as error:
            if error.status == 409:
                raise ValueError(
                    f"{self.shown} was changed by someone else during the rotation; "
                    "its root is left as they wrote it"
                ) from None
            raise
        self._read()

    def _secret(self, data: dict[str, bytes]) -> Any:
        from kubernetes import client

        return client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=client.V1ObjectMeta(
                name=self.secret_name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/name": "xds-server"},
                resource_version=self._resource_version,
            ),
            data={key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
        )


def _epoch(value: bytes | None) -> float:
    """Epoch seconds stored as text; 0 when missing or unreadable (the overlap ends at once)."""
    try:
        return float((value or b"0").decode())
    except ValueError:
        return 0.0
