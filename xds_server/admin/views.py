"""What the admin shows of a proxy: its stream, its identity, and per-type sync status.

The server keeps raw protocol facts per stream and type (the nonce and version
last sent, the version last ACKed, the last NACK); a person asks "is this proxy
in sync, and if not, why?".  This module turns the one into the other, the way
`istioctl proxy-status` does: SYNCED, STALE (sent, no reply yet), NACKED (the
latest response was rejected) or NOT SENT.  It is pure: the JSON API and the
web page both render from the values here, and tests drive it with frozen
status values, no server needed.  Everything a proxy or a manifest can make
long is bounded here: messages are cut and name lists shortened, with their
full count alongside (`names_total`, `resources_total`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from xds_server.admin.paging import FIRST_PAGE, Page, shown, shown_names
from xds_server.model import Proxy
from xds_server.resources import PUSH_ORDER, SHORT_NAMES
from xds_server.server import NackStatus, StreamStatus, TypeStatus

logger = logging.getLogger(__name__)


class SyncStatus(enum.StrEnum):
    """Where one type of one proxy stands (`istioctl proxy-status` vocabulary)."""

    SYNCED = "SYNCED"
    """The proxy ACKed the latest response."""
    STALE = "STALE"
    """A response is on its way or awaiting the proxy's reply."""
    NACKED = "NACKED"
    """The proxy rejected the latest response and runs its previous config."""
    NOT_SENT = "NOT SENT"
    """Nothing of this type was sent on the stream (not subscribed, or nothing to send)."""


def sync_status(status: TypeStatus | None) -> SyncStatus:
    """The sync status of a type from what the stream last sent and heard back.

    A NACK is matched to the response by nonce, not by version, so a NACK that
    a later push has already superseded reads as STALE (awaiting the new
    reply), and one resolved by a later ACK reads as SYNCED.
    """
    if status is None or not status.nonce:
        return SyncStatus.NOT_SENT
    if status.last_nack is not None and status.last_nack.nonce == status.nonce:
        return SyncStatus.NACKED
    if status.acked_version and status.acked_version == status.version_sent:
        return SyncStatus.SYNCED
    return SyncStatus.STALE


def short_name(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


@dataclass(frozen=True, slots=True)
class ProxyView:
    """One connected proxy as the control plane sees it at one moment.

    `proxy` is None when the node's metadata could not be read
    (`metadata_error` says why); `snapshot_error` is set while the pipeline
    refuses to publish a new snapshot for it (it keeps the last good one).
    """

    stream: StreamStatus
    proxy: Proxy | None = None
    snapshot_error: str | None = None
    metadata_error: str | None = None

    @property
    def node_id(self) -> str:
        return self.stream.node_id

    def sync(self, type_url: str) -> SyncStatus:
        return sync_status(self.stream.types.get(type_url))

    def unresolved_nacks(self) -> list[NackStatus]:
        """NACKs not since followed by an ACK: the rejected config is not running."""
        return [
            status.last_nack
            for status in self.stream.types.values()
            if status.last_nack is not None and sync_status(status) is not SyncStatus.SYNCED
        ]


def newest_of_node(views: Iterable[ProxyView], node_id: str) -> tuple[ProxyView | None, int]:
    """The most recent stream of a node, and how many streams that node has open.

    Two open streams for one node id are usually a reconnect in progress or
    two Envoys sharing an id by mistake; the admin shows the newest and says so.
    """
    mine = [view for view in views if view.node_id == node_id]
    if not mine:
        return None, 0
    return max(mine, key=lambda view: view.stream.stream_id), len(mine)


# -- JSON -----------------------------------------------------------------------------


def _when(moment: datetime) -> str:
    return moment.isoformat()


def nack_json(nack: NackStatus) -> dict[str, Any]:
    return {
        "node_id": nack.node_id,
        "type": short_name(nack.type_url),
        "type_url": nack.type_url,
        "rejected_version": nack.rejected_version,
        "kept_version": nack.kept_version,
        "nonce": nack.nonce,
        "message": shown(nack.message),
        "at": _when(nack.at),
        "resources": shown_names(nack.resources),
        "resources_total": len(nack.resources),
    }


def type_json(status: TypeStatus) -> dict[str, Any]:
    return {
        "type": short_name(status.type_url),
        "type_url": status.type_url,
        "status": sync_status(status).value,
        "wildcard": status.wildcard,
        "names": shown_names(status.names),
        "names_total": len(status.names),
        "version_sent": status.version_sent,
        "nonce": status.nonce,
        "acked_version": status.acked_version,
        "last_nack": nack_json(status.last_nack) if status.last_nack is not None else None,
        "responses": status.responses,
        "bytes_sent": status.bytes_sent,
        "acks": status.acks,
        "nacks": status.nacks,
        "acked_at": _when(status.acked_at) if status.acked_at is not None else None,
    }


def identity_json(proxy: Proxy | None) -> dict[str, Any]:
    """The workload a proxy stands for, as translated (its Pod's view when known)."""
    if proxy is None:
        return {
            "workload": None,
            "namespace": None,
            "service_account": None,
            "ip": None,
            "labels": {},
        }
    return {
        "workload": proxy.workload,
        "namespace": proxy.namespace,
        "service_account": proxy.service_account,
        "ip": proxy.ip,
        "labels": dict(proxy.labels),
    }


def proxy_json(view: ProxyView) -> dict[str, Any]:
    """One row of `/api/proxies`: the stream, the workload, and per-type status."""
    stream = view.stream
    return {
        "node_id": stream.node_id,
        "stream_id": stream.stream_id,
        "kind": stream.kind,
        "peer": stream.peer,
        "connected_at": _when(stream.connected_at),
        "snapshot_version": stream.snapshot_version,
        "requests": stream.requests,
        **identity_json(view.proxy),
        "sync": {short_name(url): view.sync(url).value for url in PUSH_ORDER},
        "types": [type_json(status) for status in stream.types.values()],
        "snapshot_error": _shown_or_none(view.snapshot_error),
        "metadata_error": _shown_or_none(view.metadata_error),
    }


def _shown_or_none(text: str | None) -> str | None:
    return None if text is None else shown(text)


def errors_json(
    source_errors: Sequence[str],
    views: Iterable[ProxyView],
    translation_errors: Sequence[tuple[str, str]] = (),
    page: Page = FIRST_PAGE,
) -> dict[str, Any]:
    """Everything wrong right now, each naming its object: file, object, proxy, resource.

    Each list is cut to `page` (the same slice of each); `total` counts each in full.
    """
    views = list(views)
    lists: dict[str, list[Any]] = {
        "source": [shown(error) for error in page.of(source_errors)],
        "translation": [
            {"object": shown(obj), "error": shown(error)}
            for obj, error in page.of(translation_errors)
        ],
    }
    totals = {"source": len(source_errors), "translation": len(translation_errors)}
    nacks = [(view, nack) for view in views for nack in view.unresolved_nacks()]
    lists["nacks"] = [
        {"stream_id": view.stream.stream_id, **nack_json(nack)} for view, nack in page.of(nacks)
    ]
    totals["nacks"] = len(nacks)
    for name, errors in (
        ("snapshots", _by_node((v.node_id, v.snapshot_error) for v in views)),
        ("metadata", _by_node((v.node_id, v.metadata_error) for v in views)),
    ):
        lists[name] = [{"node_id": node, "error": shown(error)} for node, error in page.of(errors)]
        totals[name] = len(errors)
    return {**lists, **page.json(totals)}


def _by_node(errors: Iterable[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Per-node errors once per node (a node may have several streams open)."""
    return sorted({node_id: error for node_id, error in errors if error}.items())
