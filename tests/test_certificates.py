"""The workload certificate issuer: issue for new identities, re-issue at half-life,
drop unused ones, root rotation with overlap, and the builder's identity hook."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder

from xds_server.ca import CertificateAuthority, TrustBundle
from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Kind, ObjectKey, Proxy
from xds_server.model.security import TrustRoots, WorkloadCertificate
from xds_server.pipeline import SnapshotBuilder
from xds_server.security import CertificateIssuer, DirectoryRootStore

T0 = 1_900_000_000.0
TTL = datetime.timedelta(seconds=4)
WEB, API = ("default", "web"), ("shop", "api")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def certificates(changes: ChangeSet) -> dict[tuple[str, str], WorkloadCertificate]:
    return {
        (o.namespace, o.name): o
        for o in changes.upserts.values()
        if isinstance(o, WorkloadCertificate)
    }


def roots_of(changes: ChangeSet) -> TrustRoots | None:
    found = [o for o in changes.upserts.values() if isinstance(o, TrustRoots)]
    return found[0] if found else None


def verifies(cert: WorkloadCertificate, roots_pem: bytes, at: float) -> bool:
    leaf, *chain = x509.load_pem_x509_certificates(cert.certificate_chain)
    verifier = (
        PolicyBuilder()
        .store(TrustBundle.from_pem(roots_pem).store())
        .time(datetime.datetime.fromtimestamp(at, datetime.UTC))
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain)
    except Exception:
        return False
    return True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock, tmp_path: Path) -> CertificateIssuer:
    store = DirectoryRootStore(tmp_path, "cluster.local")
    return CertificateIssuer(
        store.load().authority, ttl=TTL, store=store, clock=clock, unused_grace=10.0
    )


def test_a_new_identity_gets_its_certificate_and_the_roots_at_once(
    issuer: CertificateIssuer,
) -> None:
    issuer.identities_changed({WEB})
    changes = issuer.reconcile()
    cert = certificates(changes)[WEB]
    roots = roots_of(changes)
    assert roots is not None and len(roots.fingerprints) == 1
    assert cert.spiffe_id == "spiffe://cluster.local/ns/default/sa/web"
    assert cert.private_key.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert (
        int(cert.serial, 16) == x509.load_pem_x509_certificate(cert.certificate_chain).serial_number
    )
    assert verifies(cert, roots.roots_pem, T0)
    assert not issuer.reconcile()  # nothing more is due
    issuer.identities_changed({WEB, API})
    assert set(certificates(issuer.reconcile())) == {API}


def test_certificates_are_reissued_from_half_their_lifetime(
    issuer: CertificateIssuer, clock: Clock
) -> None:
    issuer.identities_changed({WEB})
    first = certificates(issuer.reconcile())[WEB]
    half = (first.not_before + first.not_after) / 2
    assert issuer.next_deadline() == pytest.approx(half)
    clock.now = half - 0.01
    assert not issuer.reconcile()
    clock.now = half
    second = certificates(issuer.reconcile())[WEB]
    assert second.serial != first.serial and second.not_after > first.not_after
    assert second.private_key != first.private_key  # a fresh key each time


def test_unused_certificates_are_dropped_after_the_grace(
    issuer: CertificateIssuer, clock: Clock
) -> None:
    issuer.identities_changed({WEB, API})
    issuer.reconcile()
    issuer.identities_changed({WEB})
    assert not issuer.reconcile().deletes
    clock.now += 9.9
    assert not issuer.reconcile().deletes
    clock.now += 0.1
    changes = issuer.reconcile()
    assert changes.deletes == {ObjectKey(Kind.WORKLOAD_CERTIFICATE, *API)}
    assert [c.name for c in issuer.certificates()] == ["web"]


async def test_root_rotation_overlaps_old_and_new_roots(
    issuer: CertificateIssuer, clock: Clock, tmp_path: Path
) -> None:
    issuer.identities_changed({WEB, API})
    before = certificates(issuer.reconcile())
    old_root = issuer.ca.certificate
    rotation = await issuer.rotate_root(overlap_seconds=3.0)
    both = roots_of(issuer.reconcile())
    assert both is not None and len(both.fingerprints) == 2
    assert all(verifies(c, both.roots_pem, clock.now) for c in before.values())
    # The new root is persisted at once; the old one is kept as trusted beside it.
    stored = DirectoryRootStore(tmp_path, "cluster.local").load()
    assert stored.authority.certificate == issuer.bundle.roots[0] or stored.previous == old_root
    assert stored.previous == old_root and stored.previous_until == pytest.approx(
        rotation.overlap_ends_at, abs=0.01
    )
    clock.now = rotation.reissue_at
    after = certificates(issuer.reconcile())
    assert set(after) == {WEB, API}
    assert all(verifies(c, both.roots_pem, clock.now) for c in after.values())
    clock.now = rotation.overlap_ends_at
    changes = issuer.reconcile()
    issuer.end_stored_rotation()
    new_only = roots_of(changes)
    assert new_only is not None and len(new_only.fingerprints) == 1
    assert all(verifies(c, new_only.roots_pem, clock.now) for c in after.values())
    assert not any(verifies(c, new_only.roots_pem, clock.now) for c in before.values())
    assert DirectoryRootStore(tmp_path, "cluster.local").load().previous is None
    assert issuer.rotation is None


async def test_a_rotation_is_refused_when_it_cannot_start(
    issuer: CertificateIssuer, clock: Clock
) -> None:
    with pytest.raises(ValueError, match="overlap_seconds"):
        await issuer.rotate_root(overlap_seconds=1.0)
    await issuer.rotate_root(overlap_seconds=5.0)
    with pytest.raises(ValueError, match="under way"):
        await issuer.rotate_root(overlap_seconds=5.0)
    user = CertificateIssuer(CertificateAuthority.generate_root("cluster.local"), clock=clock)
    with pytest.raises(ValueError, match="supplied by the user"):
        await user.rotate_root(overlap_seconds=5.0)


def test_no_private_key_in_repr(issuer: CertificateIssuer) -> None:
    issuer.identities_changed({WEB})
    cert = certificates(issuer.reconcile())[WEB]
    assert b"PRIVATE KEY" in cert.private_key
    assert "PRIVATE" not in repr(cert) and "PRIVATE" not in repr(issuer.certificates())
    assert "BEGIN" not in repr(issuer.ca)


def test_the_builder_tells_identities_as_proxies_come_and_go() -> None:
    builder = SnapshotBuilder(SnapshotCache())
    told: list[frozenset[tuple[str, str]]] = []
    builder.on_identities = told.append
    builder.add_proxy(Proxy(node_id="a", namespace="default", service_account="web"))
    builder.add_proxy(Proxy(node_id="b", namespace="default", service_account="web"))
    builder.add_proxy(Proxy(node_id="c", namespace="shop", service_account="api"))
    builder.remove_proxy("a")
    builder.remove_proxy("b")
    assert told == [frozenset({WEB}), frozenset({WEB, API}), frozenset({API})]
    assert builder.identities == {API}


async def test_run_emits_for_a_new_identity_within_milliseconds(tmp_path: Path) -> None:
    store = DirectoryRootStore(tmp_path, "cluster.local")
    issuer = CertificateIssuer(store.load().authority, ttl=TTL, store=store)
    emitted: list[ChangeSet] = []
    task = asyncio.create_task(issuer.run(emitted.append))
    try:
        await asyncio.sleep(0.01)
        issuer.identities_changed({WEB})
        loop = asyncio.get_running_loop()
        start = loop.time()
        while not any(certificates(c) for c in emitted):
            assert loop.time() - start < 0.5
            await asyncio.sleep(0.001)
        first = next(certificates(c)[WEB] for c in emitted if certificates(c))
        while not any(
            WEB in certificates(c) and certificates(c)[WEB].serial != first.serial for c in emitted
        ):
            assert loop.time() - start < 5.0  # re-issued at half of 4 s (plus the backdate)
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
