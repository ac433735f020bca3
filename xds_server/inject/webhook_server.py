"""The webhook's HTTPS server: uvicorn with TLS material that can change while it runs.

Where the certificate comes from is a `TlsSource`: `FileTls` reads mounted
files (a Secret written by cert-manager or by hand, caBundle managed
elsewhere), `SecretTls` is the self-managed Secret of
`xds_server.inject.tls_store`.  Either way the server loads the material
before it binds, and every `refresh_seconds` asks the source again; changed
material is loaded into the live `SSLContext`, so new connections get the new
certificate without a restart and without dropping open ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import uvicorn

from xds_server.inject.certs import TlsBundle
from xds_server.inject.sidecar import InjectionConfig
from xds_server.inject.tls_store import WebhookTlsStore, ensure_webhook_tls
from xds_server.inject.webhook import create_webhook_app

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingTls:
    """PEM certificate chain and key the server presents."""

    cert_pem: bytes
    key_pem: bytes


class TlsSource(Protocol):
    def load(self) -> ServingTls: ...


@dataclass(frozen=True)
class FileTls:
    """Certificate and key from files (e.g. a mounted `kubernetes.io/tls` Secret)."""

    cert: Path
    key: Path

    def load(self) -> ServingTls:
        return ServingTls(self.cert.read_bytes(), self.key.read_bytes())


@dataclass(frozen=True)
class SecretTls:
    """The self-managed certificate shared by every replica through a Secret."""

    store: WebhookTlsStore
    dns_names: Sequence[str]

    def load(self) -> ServingTls:
        bundle: TlsBundle = ensure_webhook_tls(self.store, self.dns_names)
        return ServingTls(bundle.cert_pem, bundle.key_pem)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the command owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebhookServer:
    """Serve `create_webhook_app(config)` over HTTPS on `host:port` (port 0: any)."""

    def __init__(
        self,
        config: InjectionConfig,
        *,
        host: str,
        port: int,
        tls: TlsSource,
        refresh_seconds: float = 3600.0,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.tls = tls
        self.refresh_seconds = refresh_seconds
        self.started = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled.

        Raises OSError when the address cannot be bound, ssl.SSLError (an OSError)
        when the certificate and key are unusable.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # Bound here rather than by uvicorn, which exits the process when it cannot bind.
        listener = socket.create_server((self.host, self.port), family=family)
        with listener, tempfile.TemporaryDirectory(prefix="xds-webhook-") as directory:
            cert_file = Path(directory) / "tls.crt"
            key_file = Path(directory) / "tls.key"
            serving = await asyncio.to_thread(self.tls.load)
            _write(serving, cert_file, key_file)
            # A bad pair fails here as ssl.SSLError, not later inside uvicorn.
            check = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            check.load_cert_chain(str(cert_file), str(key_file))
            uvicorn_config = uvicorn.Config(
                create_webhook_app(self.config),
                ssl_certfile=str(cert_file),
                ssl_keyfile=str(key_file),
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
            server = _Uvicorn(uvicorn_config)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(server.serve(sockets=[listener]), name="webhook-https")
                    while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                        await asyncio.sleep(0.01)
                    self.port = listener.getsockname()[1]
                    logger.info("sidecar injection webhook on https://%s:%d", self.host, self.port)
                    self.started.set()
                    tasks.create_task(
                        self._refresh(uvicorn_config, serving, cert_file, key_file),
                        name="webhook-tls-refresh",
                    )
            finally:
                server.should_exit = True

    async def _refresh(
        self, config: uvicorn.Config, serving: ServingTls, cert_file: Path, key_file: Path
    ) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                fresh = await asyncio.to_thread(self.tls.load)
                if fresh == serving or config.ssl is None:
                    continue
                _write(fresh, cert_file, key_file)
                config.ssl.load_cert_chain(str(cert_file), str(key_file))
            except Exception:
                # A mismatched pair mid-rotation, an API error: try again next round.
                logger.exception("could not refresh the webhook certificate; keeping the old one")
                continue
            serving = fresh
            logger.info("loaded a new webhook certificate")


def _write(serving: ServingTls, cert_file: Path, key_file: Path) -> None:
    cert_file.write_bytes(serving.cert_pem)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(serving.key_pem)
