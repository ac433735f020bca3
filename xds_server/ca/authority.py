"""The mesh's certificate authority: one signing key, its certificate, and SVID issuance.

`CertificateAuthority` owns the CA key. It is made in one of two ways:
`load_or_generate` (file mode: a self-signed EC P-256 root created on first
start and persisted to a directory, then loaded on every later start, so
restarts and replicas sharing the directory keep one root) or `from_pem`
(a user-supplied root or intermediate with its chain to the root).

Its one job is `issue_svid`: a SPIFFE X.509 SVID for a Kubernetes
namespace and service account, whose only name is the URI SAN
`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. The caller brings the public
key (or a CSR, whose requested names are ignored): the workload's key is
not the CA's business, and the CA's key is nobody else's. There is no
accessor for it, `__repr__` does not show it, and the object refuses to be
pickled or copied; the only place its bytes are produced is
`root_pem_for_storage`, which the root stores call to persist a root (the
atomic, mode-0600 write here, `security.roots` on rotation, the Kubernetes
Secret of `security.ca_store`).

Cluster mode loads its root with `from_pem`; this module does no Kubernetes I/O.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

DEFAULT_SVID_TTL = datetime.timedelta(hours=24)
MIN_SVID_TTL = datetime.timedelta(seconds=2)
"""Low enough for tests that watch a rotation happen; production TTLs are hours."""
CLOCK_SKEW_BACKDATE = datetime.timedelta(minutes=1)
"""How far before issuance an SVID's notBefore is set, so peers with a slow clock accept it."""
DEFAULT_ROOT_TTL = datetime.timedelta(days=3650)

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")


def _host_name(host: str) -> x509.GeneralName:
    """`host` as a SAN: an IPAddress for an address, else a DNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def validate_dns1123_label(field: str, value: str) -> None:
    """Raise a ValueError naming `field` unless `value` is a DNS-1123 label."""
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            f"{field} {value!r} is not a DNS-1123 label (at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit)"
        )


def validate_dns1123_subdomain(field: str, value: str) -> None:
    """Raise a ValueError naming `field` unless `value` is a DNS-1123 subdomain (what
    Kubernetes allows for a ServiceAccount name: dot-separated labels, 253 at most)."""
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{field} {value!r} is not a DNS-1123 subdomain (at most 253 lowercase letters, "
            "digits, '-' and '.', each dot-separated label starting and ending with a letter "
            "or digit)"
        )


def validate_trust_domain(trust_domain: str) -> None:
    """Raise a ValueError unless `trust_domain` is a SPIFFE trust domain name."""
    if len(trust_domain) > 255 or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"trust_domain {trust_domain!r} is not a SPIFFE trust domain "
            "(lowercase letters, digits, '.', '-' and '_')"
        )


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID of a Kubernetes service account, its fields validated."""
    validate_trust_domain(trust_domain)
    validate_dns1123_label("namespace", namespace)
    validate_dns1123_subdomain("service_account", service_account)
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


@dataclass(frozen=True)
class Svid:
    """An issued X.509 SVID: the leaf and the intermediates between it and the root."""

    spiffe_id: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    """Intermediates from the issuer up, without the self-signed root (the trust bundle has it)."""

    def chain_pem(self) -> bytes:
        """Leaf then intermediates, PEM: what a proxy presents (Envoy's `certificate_chain`)."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain)
        )


_ISSUER_KEY_CLASSES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _require_ca(cert: x509.Certificate, what: str) -> None:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError(
            f"{what} has no basicConstraints extension: not a CA certificate"
        ) from None
    if not bc.ca:
        raise ValueError(f"{what} has basicConstraints CA:false: not a CA certificate")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise ValueError(f"{what} key usage lacks keyCertSign")


def ca_certificate_builder(
    name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    path_length: int = 0,
) -> x509.CertificateBuilder:
    """A self-issued CA certificate, unsigned: CA:true with `path_length`, certificate and
    CRL signing only, and its subject key identifier (the webhook's CA is one too)."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


class CertificateAuthority:
    """Issues SPIFFE SVIDs for one trust domain; holds the signing key and never hands it out."""

    __slots__ = ("__key", "_anchor", "_certificate", "_intermediates", "_trust_domain")

    def __init__(
        self,
        trust_domain: str,
        certificate: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
        chain: tuple[x509.Certificate, ...] = (),
    ) -> None:
        """Check that `key` matches `certificate`, a CA, and that `chain` leads up from it."""
        validate_trust_domain(trust_domain)
        _require_ca(certificate, "CA certificate")
        if _public_der(certificate.public_key()) != _public_der(key.public_key()):
            raise ValueError("CA key does not match the CA certificate's public key")
        below = certificate
        for i, issuer in enumerate(chain):
            _require_ca(issuer, f"chain certificate {i}")
            try:
                below.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature) as e:
                raise ValueError(
                    f"chain certificate {i} ({issuer.subject.rfc4514_string()}) did not issue "
                    f"{below.subject.rfc4514_string()}: {e}"
                ) from None
            below = issuer
        path = (certificate, *chain)
        self._trust_domain = trust_domain
        self._certificate = certificate
        self.__key = key
        # What a verifier must be given besides the leaf: everything but a self-signed top.
        self._anchor = path[-1]
        self._intermediates = path[:-1] if _is_self_signed(path[-1]) else path

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_pem(
        cls,
        trust_domain: str,
        certificate_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes = b"",
        *,
        key_password: bytes | None = None,
    ) -> CertificateAuthority:
        """A user-supplied root or intermediate: certificate, key, optional chain to the root."""
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=key_password)
        if not isinstance(key, _ISSUER_KEY_CLASSES):
            raise ValueError(f"CA key of type {type(key).__name__} cannot sign certificates")
        chain = tuple(x509.load_pem_x509_certificates(chain_pem)) if chain_pem.strip() else ()
        return cls(trust_domain, certificate, key, chain)

    @classmethod
    def from_files(
        cls,
        trust_domain: str,
        certificate_path: Path,
        key_path: Path,
        chain_path: Path | None = None,
    ) -> CertificateAuthority:
        """`from_pem` on files, e.g. a mounted Secret (`tls.crt`, `tls.key`, `ca.crt`)."""
        chain = chain_path.read_bytes() if chain_path is not None else b""
        return cls.from_pem(
            trust_domain, certificate_path.read_bytes(), key_path.read_bytes(), chain
        )

    @classmethod
    def generate_root(
        cls,
        trust_domain: str,
        *,
        ttl: datetime.timedelta = DEFAULT_ROOT_TTL,
        path_length: int = 0,
        now: datetime.datetime | None = None,
    ) -> CertificateAuthority:
        """A new self-signed EC P-256 root for `trust_domain`, held in memory only."""
        validate_trust_domain(trust_domain)
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} root CA"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            ca_certificate_builder(
                name, key.public_key(), now - CLOCK_SKEW_BACKDATE, now + ttl, path_length
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        logger.info(
            "generated a new root CA for trust domain %s (serial %x)",
            trust_domain,
            certificate.serial_number,
        )
        return cls(trust_domain, certificate, key)

    @classmethod
    def load_or_generate(
        cls,
        trust_domain: str,
        directory: Path,
        *,
        ttl: datetime.timedelta = DEFAULT_ROOT_TTL,
        now: datetime.datetime | None = None,
    ) -> CertificateAuthority:
        """The root persisted in `directory`, generated and written there on first start.

        The key is written first and the certificate last, each atomically, so the
        certificate's presence means the pair is complete: a key without a certificate
        is an interrupted first start and is replaced; a certificate without its key is
        an error, never silently replaced by a new root that no proxy trusts.
        """
        cert_path, key_path = directory / ROOT_CERT_FILE, directory / ROOT_KEY_FILE
        if cert_path.exists():
            if not key_path.exists():
                raise ValueError(
                    f"{cert_path} exists but {key_path} does not: refusing to replace the root"
                )
            authority = cls.from_files(trust_domain, cert_path, key_path)
            logger.info(
                "loaded root CA from %s (serial %x)",
                directory,
                authority._certificate.serial_number,
            )
            return authority
        authority = cls.generate_root(trust_domain, ttl=ttl, now=now)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(key_path, authority.__key_pem(), mode=0o600)
        write_atomically(
            cert_path, authority._certificate.public_bytes(serialization.Encoding.PEM), mode=0o644
        )
        return authority

    def root_pem_for_storage(self) -> tuple[bytes, bytes]:
        """(certificate, key) PEM of a root this process generated, for a root store to
        persist (a directory, a Kubernetes Secret): the one way the key leaves this object."""
        return self._certificate.public_bytes(serialization.Encoding.PEM), self.__key_pem()

    def __key_pem(self) -> bytes:
        # Private (name-mangled): only the persistence of a root produces these bytes.
        return self.__key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # -- the public face --------------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def certificate(self) -> x509.Certificate:
        """The issuing certificate (the root, or the user's intermediate)."""
        return self._certificate

    @property
    def trust_anchor(self) -> x509.Certificate:
        """The top of the chain: the self-signed root, or the topmost certificate supplied."""
        return self._anchor

    def issue_svid(
        self,
        namespace: str,
        service_account: str,
        subject_key: CertificatePublicKeyTypes | x509.CertificateSigningRequest,
        ttl: datetime.timedelta = DEFAULT_SVID_TTL,
        *,
        now: datetime.datetime | None = None,
        hosts: Sequence[str] = (),
    ) -> Svid:
        """An SVID for `namespace`/`service_account` on `subject_key` (a public key or a CSR).

        Only the key of a CSR is used (after its signature is checked); the names it asks
        for are ignored. The SVID's notAfter is clamped to the issuing chain's.  `hosts`
        (DNS names or IP addresses) are added as SANs for a server certificate that
        clients checking host names (gRPC's own) must accept too; workloads get none.
        """
        sid = spiffe_id(self._trust_domain, namespace, service_account)
        if ttl < MIN_SVID_TTL:
            raise ValueError(f"ttl {ttl} is below the minimum SVID lifetime {MIN_SVID_TTL}")
        if isinstance(subject_key, x509.CertificateSigningRequest):
            if not subject_key.is_signature_valid:
                raise ValueError("CSR signature is invalid")
            public_key = subject_key.public_key()
        else:
            public_key = subject_key
        now = now or datetime.datetime.now(datetime.UTC)
        ca_not_after = min(c.not_valid_after_utc for c in (self._certificate, *self._intermediates))
        not_after = min(now + ttl, ca_not_after)
        if not_after - now < MIN_SVID_TTL:
            raise ValueError(f"the issuing CA expires at {ca_not_after}: too soon to issue an SVID")
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(
                # A fifth of the TTL at most, so a seconds-long SVID's half-life is ahead.
                max(now - min(CLOCK_SKEW_BACKDATE, ttl / 5), self._certificate.not_valid_before_utc)
            )
            .not_valid_after(not_after)
            # Empty subject, so the SAN is critical (RFC 5280 4.2.1.6).
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(sid), *map(_host_name, hosts)]
                ),
                critical=True,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.__key.public_key()),
                critical=False,
            )
            .sign(self.__key, _signature_hash(self.__key))
        )
        logger.debug(
            "issued SVID %s (serial %x, until %s)", sid, certificate.serial_number, not_after
        )
        return Svid(sid, certificate, self._intermediates)

    def __repr__(self) -> str:
        return (
            f"CertificateAuthority(trust_domain={self._trust_domain!r}, "
            f"subject={self._certificate.subject.rfc4514_string()!r}, "
            f"serial={self._certificate.serial_number:x}, "
            f"not_after={self._certificate.not_valid_after_utc.isoformat()})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("a CertificateAuthority holds the CA key and cannot be pickled or copied")


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` to `path` via a same-directory temporary file, fsync'd, then renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
