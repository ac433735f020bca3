"""Specification of the certificate authority (xds_server.ca): SVIDs, persistence, bundles."""

from __future__ import annotations

import datetime
import pickle
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from xds_server.ca import CertificateAuthority, Svid, TrustBundle, needs_reissue
from xds_server.ca.authority import MIN_SVID_TTL, ROOT_CERT_FILE, ROOT_KEY_FILE

TRUST_DOMAIN = "cluster.local"
NOW = datetime.datetime(2030, 1, 1, 12, 0, tzinfo=datetime.UTC)


def workload_key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def verify(svid: Svid, store: Store, at: datetime.datetime = NOW) -> list[x509.GeneralName]:
    """Verify as a TLS server verifying a client would; return the leaf's SANs."""
    verifier = PolicyBuilder().store(store).time(at).build_client_verifier()
    verified = verifier.verify(svid.certificate, list(svid.chain))
    assert verified.subjects is not None
    return verified.subjects


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def user_intermediate(
    root_ttl: datetime.timedelta = datetime.timedelta(days=365),
) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A user's own root (not ours) and an intermediate it signed: (root, intermediate, key)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp root")])
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + root_ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh intermediate")]))
        .issuer_name(root_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + root_ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    return root, intermediate, key


@pytest.fixture(scope="module")
def authority() -> CertificateAuthority:
    return CertificateAuthority.generate_root(TRUST_DOMAIN, now=NOW)


# -- the root ------------------------------------------------------------------------------


def test_generated_root_is_a_p256_ca_naming_the_trust_domain(
    authority: CertificateAuthority,
) -> None:
    root = authority.certificate
    assert root.subject == root.issuer
    assert TRUST_DOMAIN in root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    public_key = root.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert authority.trust_anchor == root


# -- SVIDs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "service_account", "expected"),
    [
        ("default", "default", "spiffe://cluster.local/ns/default/sa/default"),
        ("shop", "frontend-v2", "spiffe://cluster.local/ns/shop/sa/frontend-v2"),
        ("a", "0", "spiffe://cluster.local/ns/a/sa/0"),
    ],
)
def test_svid_verifies_against_the_root_and_names_only_its_spiffe_id(
    authority: CertificateAuthority, namespace: str, service_account: str, expected: str
) -> None:
    svid = authority.issue_svid(namespace, service_account, workload_key(), now=NOW)
    assert svid.spiffe_id == expected
    assert verify(svid, Store([authority.certificate])) == [
        x509.UniformResourceIdentifier(expected)
    ]
    cert = svid.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(expected)]
    assert san.critical  # the subject is empty
    assert cert.subject == x509.Name([])
    assert svid.chain == ()


def test_svid_is_a_leaf_for_both_tls_ends(authority: CertificateAuthority) -> None:
    cert = authority.issue_svid("default", "default", workload_key(), now=NOW).certificate
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_svid_from_a_csr_uses_its_key_and_ignores_the_names_it_asks_for(
    authority: CertificateAuthority,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    svid = authority.issue_svid("default", "web", csr, now=NOW)
    assert svid.certificate.public_key() == key.public_key()
    assert svid.certificate.subject == x509.Name([])
    assert verify(svid, Store([authority.certificate])) == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/web")
    ]


@pytest.mark.parametrize(
    ("ttl", "backdate", "lifetime"),
    [
        # default 24 h, plus the 1 min backdate
        (None, datetime.timedelta(minutes=1), datetime.timedelta(hours=24, minutes=1)),
        (
            datetime.timedelta(minutes=5),
            datetime.timedelta(minutes=1),
            datetime.timedelta(minutes=6),
        ),
        # a short TTL is backdated by a fifth of it (0.4 s, whole seconds in X.509)
        (MIN_SVID_TTL, datetime.timedelta(seconds=1), datetime.timedelta(seconds=3)),
        (
            datetime.timedelta(seconds=10),
            datetime.timedelta(seconds=2),
            datetime.timedelta(seconds=12),
        ),
        (
            datetime.timedelta(days=30),
            datetime.timedelta(minutes=1),
            datetime.timedelta(days=30, minutes=1),
        ),
    ],
)
def test_svid_lifetime(
    authority: CertificateAuthority,
    ttl: datetime.timedelta | None,
    backdate: datetime.timedelta,
    lifetime: datetime.timedelta,
) -> None:
    key = workload_key()
    svid = (
        authority.issue_svid("default", "default", key, now=NOW)
        if ttl is None
        else authority.issue_svid("default", "default", key, ttl, now=NOW)
    )
    cert = svid.certificate
    assert cert.not_valid_before_utc == NOW - backdate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == lifetime
    verify(svid, Store([authority.certificate]), at=NOW)


@pytest.mark.parametrize("ttl", [datetime.timedelta(seconds=1.9), datetime.timedelta(0)])
def test_svid_lifetime_below_two_seconds_is_refused(
    authority: CertificateAuthority, ttl: datetime.timedelta
) -> None:
    with pytest.raises(ValueError, match="ttl"):
        authority.issue_svid("default", "default", workload_key(), ttl, now=NOW)


def test_svid_never_outlives_its_ca() -> None:
    ca = CertificateAuthority.generate_root(TRUST_DOMAIN, ttl=datetime.timedelta(hours=2), now=NOW)
    cert = ca.issue_svid("default", "default", workload_key(), now=NOW).certificate
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="expires"):
        ca.issue_svid("default", "default", workload_key(), now=NOW + datetime.timedelta(hours=2))


@pytest.mark.parametrize(
    ("namespace", "service_account", "field"),
    [
        ("Default", "default", "namespace"),
        ("", "default", "namespace"),
        ("ns/../x", "default", "namespace"),
        ("a" * 64, "default", "namespace"),
        ("default", "-web", "service_account"),
        ("default", "web_1", "service_account"),
        ("default", "web..v1", "service_account"),
        ("default", "web.", "service_account"),
        ("default", "a" * 254, "service_account"),
        ("default", "", "service_account"),
    ],
)
def test_invalid_names_are_refused_naming_the_field(
    authority: CertificateAuthority, namespace: str, service_account: str, field: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{field} "):
        authority.issue_svid(namespace, service_account, workload_key(), now=NOW)


@pytest.mark.parametrize("service_account", ["web.v1", "a.b.c", "a" * 63 + "." + "b" * 63])
def test_dotted_service_accounts_are_accepted(
    authority: CertificateAuthority, service_account: str
) -> None:
    """Kubernetes names a ServiceAccount by DNS-1123 subdomain rules: dots are allowed."""
    svid = authority.issue_svid("default", service_account, workload_key(), now=NOW)
    assert svid.spiffe_id == f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service_account}"


@pytest.mark.parametrize("trust_domain", ["", "Cluster.Local", "a/b", "spiffe://x"])
def test_invalid_trust_domain_is_refused(trust_domain: str) -> None:
    with pytest.raises(ValueError, match=r"^trust_domain "):
        CertificateAuthority.generate_root(trust_domain)


# -- re-issue at half-life -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "due"),
    [
        (datetime.timedelta(0), False),
        (datetime.timedelta(hours=11, minutes=59), False),
        (datetime.timedelta(hours=12, seconds=30), True),  # half of 24 h + the 1 min backdate
        (datetime.timedelta(hours=23), True),
        (datetime.timedelta(days=3), True),  # expired
    ],
)
def test_needs_reissue_from_half_its_lifetime(
    authority: CertificateAuthority, elapsed: datetime.timedelta, due: bool
) -> None:
    cert = authority.issue_svid("default", "default", workload_key(), now=NOW).certificate
    assert needs_reissue(cert, NOW + elapsed) is due


def test_needs_reissue_wants_an_aware_time(authority: CertificateAuthority) -> None:
    cert = authority.issue_svid("default", "default", workload_key(), now=NOW).certificate
    with pytest.raises(ValueError, match="timezone"):
        needs_reissue(cert, datetime.datetime(2030, 1, 1))


# -- persistence ---------------------------------------------------------------------------


def test_root_is_generated_once_and_loaded_after(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    first = CertificateAuthority.load_or_generate(TRUST_DOMAIN, directory)
    assert stat.S_IMODE((directory / ROOT_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [ROOT_CERT_FILE, ROOT_KEY_FILE]

    again = CertificateAuthority.load_or_generate(TRUST_DOMAIN, directory)
    assert again.certificate == first.certificate
    svid = again.issue_svid("default", "default", workload_key())
    verify(svid, Store([first.certificate]), at=datetime.datetime.now(datetime.UTC))


def test_an_interrupted_first_start_is_regenerated(tmp_path: Path) -> None:
    (tmp_path / ROOT_KEY_FILE).write_bytes(b"half-written")
    ca = CertificateAuthority.load_or_generate(TRUST_DOMAIN, tmp_path)
    assert (
        CertificateAuthority.load_or_generate(TRUST_DOMAIN, tmp_path).certificate == ca.certificate
    )


def test_a_root_without_its_key_is_not_replaced(tmp_path: Path) -> None:
    CertificateAuthority.load_or_generate(TRUST_DOMAIN, tmp_path)
    (tmp_path / ROOT_KEY_FILE).unlink()
    before = (tmp_path / ROOT_CERT_FILE).read_bytes()
    with pytest.raises(ValueError, match="refusing to replace"):
        CertificateAuthority.load_or_generate(TRUST_DOMAIN, tmp_path)
    assert (tmp_path / ROOT_CERT_FILE).read_bytes() == before


# -- user-supplied CA ----------------------------------------------------------------------


def test_intermediate_signed_svid_chains_to_the_user_root() -> None:
    root, intermediate, key = user_intermediate()
    ca = CertificateAuthority.from_pem(TRUST_DOMAIN, pem(intermediate), key_pem(key), pem(root))
    assert ca.trust_anchor == root
    svid = ca.issue_svid("shop", "cart", workload_key(), now=NOW)
    assert svid.chain == (intermediate,)
    assert verify(svid, Store([root])) == [
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/cart")
    ]
    assert svid.chain_pem() == pem(svid.certificate) + pem(intermediate)
    with pytest.raises(VerificationError):
        verify(Svid(svid.spiffe_id, svid.certificate, ()), Store([root]))


def test_user_supplied_root_signs_directly(tmp_path: Path) -> None:
    root, _, _ = user_intermediate()
    ours = CertificateAuthority.load_or_generate(TRUST_DOMAIN, tmp_path)
    ca = CertificateAuthority.from_files(
        TRUST_DOMAIN, tmp_path / ROOT_CERT_FILE, tmp_path / ROOT_KEY_FILE
    )
    assert ca.certificate == ours.certificate
    assert ca.trust_anchor == ours.certificate
    assert ca.certificate != root


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("key of another certificate", "does not match"),
        ("chain not the issuer", "did not issue"),
    ],
)
def test_an_inconsistent_user_ca_is_refused(case: str, message: str) -> None:
    root, intermediate, key = user_intermediate()
    other_root, _, other_key = user_intermediate()
    if case == "key of another certificate":
        args = (pem(intermediate), key_pem(other_key), pem(root))
    else:
        args = (pem(intermediate), key_pem(key), pem(other_root))
    with pytest.raises(ValueError, match=message):
        CertificateAuthority.from_pem(TRUST_DOMAIN, *args)


def test_an_svid_never_outlives_the_user_chain() -> None:
    root, intermediate, key = user_intermediate(root_ttl=datetime.timedelta(hours=3))
    ca = CertificateAuthority.from_pem(TRUST_DOMAIN, pem(intermediate), key_pem(key), pem(root))
    cert = ca.issue_svid("shop", "cart", workload_key(), now=NOW).certificate
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(hours=3)


# -- the key stays inside ------------------------------------------------------------------


def test_repr_and_public_surface_hide_the_key(authority: CertificateAuthority) -> None:
    text = repr(authority)
    assert "cluster.local" in text
    assert "PRIVATE" not in text and "key" not in text.lower()
    attributes = [
        n for n in dir(authority) if not n.startswith("_") and not callable(getattr(authority, n))
    ]
    assert sorted(attributes) == ["certificate", "trust_anchor", "trust_domain"]
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(authority)


# -- the trust bundle ----------------------------------------------------------------------


def test_bundle_with_old_and_new_roots_verifies_svids_from_either() -> None:
    old = CertificateAuthority.generate_root(TRUST_DOMAIN, now=NOW)
    new = CertificateAuthority.generate_root(TRUST_DOMAIN, now=NOW)
    bundle = TrustBundle.of(old.certificate).with_root(new.certificate)
    for ca in (old, new):
        verify(ca.issue_svid("default", "default", workload_key(), now=NOW), bundle.store())
    after = bundle.without_root(old.certificate)
    verify(new.issue_svid("default", "default", workload_key(), now=NOW), after.store())
    with pytest.raises(VerificationError):
        verify(old.issue_svid("default", "default", workload_key(), now=NOW), after.store())


def test_bundle_pem_is_deterministic() -> None:
    a, b = (CertificateAuthority.generate_root(TRUST_DOMAIN).certificate for _ in range(2))
    pem_ab = TrustBundle.of(a, b).to_pem()
    assert TrustBundle.of(b, a, b).to_pem() == pem_ab
    assert TrustBundle.from_pem(pem_ab) == TrustBundle.of(a, b)
    assert pem_ab.count(b"BEGIN CERTIFICATE") == 2


@pytest.mark.parametrize("roots", [(), "the last one removed"])
def test_bundle_is_never_empty(roots: object) -> None:
    a = CertificateAuthority.generate_root(TRUST_DOMAIN).certificate
    with pytest.raises(ValueError, match="at least one root"):
        TrustBundle(()) if roots == () else TrustBundle.of(a).without_root(a)
