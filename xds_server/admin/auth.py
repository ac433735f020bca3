"""The admin API's bearer token: who may change state or read secret material.

Read-only views (health, proxies, config with keys redacted, pushes, policies,
certificates) stay open, because the admin port binds to loopback by default
and they show nothing a key could be made from.  An endpoint that changes
something (a root rotation) or runs the pipeline on what a caller sends (the
dry run) requires `Authorization: Bearer <token>`; without it, or with a
wrong one, the answer is 401 with `WWW-Authenticate: Bearer`, as RFC 6750 asks.

The token comes from the environment (`XDS_SERVER_ADMIN_TOKEN`: one value for
every replica, from a Kubernetes Secret) or from `admin_token_file`; a
missing file is created with a fresh `secrets.token_urlsafe` value, written
atomically (whole, to a temporary file then linked in place, so of two
processes starting at once one token wins) with mode 0600 in a directory of
mode 0700, so that only the user who runs the control plane (and the CLI as
that user) can read it.  The comparison is `hmac.compare_digest`, so timing
says nothing about how much of a guess was right.

The CLI side (`client_token`) reads the same two places, so `xds-server diff`
run by the same user on the same host needs no flag.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

logger = logging.getLogger(__name__)

TOKEN_ENV = "XDS_SERVER_ADMIN_TOKEN"
"""The environment variable that holds the token (wins over the file)."""
TOKEN_BYTES = 32
"""Random bytes in a generated token (43 URL-safe characters)."""
MIN_TOKEN_CHARS = 16
"""A shorter token (from the environment or a file) is refused at start-up."""
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


class TokenError(Exception):
    """The token cannot be read or created; the message names the file and why."""


@dataclass(frozen=True)
class AdminToken:
    """The token the protected endpoints require, and where it came from (for the log)."""

    value: str = field(repr=False)
    source: str

    def matches(self, presented: str) -> bool:
        """Whether `presented` is the token, in time independent of where they differ."""
        return hmac.compare_digest(presented.encode(), self.value.encode())


def _checked(value: str, where: str) -> str:
    token = value.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(f"the admin token in {where} is shorter than {MIN_TOKEN_CHARS} characters")
    return token


def _create_atomically(path: Path, token: str) -> bool:
    """`token` into a new `path`, mode 0600: written whole to a temporary file, then
    linked in place, which fails if `path` exists.  False if another process got
    there first (its token stands: two planes never hold different ones)."""
    path.parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as handle:  # mkstemp creates it 0600
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, FILE_MODE)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def load_or_create(path: Path, environ: Mapping[str, str] = os.environ) -> AdminToken:
    """The server's token: `$XDS_SERVER_ADMIN_TOKEN`, else `path` (created when missing)."""
    from_env = environ.get(TOKEN_ENV)
    if from_env is not None:
        return AdminToken(_checked(from_env, f"${TOKEN_ENV}"), f"${TOKEN_ENV}")
    existing = _read(path)
    if existing is not None:
        return existing
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        created = _create_atomically(path, token)
    except OSError as error:
        raise TokenError(
            f"cannot write the admin token {path}: {error.strerror or error}"
        ) from None
    if not created:
        raced = _read(path)
        if raced is None:
            raise TokenError(f"the admin token {path} came and went while it was created")
        return raced
    logger.info("admin API token generated in %s (mode 0600)", path)
    return AdminToken(token, str(path))


def _read(path: Path) -> AdminToken | None:
    """The token in `path`; None if there is no such file."""
    try:
        text = path.read_text()
        if path.stat().st_mode & 0o077:
            logger.warning("the admin token %s is readable by others: chmod 600 it", path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise TokenError(f"cannot read the admin token {path}: {error.strerror}") from None
    return AdminToken(_checked(text, str(path)), str(path))


def client_token(path: Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """What a CLI command sends: `$XDS_SERVER_ADMIN_TOKEN`, else `path`'s content, else None.

    A file that cannot be read is no token (the server then answers 401, which
    the command reports naming the file it tried).
    """
    from_env = environ.get(TOKEN_ENV)
    if from_env is not None and from_env.strip():
        return from_env.strip()
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


_bearer = HTTPBearer(auto_error=False, description="the admin token (see `admin_token_file`)")


def token_guard(token: AdminToken) -> object:
    """A FastAPI dependency: 401 unless the request carries `token` as its bearer token."""

    def require(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401, "this endpoint needs the admin token", {"WWW-Authenticate": "Bearer"}
            )
        if not token.matches(credentials.credentials):
            raise HTTPException(
                401,
                "the admin token is wrong",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    return Depends(require)
