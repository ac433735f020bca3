"""Service-change benchmark: what does one Service change cost, by the proxies' namespaces?

    python bench/service_change.py [--services 10000] [--proxies 20] [--changes 5]

A Service change (unlike an endpoint change) rebuilds the outbound route
tables, which hold a virtual host per HTTP Service port of the whole mesh, and
re-translates every proxy's listeners.  The route tables are per caller
namespace (a short name resolves in the caller's namespace), so their cost
could grow with the number of namespaces that have proxies.  This measures it
in process, without gRPC (that part is `push.py`'s): the synthetic mesh
(`synthetic_mesh`: namespaces of 100 Services) goes into a `SnapshotBuilder`,
`--proxies` proxies are added, spread over 1 namespace and then over
`--spread` namespaces (one layout per fresh builder), and one Service gains
and loses a second HTTP port, `--changes` times.  Reported per layout (median
of the changes): the wall and CPU time of `SnapshotBuilder.apply`, and the
bytes of the route configurations the proxies were given.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import report
import synthetic_mesh

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Proxy, Service, ServicePort
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import ROUTE

logger = logging.getLogger("bench.service_change")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="Services in the mesh")
    parser.add_argument("--proxies", type=int, default=20, help="proxies connected")
    parser.add_argument(
        "--spread", type=int, default=20, help="namespaces the proxies spread over (2nd layout)"
    )
    parser.add_argument("--changes", type=int, default=5, help="Service changes per layout")
    args = parser.parse_args(argv)
    namespaces = -(-args.services // synthetic_mesh.SERVICES_PER_NAMESPACE)
    if args.services < 1 or args.proxies < 1 or args.changes < 1:
        parser.error("need --services >= 1, --proxies >= 1, --changes >= 1")
    if not 1 <= args.spread <= min(args.proxies, namespaces):
        parser.error(f"need 1 <= --spread <= min(--proxies, {namespaces} namespaces)")
    return args


def changed_service(index: int, *, extra_port: bool) -> Service:
    """Service `index`, with or without a second HTTP port: a change every proxy sees."""
    base = synthetic_mesh.service(index)
    ports = base.ports + ((ServicePort(port=8081, name="http-alt"),) if extra_port else ())
    return Service(base.namespace, base.name, ports, base.selector, base.cluster_ip)


def measure_layout(args: argparse.Namespace, namespaces: int) -> dict[str, Any]:
    builder = SnapshotBuilder(SnapshotCache())
    builder.apply(synthetic_mesh.mesh_changes(args.services, 1))
    for i in range(args.proxies):
        namespace = synthetic_mesh.namespace_of(
            (i % namespaces) * synthetic_mesh.SERVICES_PER_NAMESPACE
        )
        builder.add_proxy(Proxy(node_id=f"proxy-{i}.{namespace}", namespace=namespace))
    wall, cpu = time.perf_counter(), time.process_time()
    builder.mark_synced()
    sync_wall, sync_cpu = time.perf_counter() - wall, time.process_time() - cpu
    index = args.services // 2
    walls: list[float] = []
    cpus: list[float] = []
    for change in range(args.changes):
        changes = ChangeSet()
        changes.upsert(changed_service(index, extra_port=change % 2 == 0))
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        builder.apply(changes)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    errors = {node: builder.proxy_error(node) for node in builder.proxies}
    if any(errors.values()):
        raise RuntimeError(f"a proxy was refused its snapshot: {errors}")
    routes: dict[str, int] = {}
    for node in builder.proxies:
        snapshot = builder.cache.get_snapshot(node)
        if snapshot is None:
            raise RuntimeError(f"proxy {node} has no snapshot")
        routes.update({r.name: r.size for r in snapshot.get(ROUTE).values()})
    return {
        "namespaces_with_proxies": namespaces,
        "first_publish_ms": report.milliseconds(sync_wall),
        "first_publish_cpu_ms": report.milliseconds(sync_cpu),
        "apply_ms": report.milliseconds(report.median(walls)),
        "apply_cpu_ms": report.milliseconds(report.median(cpus)),
        "route_configs": len(routes),
        "route_config_bytes": max(routes.values(), default=0),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    layouts = [measure_layout(args, n) for n in dict.fromkeys((1, args.spread))]
    return {
        "benchmark": "service_change",
        "services": args.services,
        "proxies": args.proxies,
        "changes": args.changes,
        "layouts": layouts,
    }


def tables(result: dict[str, Any]) -> list[str]:
    layouts: list[dict[str, Any]] = result["layouts"]
    rows: list[tuple[Any, ...]] = [
        ("Service change: apply, ms", *(x["apply_ms"] for x in layouts)),
        ("  of which CPU, ms", *(x["apply_cpu_ms"] for x in layouts)),
        ("first publish to every proxy, ms", *(x["first_publish_ms"] for x in layouts)),
        ("route configurations served", *(x["route_configs"] for x in layouts)),
        ("bytes of the largest", *(x["route_config_bytes"] for x in layouts)),
    ]
    header = ("namespaces with proxies", *(str(x["namespaces_with_proxies"]) for x in layouts))
    title = (
        f"One Service changed among {result['services']} services, {result['proxies']} proxies "
        f"(median of {result['changes']} changes)"
    )
    return [report.table(title, header, rows)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run(args)
    report.emit(tables(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
