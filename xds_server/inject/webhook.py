"""The mutating admission webhook: AdmissionReview v1 in, AdmissionReview v1 out.

`review_response` is a pure function: for a Pod CREATE it answers `allowed`
with the base64 JSON Patch of `injection_patch` (the same operations the CLI
applies), or with no patch when the pod is skipped.  A pod that cannot be
injected is denied with the reason: the webhook fails closed, like its
`failurePolicy: Fail`, so no pod in an injection-enabled namespace silently
runs outside the mesh.  `create_webhook_app` serves it over FastAPI at
`POST /inject`, with `/healthz` and `/readyz` for the kubelet; TLS is the
server's concern (see `xds_server.inject.webhook_command`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from xds_server.inject.inject import InjectionError, injection_patch
from xds_server.inject.sidecar import InjectionConfig

logger = logging.getLogger(__name__)

ADMISSION_API_VERSION = "admission.k8s.io/v1"
POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}


class ReviewError(ValueError):
    """The request is not an AdmissionReview v1 we can answer (HTTP 400)."""


def review_response(review: Mapping[str, Any], config: InjectionConfig) -> dict[str, Any]:
    """The AdmissionReview answering `review`; raises `ReviewError` for a malformed one."""
    if review.get("apiVersion") != ADMISSION_API_VERSION or review.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected an {ADMISSION_API_VERSION} AdmissionReview")
    request = review.get("request")
    if not isinstance(request, Mapping) or not request.get("uid"):
        raise ReviewError("the AdmissionReview has no request uid")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod = request.get("object")
    if request.get("kind") != POD_KIND or request.get("operation") != "CREATE":
        logger.debug("not a Pod CREATE, allowed unchanged: %s", request.get("kind"))
    elif not isinstance(pod, Mapping):
        raise ReviewError("a Pod CREATE review carries no object")
    else:
        where = f"{request.get('namespace', '')}/{_pod_name(pod)}"
        try:
            ops, decision = injection_patch(pod, config)
        except InjectionError as error:
            logger.warning("denied pod %s: %s", where, error)
            response["allowed"] = False
            response["status"] = {
                "code": 400,
                "reason": "BadRequest",
                "message": f"sidecar injection: {error}",
            }
        else:
            if ops:
                logger.info("injecting pod %s", where)
                patch = json.dumps(ops, separators=(",", ":")).encode()
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(patch).decode("ascii")
            else:
                logger.info("not injecting pod %s: %s", where, decision.reason)
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def create_webhook_app(config: InjectionConfig) -> FastAPI:
    """The webhook's HTTP app: `POST /inject`, `GET /healthz`, `GET /readyz`."""
    app = FastAPI(title="xds-server sidecar injector", docs_url=None, redoc_url=None)

    @app.post("/inject")
    async def inject(request: Request) -> JSONResponse:
        try:
            review = json.loads(await request.body())
            if not isinstance(review, Mapping):
                raise ReviewError("the body is not a JSON object")
            return JSONResponse(review_response(review, config))
        except (ReviewError, json.JSONDecodeError, UnicodeDecodeError) as error:
            logger.warning("bad admission request: %s", error)
            return JSONResponse({"error": str(error)}, status_code=400)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        # Serving at all means the TLS material is in place (it is loaded before binding).
        return {"status": "ready"}

    return app


def _pod_name(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("name") or f"{metadata.get('generateName', '')}*")
