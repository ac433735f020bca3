"""Service-change benchmark: what does one Service change cost, by where its effects land?

    python bench/service_change.py [--services 10000] [--proxies 20] [--spread 20] [--changes 5]

In process, without gRPC (that part is `push.py`'s): the synthetic mesh
(`synthetic_mesh`: namespaces of 100 Services, Service `svc-i` selecting pods
labelled `app: svc-i`) goes into a `SnapshotBuilder`, then `--proxies`
proxies, spread over 1 namespace and then over `--spread` namespaces (one
layout per fresh builder).  Proxy k, in namespace `bench-n`, has a pod IP and
the labels of `svc-(100 n)`, the namespace's first Service, so it has an
inbound side.  Three scenarios, `--changes` changes each, in every layout:

* `port`: a Service of a namespace no proxy selects gains and loses a second
  HTTP port.  Its cluster and a virtual host of every namespace's outbound
  route table change: every proxy is sent something.
* `target-port`: `svc-0` (namespace `bench-0`) has its targetPort moved
  between 8080 and 8081.  Only the inbound side of the proxies in `bench-0`
  changes; with the proxies over 20 namespaces, that is the issue's "a
  Service change that affects one namespace of 20".
* `selector`: `svc-0` stops and starts selecting its pods: the proxies of
  `bench-0` lose and regain their inbound side, no one else's config changes.

Reported per scenario (median of the changes): the wall and CPU time of
`SnapshotBuilder.apply` and its CPU per proxy; how many proxies it
re-translated (`footprint.WorkLog`: from the builder's GenerationRecords where
it has them, else by counting per-proxy translations); and how many proxies'
snapshots changed in some type (what the ADS server sends a response for,
`Snapshot.changed`), i.e. the proxies that receive any bytes.  Per layout:
the CPU of applying the mesh before any proxy and of the first publish to
every proxy (compare their sum across versions: where the route tables are
built moved between them), the route tables served, the memory that
building the mesh took (RSS, meaningful in the first layout only, whose
process had freed nothing yet; and malloc's heap in use), and the memory per
proxy (`footprint`): the growth of live bytes (malloc's and pymalloc's in
use: the figure to compare) and of malloc's alone from N to 2N proxies, and
of Python allocations (`tracemalloc`) from 2N to 3N, each divided by N
(taken after the CPU figures, as tracemalloc slows allocation).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import footprint
import report
import synthetic_mesh

from xds_server.cache import Snapshot, SnapshotCache
from xds_server.model import ChangeSet, Service, ServicePort
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import ROUTE, SHORT_NAMES

logger = logging.getLogger("bench.service_change")

PORT, TARGET_PORT, SELECTOR = "port", "target-port", "selector"
SCENARIOS = (PORT, TARGET_PORT, SELECTOR)
LOCAL_SERVICE = 0
"""The Service the one-namespace scenarios change: `svc-0`, selecting the proxies of bench-0."""
MOVED_TARGET_PORT = synthetic_mesh.TARGET_PORT + 1
MB = 1024 * 1024


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="Services in the mesh")
    parser.add_argument("--proxies", type=int, default=20, help="proxies connected")
    parser.add_argument(
        "--spread", type=int, default=20, help="namespaces the proxies spread over (2nd layout)"
    )
    parser.add_argument("--changes", type=int, default=5, help="changes per scenario and layout")
    args = parser.parse_args(argv)
    namespaces = -(-args.services // synthetic_mesh.SERVICES_PER_NAMESPACE)
    if args.services < 2 or args.proxies < 1 or args.changes < 1:
        parser.error("need --services >= 2, --proxies >= 1, --changes >= 1")
    if not 1 <= args.spread <= min(args.proxies, namespaces):
        parser.error(f"need 1 <= --spread <= min(--proxies, {namespaces} namespaces)")
    return args


def port_service(args: argparse.Namespace) -> int:
    """The `port` scenario's Service: in the middle of the mesh, selecting no proxy."""
    return args.services // 2


def changed_service(scenario: str, index: int, *, changed: bool) -> Service:
    """Service `index` as `scenario` changes it (`changed`) or as the mesh has it."""
    base = synthetic_mesh.service(index)
    if not changed:
        return base
    if scenario == PORT:
        return dataclasses.replace(
            base, ports=(*base.ports, ServicePort(port=8081, name="http-alt"))
        )
    if scenario == TARGET_PORT:
        moved = tuple(
            dataclasses.replace(port, target_port=MOVED_TARGET_PORT) for port in base.ports
        )
        return dataclasses.replace(base, ports=moved)
    return dataclasses.replace(base, selector=(("app", "nobody"),))


def snapshots(builder: SnapshotBuilder) -> dict[str, Snapshot]:
    found = {node: builder.cache.get_snapshot(node) for node in builder.proxies}
    missing = [node for node, snapshot in found.items() if snapshot is None]
    if missing:
        raise RuntimeError(f"proxies without a snapshot: {missing}")
    return {node: snapshot for node, snapshot in found.items() if snapshot is not None}


def changed_types(before: Snapshot, after: Snapshot) -> set[str]:
    """The types whose resources differ: those the ADS server would send a response for."""
    return {
        type_url
        for type_url in {*before.resources, *after.resources}
        if after.changed(before, type_url)
    }


def measure_scenario(
    builder: SnapshotBuilder, work: footprint.WorkLog, scenario: str, index: int, changes: int
) -> dict[str, Any]:
    walls: list[float] = []
    cpus: list[float] = []
    retranslated: list[int] = []
    pushed: list[int | None] = []
    sent: list[int] = []
    types: set[str] = set()
    for change in range(changes):
        batch = ChangeSet()
        batch.upsert(changed_service(scenario, index, changed=change % 2 == 0))
        before = snapshots(builder)
        work.reset()
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        builder.apply(batch)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        retranslated.append(work.retranslated())
        pushed.append(work.pushed())
        after = snapshots(builder)
        differing = {node: changed_types(before[node], after[node]) for node in after}
        sent.append(sum(1 for found in differing.values() if found))
        types.update(t for found in differing.values() for t in found)
    if changes % 2:  # put the mesh back as it was, untimed, for the next scenario
        restore = ChangeSet()
        restore.upsert(changed_service(scenario, index, changed=False))
        builder.apply(restore)
    proxies = len(builder.proxies)
    cpu = report.median(cpus)
    return {
        "service": f"{synthetic_mesh.namespace_of(index)}/svc-{index}",
        "apply_ms": report.milliseconds(report.median(walls)),
        "apply_cpu_ms": report.milliseconds(cpu),
        "apply_cpu_per_proxy_ms": report.milliseconds(cpu / proxies),
        "retranslated": retranslated,
        "pushed_by_records": pushed,
        "proxies_sent": sent,
        "types_sent": sorted(SHORT_NAMES.get(t, t) for t in types),
    }


def memory_per_proxy(
    builder: SnapshotBuilder, namespaces: int, proxies: int
) -> dict[str, int | None]:
    """Marginal bytes per proxy: malloc'd heap from N to 2N proxies, Python objects 2N to 3N.

    No RSS here: a proxy's few kilobytes drown in the slack the changes before
    leave (5 MB route tables freed), and RSS went down as often as up.
    """

    def adder(first: int) -> Callable[[], None]:
        def add() -> None:
            for i in range(first, first + proxies):
                builder.add_proxy(synthetic_mesh.proxy(i, namespaces))

        return add

    heap, live = footprint.heap_in_use_bytes(), footprint.live_bytes()
    adder(proxies)()
    heap_after, live_after = footprint.heap_in_use_bytes(), footprint.live_bytes()
    traced = footprint.traced_growth(adder(2 * proxies))
    return {
        "live_bytes": None
        if live is None or live_after is None
        else (live_after - live) // proxies,
        "heap_bytes": None
        if heap is None or heap_after is None
        else (heap_after - heap) // proxies,
        "traced_bytes": traced // proxies,
    }


def measure_layout(args: argparse.Namespace, namespaces: int) -> dict[str, Any]:
    rss_start, heap_start = footprint.rss_bytes(), footprint.heap_in_use_bytes()
    builder = SnapshotBuilder(SnapshotCache())
    mesh = synthetic_mesh.mesh_changes(args.services, 1)
    cpu = time.process_time()
    builder.apply(mesh)
    mesh_cpu = time.process_time() - cpu
    rss_mesh, heap_mesh = footprint.rss_bytes(), footprint.heap_in_use_bytes()
    for i in range(args.proxies):
        builder.add_proxy(synthetic_mesh.proxy(i, namespaces))
    wall, cpu = time.perf_counter(), time.process_time()
    builder.mark_synced()
    sync_wall, sync_cpu = time.perf_counter() - wall, time.process_time() - cpu
    work = footprint.WorkLog(builder)
    targets = {PORT: port_service(args), TARGET_PORT: LOCAL_SERVICE, SELECTOR: LOCAL_SERVICE}
    try:
        scenarios = {
            name: measure_scenario(builder, work, name, targets[name], args.changes)
            for name in SCENARIOS
        }
    finally:
        work.close()
    errors = {node: builder.proxy_error(node) for node in builder.proxies}
    if any(errors.values()):
        raise RuntimeError(f"a proxy was refused its snapshot: {errors}")
    routes: dict[str, int] = {}
    for snapshot in snapshots(builder).values():
        routes.update({r.name: r.size for r in snapshot.get(ROUTE).values()})
    return {
        "namespaces_with_proxies": namespaces,
        "proxies_in_changed_namespace": sum(1 for i in range(args.proxies) if i % namespaces == 0),
        "retranslated_counted_by": work.counted_by,
        "mesh_cpu_ms": report.milliseconds(mesh_cpu),
        "first_publish_ms": report.milliseconds(sync_wall),
        "first_publish_cpu_ms": report.milliseconds(sync_cpu),
        "rss_mesh_mb": round((rss_mesh - rss_start) / MB, 1),
        "heap_mesh_mb": None
        if heap_mesh is None or heap_start is None
        else round((heap_mesh - heap_start) / MB, 1),
        "route_configs": len(routes),
        "route_config_bytes": max(routes.values(), default=0),
        "scenarios": scenarios,
        "memory_per_proxy": memory_per_proxy(builder, namespaces, args.proxies),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    layouts = [measure_layout(args, n) for n in dict.fromkeys((1, args.spread))]
    return {
        "benchmark": "service_change",
        "code": footprint.code_under_test(),
        "services": args.services,
        "proxies": args.proxies,
        "changes": args.changes,
        "layouts": layouts,
    }


def tables(result: dict[str, Any]) -> list[str]:
    layouts: list[dict[str, Any]] = result["layouts"]
    header = ("namespaces with proxies", *(str(x["namespaces_with_proxies"]) for x in layouts))
    rows: list[tuple[Any, ...]] = []
    for name in SCENARIOS:
        runs = [x["scenarios"][name] for x in layouts]
        rows += [
            (f"{name}: change {runs[0]['service']}, apply ms", *(r["apply_ms"] for r in runs)),
            ("  of which CPU, ms", *(r["apply_cpu_ms"] for r in runs)),
            ("  CPU per proxy, ms", *(r["apply_cpu_per_proxy_ms"] for r in runs)),
            ("  proxies re-translated (median)", *(_median(r["retranslated"]) for r in runs)),
            ("  proxies sent anything (median)", *(_median(r["proxies_sent"]) for r in runs)),
            ("  proxies in GenerationRecords", *(_recorded(r["pushed_by_records"]) for r in runs)),
            ("  types sent", *(" ".join(r["types_sent"]) or "-" for r in runs)),
        ]
    rows += [
        ("proxies in bench-0", *(x["proxies_in_changed_namespace"] for x in layouts)),
        ("mesh applied before any proxy, CPU ms", *(x["mesh_cpu_ms"] for x in layouts)),
        ("first publish to every proxy, ms", *(x["first_publish_ms"] for x in layouts)),
        ("route configurations served", *(x["route_configs"] for x in layouts)),
        ("bytes of the largest", *(x["route_config_bytes"] for x in layouts)),
        ("RSS growth building the mesh, MB", *(x["rss_mesh_mb"] for x in layouts)),
        ("malloc heap growth building it, MB", *(x["heap_mesh_mb"] for x in layouts)),
        (
            "memory per proxy, live N->2N, B",
            *(x["memory_per_proxy"]["live_bytes"] for x in layouts),
        ),
        (
            "  of which malloc N->2N, B",
            *(x["memory_per_proxy"]["heap_bytes"] for x in layouts),
        ),
        (
            "  Python allocations 2N->3N, B",
            *(x["memory_per_proxy"]["traced_bytes"] for x in layouts),
        ),
    ]
    title = (
        f"One Service changed among {result['services']} services, {result['proxies']} proxies "
        f"(median of {result['changes']} changes; xds_server {result['code']['commit']}; "
        f"re-translations counted by {layouts[0]['retranslated_counted_by']})"
    )
    return [report.table(title, header, rows)]


def _median(values: list[int]) -> int:
    return int(report.median(values))


def _recorded(values: list[int | None]) -> str:
    """The median count the builder's GenerationRecords gave, or "-" where it keeps none."""
    counts = [v for v in values if v is not None]
    return str(_median(counts)) if counts else "-"


def main(argv: Sequence[str] | None = None) -> int:
    return report.main(argv, parse_args, run, tables)


if __name__ == "__main__":
    sys.exit(main())
