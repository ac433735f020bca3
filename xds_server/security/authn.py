"""Proving a proxy's identity from its xDS stream (the mesh's `StreamAuthenticator`).

In file mode the xDS port requires a client certificate that gRPC verified
against the mesh's trust roots during the TLS handshake (a forged or foreign
certificate never gets a stream); what is left is reading its SPIFFE ID, the
one URI SAN of an SVID, and checking it is of our trust domain.  In
Kubernetes the proxy sends its projected ServiceAccount token instead, checked
with the TokenReview API (in a thread, the answer cached briefly).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from xds_server.ca import spiffe_id
from xds_server.server.auth import (
    AuthenticationError,
    PeerIdentity,
    bearer_token,
    peer_certificate_pem,
)


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


TOKEN_CACHE_SECONDS = 30.0
"""How long a reviewed token's answer is reused (reconnects do not each ask the API)."""

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


class TokenReviewAuthenticator:
    """A projected ServiceAccount token in `authorization: Bearer`, checked by TokenReview.

    The token must be authenticated for `audience`, name a service account
    (`system:serviceaccount:<ns>:<sa>`, whose SPIFFE ID is the principal) and be
    bound to a Pod, which `MeshNodeGuard` matches to the node's Pod.
    """

    def __init__(
        self,
        trust_domain: str,
        audience: str,
        review: Callable[[str, str], Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trust_domain = trust_domain
        self.audience = audience
        self._review = review
        self._clock = clock
        self._cache: dict[str, tuple[float, PeerIdentity]] = {}

    async def authenticate(self, context: Any) -> PeerIdentity:
        token = bearer_token(context)
        if token is None:
            raise AuthenticationError("the stream carries no authorization: Bearer token")
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        status = await asyncio.to_thread(self._review, token, self.audience)
        identity = self._identity_of(status)
        self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[token] = (now + TOKEN_CACHE_SECONDS, identity)
        return identity

    def _identity_of(self, status: Any) -> PeerIdentity:
        if status is None or not status.authenticated:
            error = getattr(status, "error", None) or "not authenticated"
            raise AuthenticationError(f"the token was refused by TokenReview: {error}")
        if self.audience not in (status.audiences or []):
            raise AuthenticationError(f"the token is not for the audience {self.audience}")
        username = status.user.username or ""
        prefix, _, rest = username.partition("system:serviceaccount:")
        namespace, _, account = rest.partition(":")
        if prefix or not namespace or not account:
            raise AuthenticationError(f"the token names {username!r}, not a service account")
        pods = (status.user.extra or {}).get(POD_NAME_EXTRA) or []
        if len(pods) != 1:
            raise AuthenticationError("the token is not bound to a Pod (a projected token is)")
        principal = spiffe_id(self.trust_domain, namespace, account)
        return PeerIdentity(principal, "token", pod=f"{namespace}/{pods[0]}")


def token_review(api_client: Any) -> Callable[[str, str], Any]:
    """A TokenReview call through the official client: token, audience → its status."""
    from kubernetes import client

    api = client.AuthenticationV1Api(api_client)

    def review(token: str, audience: str) -> Any:
        spec = client.V1TokenReviewSpec(token=token, audiences=[audience])
        return api.create_token_review(client.V1TokenReview(spec=spec)).status

    return review
