"""Spec: every object a source emits says where it was read, and every ChangeSet when it was seen.

Provenance starts in the sources.  In file mode an object's `Origin` is its
file (the path as the file source's errors show it: the watched directory
joined with the path under it) and the index of its YAML document; in
Kubernetes mode its uid and resourceVersion.  Origins are not part of an
object's value, yet an object that only moved (another document, another
file) or only gained a resourceVersion is emitted again, so the mesh holds
the origin in force.

`ChangeSet.observed_at` is where push latency starts: when the file watcher
saw the change (not when a large file's parse ended), or when the watch event
or list response arrived.  It is never later than the ChangeSet's arrival.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("kube_fixtures")  # also a plugin (its fixtures), below

from file_source_fixtures import (
    Mesh,
    key,
    replace_file,
    running_source,
    service,
    slice_key,
    slices_of_size,
    svc,
    until,
    write,
)
from kube_fixtures import (
    ENDPOINT_SLICES,
    FAST,
    PODS,
    SERVICES,
    ApiServerEmulator,
    ResourceKey,
    endpoint_slice,
    pod,
)
from kube_fixtures import service as api_service
from kubernetes import client

from xds_server.model import ChangeSet, Kind, ObjectKey
from xds_server.model.changes import MeshObject
from xds_server.provenance import Origin
from xds_server.sources import limits
from xds_server.sources.file import FileSource
from xds_server.sources.file_state import DirectoryState, FileState, parse_file
from xds_server.sources.kubernetes import KubernetesSource

pytest_plugins = ("kube_fixtures",)

pytestmark = pytest.mark.timeout(90)

POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1}\nstatus: {podIP: 10.0.0.1}\n"
SLICE = (
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
    "metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}\n"
    "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]\n"
)
LIST = (
    "apiVersion: v1\nkind: List\nitems:\n"
    "  - {apiVersion: v1, kind: Service, metadata: {name: x}, spec: {ports: [{port: 80}]}}\n"
    "  - {apiVersion: v1, kind: Service, metadata: {name: y}, spec: {ports: [{port: 80}]}}\n"
)


def shown(obj: MeshObject) -> str:
    return f"{ObjectKey.of(obj).kind.value}/{obj.name}"


def origins_in(state: FileState) -> dict[str, tuple[str | None, int | None]]:
    return {
        shown(obj): (obj.origin.file, obj.origin.document) if obj.origin else (None, None)
        for obj in state.objects.values()
    }


# -- file mode: which file, which document ----------------------------------------------------


def oversized_then(text: str) -> str:
    """A first document over the size limit (refused, unread), then `text`."""
    return "status: '" + "z" * limits.MAX_DOCUMENT_BYTES + "'\n---\n" + text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(svc("x") + "---\n" + SLICE + "---\n" + POD,
                     {"Service/x": 0, "EndpointSlice/web-1": 1, "Pod/web-1": 2},
                     id="one-object-per-document"),
        pytest.param(svc("x") + "---\n---\n# nothing but a comment\n---\n" + svc("y"),
                     {"Service/x": 0, "Service/y": 3}, id="empty-documents-count"),
        pytest.param("# a header comment, not a document\n---\n" + svc("x"),
                     {"Service/x": 0}, id="leading-comment-is-no-document"),
        pytest.param(POD + "---\n" + LIST, {"Pod/web-1": 0, "Service/x": 1, "Service/y": 1},
                     id="list-items-share-their-document"),
        pytest.param(svc("x") + "---\nkind: Service\n---\n" + svc("y"),
                     {"Service/x": 0, "Service/y": 2}, id="an-invalid-document-counts"),
        pytest.param(oversized_then(svc("x")), {"Service/x": 1},
                     id="an-oversized-leading-document-counts"),
    ],
)  # fmt: skip
def test_each_object_names_its_file_and_document(text: str, expected: dict[str, int]) -> None:
    state = parse_file(Path("manifests/a.yaml"), text.encode())
    assert origins_in(state) == {name: ("manifests/a.yaml", doc) for name, doc in expected.items()}


def test_a_directory_names_each_objects_file_as_its_errors_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "manifests" / "a.yaml", svc("x"), svc("y"))
    write(tmp_path / "manifests" / "team" / "b.yaml", SLICE, POD, "kind: Service\n")
    source = FileSource(Path("manifests"))
    before = time.time()
    changes = source.load()

    assert {shown(obj): obj.origin for obj in changes.upserts.values()} == {
        "Service/x": Origin(file="manifests/a.yaml", document=0),
        "Service/y": Origin(file="manifests/a.yaml", document=1),
        "EndpointSlice/web-1": Origin(file="manifests/team/b.yaml", document=0),
        "Pod/web-1": Origin(file="manifests/team/b.yaml", document=1),
    }
    (error,) = source.errors
    assert str(error).startswith("manifests/team/b.yaml:")
    assert changes.observed_at is not None and before <= changes.observed_at <= time.time()


Files = Mapping[str, list[str] | None]
"""File name -> its documents (None: the file is removed)."""


def fold(state: DirectoryState, files: Files) -> tuple[DirectoryState, ChangeSet]:
    changed: dict[Path, FileState | None] = {
        Path(name): None
        if documents is None
        else parse_file(Path(name), "---\n".join(documents).encode(), state.files.get(Path(name)))
        for name, documents in files.items()
    }
    return state.update(changed)


@pytest.mark.parametrize(
    ("before", "after", "emitted"),
    [
        pytest.param({"a.yaml": [svc("x"), svc("y")]}, {"a.yaml": [svc("y"), svc("x")]},
                     {"x": ("a.yaml", 1), "y": ("a.yaml", 0)}, id="documents-reordered"),
        pytest.param({"a.yaml": [svc("x"), svc("y")]},
                     {"a.yaml": [svc("x"), svc("new"), svc("y")]},
                     {"new": ("a.yaml", 1), "y": ("a.yaml", 2)}, id="a-document-inserted"),
        pytest.param({"a.yaml": [svc("x")]}, {"a.yaml": None, "b.yaml": [svc("x")]},
                     {"x": ("b.yaml", 0)}, id="file-renamed"),
        pytest.param({"a.yaml": [svc("x"), svc("y")]},
                     {"a.yaml": [svc("x")], "b.yaml": [svc("other"), svc("y")]},
                     {"other": ("b.yaml", 0), "y": ("b.yaml", 1)}, id="moved-to-another-file"),
        pytest.param({"a.yaml": [svc("x"), svc("y")]},
                     {"a.yaml": [svc("x"), svc("y"), svc("z")]},
                     {"z": ("a.yaml", 2)}, id="nothing-moved-nothing-re-emitted"),
        pytest.param({"a.yaml": [svc("x"), svc("y")]},
                     {"a.yaml": [svc("new"), svc("x").replace("port: 80", "port: 0"), svc("y")]},
                     {"new": ("a.yaml", 0), "y": ("a.yaml", 2)},
                     id="an-invalid-version-keeps-the-last-good-origin"),
    ],
)  # fmt: skip
def test_an_object_that_moves_is_emitted_with_its_new_origin_and_its_value_unchanged(
    before: Files, after: Files, emitted: dict[str, tuple[str, int]]
) -> None:
    state, first = fold(DirectoryState(), before)
    state, changes = fold(state, after)

    assert not changes.deletes
    assert {
        name: (obj.origin.file, obj.origin.document)
        for name, obj in ((k.name, o) for k, o in changes.upserts.items())
        if obj.origin is not None
    } == emitted
    for k, obj in changes.upserts.items():
        if k in first.upserts:
            assert obj == first.upserts[k]  # moved, not changed
    in_force = state.objects()
    assert all(obj.origin and obj.origin.file for obj in in_force.values())
    if key("x") in in_force and "x" not in emitted:  # x stayed where it was read
        assert in_force[key("x")].origin == first.upserts[key("x")].origin


async def test_a_move_reaches_the_consumer_with_its_new_origin_and_when_it_was_seen(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", svc("x"), svc("y"))
    async with running_source(tmp_path) as (_, mesh):
        assert mesh.changes[0].observed_at is not None
        assert mesh.changes[0].observed_at <= mesh.received_at[0]
        written_at = time.time()
        write(tmp_path / "b.yaml", svc("y"))
        write(tmp_path / "a.yaml", svc("x"))
        moved = Origin(file=str(tmp_path / "b.yaml"), document=0)
        await until(lambda: mesh.objects[key("y")].origin == moved)

    assert mesh.objects[key("y")] == service("y")
    assert mesh.objects[key("x")].origin == Origin(file=str(tmp_path / "a.yaml"), document=0)
    assert not mesh.deleted()
    for changes, received_at in zip(mesh.changes[1:], mesh.received_at[1:], strict=True):
        assert changes.observed_at is not None
        # A wake-up in progress may read the writes: the watcher's time is within a rescan of them.
        assert written_at - 1.0 <= changes.observed_at <= received_at


# -- file mode: large files, parsed in the worker process -------------------------------------

WORKER = 64 * 1024
"""Files above this are parsed in the worker in these tests."""
LARGE = 1_000_000
"""About 1.6 s of parsing."""


def carrying(mesh: Mesh, wanted: MeshObject) -> tuple[ChangeSet, float]:
    """The first ChangeSet upserting `wanted` (this value), and when the consumer received it."""
    return next(
        (changes, at)
        for changes, at in zip(mesh.changes, mesh.received_at, strict=True)
        if changes.upserts.get(ObjectKey.of(wanted)) == wanted
    )


async def test_a_large_files_objects_name_their_documents_and_the_time_the_watcher_saw_it(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", svc("x"))
    async with running_source(tmp_path, worker_parse_bytes=WORKER) as (source, mesh):
        replace_file(tmp_path / "large.yaml", slices_of_size("large", LARGE))
        await until(lambda: bool(source.parsing))
        write(tmp_path / "a.yaml", svc("x", 81))  # seen, and emitted, while the parse runs
        await until(lambda: slice_key("large-0") in mesh.objects, within=30)

    small, small_received = carrying(mesh, service("x", 81))
    large, large_received = carrying(mesh, mesh.objects[slice_key("large-0")])
    assert small.observed_at is not None and large.observed_at is not None
    assert large.observed_at < small.observed_at <= small_received < large_received
    slices = sorted(
        (obj for k, obj in large.upserts.items() if k.kind is Kind.ENDPOINT_SLICE),
        key=lambda obj: int(obj.name.rsplit("-", 1)[1]),
    )
    assert len(slices) > 1
    assert [obj.origin for obj in slices] == [
        Origin(file=str(tmp_path / "large.yaml"), document=i) for i in range(len(slices))
    ]


async def test_a_large_file_rewritten_mid_parse_keeps_the_time_its_first_change_was_seen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "large.yaml"
    async with running_source(tmp_path, worker_parse_bytes=WORKER) as (source, mesh):
        replace_file(path, slices_of_size("old", LARGE))
        await until(lambda: bool(source.parsing))
        rewritten_at = time.time()
        replace_file(path, slices_of_size("new", LARGE // 2))
        await until(lambda: slice_key("new-0") in mesh.objects, within=30)

    assert not any(str(k).startswith("EndpointSlice default/old-") for k in mesh.ever_upserted())
    changes, received_at = carrying(mesh, mesh.objects[slice_key("new-0")])
    assert changes.observed_at is not None
    assert changes.observed_at < rewritten_at < received_at


# -- Kubernetes mode: uid and resourceVersion -------------------------------------------------

WAIT_S = 5.0


@dataclass
class Received:
    """What the Kubernetes source emitted, when each ChangeSet arrived, and the mesh so far."""

    changes: list[ChangeSet] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    mesh: dict[ObjectKey, MeshObject] = field(default_factory=dict)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, changes: ChangeSet) -> None:
        self.changes.append(changes)
        self.at.append(time.time())
        for k in changes.deletes:
            self.mesh.pop(k, None)
        self.mesh.update(changes.upserts)
        self._arrived.set()

    async def until(self, check: Callable[[], object]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not check():
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def kubernetes_source(configuration: client.Configuration) -> AsyncIterator[Received]:
    """A KubernetesSource on the emulated API, its initial sync emitted; stopped on exit."""
    source = KubernetesSource(FAST, configuration=configuration, rng=random.Random(7))
    received, ready = Received(), asyncio.Event()
    task = asyncio.create_task(source.run(received, ready))
    try:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def origin_of(stored: Mapping[str, Any]) -> Origin:
    metadata = stored["metadata"]
    return Origin(uid=metadata["uid"], resource_version=metadata["resourceVersion"])


def with_uid(manifest: dict[str, Any], uid: str) -> dict[str, Any]:
    return {**manifest, "metadata": {**manifest["metadata"], "uid": uid}}


async def test_listed_objects_name_their_uid_and_resource_version(
    api_server: ApiServerEmulator, kube_configuration: client.Configuration
) -> None:
    stored = [
        api_server.create(with_uid(api_service("web"), "3f6c2a1e-0000-4000-8000-000000000001")),
        api_server.create(endpoint_slice("web", ["10.1.0.5"], 8080)),
        api_server.create(pod("web-1", "10.1.0.5", labels={"app": "web"})),
    ]
    started_at = time.time()
    async with kubernetes_source(kube_configuration) as received:
        pass

    (initial,) = received.changes
    assert {shown(obj): obj.origin for obj in initial.upserts.values()} == {
        "Service/web": origin_of(stored[0]),
        "EndpointSlice/web-abcde": origin_of(stored[1]),
        "Pod/web-1": origin_of(stored[2]),
    }
    assert origin_of(stored[0]).uid == "3f6c2a1e-0000-4000-8000-000000000001"
    assert initial.observed_at is not None
    assert started_at <= initial.observed_at <= received.at[0]


EditList = list[dict[str, Any]]


@pytest.mark.parametrize(
    ("resource", "created", "edits"),
    [
        pytest.param(SERVICES, api_service("web"),
                     [{"metadata": {"annotations": {"note": "not read by the mesh"}}},
                      {"spec": {"ports": [{"name": "http", "port": 9090, "targetPort": 9090}]}}],
                     id="Service"),
        pytest.param(ENDPOINT_SLICES, endpoint_slice("web", ["10.1.0.5"], 8080),
                     [{"metadata": {"annotations": {"note": "not read by the mesh"}}},
                      {"endpoints": [{"addresses": ["10.1.0.6"], "conditions": {"ready": True}}]}],
                     id="EndpointSlice"),
        pytest.param(PODS, pod("web-1", "10.1.0.5", labels={"app": "web"}),
                     [{"status": {"containerStatuses": [{"name": "app", "ready": True}]}},
                      {"metadata": {"labels": {"app": "api"}}}],
                     id="Pod"),
    ],
)  # fmt: skip
async def test_every_watch_event_names_its_version_and_when_it_arrived(
    api_server: ApiServerEmulator,
    kube_configuration: client.Configuration,
    resource: ResourceKey,
    created: dict[str, Any],
    edits: EditList,
) -> None:
    """The first edit leaves the model value as it was, the second changes it: both arrive."""
    metadata = api_server.create(created)["metadata"]
    namespace, name = metadata["namespace"], metadata["name"]
    async with kubernetes_source(kube_configuration) as received:
        (wanted,) = received.mesh
        values = [received.mesh[wanted]]
        for edit in edits:
            written_at = time.time()
            expected = origin_of(api_server.patch(resource, namespace, name, edit))
            await received.until(lambda e=expected: received.mesh[wanted].origin == e)
            assert received.changes[-1].observed_at is not None
            assert written_at <= received.changes[-1].observed_at <= received.at[-1]
            values.append(received.mesh[wanted])

        written_at = time.time()
        api_server.delete(resource, namespace, name)
        await received.until(lambda: wanted not in received.mesh)
        deleted = received.changes[-1]
        assert deleted.observed_at is not None
        assert written_at <= deleted.observed_at <= received.at[-1]

    assert values[1] == values[0] and values[2] != values[1]
    assert len(received.changes) == 4  # the list, two edits, the delete


async def test_a_relist_emits_an_object_whose_version_moved_on_while_the_watch_was_away(
    api_server: ApiServerEmulator, kube_configuration: client.Configuration
) -> None:
    api_server.create(api_service("web"))
    kept = api_server.create(api_service("kept"))
    async with kubernetes_source(kube_configuration) as received:
        synced = len(received.changes)
        api_server.drop_watches()
        stored = api_server.patch(SERVICES, "default", "web", {"metadata": {"labels": {"a": "b"}}})
        api_server.compact()  # the watch's history is gone: it relists
        web = ObjectKey(Kind.SERVICE, "default", "web")
        await received.until(lambda: received.mesh[web].origin == origin_of(stored))

    relist = received.changes[-1]
    assert set(relist.upserts) == {web}  # `kept` is the version already held: not again
    assert received.mesh[ObjectKey(Kind.SERVICE, "default", "kept")].origin == origin_of(kept)
    assert relist.observed_at is not None and relist.observed_at <= received.at[-1]
    assert len(received.changes) == synced + 1
