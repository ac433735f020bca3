"""`/api/pushes`, `/api/pushes/{generation}` and the index page's "Recent pushes".

The admin app in process over a view holding a real `PushHistory`, fed the
records and callbacks a push makes (see test_push_history for the rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from xds_server.admin import create_app
from xds_server.admin.auth import AdminToken
from xds_server.admin.pushes import PushDetailModel, PushList
from xds_server.cache import Snapshot
from xds_server.history import PushDetail, PushHistory, PushSummary
from xds_server.pipeline.records import GenerationRecord, ProxyPush, Trigger
from xds_server.provenance import Origin, SourceRef
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.server.callbacks import SentResponse, StreamInfo
from xds_server.server.state import NackStatus

TOKEN = AdminToken("test-admin-token-" + "x" * 16, "tests")
"""The admin token of the app under test."""

OBSERVED = 1_700_000_000.0
SLICE = SourceRef("EndpointSlice", "default", "backend-slice", Origin("/m/eps.yaml", 1))


@dataclass
class PlaneWithoutHistory:
    """The AdminView every control plane offers, and nothing about pushes."""

    def is_ready(self) -> bool:
        return True

    def readiness_detail(self) -> dict[str, Any]:
        return {"source": "file:/mesh"}

    def proxies(self) -> list[Any]:
        return []

    def snapshot(self, node_id: str) -> Snapshot | None:
        return None

    def source_errors(self) -> list[str]:
        return []

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


@dataclass
class PlaneWithHistory(PlaneWithoutHistory):
    history: PushHistory = field(default_factory=PushHistory)

    def pushes(self) -> list[PushSummary]:
        return self.history.pushes()

    def push(self, generation: int) -> PushDetail | None:
        return self.history.push(generation)


async def get(plane: object, path: str, **params: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.get(path, params=params)


def response(type_url: str, generation: int, nonce: str, *names: str) -> SentResponse:
    return SentResponse(type_url, nonce, f"v{generation}", str(generation), names, (), 64)


def on(node_id: str) -> StreamInfo:
    return StreamInfo(1, "sotw", "ipv4:127.0.0.1:1", node_id)


def pushed_mesh(trigger: SourceRef = SLICE) -> PlaneWithHistory:
    """Generation 1 (a Service, ACKed by one proxy) and 2 (an EndpointSlice edit: proxy
    `a` ACKs it after 150 ms, `b` NACKs it)."""
    plane = PlaneWithHistory()
    history = plane.history
    service = SourceRef("Service", "default", "backend", Origin("/m/svc.yaml", 0))
    history.generation_committed(
        GenerationRecord(
            1, OBSERVED - 10, OBSERVED - 9.9, (Trigger("upserted", service),),
            (ProxyPush("a", "1", {CLUSTER: ("c",)}),),
        )
    )  # fmt: skip
    first = response(CLUSTER, 1, "n1", "c")
    history.response_sent(on("a"), first, OBSERVED - 9.8)
    history.ack_received(on("a"), first, OBSERVED - 9.7)
    history.generation_committed(
        GenerationRecord(
            2, OBSERVED, OBSERVED + 0.01, (Trigger("upserted", trigger),),
            tuple(ProxyPush(node, "2", {ENDPOINT: ("backend",)}) for node in ("a", "b")),
        )
    )  # fmt: skip
    to_a, to_b = response(ENDPOINT, 2, "n2", "backend"), response(ENDPOINT, 2, "n3", "backend")
    history.response_sent(on("a"), to_a, OBSERVED + 0.05)
    history.response_sent(on("b"), to_b, OBSERVED + 0.05)
    history.ack_received(on("a"), to_a, OBSERVED + 0.15)
    rejection = NackStatus("b", ENDPOINT, "v2", "v1", "n3", "bad endpoint", datetime.now(UTC))
    history.nack_received(on("b"), to_b, rejection, OBSERVED + 0.2)
    return plane


async def test_pushes_are_listed_newest_first_with_triggers_resources_and_counts() -> None:
    listed = PushList.model_validate_json((await get(pushed_mesh(), "/api/pushes")).content)

    assert [push.generation for push in listed.pushes] == [2, 1]
    newest = listed.pushes[0]
    [trigger] = newest.triggers
    assert (trigger.key, trigger.file, trigger.document) == (SLICE.key, "/m/eps.yaml", 1)
    assert newest.changed["EDS"].names == ["backend"]
    assert newest.observed_at == "2023-11-14T22:13:20+00:00"
    assert newest.counts.model_dump() == {
        "proxies": 2, "sent": 2, "acked": 1, "nacked": 1, "pending": 0,
        "superseded": 0, "disconnected": 0,
    }  # fmt: skip
    assert newest.ack_latency_seconds.fastest == pytest.approx(0.15)
    assert (listed.total, listed.next_offset) == (2, None)


async def test_the_list_is_paged_like_every_admin_list() -> None:
    body = (await get(pushed_mesh(), "/api/pushes", limit="1", offset="1")).json()

    assert [push["generation"] for push in body["pushes"]] == [1]
    assert (body["offset"], body["limit"], body["total"], body["next_offset"]) == (1, 1, 2, None)
    assert (await get(pushed_mesh(), "/api/pushes", limit="5000")).status_code == 422


async def test_a_generation_shows_each_proxys_ack_or_nack_with_its_latency() -> None:
    reply = await get(pushed_mesh(), "/api/pushes/2")
    detail = PushDetailModel.model_validate_json(reply.content)

    a, b = detail.proxies
    assert (a.node_id, a.status, a.acked_at) == ("a", "acked", "2023-11-14T22:13:20.150000+00:00")
    assert a.latency_seconds == pytest.approx(0.15)
    [sent] = a.sent
    assert (sent.type, sent.resources.names, sent.bytes, sent.answer) == (
        "EDS", ["backend"], 64, "acked",
    )  # fmt: skip
    assert (b.status, b.nack.model_dump() if b.nack else None) == (
        "nacked",
        {"type": "EDS", "message": "bad endpoint"},
    )
    assert (detail.generation, detail.total) == (2, 2)


@pytest.mark.parametrize(
    ("plane", "path", "status"),
    [
        (pushed_mesh, "/api/pushes/7", 404),
        (pushed_mesh, "/api/pushes/latest", 422),
        (PlaneWithoutHistory, "/api/pushes/1", 404),
    ],
)
async def test_a_generation_not_in_the_history_is_an_error(
    plane: Any, path: str, status: int
) -> None:
    assert (await get(plane(), path)).status_code == status


async def test_a_view_without_push_history_lists_no_pushes() -> None:
    body = (await get(PlaneWithoutHistory(), "/api/pushes")).json()
    page = (await get(PlaneWithoutHistory(), "/")).text

    assert (body["pushes"], body["total"]) == ([], 0)
    assert "No push recorded yet." in page


async def test_the_index_page_shows_the_recent_pushes() -> None:
    page = (await get(pushed_mesh(), "/")).text

    assert "<h2>Recent pushes (2)</h2>" in page
    assert '<a href="api/pushes/2"><code>2</code></a>' in page
    assert f"<code>{SLICE.key}</code>" in page
    assert "EDS 1" in page
    assert "2 / 2 / 1 / 1" in page  # changed / sent / ACKed / NACKed
    assert "150 ms to 150 ms" in page


async def test_what_a_manifest_names_is_escaped_on_the_page() -> None:
    evil = SourceRef("EndpointSlice", "default", "<script>alert(1)</script>")
    page = (await get(pushed_mesh(evil), "/")).text

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
