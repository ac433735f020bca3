"""Specification: one file's size, name or parse never costs another file, nor the watcher.

- A file is read only within `MAX_FILE_BYTES`, judged from `stat` before it is
  opened and again on what is read; special files are never opened.
- A file name that is not UTF-8 is one error naming it (escaped), and is never read.
- The native watcher failing (as `watchfiles` does on such a name) is one log
  line; the directory is polled meanwhile and native events come back.
- A large file is parsed in a worker process: an edit to another file goes
  through meanwhile; a file edited or deleted during its parse ends in the
  state of its latest bytes; a worker that dies or overruns is an error on
  the file, whose last good objects stay, and is replaced.

Everything runs on real directories, a real watcher and a real worker process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from file_source_fixtures import (
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

from xds_server.model import ObjectKey
from xds_server.sources import limits
from xds_server.sources.file import FileSource
from xds_server.sources.file_read import ReadProblem, read_manifest
from xds_server.sources.file_watch import RETRY_S

pytestmark = pytest.mark.timeout(60)

TIB = 1 << 40

# -- reading within bounds ----------------------------------------------------------------------

LIMIT = 1000


def sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_text(svc("x"))
        os.truncate(path, size)  # a hole: nothing is written, reading it would take ages

    return make


def fifo(path: Path) -> None:
    os.mkfifo(path)  # opening it to read would block until a writer comes


def proc_file(path: Path) -> None:
    """A file whose `stat` says 0 bytes but which reads as more (procfs, sysfs)."""
    path.symlink_to("/proc/self/status")


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(lambda p: p.write_bytes(b"#" * LIMIT), None, id="at-the-limit"),
        pytest.param(lambda p: p.write_bytes(b"#" * (LIMIT + 1)),
                     "file is 1,001 bytes, over the limit of 1,000 bytes", id="one-byte-over"),
        pytest.param(sparse(TIB), "file is 1,099,511,627,776 bytes, over the limit of 1,000 bytes",
                     id="sparse-terabyte"),
        pytest.param(proc_file, "file is more than 1,000 bytes (it grew while being read)",
                     id="larger-than-its-stat"),
        pytest.param(fifo, "not a regular file: not read", id="fifo"),
        pytest.param(lambda p: p.symlink_to(p.name),
                     "cannot read: Too many levels of symbolic links", id="symlink-loop"),
    ],
)  # fmt: skip
def test_a_file_is_read_only_within_the_limit(
    tmp_path: Path, make: Callable[[Path], None], problem: str | None
) -> None:
    path = tmp_path / "a.yaml"
    make(path)
    started = time.monotonic()
    read = read_manifest(path, LIMIT)
    assert time.monotonic() - started < 0.5
    if problem is None:
        assert read == b"#" * LIMIT
    else:
        assert isinstance(read, ReadProblem) and read.message.startswith(problem)


@pytest.mark.parametrize("size", [limits.MAX_FILE_BYTES + 1, TIB], ids=["just-over", "terabyte"])
def test_an_oversized_file_is_rejected_unread_and_its_last_good_objects_stay(
    tmp_path: Path, size: int
) -> None:
    write(tmp_path / "a.yaml", svc("x"))
    write(tmp_path / "b.yaml", svc("y"))
    source = FileSource(tmp_path)
    source.load()

    os.truncate(tmp_path / "a.yaml", size)
    write(tmp_path / "b.yaml", svc("y", 81))
    started = time.monotonic()
    changes = source.load()
    assert time.monotonic() - started < 1.0
    assert set(changes.upserts) == {key("y")} and not changes.deletes  # x stays in force
    (error,) = source.errors
    assert str(error) == (
        f"{tmp_path / 'a.yaml'}: file is {size:,} bytes, over the limit of "
        f"{limits.MAX_FILE_BYTES:,} bytes (16 MiB): not read; "
        "the objects it defined before stay in force"
    )

    write(tmp_path / "a.yaml", svc("x", 81))
    assert source.load().upserts == {key("x"): service("x", 81)}
    assert source.errors == []


# -- file names that are not UTF-8 --------------------------------------------------------------


def write_bytes_path(directory: Path, relative: bytes, text: str) -> None:
    path = os.path.join(os.fsencode(directory), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.write(text)


def test_a_name_that_is_not_utf8_is_one_error_naming_it_and_is_never_read(
    tmp_path: Path,
) -> None:
    write(tmp_path / "good.yaml", svc("x"))
    write_bytes_path(tmp_path, b"fz-231-\xff\xfe.yaml", svc("named-badly"))
    write_bytes_path(tmp_path, b"team-\xe9/a.yaml", svc("in-a-badly-named-directory"))
    write_bytes_path(tmp_path, b"notes-\xff.txt", "not a manifest, whatever its name")
    source = FileSource(tmp_path)

    assert set(source.load().upserts) == {key("x")}
    rule = "the name is not valid UTF-8 (undecodable bytes shown as \\x escapes): not read"
    assert [str(e) for e in source.errors] == [
        f"{tmp_path}/fz-231-\\xff\\xfe.yaml: {rule}; rename it",
        f"{tmp_path}/team-\\xe9: {rule}; rename it",
    ]

    os.rename(os.fsencode(tmp_path / "fz-231-") + b"\xff\xfe.yaml", tmp_path / "renamed.yaml")
    assert set(source.load().upserts) == {key("named-badly")}
    assert len(source.errors) == 1


async def test_the_watcher_survives_an_undecodable_name_and_native_events_come_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path / "a.yaml", svc("x"))
    caplog.set_level(logging.INFO, logger="xds_server.sources")
    async with running_source(tmp_path) as (source, mesh):
        assert source.watch_mode == "events"
        write_bytes_path(tmp_path, b"fz-231-\xff\xfe.yaml", svc("named-badly"))
        await until(lambda: source.watch_mode == "fallback-polling")
        await until(lambda: len(source.errors) == 1)
        assert "fz-231-\\xff\\xfe.yaml: the name is not valid UTF-8" in str(source.errors[0])

        write(tmp_path / "b.yaml", svc("y"))  # seen while polling
        await until(lambda: key("y") in mesh.objects)
        await until(lambda: source.watch_mode == "events", within=RETRY_S + 3)
        written = time.monotonic()
        write(tmp_path / "a.yaml", svc("x", 81))
        await until(lambda: mesh.objects[key("x")] == service("x", 81))
        assert mesh.times[-1] - written < 1.0

        failures = [r for r in caplog.records if "file watcher failed" in r.getMessage()]
        (failure,) = failures
        assert failure.levelno == logging.WARNING and failure.exc_info is None
        assert "Unable to decode path" in failure.getMessage()
        assert failure.getMessage().endswith("watching again in 1 s")
        assert "\n" not in failure.getMessage()

        write_bytes_path(tmp_path, b"fz-231-\xff\xfe.yaml", svc("named-badly", 81))
        await until(lambda: source.watch_mode == "fallback-polling")  # failing again: longer
        assert caplog.records[-1].getMessage().endswith("watching again in 2 s")
        assert key("named-badly") not in mesh.objects


# -- large files in the worker process ----------------------------------------------------------

WORKER = 64 * 1024
"""Files above this are parsed in the worker in these tests."""
LARGE = 1_000_000
"""About 1.6 s of parsing."""


def large(prefix: str, size: int = LARGE) -> str:
    return slices_of_size(prefix, size)


def keys_of(prefix: str, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
    return {k for k in keys if str(k).startswith(f"EndpointSlice default/{prefix}-")}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or exiting as it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_large_file_never_holds_back_an_edit_to_another(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("x"))
    async with running_source(tmp_path, worker_parse_bytes=WORKER) as (source, mesh):
        written = time.monotonic()
        replace_file(tmp_path / "large.yaml", large("large"))
        write(tmp_path / "a.yaml", svc("x", 81))
        await until(lambda: mesh.objects[key("x")] == service("x", 81))
        assert mesh.times[-1] - written < 1.0
        assert source.parsing == {tmp_path / "large.yaml"}

        await until(lambda: slice_key("large-0") in mesh.objects, within=30)
        assert mesh.arrival(slice_key("large-0")) > mesh.arrival(key("x"))
        assert source.errors == [] and source.parsing == frozenset()
        worker = source.parser_pid
        assert worker is not None and worker != os.getpid()
    await until(lambda: not alive(worker))  # stopped with the source


def newer_small(path: Path) -> None:
    replace_file(path, svc("f"))


def newer_large(path: Path) -> None:
    replace_file(path, large("newer", LARGE // 2))


def deleted(path: Path) -> None:
    path.unlink()


OLD = large("old", 2 * WORKER)


def restored(path: Path) -> None:
    replace_file(path, OLD)


@pytest.mark.parametrize(
    ("initial", "then", "expected"),
    [
        pytest.param(None, newer_small, {key("f")}, id="newer-small-bytes"),
        pytest.param(None, newer_large, "newer", id="newer-large-bytes"),
        pytest.param(None, deleted, set(), id="deleted"),
        pytest.param(OLD, restored, "old", id="back-to-the-bytes-in-force"),
    ],
)
async def test_a_file_changed_during_its_parse_ends_in_the_state_of_its_latest_bytes(
    tmp_path: Path,
    initial: str | None,
    then: Callable[[Path], None],
    expected: set[ObjectKey] | str,
) -> None:
    path = tmp_path / "f.yaml"
    if initial is not None:
        write(path, initial)
    async with running_source(tmp_path, worker_parse_bytes=WORKER) as (source, mesh):
        in_force = set(mesh.objects)  # large files are part of the initial state
        assert in_force == keys_of("old", in_force) and bool(in_force) == (initial is not None)

        replace_file(path, large("stale"))
        await until(lambda: path in source.parsing)
        await until(lambda: source.parser_pid is not None)
        then(path)
        write(tmp_path / "tick.yaml", svc("tick"))  # once it is in, `then` has been seen
        await until(lambda: key("tick") in mesh.objects)
        # The worker parses one file at a time, in order: once a file queued after
        # this moment is in, no parse of the stale bytes can still land.
        replace_file(tmp_path / "barrier.yaml", large("barrier", 2 * WORKER))
        await until(lambda: slice_key("barrier-0") in mesh.objects, within=30)

        from_file = set(mesh.objects) - {key("tick")} - keys_of("barrier", set(mesh.objects))
        wanted = keys_of(expected, from_file) if isinstance(expected, str) else expected
        assert from_file == wanted and bool(wanted) == (then is not deleted)
        assert keys_of("stale", mesh.ever_upserted()) == set()
        assert source.errors == [] and source.parsing == frozenset()


async def test_a_worker_that_dies_is_an_error_on_its_file_and_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    write(path, OLD)
    async with running_source(tmp_path, worker_parse_bytes=WORKER) as (source, mesh):
        assert keys_of("old", set(mesh.objects))
        replace_file(path, large("doomed"))
        await until(lambda: path in source.parsing)
        worker = source.parser_pid
        assert worker is not None
        os.kill(worker, signal.SIGKILL)

        await until(lambda: bool(source.errors))
        assert [str(e) for e in source.errors] == [
            f"{path}: the parser process died while parsing this file (killed, or out of "
            "memory); it is parsed again when it changes"
        ]
        assert keys_of("old", set(mesh.objects)) and not keys_of("doomed", mesh.ever_upserted())

        replace_file(tmp_path / "g.yaml", large("other", 2 * WORKER))  # a new worker parses it
        await until(lambda: slice_key("other-0") in mesh.objects, within=30)
        assert source.parser_pid not in (None, worker)
        replace_file(path, large("fixed", 2 * WORKER))
        await until(lambda: slice_key("fixed-0") in mesh.objects, within=30)
        assert source.errors == [] and not keys_of("old", set(mesh.objects))


async def test_a_parse_that_overruns_its_bound_is_abandoned_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    write(path, svc("f"))
    async with running_source(tmp_path, worker_parse_bytes=WORKER, parse_timeout=1.0) as (
        source,
        mesh,
    ):
        replace_file(path, large("slow", 2 * LARGE))  # ~3 s of parsing
        await until(lambda: source.parser_pid is not None)
        worker = source.parser_pid
        assert worker is not None
        await until(lambda: bool(source.errors))
        assert [str(e) for e in source.errors] == [
            f"{path}: parsing took longer than 1 s and was abandoned; "
            "it is parsed again when it changes"
        ]
        await until(lambda: not alive(worker))  # killed, not left running
        assert mesh.objects == {key("f"): service("f")}

        write(path, svc("f", 81))
        await until(lambda: mesh.objects == {key("f"): service("f", 81)})
        assert source.errors == []


async def test_stopping_the_source_mid_parse_stops_the_worker(tmp_path: Path) -> None:
    async with running_source(tmp_path, worker_parse_bytes=WORKER) as (source, _):
        replace_file(tmp_path / "f.yaml", large("long", 2 * LARGE))  # ~3 s of parsing
        await until(lambda: source.parser_pid is not None)
        worker = source.parser_pid
        assert worker is not None and tmp_path / "f.yaml" in source.parsing
    stopped = time.monotonic()
    await until(lambda: not alive(worker))
    assert time.monotonic() - stopped < 1.0


def test_load_parses_large_files_inline_without_a_worker(tmp_path: Path) -> None:
    write(tmp_path / "f.yaml", OLD)
    source = FileSource(tmp_path, worker_parse_bytes=WORKER)
    assert keys_of("old", set(source.load().upserts))
    assert source.parser_pid is None and source.errors == []


WORKER_OWNER = """\
import asyncio, sys
from pathlib import Path
from xds_server.sources.parse_worker import ParserProcess

async def main() -> None:
    parser = ParserProcess(time_limit=10)
    await parser.parse(Path("a.yaml"), b"a: 1\\n", None)
    print(parser.pid, flush=True)
    await asyncio.sleep(60)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_the_worker_ends_when_the_control_plane_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(WORKER_OWNER)
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        worker = int(owner.stdout.readline())
        assert alive(worker)
    finally:
        owner.kill()
        owner.wait(timeout=10)
    deadline = time.monotonic() + 5
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), "the worker outlived its SIGKILLed parent"
