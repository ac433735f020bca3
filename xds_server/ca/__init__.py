"""The mesh's certificate authority: SPIFFE X.509 SVIDs and the trust bundle.

It imports `cryptography` (and at most `xds_server.resources`), nothing of the
pipeline, server, sources or translation: issuing certificates is a pure
capability that the Secret generator and the xDS server's authentication
will use, not a stage of the pipeline.
"""

from xds_server.ca.authority import (
    DEFAULT_SVID_TTL,
    MIN_SVID_TTL,
    CertificateAuthority,
    Svid,
    spiffe_id,
)
from xds_server.ca.rotation import TrustBundle, needs_reissue

__all__ = [
    "DEFAULT_SVID_TTL",
    "MIN_SVID_TTL",
    "CertificateAuthority",
    "Svid",
    "TrustBundle",
    "needs_reissue",
    "spiffe_id",
]
