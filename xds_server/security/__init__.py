"""Workload identity at run time: the certificate issuer and where the root is kept.

`ca` is the pure capability (sign an SVID); this package runs it for the mesh:
`certificates.CertificateIssuer` issues and rotates the proxies' certificates
and the trust bundle as a pipeline source, `roots` persists the root in a
directory (file mode) and `ca_store` in a Kubernetes Secret (cluster mode).
"""

from xds_server.security.certificates import CertificateIssuer, RootRotation, serial_hex
from xds_server.security.roots import DirectoryRootStore, RootStore, StoredRoot

__all__ = [
    "CertificateIssuer",
    "DirectoryRootStore",
    "RootRotation",
    "RootStore",
    "StoredRoot",
    "serial_hex",
]
