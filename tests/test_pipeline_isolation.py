"""One bad object costs only that object, wherever translation raises on it.

Sources validate what they send, but if translating an object still raises
(a value validation missed, a bug), the pipeline leaves that object out and
applies the rest of the batch: the mesh keeps the object's last good version
(so proxies keep what they had for it), the error names it, and its next
change (a fix, or a delete) clears the error.  Failures are injected into
each translation function for one Service, and real poisons (a lone
surrogate in a zone or a name, values no protobuf string can carry) are
built as model values directly, bypassing validation.  Nothing a batch
raises ends `MeshPipeline.run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_server import translate
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    MeshSnapshot,
    ObjectKey,
    Proxy,
    Service,
    ServicePort,
    Workload,
)
from xds_server.model.changes import MeshObject
from xds_server.pipeline import MeshPipeline, SnapshotBuilder
from xds_server.pipeline.errors import MAX_ERROR_CHARS
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, unpack
from xds_server.settings import DebounceSettings

CLIENT = Proxy(node_id="client.default")
WEB_POD = Proxy(node_id="web-0.default", ip="127.0.70.1", labels=(("app", "web"),))
"""Selected by `web`: it has inbound listeners and clusters of its own."""
CAPTURED = Proxy(node_id="captured.default", ip="127.0.70.2", interception="redirect")
PROXIES = (CLIENT, WEB_POD, CAPTURED)

POISON_PORT = 6666
"""The injected failures hit any Service declaring this port."""
SURROGATE = "x\ud800y"
"""A lone surrogate: valid in a Python str (and a YAML escape), not encodable as UTF-8."""


def service(name: str, *ports: int, selector: dict[str, str] | None = None) -> Service:
    return Service(
        "default",
        name,
        tuple(ServicePort(port, "http") for port in ports or (80,)),
        selector=tuple(sorted(selector.items())) if selector else None,
    )


def slice_of(name: str, *addresses: str, zone: str | None = None) -> EndpointSlice:
    return EndpointSlice(
        "default",
        f"{name}-slice",
        name,
        ports=(EndpointPort(8080, "http"),),
        endpoints=tuple(Endpoint((address,), zone=zone) for address in addresses),
    )


def changes(*objects: MeshObject, deleting: tuple[ObjectKey, ...] = ()) -> ChangeSet:
    batch = ChangeSet()
    for key in deleting:
        batch.delete(key)
    for obj in objects:
        batch.upsert(obj)
    return batch


def cluster(name: str, port: int = 80) -> str:
    return f"outbound|{port}||{name}.default.svc.cluster.local"


WEB = service("web", selector={"app": "web"})
BACKEND = service("backend")


def synced(*proxies: Proxy) -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(
        changes(WEB, slice_of("web", "127.0.50.1"), BACKEND, slice_of("backend", "127.0.51.1"))
    )
    for proxy in proxies:
        builder.add_proxy(proxy)
    builder.mark_synced()
    return cache, builder


def snapshot_of(cache: SnapshotCache, proxy: Proxy) -> Snapshot:
    snapshot = cache.get_snapshot(proxy.node_id)
    assert snapshot is not None
    return snapshot


def addresses(snapshot: Snapshot, cluster_name: str) -> set[str]:
    assignment = unpack(snapshot.get(ENDPOINT)[cluster_name])
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    return {
        lb.endpoint.address.socket_address.address
        for locality in assignment.endpoints
        for lb in locality.lb_endpoints
    }


def versions(snapshot: Snapshot) -> dict[str, dict[str, str]]:
    """Every resource of the snapshot by type: name -> version."""
    return {
        type_url: {name: r.version for name, r in snapshot.get(type_url).items()}
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    }


def errors_naming(builder: SnapshotBuilder, name: str) -> list[str]:
    return [error for shown, error in builder.translation_errors() if name in shown]


# -- injected failures, one per translation function ---------------------------------------


def poisoned(value: object) -> bool:
    if isinstance(value, Service):
        return any(port.port == POISON_PORT for port in value.ports)
    if isinstance(value, MeshSnapshot):
        return any(poisoned(s) for s in value.services.values())
    return False


def inject(monkeypatch: pytest.MonkeyPatch, function: str) -> None:
    """Make `translate.<function>` raise whenever it is handed a poisoned Service or mesh."""
    original: Callable[..., Any] = getattr(translate, function)

    def failing(*args: Any, **kwargs: Any) -> Any:
        if any(poisoned(arg) for arg in args):
            raise RuntimeError(f"injected failure in {function}")
        return original(*args, **kwargs)

    monkeypatch.setattr(translate, function, failing)


TRANSLATE_FUNCTIONS = [
    "clusters_for_service",
    "load_assignments_for_service",
    "outbound_route_tables",
    "proxy_listeners",
    "proxy_clusters",
]


@pytest.mark.parametrize("function", TRANSLATE_FUNCTIONS)
def test_a_service_whose_translation_raises_keeps_its_last_good_version_and_the_rest_applies(
    monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    cache, builder = synced(*PROXIES)
    before = {proxy.node_id: versions(snapshot_of(cache, proxy)) for proxy in PROXIES}
    inject(monkeypatch, function)

    builder.apply(
        changes(
            service("backend", 80, POISON_PORT),
            slice_of("web", "127.0.50.1", "127.0.50.2"),
            service("extra"),
        )
    )

    for proxy in PROXIES:
        snapshot = snapshot_of(cache, proxy)
        assert builder.proxy_error(proxy.node_id) is None
        # Every other change reached every proxy...
        assert addresses(snapshot, cluster("web")) == {"127.0.50.1", "127.0.50.2"}
        assert cluster("extra") in snapshot.get(CLUSTER)
        # ...and backend is served exactly as before.
        assert cluster("backend", POISON_PORT) not in snapshot.get(CLUSTER)
        old = before[proxy.node_id]
        for type_url, name in ((CLUSTER, cluster("backend")), (ENDPOINT, cluster("backend"))):
            assert snapshot.get(type_url)[name].version == old[type_url][name]
    assert builder.mesh.services[("default", "backend")] == BACKEND
    [error] = errors_naming(builder, "Service default/backend")
    assert f"injected failure in {function}" in error
    assert "its last good version stays in force" in error
    assert len(builder.translation_errors()) == 1


@pytest.mark.parametrize(
    "recovery",
    [changes(service("backend", 80, 8080)), changes(deleting=(ObjectKey.of(BACKEND),))],
    ids=["fixed", "deleted"],
)
@pytest.mark.parametrize("function", TRANSLATE_FUNCTIONS)
def test_the_error_clears_when_the_object_is_fixed_or_deleted(
    monkeypatch: pytest.MonkeyPatch, function: str, recovery: ChangeSet
) -> None:
    cache, builder = synced(*PROXIES)
    inject(monkeypatch, function)
    builder.apply(changes(service("backend", 80, POISON_PORT)))
    assert errors_naming(builder, "backend")

    builder.apply(recovery)

    assert builder.translation_errors() == []
    fixed = bool(recovery.upserts)
    for proxy in PROXIES:
        clusters = snapshot_of(cache, proxy).get(CLUSTER)
        assert (cluster("backend", 8080) in clusters) is fixed
        assert (cluster("backend") in clusters) is fixed


def test_a_poisoned_new_object_stays_out_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    cache, builder = synced(CLIENT)
    inject(monkeypatch, "clusters_for_service")

    builder.apply(changes(service("fresh", POISON_PORT), service("other")))

    assert ("default", "fresh") not in builder.mesh.services
    assert cluster("other") in snapshot_of(cache, CLIENT).get(CLUSTER)
    [error] = errors_naming(builder, "Service default/fresh")
    assert "stays out of the mesh until fixed" in error


# -- real poisons: values no protobuf string can carry -------------------------------------


@pytest.mark.parametrize(
    ("poison", "blamed", "kept"),
    [
        (
            slice_of("web", "127.0.50.9", zone=SURROGATE),
            "EndpointSlice default/web-slice",
            True,
        ),
        (service(f"new-{SURROGATE}"), "Service default/new-x\\ud800y", False),
        (
            Service(f"ns-{SURROGATE}", "web", (ServicePort(80, "http"),)),
            "Service ns-x\\ud800y/web",
            False,
        ),
    ],
    ids=["zone", "service-name", "service-namespace"],
)
def test_a_lone_surrogate_does_not_crash_translation_it_drops_the_object(
    poison: MeshObject, blamed: str, kept: bool
) -> None:
    cache, builder = synced(*PROXIES)
    before = versions(snapshot_of(cache, CLIENT))

    builder.apply(changes(poison, slice_of("backend", "127.0.51.1", "127.0.51.2")))

    snapshot = snapshot_of(cache, CLIENT)
    assert addresses(snapshot, cluster("backend")) == {"127.0.51.1", "127.0.51.2"}
    assert addresses(snapshot, cluster("web")) == {"127.0.50.1"}  # the last good slice
    assert snapshot.get(CLUSTER).keys() == before[CLUSTER].keys()
    [error] = errors_naming(builder, blamed)
    assert "UnicodeEncodeError" in error
    assert ("last good version stays in force" in error) is kept
    error.encode("utf-8")  # the error itself can be logged and served


def test_a_slice_that_only_fails_once_its_service_arrives_is_blamed_not_the_service() -> None:
    cache, builder = synced(CLIENT)
    builder.apply(changes(slice_of("late", "127.0.52.1", zone=SURROGATE)))  # nothing translates it
    assert builder.translation_errors() == []

    builder.apply(changes(service("late")))

    snapshot = snapshot_of(cache, CLIENT)
    assert cluster("late") in snapshot.get(CLUSTER)
    assert addresses(snapshot, cluster("late")) == set()
    [error] = errors_naming(builder, "EndpointSlice default/late-slice")
    assert "stays out of the mesh until fixed" in error
    assert errors_naming(builder, "Service") == []

    builder.apply(changes(slice_of("late", "127.0.52.1", zone="zone-a")))

    assert builder.translation_errors() == []
    assert addresses(snapshot_of(cache, CLIENT), cluster("late")) == {"127.0.52.1"}


def test_a_pod_that_makes_its_proxy_raise_is_dropped_and_the_proxy_keeps_its_identity() -> None:
    pod_proxy = Proxy(node_id="pod-x", ip="127.0.70.5")
    cache, builder = synced(pod_proxy, CLIENT)
    before = snapshot_of(cache, pod_proxy)

    builder.apply(
        changes(
            Workload(f"ns-{SURROGATE}", "pod-x", ip="127.0.70.5"),  # moves it to that namespace
            Workload("default", "client", labels=(("app", "web"),), ip="127.0.70.6"),
        )
    )

    assert builder.proxies[pod_proxy.node_id].namespace == "default"
    assert snapshot_of(cache, pod_proxy) is before
    assert builder.proxy_error(pod_proxy.node_id) is None
    assert builder.proxies[CLIENT.node_id].labels == (("app", "web"),)  # the other Pod applied
    [error] = errors_naming(builder, "Pod ns-x\\ud800y/pod-x")
    assert "UnicodeEncodeError" in error


def test_a_proxy_whose_own_translation_raises_keeps_its_snapshot_and_the_others_move_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, builder = synced(CLIENT, WEB_POD)
    before = snapshot_of(cache, CLIENT)
    original = translate.proxy_listeners

    def failing_for_client(mesh: MeshSnapshot, proxy: Proxy) -> Any:
        if proxy.node_id == CLIENT.node_id:
            raise ValueError("injected failure for the client")
        return original(mesh, proxy)

    monkeypatch.setattr(translate, "proxy_listeners", failing_for_client)

    # A new TCP port is one the client's own listeners read (its outbound TCP
    # listeners), so the change re-translates it.
    extra = Service("default", "extra", (ServicePort(5432, "tcp-db"),))
    builder.apply(changes(extra))

    assert snapshot_of(cache, CLIENT) is before
    assert "injected failure for the client" in (builder.proxy_error(CLIENT.node_id) or "")
    assert cluster("extra", 5432) in snapshot_of(cache, WEB_POD).get(CLUSTER)
    assert builder.translation_errors() == []  # no object is to blame

    monkeypatch.undo()
    builder.apply(changes(service("more")))

    assert builder.proxy_error(CLIENT.node_id) is None
    assert {cluster("extra", 5432), cluster("more")} <= snapshot_of(cache, CLIENT).get(
        CLUSTER
    ).keys()


# -- the pipeline: start-up and the loop ------------------------------------------------------


def test_initial_sync_with_a_poisoned_object_serves_everything_else() -> None:
    cache = SnapshotCache()
    pipeline = MeshPipeline(cache)

    pipeline.initial_sync(
        changes(
            WEB,
            slice_of("web", "127.0.50.1", zone=SURROGATE),
            BACKEND,
            slice_of("backend", "127.0.51.1"),
        )
    )
    pipeline.node_connected(node_of(CLIENT))

    assert pipeline.ready
    snapshot = snapshot_of(cache, CLIENT)
    assert addresses(snapshot, cluster("backend")) == {"127.0.51.1"}
    assert addresses(snapshot, cluster("web")) == set()
    [(shown, _)] = pipeline.translation_errors()
    assert shown == "EndpointSlice default/web-slice"


def node_of(proxy: Proxy) -> Any:
    from envoy.config.core.v3 import base_pb2

    return base_pb2.Node(id=proxy.node_id)


FAST = DebounceSettings(quiet=0.001, max_delay=0.01, endpoint_quiet=0.001)


async def test_a_batch_that_raises_outside_translation_does_not_end_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = SnapshotCache()
    pipeline = MeshPipeline(cache, FAST)
    pipeline.initial_sync(changes(WEB))
    pipeline.node_connected(node_of(CLIENT))
    commit = SnapshotBuilder._commit

    def buggy_commit(self: SnapshotBuilder, plan: Any) -> None:
        if ("default", "bomb") in plan.mesh.services:
            raise RuntimeError("a bug outside translation")
        commit(self, plan)

    monkeypatch.setattr(SnapshotBuilder, "_commit", buggy_commit)
    loop = asyncio.create_task(pipeline.run())
    try:
        pipeline.submit(changes(service("bomb"), service("good")))
        await until(lambda: cluster("good") in snapshot_of(cache, CLIENT).get(CLUSTER))
        pipeline.submit(changes(service("later")))
        await until(lambda: cluster("later") in snapshot_of(cache, CLIENT).get(CLUSTER))

        assert not loop.done()
        assert cluster("bomb") not in snapshot_of(cache, CLIENT).get(CLUSTER)
        [(shown, error)] = pipeline.translation_errors()
        assert shown == "Service default/bomb"
        assert "a bug outside translation" in error

        monkeypatch.undo()
        pipeline.submit(changes(service("bomb", 81)))
        await until(lambda: cluster("bomb", 81) in snapshot_of(cache, CLIENT).get(CLUSTER))
        assert pipeline.translation_errors() == []
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (bounded) for `condition()`, yielding to the pipeline loop."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_a_delete_exposing_a_bad_pod_at_a_proxy_s_address_takes_that_pod_out() -> None:
    """The batch changes only a good Pod; the bad one, already held, is to blame."""
    proxy = Proxy(node_id="pod-x", ip="127.0.70.5")
    good = Workload("default", "pod-x", labels=(("app", "web"),), ip=proxy.ip)
    bad = Workload(f"ns-{SURROGATE}", "pod-x", labels=(("app", "web"),), ip=proxy.ip)
    builder = SnapshotBuilder(SnapshotCache())
    builder.add_proxy(proxy)
    builder.mark_synced()
    builder.apply(changes(good, bad))  # the proxy is in the good Pod's namespace: it wins
    assert builder.proxy_error(proxy.node_id) is None

    gone = ChangeSet()
    gone.delete(ObjectKey.of(good))
    builder.apply(gone)

    assert builder.proxy_error(proxy.node_id) is None
    assert ObjectKey.of(bad) in dict(builder.object_errors.items())
    assert (bad.namespace, bad.name) not in builder.mesh.workloads


# -- the invariant: incremental equals a from-scratch build of what was kept -----------------

ZONES = st.sampled_from([None, "zone-a", SURROGATE])
VERSIONS: dict[str, st.SearchStrategy[MeshObject]] = {
    "svc-a": st.builds(lambda p: service("svc-a", p), st.sampled_from([80, 8080])),
    "svc-b": st.builds(
        lambda p: service("svc-b", p, selector={"app": "web"}), st.sampled_from([80, 9090])
    ),
    "bad-name": st.just(service(f"bad-{SURROGATE}")),
    "slice-a": st.builds(lambda z: slice_of("svc-a", "127.0.53.1", zone=z), ZONES),
    "slice-b": st.builds(lambda z: slice_of("svc-b", "127.0.53.2", zone=z), ZONES),
    "pod": st.builds(
        lambda ns: Workload(ns, "pod-x", labels=(("app", "web"),), ip="127.0.70.5"),
        st.sampled_from(["default", f"ns-{SURROGATE}"]),
    ),
}
STEP = st.tuples(st.sampled_from(sorted(VERSIONS)), st.booleans()).flatmap(
    lambda pick: (VERSIONS[pick[0]] if pick[1] else st.none()).map(lambda obj: (pick[0], obj))
)
ROUND_PROXIES = (CLIENT, Proxy(node_id="pod-x", ip="127.0.70.5"), CAPTURED)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(STEP, min_size=1, max_size=4), min_size=1, max_size=6))
def test_whatever_the_changes_every_object_is_applied_or_named_and_nothing_else_differs(
    batches: list[list[tuple[str, MeshObject | None]]],
) -> None:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    for proxy in ROUND_PROXIES:
        builder.add_proxy(proxy)
    builder.mark_synced()
    held: dict[ObjectKey, MeshObject] = {}
    """What the source holds now."""
    origin: dict[ObjectKey, str] = {}
    for steps in batches:
        batch = ChangeSet()
        for name, obj in steps:
            if obj is None:  # delete whatever this entry made
                for key in [k for k, made_by in origin.items() if made_by == name]:
                    batch.delete(key)
                    held.pop(key, None)
                    origin.pop(key)
            else:
                batch.upsert(obj)
                held[ObjectKey.of(obj)] = obj
                origin[ObjectKey.of(obj)] = name
        builder.apply(batch)

    errors = builder.object_errors
    kept = {
        ObjectKey.of(obj): obj
        for table in (
            builder.mesh.services,
            builder.mesh.endpoint_slices,
            builder.mesh.workloads,
        )
        for obj in table.values()
    }
    for key, obj in held.items():  # applied as the source says, or named
        assert kept.get(key) == obj or key in errors, key
    for key in kept.keys() - held.keys():
        raise AssertionError(f"{key} was deleted but is still in the mesh")
    for key, _ in errors.items():
        assert key in held, f"{key} is gone but still listed"
    # The mesh that was kept translates from scratch to exactly what proxies are served.
    fresh_cache = SnapshotCache()
    fresh = SnapshotBuilder(fresh_cache)
    fresh.apply(changes(*kept.values()))
    for proxy in ROUND_PROXIES:
        fresh.add_proxy(proxy)
    fresh.mark_synced()
    assert fresh.translation_errors() == []
    for proxy in ROUND_PROXIES:
        assert builder.proxy_error(proxy.node_id) is None
        assert versions(snapshot_of(cache, proxy)) == versions(snapshot_of(fresh_cache, proxy))


# -- bounded memory and text -------------------------------------------------------------------


def test_errors_of_a_churn_of_distinct_failing_objects_stay_within_the_cap() -> None:
    from xds_server.pipeline.errors import ErrorTable

    cache, builder = synced(CLIENT)
    builder.object_errors = ErrorTable(cap=50)
    for i in range(300):
        builder.apply(changes(service(f"bad-{i}-{SURROGATE}")))

    assert len(builder.object_errors) == 50
    assert builder.object_errors.evicted == 250
    assert [shown for shown, _ in builder.translation_errors()][-1].startswith(
        "Service default/bad-299"
    )
    assert cluster("web") in snapshot_of(cache, CLIENT).get(CLUSTER)


def test_errors_of_objects_fixed_or_deleted_are_forgotten() -> None:
    _, builder = synced(CLIENT)
    bad = [service(f"bad-{i}-{SURROGATE}") for i in range(100)]
    builder.apply(changes(*bad[:50]))
    builder.apply(changes(*bad[50:]))
    assert len(builder.translation_errors()) == 100

    builder.apply(changes(deleting=tuple(ObjectKey.of(s) for s in bad)))

    assert builder.translation_errors() == []


def test_metadata_errors_of_nodes_that_come_and_go_are_forgotten() -> None:
    from envoy.config.core.v3 import base_pb2
    from google.protobuf import struct_pb2

    pipeline = MeshPipeline(SnapshotCache())
    pipeline.initial_sync(changes(WEB))
    for i in range(500):
        metadata = struct_pb2.Struct()
        metadata.update({"OUTBOUND_PORT": "not a port"})
        node = base_pb2.Node(id=f"bad-{i}.default", metadata=metadata)
        pipeline.node_connected(node)
        assert "OUTBOUND_PORT" in (pipeline.node_errors.get(node.id) or "")
        pipeline.node_disconnected(node.id)

    assert len(pipeline.node_errors) == 0


def test_an_error_about_a_huge_object_is_bounded_and_encodable() -> None:
    _, builder = synced(CLIENT)
    huge = service("n" * 5_000_000 + SURROGATE)

    builder.apply(changes(huge))

    [(shown, error)] = builder.translation_errors()
    assert len(error) <= MAX_ERROR_CHARS
    assert len(shown) <= MAX_ERROR_CHARS
    error.encode("utf-8")
    assert error.startswith("Service default/nnnn")


def test_the_pipeline_bounds_errors_as_the_sources_do() -> None:
    from xds_server.sources import limits

    assert limits.MAX_ERROR_CHARS == MAX_ERROR_CHARS
