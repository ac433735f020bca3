"""The Kubernetes source against an emulated API server, over real HTTP, via the official client.

`kube_fixtures.ApiServerEmulator` speaks the list/watch protocol (resourceVersions,
bounded history, 410 Gone, bookmarks, timeoutSeconds, label selectors, paging);
each test drives it the way a real cluster misbehaves and checks what the
source emits, counted ChangeSet by ChangeSet.  The pure pieces (the per-watch
object state, backoff, the builder's use of Pods) are specified directly.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("kube_fixtures")  # also a plugin (its fixtures), below

from kube_fixtures import (
    ENDPOINT_SLICES,
    FAST,
    PODS,
    SERVICES,
    ApiServerEmulator,
    endpoint_slice,
    pod,
    service,
    unavailable,
)
from kubernetes import client

from xds_server.cache import SnapshotCache
from xds_server.cli import main
from xds_server.model import ChangeSet, Kind, ObjectKey, Proxy, Service, ServicePort, Workload
from xds_server.model.changes import MeshObject
from xds_server.model.types import labels_of
from xds_server.pipeline import SnapshotBuilder
from xds_server.pipeline.builder import workload_of
from xds_server.provenance import Origin
from xds_server.resources import LISTENER
from xds_server.settings import KubernetesSettings, Settings
from xds_server.sources.k8s_kinds import MESH_KINDS, WatchedKind, convert_from_api, core_v1_lists
from xds_server.sources.k8s_retry import Backoff
from xds_server.sources.k8s_state import WatchedObjects
from xds_server.sources.kubernetes import KubernetesSource, load_configuration

pytest_plugins = ("kube_fixtures",)

pytestmark = pytest.mark.timeout(60)

WAIT_S = 5.0


def service_key(name: str, namespace: str = "default") -> ObjectKey:
    return ObjectKey(Kind.SERVICE, namespace, name)


def slice_key(name: str, namespace: str = "default") -> ObjectKey:
    return ObjectKey(Kind.ENDPOINT_SLICE, namespace, name)


def pod_key(name: str, namespace: str = "default") -> ObjectKey:
    return ObjectKey(Kind.WORKLOAD, namespace, name)


async def eventually(check: Callable[[], object], *, within: float = WAIT_S) -> None:
    """Poll `check()` (state outside the source, e.g. the emulator) until truthy, bounded."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the emulator has no event to wait on
            await asyncio.sleep(0.02)


@dataclass
class Recorder:
    """An `emit` that keeps every ChangeSet and the mesh they add up to."""

    changesets: list[ChangeSet] = field(default_factory=list)
    mesh: dict[ObjectKey, MeshObject] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, changes: ChangeSet) -> None:
        self.changesets.append(changes)
        for key in changes.deletes:
            self.mesh.pop(key, None)
        self.mesh.update(changes.upserts)
        self._arrived.set()

    async def until(self, check: Callable[[], object], *, within: float = WAIT_S) -> None:
        async with asyncio.timeout(within):
            while not check():
                self._arrived.clear()
                await self._arrived.wait()

    def upserts(self, key: ObjectKey, since: int = 0) -> int:
        return sum(key in changes.upserts for changes in self.changesets[since:])

    def deletes(self, key: ObjectKey, since: int = 0) -> int:
        return sum(key in changes.deletes for changes in self.changesets[since:])


@dataclass
class Running:
    source: KubernetesSource
    recorder: Recorder
    ready: asyncio.Event
    task: asyncio.Task[None]


StartSource = Callable[..., Awaitable[Running]]


def watch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("watch ")]


@pytest.fixture
async def run_source(kube_configuration: client.Configuration) -> AsyncIterator[StartSource]:
    """Start a KubernetesSource on the emulated API; stop it, and check its threads are gone."""
    started: list[Running] = []

    async def start(
        settings: KubernetesSettings = FAST,
        *,
        kinds: Iterable[WatchedKind] = MESH_KINDS,
        wait_ready: bool = True,
    ) -> Running:
        source = KubernetesSource(
            settings, kinds=tuple(kinds), configuration=kube_configuration, rng=random.Random(7)
        )
        recorder, ready = Recorder(), asyncio.Event()
        running = Running(source, recorder, ready, asyncio.create_task(source.run(recorder, ready)))
        started.append(running)
        if wait_ready:
            await asyncio.wait_for(ready.wait(), WAIT_S)
        return running

    yield start

    for running in started:
        running.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running.task, 10)
    assert watch_threads() == []


# -- list, then watch ---------------------------------------------------------------


async def test_the_first_emit_is_the_whole_mesh_converted_like_the_file_source(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    manifests = [
        api_server.create(service("web")),
        api_server.create(service("api", namespace="shop")),
        api_server.create(endpoint_slice("web", ["10.1.0.5"], 8080)),
        api_server.create(pod("web-1", "10.1.0.5", labels={"app": "web"})),
    ]
    running = await run_source()

    assert len(running.recorder.changesets) == 1, "one ChangeSet, then ready"
    assert running.source.synced
    assert running.recorder.mesh == {
        ObjectKey.of(value): value
        for value in (convert_from_api(manifest) for manifest in manifests)
        if value is not None
    }
    assert running.source.errors == []


@pytest.mark.parametrize(
    ("resource", "added", "modified", "key"),
    [
        (SERVICES, service("web"), service("web", port=9090), service_key("web")),
        (
            ENDPOINT_SLICES,
            endpoint_slice("web", ["10.1.0.5"], 8080),
            endpoint_slice("web", ["10.1.0.5", "10.1.0.6"], 8080),
            slice_key("web-abcde"),
        ),
        (
            PODS,
            pod("web-1", None, labels={"app": "web"}),
            pod("web-1", "10.1.0.5", labels={"app": "web"}),
            pod_key("web-1"),
        ),
    ],
    ids=["Service", "EndpointSlice", "Pod"],
)
async def test_added_modified_and_deleted_are_emitted_once_each(
    api_server: ApiServerEmulator,
    run_source: StartSource,
    resource: tuple[str, str, str],
    added: dict[str, Any],
    modified: dict[str, Any],
    key: ObjectKey,
) -> None:
    running = await run_source()
    recorder = running.recorder

    api_server.create(added)
    await recorder.until(lambda: key in recorder.mesh)
    assert recorder.mesh[key] == convert_from_api(added)

    api_server.replace(modified)
    await recorder.until(lambda: recorder.mesh[key] == convert_from_api(modified))

    api_server.delete(resource, key.namespace, key.name)
    await recorder.until(lambda: key not in recorder.mesh)
    assert (recorder.upserts(key), recorder.deletes(key)) == (2, 1)
    assert len(recorder.changesets) == 4  # the initial (empty) mesh, then one per event


async def test_an_update_that_does_not_change_the_model_is_emitted_for_its_new_version(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    api_server.create(pod("web-1", "10.1.0.5", labels={"app": "web"}))
    running = await run_source()
    recorder = running.recorder
    before = recorder.mesh[pod_key("web-1")]

    churn = {"status": {"containerStatuses": [{"name": "app", "ready": True, "restartCount": 3}]}}
    api_server.patch(PODS, "default", "web-1", churn)
    churned_at = str(api_server.revision)
    await recorder.until(lambda: recorder.upserts(pod_key("web-1"), since=1))

    after = recorder.mesh[pod_key("web-1")]
    assert after == before  # the same value: nothing to translate
    assert after.origin is not None and after.origin.resource_version == churned_at
    assert len(recorder.changesets) == 2


# -- 410 Gone, dropped and silent connections, timeouts, bookmarks -------------------


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_relists_and_emits_every_missed_change_exactly_once(
    api_server: ApiServerEmulator, run_source: StartSource, gone_as_http: bool
) -> None:
    api_server.gone_as_http = gone_as_http
    for name in ("a", "b", "c"):
        api_server.create(service(name))
    running = await run_source()
    recorder = running.recorder
    synced = len(recorder.changesets)
    lists = len(api_server.list_requests(SERVICES))

    # While the watch is down: a modified, b deleted, d added, c untouched; then
    # the history the watch would resume from is gone.
    api_server.drop_watches()
    api_server.replace(service("a", port=81))
    api_server.delete(SERVICES, "default", "b")
    api_server.create(service("d"))
    api_server.compact()
    relisted_at = api_server.revision

    await recorder.until(lambda: service_key("d") in recorder.mesh)
    api_server.create(service("marker"))  # the same watch: everything before it has arrived
    await recorder.until(lambda: service_key("marker") in recorder.mesh)

    counts = {
        name: (
            recorder.upserts(service_key(name), synced),
            recorder.deletes(service_key(name), synced),
        )
        for name in ("a", "b", "c", "d", "marker")
    }
    assert counts == {"a": (1, 0), "b": (0, 1), "c": (0, 0), "d": (1, 0), "marker": (1, 0)}
    mesh_services = {key.name for key in recorder.mesh if key.kind is Kind.SERVICE}
    assert mesh_services == {"a", "c", "d", "marker"}
    service_a = recorder.mesh[service_key("a")]
    assert isinstance(service_a, Service) and service_a.ports[0].port == 81
    assert len(api_server.list_requests(SERVICES)) == lists + 1
    resumed = [r.params.get("resourceVersion") for r in api_server.watch_requests(SERVICES)]
    assert str(relisted_at) in resumed, "the watch after the relist starts at the list's version"
    await eventually(lambda: running.source.errors == [])


async def test_a_dropped_watch_reconnects_and_catches_up_without_relisting(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    api_server.create(service("a"))
    api_server.create(endpoint_slice("a", ["10.1.0.5"], 8080))
    running = await run_source()
    recorder = running.recorder
    synced = len(recorder.changesets)
    lists = {kind: len(api_server.list_requests(kind)) for kind in (SERVICES, ENDPOINT_SLICES)}
    watches = len(api_server.watch_requests(SERVICES))

    await eventually(lambda: api_server.open_watches == 3)
    with unavailable(api_server):
        assert api_server.drop_watches() == 3
        await eventually(lambda: len(api_server.watch_requests(SERVICES)) > watches + 1)
        api_server.replace(service("a", port=81))
        api_server.create(service("b"))
        api_server.replace(endpoint_slice("a", ["10.1.0.6"], 8080))
        await asyncio.sleep(0.2)
        assert len(recorder.changesets) == synced, "nothing arrives while the API is down"
        assert any("503" in str(error) for error in running.source.errors)

    api_server.create(service("marker"))
    await recorder.until(lambda: service_key("marker") in recorder.mesh)
    await recorder.until(lambda: recorder.upserts(slice_key("a-abcde"), synced) == 1)
    assert recorder.upserts(service_key("a"), synced) == 1
    assert recorder.upserts(service_key("b"), synced) == 1
    assert {kind: len(api_server.list_requests(kind)) for kind in lists} == lists, "no relist"
    await eventually(lambda: running.source.errors == [])


async def test_a_silent_connection_is_abandoned_after_the_read_timeout(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    running = await run_source()
    recorder = running.recorder
    await eventually(lambda: api_server.open_watches == 3)
    api_server.stall_watches()  # open but silent: no events, no bookmarks, no end
    api_server.create(service("late"))
    await asyncio.sleep(0.3)
    assert service_key("late") not in recorder.mesh

    # timeoutSeconds is 1-2 here and the margin 1s: the client gives up within 3s.
    await recorder.until(lambda: service_key("late") in recorder.mesh, within=6)
    assert len(api_server.list_requests(SERVICES)) == 1


async def test_watches_end_at_timeout_seconds_and_resume_where_they_were(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    api_server.create(service("a"))
    running = await run_source()
    await eventually(lambda: len(api_server.watch_requests(SERVICES)) >= 3, within=8)
    api_server.create(service("b"))
    await running.recorder.until(lambda: service_key("b") in running.recorder.mesh)

    params = [request.params for request in api_server.watch_requests(SERVICES)]
    assert all(p["allowWatchBookmarks"] == "true" for p in params)
    assert all(p["timeoutSeconds"] in ("1", "2") for p in params)
    versions = [int(p["resourceVersion"]) for p in params]
    assert versions == sorted(versions) and versions[0] >= 1
    assert len(api_server.list_requests(SERVICES)) == 1
    assert running.source.errors == []


async def test_bookmarks_let_a_quiet_watch_resume_after_the_history_moved_on(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    api_server.history_limit = 5
    api_server.create(pod("quiet", "10.1.0.5"))
    running = await run_source()
    await eventually(lambda: api_server.open_watches == 3)
    for port in range(8000, 8020):  # busy elsewhere: the pods' list version leaves the history
        api_server.apply(service("busy", port=port))
    busy_until = api_server.revision
    await asyncio.sleep(3 * api_server.bookmark_interval)  # the quiet watch gets a bookmark

    watches = len(api_server.watch_requests(PODS))
    api_server.drop_watches()
    await eventually(lambda: len(api_server.watch_requests(PODS)) > watches)
    resumed_from = int(api_server.watch_requests(PODS)[-1].params["resourceVersion"])
    assert resumed_from >= busy_until
    await asyncio.sleep(0.3)
    assert len(api_server.list_requests(PODS)) == 1, "no 410, no relist"
    assert running.source.errors == []


# -- lists: paging, expiry, selectors, namespaces -------------------------------------


async def test_a_paged_list_is_assembled_before_it_is_applied(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    for index in range(5):
        api_server.create(service(f"svc-{index}"))
    running = await run_source(KubernetesSettings(**{**FAST.__dict__, "list_page_size": 2}))

    assert len(running.recorder.changesets) == 1
    assert {key.name for key in running.recorder.mesh} == {f"svc-{i}" for i in range(5)}
    pages = api_server.list_requests(SERVICES)
    assert [p.params["limit"] for p in pages] == ["2", "2", "2"]
    assert [bool(p.params.get("continue")) for p in pages] == [False, True, True]


async def test_an_expired_continue_token_restarts_the_list(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    for index in range(5):
        api_server.create(service(f"svc-{index}"))
    expired: list[str] = []

    def expire_once(request: Any) -> None:
        continued = request.params.get("continue")
        if request.resource.plural == "services" and continued and not expired:
            expired.append(continued)
            api_server.expire_continue_tokens()

    api_server.list_hook = expire_once
    running = await run_source(KubernetesSettings(**{**FAST.__dict__, "list_page_size": 2}))

    assert {key.name for key in running.recorder.mesh} == {f"svc-{i}" for i in range(5)}
    tokens = [bool(p.params.get("continue")) for p in api_server.list_requests(SERVICES)]
    assert tokens == [False, True, False, True, True]
    assert len(running.recorder.changesets) == 1


async def test_a_kind_in_the_table_can_select_by_label_and_follows_objects_in_and_out(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    meshed_pods = WatchedKind(
        kind="Pod",
        api_version="v1",
        plural="pods",
        lists=core_v1_lists("list_namespaced_pod", "list_pod_for_all_namespaces"),
        label_selector="mesh in (on)",
    )
    api_server.create(pod("in", "10.1.0.5", labels={"mesh": "on"}))
    api_server.create(pod("out", "10.1.0.6", labels={"mesh": "off"}))
    running = await run_source(kinds=[meshed_pods])
    recorder = running.recorder
    assert set(recorder.mesh) == {pod_key("in")}

    api_server.patch(PODS, "default", "out", {"metadata": {"labels": {"mesh": "on"}}})
    await recorder.until(lambda: pod_key("out") in recorder.mesh)
    api_server.patch(PODS, "default", "in", {"metadata": {"labels": {"mesh": "off"}}})
    await recorder.until(lambda: pod_key("in") not in recorder.mesh)
    requests = [*api_server.list_requests(PODS), *api_server.watch_requests(PODS)]
    assert {r.params.get("labelSelector") for r in requests} == {"mesh in (on)"}


async def test_namespaces_get_a_watch_each_and_nothing_else_is_read(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    for namespace in ("a", "b", "c"):
        api_server.create(service("web", namespace=namespace))
    settings = KubernetesSettings(**{**FAST.__dict__, "namespaces": ("a", "b", "a")})
    running = await run_source(settings)

    assert set(running.recorder.mesh) == {service_key("web", "a"), service_key("web", "b")}
    assert len(running.source.watches) == 2 * len(MESH_KINDS)
    assert "v1 services in a" in running.source.watches
    api_server.create(service("api", namespace="b"))
    await running.recorder.until(lambda: service_key("api", "b") in running.recorder.mesh)
    requests = [
        request
        for kind in (SERVICES, ENDPOINT_SLICES, PODS)
        for request in (*api_server.list_requests(kind), *api_server.watch_requests(kind))
    ]
    assert {request.namespace for request in requests} == {"a", "b"}


# -- errors and readiness ---------------------------------------------------------------


async def test_an_invalid_object_keeps_its_last_good_version_and_names_the_field(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    good = api_server.create(service("web"))
    running = await run_source()
    recorder, source = running.recorder, running.source
    bad = service("web")
    bad["spec"]["ports"][0]["port"] = 0
    api_server.replace(bad)
    api_server.create({**service("broken"), "spec": {"ports": [{"port": "http"}]}})
    api_server.create(service("marker-1"))
    await recorder.until(lambda: service_key("marker-1") in recorder.mesh)

    assert recorder.mesh[service_key("web")] == convert_from_api(good)
    assert service_key("broken") not in recorder.mesh
    assert sorted(str(error) for error in source.errors) == [
        "v1 services in all namespaces: Service default/broken: spec.ports[0].port: "
        "must be an integer 1-65535, got 'http'",
        "v1 services in all namespaces: Service default/web: spec.ports[0].port: "
        "must be an integer 1-65535, got 0",
    ]

    api_server.replace(service("web", port=9090))
    api_server.delete(SERVICES, "default", "broken")
    api_server.create(service("marker-2"))
    await recorder.until(lambda: service_key("marker-2") in recorder.mesh)
    fixed = recorder.mesh[service_key("web")]
    assert isinstance(fixed, Service) and fixed.ports[0].port == 9090
    assert recorder.deletes(service_key("broken")) == 0
    assert source.errors == []


async def test_readiness_waits_for_the_first_list_of_every_kind(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    api_server.create(service("web"))
    api_server.create(endpoint_slice("web", ["10.1.0.5"], 8080))
    api_server.create(pod("web-1", "10.1.0.5", labels={"app": "web"}))
    with unavailable(api_server, "endpointslices"):
        running = await run_source(wait_ready=False)
        await eventually(lambda: len(api_server.list_requests(ENDPOINT_SLICES)) >= 3)
        await eventually(lambda: running.source.errors)
        assert [str(error) for error in running.source.errors] == [
            "discovery.k8s.io/v1 endpointslices in all namespaces: list failed: "
            "HTTP 503 Service Unavailable: the server is currently unavailable"
        ]
        assert not running.ready.is_set() and not running.source.synced
        assert running.recorder.changesets == [], "nothing before every kind is listed"

    await asyncio.wait_for(running.ready.wait(), WAIT_S)
    assert len(running.recorder.changesets) == 1
    assert set(running.recorder.mesh) == {
        service_key("web"),
        slice_key("web-abcde"),
        pod_key("web-1"),
    }
    assert running.source.errors == []


async def test_stopping_joins_every_thread_even_mid_read(
    api_server: ApiServerEmulator, run_source: StartSource
) -> None:
    running = await run_source()
    await eventually(lambda: api_server.open_watches == 3)
    api_server.stall_watches()
    assert len(watch_threads()) == len(MESH_KINDS)  # the CRD kinds' too, 404 and retrying
    started = time.monotonic()
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running.task, 5)
    assert time.monotonic() - started < 2.0
    assert watch_threads() == []


# -- the pure parts -------------------------------------------------------------------


def listed(manifest: dict[str, Any], version: int) -> dict[str, Any]:
    """As a list returns it: with a resourceVersion, without kind and apiVersion."""
    item = {k: v for k, v in manifest.items() if k not in ("kind", "apiVersion")}
    item["metadata"] = {**manifest["metadata"], "resourceVersion": str(version)}
    return item


def test_a_relist_emits_exactly_the_difference() -> None:
    objects = WatchedObjects("w", "v1", "Service", convert_from_api)
    first = objects.replace([listed(service(n), v) for n, v in (("a", 1), ("b", 2), ("c", 3))], "3")
    assert set(first.upserts) == {service_key("a"), service_key("b"), service_key("c")}

    again = objects.replace(
        [listed(service("a", port=81), 5), listed(service("c"), 3), listed(service("d"), 6)], "6"
    )
    assert set(again.upserts) == {service_key("a"), service_key("d")}
    assert again.deletes == {service_key("b")}
    assert objects.resource_version == "6"


def test_a_new_version_with_the_same_model_value_is_emitted_with_its_origin() -> None:
    objects = WatchedObjects("w", "v1", "Service", convert_from_api)
    objects.replace([listed(service("a"), 1)], "1")
    annotated = listed(service("a"), 2)
    annotated["metadata"]["annotations"] = {"note": "no effect on the mesh"}
    changes = objects.apply_event("MODIFIED", {"kind": "Service", "apiVersion": "v1", **annotated})
    assert changes.upserts == {service_key("a"): convert_from_api(service("a"))}
    assert changes.upserts[service_key("a")].origin == Origin(resource_version="2")
    assert objects.resource_version == "2"


def test_the_version_already_held_emits_nothing() -> None:
    objects = WatchedObjects("w", "v1", "Service", convert_from_api)
    objects.replace([listed(service("a"), 1)], "1")
    assert not objects.apply_event("MODIFIED", {"kind": "Service", "apiVersion": "v1",
                                                **listed(service("a"), 1)})  # fmt: skip
    assert not objects.replace([listed(service("a"), 1)], "1")


def test_a_deletion_of_an_object_never_seen_is_harmless() -> None:
    objects = WatchedObjects("w", "v1", "Service", convert_from_api)
    objects.replace([], "1")
    assert not objects.apply_event("DELETED", service("ghost"))


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    delays = [backoff.next() for _ in range(6)]
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(cap / 2 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))
    backoff.reset()
    assert backoff.next() <= 0.5


# -- a sidecar gets the config of its own Pod ---------------------------------------------

WEB = Service("default", "web", (ServicePort(8080, "http"),), selector=labels_of({"app": "web"}))


def pod_mesh(*workloads: Workload) -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    changes = ChangeSet()
    changes.upsert(WEB)
    for workload in workloads:
        changes.upsert(workload)
    builder.apply(changes)
    builder.mark_synced()
    return cache, builder


def inbound_listeners(cache: SnapshotCache, node_id: str) -> set[str]:
    snapshot = cache.get_snapshot(node_id)
    assert snapshot is not None
    return {name for name in snapshot.get(LISTENER) if name.startswith("inbound")}


@pytest.mark.parametrize(
    "declared",
    [
        Proxy(node_id="web-1.default"),
        Proxy(node_id="sidecar~10.1.0.5", ip="10.1.0.5"),
    ],
    ids=["by-node-id", "by-instance-ip"],
)
def test_a_proxy_in_a_known_pod_takes_its_labels_account_and_ip(declared: Proxy) -> None:
    web_1 = Workload("default", "web-1", labels_of({"app": "web"}), "web-sa", "10.1.0.5")
    cache, builder = pod_mesh(web_1)
    builder.add_proxy(declared)
    proxy = builder.proxies[declared.node_id]
    assert (proxy.labels, proxy.service_account, proxy.ip) == (web_1.labels, "web-sa", "10.1.0.5")
    assert inbound_listeners(cache, declared.node_id) == {"inbound_8080"}


def test_a_pod_change_republishes_its_proxy_and_no_other() -> None:
    web_1 = Workload("default", "web-1", labels_of({"app": "web"}), "default", "10.1.0.5")
    cache, builder = pod_mesh(web_1)
    builder.add_proxy(Proxy(node_id="web-1.default"))
    builder.add_proxy(Proxy(node_id="client-0.default"))
    others_before = cache.get_snapshot("client-0.default")

    relabelled = ChangeSet()
    relabelled.upsert(
        Workload("default", "web-1", labels_of({"app": "api"}), "default", "10.1.0.5")
    )
    builder.apply(relabelled)
    assert inbound_listeners(cache, "web-1.default") == set()
    assert cache.get_snapshot("client-0.default") is others_before

    gone = ChangeSet()
    gone.delete(pod_key("web-1"))
    gone.upsert(web_1)  # a later change wins: back to app=web
    builder.apply(gone)
    assert inbound_listeners(cache, "web-1.default") == {"inbound_8080"}


def test_an_ip_shared_by_several_pods_names_none_of_them() -> None:
    shared = [
        Workload("default", f"host-{i}", labels_of({"app": "web"}), "default", "10.9.0.1")
        for i in range(2)
    ]
    _, builder = pod_mesh(*shared)
    assert workload_of(Proxy(node_id="x", ip="10.9.0.1"), builder.mesh) is None


# -- configuration and the command line ---------------------------------------------------


def test_the_kubeconfig_names_the_api_server(
    kubeconfig: Path, api_server: ApiServerEmulator
) -> None:
    configuration = load_configuration(kubeconfig)
    assert configuration.host == str(api_server.url).rstrip("/")


@pytest.mark.parametrize(
    ("source", "kind"),
    [("kubernetes", "kubernetes"), ("file:manifests", "file"), ("k8s", None), ("file:", None)],
)
def test_the_source_setting_is_file_or_kubernetes(source: str, kind: str | None) -> None:
    if kind is None:
        with pytest.raises(ValueError, match="expected file:DIR or kubernetes"):
            Settings(source=source).source_kind  # noqa: B018
    else:
        assert Settings(source=source).source_kind == kind


def test_serve_refuses_a_kubeconfig_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert main(["serve", "--source", "kubernetes", "--kubeconfig", str(missing)]) == 2
    assert capsys.readouterr().err == f"xds-server: kubeconfig {missing}: no such file\n"
    garbage = tmp_path / "garbage"
    garbage.write_text("just: text\n")
    assert main(["serve", "--source", "kubernetes", "--kubeconfig", str(garbage)]) == 2
    assert capsys.readouterr().err.startswith(f"xds-server: kubeconfig {garbage}: ")
