"""Who may open an ADS stream, as `xds-server serve` is configured (issue 9).

Secure by default: a sidecar proves itself with a client certificate of the
mesh's CA (verified in the TLS handshake, its SPIFFE ID read by
`ClientCertificateAuthenticator`; the default in file mode) or with its
projected ServiceAccount token (TokenReview; the default in Kubernetes mode),
as `SecuritySettings.client_auth` says.  `MeshNodeGuard`
then holds each identity to its own node and Secrets.  `--insecure-xds`
turns all of it off (`app.ControlPlane` says so loudly).

`sign_client_certificate` is the CA side of `xds-server bootstrap`: it signs
the CSR a sidecar's key was made for, as its xDS credential.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from cryptography import x509

from xds_server.admin.xds_certificates import ClientCertificate
from xds_server.model import MeshSnapshot
from xds_server.security.authn import ClientCertificateAuthenticator, TokenReviewAuthenticator
from xds_server.security.certificates import CertificateIssuer
from xds_server.security.guard import MeshNodeGuard
from xds_server.security.xds_tls import XDS_SERVER_ACCOUNT, xds_server_id
from xds_server.server.auth import NodeAuthorizer, StreamAuthenticator
from xds_server.settings import SecuritySettings, Settings


def xds_authentication(
    settings: Settings, mesh: Callable[[], MeshSnapshot]
) -> tuple[StreamAuthenticator | None, NodeAuthorizer | None]:
    """The authenticator and node guard of `settings` (both None when insecure)."""
    security = settings.security
    if security.insecure_xds:
        return None, None
    guard = MeshNodeGuard(security.trust_domain, mesh)
    if security.client_auth(settings.source_kind) == "certificate":
        return ClientCertificateAuthenticator(security.trust_domain), guard
    tokens = TokenReviewAuthenticator(
        security.trust_domain, security.token_audience, _lazy_token_review(settings)
    )
    return tokens, guard


def _lazy_token_review(settings: Settings) -> Callable[[str, str], Any]:
    """TokenReview through the official client, its configuration loaded on first use."""
    review: list[Callable[[str, str], Any]] = []

    def call(token: str, audience: str) -> Any:
        if not review:
            from kubernetes import client

            from xds_server.security.authn import token_review
            from xds_server.sources.kubernetes import load_configuration

            configuration = load_configuration(settings.kubernetes.kubeconfig)
            review.append(token_review(client.ApiClient(configuration)))
        return review[0](token, audience)

    return call


def server_hosts(listen_host: str, namespace: str) -> list[str]:
    """The host names the xDS server's certificate names besides its SPIFFE ID: this
    host, the address it listens on, and its Service's names in the cluster."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    if listen_host not in ("", "0.0.0.0", "::", *hosts):
        hosts.append(listen_host)
    service = XDS_SERVER_ACCOUNT
    hosts += [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    return hosts


def sign_client_certificate(
    issuer: CertificateIssuer,
    security: SecuritySettings,
    namespace: str,
    service_account: str,
    csr_pem: bytes,
    ttl_seconds: float,
) -> ClientCertificate:
    """The xDS credential of `namespace`/`service_account` for the key of `csr_pem`.

    ValueError naming the field when the CSR does not parse or the names are not
    a namespace and a service account.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise ValueError(f"csr_pem is not a PEM certificate signing request: {error}") from None
    ttl = datetime.timedelta(seconds=ttl_seconds)
    svid = issuer.ca.issue_svid(namespace, service_account, csr, ttl)
    return ClientCertificate(
        spiffe_id=svid.spiffe_id,
        chain_pem=svid.chain_pem().decode(),
        roots_pem=issuer.bundle.to_pem().decode(),
        server_id=xds_server_id(security.trust_domain, security.ca_namespace),
        not_after=svid.certificate.not_valid_after_utc,
    )
