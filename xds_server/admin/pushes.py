"""`/api/pushes` and the index page's "Recent pushes": each generation to every proxy's ACK.

The view offers push history through the optional `PushHistoryView` (a view
without it shows no pushes).  This module owns the rendering: the response
models (pydantic, so the wire format is stated once and shown in `/docs`),
the JSON of a summary and of one generation's proxies, and the HTML section.

Bounded like every admin response: `/api/pushes` is one page of the kept
generations (newest first), `/api/pushes/{generation}` one page of the
proxies recorded in detail (the counts cover every proxy), and every list of
names comes cut, with its total, from the history itself.  Times are ISO 8601
in UTC; latencies are seconds from the source change being observed.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

from xds_server.admin.models import ApiModel
from xds_server.admin.paging import Page, shown, shown_names
from xds_server.admin.redact import redact_text
from xds_server.admin.views import short_name
from xds_server.history import NameList, ProxyPushView, PushDetail, PushSummary, SentType

logger = logging.getLogger(__name__)

RECENT_ON_PAGE = 10
"""Generations the index page shows; the rest are in `/api/pushes`."""
TRIGGERS_ON_PAGE = 3


@runtime_checkable
class PushHistoryView(Protocol):
    """What a view offers for `/api/pushes` (`ControlPlane` implements it)."""

    def pushes(self) -> Sequence[PushSummary]:
        """Every generation kept, newest first."""
        ...

    def push(self, generation: int) -> PushDetail | None: ...


def recent_pushes(view: object) -> Sequence[PushSummary]:
    return view.pushes() if isinstance(view, PushHistoryView) else ()


# -- the models -----------------------------------------------------------------------------


class Names(ApiModel):
    names: list[str]
    total: int


class PushTrigger(ApiModel):
    """A source object the generation applied, and where it was read."""

    change: Literal["upserted", "deleted"]
    key: str
    kind: str
    namespace: str
    name: str
    file: str | None = None
    document: int | None = None
    uid: str | None = None
    resource_version: str | None = None


class PushCountsModel(ApiModel):
    """Proxies whose snapshot the generation changed, by where each stands."""

    proxies: int
    sent: int
    acked: int
    nacked: int
    pending: int
    superseded: int
    disconnected: int


class AckLatency(ApiModel):
    fastest: float | None
    slowest: float | None


class PushSummaryModel(ApiModel):
    generation: int
    observed_at: str | None
    committed_at: str
    triggers: list[PushTrigger]
    triggers_total: int
    changed: dict[str, Names]
    """By short type name (CDS, EDS, ...)."""
    removed: dict[str, Names]
    counts: PushCountsModel
    ack_latency_seconds: AckLatency


class SentTypeModel(ApiModel):
    type: str
    type_url: str
    version: str
    nonce: str
    resources: Names
    removed: Names
    bytes: int
    responses: int
    sent_at: str
    answer: Literal["pending", "acked", "nacked"]
    answered_at: str | None


class PushNack(ApiModel):
    type: str
    message: str


class ProxyPushModel(ApiModel):
    node_id: str
    snapshot_version: str
    status: Literal["pending", "acked", "nacked", "superseded", "disconnected"]
    acked_at: str | None
    nacked_at: str | None
    latency_seconds: float | None
    nack: PushNack | None
    sent: list[SentTypeModel]


class PushList(ApiModel):
    pushes: list[PushSummaryModel]
    offset: int
    limit: int
    total: int
    next_offset: int | None


class PushDetailModel(PushSummaryModel):
    proxies: list[ProxyPushModel]
    """One page of the proxies recorded in detail; `counts` counts every proxy."""
    offset: int
    limit: int
    total: int
    next_offset: int | None


# -- JSON -------------------------------------------------------------------------------------


def _when(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def _names(names: NameList) -> Names:
    return Names(names=shown_names(names.names), total=names.total)


def _by_type(lists: Mapping[str, NameList]) -> dict[str, Names]:
    return {short_name(type_url): _names(names) for type_url, names in lists.items()}


def summary_model(summary: PushSummary) -> PushSummaryModel:
    counts = summary.counts
    return PushSummaryModel(
        generation=summary.generation,
        observed_at=_when(summary.observed_at),
        committed_at=_when(summary.committed_at) or "",
        triggers=[
            PushTrigger(
                change=trigger.change,
                key=shown(trigger.source.key),
                kind=trigger.source.kind,
                namespace=shown(trigger.source.namespace),
                name=shown(trigger.source.name),
                file=origin.file if (origin := trigger.source.origin) else None,
                document=origin.document if origin else None,
                uid=origin.uid if origin else None,
                resource_version=origin.resource_version if origin else None,
            )
            for trigger in summary.triggers
        ],
        triggers_total=summary.triggers_total,
        changed=_by_type(summary.changed),
        removed=_by_type(summary.removed),
        counts=PushCountsModel(
            proxies=counts.proxies,
            sent=counts.sent,
            acked=counts.acked,
            nacked=counts.nacked,
            pending=counts.pending,
            superseded=counts.superseded,
            disconnected=counts.disconnected,
        ),
        ack_latency_seconds=AckLatency(fastest=summary.fastest_ack, slowest=summary.slowest_ack),
    )


def _sent_model(sent: SentType) -> SentTypeModel:
    return SentTypeModel(
        type=short_name(sent.type_url),
        type_url=sent.type_url,
        version=sent.version,
        nonce=sent.nonce,
        resources=_names(sent.names),
        removed=_names(sent.removed),
        bytes=sent.bytes,
        responses=sent.responses,
        sent_at=_when(sent.sent_at) or "",
        answer=sent.answer,
        answered_at=_when(sent.answered_at),
    )


def proxy_model(proxy: ProxyPushView) -> ProxyPushModel:
    nack = None
    if proxy.nack_type is not None:
        message = shown(redact_text(proxy.nack_message or ""))
        nack = PushNack(type=short_name(proxy.nack_type), message=message)
    return ProxyPushModel(
        node_id=shown(proxy.node_id),
        snapshot_version=proxy.snapshot_version,
        status=proxy.status,
        acked_at=_when(proxy.acked_at),
        nacked_at=_when(proxy.nacked_at),
        latency_seconds=proxy.latency,
        nack=nack,
        sent=[_sent_model(sent) for sent in proxy.sent],
    )


def pushes_json(summaries: Sequence[PushSummary], page: Page) -> bytes:
    """`/api/pushes`: one page of the generations kept, newest first (a worker thread)."""
    listed = PushList(
        pushes=[summary_model(summary) for summary in page.of(summaries)],
        offset=page.offset,
        limit=page.limit,
        total=len(summaries),
        next_offset=page.next_offset(len(summaries)),
    )
    return listed.model_dump_json().encode()


def push_json(detail: PushDetail, page: Page) -> bytes:
    """`/api/pushes/{generation}`: the summary and one page of its proxies."""
    total = len(detail.proxies)
    shown_detail = PushDetailModel(
        **summary_model(detail.summary).model_dump(),
        proxies=[proxy_model(proxy) for proxy in page.of(detail.proxies)],
        offset=page.offset,
        limit=page.limit,
        total=total,
        next_offset=page.next_offset(total),
    )
    return shown_detail.model_dump_json().encode()


# -- the index page's section -----------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _triggers(summary: PushSummary) -> str:
    if not summary.triggers_total:
        return '<span class="muted">none (a proxy connected or was rebuilt)</span>'
    named = ", ".join(
        f"<code>{_esc(shown(trigger.source.key))}</code>"
        + (" (deleted)" if trigger.change == "deleted" else "")
        for trigger in summary.triggers[:TRIGGERS_ON_PAGE]
    )
    more = summary.triggers_total - min(len(summary.triggers), TRIGGERS_ON_PAGE)
    return named + (f" and {more} more" if more > 0 else "")


def _changed(summary: PushSummary) -> str:
    parts = [f"{_esc(short_name(url))} {names.total}" for url, names in summary.changed.items()] + [
        f"{_esc(short_name(url))} -{names.total}" for url, names in summary.removed.items()
    ]
    return ", ".join(parts) or '<span class="muted">-</span>'


def _counts(summary: PushSummary) -> str:
    counts = summary.counts
    text = f"{counts.proxies} / {counts.sent} / {counts.acked} / {counts.nacked}"
    others = [
        f"{number} {what}"
        for number, what in (
            (counts.pending, "pending"),
            (counts.superseded, "superseded"),
            (counts.disconnected, "disconnected"),
        )
        if number
    ]
    bad = ' class="sync sync-nacked"' if counts.nacked else ""
    extra = f'<div class="muted small">{", ".join(others)}</div>' if others else ""
    return f"<span{bad}>{text}</span>{extra}"


def _row(summary: PushSummary) -> str:
    committed = datetime.fromtimestamp(summary.committed_at, UTC)
    latency = f"{_seconds(summary.fastest_ack)} to {_seconds(summary.slowest_ack)}"
    return (
        "<tr>"
        f'<td><a href="api/pushes/{summary.generation}"><code>{summary.generation}</code></a></td>'
        f'<td class="nowrap">{_esc(committed.strftime("%H:%M:%S.%f")[:-3])}</td>'
        f"<td>{_triggers(summary)}</td><td>{_changed(summary)}</td>"
        f'<td>{_counts(summary)}</td><td class="nowrap">{_esc(latency)}</td>'
        "</tr>"
    )


def recent_pushes_html(summaries: Sequence[PushSummary]) -> str:
    """The index page's "Recent pushes": the newest `RECENT_ON_PAGE` generations."""
    if summaries:
        rows = "".join(_row(summary) for summary in summaries[:RECENT_ON_PAGE])
    else:
        rows = '<tr><td colspan="6" class="muted">No push recorded yet.</td></tr>'
    more = len(summaries) - RECENT_ON_PAGE
    note = f"{more} older in " if more > 0 else ""
    return (
        f"<h2>Recent pushes ({len(summaries)})</h2>"
        "<table><thead><tr><th>Generation</th><th>Committed (UTC)</th><th>Triggers</th>"
        "<th>Resources changed</th><th>Proxies changed / sent / ACKed / NACKed</th>"
        "<th>Change to ACK</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f'<p class="muted small">{note}<a href="api/pushes">api/pushes</a>; '
        "latency: from the source change to the first and to the last proxy ACK.</p>"
    )
