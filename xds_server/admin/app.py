"""FastAPI app factory for the admin port: health, JSON API, web page, metrics.

It reads through the `AdminView` protocol (and its optional extensions), so
the app can be tested against an in-memory fake.  Two endpoints do more than
read, and require the admin token (`admin.auth`: `Authorization: Bearer`,
401 without it): `POST /api/diff` (translates what the caller sends) and
`POST /api/ca/rotate-root` (the one that changes the mesh).  Every other
endpoint is a GET that stays open: none shows key material (Secrets' private
keys are redacted in every config view, and `/api/certificates` shows only
what is derived from public certificates).

The handlers are `async`: they gather what they need from the view on the
event loop that also runs the xDS streams (so they see a consistent moment
and never race a stream's bookkeeping), then render JSON and HTML in a worker
thread (the values they render are frozen), so converting a large config to
JSON never stalls a push.

Every response is bounded (see `paging`): lists come a page at a time
(`?offset=&limit=`, 100 by default, 1,000 at most), names and messages are
cut.  `/api/proxies` stays a JSON list and says its total and next page in
headers; the other endpoints say so in their body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, runtime_checkable

from fastapi import Body, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from xds_server.admin import certificates as mesh_certificates
from xds_server.admin import dependents as object_dependents
from xds_server.admin import diff as dry_run
from xds_server.admin import page as html_page
from xds_server.admin import policies as object_policies
from xds_server.admin import pushes as push_history
from xds_server.admin import root_rotation, xds_certificates
from xds_server.admin.auth import AdminToken, token_guard
from xds_server.admin.config import config_json, parse_type, served_config
from xds_server.admin.explain import explain
from xds_server.admin.paging import Page, PageQuery
from xds_server.admin.views import (
    ProxyView,
    errors_json,
    nack_snapshots,
    newest_of_node,
    proxy_json,
)
from xds_server.cache import Snapshot
from xds_server.model import ObjectKey
from xds_server.resources import PUSH_ORDER, XDS_TYPES

logger = logging.getLogger(__name__)


class AdminView(Protocol):
    """What the admin may read of the control plane (`ControlPlane` implements it)."""

    def is_ready(self) -> bool:
        """True once sources have synced and the xDS server is serving."""
        ...

    def readiness_detail(self) -> dict[str, Any]: ...

    def proxies(self) -> list[ProxyView]:
        """Every open stream with its proxy and per-type sync state, oldest first."""
        ...

    def snapshot(self, node_id: str) -> Snapshot | None:
        """The snapshot the cache serves a node now (its last good one), if any."""
        ...

    def source_errors(self) -> list[str]: ...

    def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition: (body, content type)."""
        ...


@runtime_checkable
class TranslationErrorsView(Protocol):
    """What a view may add: the objects translation left out or kept as they were.

    Optional, so a view that predates it still serves every page (without them).
    """

    def translation_errors(self) -> Sequence[tuple[str, str]]:
        """(object or unit, error), each naming what it is about."""
        ...


def translation_errors(view: AdminView) -> Sequence[tuple[str, str]]:
    return view.translation_errors() if isinstance(view, TranslationErrorsView) else ()


TypeFilter = Annotated[
    str | None,
    Query(
        alias="type",
        description=f"Only this type: {', '.join(t.short_name for t in XDS_TYPES)}, or a type URL",
    ),
]


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(
        content=json.dumps(content, indent=None, separators=(",", ":")).encode(),
        status_code=status_code,
        media_type="application/json",
    )


def _paging_headers(response: Response, request: Request, page: Page, total: int) -> None:
    """A list body cannot say how long the list is: headers do (as GitHub's API does)."""
    response.headers["X-Total-Count"] = str(total)
    following = page.next_offset(total)
    if following is not None:
        response.headers["X-Next-Offset"] = str(following)
        url = request.url.include_query_params(offset=following, limit=page.limit)
        response.headers["Link"] = f'<{url}>; rel="next"'


def _not_found(node_id: str) -> HTTPException:
    return HTTPException(404, f"no connected proxy has node id {node_id!r}")


def _selected_types(value: str | None) -> tuple[str, ...]:
    if value is None:
        return PUSH_ORDER
    try:
        return (parse_type(value),)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None


def create_app(view: AdminView, token: AdminToken) -> FastAPI:
    """The admin app on `view`; `token` is what the state-changing endpoints require."""
    app = FastAPI(title="xds-server admin", docs_url="/docs", redoc_url=None)
    guarded: Any = [token_guard(token)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        detail = view.readiness_detail()
        ready = view.is_ready()
        return JSONResponse({"ready": ready, **detail}, status_code=200 if ready else 503)

    @app.get("/api/proxies")
    async def proxies(request: Request, page: PageQuery) -> Response:
        """One page of the connected proxies with per-type status: SYNCED, STALE, NACKED or
        NOT SENT.  The body is the list; `X-Total-Count` says how many there are, and
        `X-Next-Offset` and a `Link: rel="next"` header where the next page starts."""
        views = view.proxies()
        rows = page.of(views)
        snapshots = nack_snapshots(rows, view.snapshot)
        response = await run_in_threadpool(
            lambda: _json([proxy_json(v, snapshots.get(v.node_id)) for v in rows])
        )
        _paging_headers(response, request, page, len(views))
        return response

    @app.get("/api/proxies/{node_id:path}/config")
    async def proxy_config(
        node_id: str, page: PageQuery, type_filter: TypeFilter = None
    ) -> Response:
        """One page of the resources the control plane serves a proxy, per type, as JSON."""
        type_urls = _selected_types(type_filter)
        snapshot = view.snapshot(node_id)
        if snapshot is None and newest_of_node(view.proxies(), node_id)[0] is None:
            raise _not_found(node_id)

        def render() -> Response:
            served = served_config(snapshot, type_urls, page) if snapshot is not None else []
            return _json(config_json(node_id, snapshot, served, page))

        return await run_in_threadpool(render)

    @app.get("/api/proxies/{node_id:path}/explain")
    async def proxy_explain(
        node_id: str,
        page: PageQuery,
        type_filter: TypeFilter = None,
        name: Annotated[str | None, Query(description="Only the resource(s) of this name")] = None,
    ) -> Response:
        """One page of a proxy's resources (of one type, or of one name), each with the
        source objects that made it and, for route configurations, per virtual host."""
        type_urls = _selected_types(type_filter)
        snapshot = view.snapshot(node_id)
        if snapshot is None and newest_of_node(view.proxies(), node_id)[0] is None:
            raise _not_found(node_id)

        def render() -> Response:
            result = explain(node_id, snapshot, type_urls, name, page)
            if name is not None and result.total == 0:
                raise HTTPException(404, f"proxy {node_id!r} is served no resource named {name!r}")
            return _json(result.model_dump(mode="json", by_alias=True))

        return await run_in_threadpool(render)

    @app.get("/api/proxies/{node_id:path}")
    async def proxy(node_id: str) -> Response:
        """One proxy (its newest stream, if it has several)."""
        newest, streams = newest_of_node(view.proxies(), node_id)
        if newest is None:
            raise _not_found(node_id)
        snapshot = view.snapshot(node_id)
        return _json({**proxy_json(newest, snapshot), "streams_for_node": streams})

    @app.get("/api/errors")
    async def errors(page: PageQuery) -> Response:
        """Source errors, objects translation left out, unresolved NACKs, refused snapshots
        and unreadable node metadata, each naming its object; one page of each list."""
        source, views, dropped = view.source_errors(), view.proxies(), translation_errors(view)
        snapshots = nack_snapshots(views, view.snapshot)
        return await run_in_threadpool(
            lambda: _json(errors_json(source, views, dropped, page, snapshots))
        )

    @app.post("/api/diff", responses={200: {"model": dry_run.DiffResponse}}, dependencies=guarded)
    async def diff(request: Request, page: PageQuery) -> Response:
        """What applying the proposed manifests (`{"files": {"path.yaml": "text", ...}}`)
        would change, proxy by proxy, without applying them: one page of the proxies that
        would change, a JSON Patch of each changed resource, the manifests' errors."""
        if not isinstance(view, dry_run.DryRunView):
            raise HTTPException(501, "this control plane offers no dry run")
        run = await dry_run.dry_run(view, request)  # the preview runs on the event loop
        body = await run_in_threadpool(dry_run.render, run, page)
        return Response(content=body, media_type="application/json")

    @app.get("/api/pushes", responses={200: {"model": push_history.PushList}})
    async def pushes(page: PageQuery) -> Response:
        """One page of the generations pushed, newest first: what triggered each, the
        resources it changed, and how many proxies were sent it, ACKed it and NACKed it."""
        summaries = push_history.recent_pushes(view)
        body = await run_in_threadpool(push_history.pushes_json, summaries, page)
        return Response(content=body, media_type="application/json")

    @app.get("/api/pushes/{generation}", responses={200: {"model": push_history.PushDetailModel}})
    async def push(generation: int, page: PageQuery) -> Response:
        """One generation, and one page of its proxies: what each was sent, and when it
        ACKed or NACKed (with the latency from the source change)."""
        history = view if isinstance(view, push_history.PushHistoryView) else None
        detail = history.push(generation) if history is not None else None
        if detail is None:
            raise HTTPException(404, f"generation {generation} is not in the push history")
        body = await run_in_threadpool(push_history.push_json, detail, page)
        return Response(content=body, media_type="application/json")

    @app.get(
        "/api/objects/{kind}/{namespace}/{name}",
        responses={200: {"model": object_dependents.DependentsResponse}},
    )
    async def affected(kind: str, namespace: str, name: str, page: PageQuery) -> Response:
        """What one source object feeds: the generator units that read it, the resources
        they built (one page, each with the proxies holding it) and one page of the
        proxies holding any; empty lists, and `in_mesh`, for an object nothing reads."""
        if not isinstance(view, object_dependents.DependentsView):
            raise HTTPException(501, "this control plane offers no dependency index")
        try:
            key = ObjectKey(object_dependents.parse_kind(kind), namespace, name)
        except ValueError as error:
            raise HTTPException(404, str(error)) from None
        found = view.dependents(key)  # on the event loop: one moment of the pipeline
        body = await run_in_threadpool(object_dependents.render, found, page)
        return Response(content=body, media_type="application/json")

    @app.get("/api/policies", responses={200: {"model": object_policies.PolicyList}})
    async def policies(
        page: PageQuery,
        kind: Annotated[
            str | None,
            Query(
                description="Only this kind (HTTPRoute, BackendPolicy, AuthorizationPolicy, ...)"
            ),
        ] = None,
    ) -> Response:
        """One page of the routes and policies, each with its status conditions (Accepted,
        ResolvedRefs: per Service parent for a route) and where it was read."""
        try:
            wanted = object_policies.parse_kind(kind)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        found = object_policies.statuses_of(view)  # on the event loop: one moment
        if wanted is not None:
            found = [status for status in found if status.key.kind is wanted]
        body = await run_in_threadpool(object_policies.render, found, page)
        return Response(content=body, media_type="application/json")

    @app.get("/api/certificates", responses={200: {"model": mesh_certificates.CertificateList}})
    async def certificates(page: PageQuery) -> Response:
        """Every identity's current certificate (SPIFFE ID, serial, validity, issuer
        fingerprint, the proxies holding it; one page) and the trust roots' fingerprints.
        Never a certificate or a key itself."""
        found = mesh_certificates.certificates_of(view)  # on the event loop: one moment
        views = view.proxies()
        body = await run_in_threadpool(mesh_certificates.render, found, views, page)
        return Response(content=body, media_type="application/json")

    @app.post(
        "/api/ca/rotate-root",
        responses={200: {"model": root_rotation.RootRotationModel}},
        dependencies=guarded,
    )
    async def rotate_root(
        request: Annotated[root_rotation.RotateRootRequest, Body()],
    ) -> Response:
        """Start a root rotation: a new root, trusted with the old one for
        `overlap_seconds`, every certificate re-issued under it meanwhile."""
        if not isinstance(view, root_rotation.RootRotationView):
            raise HTTPException(501, "this control plane cannot rotate its root")
        try:
            info = await view.rotate_root(request.overlap_seconds)
        except ValueError as error:
            raise HTTPException(409, str(error)) from None
        logger.warning(
            "root rotation started through the admin API: new root %s, overlap %gs",
            info.new_serial,
            request.overlap_seconds,
        )
        return _json(root_rotation.rotation_model(info).model_dump(mode="json"))

    @app.post(
        "/api/xds/client-certificate",
        responses={200: {"model": xds_certificates.ClientCertificate}},
        dependencies=guarded,
    )
    async def xds_client_certificate(
        request: Annotated[xds_certificates.ClientCertificateRequest, Body()],
    ) -> Response:
        """Sign a sidecar's CSR as its xDS credential (what `xds-server bootstrap` asks)."""
        if not isinstance(view, xds_certificates.ClientCertificateView):
            raise HTTPException(501, "this control plane issues no xDS client certificates")
        try:
            signed = view.sign_xds_client_certificate(
                request.namespace,
                request.service_account,
                request.csr_pem.encode(),
                request.ttl_seconds,
            )
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        xds_certificates.log_issued(signed)
        return _json(signed.model_dump(mode="json"))

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = view.metrics()
        return Response(content=body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(page: PageQuery) -> HTMLResponse:
        ready, detail = view.is_ready(), view.readiness_detail()
        source_errors, views = view.source_errors(), view.proxies()
        dropped = translation_errors(view)
        snapshots = nack_snapshots(page.of(views), view.snapshot)
        recent = push_history.recent_pushes(view)
        statuses = object_policies.statuses_of(view)
        certificates = mesh_certificates.certificates_of(view)
        text = await run_in_threadpool(
            lambda: html_page.render_index(
                ready=ready,
                readiness=detail,
                source_errors=source_errors,
                translation_errors=dropped,
                views=views,
                page=page,
                now=datetime.now(UTC),
                snapshots=snapshots,
                pushes=recent,
                policies=statuses,
                certificates=certificates,
            )
        )
        return HTMLResponse(text)

    @app.get("/proxies/{node_id:path}", response_class=HTMLResponse, include_in_schema=False)
    async def proxy_page(
        node_id: str, page: PageQuery, type_filter: TypeFilter = None
    ) -> HTMLResponse:
        newest, streams = newest_of_node(view.proxies(), node_id)
        if newest is None:
            return HTMLResponse(html_page.render_not_found(node_id), status_code=404)
        type_urls = _selected_types(type_filter)
        snapshot = view.snapshot(node_id)

        def render() -> str:
            return html_page.render_proxy(
                newest,
                streams_for_node=streams,
                snapshot_version=snapshot.version if snapshot is not None else None,
                served=served_config(snapshot, type_urls, page) if snapshot is not None else [],
                selected_type=type_urls[0] if type_filter is not None else None,
                page=page,
                now=datetime.now(UTC),
                snapshot=snapshot,
            )

        return HTMLResponse(await run_in_threadpool(render))

    return app
