"""xds-server diff -f FILE_OR_DIR: what applying manifests would change, without applying them.

A dry run against the running control plane, as `kubectl diff` is for a
cluster.  The manifests are sent to the admin API (`POST /api/diff`), which
translates them on a copy of the mesh; nothing is written, and no proxy gets
anything.  In file mode they are taken as written into the watched directory:
a directory's `*.yaml`, `*.yml` and `*.json` files (recursively, hidden ones
skipped) at their paths relative to it, a single file at its base name; a
file of the same path is replaced, the others stay.  Against a Kubernetes
source they are taken as `kubectl apply` would: each object upserted.

Output: a table of the proxies that would change (proxy, type, resource,
added / changed / removed), then a JSON Patch (RFC 6902) of each added or
changed resource, once per distinct change; errors in the manifests (file,
line, object, field) and objects translation would leave out go to stderr.
`-o json` prints the admin's answer instead (every page).  The dry run needs
the admin token: sent from `$XDS_SERVER_ADMIN_TOKEN` or `--admin-token-file`.

Exit codes, as `kubectl diff`:
  0  no proxy would change
  1  some proxies would change (shown)
  2  an error: the manifests have errors, translation would leave an object
     out, a file cannot be read, the admin cannot be reached, or a usage error
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xds_server.cli_client import (
    DEFAULT_ADMIN_URL,
    OPENER,
    add_token_argument,
    admin_url,
    token_hint,
)

if TYPE_CHECKING:
    from xds_server.admin.diff import DiffResponse, PatchOp

logger = logging.getLogger(__name__)

HELP = "what applying manifests would change, proxy by proxy (a dry run)"
SUFFIXES = (".yaml", ".yml", ".json")
PAGE_LIMIT = 1000
"""The admin's largest page: fewest round trips (each recomputes the preview)."""
MAX_PAGES = 1000
EXIT_SAME, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


class DiffError(Exception):
    """A one-line reason the command failed (exit code 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the exit-code table
    parser.add_argument(
        "-f", "--filename", action="append", required=True, type=Path, metavar="FILE_OR_DIR",
        help="a manifest file, or a directory of them; repeat for more",
    )  # fmt: skip
    parser.add_argument(
        "--admin", type=admin_url, default=DEFAULT_ADMIN_URL, metavar="URL",
        help="the control plane's admin API (default %(default)s)",
    )  # fmt: skip
    add_token_argument(parser)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from xds_server.admin.auth import client_token

    token_file: Path | None = getattr(args, "admin_token_file", None)
    try:
        files = read_files(args.filename)
        answer = post_diff(args.admin, files, args.timeout, client_token(token_file), token_file)
    except DiffError as error:
        print(f"xds-server diff: {error}", file=sys.stderr)
        return EXIT_ERROR
    if args.output == "json":
        sys.stdout.write(answer.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(show_table(answer))
    sys.stderr.write(show_problems(answer))
    return exit_code(answer)


def exit_code(answer: DiffResponse) -> int:
    if answer.has_errors:
        return EXIT_ERROR
    return EXIT_DIFFERENT if answer.proxies_changed else EXIT_SAME


# -- the manifests ------------------------------------------------------------------------


def _manifests_under(directory: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.endswith(SUFFIXES) and not name.startswith("."):
                yield Path(root, name)


def read_files(arguments: Sequence[Path]) -> dict[str, str]:
    """Relative path -> text for every `-f`: a directory's manifests, or a file by base name."""
    found: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for argument in arguments:
        if argument.is_dir():
            paths = [
                (path, path.relative_to(argument).as_posix()) for path in _manifests_under(argument)
            ]
            if not paths:
                raise DiffError(f"{argument}: no *.yaml, *.yml or *.json files in it")
        elif argument.exists():
            paths = [(argument, argument.name)]
        else:
            raise DiffError(f"{argument}: no such file or directory")
        for path, name in paths:
            if name in found:
                raise DiffError(f"{path} and {origin[name]} would both be {name!r}")
            try:
                found[name] = path.read_bytes().decode("utf-8", "surrogateescape")
            except OSError as error:
                raise DiffError(f"{path}: cannot read: {error.strerror or error}") from None
            origin[name] = path
    return found


# -- the admin API ------------------------------------------------------------------------


def post_diff(
    admin: str,
    files: dict[str, str],
    timeout: float,
    token: str | None = None,
    token_file: Path | None = None,
) -> DiffResponse:
    """Every page of the admin's answer for `files`, merged into one; `token` is the admin
    token (`token_file` where it was looked for, named if the admin refuses it)."""
    from xds_server.admin.diff import DiffResponse

    body = json.dumps({"files": files}, ensure_ascii=False).encode("utf-8", "surrogatepass")
    merged: DiffResponse | None = None
    offset: int | None = 0
    for _ in range(MAX_PAGES):
        if offset is None:
            break
        query = urllib.parse.urlencode({"offset": offset, "limit": PAGE_LIMIT})
        url = f"{admin}/api/diff?{query}"
        try:
            page = DiffResponse.model_validate(_post(url, body, timeout, token, token_file))
        except ValueError as error:  # pydantic's ValidationError
            raise DiffError(f"unexpected answer from {url}: {str(error).splitlines()[0]}") from None
        if merged is None:
            merged = page
        else:
            merged = merged.model_copy(
                update={
                    "proxies": [*merged.proxies, *page.proxies],
                    "diffs": {**merged.diffs, **page.diffs},
                    "next_offset": page.next_offset,
                }
            )
        offset = page.next_offset
    assert merged is not None
    return merged


def _post(url: str, body: bytes, timeout: float, token: str | None, token_file: Path | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with OPENER.open(request, timeout=timeout) as reply:
            data = reply.read()
    except urllib.error.HTTPError as error:
        with error:
            detail = error.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["detail"]
        if error.code == 401:
            detail += token_hint(token, token_file)
        raise DiffError(f"{url}: HTTP {error.code}: {detail}") from None
    except OSError as error:
        reason = getattr(error, "reason", None) or error
        raise DiffError(f"cannot reach the admin API at {url}: {reason}") from None
    try:
        return json.loads(data)
    except ValueError:
        raise DiffError(f"unexpected answer from {url}: not JSON") from None


# -- output -------------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )


def _value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def show_op(op: PatchOp) -> str:
    if op.op == "add":
        return f"  + {op.path}: {_value(op.value)}"
    if op.op == "remove":
        return f"  - {op.path}: {_value(op.old)}"
    return f"  ~ {op.path}: {_value(op.old)} -> {_value(op.value)}"


def show_table(answer: DiffResponse) -> str:
    unaffected = f"{answer.proxies_unaffected} unaffected"
    if not answer.proxies_changed:
        return f"no changes: no proxy would change ({unaffected})\n"
    rows = [("PROXY", "TYPE", "NAME", "CHANGE")]
    rows.extend(
        (proxy.node_id, change.type, change.name, change.change)
        for proxy in answer.proxies
        for change in proxy.changes
    )
    lines = [_table(rows), f"\n{answer.proxies_changed} proxies would change, {unaffected}\n"]
    for key in sorted(answer.diffs, key=lambda k: (answer.diffs[k].type, answer.diffs[k].name, k)):
        diff = answer.diffs[key]
        lines.append(f"\n--- {diff.type} {diff.name} ({diff.change})\n")
        lines.extend(show_op(op) + "\n" for op in diff.ops)
        if diff.ops_total > len(diff.ops):
            lines.append(f"  ... {diff.ops_total - len(diff.ops)} more operations\n")
    return "".join(lines)


def show_problems(answer: DiffResponse) -> str:
    lines = [f"{problem.severity}: {problem.text}\n" for problem in answer.source_errors]
    if answer.source_errors_total > len(answer.source_errors):
        lines.append(f"... {answer.source_errors_total - len(answer.source_errors)} more\n")
    lines.extend(
        f"error: {problem.object}: left out: {problem.error}\n"
        for problem in answer.translation_errors
    )
    return "".join(lines)
