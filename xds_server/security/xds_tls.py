"""TLS for the xDS port: the control plane's own certificate and what it trusts.

The xDS server presents an SVID of its own identity
(`spiffe://<trust-domain>/ns/<namespace>/sa/xds-server`), issued by the mesh's
CA, so a proxy checks the server with the same trust roots and a URI SAN
match, as it checks any peer.  With `require_client_auth` (file mode) gRPC
refuses during the handshake any client without a certificate chaining to the
trust roots: a forged or foreign certificate never gets a stream.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server.ca import CertificateAuthority

XDS_SERVER_ACCOUNT = "xds-server"
"""The service account name of the control plane's own SVID."""

SERVER_CERTIFICATE_TTL = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The xDS server's certificate chain and key (PEM) and the roots it trusts."""

    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes
    roots_pem: bytes

    def credentials(self, *, require_client_auth: bool) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.chain_pem)],
            root_certificates=self.roots_pem,
            require_client_auth=require_client_auth,
        )


def issue_server_tls(
    ca: CertificateAuthority,
    namespace: str,
    roots_pem: bytes,
    ttl: datetime.timedelta = SERVER_CERTIFICATE_TTL,
) -> ServerTls:
    """A fresh key and SVID for the xDS server, trusting `roots_pem` for clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    svid = ca.issue_svid(namespace, XDS_SERVER_ACCOUNT, key.public_key(), ttl)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ServerTls(svid.spiffe_id, svid.chain_pem(), key_pem, roots_pem)
