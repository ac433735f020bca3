"""Where the mesh's root lives between starts: a directory (file mode), and how a root
rotation is persisted there.

`RootStore` is the seam the issuer talks to: `load` gives the active CA and the
roots still trusted beside it (the old root during a rotation's overlap, with
when that ends), `begin_rotation` makes a new root active while the old one
stays trusted, `end_rotation` forgets the old one.  `read` is what a replica
polls to learn of a rotation another replica started: it never writes (no
generation, no recovery), and says None while a rotation is half written.
`DirectoryRootStore` keeps `root-cert.pem`/`root-key.pem` (as
`CertificateAuthority.load_or_generate` does) plus, during an overlap,
`previous-root-cert.pem`, `previous-root-until` (epoch seconds) and
`root-reissue-at` (when certificates move to the new root, so every replica
re-issues at the same moment).  A rotation writes the new pair as `*.next`
files and renames the key, then the certificate; `load` finishes or undoes a
rotation a crash interrupted, so the pair on disk always matches.  The
Kubernetes Secret store (`security.ca_store`) has the same shape.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xds_server.ca import CertificateAuthority
from xds_server.ca.authority import ROOT_CERT_FILE, ROOT_KEY_FILE, write_atomically

logger = logging.getLogger(__name__)

PREVIOUS_ROOT_FILE = "previous-root-cert.pem"
PREVIOUS_UNTIL_FILE = "previous-root-until"
REISSUE_AT_FILE = "root-reissue-at"
_NEXT = ".next"


@dataclass(frozen=True)
class StoredRoot:
    """What a store holds: the CA that issues, and the old root still trusted until when."""

    authority: CertificateAuthority
    previous: x509.Certificate | None = None
    previous_until: float = 0.0
    """Epoch seconds at which `previous` stops being trusted."""
    reissue_at: float = 0.0
    """Epoch seconds from which certificates are issued under `authority` (0: unknown)."""


class RootStore(Protocol):
    """Persists the root the issuer signs with (blocking I/O: call it in a thread)."""

    def load(self) -> StoredRoot:
        """The stored root, generated and stored on first start."""
        ...

    def read(self) -> StoredRoot | None:
        """The stored root as it is now, or None when there is none or it is being written."""
        ...

    def begin_rotation(
        self,
        new: CertificateAuthority,
        previous: x509.Certificate,
        until: float,
        reissue_at: float = 0.0,
    ) -> None: ...

    def end_rotation(self, previous: x509.Certificate | None = None) -> None:
        """Forget the old root (only if it is still `previous`, when given: a replica
        ending an overlap must not end a newer rotation another one began)."""
        ...


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


class DirectoryRootStore:
    """The root in a directory (file mode); replicas sharing it share the root."""

    def __init__(self, directory: Path, trust_domain: str) -> None:
        self.directory = directory
        self.trust_domain = trust_domain

    def _path(self, name: str) -> Path:
        return self.directory / name

    def load(self) -> StoredRoot:
        self._recover()
        authority = CertificateAuthority.load_or_generate(self.trust_domain, self.directory)
        return self._with_previous(authority)

    def read(self) -> StoredRoot | None:
        if (
            self._path(ROOT_CERT_FILE + _NEXT).exists()
            or self._path(ROOT_KEY_FILE + _NEXT).exists()
        ):
            return None  # a rotation is being written: its pair is not complete yet
        try:
            authority = CertificateAuthority.from_files(
                self.trust_domain, self._path(ROOT_CERT_FILE), self._path(ROOT_KEY_FILE)
            )
        except (OSError, ValueError) as error:
            # Between the key's rename and the certificate's the pair does not match.
            logger.debug("the root in %s cannot be read now: %s", self.directory, error)
            return None
        try:
            return self._with_previous(authority)
        except (OSError, ValueError):
            return None  # an overlap ending while it was read

    def _with_previous(self, authority: CertificateAuthority) -> StoredRoot:
        previous_path = self._path(PREVIOUS_ROOT_FILE)
        if not previous_path.exists():
            return StoredRoot(authority)
        previous = x509.load_pem_x509_certificate(previous_path.read_bytes())
        return StoredRoot(
            authority,
            previous,
            self._epoch(PREVIOUS_UNTIL_FILE),  # none recorded: 0, the overlap ends at once
            self._epoch(REISSUE_AT_FILE),
        )

    def _epoch(self, name: str) -> float:
        try:
            return float(self._path(name).read_text().strip())
        except (OSError, ValueError):
            return 0.0

    def _recover(self) -> None:
        """Finish (key already renamed) or undo (key not yet renamed) an interrupted rotation."""
        cert_next = self._path(ROOT_CERT_FILE + _NEXT)
        key_next = self._path(ROOT_KEY_FILE + _NEXT)
        if cert_next.exists() and not key_next.exists():
            os.replace(cert_next, self._path(ROOT_CERT_FILE))
            logger.warning("completed a root rotation interrupted in %s", self.directory)
        elif cert_next.exists() or key_next.exists():
            cert_next.unlink(missing_ok=True)
            key_next.unlink(missing_ok=True)
            self._forget_previous()
            logger.warning("undid a root rotation interrupted in %s", self.directory)

    def begin_rotation(
        self,
        new: CertificateAuthority,
        previous: x509.Certificate,
        until: float,
        reissue_at: float = 0.0,
    ) -> None:
        cert_pem, key_pem = new.root_pem_for_storage()
        write_atomically(self._path(PREVIOUS_UNTIL_FILE), f"{until:.3f}\n".encode(), mode=0o644)
        write_atomically(self._path(REISSUE_AT_FILE), f"{reissue_at:.3f}\n".encode(), mode=0o644)
        write_atomically(self._path(PREVIOUS_ROOT_FILE), certificate_pem(previous), mode=0o644)
        write_atomically(self._path(ROOT_KEY_FILE + _NEXT), key_pem, mode=0o600)
        write_atomically(self._path(ROOT_CERT_FILE + _NEXT), cert_pem, mode=0o644)
        os.replace(self._path(ROOT_KEY_FILE + _NEXT), self._path(ROOT_KEY_FILE))
        os.replace(self._path(ROOT_CERT_FILE + _NEXT), self._path(ROOT_CERT_FILE))
        logger.info("persisted the new root in %s; the old one stays trusted", self.directory)

    def end_rotation(self, previous: x509.Certificate | None = None) -> None:
        if previous is not None:
            try:
                stored = self._path(PREVIOUS_ROOT_FILE).read_bytes()
            except FileNotFoundError:
                return  # another replica ended it first
            if stored != certificate_pem(previous):
                return  # a newer rotation's overlap: not ours to end
        self._forget_previous()

    def _forget_previous(self) -> None:
        self._path(PREVIOUS_ROOT_FILE).unlink(missing_ok=True)
        self._path(PREVIOUS_UNTIL_FILE).unlink(missing_ok=True)
        self._path(REISSUE_AT_FILE).unlink(missing_ok=True)
