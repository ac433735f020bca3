"""The admin web page: proxies and their sync status, and one proxy's config.

Plain HTML from string templates (`page.html` holds the layout and styles),
so the admin adds no template engine.  Every value that comes from outside
(node ids, Envoy's messages, resource names, file paths in source errors)
passes through `html.escape`, and node ids in links are URL-quoted: a
proxy chooses its own node id, and a page that shows it must not run it.

Links are relative, so the page also works behind a path prefix (for
instance `kubectl proxy` or an ingress).
"""

from __future__ import annotations

import functools
import html
import json
import logging
import string
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from xds_server.admin.certificates import NO_CERTIFICATES, MeshCertificates, certificates_html
from xds_server.admin.config import ServedType
from xds_server.admin.paging import DEFAULT_LIMIT, FIRST_PAGE, MAX_NAMES_SHOWN, Page, shown
from xds_server.admin.policies import policies_html
from xds_server.admin.pushes import recent_pushes_html
from xds_server.admin.redact import redact_text
from xds_server.admin.views import (
    NO_SNAPSHOTS,
    ProxyView,
    SyncStatus,
    blamed_resources,
    short_name,
    sync_status,
)
from xds_server.cache import Snapshot
from xds_server.history import PushSummary
from xds_server.model.status import ObjectStatus
from xds_server.resources import PUSH_ORDER
from xds_server.server import NackStatus, StreamStatus, TypeStatus

logger = logging.getLogger(__name__)

_SYNC_CLASS = {
    SyncStatus.SYNCED: "sync-synced",
    SyncStatus.STALE: "sync-stale",
    SyncStatus.NACKED: "sync-nacked",
    SyncStatus.NOT_SENT: "sync-not-sent",
}
_SYNC_HINT = {
    SyncStatus.SYNCED: "the proxy ACKed the latest response",
    SyncStatus.STALE: "sent; the proxy has not replied yet",
    SyncStatus.NACKED: "the proxy rejected the latest response and keeps its previous config",
    SyncStatus.NOT_SENT: "nothing of this type was sent to this proxy",
}
_REFRESH_TOGGLE = (
    '<label class="refresh"><input type="checkbox" id="auto-refresh" checked> '
    "auto-refresh every 5 s</label>"
)


@functools.cache
def _layout() -> string.Template:
    text = resources.files("xds_server.admin").joinpath("page.html").read_text(encoding="utf-8")
    return string.Template(text)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def proxy_path(node_id: str) -> str:
    """The detail page of a node, relative to the site root; every character quoted."""
    return "proxies/" + quote(node_id, safe="")


def _page(title: str, body: str, *, root: str = "", live: bool = False) -> str:
    return _layout().substitute(
        title=_esc(title), root=root, body=body, refresh=_REFRESH_TOGGLE if live else ""
    )


def _time(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        age = f"{days}d {hours}h"
    elif hours:
        age = f"{hours}h {minutes}m"
    else:
        age = f"{minutes}m {seconds}s"
    return (
        f'<span class="nowrap" title="{_esc(moment.isoformat())}">'
        f"{_esc(moment.strftime('%Y-%m-%d %H:%M:%S'))}</span>"
        f' <span class="muted small">({age} ago)</span>'
    )


def _badge(status: SyncStatus) -> str:
    return (
        f'<span class="sync {_SYNC_CLASS[status]}" title="{_esc(_SYNC_HINT[status])}">'
        f"{_esc(status.value)}</span>"
    )


def _names(names: Sequence[str]) -> str:
    """At most `MAX_NAMES_SHOWN` names, then how many more."""
    listed = ", ".join(f"<code>{_esc(shown(name))}</code>" for name in names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return (listed + (f" and {more} more" if more > 0 else "")) or "none named"


def _nack_text(nack: NackStatus, snapshot: Snapshot | None = None) -> str:
    """A NACK: what was rejected, Envoy's message, and the source objects behind it."""
    blamed = "".join(f"<li>{_esc(b.text())}</li>" for b in blamed_resources(nack, snapshot))
    return (
        f"<strong>{_esc(short_name(nack.type_url))} NACKED</strong> version "
        f"<code>{_esc(nack.rejected_version)}</code> (nonce {_esc(nack.nonce)}); "
        f"blamed: {_names(nack.resources)}<br>"
        f'<span class="message">{_esc(shown(redact_text(nack.message)))}</span>'
        + (f'<ul class="sources small">{blamed}</ul>' if blamed else "")
    )


def _error_list(errors: Sequence[str], api: str) -> str:
    """The first `DEFAULT_LIMIT` errors, each bounded, then where to read the rest."""
    items = "".join(f"<li>{_esc(shown(error))}</li>" for error in errors[:DEFAULT_LIMIT])
    more = len(errors) - DEFAULT_LIMIT
    note = (
        f'<p class="small">and {more} more: <a href="{_esc(api)}">{_esc(api)}</a></p>'
        if more > 0
        else ""
    )
    return f'<ul class="errors">{items}</ul>{note}'


def _pager(page: Page, total: int, what: str, query: Mapping[str, str] | None = None) -> str:
    """`Showing 101-200 of 5000 proxies`, with links to the previous and next pages."""
    if total <= page.limit and page.offset == 0:
        return ""
    first, last = min(page.offset + 1, total), min(page.offset + page.limit, total)
    links = []
    if page.offset > 0:
        links.append(_page_link(max(0, page.offset - page.limit), page.limit, query, "previous"))
    following = page.next_offset(total)
    if following is not None:
        links.append(_page_link(following, page.limit, query, "next"))
    return (
        f'<p class="pager small">Showing {first}-{last} of {total} {_esc(what)}. '
        + " · ".join(links)
        + "</p>"
    )


def _page_link(offset: int, limit: int, query: Mapping[str, str] | None, label: str) -> str:
    params = {**(query or {}), "offset": str(offset), "limit": str(limit)}
    href = "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    return f'<a href="{_esc(href)}">{label}</a>'


# -- the index: every proxy ------------------------------------------------------------


def _readiness(ready: bool, detail: Mapping[str, Any]) -> str:
    facts = ", ".join(
        f"{_esc(key)}: <code>{_esc(value if isinstance(value, str) else json.dumps(value))}</code>"
        for key, value in detail.items()
    )
    if ready:
        return f'<div class="banner ok"><strong>Ready</strong> — {facts}</div>'
    return f'<div class="banner bad"><strong>Not ready</strong> — {facts}</div>'


def _proxy_rows(
    view: ProxyView, now: datetime, columns: int, snapshot: Snapshot | None = None
) -> str:
    stream, proxy = view.stream, view.proxy
    identity = (
        f'<div class="muted small">{_esc(proxy.workload or "no workload")} · '
        f"ns {_esc(proxy.namespace)}</div>"
        if proxy is not None
        else '<div class="muted small">metadata unreadable</div>'
    )
    cells = "".join(f"<td>{_badge(view.sync(url))}</td>" for url in PUSH_ORDER)
    rows = [
        "<tr>"
        f'<td><a href="{_esc(proxy_path(view.node_id))}"><code>{_esc(view.node_id)}</code></a>'
        f"{identity}</td>"
        f'<td>{_esc(stream.kind)}<div class="muted small">{_esc(stream.peer)}</div></td>'
        f"<td>{_time(stream.connected_at, now)}</td>"
        f"{cells}"
        f"<td><code>{_esc(stream.snapshot_version or '-')}</code></td>"
        "</tr>"
    ]
    problems = [_nack_text(nack, snapshot) for nack in view.unresolved_nacks()]
    if view.snapshot_error:
        problems.append(f"<strong>snapshot refused</strong>: {_esc(shown(view.snapshot_error))}")
    if view.metadata_error:
        problems.append(
            f"<strong>invalid node metadata</strong>: {_esc(shown(view.metadata_error))}"
        )
    rows.extend(
        f'<tr class="problem"><td></td><td colspan="{columns - 1}">{problem}</td></tr>'
        for problem in problems
    )
    return "".join(rows)


def _problem_banners(
    source_errors: Sequence[str], translation_errors: Sequence[tuple[str, str]]
) -> str:
    if source_errors:
        banners = (
            f'<div class="banner bad"><strong>{len(source_errors)} source error(s)</strong>: '
            "these objects are not applied; the last good state of each stays in force."
            f"{_error_list(source_errors, 'api/errors')}</div>"
        )
    else:
        banners = '<div class="banner ok">No source errors.</div>'
    if translation_errors:
        banners += (
            f'<div class="banner bad"><strong>{len(translation_errors)} object(s) could not '
            "be translated</strong>: each keeps its last good version (or stays out of the "
            "mesh); everything else is applied."
            + _error_list([f"{obj}: {error}" for obj, error in translation_errors], "api/errors")
            + "</div>"
        )
    return banners


def render_index(
    *,
    ready: bool,
    readiness: Mapping[str, Any],
    source_errors: Sequence[str],
    views: Sequence[ProxyView],
    now: datetime,
    translation_errors: Sequence[tuple[str, str]] = (),
    page: Page = FIRST_PAGE,
    snapshots: Mapping[str, Snapshot | None] = NO_SNAPSHOTS,
    pushes: Sequence[PushSummary] = (),
    policies: Sequence[ObjectStatus] = (),
    certificates: MeshCertificates = NO_CERTIFICATES,
) -> str:
    """`/`: readiness, errors, then one row per connected proxy, a page of them at a time,
    then the routes and policies, the certificates, and the recent pushes (newest first).

    `snapshots` (see `views.nack_snapshots`) name the sources of what a NACK blames.
    """
    columns = 4 + len(PUSH_ORDER)
    headers = "".join(f"<th>{_esc(short_name(url))}</th>" for url in PUSH_ORDER)
    if views:
        rows = "".join(
            _proxy_rows(view, now, columns, snapshots.get(view.node_id)) for view in page.of(views)
        )
    else:
        rows = f'<tr><td colspan="{columns}" class="muted">No proxy is connected.</td></tr>'
    body = (
        '<div id="live">'
        f"{_readiness(ready, readiness)}{_problem_banners(source_errors, translation_errors)}"
        f"<h2>Proxies ({len(views)})</h2>"
        "<table><thead><tr><th>Node</th><th>Stream</th><th>Connected</th>"
        f"{headers}<th>Snapshot pushed</th></tr></thead><tbody>{rows}</tbody></table>"
        f"{_pager(page, len(views), 'proxies')}"
        f"{policies_html(policies)}"
        f"{certificates_html(certificates, views)}"
        f"{recent_pushes_html(pushes)}"
        f'<p class="muted small">As of {_esc(now.strftime("%Y-%m-%d %H:%M:%S %Z"))}.</p>'
        "</div>"
    )
    return _page("xds-server admin", body, live=True)


# -- one proxy ---------------------------------------------------------------------------


def _stream_text(stream: StreamStatus) -> str:
    return f"{_esc(stream.kind)} #{stream.stream_id} from <code>{_esc(stream.peer)}</code>"


def _identity(view: ProxyView, streams_for_node: int, now: datetime) -> str:
    stream, proxy = view.stream, view.proxy
    facts: list[tuple[str, str]] = [
        ("Stream", _stream_text(stream)),
        ("Connected", _time(stream.connected_at, now)),
        ("Requests", str(stream.requests)),
        ("Snapshot pushed", f"<code>{_esc(stream.snapshot_version or '-')}</code>"),
    ]
    if proxy is not None:
        labels = "".join(
            f'<span class="label">{_esc(key)}={_esc(value)}</span>' for key, value in proxy.labels
        )
        facts += [
            ("Workload", _esc(proxy.workload or "-")),
            ("Namespace", _esc(proxy.namespace)),
            ("Service account", _esc(proxy.service_account)),
            ("IP", _esc(proxy.ip or "-")),
            ("Labels", labels or '<span class="muted">none</span>'),
        ]
    table = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    note = ""
    if streams_for_node > 1:
        note = (
            f'<div class="banner warn">{streams_for_node} streams are open for this node id '
            "(a reconnect in progress, or proxies sharing an id); showing the newest.</div>"
        )
    return f'{note}<table class="facts">{table}</table>'


def _problems(view: ProxyView, snapshot: Snapshot | None) -> str:
    parts = []
    if view.metadata_error:
        parts.append(f"<strong>Invalid node metadata</strong>: {_esc(shown(view.metadata_error))}")
    if view.snapshot_error:
        parts.append(
            "<strong>Snapshot refused</strong> (the proxy keeps its last good config): "
            f"{_esc(shown(view.snapshot_error))}"
        )
    parts.extend(_nack_text(nack, snapshot) for nack in view.unresolved_nacks())
    return "".join(f'<div class="banner bad">{part}</div>' for part in parts)


def _subscription(status: TypeStatus) -> str:
    if status.wildcard and not status.names:
        return "wildcard (*)"
    named = f"{len(status.names)} name(s)"
    if status.names:
        named = f"<details><summary>{named}</summary>{_names(status.names)}</details>"
    return f"wildcard (*) + {named}" if status.wildcard else named


def _subscriptions(view: ProxyView) -> str:
    rows = []
    for url in PUSH_ORDER:
        status = view.stream.types.get(url)
        if status is None:
            continue
        nack = status.last_nack
        rows.append(
            "<tr>"
            f"<td><strong>{_esc(short_name(url))}</strong></td><td>{_badge(sync_status(status))}</td>"
            f"<td>{_subscription(status)}</td>"
            f"<td><code>{_esc(status.version_sent or '-')}</code></td>"
            f"<td><code>{_esc(status.acked_version or '-')}</code></td>"
            f"<td>{_esc(status.nonce or '-')}</td><td>{status.responses}</td>"
            f"<td>{status.acks}</td><td>{status.nacks}</td><td>{status.bytes_sent}</td>"
            "</tr>"
        )
        if nack is not None and sync_status(status) is SyncStatus.SYNCED:
            rows.append(
                '<tr><td></td><td colspan="9" class="muted small">resolved NACK of version '
                f"<code>{_esc(nack.rejected_version)}</code> at {_esc(nack.at.isoformat())}: "
                f"{_esc(shown(redact_text(nack.message)))}</td></tr>"
            )
    if not rows:
        return '<p class="muted">The proxy has not subscribed to any type yet.</p>'
    return (
        "<table><thead><tr><th>Type</th><th>Status</th><th>Subscribed</th>"
        "<th>Version sent</th><th>ACKed</th><th>Nonce</th><th>Responses</th><th>ACKs</th>"
        f"<th>NACKs</th><th>Bytes sent</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _type_filter(selected: str | None) -> str:
    links = ['<a href="?"' + (' class="current"' if selected is None else "") + ">all</a>"]
    for url in PUSH_ORDER:
        name = short_name(url)
        current = ' class="current"' if selected == url else ""
        links.append(f'<a href="?type={name}"{current}>{name}</a>')
    return f'<p class="filters">Show: {"".join(links)}</p>'


def _config(
    served: Sequence[ServedType],
    blamed: Mapping[str, frozenset[str]],
    page: Page,
    selected: str | None,
) -> str:
    parts = []
    for served_type in served:
        suspects = blamed.get(served_type.type_url, frozenset())
        parts.append(
            f"<h3>{_esc(served_type.short_name)} "
            f'<span class="muted small">{served_type.total} resource(s), version '
            f"<code>{_esc(served_type.version or '-')}</code></span></h3>"
        )
        if not served_type.resources:
            parts.append('<p class="muted small">none</p>')
        for resource in served_type.resources:
            rejected = resource.name in suspects
            parts.append(
                f'<details class="resource{" blamed" if rejected else ""}"><summary>'
                f"<code>{_esc(resource.name)}</code> "
                f'<span class="muted small">version {_esc(resource.version)}</span>'
                + (' <span class="sync sync-nacked">rejected</span>' if rejected else "")
                + f"</summary><pre>{_esc(json.dumps(resource.body, indent=2))}</pre></details>"
            )
        query = {"type": short_name(selected)} if selected is not None else None
        parts.append(_pager(page, served_type.total, "resources", query))
    return "".join(parts)


def render_proxy(
    view: ProxyView,
    *,
    streams_for_node: int,
    snapshot_version: str | None,
    served: Sequence[ServedType],
    selected_type: str | None,
    now: datetime,
    page: Page = FIRST_PAGE,
    snapshot: Snapshot | None = None,
) -> str:
    """`/proxies/{node_id}`: identity, problems, subscriptions, and a page of the config.

    `snapshot` (the node's current one) names the sources of what a NACK blames.
    """
    api = "../api/" + proxy_path(view.node_id)
    blamed: dict[str, frozenset[str]] = {
        nack.type_url: frozenset(nack.resources) for nack in view.unresolved_nacks()
    }
    if snapshot_version is None:
        config = (
            '<p class="muted">No snapshot is served to this proxy yet '
            "(sources not synced, or its metadata or snapshot was refused).</p>"
        )
    else:
        config = _type_filter(selected_type) + _config(served, blamed, page, selected_type)
    body = (
        f'<p><a href="../">&larr; all proxies</a></p>'
        f"<h1>{_esc(view.node_id)}</h1>"
        f"{_problems(view, snapshot)}{_identity(view, streams_for_node, now)}"
        "<h2>Subscriptions</h2>"
        f"{_subscriptions(view)}"
        f'<h2>Config served <span class="muted small">snapshot '
        f"<code>{_esc(snapshot_version or '-')}</code> · "
        f'<a href="{_esc(api)}">JSON</a> · <a href="{_esc(api)}/config">config JSON</a>'
        f"</span></h2>{config}"
    )
    return _page(f"{view.node_id} · xds-server admin", body, root="../")


def render_not_found(node_id: str) -> str:
    body = (
        f'<p><a href="../">&larr; all proxies</a></p>'
        f'<div class="banner bad">No connected proxy has node id <code>{_esc(node_id)}</code>.'
        "</div>"
    )
    return _page("proxy not found · xds-server admin", body, root="../")
