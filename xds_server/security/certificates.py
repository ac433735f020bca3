"""The workload certificate issuer: one SVID per identity of the connected proxies.

A source like the file source: it emits `WorkloadCertificate` and `TrustRoots`
upserts (and deletes) as ChangeSets into the pipeline, whose proxy generator
turns them into each proxy's SDS Secrets.  It learns which identities
(namespace, service account) the connected proxies have from the builder
(`identities_changed`), and issues for a new one at once, so a new proxy's
TLS contexts wait milliseconds, not a timer period.  Each certificate is
re-issued from half its lifetime on (`ca.needs_reissue`); one no proxy uses
any more is dropped `unused_grace` seconds later (a restarting proxy keeps
its identity's certificate).  The key pair of each identity is generated here
(EC P-256); its private key, PKCS#8 PEM, goes only into the model object,
whose `repr` omits it.

Root rotation (`rotate_root`) has three steps, all driven by the same loop:
the new root is persisted (the store keeps the old one as trusted) and the
trust bundle becomes old + new at once; once every proxy has had the bundle,
every certificate is re-issued under the new root; at the end of the overlap
the old root leaves the bundle.  Either side of a connection thus trusts the
other's certificate at every moment.

Replicas share the store, and each one reads it every `root_poll_seconds`
(`refresh_root`, in a worker thread: a Kubernetes GET).  A root there that is
neither the one it issues with nor the one it rotates to is a rotation another
replica began: it is adopted (`adopt`) with the same three steps at the same
instants, which the store records (the re-issue time, the overlap's end).  So
that no proxy sees a new-root certificate before it trusts the new root, the
re-issue waits `settle_seconds` plus one poll period: by then every replica
has seen the rotation and pushed the bundle.  A replica started during an
overlap comes up in it (`trusted`, `trusted_until`): both roots trusted, the
new one issuing (the store keeps no old key, so one started before the
rotation's re-issue time issues under the new root a little early), the old
one dropped when the overlap ends.  Whichever replica sees an overlap end
first tells the store; the others find it done.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from xds_server.ca import DEFAULT_SVID_TTL, CertificateAuthority, TrustBundle, needs_reissue
from xds_server.model import ChangeSet, Kind, ObjectKey
from xds_server.model.security import TrustRoots, WorkloadCertificate
from xds_server.security.roots import RootStore, StoredRoot

logger = logging.getLogger(__name__)

Identity = tuple[str, str]
"""(namespace, service account)."""

MIN_REISSUE_INTERVAL = 0.5
"""Seconds an SVID is kept at least: second-resolution validity can put the half-life of
a seconds-long TTL at issuance, which must not become a re-issue loop."""


def serial_hex(certificate: x509.Certificate) -> str:
    """The serial as Envoy's `/certs` shows it: lowercase hex of its bytes."""
    n = certificate.serial_number
    return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big").hex()


def trust_roots(bundle: TrustBundle) -> TrustRoots:
    fingerprints = tuple(c.fingerprint(hashes.SHA256()).hex() for c in bundle.roots)
    return TrustRoots(roots_pem=bundle.to_pem(), fingerprints=fingerprints)


@dataclass(frozen=True)
class RootRotation:
    """A root rotation under way: what the admin endpoint answers."""

    new_serial: str
    old_serial: str
    reissue_at: float
    """Epoch seconds: every certificate is re-issued under the new root from then."""
    overlap_ends_at: float
    """Epoch seconds: the old root leaves the trust bundle then."""


@dataclass
class _Rotation:
    new: CertificateAuthority
    previous: x509.Certificate | None
    """The old root as the store keeps it (None: the store kept none), to forget at the end."""
    info: RootRotation
    reissued: bool = False


class CertificateIssuer:
    """Issues, re-issues and drops the mesh's workload certificates; owns the trust bundle."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        ttl: datetime.timedelta = DEFAULT_SVID_TTL,
        store: RootStore | None = None,
        trusted: Iterable[x509.Certificate] = (),
        trusted_until: float = 0.0,
        unused_grace: float = 300.0,
        settle_seconds: float = 1.0,
        root_poll_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`trusted` are old roots still trusted until `trusted_until` (an overlap under way
        at start-up); `store` persists rotations (None: a user-supplied CA, not rotated);
        `root_poll_seconds` is how often the store is read for another replica's rotation
        (0: never, a single replica)."""
        self._ca = ca
        self.ttl = ttl
        self._store = store
        self._clock = clock
        self.unused_grace = unused_grace
        self.settle_seconds = settle_seconds
        self.root_poll_seconds = root_poll_seconds if store is not None else 0.0
        now = clock()
        old = [root for root in trusted if root != ca.trust_anchor]
        self._bundle = TrustBundle.of(ca.trust_anchor, *old)
        self._rotation: _Rotation | None = None
        if old:  # the overlap a restart (or another replica) began: come up in it
            info = RootRotation(
                new_serial=serial_hex(ca.trust_anchor),
                old_serial=serial_hex(old[0]),
                reissue_at=now,
                overlap_ends_at=trusted_until,
            )
            self._rotation = _Rotation(ca, old[0], info, reissued=True)
        self._published_roots: TrustRoots | None = None
        self._wanted: set[Identity] = set()
        self._issued: dict[Identity, WorkloadCertificate] = {}
        self._leaf: dict[Identity, tuple[x509.Certificate, float, CertificateAuthority]] = {}
        """The issued leaf, when it was issued (epoch seconds), and by which CA."""
        self._end_pending = False
        """An overlap ended: the store is still to forget `_ended_previous`."""
        self._ended_previous: x509.Certificate | None = None
        self._unused_since: dict[Identity, float] = {}
        self._wake = asyncio.Event()
        self._store_lock = asyncio.Lock()
        """One store operation at a time (a poll, a rotation, an overlap's end)."""
        self._polled_at = now
        self._store_unreadable = False
        self.issued_total = 0

    # -- views ------------------------------------------------------------------------

    @property
    def ca(self) -> CertificateAuthority:
        """The CA issuing now (the new one, once a rotation has re-issued)."""
        return self._ca

    @property
    def bundle(self) -> TrustBundle:
        return self._bundle

    @property
    def rotation(self) -> RootRotation | None:
        return self._rotation.info if self._rotation is not None else None

    def certificates(self) -> list[WorkloadCertificate]:
        """Every current certificate, by identity (for views: `repr` hides the keys)."""
        return [self._issued[identity] for identity in sorted(self._issued)]

    # -- inputs -----------------------------------------------------------------------

    def identities_changed(self, identities: Iterable[Identity]) -> None:
        """The connected proxies' identities now (the builder's hook): issue for new ones."""
        self._wanted = set(identities)
        self._wake.set()

    async def rotate_root(self, overlap_seconds: float) -> RootRotation:
        """Start a root rotation: a new root, trusted with the old one for `overlap_seconds`.

        ValueError if the CA was supplied by the user (replace its files instead), a
        rotation is under way (here or, as the store says, on another replica), or the
        overlap is shorter than twice `settle_seconds` plus the poll period.
        """
        if self._store is None:
            raise ValueError(
                "the root was supplied by the user (--ca-cert/--ca-key): rotate it by "
                "replacing those files"
            )
        async with self._store_lock:
            await self._refresh_locked()  # another replica's rotation first
            return await self._rotate_locked(self._store, overlap_seconds)

    async def _rotate_locked(self, store: RootStore, overlap_seconds: float) -> RootRotation:
        if self._rotation is not None:
            raise ValueError(
                f"a root rotation is under way until {self._rotation.info.overlap_ends_at:.0f}"
            )
        delay = self.settle_seconds + self.root_poll_seconds
        shortest = self.settle_seconds + delay
        if overlap_seconds < shortest:
            raise ValueError(
                f"overlap_seconds {overlap_seconds:g} is too short: at least {shortest:g} "
                "(the bundle must reach every replica's proxies before the re-issue, "
                "and the re-issued certificates every proxy before the old root goes)"
            )
        old = self._ca
        new = CertificateAuthority.generate_root(old.trust_domain)
        now = self._clock()
        info = RootRotation(
            new_serial=serial_hex(new.certificate),
            old_serial=serial_hex(old.trust_anchor),
            reissue_at=now + delay,
            overlap_ends_at=now + overlap_seconds,
        )
        await asyncio.to_thread(
            store.begin_rotation, new, old.trust_anchor, info.overlap_ends_at, info.reissue_at
        )
        self._rotation = _Rotation(new, old.trust_anchor, info)
        self._bundle = self._bundle.with_root(new.trust_anchor)
        logger.info(
            "root rotation: new root %s trusted beside %s; re-issue at +%.1f s, overlap %.1f s",
            info.new_serial,
            info.old_serial,
            delay,
            overlap_seconds,
        )
        self._wake.set()
        return info

    async def refresh_root(self) -> bool:
        """Read the store (in a thread) and adopt a rotation another replica began there;
        True when one was.  A store that cannot be read now is logged and tried again."""
        if self._store is None:
            return False
        async with self._store_lock:
            return await self._refresh_locked()

    async def _refresh_locked(self) -> bool:
        assert self._store is not None
        self._polled_at = self._clock()
        try:
            stored = await asyncio.to_thread(self._store.read)
        except Exception as error:  # OSError, the client's ApiException, a connection error
            level = logging.DEBUG if self._store_unreadable else logging.WARNING
            logger.log(level, "cannot read the root store (tried again later): %s", error)
            self._store_unreadable = True
            return False
        self._store_unreadable = False
        return stored is not None and self.adopt(stored)

    def adopt(self, stored: StoredRoot, now: float | None = None) -> bool:
        """Follow the store's root: a root there that this issuer neither issues with nor
        rotates to is another replica's rotation, adopted with the same steps and instants
        (old and new trusted now, re-issue at the store's `reissue_at`, the old root gone
        at `previous_until`).  A root replaced with no overlap recorded gets the shortest
        safe one.  True when a rotation was adopted."""
        now = self._clock() if now is None else now
        target = self._rotation.new if self._rotation is not None else self._ca
        root = stored.authority.trust_anchor
        if root == target.trust_anchor:
            return False
        shortest = now + 2 * self.settle_seconds + self.root_poll_seconds
        recorded = stored.previous is not None and stored.previous_until > 0
        overlap_ends_at = stored.previous_until if recorded else shortest
        reissue_at = stored.reissue_at or now + self.settle_seconds + self.root_poll_seconds
        info = RootRotation(
            new_serial=serial_hex(root),
            old_serial=serial_hex(self._ca.trust_anchor),
            reissue_at=min(max(reissue_at, now), overlap_ends_at),
            overlap_ends_at=overlap_ends_at,
        )
        self._rotation = _Rotation(stored.authority, stored.previous, info)
        self._bundle = self._bundle.with_root(root)
        logger.info(
            "root rotation begun by another replica: new root %s trusted beside %s; "
            "re-issue at %.1f, overlap ends at %.1f",
            info.new_serial,
            info.old_serial,
            info.reissue_at,
            info.overlap_ends_at,
        )
        self._wake.set()
        return True

    # -- the work -----------------------------------------------------------------------

    def reconcile(self, now: float | None = None) -> ChangeSet:
        """The changes due at `now`: roots, new and due certificates, unused ones dropped."""
        now = self._clock() if now is None else now
        changes = ChangeSet(observed_at=now)
        if self._advance_rotation(now):
            self._end_pending = self._store is not None and self._ended_previous is not None
        roots = trust_roots(self._bundle)
        if roots != self._published_roots:
            changes.upsert(roots)
            self._published_roots = roots
        for identity in sorted(self._wanted):
            self._unused_since.pop(identity, None)
            known = self._leaf.get(identity)
            due = known is None or known[2] is not self._ca
            if known is not None and not due:
                due = needs_reissue(known[0], _utc(now)) and now - known[1] >= MIN_REISSUE_INTERVAL
            if due:
                changes.upsert(self._issue(identity, now))
        for identity in [i for i in self._issued if i not in self._wanted]:
            since = self._unused_since.setdefault(identity, now)
            if now - since >= self.unused_grace:
                del self._issued[identity], self._leaf[identity], self._unused_since[identity]
                changes.delete(ObjectKey(Kind.WORKLOAD_CERTIFICATE, *identity))
        return changes

    def end_stored_rotation(self) -> None:
        """Tell the store an overlap ended (blocking I/O: `run` calls it in a thread)."""
        if self._end_pending and self._store is not None:
            self._end_pending = False
            self._store.end_rotation(self._ended_previous)

    def _advance_rotation(self, now: float) -> bool:
        """Step a rotation: switch issuing CA at `reissue_at`; drop the old roots at the
        end (the new root alone is trusted then).  True when the overlap ended."""
        rotation = self._rotation
        if rotation is None:
            return False
        if not rotation.reissued and now >= rotation.info.reissue_at:
            self._ca = rotation.new
            rotation.reissued = True
            logger.info("root rotation: re-issuing %d certificate(s)", len(self._leaf))
        if now < rotation.info.overlap_ends_at:
            return False
        self._ca = rotation.new
        rotation.reissued = True
        self._bundle = TrustBundle.of(rotation.new.trust_anchor)
        self._rotation = None
        self._ended_previous = rotation.previous
        logger.info("root rotation: old root %s is no longer trusted", rotation.info.old_serial)
        return True

    def _issue(self, identity: Identity, now: float) -> WorkloadCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        svid = self._ca.issue_svid(*identity, key.public_key(), self.ttl, now=_utc(now))
        leaf = svid.certificate
        certificate = WorkloadCertificate(
            namespace=identity[0],
            name=identity[1],
            spiffe_id=svid.spiffe_id,
            certificate_chain=svid.chain_pem(),
            private_key=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            serial=serial_hex(leaf),
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )
        self._issued[identity] = certificate
        self._leaf[identity] = (leaf, now, self._ca)
        self.issued_total += 1
        return certificate

    def next_deadline(self) -> float:
        """Epoch seconds of the next thing due: a half-life, a rotation step, a drop."""
        deadlines = [
            max(half_life(leaf), issued + MIN_REISSUE_INTERVAL)
            for identity, (leaf, issued, _) in self._leaf.items()
            if identity in self._wanted
        ]
        deadlines += [since + self.unused_grace for since in self._unused_since.values()]
        if self.root_poll_seconds > 0:
            deadlines.append(self._polled_at + self.root_poll_seconds)
        if self._rotation is not None:
            info = self._rotation.info
            deadlines.append(info.overlap_ends_at)
            if not self._rotation.reissued:
                deadlines.append(info.reissue_at)
        return min(deadlines, default=self._clock() + 3600.0)

    async def run(self, emit: Callable[[ChangeSet], None]) -> None:
        """Emit what is due whenever identities change or a deadline comes (the store read
        every `root_poll_seconds`), until cancelled."""
        while True:
            self._wake.clear()
            if self.root_poll_seconds > 0 and (
                self._clock() >= self._polled_at + self.root_poll_seconds
            ):
                await self.refresh_root()
            changes = self.reconcile()
            if changes:
                emit(changes)
            if self._end_pending:
                async with self._store_lock:
                    try:
                        await asyncio.to_thread(self.end_stored_rotation)
                    except Exception as error:  # the store's I/O; a later start ends it
                        logger.warning("cannot tell the root store the overlap ended: %s", error)
            delay = max(0.0, self.next_deadline() - self._clock())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)


def half_life(certificate: x509.Certificate) -> float:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return (start + (end - start) / 2).timestamp()


def _utc(epoch: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC)
