"""What the benchmarks read about the control plane beyond wall time: memory, code, work done.

* Memory, three ways, each as a growth from N to 2N proxies divided by N
  (the marginal cost of a proxy, free of one-time costs):
  `rss_bytes()` is the process's resident set (`VmRSS`): it sees everything
  but also the allocators' slack, so it only means something where a proxy
  costs far more than the garbage a change leaves (gRPC streams, `push.py`);
  `heap_in_use_bytes()` is what glibc's malloc has handed out and not got
  back (`mallinfo2`: protobuf's upb arenas, where a Resource's serialized
  `Any` lives, gRPC's buffers, and Python objects over 512 bytes), free of
  slack; `traced_growth(action)` runs `action` under `tracemalloc` and returns
  the bytes of Python allocations it left alive (exact, blind to upb);
  `live_bytes()` is malloc's in use plus what Python's small-object
  allocator (pymalloc, whose arenas malloc does not see) has handed out:
  every live byte of the process's own making, free of slack, so the one
  figure to compare across versions that move bytes between upb and Python.
  `tracemalloc` slows allocation down and itself allocates with malloc, so it
  is only started after the CPU and heap figures have been taken.
* Code: `code_under_test()` says which `xds_server` was imported (the
  benchmarks are run against older checkouts with `PYTHONPATH`) and its commit.
* Work: `WorkLog` counts, for each `SnapshotBuilder.apply`, the proxies the
  pipeline re-translated.  It is feature-detected: a builder with
  `on_generation` reports its `GenerationRecord`s (`units` named `proxy:NODE`
  are proxy translations); on an older builder, which has no such hook, the
  calls of `pipeline.plan.proxy_resources` (the one per-proxy translation) are
  counted instead.  `counted_by` says which.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xds_server

logger = logging.getLogger(__name__)

PROXY_UNIT_PREFIX = "proxy:"


def rss_bytes() -> int:
    """This process's resident set size, after a full garbage collection."""
    gc.collect()
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None
    if function is not None:
        function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def heap_in_use_bytes() -> int | None:
    """Bytes malloc has handed out (heap and mmapped chunks), after a collection; None off glibc."""
    if _MALLINFO2 is None:
        return None
    gc.collect()
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def pymalloc_in_use_bytes() -> int | None:
    """Bytes in pymalloc's allocated blocks (`sys._debugmallocstats`); None if it has none."""
    debug_stats = getattr(sys, "_debugmallocstats", None)
    if debug_stats is None:
        return None
    with tempfile.TemporaryFile() as out:  # it writes to the C stderr, fd 2
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            debug_stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    for line in text.splitlines():
        if line.startswith("# bytes in allocated blocks"):
            return int(line.split("=")[1].replace(",", ""))
    return None


def live_bytes() -> int | None:
    """`heap_in_use_bytes()` plus `pymalloc_in_use_bytes()`; None where either is unknown."""
    heap = heap_in_use_bytes()
    small = pymalloc_in_use_bytes()
    return None if heap is None or small is None else heap + small


def traced_growth(action: Callable[[], None]) -> int:
    """Bytes of Python allocations made by `action` and still alive when it returns."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        action()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


def code_under_test() -> dict[str, str]:
    """The `xds_server` package imported, and the commit of its checkout (if it is one)."""
    package = Path(xds_server.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"xds_server": str(package), "commit": commit}


class WorkLog:
    """How many proxies each `apply` re-translated (see the module doc for how it knows)."""

    def __init__(self, builder: Any) -> None:
        self._builder = builder
        self._records: list[Any] = []
        self._calls = 0
        self._restore: list[tuple[Any, str, Any]] = []
        if hasattr(builder, "on_generation"):
            self.counted_by = "GenerationRecord.units"
            builder.on_generation = self._records.append
        else:
            self.counted_by = "calls of pipeline.plan.proxy_resources"
            self._wrap_proxy_translation()

    def _wrap_proxy_translation(self) -> None:
        from xds_server.pipeline import builder as builder_module
        from xds_server.pipeline import plan as plan_module

        original = plan_module.proxy_resources

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._calls += 1
            return original(*args, **kwargs)

        for module in (plan_module, builder_module):
            if getattr(module, "proxy_resources", None) is original:
                self._restore.append((module, "proxy_resources", original))
                module.proxy_resources = counted  # type: ignore[attr-defined]

    def close(self) -> None:
        for module, name, original in self._restore:
            setattr(module, name, original)
        self._restore.clear()
        if self.counted_by == "GenerationRecord.units":
            self._builder.on_generation = None

    def reset(self) -> None:
        self._records.clear()
        self._calls = 0

    def retranslated(self) -> int:
        """Proxies re-translated since the last `reset`."""
        if self.counted_by == "GenerationRecord.units":
            return sum(
                1
                for record in self._records
                for unit in record.units
                if unit.startswith(PROXY_UNIT_PREFIX)
            )
        return self._calls

    def pushed(self) -> int | None:
        """Proxies the records say were given a new snapshot (None: no records on this code)."""
        if self.counted_by != "GenerationRecord.units":
            return None
        return sum(len(record.proxies) for record in self._records)
