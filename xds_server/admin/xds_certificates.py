"""`POST /api/xds/client-certificate`: a sidecar's credential for the xDS port (file mode).

`xds-server bootstrap` generates the sidecar's key itself and sends only a CSR;
the control plane signs it for the namespace and service account asked (the
CSR's own names are ignored) and answers with the chain, the trust bundle and
the SPIFFE ID its xDS server presents, which the bootstrap pins.  Whoever holds
the admin token may mint any identity's credential, as whoever holds a
Kubernetes node's credentials may, so the endpoint requires the token; the CA
key and the sidecar's key never cross the wire.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from pydantic import Field

from xds_server.admin.models import ApiModel

logger = logging.getLogger(__name__)

MAX_CLIENT_CERTIFICATE_DAYS = 365


class ClientCertificateRequest(ApiModel):
    namespace: str = Field(description="the sidecar's namespace")
    service_account: str = Field(description="the service account its workload runs as")
    csr_pem: str = Field(description="a PEM CSR over the sidecar's own key")
    ttl_seconds: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        le=MAX_CLIENT_CERTIFICATE_DAYS * 24 * 3600.0,
        description="how long the credential lives",
    )


class ClientCertificate(ApiModel):
    spiffe_id: str
    chain_pem: str
    roots_pem: str
    """The trust bundle: what the sidecar checks the xDS server with."""
    server_id: str
    """The SPIFFE ID the xDS server's certificate names."""
    not_after: datetime


@runtime_checkable
class ClientCertificateView(Protocol):
    """What a view offers for the endpoint (`ControlPlane` implements it)."""

    def sign_xds_client_certificate(
        self, namespace: str, service_account: str, csr_pem: bytes, ttl_seconds: float
    ) -> ClientCertificate:
        """The signed credential; ValueError naming the field when it cannot be."""
        ...


def log_issued(certificate: ClientCertificate) -> None:
    logger.warning(
        "xDS client certificate issued through the admin API for %s (until %s)",
        certificate.spiffe_id,
        certificate.not_after.astimezone(UTC).isoformat(),
    )
