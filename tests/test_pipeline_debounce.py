"""Debouncing: bursts merge into one push, bounded by a maximum delay.

Runs on looptime's fake clock, so the timings below are exact and the test
takes no real time.
"""

from __future__ import annotations

import asyncio

import pytest

from xds_server.model import ChangeSet, EndpointSlice, Service, ServicePort
from xds_server.pipeline.debounce import Debouncer
from xds_server.settings import DebounceSettings

SETTINGS = DebounceSettings(quiet=0.1, max_delay=1.0, endpoint_quiet=0.01)


def service_change(name: str) -> ChangeSet:
    changes = ChangeSet()
    changes.upsert(Service("default", name, (ServicePort(80, "http"),)))
    return changes


def slice_change(name: str) -> ChangeSet:
    changes = ChangeSet()
    changes.upsert(EndpointSlice("default", name, "svc"))
    return changes


@pytest.mark.looptime
async def test_a_burst_is_merged_and_released_after_the_quiet_period() -> None:
    debouncer = Debouncer(SETTINGS)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def burst() -> None:
        for i in range(5):
            debouncer.submit(service_change(f"s{i}"))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(burst())
    batch = await debouncer.next_batch()
    await task
    assert len(batch) == 5
    # last change at 0.20 s, then a 0.1 s quiet period
    assert loop.time() - start == pytest.approx(0.3, abs=0.001)


@pytest.mark.looptime
async def test_a_steady_trickle_is_released_at_the_maximum_delay() -> None:
    debouncer = Debouncer(SETTINGS)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def trickle() -> None:
        for i in range(100):
            debouncer.submit(service_change(f"s{i}"))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    batch = await debouncer.next_batch()
    task.cancel()
    assert loop.time() - start == pytest.approx(1.0, abs=0.001)
    assert 19 <= len(batch) <= 21


@pytest.mark.looptime
async def test_endpoint_only_changes_take_the_fast_path() -> None:
    debouncer = Debouncer(SETTINGS)
    loop = asyncio.get_running_loop()
    start = loop.time()
    debouncer.submit(slice_change("a"))
    batch = await debouncer.next_batch()
    assert batch.endpoints_only
    assert loop.time() - start == pytest.approx(0.01, abs=0.001)


@pytest.mark.looptime
async def test_a_service_change_in_an_endpoint_burst_uses_the_full_quiet_period() -> None:
    debouncer = Debouncer(SETTINGS)
    loop = asyncio.get_running_loop()
    start = loop.time()
    debouncer.submit(slice_change("a"))
    debouncer.submit(service_change("b"))
    batch = await debouncer.next_batch()
    assert not batch.endpoints_only
    assert loop.time() - start == pytest.approx(0.1, abs=0.001)


@pytest.mark.looptime
async def test_a_later_deletion_cancels_an_earlier_upsert_of_the_same_object() -> None:
    debouncer = Debouncer(SETTINGS)
    added = service_change("gone")
    removed = ChangeSet()
    removed.delete(next(iter(added.upserts)))
    debouncer.submit(added)
    debouncer.submit(removed)
    batch = await debouncer.next_batch()
    assert not batch.upserts
    assert len(batch.deletes) == 1
