"""`/api/certificates` and the index page's "Certificates": the mesh's identities at a glance.

Per identity (namespace, service account) the current SVID: its SPIFFE ID,
serial (lowercase hex, as Envoy's `/certs` shows it), validity, the SHA-256
fingerprint of the certificate that issued it, and the connected proxies that
hold it (a proxy is served its own identity's certificate); then the trust
roots every proxy trusts (two during a root rotation's overlap), each with its
fingerprint.  Enough to follow a rotation: serials change at half-life, and
after a root rotation every issuer fingerprint names the new root.

Certificates and keys themselves are never in the answer: only values
derived from the public certificate, and the private key is never read
here.  The values come from the `MeshSnapshot` tables (`workload_certificates`,
`trust_roots`) through the optional `CertificatesView`; this module owns the
response models (pydantic, shared with `xds-server certs`), the JSON and the
HTML section.  Bounded like every admin response: one page of identities,
at most `MAX_NAMES_SHOWN` proxies named per identity (with the count).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from xds_server.admin.models import ApiModel
from xds_server.admin.paging import Page, shown, shown_names
from xds_server.admin.views import ProxyView
from xds_server.model.security import TrustRoots, WorkloadCertificate

logger = logging.getLogger(__name__)

ON_PAGE = 50
"""Identities the index page shows; the rest are in `/api/certificates`."""


@dataclass(frozen=True, slots=True)
class MeshCertificates:
    """What the mesh holds now: every identity's certificate, and the trust roots."""

    certificates: Sequence[WorkloadCertificate]
    roots: TrustRoots | None


NO_CERTIFICATES = MeshCertificates((), None)


@runtime_checkable
class CertificatesView(Protocol):
    """What a view offers for `/api/certificates` (`ControlPlane` implements it)."""

    def mesh_certificates(self) -> MeshCertificates:
        """Every identity's current certificate and the trust roots, at one moment."""
        ...


def certificates_of(view: object) -> MeshCertificates:
    """The view's certificates, or none for a view without them."""
    if isinstance(view, CertificatesView):
        return view.mesh_certificates()
    return NO_CERTIFICATES


# -- the models -----------------------------------------------------------------------------


class TrustRootModel(ApiModel):
    fingerprint: str
    """SHA-256 of the DER certificate, lowercase hex."""
    subject: str
    serial: str
    not_before: datetime
    not_after: datetime


class CertificateModel(ApiModel):
    namespace: str
    service_account: str
    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    issuer_fingerprint: str | None
    """SHA-256 of the issuing certificate (a trust root or an intermediate); None when the
    issuer is not in the chain or the trust roots (the roots have moved on)."""
    proxies: list[str]
    """Node ids of connected proxies of this identity (at most `MAX_NAMES_SHOWN`)."""
    proxies_total: int


class CertificateList(ApiModel):
    trust_roots: list[TrustRootModel]
    certificates: list[CertificateModel]
    offset: int
    limit: int
    total: int
    next_offset: int | None


# -- reading certificates ---------------------------------------------------------------------


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _serial(certificate: x509.Certificate) -> str:
    n = certificate.serial_number
    return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big").hex()


def _parsed(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem) if pem.strip() else []
    except ValueError as error:
        logger.warning("cannot read a certificate to show it: %s", error)
        return []


def _issuer_fingerprint(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> str | None:
    """The certificate in the chain or the roots that signed the leaf, by its signature."""
    if not chain:
        return None
    leaf = chain[0]
    for candidate in (*chain[1:], *roots):
        if candidate.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return _fingerprint(candidate)
    return None


def root_model(root: x509.Certificate) -> TrustRootModel:
    return TrustRootModel(
        fingerprint=_fingerprint(root),
        subject=shown(root.subject.rfc4514_string()),
        serial=_serial(root),
        not_before=root.not_valid_before_utc,
        not_after=root.not_valid_after_utc,
    )


def _when(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def holders(views: Iterable[ProxyView]) -> dict[tuple[str, str], list[str]]:
    """(namespace, service account) -> node ids of the connected proxies of that identity."""
    found: dict[tuple[str, str], list[str]] = {}
    for view in views:
        proxy = view.proxy
        if proxy is not None:
            found.setdefault((proxy.namespace, proxy.service_account), []).append(view.node_id)
    return {identity: sorted(set(nodes)) for identity, nodes in found.items()}


def certificate_model(
    certificate: WorkloadCertificate,
    roots: Sequence[x509.Certificate],
    held_by: Mapping[tuple[str, str], list[str]],
) -> CertificateModel:
    nodes = held_by.get((certificate.namespace, certificate.name), [])
    return CertificateModel(
        namespace=certificate.namespace,
        service_account=certificate.name,
        spiffe_id=shown(certificate.spiffe_id),
        serial=certificate.serial,
        not_before=_when(certificate.not_before),
        not_after=_when(certificate.not_after),
        issuer_fingerprint=_issuer_fingerprint(_parsed(certificate.certificate_chain), roots),
        proxies=shown_names(nodes),
        proxies_total=len(nodes),
    )


def _ordered(found: MeshCertificates) -> list[WorkloadCertificate]:
    return sorted(found.certificates, key=lambda c: (c.namespace, c.name))


def certificate_list(
    found: MeshCertificates, views: Sequence[ProxyView], page: Page
) -> CertificateList:
    """One page of identities (by namespace, service account) and every trust root."""
    roots = _parsed(found.roots.roots_pem) if found.roots is not None else []
    ordered = _ordered(found)
    held_by = holders(views)
    return CertificateList(
        trust_roots=[root_model(root) for root in roots],
        certificates=[certificate_model(c, roots, held_by) for c in page.of(ordered)],
        offset=page.offset,
        limit=page.limit,
        total=len(ordered),
        next_offset=page.next_offset(len(ordered)),
    )


def render(found: MeshCertificates, views: Sequence[ProxyView], page: Page) -> bytes:
    """The JSON body of one page (run in a worker thread)."""
    body = certificate_list(found, views, page).model_dump(mode="json")
    return json.dumps(body, separators=(",", ":")).encode()


# -- the index page's section -----------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short(fingerprint: str | None) -> str:
    if fingerprint is None:
        return '<span class="muted">unknown</span>'
    return f'<code title="{_esc(fingerprint)}">{_esc(fingerprint[:16])}…</code>'


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _holders(certificate: CertificateModel) -> str:
    names = ", ".join(certificate.proxies) or "-"
    more = certificate.proxies_total - len(certificate.proxies)
    return _esc(names + (f" (+{more})" if more > 0 else ""))


def certificates_html(found: MeshCertificates, views: Sequence[ProxyView]) -> str:
    """The index page's "Certificates": the trust roots, then the first `ON_PAGE` identities."""
    if not found.certificates and found.roots is None:
        return ""
    listed = certificate_list(found, views, Page(0, ON_PAGE))
    roots = "".join(
        f"<li>{_short(root.fingerprint)} {_esc(root.subject)}, "
        f"valid until {_esc(_time(root.not_after))}</li>"
        for root in listed.trust_roots
    )
    rows = "".join(
        f"<tr><td><code>{_esc(c.spiffe_id)}</code></td><td><code>{_esc(c.serial)}</code></td>"
        f"<td>{_esc(_time(c.not_before))}</td><td>{_esc(_time(c.not_after))}</td>"
        f'<td>{_short(c.issuer_fingerprint)}</td><td class="small">{_holders(c)}</td></tr>'
        for c in listed.certificates
    )
    more = listed.total - len(listed.certificates)
    note = f"{more} more in " if more > 0 else ""
    return (
        f'<h2 id="certificates">Certificates ({listed.total})</h2>'
        f'<p class="small">Trust roots ({len(listed.trust_roots)}):</p>'
        f'<ul class="small">{roots}</ul>'
        "<table><thead><tr><th>SPIFFE ID</th><th>Serial</th><th>Not before</th>"
        "<th>Not after</th><th>Issuer</th><th>Proxies</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f'<p class="muted small">{note}<a href="api/certificates">api/certificates</a>; '
        "times in UTC; no key is ever shown.</p>"
    )
