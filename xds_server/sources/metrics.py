"""Prometheus metrics of the sources: the changes they emit and the Kubernetes watches' restarts.

The control plane's one registry is handed in (`SourceMetrics(registry)`, set
as a source's `metrics`); nothing registers at import time.  Labels stay
bounded: the source (`file`, `kubernetes`), the object kind (`Service`,
`EndpointSlice`, ..., or the Kubernetes kind a watch lists), the event
(`upsert`, `delete`) and the reason a watch restarted.  Counters are
thread-safe, so Kubernetes watch threads count directly.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from xds_server.model import ChangeSet

RESTART_EXPIRED = "expired"
"""`410 Gone`: the resourceVersion is too old; the watch lists again."""
RESTART_FAILED = "failed"
"""A list or watch failed (connection, HTTP error, ERROR event); retried after a wait."""
RESTART_NOT_SERVED = "not_served"
"""An optional kind's CRD is not installed; listed again with backoff."""


class SourceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.events = Counter(
            "xds_source_events",
            "Object changes a source observed (an upsert or a delete each), by source and kind.",
            ["source", "kind", "event"],
            registry=self.registry,
        )
        self.watch_restarts = Counter(
            "xds_source_watch_restarts",
            "Kubernetes list/watch loops started again, by the kind watched and why "
            "(expired: 410 Gone, relisted; failed: retried after a wait; not_served: no CRD).",
            ["kind", "reason"],
            registry=self.registry,
        )

    def emitted(self, source: str, changes: ChangeSet) -> None:
        """Count `changes` as emitted by `source`, one per upsert and per delete."""
        counts: dict[tuple[str, str], int] = {}
        for key in changes.upserts:
            counts[key.kind.value, "upsert"] = counts.get((key.kind.value, "upsert"), 0) + 1
        for key in changes.deletes:
            counts[key.kind.value, "delete"] = counts.get((key.kind.value, "delete"), 0) + 1
        for (kind, event), count in counts.items():
            self.events.labels(source=source, kind=kind, event=event).inc(count)

    def watch_restarted(self, kind: str, reason: str) -> None:
        self.watch_restarts.labels(kind=kind, reason=reason).inc()
