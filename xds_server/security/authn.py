"""Proving a proxy's identity from its xDS stream (the mesh's `StreamAuthenticator`).

In file mode the xDS port requires a client certificate that gRPC verified
against the mesh's trust roots during the TLS handshake (a forged or foreign
certificate never gets a stream); what is left is reading its SPIFFE ID, the
one URI SAN of an SVID, and checking it is of our trust domain.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from xds_server.server.auth import AuthenticationError, PeerIdentity, peer_certificate_pem


class ClientCertificateAuthenticator:
    """The SPIFFE ID of the client certificate the TLS handshake verified."""

    def __init__(self, trust_domain: str) -> None:
        self.prefix = f"spiffe://{trust_domain}/"

    async def authenticate(self, context: Any) -> PeerIdentity:
        pem = peer_certificate_pem(context)
        if pem is None:
            raise AuthenticationError("the stream presented no client certificate")
        return PeerIdentity(self.principal_of(pem), "x509")

    def principal_of(self, pem: bytes) -> str:
        """The certificate's SPIFFE ID; AuthenticationError when it has none of ours."""
        try:
            certificate = x509.load_pem_x509_certificate(pem)
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except (ValueError, x509.ExtensionNotFound) as error:
            raise AuthenticationError(
                f"the client certificate names no SPIFFE ID: {error}"
            ) from None
        uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
        ours = [uri for uri in uris if uri.startswith(self.prefix)]
        if len(uris) != 1 or not ours:
            raise AuthenticationError(
                f"the client certificate must name one SPIFFE ID under {self.prefix}, not {uris}"
            )
        return ours[0]
