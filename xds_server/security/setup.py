"""The issuer as `xds-server serve` is configured: which CA, kept where, which TTL.

A user-supplied root or intermediate (`--ca-cert`/`--ca-key`) is used as is and
never rotated; otherwise the root comes from a root store, the directory
`--ca-dir` in file mode or the Secret `ca_secret` in Kubernetes mode, and is
generated there on first start.  Every replica reads that store each
`root_poll_seconds`, so a rotation one of them begins reaches them all.
"""

from __future__ import annotations

import datetime
import logging

from xds_server.ca import CertificateAuthority
from xds_server.security.certificates import CertificateIssuer
from xds_server.security.roots import DirectoryRootStore, RootStore
from xds_server.settings import SOURCE_KUBERNETES, Settings

logger = logging.getLogger(__name__)


_END = b"-----END CERTIFICATE-----"


def split_pem(data: bytes) -> list[bytes]:
    """The PEM certificates of `data`, each as its own bytes, in order."""
    return [part.strip() + _END + b"\n" for part in data.split(_END) if b"-----BEGIN" in part]


def root_store(settings: Settings) -> RootStore:
    security = settings.security
    if settings.source_kind != SOURCE_KUBERNETES:
        return DirectoryRootStore(security.ca_dir, security.trust_domain)
    from kubernetes import client

    from xds_server.security.ca_store import KubernetesRootStore
    from xds_server.sources.kubernetes import load_configuration

    api_client = client.ApiClient(load_configuration(settings.kubernetes.kubeconfig))
    return KubernetesRootStore(
        api_client,
        namespace=security.ca_namespace,
        secret_name=security.ca_secret,
        trust_domain=security.trust_domain,
    )


def create_issuer(settings: Settings) -> CertificateIssuer:
    """The issuer of `settings`; raises (ValueError, OSError, ApiException) naming the CA."""
    security = settings.security
    ttl = datetime.timedelta(seconds=security.svid_ttl_seconds)
    if security.ca_cert_file is not None or security.ca_key_file is not None:
        if security.ca_cert_file is None or security.ca_key_file is None:
            raise ValueError("--ca-cert and --ca-key go together")
        # The file may hold the intermediate's chain up to the root after it.
        pems = split_pem(security.ca_cert_file.read_bytes())
        if not pems:
            raise ValueError(f"--ca-cert {security.ca_cert_file} holds no PEM certificate")
        ca = CertificateAuthority.from_pem(
            security.trust_domain, pems[0], security.ca_key_file.read_bytes(), b"".join(pems[1:])
        )
        logger.info("issuing with the user-supplied CA %s", security.ca_cert_file)
        return CertificateIssuer(ca, ttl=ttl)
    store = root_store(settings)
    stored = store.load()
    trusted = () if stored.previous is None else (stored.previous,)
    return CertificateIssuer(
        stored.authority,
        ttl=ttl,
        store=store,
        trusted=trusted,
        trusted_until=stored.previous_until,
        root_poll_seconds=security.root_poll_seconds,
    )
