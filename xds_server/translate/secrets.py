"""A proxy's SDS Secrets: its own SVID and the mesh's trust roots.

Secret names are the same for every proxy (`default`, `ROOTCA`, as Istio
names them), so the shared outbound clusters and every listener reference
them without knowing whose sidecar they land in; what differs is the
content, which comes from the `WorkloadCertificate` of the proxy's identity
(namespace and service account).  A proxy whose identity has no certificate
yet gets none: its TLS contexts wait (Envoy warms them) until the issuer's
certificate arrives, a few milliseconds later.
"""

from __future__ import annotations

import logging

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2

from xds_server.model import MeshSnapshot, Proxy
from xds_server.model.security import TrustRoots, WorkloadCertificate

logger = logging.getLogger(__name__)

SVID_SECRET_NAME = "default"
"""The proxy's own certificate and key (`tls_certificate`)."""
TRUST_ROOTS_SECRET_NAME = "ROOTCA"
"""The roots that verify a peer (`validation_context`)."""
SECRET_NAMES = frozenset({SVID_SECRET_NAME, TRUST_ROOTS_SECRET_NAME})
"""The only Secrets a proxy may ask for."""


def svid_secret(certificate: WorkloadCertificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=SVID_SECRET_NAME,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=certificate.certificate_chain),
            private_key=base_pb2.DataSource(inline_bytes=certificate.private_key),
        ),
    )


def trust_roots_secret(roots: TrustRoots) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=TRUST_ROOTS_SECRET_NAME,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=roots.roots_pem)
        ),
    )


def proxy_secrets(
    mesh: MeshSnapshot, proxy: Proxy
) -> list[tuple[secret_pb2.Secret, WorkloadCertificate | TrustRoots]]:
    """The Secrets of `proxy`, each with the model object it was made from."""
    secrets: list[tuple[secret_pb2.Secret, WorkloadCertificate | TrustRoots]] = []
    certificate = mesh.certificate_of(proxy.namespace, proxy.service_account)
    if certificate is not None:
        secrets.append((svid_secret(certificate), certificate))
    roots = mesh.roots
    if roots is not None:
        secrets.append((trust_roots_secret(roots), roots))
    return secrets
