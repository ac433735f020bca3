"""FastAPI app factory for the admin port.

It only reads: everything it shows comes through the `AdminView` protocol, so
the app can be tested against an in-memory fake and never mutates the mesh.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)


class AdminView(Protocol):
    def is_ready(self) -> bool:
        """True once sources have synced and the xDS server is serving."""
        ...

    def readiness_detail(self) -> dict[str, Any]: ...

    def proxies(self) -> list[dict[str, Any]]:
        """Connected proxies and their per-type sync state (ACK/NACK)."""
        ...

    def source_errors(self) -> list[str]: ...

    def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition: (body, content type)."""
        ...


def create_app(view: AdminView) -> FastAPI:
    app = FastAPI(title="xds-server admin", docs_url="/docs", redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        detail = view.readiness_detail()
        ready = view.is_ready()
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get("/api/proxies")
    def proxies() -> list[dict[str, Any]]:
        return view.proxies()

    @app.get("/api/errors")
    def errors() -> dict[str, list[str]]:
        return {"source": view.source_errors()}

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = view.metrics()
        return Response(content=body, media_type=content_type)

    return app
