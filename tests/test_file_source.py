"""Specification of the file source: a watched directory of manifests as ChangeSets.

The pure state functions are tested with tables; the watcher with a real
directory and real `watchfiles`, awaiting each outcome with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from file_source_fixtures import Mesh, key, running_source, service, svc, until, write

from xds_server.model import ChangeSet, Kind, ObjectKey
from xds_server.sources.file import FileSource, list_manifest_files
from xds_server.sources.file_state import DirectoryState, FileState, SourceError, parse_file

SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
"""
POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: api-1}\nstatus: {podIP: 10.0.0.1}\n"
CONFIG_MAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n"


# -- the pure state functions ------------------------------------------------------------------


def summary(changes: ChangeSet) -> tuple[set[str], set[str]]:
    return {str(k) for k in changes.upserts}, {str(k) for k in changes.deletes}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [{"a.yaml": svc("x")}, {"a.yaml": svc("x", 81)}],
            [({"Service default/x"}, set()), ({"Service default/x"}, set())],
            id="modify",
        ),
        pytest.param(
            [{"a.yaml": svc("x")}, {"a.yaml": svc("x")}],
            [({"Service default/x"}, set()), (set(), set())],
            id="unchanged-content-no-change",
        ),
        pytest.param(
            [{"a.yaml": svc("x") + "---\n" + svc("y")}, {"a.yaml": None}],
            [({"Service default/x", "Service default/y"}, set()),
             (set(), {"Service default/x", "Service default/y"})],
            id="file-removed-deletes-its-objects",
        ),
        pytest.param(
            [{"a.yaml": svc("x")}, {"a.yaml": None, "b.yaml": svc("x")}],
            [({"Service default/x"}, set()), ({"Service default/x"}, set())],
            id="rename-is-an-update-of-the-origin-never-a-delete",
        ),
        pytest.param(
            [{"a.yaml": svc("x")}, {"a.yaml": "", "b.yaml": svc("x", 81)}],
            [({"Service default/x"}, set()), ({"Service default/x"}, set())],
            id="move-with-edit-is-update",
        ),
        pytest.param(
            [{"a.yaml": svc("x")}, {"b.yaml": svc("x", 81)}, {"a.yaml": ""}],
            [({"Service default/x"}, set()), (set(), set()), ({"Service default/x"}, set())],
            id="duplicate-waits-then-takes-over",
        ),
        pytest.param(
            [{"a.yaml": svc("x")}, {"a.yaml": svc("x") + "  bad: [\n"}],
            [({"Service default/x"}, set()), (set(), set())],
            id="malformed-yaml-keeps-objects",
        ),
        pytest.param(
            [{"a.yaml": svc("x") + "---\n" + svc("y")},
             {"a.yaml": svc("x", 0) + "---\n" + svc("y", 81)}],
            [({"Service default/x", "Service default/y"}, set()), ({"Service default/y"}, set())],
            id="invalid-object-keeps-previous-version-others-apply",
        ),
    ],
)  # fmt: skip
def test_directory_state_changes(
    steps: list[dict[str, str | None]], expected: list[tuple[set[str], set[str]]]
) -> None:
    state = DirectoryState()
    for step, (upserts, deletes) in zip(steps, expected, strict=True):
        changed: dict[Path, FileState | None] = {
            Path(name): None
            if text is None
            else parse_file(Path(name), text.encode(), state.files.get(Path(name)))
            for name, text in step.items()
        }
        state, changes = state.update(changed)
        assert summary(changes) == (upserts, deletes)


@pytest.mark.parametrize(
    ("data", "line", "object_ref", "field", "message"),
    [
        (b"a: [\nb: c\n", 3, None, None, "invalid YAML"),
        (b"kind: Service\n\tapiVersion: v1\n", 2, None, None, "invalid YAML"),
        (svc("x").replace("port: 80", "port: abc").encode(), 4, "Service default/x",
         "spec.ports[0].port", "must be an integer 1-65535, got 'abc'"),
        ((CONFIG_MAP + "---\n" + svc("x").replace("spec: {", "spec: {prots: [], ")).encode(),
         9, "Service default/x", "spec.prots", "unknown field"),
        ((svc("x") + "---\n" + svc("x")).encode(), 6, "Service default/x", None, "defined again"),
        ((svc("x") + "spec: {}\n").encode(), 5, "Service default/x", "spec",
         "given more than once"),
        (("apiVersion: v1\nkind: List\nitems:\n- " + svc("x", 0).replace("\n", "\n  ")).encode(),
         7, "Service default/x", "spec.ports[0].port", "got 0"),
        (b"\xff\xfe", None, None, None, "not UTF-8 text"),
        (POD.replace("name: api-1}", "name: api-1, labels: {app.k8s.io/x: a, app.k8s.io/x: b}}")
         .encode(), 3, "Pod default/api-1", "metadata.labels[app.k8s.io/x]", "more than once"),
    ],
)  # fmt: skip
def test_parse_errors_name_file_line_object_and_field(
    data: bytes, line: int | None, object_ref: str | None, field: str | None, message: str
) -> None:
    (error,) = parse_file(Path("dir/a.yaml"), data).errors
    assert (error.path, error.line, error.object_ref, error.field) == (
        Path("dir/a.yaml"),
        line,
        object_ref,
        field,
    )
    assert message in error.message
    assert str(error).startswith(f"dir/a.yaml{f':{line}' if line else ''}: ")


def test_duplicate_error_names_both_files() -> None:
    state, _ = DirectoryState().update(
        {Path("a.yaml"): parse_file(Path("a.yaml"), svc("x").encode())}
    )
    state, changes = state.update(
        {Path("b.yaml"): parse_file(Path("b.yaml"), svc("x", 81).encode())}
    )
    assert not changes
    assert state.objects() == {key("x"): service("x")}
    (error,) = state.errors()
    assert str(error) == (
        "b.yaml:1: Service default/x: also defined in a.yaml, whose definition stays in force"
    )


def test_error_sentence() -> None:
    error = SourceError(Path("/cfg/a.yaml"), "Service default/x", "spec.ports[1].port", "bad", 7)
    assert str(error) == "/cfg/a.yaml:7: Service default/x: spec.ports[1].port: bad"


# -- the source on a real directory --------------------------------------------------------------


def test_load_reads_every_manifest_file_recursively(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("x"), svc("y", namespace="shop"), CONFIG_MAP)
    write(tmp_path / "sub" / "b.yml", SLICE, POD)
    write(tmp_path / "empty.yaml", "")
    write(tmp_path / "notes.txt", svc("ignored"))
    write(tmp_path / ".hidden.yaml", svc("hidden"))
    write(tmp_path / "..2024_01_01" / "c.yaml", svc("configmap-copy"))
    source = FileSource(tmp_path)
    changes = source.load()
    assert not changes.deletes
    assert set(changes.upserts) == {
        key("x"),
        key("y", "shop"),
        ObjectKey(Kind.ENDPOINT_SLICE, "default", "api-1"),
        ObjectKey(Kind.WORKLOAD, "default", "api-1"),
    }
    assert changes.upserts[key("x")] == service("x")
    assert source.errors == []
    assert not source.load()  # nothing changed since
    assert list_manifest_files(tmp_path) == [
        tmp_path / "a.yaml",
        tmp_path / "empty.yaml",
        tmp_path / "sub" / "b.yml",
    ]


def test_load_of_missing_directory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    source = FileSource(tmp_path / "nope")
    assert not source.load()
    (error,) = source.errors
    assert error.path == tmp_path / "nope" and "directory not found" in error.message


Start = Callable[..., Awaitable[tuple[FileSource, Mesh]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    async with contextlib.AsyncExitStack() as stack:

        async def starter(directory: Path, force_polling: bool = False) -> tuple[FileSource, Mesh]:
            return await stack.enter_async_context(
                running_source(directory, force_polling=force_polling)
            )

        yield starter


@pytest.mark.parametrize("force_polling", [False, True], ids=["events", "polling"])
async def test_run_emits_initial_state_then_each_edit_within_a_second(
    tmp_path: Path, start: Start, force_polling: bool
) -> None:
    write(tmp_path / "a.yaml", svc("x"))
    source, mesh = await start(tmp_path, force_polling)
    assert mesh.objects == {key("x"): service("x")}

    written = time.monotonic()
    write(tmp_path / "a.yaml", svc("x", 81))
    await until(lambda: mesh.objects[key("x")] == service("x", 81))
    assert mesh.times[-1] - written < 1.0

    write(tmp_path / "sub" / "b.yaml", svc("y"))
    await until(lambda: key("y") in mesh.objects)
    (tmp_path / "a.yaml").unlink()
    await until(lambda: key("x") not in mesh.objects)
    assert mesh.objects == {key("y"): service("y")}
    assert source.errors == []


async def test_malformed_yaml_keeps_last_good_objects_until_fixed(
    tmp_path: Path, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "a.yaml", svc("x"), svc("y"))
    source, mesh = await start(tmp_path)
    caplog.set_level(logging.ERROR, logger="xds_server.sources")

    write(tmp_path / "a.yaml", svc("x", 81), "apiVersion: v1\nkind: [Service\n")
    await until(lambda: bool(source.errors))
    (error,) = source.errors
    assert (error.path, error.line) == (tmp_path / "a.yaml", 8)
    assert "invalid YAML" in error.message
    write(tmp_path / "other.yaml", svc("z"))  # another rescan: the error is not logged again
    await until(lambda: key("z") in mesh.objects)
    assert mesh.objects[key("x")] == service("x") and key("y") in mesh.objects
    assert [r.getMessage() for r in caplog.records] == [str(error)]

    write(tmp_path / "a.yaml", svc("x", 81), svc("y"))
    await until(lambda: mesh.objects[key("x")] == service("x", 81))
    assert source.errors == []
    assert not mesh.deleted()


async def test_invalid_object_keeps_its_previous_version_and_others_apply(
    tmp_path: Path, start: Start
) -> None:
    write(tmp_path / "a.yaml", svc("x"), svc("y"))
    source, mesh = await start(tmp_path)

    write(tmp_path / "a.yaml", svc("x").replace("port: 80", "port: abc"), svc("y", 81), svc("w"))
    await until(lambda: key("w") in mesh.objects)
    assert mesh.objects == {
        key("x"): service("x"),
        key("y"): service("y", 81),
        key("w"): service("w"),
    }
    assert [str(e) for e in source.errors] == [
        f"{tmp_path / 'a.yaml'}:4: Service default/x: spec.ports[0].port: "
        "must be an integer 1-65535, got 'abc'"
    ]

    write(tmp_path / "a.yaml", svc("x", 82), svc("y", 81), svc("w"))
    await until(lambda: mesh.objects[key("x")] == service("x", 82))
    assert source.errors == []


async def test_duplicate_object_across_files_keeps_the_first(tmp_path: Path, start: Start) -> None:
    write(tmp_path / "a.yaml", svc("x"))
    source, mesh = await start(tmp_path)

    write(tmp_path / "b.yaml", svc("x", 81), svc("y"))
    await until(lambda: key("y") in mesh.objects)
    assert mesh.objects[key("x")] == service("x")
    (error,) = source.errors
    assert str(tmp_path / "a.yaml") in str(error) and str(tmp_path / "b.yaml") in str(error)

    (tmp_path / "a.yaml").unlink()  # the duplicate takes over: an update, not a delete
    await until(lambda: mesh.objects[key("x")] == service("x", 81))
    assert source.errors == [] and not mesh.deleted()


async def test_moving_an_object_between_files_is_an_update_only(
    tmp_path: Path, start: Start
) -> None:
    write(tmp_path / "a.yaml", svc("x"), svc("y"))
    source, mesh = await start(tmp_path)

    write(tmp_path / "b.yaml", svc("y", 81))
    write(tmp_path / "a.yaml", svc("x"))
    await until(lambda: mesh.objects[key("y")] == service("y", 81))
    os.rename(tmp_path / "b.yaml", tmp_path / "c.yaml")
    write(tmp_path / "d.yaml", svc("z"))
    await until(lambda: key("z") in mesh.objects)
    assert not mesh.deleted()
    assert all(set(c.upserts) <= {key("y"), key("z")} for c in mesh.changes[1:])
    assert source.errors == []


async def test_directory_removed_and_replaced(tmp_path: Path, start: Start) -> None:
    directory = tmp_path / "config"
    write(directory / "a.yaml", svc("x"), svc("y"))
    source, mesh = await start(directory)

    shutil.rmtree(directory)
    await until(lambda: bool(source.errors))
    assert "directory not found" in source.errors[0].message
    assert set(mesh.objects) == {key("x"), key("y")}  # still in force

    write(tmp_path / "staging" / "a.yaml", svc("x", 81))
    os.rename(tmp_path / "staging", directory)
    await until(lambda: mesh.objects == {key("x"): service("x", 81)})
    assert source.errors == []

    write(directory / "b.yaml", svc("z"))  # and the new directory is watched
    await until(lambda: key("z") in mesh.objects)


async def test_configmap_volume_symlink_swap_is_one_update(tmp_path: Path, start: Start) -> None:
    """A ConfigMap volume: files link through `..data`, which the kubelet swaps atomically."""
    write(tmp_path / "..v1" / "a.yaml", svc("x"), svc("y"))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    source, mesh = await start(tmp_path)
    assert set(mesh.objects) == {key("x"), key("y")}

    write(tmp_path / "..v2" / "a.yaml", svc("x", 81))
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    shutil.rmtree(tmp_path / "..v1")
    await until(lambda: mesh.objects == {key("x"): service("x", 81)})
    assert [summary(c) for c in mesh.changes[1:]] == [
        ({"Service default/x"}, {"Service default/y"})
    ]
    assert source.errors == []
