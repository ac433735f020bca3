"""CSDS for this mesh: who may ask, and what of a resource may be answered.

The generic service (`xds_server.server.csds`) is given the admin's own rules,
so the xDS port and the admin API show one truth: `sync_status` classifies
each type, contents are redacted by `redact` (an SDS Secret or a TLS context
never carries a private key out), and Envoy's messages pass `redact_text`.

CSDS shows every proxy's config, certificates included, so it is not for
proxies.  A call is served when it carries the admin token as
`authorization: Bearer <token>` metadata, or when the caller's authenticated
identity (its client certificate in file mode, its ServiceAccount token in
Kubernetes, checked as the port checks proxies) is of the control plane's own
namespace (`SecuritySettings.ca_namespace`: the control plane's replicas and
tools run there).  Anyone else is refused PERMISSION_DENIED.  With
`--insecure-xds` nobody is authenticated, so only the admin token admits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2, json_format

from xds_server.admin.auth import AdminToken
from xds_server.admin.redact import redact, redact_text
from xds_server.admin.views import sync_status
from xds_server.resources import TYPES, Resource, unpack
from xds_server.server.auth import AuthenticationError, StreamAuthenticator, bearer_token
from xds_server.server.csds import ClientStatusBuilder, ClientStatusServer

if TYPE_CHECKING:
    from xds_server.app import ControlPlane

_PEM_KEY = b"PRIVATE KEY-----"


def shown_resource(resource: Resource) -> any_pb2.Any | None:
    """The resource packed with its secrets redacted; None when it cannot be shown safely.

    As the admin's config view: a secret type holding an `Any` nobody here can
    read (so cannot redact) is withheld, and, as a last guard, so is anything
    whose bytes still hold a PEM private key.
    """
    message = redact(unpack(resource))
    known = TYPES.get(resource.type_url)
    if known is None or known.secret:
        try:
            json_format.MessageToDict(message)
        except (TypeError, KeyError):
            return None
    data = message.SerializeToString(deterministic=True)
    if _PEM_KEY in data:
        return None
    return any_pb2.Any(type_url=resource.type_url, value=data)


def namespace_of(principal: str) -> str | None:
    """`ns` of `spiffe://<trust domain>/ns/<ns>/sa/<sa>`; None for any other form."""
    parts = principal.removeprefix("spiffe://").split("/")
    if not principal.startswith("spiffe://") or len(parts) != 5:
        return None
    if parts[1] != "ns" or parts[3] != "sa" or not parts[2]:
        return None
    return parts[2]


class CsdsAccess:
    """Admits a CSDS call holding the admin token or an identity of `namespace`."""

    def __init__(
        self,
        token: AdminToken | None,
        authenticator: StreamAuthenticator | None,
        namespace: str,
    ) -> None:
        self.token = token
        self.authenticator = authenticator
        self.namespace = namespace

    async def __call__(self, context: Any) -> str | None:
        presented = bearer_token(context)
        if presented is not None and self.token is not None and self.token.matches(presented):
            return None
        wanted = f"CSDS needs the admin token or an identity of namespace {self.namespace}"
        if self.authenticator is None:
            return f"{wanted}; with --insecure-xds only the admin token"
        try:
            identity = await self.authenticator.authenticate(context)
        except AuthenticationError as error:
            return f"{wanted}: {error}"
        if namespace_of(identity.principal) != self.namespace:
            return f"{wanted}, not {identity.principal}"
        return None


def client_status_service(plane: ControlPlane) -> ClientStatusServer:
    """The CSDS servicer of `plane` (after `plane.admin_token` is read)."""
    builder = ClientStatusBuilder(
        streams=plane.ads.streams,
        snapshot_of=plane.cache.get_snapshot,
        sync_of=sync_status,
        show=shown_resource,
        clean_text=redact_text,
    )
    access = CsdsAccess(
        plane.admin_token, plane.ads.authenticator, plane.settings.security.ca_namespace
    )
    return ClientStatusServer(builder, access)
