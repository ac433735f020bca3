"""xds-server affected KIND/NAMESPACE/NAME: what one source object feeds, and who holds it.

The other direction of `explain`: from a Service, EndpointSlice or Pod to the
resources built from it (as the pipeline's dependency index records what
each generator read) and the proxies holding each, read from the admin API
(`GET /api/objects/{kind}/{namespace}/{name}`, `admin.dependents`).  Ask it
before an edit: these are the proxies the edit can reach.

KIND is `Service`, `EndpointSlice` or `Pod` (any case, plural, `svc`, `po`).
A table of (type, resource, proxies holding it) by default, every page
merged; `-o json` prints the admin's answer (its models, all pages).  An
object nothing reads says so, and whether the mesh holds it.

Exit codes: 0 done (also when nothing depends on the object), 1 the admin
cannot be reached or refuses the kind, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.parse
from typing import TYPE_CHECKING

from xds_server import cli_admin

if TYPE_CHECKING:
    from xds_server.admin.dependents import DependentsResponse

logger = logging.getLogger(__name__)

HELP = "what a source object feeds: the resources built from it and the proxies holding them"
PROXIES_IN_A_CELL = 3
"""Proxies named in a table cell; the rest are counted (`-o json` has them all)."""


def _object(value: str) -> tuple[str, str, str]:
    parts = value.split("/")
    if len(parts) != 3 or not all(parts):
        raise argparse.ArgumentTypeError(
            f"expected KIND/NAMESPACE/NAME (e.g. Service/default/web), got {value!r}"
        )
    return parts[0], parts[1], parts[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "object",
        metavar="KIND/NAMESPACE/NAME",
        type=_object,
        help="the source object, e.g. Service/default/web",
    )
    cli_admin.add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    client = cli_admin.AdminClient(args.admin, args.timeout)
    try:
        found = fetch(client, *args.object)
    except cli_admin.AdminError as error:
        print(f"xds-server affected: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(show(found, args.output))
    return 0


def fetch(
    client: cli_admin.AdminClient, kind: str, namespace: str, name: str
) -> DependentsResponse:
    """Every page of the object's dependents, merged into one answer."""
    from xds_server.admin.dependents import DependentsResponse

    quoted = (urllib.parse.quote(part, safe="") for part in (kind, namespace, name))
    path = "/api/objects/" + "/".join(quoted)
    pages = client.pages(DependentsResponse, path, {})
    first = pages[0]
    return first.model_copy(
        update={
            "resources": [r for page in pages for r in page.resources],
            "proxies": [p for page in pages for p in page.proxies],
            "offset": 0,
            "next_offset": None,
        }
    )


HEADERS = ("TYPE", "RESOURCE", "PROXIES")


def show(found: DependentsResponse, output: str) -> str:
    if output == "json":
        return json.dumps(found.model_dump(mode="json", by_alias=True), indent=2) + "\n"
    where = found.object.where
    head = f"{found.key}" + (f" ({where})" if where else "")
    if not found.in_mesh:
        head += ": not in the mesh"
    if not found.resources:
        return f"{head}\nnothing is built from it\n"
    rows = [(r.type, r.name, _proxies_cell(r.proxies, r.proxies_total)) for r in found.resources]
    proxies = found.total.get("proxies", len(found.proxies))
    held = "held by no proxy"
    if proxies:
        held = f"held by {proxies} proxies: {', '.join(found.proxies)}"
    footer = f"\n{len(found.resources)} resources, {held}\n"
    return f"{head}\n\n" + cli_admin.table(HEADERS, rows) + footer


def _proxies_cell(proxies: list[str], total: int) -> str:
    if not proxies:
        return "-"
    shown = ", ".join(proxies[:PROXIES_IN_A_CELL])
    more = total - min(len(proxies), PROXIES_IN_A_CELL)
    return f"{shown} (+{more})" if more > 0 else shown
