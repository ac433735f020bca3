"""`xds-server status certificates` and `xds-server ca rotate-root`: the mesh's identities.

Clients of the admin API, like `cli_admin`'s commands (same `--admin`,
`--admin-token-file`, `-o json`, exit codes):

* `status certificates`: a row per identity (SPIFFE ID, serial, validity and
  time left, the issuer's fingerprint, the proxies holding it), then the trust
  roots; `-o json` prints `/api/certificates` (every page) as the admin's
  models (`admin.certificates.CertificateList`) read it.
* `ca rotate-root --overlap 60s`: `POST /api/ca/rotate-root` with the admin
  token; prints when every certificate moves to the new root and when the old
  root stops being trusted.  A refusal (a rotation already under way, a root
  supplied by the user, an overlap too short) is one line naming why, exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from xds_server.cli_admin import add_common_arguments, age
from xds_server.cli_admin import table as text_table
from xds_server.cli_client import AdminClient, AdminError, client_of

if TYPE_CHECKING:
    from xds_server.admin.certificates import CertificateList

logger = logging.getLogger(__name__)

HELP = "the mesh's certificate authority: rotate-root"
CERTIFICATE_HEADERS = ("SPIFFE ID", "SERIAL", "NOT AFTER", "EXPIRES", "ISSUER", "PROXIES")
ROOT_HEADERS = ("TRUST ROOT", "SUBJECT", "NOT AFTER")
FINGERPRINT_SHOWN = 16
"""Hex digits of a fingerprint a table shows (`-o json` has them whole)."""
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(value: str) -> float:
    """argparse type: seconds, or a number with s, m, h or d (`90`, `60s`, `10m`, `24h`)."""
    text = value.strip().lower()
    scale = _UNITS.get(text[-1:], 0.0)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds or a duration like 60s, 10m or 24h, got {value!r}"
        ) from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {value!r}")
    return seconds


# -- status certificates ----------------------------------------------------------------------


def certificates(client: AdminClient) -> CertificateList:
    """`/api/certificates`, every page merged into one."""
    from xds_server.admin.certificates import CertificateList

    pages = client.pages(CertificateList, "/api/certificates", {})
    merged = [certificate for page in pages for certificate in page.certificates]
    return pages[0].model_copy(update={"certificates": merged, "offset": 0, "next_offset": None})


def _short(fingerprint: str | None) -> str:
    return fingerprint[:FINGERPRINT_SHOWN] if fingerprint else "-"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def show_certificates(found: CertificateList, output: str, now: datetime) -> str:
    if output == "json":
        return json.dumps(found.model_dump(mode="json"), indent=2) + "\n"
    if not found.certificates and not found.trust_roots:
        return "no certificates issued\n"
    rows = []
    for c in found.certificates:
        left = "expired" if c.not_after <= now else "in " + age(now, c.not_after)
        holders = ",".join(c.proxies) or "-"
        if c.proxies_total > len(c.proxies):
            holders += f" (+{c.proxies_total - len(c.proxies)})"
        rows.append(
            (c.spiffe_id, c.serial, _time(c.not_after), left, _short(c.issuer_fingerprint), holders)
        )
    roots = [
        (_short(root.fingerprint), root.subject, _time(root.not_after))
        for root in found.trust_roots
    ]
    parts = [text_table(CERTIFICATE_HEADERS, rows)] if rows else ["no workload certificates\n"]
    parts.append("\n" + text_table(ROOT_HEADERS, roots) if roots else "\nno trust roots\n")
    return "".join(parts)


def certificates_text(client: AdminClient, output: str, now: datetime) -> str:
    return show_certificates(certificates(client), output, now)


# -- ca rotate-root -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="ca_action", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate-root",
        help="start a root rotation (needs the admin token)",
        description="A new root CA, trusted beside the old one for the overlap; every "
        "workload certificate is re-issued under it meanwhile, then the old root is dropped. "
        "Exit codes: 0 started, 1 refused or the admin API unreachable, 2 bad usage.",
    )
    rotate.add_argument(
        "--overlap",
        type=duration,
        required=True,
        metavar="DURATION",
        help="how long both roots are trusted: seconds, or 60s, 10m, 24h",
    )
    add_common_arguments(rotate, timeout=30.0)


def run(args: argparse.Namespace) -> int:
    from xds_server.admin.root_rotation import RootRotationModel

    client = client_of(args)
    try:
        started = client.post(
            RootRotationModel, "/api/ca/rotate-root", {"overlap_seconds": args.overlap}
        )
    except AdminError as error:
        print(f"xds-server ca rotate-root: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(show_rotation(started.model_dump(mode="json"), args.output))
    return 0


def show_rotation(started: dict[str, Any], output: str) -> str:
    if output == "json":
        return json.dumps(started, indent=2) + "\n"
    return (
        f"root rotation started: new root serial {started['new_root_serial']} "
        f"(old {started['old_root_serial']})\n"
        f"certificates re-issued under it from {started['reissue_at']}\n"
        f"the old root is trusted until {started['overlap_ends_at']}\n"
    )
