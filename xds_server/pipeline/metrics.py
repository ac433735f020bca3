"""Prometheus metrics of the pipeline: pushes, their build time, debounce and validation.

The control plane's one registry is handed in (`PipelineMetrics(registry)`,
set as `MeshPipeline.metrics`); nothing registers at import time.  Labels are
bounded by construction: xDS short type names (CDS, EDS, LDS, RDS, SDS),
source kinds (`model.Kind`, about ten), and a few fixed words.  No node id,
object name or namespace is ever a label: per-proxy detail is the push
history's (`/api/pushes`).

A *push* here is one proxy's snapshot changing for one xDS type: what the
ADS server then sends that proxy.  Its *trigger* is the kind of source
object whose change caused it (`Service`, `EndpointSlice`, ...), `mixed`
when a debounced batch changed several kinds, and `proxy` for a proxy's own
translation outside any batch (it connected, its metadata changed, the
initial sync).  `xds_push_triggers` counts every source change a batch
applied by kind, so a `mixed` push is still told apart there.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram

from xds_server.cache import Snapshot
from xds_server.model import Kind
from xds_server.pipeline.records import ProxyPush
from xds_server.resources import SHORT_NAMES

BUILD_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Seconds: from one endpoint change on a small mesh to a route table of 10,000 Services."""

TRIGGER_PROXY = "proxy"
"""A proxy translated on its own: it connected, changed its metadata, or the mesh synced."""
TRIGGER_MIXED = "mixed"
"""A batch that changed objects of several kinds."""


def short_type(type_url: str) -> str:
    """`CDS` for the Cluster type URL; the message name for a type the registry lacks."""
    return SHORT_NAMES.get(type_url) or type_url.rsplit(".", 1)[-1]


def trigger_of(kinds: Iterable[Kind]) -> str:
    """The trigger label of a batch that changed objects of `kinds`."""
    found = set(kinds)
    if not found:
        return TRIGGER_PROXY
    if len(found) > 1:
        return TRIGGER_MIXED
    return next(iter(found)).value


def changed_types(previous: Snapshot | None, current: Snapshot | None) -> list[str]:
    """The type URLs whose resources differ from `previous` to `current`, without
    gathering names: a proxy's first snapshot changes every type it holds."""
    if current is None or current is previous:
        return []
    if previous is None:
        return [type_url for type_url, resources in current.resources.items() if resources]
    types = current.resources.keys() | previous.resources.keys()
    return [type_url for type_url in types if current.changed(previous, type_url)]


class PipelineMetrics:
    """What the pipeline counts; see the module docstring for what a push and a trigger are."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.pushes = Counter(
            "xds_pushes",
            "Proxy snapshot updates, one per proxy and xDS type changed, by what triggered them "
            "(a source kind, 'mixed' for several, 'proxy' for a proxy's own translation).",
            ["type", "trigger"],
            registry=self.registry,
        )
        self.push_triggers = Counter(
            "xds_push_triggers",
            "Source object changes applied by committed batches, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.build_seconds = Histogram(
            "xds_push_build_seconds",
            "Seconds spent building snapshots: a debounced batch (scope=batch) or one "
            "proxy's translation outside a batch (scope=proxy).",
            ["scope"],
            buckets=BUILD_BUCKETS,
            registry=self.registry,
        )
        self.debounce_merges = Counter(
            "xds_debounce_merges",
            "Source change sets merged into a burst already waiting to be applied.",
            registry=self.registry,
        )
        self.validation_failures = Counter(
            "xds_validation_failures",
            "Generated resources that broke one of Envoy's validation rules and were not "
            "served (the object to blame left out, or the proxy kept at its last snapshot), "
            "by xDS type.",
            ["type"],
            registry=self.registry,
        )
        self._batch = self.build_seconds.labels(scope="batch")
        self._proxy = self.build_seconds.labels(scope="proxy")

    def batch_built(self, seconds: float) -> None:
        self._batch.observe(seconds)

    def proxy_built(self, seconds: float) -> None:
        self._proxy.observe(seconds)

    def batch_pushed(self, kinds: Iterable[Kind], pushes: Iterable[ProxyPush]) -> None:
        """A committed batch that changed objects of `kinds` (one entry per change)."""
        counted: dict[Kind, int] = {}
        for kind in kinds:
            counted[kind] = counted.get(kind, 0) + 1
        for kind, count in counted.items():
            self.push_triggers.labels(kind=kind.value).inc(count)
        trigger = trigger_of(counted)
        for push in pushes:
            self.pushed(push, trigger)

    def pushed(self, push: ProxyPush, trigger: str) -> None:
        self.types_pushed(push.changed.keys() | push.removed.keys(), trigger)

    def types_pushed(self, type_urls: Iterable[str], trigger: str) -> None:
        """One proxy's snapshot changed `type_urls`."""
        for type_url in type_urls:
            self.pushes.labels(type=short_type(type_url), trigger=trigger).inc()

    def merged(self) -> None:
        self.debounce_merges.inc()

    def validation_failed(self, type_url: str) -> None:
        self.validation_failures.labels(type=short_type(type_url)).inc()
