"""The admin API's HTTP client, shared by every command that talks to a running control plane.

`status`, `config`, `explain` (`cli_admin`), `affected`, `diff`, `status
certificates` and `ca rotate-root` (`cli_security`) all reach the admin port
through here: plain `urllib` (no HTTP proxy from the environment), every
answer validated against the pydantic model the API renders it from, every
list followed page by page, and every failure one `AdminError` line naming
the URL.  The admin token goes only with the requests that need it (POSTs),
read from `$XDS_SERVER_ADMIN_TOKEN` or `--admin-token-file` (`admin.auth`).
"""

from __future__ import annotations

import argparse
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from xds_server.settings import SecuritySettings, Settings

if TYPE_CHECKING:
    from pydantic import BaseModel

    from xds_server.admin.models import ExplainResult, ProxyConfig, ProxyStatus
    from xds_server.admin.policies import PolicyStatusModel

logger = logging.getLogger(__name__)

DEFAULT_ADMIN_URL = f"http://{Settings.admin_listen}"
DEFAULT_TOKEN_FILE = SecuritySettings.admin_token_file
PAGE_LIMIT = 1000
"""The admin's largest page (`admin.paging.MAX_LIMIT`): fewest round trips."""
MAX_PAGES = 10_000
"""A bound on the pages one command follows, should an admin never say it is done."""

M = TypeVar("M", bound="BaseModel")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""The admin port is reached directly: an HTTP proxy from the environment is not used."""


class AdminError(Exception):
    """A one-line reason the command failed (exit code 1)."""


def admin_url(value: str) -> str:
    """argparse type of `--admin`: an http(s) URL, without a trailing slash."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def add_token_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        default=DEFAULT_TOKEN_FILE,
        metavar="FILE",
        help="the admin token, for endpoints that change state "
        "(default %(default)s; $XDS_SERVER_ADMIN_TOKEN wins)",
    )


def client_of(args: argparse.Namespace) -> AdminClient:
    """The admin client the parsed arguments describe, with the token they point at."""
    from xds_server.admin.auth import client_token

    path: Path | None = getattr(args, "admin_token_file", None)
    return AdminClient(args.admin, args.timeout, client_token(path), path)


@dataclass(frozen=True, slots=True)
class AdminClient:
    """Requests to the admin API, each answer validated against its model.

    `token` (the admin token) goes only with the requests that need it (`post`).
    """

    url: str
    timeout: float = 5.0
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    """Where the token was looked for: named when the admin refuses it."""

    def proxies(self) -> list[ProxyStatus]:
        from xds_server.admin.models import ProxyStatus

        rows: list[ProxyStatus] = []
        offset: int | None = 0
        for _ in range(MAX_PAGES):
            if offset is None:
                break
            body, headers = self._get("/api/proxies", {"offset": offset, "limit": PAGE_LIMIT})
            if not isinstance(body, list):
                raise AdminError(f"unexpected answer from {self.url}/api/proxies: not a list")
            rows.extend(self._parse(ProxyStatus, item, "/api/proxies") for item in body)
            following = headers.get("X-Next-Offset")
            offset = int(following) if following and following.isdigit() else None
        return rows

    def policies(self) -> list[PolicyStatusModel]:
        """Every route and policy with its conditions (`/api/policies`, all pages)."""
        from xds_server.admin.policies import PolicyList

        pages = self._pages(PolicyList, "/api/policies", {})
        return [policy for page in pages for policy in page.policies]

    def config(self, node_id: str, type_name: str | None) -> ProxyConfig:
        """Every resource served to `node_id` (of `type_name`), all pages merged."""
        from xds_server.admin.models import ProxyConfig

        path = f"/api/proxies/{_quoted(node_id)}/config"
        pages = self._pages(ProxyConfig, path, {"type": type_name})
        first = pages[0]
        merged = [
            served.model_copy(
                update={"resources": [r for page in pages for r in page.types[i].resources]}
            )
            for i, served in enumerate(first.types)
        ]
        return first.model_copy(update={"types": merged, "offset": 0, "next_offset": None})

    def explain(self, node_id: str, type_name: str | None, name: str | None) -> ExplainResult:
        """Every resource of `node_id` (of `type_name`, called `name`) and its sources."""
        from xds_server.admin.models import ExplainResult

        path = f"/api/proxies/{_quoted(node_id)}/explain"
        pages = self._pages(ExplainResult, path, {"type": type_name, "name": name})
        resources = [resource for page in pages for resource in page.resources]
        return pages[0].model_copy(update={"resources": resources, "next_offset": None})

    def pages(self, model: type[M], path: str, params: Mapping[str, str | None]) -> list[M]:
        """Every page of `path` (`?offset=&limit=`), each validated against `model`."""
        return self._pages(model, path, params)

    def _pages(self, model: type[M], path: str, params: Mapping[str, str | None]) -> list[M]:
        pages: list[M] = []
        offset: int | None = 0
        while offset is not None and len(pages) < MAX_PAGES:
            query = {k: v for k, v in params.items() if v is not None}
            body, _ = self._get(path, {**query, "offset": offset, "limit": PAGE_LIMIT})
            page = self._parse(model, body, path)
            pages.append(page)
            offset = getattr(page, "next_offset", None)
        return pages

    def _parse(self, model: type[M], body: Any, path: str) -> M:
        from pydantic import ValidationError

        try:
            return model.model_validate(body)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise AdminError(
                f"unexpected answer from {self.url}{path}: {where}: {first['msg']}"
            ) from None

    def post(self, model: type[M], path: str, body: Mapping[str, object]) -> M:
        """POST `body` as JSON with the admin token; the answer validated against `model`."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self.authorization()}
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method="POST", headers=headers
        )
        answer, _ = self._open(request, path)
        return self._parse(model, answer, path)

    def authorization(self) -> dict[str, str]:
        """The `Authorization` header of a request that needs the token (none without one)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _get(self, path: str, params: Mapping[str, object]) -> tuple[Any, Mapping[str, str]]:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return self._open(urllib.request.Request(url), path)

    def _open(self, request: urllib.request.Request, path: str) -> tuple[Any, Mapping[str, str]]:
        try:
            with OPENER.open(request, timeout=self.timeout) as reply:
                return json.loads(reply.read()), dict(reply.headers)
        except urllib.error.HTTPError as error:
            with error:
                detail = _detail(error.read())
            if error.code == 401:
                detail += token_hint(self.token, self.token_file)
            raise AdminError(f"{self.url}{path}: HTTP {error.code}: {detail}") from None
        except (OSError, ValueError) as error:  # refused, timed out, bad JSON
            reason = getattr(error, "reason", None) or error
            raise AdminError(f"cannot reach the admin API at {self.url}: {reason}") from None


def token_hint(token: str | None, token_file: Path | None) -> str:
    """What to do about a 401, naming where the token was looked for."""
    if token is None:
        where = f"{token_file} (not readable)" if token_file is not None else "no file given"
        return f" (no admin token: set $XDS_SERVER_ADMIN_TOKEN or --admin-token-file; {where})"
    return " (set $XDS_SERVER_ADMIN_TOKEN or --admin-token-file to the server's token)"


def _quoted(node_id: str) -> str:
    return urllib.parse.quote(node_id, safe="")


def _detail(body: bytes) -> str:
    """FastAPI's `{"detail": ...}`, else the body's first line."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip()
        return text.splitlines()[0][:200] if text else "(empty)"
    return detail if isinstance(detail, str) else json.dumps(detail)[:200]
