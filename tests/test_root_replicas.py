"""Replicas sharing one root directory follow each other's root rotations: a replica
adopts a rotation another began (both roots trusted, re-issue and the overlap's end at
the same instants), one started during an overlap comes up in it, and the store's
overlap is ended once, never a newer one's."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder

from xds_server.ca import CertificateAuthority, TrustBundle
from xds_server.ca.authority import ROOT_CERT_FILE, ROOT_KEY_FILE
from xds_server.model import ChangeSet
from xds_server.model.security import TrustRoots, WorkloadCertificate
from xds_server.security import CertificateIssuer, DirectoryRootStore
from xds_server.security.setup import create_issuer
from xds_server.settings import SecuritySettings, Settings

T0 = 1_900_000_000.0
TTL = datetime.timedelta(hours=1)
WEB, API = ("default", "web"), ("shop", "api")
POLL = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def replica(directory: Path, clock: Callable[[], float], poll: float = POLL) -> CertificateIssuer:
    """An issuer as `xds-server serve` builds one on a shared root directory."""
    store = DirectoryRootStore(directory, "cluster.local")
    stored = store.load()
    return CertificateIssuer(
        stored.authority,
        ttl=TTL,
        store=store,
        trusted=() if stored.previous is None else (stored.previous,),
        trusted_until=stored.previous_until,
        root_poll_seconds=poll,
        clock=clock,
    )


def stored_root(directory: Path) -> x509.Certificate:
    """The root the shared directory holds now (the rotation's new one)."""
    stored = DirectoryRootStore(directory, "cluster.local").read()
    assert stored is not None
    return stored.authority.trust_anchor


def certificates(changes: ChangeSet) -> dict[tuple[str, str], WorkloadCertificate]:
    return {
        (o.namespace, o.name): o
        for o in changes.upserts.values()
        if isinstance(o, WorkloadCertificate)
    }


def roots_of(changes: ChangeSet) -> TrustRoots | None:
    found = [o for o in changes.upserts.values() if isinstance(o, TrustRoots)]
    return found[0] if found else None


def verifies(cert: WorkloadCertificate, bundle: TrustBundle, at: float) -> bool:
    leaf, *chain = x509.load_pem_x509_certificates(cert.certificate_chain)
    verifier = (
        PolicyBuilder()
        .store(bundle.store())
        .time(datetime.datetime.fromtimestamp(at, datetime.UTC))
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain)
    except Exception:
        return False
    return True


def signed_by(cert: WorkloadCertificate, root: x509.Certificate) -> bool:
    try:
        x509.load_pem_x509_certificate(cert.certificate_chain).verify_directly_issued_by(root)
    except Exception:
        return False
    return True


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_rotation_begun_on_one_replica_is_followed_by_the_other(
    tmp_path: Path, clock: Clock
) -> None:
    first, second = replica(tmp_path, clock), replica(tmp_path, clock)
    for issuer in (first, second):
        issuer.identities_changed({WEB, API})
    before = certificates(second.reconcile())
    first.reconcile()
    old_root = second.ca.trust_anchor

    started = await first.rotate_root(overlap_seconds=10.0)
    assert started.reissue_at == pytest.approx(T0 + 1.0 + POLL)  # settle + one poll period

    clock.now += 0.5  # the second replica's next poll
    assert await second.refresh_root()
    adopted = second.rotation
    assert adopted is not None
    assert adopted.new_serial == started.new_serial
    assert adopted.old_serial == started.old_serial
    assert adopted.reissue_at == pytest.approx(started.reissue_at, abs=0.001)
    assert adopted.overlap_ends_at == pytest.approx(started.overlap_ends_at, abs=0.001)
    both = roots_of(second.reconcile())
    assert both is not None and len(both.fingerprints) == 2
    assert second.bundle == first.bundle
    assert not await second.refresh_root()  # nothing new the next time

    # Until the re-issue, certificates stay under the old root (others may not trust the
    # new one yet); from then on every one moves to the new root on both replicas.
    clock.now = started.reissue_at - 0.01
    assert not certificates(second.reconcile())
    clock.now = started.reissue_at
    after = certificates(second.reconcile())
    assert set(after) == {WEB, API}
    new_root = stored_root(tmp_path)
    assert second.ca.trust_anchor == new_root != old_root
    assert all(signed_by(c, new_root) for c in after.values())
    assert all(signed_by(c, old_root) for c in before.values())
    for cert in (*before.values(), *after.values()):  # every proxy trusts every peer
        assert verifies(cert, first.bundle, clock.now)

    clock.now = started.overlap_ends_at
    second_end, first_end = second.reconcile(), first.reconcile()
    new_only = roots_of(second_end)
    assert new_only is not None and new_only == roots_of(first_end)
    assert len(new_only.fingerprints) == 1
    assert second.rotation is None and first.rotation is None
    assert all(verifies(c, second.bundle, clock.now) for c in after.values())
    assert not any(verifies(c, second.bundle, clock.now) for c in before.values())
    # Each replica ends the stored overlap; the second one finds it done.
    second.end_stored_rotation()
    first.end_stored_rotation()
    assert DirectoryRootStore(tmp_path, "cluster.local").load().previous is None


async def test_a_replica_started_during_an_overlap_comes_up_in_it(tmp_path: Path) -> None:
    first = CertificateIssuer(
        DirectoryRootStore(tmp_path, "cluster.local").load().authority,
        store=DirectoryRootStore(tmp_path, "cluster.local"),
    )
    started = await first.rotate_root(overlap_seconds=60.0)
    late = create_issuer(Settings(security=SecuritySettings(ca_dir=tmp_path)))
    rotation = late.rotation
    assert rotation is not None and rotation.new_serial == started.new_serial
    assert rotation.old_serial == started.old_serial
    assert rotation.overlap_ends_at == pytest.approx(started.overlap_ends_at, abs=0.001)
    assert late.bundle == first.bundle and len(late.bundle.roots) == 2
    assert late.ca.certificate == stored_root(tmp_path)
    assert late.root_poll_seconds == SecuritySettings().root_poll_seconds
    with pytest.raises(ValueError, match="under way"):
        await late.rotate_root(overlap_seconds=60.0)


async def test_a_replica_refuses_a_rotation_while_another_replicas_is_under_way(
    tmp_path: Path, clock: Clock
) -> None:
    first, second = replica(tmp_path, clock), replica(tmp_path, clock)
    await first.rotate_root(overlap_seconds=10.0)
    # The second has not polled yet: rotate_root reads the store first.
    with pytest.raises(ValueError, match="under way"):
        await second.rotate_root(overlap_seconds=10.0)
    assert second.rotation is not None and len(second.bundle.roots) == 2


async def test_the_overlap_covers_the_poll_period(tmp_path: Path, clock: Clock) -> None:
    issuer = replica(tmp_path, clock)
    with pytest.raises(ValueError, match=r"at least 4\b"):
        await issuer.rotate_root(overlap_seconds=3.9)  # 2 x settle (1 s) + poll (2 s)
    single = replica(tmp_path, clock, poll=0.0)
    assert (await single.rotate_root(overlap_seconds=2.0)).reissue_at == T0 + 1.0


async def test_a_stale_overlap_end_leaves_a_newer_rotation_alone(
    tmp_path: Path, clock: Clock
) -> None:
    store = DirectoryRootStore(tmp_path, "cluster.local")
    first = store.load().authority
    second = CertificateAuthority.generate_root("cluster.local")
    third = CertificateAuthority.generate_root("cluster.local")
    store.begin_rotation(second, first.certificate, T0 + 10, T0 + 3)
    store.end_rotation(first.certificate)  # the end of this overlap
    store.begin_rotation(third, second.certificate, T0 + 20, T0 + 13)
    store.end_rotation(first.certificate)  # a replica late with the first one's end
    stored = store.read()
    assert stored is not None and stored.previous == second.certificate
    assert stored.reissue_at == T0 + 13 and stored.previous_until == T0 + 20


def test_a_root_replaced_with_no_overlap_recorded_gets_the_shortest_safe_one(
    tmp_path: Path, clock: Clock
) -> None:
    issuer = replica(tmp_path, clock)
    issuer.identities_changed({WEB})
    before = certificates(issuer.reconcile())[WEB]
    old_root = issuer.ca.trust_anchor
    (tmp_path / ROOT_CERT_FILE).unlink()
    (tmp_path / ROOT_KEY_FILE).unlink()
    CertificateAuthority.load_or_generate("cluster.local", tmp_path)  # a new root by hand
    stored = DirectoryRootStore(tmp_path, "cluster.local").read()
    assert stored is not None and stored.previous is None
    assert issuer.adopt(stored)
    rotation = issuer.rotation
    assert rotation is not None
    # Others may see the new root a poll later: re-issue then, and settle once more.
    assert rotation.reissue_at == T0 + 1.0 + POLL
    assert rotation.overlap_ends_at == T0 + 2 * 1.0 + POLL
    assert verifies(before, issuer.bundle, T0)
    clock.now = rotation.overlap_ends_at
    issuer.reconcile()
    assert issuer.bundle.roots == (stored.authority.trust_anchor,)
    issuer.end_stored_rotation()  # no overlap was stored: nothing to forget
    assert old_root not in issuer.bundle.roots


def test_reading_the_store_mid_rotation_says_nothing_rather_than_a_torn_pair(
    tmp_path: Path,
) -> None:
    store = DirectoryRootStore(tmp_path, "cluster.local")
    store.load()
    new = CertificateAuthority.generate_root("cluster.local")
    new_cert, new_key = new.root_pem_for_storage()
    # The steps of another replica's `begin_rotation`, each seen by a poll:
    (tmp_path / (ROOT_KEY_FILE + ".next")).write_bytes(new_key)
    (tmp_path / (ROOT_CERT_FILE + ".next")).write_bytes(new_cert)
    assert store.read() is None  # the new pair is being written
    os.replace(tmp_path / (ROOT_KEY_FILE + ".next"), tmp_path / ROOT_KEY_FILE)
    assert store.read() is None  # new key, old certificate: not a pair
    assert (tmp_path / (ROOT_CERT_FILE + ".next")).exists()  # reading repaired nothing
    os.replace(tmp_path / (ROOT_CERT_FILE + ".next"), tmp_path / ROOT_CERT_FILE)
    stored = store.read()
    assert stored is not None and stored.authority.certificate == new.certificate


async def test_a_running_replica_polls_and_pushes_both_roots_within_the_period(
    tmp_path: Path,
) -> None:
    first = replica(tmp_path, time.time, poll=0.0)
    follower = replica(tmp_path, time.time, poll=0.2)
    follower.identities_changed({WEB})
    emitted: list[ChangeSet] = []
    task = asyncio.create_task(follower.run(emitted.append))
    try:
        await asyncio.sleep(0.05)
        await first.rotate_root(overlap_seconds=30.0)
        start = time.monotonic()
        while not any((r := roots_of(c)) is not None and len(r.fingerprints) == 2 for c in emitted):
            assert time.monotonic() - start < 1.0, "the follower never pushed both roots"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
