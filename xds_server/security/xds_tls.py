"""TLS for the xDS port: the control plane's own certificate and what it trusts.

The xDS server presents an SVID of its own identity
(`spiffe://<trust-domain>/ns/<namespace>/sa/xds-server`, plus the host names
it listens on, so gRPC clients that check host names accept it too), issued by
the mesh's CA, so a proxy checks the server with the same trust roots and a
URI SAN match, as it checks any peer.  With `require_client_auth` (file mode)
gRPC refuses during the handshake any client without a certificate chaining to
the trust roots: a forged or foreign certificate never gets a stream.

`XdsServerTls` keeps that up to date without a restart: gRPC asks it for the
certificate configuration on every new TLS handshake, and it re-issues when
the certificate is past half its life or its root has left the trust bundle
(the end of a root rotation), and serves a new bundle as soon as the issuer
trusts one (so proxies holding certificates of the new root are accepted
during the overlap).  Established connections are not touched.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server.ca import CertificateAuthority, TrustBundle, spiffe_id

logger = logging.getLogger(__name__)

XDS_SERVER_ACCOUNT = "xds-server"
"""The service account name of the control plane's own SVID."""

SERVER_CERTIFICATE_TTL = datetime.timedelta(days=1)


def xds_server_id(trust_domain: str, namespace: str) -> str:
    """The SPIFFE ID the xDS server's certificate names (what sidecars check)."""
    return spiffe_id(trust_domain, namespace, XDS_SERVER_ACCOUNT)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The xDS server's certificate chain and key (PEM) and the roots it trusts."""

    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes
    not_before: float = 0.0
    not_after: float = 0.0
    issuer_root: x509.Certificate | None = None

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.chain_pem)],
            root_certificates=self.roots_pem,
            require_client_auth=require_client_auth,
        )

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_pem, self.chain_pem)], root_certificates=self.roots_pem
        )


def issue_server_tls(
    ca: CertificateAuthority,
    namespace: str,
    roots_pem: bytes,
    ttl: datetime.timedelta = SERVER_CERTIFICATE_TTL,
    hosts: Sequence[str] = (),
) -> ServerTls:
    """A fresh key and SVID for the xDS server, trusting `roots_pem` for clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    svid = ca.issue_svid(namespace, XDS_SERVER_ACCOUNT, key.public_key(), ttl, hosts=hosts)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    leaf = svid.certificate
    return ServerTls(
        svid.spiffe_id,
        svid.chain_pem(),
        key_pem,
        roots_pem,
        leaf.not_valid_before_utc.timestamp(),
        leaf.not_valid_after_utc.timestamp(),
        ca.trust_anchor,
    )


class XdsServerTls:
    """The xDS port's credentials, following the issuing CA and the trust bundle."""

    def __init__(
        self,
        ca: Callable[[], CertificateAuthority],
        bundle: Callable[[], TrustBundle],
        namespace: str,
        *,
        hosts: Sequence[str] = (),
        require_client_auth: bool,
        ttl: datetime.timedelta = SERVER_CERTIFICATE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ca = ca
        self._bundle = bundle
        self.namespace = namespace
        self.hosts = tuple(hosts)
        self.require_client_auth = require_client_auth
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self.current = self._issue()
        self.reissued = 0

    def _issue(self) -> ServerTls:
        return issue_server_tls(
            self._ca(), self.namespace, self._bundle().to_pem(), self.ttl, self.hosts
        )

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for `add_secure_port` that ask `refresh` on every handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self.current.configuration(),
            self.refresh,
            require_client_authentication=self.require_client_auth,
        )

    def refresh(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when one is due, else None (gRPC keeps what it has).

        Called by gRPC on its own thread for each new connection; cheap unless due.
        """
        try:
            with self._lock:
                bundle = self._bundle()
                served = self.current
                due = (
                    served.issuer_root not in bundle.roots
                    or self._clock() >= (served.not_before + served.not_after) / 2
                )
                if due:
                    self.current = self._issue()
                    self.reissued += 1
                    logger.info("xDS server certificate re-issued (%s)", self.current.spiffe_id)
                elif bundle.to_pem() != served.roots_pem:
                    self.current = ServerTls(
                        served.spiffe_id,
                        served.chain_pem,
                        served.key_pem,
                        bundle.to_pem(),
                        served.not_before,
                        served.not_after,
                        served.issuer_root,
                    )
                else:
                    return None
                return self.current.configuration()
        except Exception:  # an exception here would fail the handshake; keep serving
            logger.exception("cannot refresh the xDS server certificate")
            return None
