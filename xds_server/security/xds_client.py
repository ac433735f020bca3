"""A sidecar's side of the secured xDS port: its key, its CSR, the files Envoy reads.

The key is made here, where the sidecar runs, and only its CSR is sent to the
control plane (`admin.xds_certificates`); what comes back is written next to
the bootstrap (the key with mode 0600) and referenced from the xDS cluster's
TLS context by file name, or kept inline for a bootstrap that is never written
to disk in clear (tests).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server.admin.xds_certificates import ClientCertificate
from xds_server.bootstrap import XdsClientTls, file_source, inline_source

CERTIFICATE_FILE = "xds-client-cert.pem"
KEY_FILE = "xds-client-key.pem"
ROOTS_FILE = "xds-roots.pem"


def new_key_and_csr() -> tuple[bytes, bytes]:
    """A fresh P-256 key (PEM, PKCS8) and a CSR over it (PEM); the CSR names nothing:
    the CA decides the identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def inline_client_tls(credential: ClientCertificate, key_pem: bytes) -> XdsClientTls:
    """The credential inside the bootstrap itself."""
    return XdsClientTls(
        server_id=credential.server_id,
        roots=inline_source(credential.roots_pem),
        certificate=inline_source(credential.chain_pem),
        private_key=inline_source(key_pem),
    )


def write_client_tls(
    credential: ClientCertificate, key_pem: bytes, directory: Path
) -> XdsClientTls:
    """The credential written to `directory` (created 0700; the key 0600), by file name,
    watched: writing it again (a renewal, or new roots after a root rotation) is picked
    up by the running Envoy on its next connection to the control plane."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory = directory.resolve()
    tls = XdsClientTls(
        server_id=credential.server_id,
        roots=file_source(directory / ROOTS_FILE),
        certificate=file_source(directory / CERTIFICATE_FILE),
        private_key=file_source(directory / KEY_FILE),
        watched_directory=str(directory),
    )
    for path, text in tls.sds_files().items():
        _write(Path(path), text.encode(), 0o644)
    # The key and chain last, each moved into place (the watch fires on moves).
    _write(directory / ROOTS_FILE, credential.roots_pem.encode(), 0o644)
    _write(directory / KEY_FILE, key_pem, 0o600)
    _write(directory / CERTIFICATE_FILE, credential.chain_pem.encode(), 0o644)
    return tls


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (a key is never readable by others)."""
    staging = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(staging, mode)
    staging.replace(path)
