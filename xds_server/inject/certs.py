"""TLS material for the webhook: a private CA and the serving certificate it signs.

The API server calls admission webhooks over HTTPS only and checks the
serving certificate against the `caBundle` of the webhook configuration.  The
CA exists only to sign the serving certificate; only the API server trusts
it, for this one webhook.  Both use ECDSA P-256, which is fast to generate at
start-up.  They are valid for ten years (a private trust relation between the
API server and one Service name, the same trade as kube-webhook-certgen's) and
are replaced when within `RENEW_BEFORE` of expiry, see `xds_server.inject.tls_store`.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xds_server.ca.authority import ca_certificate_builder

logger = logging.getLogger(__name__)

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class TlsBundle:
    """PEM-encoded CA certificate, serving certificate and the serving key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def generate_tls(
    dns_names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
    validity: datetime.timedelta = VALIDITY,
) -> TlsBundle:
    """A fresh CA and a serving certificate for `dns_names` (IP literals become IP SANs)."""
    if not dns_names:
        raise ValueError("the serving certificate needs at least one DNS name")
    start = (now or datetime.datetime.now(datetime.UTC)) - CLOCK_SKEW
    end = start + validity + CLOCK_SKEW
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xds-server webhook CA")])
    ca_cert = ca_certificate_builder(ca_name, ca_key.public_key(), start, end, path_length=0).sign(
        ca_key, hashes.SHA256()
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in dns_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsBundle(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def renewal_reason(
    bundle: TlsBundle,
    dns_names: Sequence[str],
    *,
    now: datetime.datetime | None = None,
    renew_before: datetime.timedelta = RENEW_BEFORE,
) -> str:
    """Why `bundle` cannot serve `dns_names` until `renew_before` from now; "" if it can."""
    try:
        ca = x509.load_pem_x509_certificate(bundle.ca_pem)
        cert = x509.load_pem_x509_certificate(bundle.cert_pem)
        key = serialization.load_pem_private_key(bundle.key_pem, password=None)
    except ValueError as error:
        return f"unreadable: {error}"
    moment = now or datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc - renew_before <= moment:
        return f"expires {cert.not_valid_after_utc.isoformat()}"
    if ca.not_valid_after_utc - renew_before <= moment:
        return f"the CA expires {ca.not_valid_after_utc.isoformat()}"
    if cert.issuer != ca.subject:
        return "the certificate is not issued by the CA"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != cert.public_key().public_bytes(
        encoding, public
    ):
        return "the key does not match the certificate"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the certificate has no subject alternative names"
    present = {str(value) for value in sans.get_values_for_type(x509.DNSName)}
    present |= {str(value) for value in sans.get_values_for_type(x509.IPAddress)}
    missing = sorted(set(dns_names) - present)
    if missing:
        return f"the certificate does not cover {', '.join(missing)}"
    return ""
