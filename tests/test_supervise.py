"""No exception from a source, the pipeline or the admin server ends the control plane.

`Supervisor` unit behaviour (restart after a capped, jittered backoff; the
traceback logged once per distinct failure; only cancellation ends it), then
the real `ControlPlane` in this event loop with one of its parts made to fail:
it keeps running, keeps its state, becomes ready, and says what was restarted
in `/readyz`.  Finally, `shutdown()` drains and closes both ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_mesh import service_yaml, write_documents

from xds_server.app import ControlPlane
from xds_server.model import ChangeSet
from xds_server.settings import DebounceSettings, Settings, SupervisionSettings
from xds_server.supervise import RestartBackoff, Supervisor

FAST = SupervisionSettings(restart_initial=0.01, restart_max=0.05, healthy_after=1.0)


# -- the backoff ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures_before", "ran_for", "ceiling"),
    [
        (0, 0.0, 0.1),  # first restart: about restart_initial
        (1, 0.0, 0.2),
        (3, 0.0, 0.8),
        (10, 0.0, 10.0),  # capped at restart_max
        (10, 30.0, 0.1),  # a run that lasted healthy_after starts the count again
    ],
)
def test_restart_delay_doubles_up_to_the_cap_with_jitter(
    failures_before: int, ran_for: float, ceiling: float
) -> None:
    for seed in range(20):
        backoff = RestartBackoff(
            SupervisionSettings(), failures=failures_before, rng=random.Random(seed)
        )
        assert ceiling / 2 <= backoff.next_delay(ran_for) <= ceiling


def test_restart_delays_are_jittered() -> None:
    delays = {
        RestartBackoff(SupervisionSettings(), rng=random.Random(seed)).next_delay(0.0)
        for seed in range(20)
    }
    assert len(delays) > 10


# -- the supervisor -----------------------------------------------------------------------


async def test_a_failing_task_is_restarted_and_its_traceback_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(FAST)
    calls = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ValueError("boom")
        healthy.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR, logger="xds_server.supervise"):
        task = asyncio.create_task(supervisor.run("flaky", flaky))
        await asyncio.wait_for(healthy.wait(), timeout=5)
    assert calls == 4 and supervisor.restarts["flaky"] == 3
    assert supervisor.status() == {"flaky": {"restarts": 3, "last_failure": "ValueError: boom"}}
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1, "the same failure's traceback is logged once"
    assert sum("the same failure as before" in r.getMessage() for r in caplog.records) == 2

    task.cancel()  # only cancellation ends a supervised task
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_that_returns_is_restarted_unless_stopping() -> None:
    supervisor = Supervisor(FAST)
    calls = 0

    async def returns() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            supervisor.stopping = True

    await asyncio.wait_for(supervisor.run("returns", returns), timeout=5)
    assert calls == 2 and supervisor.last_failure == {"returns": "returned"}


async def test_failure_text_is_bounded() -> None:
    supervisor = Supervisor(FAST)
    supervisor.failed("task", RuntimeError("x" * 1_000_000))
    assert len(supervisor.last_failure["task"]) <= 300


# -- the control plane with a failing part ----------------------------------------------------


def settings(directory: Path, free_port: Callable[[], int]) -> Settings:
    return Settings(
        source=f"file:{directory}",
        xds_listen=f"127.0.0.1:{free_port()}",
        admin_listen=f"127.0.0.1:{free_port()}",
        debounce=DebounceSettings(quiet=0.02, max_delay=0.2, endpoint_quiet=0.005),
        grace_seconds=0.5,
        supervision=FAST,
    )


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "services.yaml", service_yaml("backend"))
    return directory


@contextlib.asynccontextmanager
async def running(plane: ControlPlane) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        yield task
    finally:
        plane.shutdown()
        await asyncio.wait_for(task, timeout=10)


async def readyz(plane: ControlPlane) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{plane.admin_port}/readyz")


async def test_the_pipeline_loop_failing_is_restarted_and_changes_still_flow(
    directory: Path, free_port: Callable[[], int]
) -> None:
    plane = ControlPlane(settings(directory, free_port))
    real_run = plane.pipeline.run
    runs = 0

    async def fails_once() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("the pipeline hit a bug")
        await real_run()

    plane.pipeline.run = fails_once  # type: ignore[method-assign]
    async with running(plane) as task:
        pushes = plane.pipeline.pushes
        write_documents(directory / "more.yaml", service_yaml("frontend"))
        for _ in range(200):
            if plane.pipeline.pushes > pushes:
                break
            await asyncio.sleep(0.02)
        assert plane.pipeline.pushes > pushes, "a change after the restart is applied"
        assert not task.done()
        response = await readyz(plane)
        assert response.status_code == 200
        assert response.json()["failures"]["pipeline"] == {
            "restarts": 1,
            "last_failure": "RuntimeError: the pipeline hit a bug",
        }


async def test_the_source_failing_is_restarted_and_start_up_completes(
    directory: Path, free_port: Callable[[], int]
) -> None:
    plane = ControlPlane(settings(directory, free_port))
    real_run = plane.source.run
    runs = 0

    async def fails_first(emit: Callable[[ChangeSet], None], ready: Any = None) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise OSError("the watcher broke")
        await real_run(emit, ready)

    plane.source.run = fails_first  # type: ignore[method-assign]
    async with running(plane):
        assert plane.is_ready()
        assert plane.supervisor.restarts["source"] == 1


async def test_an_initial_sync_that_raises_does_not_stop_start_up(
    directory: Path, free_port: Callable[[], int], caplog: pytest.LogCaptureFixture
) -> None:
    plane = ControlPlane(settings(directory, free_port))

    def raises(changes: ChangeSet) -> None:
        raise UnicodeEncodeError("utf-8", "x\ud800y", 1, 2, "surrogates not allowed")

    plane.pipeline.initial_sync = raises  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        async with running(plane):
            response = await readyz(plane)
            assert response.status_code == 200
            failure = response.json()["failures"]["initial sync"]
            assert failure["last_failure"].startswith("UnicodeEncodeError")
            assert failure["restarts"] == 0
    assert any(r.exc_info for r in caplog.records), "the traceback is in the log"


async def test_shutdown_closes_both_ports_and_returns(
    directory: Path, free_port: Callable[[], int]
) -> None:
    plane = ControlPlane(settings(directory, free_port))
    async with running(plane):
        assert (await readyz(plane)).status_code == 200
    for port in (plane.xds_port, plane.admin_port):
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
    assert not plane.is_ready()
