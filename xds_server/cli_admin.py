"""`xds-server status | config | explain`: a running control plane, read through its admin API.

In the spirit of `istioctl proxy-status` / `proxy-config`: the commands are
HTTP clients of the admin port (`--admin URL`, default the port `serve`
listens on), print a table by default and the admin's own JSON with
`-o json`.  They read the JSON through the models the API is rendered from
(`admin.models`), so a field the CLI relies on cannot silently go away.

* `status`: every connected proxy, per xDS type: SYNCED / STALE / NACKED /
  NOT SENT, the version sent and the version ACKed, and how long ago the
  proxy last ACKed; then, when there are any, every route and policy with
  its `Accepted` and `ResolvedRefs` conditions (per Service parent for a
  route) and the message of the first that fails.  `status proxies` and
  `status policies` show one table; with `-o json`, `status` (and `status
  proxies`) prints the proxies' list as before and `status policies` the
  routes' and policies' list (`/api/policies`).
* `config PROXY [--type T]`: the resources the proxy is served (names and
  versions; `-o json` for the resources themselves, key material redacted).
* `explain PROXY [RESOURCE] [--type T]`: for each resource, the source objects
  it was made from and where they were read (file and document, or uid and
  resourceVersion); for a route configuration, per virtual host.

* `status certificates`: per identity its SPIFFE ID, serial, validity, issuer
  and the proxies holding it, and the trust roots (`cli_security`).
* `status --csds`: the same question asked of the xDS port's Client Status
  Discovery Service, as standard xDS tools ask it (`cli_csds`).

Endpoints that change state want the admin token: the commands send it from
`$XDS_SERVER_ADMIN_TOKEN` or `--admin-token-file` (default the file `serve`
writes), only with the requests that need it.

Lists are fetched a page at a time (the admin's largest page) until the end,
by the HTTP client in `cli_client`.
Exit codes: 0 done, 1 the proxy or resource is not found or the admin cannot
be reached or answers nonsense (one line on stderr naming the URL), 2 a usage
error.  The admin package loads FastAPI, so it is imported only when one of
these commands runs, not for every `xds-server` invocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from xds_server.cli_client import (
    DEFAULT_ADMIN_URL,
    PAGE_LIMIT,
    AdminClient,
    AdminError,
    add_token_argument,
    admin_url,
    client_of,
)
from xds_server.cli_csds import add_csds_arguments, run_csds

__all__ = [  # the client's names, for the commands and tests that read them from here
    "DEFAULT_ADMIN_URL",
    "PAGE_LIMIT",
    "AdminClient",
    "AdminError",
    "add_commands",
    "add_common_arguments",
    "age",
    "run",
    "table",
]

if TYPE_CHECKING:
    from pydantic import BaseModel

    from xds_server.admin.models import ExplainResult, ProxyConfig, ProxyStatus
    from xds_server.admin.policies import ConditionModel, ParentRefModel, PolicyStatusModel

logger = logging.getLogger(__name__)

COMMANDS = ("status", "config", "explain")
EXIT_CODES = "Exit codes: 0 done, 1 not found or the admin API unreachable, 2 bad usage."
TYPES = ("CDS", "EDS", "LDS", "RDS", "SDS")


def _type(value: str) -> str:
    short = value.strip().upper()
    if short not in TYPES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TYPES)}, got {value!r}")
    return short


HELP = {
    "status": "sync status of every connected proxy per type",
    "config": "the config a proxy is served",
    "explain": "the source objects behind a proxy's resources",
}


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add `status`, `config` and `explain` to the `xds-server` command."""
    parsers = {}
    for name in COMMANDS:
        parsers[name] = commands.add_parser(
            name, help=HELP[name], description=f"{HELP[name]}. {EXIT_CODES}"
        )
        _common(parsers[name])
    parsers["status"].add_argument(
        "what",
        nargs="?",
        choices=STATUS_SCOPES,
        default="all",
        help="proxies, routes and policies, certificates, or all (proxies, routes and "
        "policies; the default; -o json: the proxies)",
    )
    add_csds_arguments(parsers["status"])
    for name in ("config", "explain"):
        parsers[name].add_argument("proxy", metavar="PROXY", help="the proxy's node id")
    parsers["explain"].add_argument(
        "resource", metavar="RESOURCE", nargs="?", help="only the resource(s) of this name"
    )
    for name in ("config", "explain"):
        parsers[name].add_argument(
            "--type", type=_type, metavar="|".join(TYPES[:4]), help="only this type"
        )


def add_common_arguments(parser: argparse.ArgumentParser, timeout: float = 5.0) -> None:
    """`--admin URL`, `--admin-token-file`, `-o table|json`, `--timeout`: what every admin
    client command takes."""
    _common(parser, timeout)


def _common(parser: argparse.ArgumentParser, timeout: float = 5.0) -> None:
    parser.add_argument(
        "--admin",
        type=admin_url,
        default=DEFAULT_ADMIN_URL,
        metavar="URL",
        help="the control plane's admin API (default %(default)s)",
    )
    add_token_argument(parser)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--timeout", type=float, default=timeout, help="seconds per request (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run `args.command` against the admin API; the exit code."""
    if args.command == "status" and getattr(args, "csds", False):
        return run_csds(args)
    client = client_of(args)
    try:
        if args.command == "status":
            text = status_text(client, getattr(args, "what", "all"), args.output)
        elif args.command == "config":
            text = show_config(client.config(args.proxy, args.type), args.output)
        else:
            found = client.explain(args.proxy, args.type, args.resource)
            text = show_explain(found, args.output)
    except AdminError as error:
        print(f"xds-server {args.command}: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


# -- output -----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart (as `kubectl get`)."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]
    return "\n".join(lines) + "\n"


def age(then: datetime | None, now: datetime) -> str:
    """`4s`, `3m12s`, `2h5m`, `3d4h`; `-` for never."""
    if then is None:
        return "-"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size, smaller, small_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if seconds >= size:
            rest = (seconds % size) // small_size
            return f"{seconds // size}{unit}{rest}{smaller}" if rest else f"{seconds // size}{unit}"
    return f"{seconds}s"


def _dumped(models: Sequence[BaseModel] | BaseModel) -> str:
    if isinstance(models, Sequence):
        content: Any = [model.model_dump(mode="json", by_alias=True) for model in models]
    else:
        content = models.model_dump(mode="json", by_alias=True)
    return json.dumps(content, indent=2) + "\n"


CONFIG_HEADERS = ("TYPE", "NAME", "VERSION")
EXPLAIN_HEADERS = ("TYPE", "NAME", "VIRTUAL HOST", "SOURCE", "FROM")
STATUS_HEADERS = ("PROXY", "NAMESPACE", "KIND", "TYPE", "STATUS", "SENT", "ACKED", "LAST ACK")


def show_status(proxies: Sequence[ProxyStatus], output: str, now: datetime) -> str:
    """A row per proxy and type it has state for (istioctl proxy-status, one type a row)."""
    if output == "json":
        return _dumped(proxies)
    rows = []
    for proxy in proxies:
        for short, status in proxy.sync.items():
            state = proxy.type_sync(short)
            if state is None:
                continue  # neither subscribed nor sent: nothing to say
            acked_at = state.acked_at
            rows.append(
                (
                    proxy.node_id,
                    proxy.namespace or "-",
                    proxy.kind,
                    short,
                    status,
                    state.version_sent or "-",
                    state.acked_version or "-",
                    age(acked_at, now) + (" ago" if acked_at is not None else ""),
                )
            )
    return table(STATUS_HEADERS, rows) if proxies else "no proxies connected\n"


STATUS_SCOPES = ("all", "proxies", "policies", "certificates")
POLICY_HEADERS = ("KIND", "NAMESPACE", "NAME", "PARENT", "ACCEPTED", "RESOLVED REFS", "MESSAGE")
MAX_MESSAGE_SHOWN = 160
"""Characters of a condition's message a table cell shows (`-o json` has it whole)."""


def status_text(client: AdminClient, what: str, output: str) -> str:
    """`status [all|proxies|policies]`: the proxies' table, the policies' table, or both."""
    if what == "policies":
        return show_policies(client.policies(), output)
    if what == "certificates":
        from xds_server.cli_security import certificates_text

        return certificates_text(client, output, datetime.now(UTC))
    text = show_status(client.proxies(), output, datetime.now(UTC))
    if what == "proxies" or output == "json":
        return text
    try:
        policies = client.policies()
    except AdminError as error:
        if "HTTP 404" not in str(error):  # an older control plane has no /api/policies
            raise
        return text
    return text + ("\n" + show_policies(policies, output) if policies else "")


def _condition_cell(condition: ConditionModel | None) -> str:
    return "-" if condition is None else f"{condition.status} {condition.reason}"


def _message_cell(conditions: Sequence[ConditionModel | None]) -> str:
    failing = [c for c in conditions if c is not None and c.status != "True"]
    chosen = failing[0] if failing else next((c for c in conditions if c is not None), None)
    message = " ".join((chosen.message if chosen is not None else "").split()) or "-"
    return message if len(message) <= MAX_MESSAGE_SHOWN else message[: MAX_MESSAGE_SHOWN - 1] + "…"


def show_policies(policies: Sequence[PolicyStatusModel], output: str) -> str:
    """A row per route parent and per policy: Accepted and ResolvedRefs with their reasons."""
    if output == "json":
        return _dumped(policies)
    rows = []
    for policy in policies:
        head = (policy.object.kind, policy.object.namespace, policy.object.name)
        entries = [
            (_parent_cell(parent.parent_ref), parent.conditions) for parent in policy.parents
        ]
        if policy.conditions or not entries:
            entries.insert(0, ("-", policy.conditions))
        for parent, conditions in entries:
            accepted = next((c for c in conditions if c.type == "Accepted"), None)
            resolved = next((c for c in conditions if c.type == "ResolvedRefs"), None)
            rows.append(
                (
                    *head,
                    parent,
                    _condition_cell(accepted),
                    _condition_cell(resolved),
                    _message_cell([accepted, resolved]),
                )
            )
    return table(POLICY_HEADERS, rows) if policies else "no routes or policies\n"


def _parent_cell(ref: ParentRefModel) -> str:
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    port = f":{ref.port}" if ref.port is not None else ""
    return f"{ref.kind}/{name}{port}"


def show_config(config: ProxyConfig, output: str) -> str:
    if output == "json":
        return _dumped(_redacted(config))
    rows = [
        (served.type, resource.name, resource.version)
        for served in config.types
        for resource in served.resources
    ]
    return table(CONFIG_HEADERS, rows)


def _redacted(config: ProxyConfig) -> ProxyConfig:
    """The config with private key material replaced (`admin.redact`)."""
    from xds_server.admin.redact import redact

    return config.model_copy(
        update={
            "types": [
                served.model_copy(
                    update={
                        "resources": [
                            r.model_copy(update={"resource": redact(r.resource)})
                            for r in served.resources
                        ]
                    }
                )
                for served in config.types
            ]
        }
    )


def show_explain(result: ExplainResult, output: str) -> str:
    """A row per source object of each resource (and of each virtual host of a route table);
    `-` in an empty cell, so every row has every column."""
    if output == "json":
        return _dumped(result)
    rows: list[tuple[str, str, str, str, str]] = []
    for resource in result.resources:
        head = (resource.type, resource.name)
        before = len(rows)
        for source in resource.sources:
            rows.append((*head, "-", source.key, source.where or "-"))
        if resource.sources_total > len(resource.sources):
            more = resource.sources_total - len(resource.sources)
            rows.append((*head, "-", f"(+{more} sources)", "-"))
        for host in resource.virtual_hosts:
            for source in host.sources:
                rows.append((*head, host.name, source.key, source.where or "-"))
        if resource.virtual_hosts_total > len(resource.virtual_hosts):
            more = resource.virtual_hosts_total - len(resource.virtual_hosts)
            rows.append((*head, f"(+{more} virtual hosts)", "-", "-"))
        if len(rows) == before:
            made_by = resource.generator
            shown = "-" if made_by is None else f"generator {made_by.generator}"
            rows.append((*head, "-", shown, "-"))
    return table(EXPLAIN_HEADERS, rows)
