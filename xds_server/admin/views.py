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

A NACK names Envoy's resources; an operator fixes manifests.  So each NACK
also names the source objects behind the resources it blames (`blamed`,
`sources`): each blamed name is looked up in the proxy's current snapshot and
its `Resource.provenance` shown (file and document in file mode, uid and
resourceVersion in Kubernetes).  The snapshot may since have moved on from
the rejected version; a name it no longer holds is said to be of unknown
source rather than guessed.  Envoy's messages pass through `redact_text`.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from xds_server.admin.paging import FIRST_PAGE, MAX_NAMES_SHOWN, Page, shown, shown_names
from xds_server.admin.redact import redact_text
from xds_server.cache import Snapshot
from xds_server.model import Proxy
from xds_server.provenance import SourceRef
from xds_server.resources import TYPES, XDS_TYPES
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
    """CDS, EDS, ... from the type registry; the message name for a type it lacks."""
    known = TYPES.get(type_url)
    return known.short_name if known is not None else type_url.rsplit(".", 1)[-1]


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


def noun(type_url: str) -> str:
    """What one resource of a type is called in a sentence: `listener`, `route configuration`."""
    known = TYPES.get(type_url)
    name = known.message.DESCRIPTOR.name if known is not None else type_url.rsplit(".", 1)[-1]
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


def source_text(source: SourceRef) -> str:
    """`Service default/web (services.yaml, document 0)`: an object, and where it was read."""
    return source.describe()


@dataclass(frozen=True, slots=True)
class BlamedResource:
    """One resource a NACK blames, and the source objects it was made from."""

    type_url: str
    name: str
    sources: tuple[SourceRef, ...] | None
    """None when the proxy's current snapshot no longer holds the resource."""

    def json(self) -> dict[str, Any]:
        return {
            "resource": shown(self.name),
            "sources": None if self.sources is None else [s.as_json() for s in self.sources],
        }

    def text(self) -> str:
        """`rejected listener inbound_8080 from Service default/web (services.yaml, document 0)`."""
        what = f"rejected {noun(self.type_url)} {shown(self.name)}"
        if self.sources is None:
            return f"{what} from an unknown source (no longer in the proxy's snapshot)"
        if not self.sources:
            return f"{what} from an unknown source (it names none)"
        return f"{what} from " + " and ".join(source_text(s) for s in self.sources)


def blamed_resources(nack: NackStatus, snapshot: Snapshot | None) -> tuple[BlamedResource, ...]:
    """The resources a NACK blames (as many as are shown), each with its source objects."""
    served = snapshot.get(nack.type_url) if snapshot is not None else {}
    blamed = []
    for name in nack.resources[:MAX_NAMES_SHOWN]:
        resource = served.get(name)
        blamed.append(
            BlamedResource(
                nack.type_url, name, resource.provenance if resource is not None else None
            )
        )
    return tuple(blamed)


def sources_of(blamed: Iterable[BlamedResource]) -> list[SourceRef]:
    """Every source object behind `blamed`, once each, in the order first named."""
    return list(dict.fromkeys(source for b in blamed for source in b.sources or ()))


NO_SNAPSHOTS: Mapping[str, Snapshot | None] = MappingProxyType({})


def nack_snapshots(
    views: Iterable[ProxyView], snapshot_of: Callable[[str], Snapshot | None]
) -> dict[str, Snapshot | None]:
    """The current snapshot of each node with a NACK on record (to name its sources)."""
    return {
        view.node_id: snapshot_of(view.node_id)
        for view in views
        if any(status.last_nack is not None for status in view.stream.types.values())
    }


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


def nack_json(nack: NackStatus, snapshot: Snapshot | None = None) -> dict[str, Any]:
    """A NACK, with the source objects behind what it blames (looked up in `snapshot`)."""
    blamed = blamed_resources(nack, snapshot)
    return {
        "node_id": nack.node_id,
        "type": short_name(nack.type_url),
        "type_url": nack.type_url,
        "rejected_version": nack.rejected_version,
        "kept_version": nack.kept_version,
        "nonce": nack.nonce,
        "message": shown(redact_text(nack.message)),
        "at": _when(nack.at),
        "resources": shown_names(nack.resources),
        "resources_total": len(nack.resources),
        "blamed": [b.json() for b in blamed],
        "sources": [source.as_json() for source in sources_of(blamed)],
    }


def type_json(status: TypeStatus, snapshot: Snapshot | None = None) -> dict[str, Any]:
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
        "last_nack": (
            nack_json(status.last_nack, snapshot) if status.last_nack is not None else None
        ),
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


def proxy_json(view: ProxyView, snapshot: Snapshot | None = None) -> dict[str, Any]:
    """One row of `/api/proxies`: the stream, the workload, and per-type status.

    `snapshot` (the node's current one) names the sources of what a NACK blames.
    """
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
        "sync": {t.short_name: view.sync(t.type_url).value for t in XDS_TYPES},
        "types": [type_json(status, snapshot) for status in stream.types.values()],
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
    snapshots: Mapping[str, Snapshot | None] = NO_SNAPSHOTS,
) -> dict[str, Any]:
    """Everything wrong right now, each naming its object: file, object, proxy, resource.

    A NACK names the source objects of what it blames from `snapshots` (each
    node's current snapshot, see `nack_snapshots`).  Each list is cut to
    `page` (the same slice of each); `total` counts each in full.
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
        {"stream_id": view.stream.stream_id, **nack_json(nack, snapshots.get(view.node_id))}
        for view, nack in page.of(nacks)
    ]
    totals["nacks"] = len(nacks)
    for name, errors in (
        ("snapshots", _by_node((v.node_id, v.snapshot_error) for v in views)),
        ("metadata", _by_node((v.node_id, v.metadata_error) for v in views)),
    ):
        lists[name] = [
            {"node_id": node, "error": shown(redact_text(error))} for node, error in page.of(errors)
        ]
        totals[name] = len(errors)
    return {**lists, **page.json(totals)}


def _by_node(errors: Iterable[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """Per-node errors once per node (a node may have several streams open)."""
    return sorted({node_id: error for node_id, error in errors if error}.items())
