"""Pipeline metrics: pushes by xDS type and trigger, build time, debounce merges, validation.

Driven through the real builder and debouncer with a `PipelineMetrics` on a
registry of the test's own, read back as Prometheus samples.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from translate_builders import endpoint, endpoint_slice, http, proxy, service

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Kind
from xds_server.model.changes import MeshObject
from xds_server.model.policy import BackendPolicy
from xds_server.pipeline import MeshPipeline, PipelineMetrics, SnapshotBuilder
from xds_server.pipeline.debounce import Debouncer
from xds_server.pipeline.metrics import trigger_of
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.settings import DebounceSettings
from xds_server.translate import backend_policy

WEB = service("web", http(8080), selector={"app": "web"})
WEB_SLICE = endpoint_slice(WEB, endpoint("127.0.1.1"))
CLIENT = proxy("client-1", ip="127.0.2.1")
KINDS = ("Service", "EndpointSlice")


def changes_of(*objects: MeshObject) -> ChangeSet:
    batch = ChangeSet()
    for obj in objects:
        batch.upsert(obj)
    return batch


def instrumented() -> tuple[SnapshotBuilder, CollectorRegistry]:
    registry = CollectorRegistry()
    builder = SnapshotBuilder(SnapshotCache())
    builder.metrics = PipelineMetrics(registry)
    return builder, registry


def synced(builder: SnapshotBuilder) -> SnapshotBuilder:
    builder.apply(changes_of(WEB, WEB_SLICE))
    builder.add_proxy(CLIENT)
    builder.mark_synced()
    return builder


def pushes(registry: CollectorRegistry, type_: str, trigger: str) -> float:
    value = registry.get_sample_value("xds_pushes_total", {"type": type_, "trigger": trigger})
    return value or 0.0


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("kinds", "trigger"),
    [
        ((), "proxy"),
        ((Kind.SERVICE,), "Service"),
        ((Kind.ENDPOINT_SLICE, Kind.ENDPOINT_SLICE), "EndpointSlice"),
        ((Kind.SERVICE, Kind.ENDPOINT_SLICE), "mixed"),
    ],
)
def test_a_batch_s_trigger_is_its_one_kind_mixed_for_several_proxy_for_none(
    kinds: tuple[Kind, ...], trigger: str
) -> None:
    assert trigger_of(kinds) == trigger


def test_a_proxy_s_first_snapshot_counts_one_push_per_type_triggered_by_the_proxy() -> None:
    builder, registry = instrumented()
    synced(builder)
    for type_ in ("CDS", "EDS", "LDS", "RDS"):
        assert pushes(registry, type_, "proxy") == 1, type_
    assert pushes(registry, "SDS", "proxy") == 0, "no certificate: no secret"
    assert sample(registry, "xds_push_build_seconds_count", scope="proxy") == 1


def test_a_proxy_translated_again_to_the_same_snapshot_counts_no_push() -> None:
    builder, registry = instrumented()
    synced(builder)
    builder.republish()
    for type_ in ("CDS", "EDS", "LDS", "RDS"):
        assert pushes(registry, type_, "proxy") == 1, type_
    assert sample(registry, "xds_push_build_seconds_count", scope="proxy") == 2


def test_an_endpoint_change_counts_an_eds_push_per_proxy_triggered_by_endpoint_slices() -> None:
    builder, registry = instrumented()
    synced(builder)
    builder.add_proxy(proxy("client-2", ip="127.0.2.2"))
    batches = sample(registry, "xds_push_build_seconds_count", scope="batch")
    triggers = sample(registry, "xds_push_triggers_total", kind="EndpointSlice")

    builder.apply(changes_of(endpoint_slice(WEB, endpoint("127.0.1.1"), endpoint("127.0.1.2"))))

    assert pushes(registry, "EDS", "EndpointSlice") == 2, "one per proxy holding it"
    for type_ in ("CDS", "LDS", "RDS"):
        assert pushes(registry, type_, "EndpointSlice") == 0, type_
    assert sample(registry, "xds_push_triggers_total", kind="EndpointSlice") == triggers + 1
    assert sample(registry, "xds_push_build_seconds_count", scope="batch") == batches + 1
    assert sample(registry, "xds_push_build_seconds_sum", scope="batch") > 0


def test_a_batch_of_several_kinds_is_one_mixed_push_and_each_change_a_trigger() -> None:
    builder, registry = instrumented()
    synced(builder)
    other = service("api", http(9090), selector={"app": "api"})

    before = {kind: sample(registry, "xds_push_triggers_total", kind=kind) for kind in KINDS}

    builder.apply(changes_of(other, endpoint_slice(other, endpoint("127.0.1.9"))))

    assert pushes(registry, "CDS", "mixed") == 1
    assert pushes(registry, "EDS", "mixed") == 1
    after = {kind: sample(registry, "xds_push_triggers_total", kind=kind) for kind in KINDS}
    assert {kind: after[kind] - before[kind] for kind in KINDS} == {kind: 1 for kind in KINDS}


def test_no_label_names_a_node_or_an_object() -> None:
    builder, registry = instrumented()
    synced(builder)
    builder.apply(changes_of(endpoint_slice(WEB, endpoint("127.0.1.3"))))
    values = {
        value
        for family in registry.collect()
        for metric_sample in family.samples
        for value in metric_sample.labels.values()
    }
    assert values, "some labelled samples"
    assert not any("client" in value or "web" in value for value in values), values


def ring_policy(minimum_ring_size: int) -> BackendPolicy:
    """A namespace-wide RingHash policy; past Envoy's 8M only with translation's bound raised."""
    ring = {"algorithm": "RingHash", "ringHash": {"minimumRingSize": minimum_ring_size}}
    spec = json_format.ParseDict({"loadBalancer": ring}, api.BackendPolicySpec())
    return dataclasses.replace(BackendPolicy.of("default", "ring", spec), target_refs=())


@pytest.fixture
def unbounded_rings(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if translation forgot its own bound on ring sizes: Envoy's rule still holds."""
    monkeypatch.setattr(backend_policy, "MAX_RING_SIZE", 2**40)


@pytest.mark.usefixtures("unbounded_rings")
def test_an_object_left_out_for_breaking_an_envoy_rule_counts_a_validation_failure() -> None:
    builder, registry = instrumented()
    synced(builder)

    builder.apply(changes_of(ring_policy(9_000_000)))

    assert [shown for shown, _ in builder.translation_errors()] == ["BackendPolicy default/ring"]
    assert sample(registry, "xds_validation_failures_total", type="CDS") == 1
    builder.apply(changes_of(ring_policy(64)))
    assert builder.translation_errors() == []
    assert sample(registry, "xds_validation_failures_total", type="CDS") == 1


@pytest.mark.usefixtures("unbounded_rings")
def test_a_preview_of_a_failing_object_counts_no_validation_failure() -> None:
    builder, registry = instrumented()
    synced(builder)

    assert builder.preview(changes_of(ring_policy(9_000_000))).errors
    assert sample(registry, "xds_validation_failures_total", type="CDS") == 0


@pytest.mark.looptime
async def test_change_sets_joining_a_waiting_burst_count_as_debounce_merges() -> None:
    registry = CollectorRegistry()
    debouncer = Debouncer(DebounceSettings(quiet=0.1, max_delay=1.0, endpoint_quiet=0.01))
    debouncer.metrics = PipelineMetrics(registry)
    for name in ("a", "b", "c"):
        debouncer.submit(changes_of(service(name, http(80))))
        await asyncio.sleep(0.01)
    assert len(await debouncer.next_batch()) == 3
    debouncer.submit(changes_of(service("d", http(80))))  # a new burst: no merge
    assert len(await debouncer.next_batch()) == 1
    assert sample(registry, "xds_debounce_merges_total") == 2


def test_the_pipeline_hands_its_metrics_to_the_builder_and_the_debouncer() -> None:
    metrics = PipelineMetrics(CollectorRegistry())
    pipeline = MeshPipeline(SnapshotCache(), metrics=metrics)
    assert pipeline.builder.metrics is metrics
    assert pipeline._debouncer.metrics is metrics
    pipeline.metrics = None
    assert pipeline.builder.metrics is None and pipeline._debouncer.metrics is None
