"""The xDS port's own certificate follows the CA and the trust bundle, handshake by handshake.

gRPC asks `XdsServerTls.refresh` on every new TLS connection: None keeps what it
serves, a configuration replaces it.  These specify when each happens, and what
the control plane signs for `xds-server bootstrap`.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xds_server.ca import CertificateAuthority, TrustBundle
from xds_server.security import CertificateIssuer
from xds_server.security.xds_auth import server_hosts, sign_client_certificate
from xds_server.security.xds_client import new_key_and_csr
from xds_server.security.xds_tls import XdsServerTls, xds_server_id
from xds_server.settings import SecuritySettings

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime.now(datetime.UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


def names(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate_root("cluster.local")


def server_tls(
    ca: CertificateAuthority,
    bundle: list[TrustBundle],
    clock: Clock,
    authority: list[CertificateAuthority] | None = None,
) -> XdsServerTls:
    current = authority or [ca]
    return XdsServerTls(
        lambda: current[0],
        lambda: bundle[0],
        "mesh-system",
        hosts=server_hosts("127.0.0.1", "mesh-system"),
        require_client_auth=True,
        ttl=datetime.timedelta(hours=2),
        clock=clock,
    )


def test_the_server_certificate_names_its_spiffe_id_and_the_hosts_clients_dial(
    ca: CertificateAuthority,
) -> None:
    tls = server_tls(ca, [TrustBundle.of(ca.trust_anchor)], Clock())

    certificate = leaf(tls.current.chain_pem)
    assert names(certificate)[0] == xds_server_id("cluster.local", "mesh-system")
    assert {"localhost", "127.0.0.1", "xds-server.mesh-system.svc"} <= set(names(certificate))


def test_nothing_changes_until_half_life_then_a_new_certificate_is_served(
    ca: CertificateAuthority,
) -> None:
    clock = Clock()
    tls = server_tls(ca, [TrustBundle.of(ca.trust_anchor)], clock)
    first = tls.current

    assert tls.refresh() is None
    clock.now += 0.9 * HOUR
    assert tls.refresh() is None
    clock.now += 0.2 * HOUR  # past half of two hours
    assert tls.refresh() is not None
    assert leaf(tls.current.chain_pem).serial_number != leaf(first.chain_pem).serial_number
    assert tls.reissued == 1


def test_a_new_bundle_is_trusted_at_once_and_a_dropped_root_means_a_new_certificate(
    ca: CertificateAuthority,
) -> None:
    new = CertificateAuthority.generate_root("cluster.local")
    bundle = [TrustBundle.of(ca.trust_anchor)]
    authority = [ca]
    tls = server_tls(ca, bundle, Clock(), authority)
    served = tls.current.chain_pem

    bundle[0] = bundle[0].with_root(new.trust_anchor)  # the overlap begins
    assert tls.refresh() is not None
    assert tls.current.chain_pem == served  # same certificate, both roots trusted
    assert len(x509.load_pem_x509_certificates(tls.current.roots_pem)) == 2

    authority[0] = new
    bundle[0] = TrustBundle.of(new.trust_anchor)  # the overlap is over
    assert tls.refresh() is not None
    reissued = leaf(tls.current.chain_pem)
    reissued.verify_directly_issued_by(new.trust_anchor)


def test_a_failing_refresh_keeps_what_is_served(ca: CertificateAuthority) -> None:
    bundle = [TrustBundle.of(ca.trust_anchor)]
    tls = server_tls(ca, bundle, Clock())

    def broken() -> CertificateAuthority:
        raise RuntimeError("the CA is gone")

    tls._ca = broken
    bundle[0] = TrustBundle.of(CertificateAuthority.generate_root("cluster.local").trust_anchor)

    assert tls.refresh() is None  # logged; gRPC keeps the current configuration


def test_the_control_plane_signs_a_csr_for_the_identity_asked_not_the_one_it_names(
    ca: CertificateAuthority,
) -> None:
    key_pem, csr_pem = new_key_and_csr()

    signed = sign_client_certificate(
        CertificateIssuer(ca), SecuritySettings(), "shop", "web", csr_pem, HOUR
    )

    certificate = leaf(signed.chain_pem.encode())
    assert names(certificate) == ["spiffe://cluster.local/ns/shop/sa/web"]
    key = serialization.load_pem_private_key(key_pem, None)
    assert certificate.public_key() == key.public_key()
    assert signed.server_id == "spiffe://cluster.local/ns/mesh-system/sa/xds-server"
    assert "PRIVATE KEY" not in signed.model_dump_json()


@pytest.mark.parametrize(
    ("namespace", "account", "csr", "says"),
    [
        ("shop", "web", b"not a csr", "csr_pem"),
        ("Shop", "web", None, "namespace"),
        ("shop", "", None, "service"),
    ],
)
def test_a_bad_request_for_a_credential_names_its_field(
    ca: CertificateAuthority, namespace: str, account: str, csr: bytes | None, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        sign_client_certificate(
            CertificateIssuer(ca),
            SecuritySettings(),
            namespace,
            account,
            csr if csr is not None else new_key_and_csr()[1],
            HOUR,
        )
