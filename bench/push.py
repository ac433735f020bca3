"""Push benchmark: one endpoint changes in a 10,000-service mesh; what does it cost?

    python bench/push.py [--services 10000] [--endpoints 3] [--proxies 20] [--changes 5]

The control plane is the real serving path, in this process (see `serving`):
the synthetic mesh goes through `MeshPipeline.initial_sync`, and the ADS
server listens on a free loopback port.  Proxies are real gRPC ADS clients in
a child process (see `ads_clients`), so this process's CPU time is the
server's.  For SotW, then Delta, the child connects:

* one *subscribed* proxy: CDS and LDS wildcard, EDS for every cluster, RDS
  `outbound|default`, ACKing everything as Envoy does;
* one *unsubscribed* proxy: the same, but its EDS names leave out the cluster
  whose endpoint changes;
* `--proxies` more subscribed proxies, so the per-proxy cost shows.

Once every stream has ACKed the current snapshot and gone quiet, one
endpoint of one Service is replaced (an EndpointSlice upsert in a ChangeSet
applied by `SnapshotBuilder.apply`, as `MeshPipeline.run` applies a batch),
`--changes` times.  Measured per change: the bytes each proxy received
(serialized response sizes, by type) and the server counted
(`servicer.streams()`), the time and CPU of `apply` alone, and the CPU and
wall time from `apply` until the server processed every subscribed proxy's
EDS ACK.  Goals: a subscribed proxy receives <= 2 KB, an unsubscribed one
0 bytes.

Then, still connected, as many proxies again (N more, in a second child
process) connect and sync: the growth of this process's resident memory
(`VmRSS`, after a garbage collection; it includes gRPC's C buffers, which
`tracemalloc` cannot see) divided by N is the control plane's memory per
proxy, with malloc's heap in use beside it (free of allocator slack); its CPU
time while they synced, divided by N, is the CPU of serving a proxy its first
config (the 4 Hz polling of `serving.wait_synced` included).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import footprint
import report
import serving
import synthetic_mesh
from ads_clients import ClientPlan, ClientProcess, ClientReport, ClientSpec
from serving import ControlPlaneUnderTest

from xds_server.envoy_process import wait_for_async
from xds_server.resources import ENDPOINT

logger = logging.getLogger("bench.push")

GOAL_SUBSCRIBED_BYTES = 2048
GOAL_UNSUBSCRIBED_BYTES = 0
VARIANTS = ("sotw", "delta")
SUBSCRIBED, UNSUBSCRIBED, EXTRA = "subscribed", "unsubscribed", "extra"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="Services in the mesh")
    parser.add_argument("--endpoints", type=int, default=3, help="endpoints per Service")
    parser.add_argument(
        "--proxies", type=int, default=20, help="extra subscribed proxies per variant"
    )
    parser.add_argument("--changes", type=int, default=5, help="endpoint changes per variant")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for the proxies to sync"
    )
    args = parser.parse_args(argv)
    if args.services < 2 or args.endpoints < 1 or args.proxies < 0 or args.changes < 1:
        parser.error("need --services >= 2, --endpoints >= 1, --proxies >= 0, --changes >= 1")
    return args


def node_id(variant: str, role: str, index: int = 0) -> str:
    return f"{variant}-{role}-{index}" if role == EXTRA else f"{variant}-{role}"


def role_of(node: str) -> str:
    return node.split("-")[1]


@dataclass(frozen=True)
class ChangeMeasurement(serving.PushCost):
    delivered_s: float
    """From `apply` until the last subscribed proxy got its EDS response."""


@dataclass(frozen=True)
class GrowthMeasurement:
    """N more proxies connected and synced: what it cost the control plane, per proxy."""

    proxies: int
    rss_per_proxy_bytes: int
    heap_per_proxy_bytes: int | None
    sync_cpu_per_proxy_s: float


async def wait_streams_at(plane: ControlPlaneUnderTest, nodes: set[str]) -> None:
    """Wait until every node's stream has processed the builder's latest snapshot."""
    version = str(plane.pipeline.builder.generation)

    def processed() -> bool:
        streams = [s for s in plane.ads.streams() if s.node_id in nodes]
        return all(s.snapshot_version == version for s in streams)

    await wait_for_async(processed, timeout=30.0, interval=0.01, message=f"snapshot {version}")


async def measure_change(
    plane: ControlPlaneUnderTest,
    clients: ClientProcess,
    nodes: set[str],
    subscribed: int,
    flapper: synthetic_mesh.EndpointFlapper,
) -> ChangeMeasurement:
    changes = flapper.next_change()
    await clients.ask("mark")
    version_before = _assignment_version(plane, nodes, flapper.cluster_name)
    before = serving.server_bytes(plane, nodes)
    acks_wanted = plane.ads.acks[ENDPOINT] + subscribed
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    started = time.monotonic()
    plane.pipeline.builder.apply(changes)
    apply_wall, apply_cpu = time.perf_counter() - wall, time.process_time() - cpu
    if _assignment_version(plane, nodes, flapper.cluster_name) == version_before:
        raise RuntimeError(f"the change left {flapper.cluster_name} as it was")
    await asyncio.wait_for(plane.ads.wait_acks(ENDPOINT, acks_wanted), 30.0)
    push_wall, push_cpu = time.perf_counter() - wall, time.process_time() - cpu
    await wait_streams_at(plane, nodes)
    await asyncio.sleep(0.2)  # anything sent to an unsubscribed proxy has arrived by now
    reports: dict[str, ClientReport] = await clients.ask("report")
    after = serving.server_bytes(plane, nodes)
    received = [r.eds_received_at for n, r in reports.items() if role_of(n) != UNSUBSCRIBED]
    if any(at is None for at in received):
        raise RuntimeError("a subscribed proxy got no EDS response for the change")
    return ChangeMeasurement(
        apply_wall_s=apply_wall,
        apply_cpu_s=apply_cpu,
        push_wall_s=push_wall,
        push_cpu_s=push_cpu,
        delivered_s=max(at for at in received if at is not None) - started,
        client_bytes={node: dict(r.bytes_by_type) for node, r in reports.items()},
        server_bytes={
            node: serving.bytes_growth(before.get(node, {}), now) for node, now in after.items()
        },
    )


def client_plan(
    plane: ControlPlaneUnderTest,
    variant: str,
    flapper: synthetic_mesh.EndpointFlapper,
    args: argparse.Namespace,
    specs: list[ClientSpec],
) -> ClientPlan:
    return ClientPlan(
        address=plane.address,
        delta=variant == "delta",
        services=args.services,
        changed_service=flapper.index,
        clients=tuple(specs),
    )


async def measure_growth(
    plane: ControlPlaneUnderTest,
    variant: str,
    flapper: synthetic_mesh.EndpointFlapper,
    args: argparse.Namespace,
    count: int,
) -> GrowthMeasurement:
    """Connect `count` more subscribed proxies, wait until they are synced, measure the growth."""
    specs = [ClientSpec(node_id(variant, EXTRA, args.proxies + i), True) for i in range(count)]
    nodes = {spec.node_id for spec in specs}
    rss, heap = footprint.rss_bytes(), footprint.heap_in_use_bytes()
    cpu = time.process_time()
    clients = ClientProcess(client_plan(plane, variant, flapper, args, specs))
    try:
        async with asyncio.timeout(args.timeout):
            await serving.wait_synced(plane, clients, nodes)
        sync_cpu = time.process_time() - cpu
        growth, heap_after = footprint.rss_bytes() - rss, footprint.heap_in_use_bytes()
    finally:
        await asyncio.to_thread(clients.stop)
    await serving.wait_disconnected(plane, nodes)
    heap_growth = None if heap is None or heap_after is None else (heap_after - heap) // count
    return GrowthMeasurement(count, growth // count, heap_growth, sync_cpu / count)


async def measure_variant(
    plane: ControlPlaneUnderTest,
    variant: str,
    flapper: synthetic_mesh.EndpointFlapper,
    args: argparse.Namespace,
) -> dict[str, Any]:
    specs = [ClientSpec(node_id(variant, SUBSCRIBED), True)]
    specs.append(ClientSpec(node_id(variant, UNSUBSCRIBED), False))
    specs.extend(ClientSpec(node_id(variant, EXTRA, i), True) for i in range(args.proxies))
    nodes = {spec.node_id for spec in specs}
    clients = ClientProcess(client_plan(plane, variant, flapper, args, specs))
    try:
        async with asyncio.timeout(args.timeout):
            sync_s = await serving.wait_synced(plane, clients, nodes)
        changes = [
            await measure_change(plane, clients, nodes, len(specs) - 1, flapper)
            for _ in range(args.changes)
        ]
        growth = await measure_growth(plane, variant, flapper, args, len(specs))
    finally:
        await asyncio.to_thread(clients.stop)
    await serving.wait_disconnected(plane, nodes)
    return summarize(variant, len(specs), sync_s, changes, growth)


def _assignment_version(plane: ControlPlaneUnderTest, nodes: set[str], name: str) -> str:
    """The version of ClusterLoadAssignment `name` in (any one) node's snapshot."""
    snapshot = plane.cache.get_snapshot(min(nodes))
    if snapshot is None:
        raise RuntimeError(f"node {min(nodes)} has no snapshot")
    return snapshot.get(ENDPOINT)[name].version


def summarize(
    variant: str,
    proxies: int,
    sync_s: float,
    changes: list[ChangeMeasurement],
    growth: GrowthMeasurement,
) -> dict[str, Any]:
    def worst(source: str, role: str) -> dict[str, int]:
        """The most bytes any proxy of `role` got in any change, by type."""
        totals: dict[str, int] = {}
        for change in changes:
            for node, by_type in getattr(change, source).items():
                if role_of(node) == role:
                    for type_name, size in by_type.items():
                        totals[type_name] = max(totals.get(type_name, 0), size)
        return totals

    push_cpu = report.median([c.push_cpu_s for c in changes])
    result: dict[str, Any] = {
        "proxies": proxies,
        "sync_s": round(sync_s, 3),
        "apply_ms": report.milliseconds(report.median([c.apply_wall_s for c in changes])),
        "apply_cpu_ms": report.milliseconds(report.median([c.apply_cpu_s for c in changes])),
        "push_wall_ms": report.milliseconds(report.median([c.push_wall_s for c in changes])),
        "push_cpu_ms": report.milliseconds(push_cpu),
        "push_cpu_per_proxy_ms": report.milliseconds(push_cpu / proxies),
        "delivered_ms": report.milliseconds(report.median([c.delivered_s for c in changes])),
        "rss_per_proxy_bytes": growth.rss_per_proxy_bytes,
        "heap_per_proxy_bytes": growth.heap_per_proxy_bytes,
        "sync_cpu_per_proxy_ms": report.milliseconds(growth.sync_cpu_per_proxy_s),
        "proxies_added_for_memory": growth.proxies,
    }
    for role in (SUBSCRIBED, UNSUBSCRIBED, EXTRA):
        client, server = worst("client_bytes", role), worst("server_bytes", role)
        result[f"{role}_bytes"] = sum(client.values())
        result[f"{role}_bytes_by_type"] = client
        result[f"server_{role}_bytes"] = sum(server.values())
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with ControlPlaneUnderTest() as plane:
        changes = synthetic_mesh.mesh_changes(args.services, args.endpoints)
        wall, cpu = time.perf_counter(), time.process_time()
        plane.pipeline.initial_sync(changes)
        build = {
            "mesh_build_ms": report.milliseconds(time.perf_counter() - wall),
            "mesh_build_cpu_ms": report.milliseconds(time.process_time() - cpu),
        }
        flapper = synthetic_mesh.EndpointFlapper(args.services // 2, args.endpoints)
        variants = {
            variant: await measure_variant(plane, variant, flapper, args) for variant in VARIANTS
        }
    return {
        "benchmark": "push",
        "code": footprint.code_under_test(),
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "extra_proxies": args.proxies,
        "changes": args.changes,
        **build,
        "variants": variants,
        "goal_subscribed_bytes": GOAL_SUBSCRIBED_BYTES,
        "goal_unsubscribed_bytes": GOAL_UNSUBSCRIBED_BYTES,
        "goal_met": {
            variant: 0 < summary["subscribed_bytes"] <= GOAL_SUBSCRIBED_BYTES
            and summary["unsubscribed_bytes"] == GOAL_UNSUBSCRIBED_BYTES
            for variant, summary in variants.items()
        },
    }


def tables(result: dict[str, Any]) -> list[str]:
    variants: dict[str, dict[str, Any]] = result["variants"]
    rows: list[tuple[Any, ...]] = [
        (
            "bytes to the subscribed proxy",
            *(_bytes(v, SUBSCRIBED) for v in variants.values()),
        ),
        ("  as the server counted", *(v[f"server_{SUBSCRIBED}_bytes"] for v in variants.values())),
        ("bytes to the unsubscribed proxy", *(_bytes(v, UNSUBSCRIBED) for v in variants.values())),
        (
            "  as the server counted",
            *(v[f"server_{UNSUBSCRIBED}_bytes"] for v in variants.values()),
        ),
        ("most bytes to an extra proxy", *(_bytes(v, EXTRA) for v in variants.values())),
        ("proxies connected", *(v["proxies"] for v in variants.values())),
        ("apply (translate + publish), ms", *(v["apply_ms"] for v in variants.values())),
        ("  of which CPU, ms", *(v["apply_cpu_ms"] for v in variants.values())),
        ("apply until every EDS ACK, ms", *(v["push_wall_ms"] for v in variants.values())),
        ("  server CPU, ms", *(v["push_cpu_ms"] for v in variants.values())),
        ("  server CPU per proxy, ms", *(v["push_cpu_per_proxy_ms"] for v in variants.values())),
        ("apply until the last proxy got EDS, ms", *(v["delivered_ms"] for v in variants.values())),
        ("initial sync of all proxies, s", *(v["sync_s"] for v in variants.values())),
        (
            "memory per proxy, RSS N->2N, B",
            *(v["rss_per_proxy_bytes"] for v in variants.values()),
        ),
        (
            "  malloc heap in use N->2N, B",
            *(v["heap_per_proxy_bytes"] for v in variants.values()),
        ),
        (
            "  server CPU per proxy joining, ms",
            *(v["sync_cpu_per_proxy_ms"] for v in variants.values()),
        ),
    ]
    title = (
        f"One endpoint changed among {result['services']} services x "
        f"{result['endpoints_per_service']} endpoints (median of {result['changes']} changes; "
        f"mesh built in {result['mesh_build_ms']:.0f} ms; xds_server {result['code']['commit']}; "
        f"goals: subscribed <= "
        f"{result['goal_subscribed_bytes']} B, unsubscribed {result['goal_unsubscribed_bytes']} B)"
    )
    return [report.table(title, ("", *variants), rows)]


def _bytes(summary: dict[str, Any], role: str) -> str:
    by_type = summary[f"{role}_bytes_by_type"]
    detail = " ".join(f"{name}={size}" for name, size in sorted(by_type.items()))
    return f"{summary[f'{role}_bytes']} ({detail})" if detail else str(summary[f"{role}_bytes"])


def main(argv: Sequence[str] | None = None) -> int:
    return report.main(argv, parse_args, run, tables)


if __name__ == "__main__":
    sys.exit(main())
