"""Pure rotation helpers: when a certificate is due for re-issue, and the trust bundle.

Kept apart from the authority because neither needs the CA key: the
component that pushes Secrets asks `needs_reissue` of each proxy's current
SVID, and serves a `TrustBundle` as the validation context. During a root
rotation the bundle holds the old root and the new one, so SVIDs from either
verify until every proxy has been re-issued under the new root.

The bundle's PEM is deterministic (roots deduplicated and ordered by their
SHA-256 fingerprint), so the same set of roots always yields the same bytes,
and hence the same resource version: no push when nothing changed.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.verification import Store

logger = logging.getLogger(__name__)


def needs_reissue(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    """True from half of `certificate`'s lifetime on (and when it has expired)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return now >= start + (end - start) / 2


def _fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


@dataclass(frozen=True)
class TrustBundle:
    """One or more root certificates trusted together; order and duplicates do not matter."""

    roots: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise ValueError("a trust bundle holds at least one root")
        unique = {_fingerprint(c): c for c in self.roots}
        object.__setattr__(self, "roots", tuple(unique[f] for f in sorted(unique)))

    @classmethod
    def of(cls, *roots: x509.Certificate) -> TrustBundle:
        return cls(roots)

    @classmethod
    def from_pem(cls, pem: bytes) -> TrustBundle:
        return cls(tuple(x509.load_pem_x509_certificates(pem)))

    def with_root(self, root: x509.Certificate) -> TrustBundle:
        """This bundle plus `root`: the overlap period of a root rotation."""
        return TrustBundle((*self.roots, root))

    def without_root(self, root: x509.Certificate) -> TrustBundle:
        """This bundle less `root`: the end of a rotation (at least one root must remain)."""
        return TrustBundle(tuple(c for c in self.roots if c != root))

    def to_pem(self) -> bytes:
        """The roots, PEM, in fingerprint order (Envoy's `trusted_ca`)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.roots)

    def store(self) -> Store:
        """The roots as a `cryptography` verification store."""
        return Store(list(self.roots))
