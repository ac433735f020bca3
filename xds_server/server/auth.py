"""Who is at the other end of an ADS stream, and what it may ask for.

The server stays generic: it knows a stream's credential (the client
certificate gRPC verified, or an `authorization: Bearer` header) and asks two
seams the mesh provides.  A `StreamAuthenticator` turns the credential into a
`PeerIdentity` when the stream opens (raising `AuthenticationError` ends it
UNAUTHENTICATED before anything is served); a `NodeAuthorizer` checks the node
the stream claims and the resource names of each request against that
identity (a denial reason ends it PERMISSION_DENIED, logged with the peer, the
identity and what was asked).  Without an authenticator every stream is served
anonymously, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.config.core.v3.base_pb2 import Node


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """An authenticated proxy: its principal (a SPIFFE ID) and how it proved it."""

    principal: str
    method: str
    """`x509` (a client certificate) or `token` (a bearer token), for logs and views."""
    pod: str | None = None
    """`namespace/name` of the Pod the credential is bound to, when it says (a token)."""


class AuthenticationError(Exception):
    """The stream's credential is missing or does not prove an identity."""


class StreamAuthenticator(Protocol):
    """Proves who opened a stream from its gRPC context."""

    async def authenticate(self, context: Any) -> PeerIdentity:
        """The identity behind the stream's credential; raises `AuthenticationError`."""
        ...


class NodeAuthorizer(Protocol):
    """Decides what an authenticated identity may claim and ask for."""

    def authorize_node(self, identity: PeerIdentity, node: Node) -> str | None:
        """None if `identity` may claim `node`; otherwise why not."""
        ...

    def authorize_names(
        self, identity: PeerIdentity, node: Node, type_url: str, names: Sequence[str]
    ) -> str | None:
        """None if `identity` may ask for `names` of `type_url`; otherwise why not."""
        ...


def peer_certificate_pem(context: Any) -> bytes | None:
    """The client certificate gRPC verified on the stream's TLS connection, if any."""
    certificates = context.auth_context().get("x509_pem_cert") or []
    return bytes(certificates[0]) if certificates else None


def bearer_token(context: Any) -> str | None:
    """The token of the stream's `authorization: Bearer <token>` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
