"""Start-up benchmark: a real Envoy loading a 1,000-service mesh over xDS vs from a file.

    python bench/startup.py [--services 1000] [--endpoints 5] [--repeat 3]

The control plane is the real serving path, in this process: the synthetic
mesh goes as one ChangeSet through `MeshPipeline.initial_sync` (translation,
serialization, snapshot publication), and `AggregatedDiscoveryServer` serves
it over gRPC on a free loopback port.  Envoy is the stock binary, started
from `render_bootstrap` (SotW, then Delta), and timed from spawn until it
reports every outbound cluster active and every endpoint present (see
`envoy_readiness`).  The baseline is the same Envoy started from a static
bootstrap holding the same clusters, endpoints, listeners and routes (see
`static_bootstrap`), as JSON and as binary proto.  Each variant runs
`--repeat` times, interleaved; the figure is the median, and the goal is
xDS / static-JSON <= 1.2.

The control plane's own costs are reported too: translating and serializing
the mesh, building one proxy's snapshot, encoding the first full responses,
and the CPU time this process spent while each xDS Envoy started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report
import synthetic_mesh
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from envoy_readiness import Expectation, SpawnedEnvoy, StartupTiming
from serving import ControlPlaneUnderTest
from static_bootstrap import static_resources, write_static_bootstrap

from xds_server.bootstrap import build_bootstrap, render_bootstrap
from xds_server.envoy_process import EnvoyProcess, envoy_binary, free_port, wait_for_async
from xds_server.model import Proxy
from xds_server.resources import LISTENER, PUSH_ORDER, SHORT_NAMES

logger = logging.getLogger("bench.startup")

GOAL_RATIO = 1.2
NAMESPACE = synthetic_mesh.namespace_of(0)
STATIC_VARIANTS = ("static-json", "static-pb")
XDS_VARIANTS = ("xds-sotw", "xds-delta")
VARIANTS = STATIC_VARIANTS + XDS_VARIANTS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=1000, help="Services in the mesh")
    parser.add_argument("--endpoints", type=int, default=5, help="endpoints per Service")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds one Envoy may take to load"
    )
    parser.add_argument(
        "--interval", type=float, default=0.02, help="seconds between readiness polls"
    )
    args = parser.parse_args(argv)
    if args.services < 1 or args.endpoints < 1 or args.repeat < 1:
        parser.error("--services, --endpoints and --repeat must be at least 1")
    return args


@dataclass
class VariantRuns:
    name: str
    timings: list[StartupTiming] = field(default_factory=list)
    server_cpu_s: list[float] = field(default_factory=list)
    stream_opened_s: list[float] = field(default_factory=list)
    bytes_by_type: dict[str, int] = field(default_factory=dict)

    def loaded_median(self) -> float:
        return report.median([t.loaded_s for t in self.timings])

    def summary(self) -> dict[str, Any]:
        loaded = [t.loaded_s for t in self.timings]
        result: dict[str, Any] = {
            "loaded_median_s": round(self.loaded_median(), 4),
            "loaded_s": [round(value, 4) for value in loaded],
            "admin_median_s": round(report.median([t.admin_s for t in self.timings]), 4),
            "live_median_s": round(report.median([t.live_s for t in self.timings]), 4),
            "clusters": self.timings[-1].state.clusters,
            "endpoints": self.timings[-1].state.endpoints,
        }
        if self.server_cpu_s:
            result["server_cpu_median_s"] = round(report.median(self.server_cpu_s), 4)
            result["stream_opened_median_s"] = round(report.median(self.stream_opened_s), 4)
            result["bytes_by_type"] = dict(self.bytes_by_type)
        return result


def measure_control_plane(
    plane: ControlPlaneUnderTest, services: int, endpoints: int, probe: Proxy
) -> dict[str, float]:
    """Costs of the mesh-wide translation and of one proxy's snapshot and first responses."""
    changes = synthetic_mesh.mesh_changes(services, endpoints)
    wall, cpu = time.perf_counter(), time.process_time()
    plane.pipeline.initial_sync(changes)
    translate_wall, translate_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall = time.perf_counter()
    plane.pipeline.builder.add_proxy(probe)
    proxy_wall = time.perf_counter() - wall
    snapshot = plane.cache.get_snapshot(probe.node_id)
    if snapshot is None:
        raise RuntimeError(f"no snapshot for the probe proxy: {plane.cache.rejected}")
    wall = time.perf_counter()
    encoded = 0
    for type_url in PUSH_ORDER:
        resources = snapshot.get(type_url)
        if resources:
            response = DiscoveryResponse(
                version_info=snapshot.type_version(type_url), type_url=type_url, nonce="1"
            )
            for resource in resources.values():
                resource.add_to(response.resources)
            encoded += len(response.SerializeToString())
    encode_wall = time.perf_counter() - wall
    return {
        "translate_serialize_ms": report.milliseconds(translate_wall),
        "translate_serialize_cpu_ms": report.milliseconds(translate_cpu),
        "proxy_snapshot_ms": report.milliseconds(proxy_wall),
        "encode_first_push_ms": report.milliseconds(encode_wall),
        "first_push_bytes": encoded,
    }


def envoy_proxy(node_id: str, outbound_port: int) -> Proxy:
    """The proxy a benchmark Envoy is: outbound side only, on a free loopback port."""
    return Proxy(node_id=node_id, namespace=NAMESPACE, outbound_port=outbound_port)


@contextlib.asynccontextmanager
async def spawned(config: Path, name: str, workdir: Path) -> AsyncIterator[SpawnedEnvoy]:
    envoy = SpawnedEnvoy(EnvoyProcess(config, name=name, workdir=workdir))
    try:
        envoy.spawn()
        yield envoy
    finally:
        envoy.stop()


async def time_static(
    runs: VariantRuns, config: Path, workdir: Path, expect: Expectation, args: argparse.Namespace
) -> None:
    name = f"{runs.name}-{len(runs.timings)}"
    async with spawned(config, name, workdir) as envoy:
        timing = await asyncio.to_thread(
            envoy.wait_loaded, expect, timeout=args.timeout, interval=args.interval
        )
    runs.timings.append(timing)


async def time_xds(
    runs: VariantRuns,
    plane: ControlPlaneUnderTest,
    outbound_port: int,
    workdir: Path,
    expect: Expectation,
    args: argparse.Namespace,
) -> None:
    name = f"{runs.name}-{len(runs.timings)}"
    config = workdir / f"{name}.yaml"
    config.write_text(
        render_bootstrap(
            node_id=name,
            namespace=NAMESPACE,
            xds_address=plane.address,
            admin_port=0,
            delta=runs.name.endswith("delta"),
            outbound_port=outbound_port,
        ),
        encoding="utf-8",
    )
    cpu = time.process_time()
    async with spawned(config, name, workdir) as envoy:
        timing = await asyncio.to_thread(
            envoy.wait_loaded, expect, timeout=args.timeout, interval=args.interval
        )
        runs.server_cpu_s.append(time.process_time() - cpu)
        for stream in plane.ads.streams():
            if stream.node_id == name:
                opened = stream.connected_at.timestamp() - envoy.spawned_wall_clock
                runs.stream_opened_s.append(opened)
                for type_url, status in stream.types.items():
                    runs.bytes_by_type[SHORT_NAMES[type_url]] = status.bytes_sent
    runs.timings.append(timing)
    await wait_for_async(
        lambda: name not in plane.ads.connected_nodes(),
        timeout=10.0,
        message=f"{name} disconnected",
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    outbound_port = free_port()
    async with ControlPlaneUnderTest() as plane:
        probe = envoy_proxy("static-probe", outbound_port)
        costs = measure_control_plane(plane, args.services, args.endpoints, probe)
        snapshot = plane.cache.get_snapshot(probe.node_id)
        assert snapshot is not None
        clusters, listeners = static_resources(snapshot)
        expect = Expectation(
            cluster_prefix="outbound|",
            clusters=args.services,
            endpoints=args.services * args.endpoints,
            listeners=len(snapshot.get(LISTENER)),
        )
        plane.pipeline.builder.remove_proxy(probe.node_id)
        base = build_bootstrap(probe, xds_address=plane.address, admin_port=0)
        runs = {name: VariantRuns(name) for name in VARIANTS}
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
            workdir = Path(tmp)
            configs = {
                "static-json": write_static_bootstrap(
                    workdir / "static.json", base, clusters, listeners
                ),
                "static-pb": write_static_bootstrap(
                    workdir / "static.pb", base, clusters, listeners
                ),
            }
            for repetition in range(args.repeat):
                for name in VARIANTS:
                    logger.info("run %d of %s", repetition + 1, name)
                    if name in configs:
                        await time_static(runs[name], configs[name], workdir, expect, args)
                    else:
                        await time_xds(runs[name], plane, outbound_port, workdir, expect, args)
    return result_of(args, costs, runs)


def result_of(
    args: argparse.Namespace, costs: dict[str, float], runs: dict[str, VariantRuns]
) -> dict[str, Any]:
    ratios: dict[str, float] = {}
    for xds in XDS_VARIANTS:
        for static in STATIC_VARIANTS:
            key = f"{xds.removeprefix('xds-')}_vs_{static.removeprefix('static-')}"
            ratios[key] = round(runs[xds].loaded_median() / runs[static].loaded_median(), 3)
    return {
        "benchmark": "startup",
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "repeat": args.repeat,
        "control_plane": costs,
        "variants": {name: variant.summary() for name, variant in runs.items()},
        "ratios": ratios,
        "goal_ratio": GOAL_RATIO,
        "goal_met": {mode: ratios[f"{mode}_vs_json"] <= GOAL_RATIO for mode in ("sotw", "delta")},
    }


def tables(result: dict[str, Any]) -> list[str]:
    costs = result["control_plane"]
    cost_rows = [
        ("translate + serialize the mesh", costs["translate_serialize_ms"], "ms"),
        ("  of which CPU", costs["translate_serialize_cpu_ms"], "ms"),
        ("one proxy's snapshot (translate + check)", costs["proxy_snapshot_ms"], "ms"),
        ("encode its first CDS+EDS+LDS+RDS responses", costs["encode_first_push_ms"], "ms"),
        ("  their size", costs["first_push_bytes"], "bytes"),
    ]
    services, endpoints = result["services"], result["endpoints_per_service"]
    title = f"Control plane, {services} services x {endpoints} endpoints"
    variant_rows = []
    for name, summary in result["variants"].items():
        mode = name.removeprefix("xds-")
        variant_rows.append(
            (
                name,
                summary.get("stream_opened_median_s", ""),
                summary["admin_median_s"],
                summary["live_median_s"],
                summary["loaded_median_s"],
                " ".join(f"{value:.3f}" for value in summary["loaded_s"]),
                result["ratios"].get(f"{mode}_vs_json", ""),
                result["ratios"].get(f"{mode}_vs_pb", ""),
                summary.get("server_cpu_median_s", ""),
            )
        )
    return [
        report.table(title, ("cost", "value", "unit"), cost_rows),
        report.table(
            f"Envoy start-up until {services} clusters and {services * endpoints} endpoints"
            f" are live (seconds from spawn, median of {result['repeat']};"
            f" goal xDS/static-json <= {result['goal_ratio']})",
            (
                "variant",
                "ADS open",
                "admin",
                "LIVE",
                "loaded",
                "runs",
                "x json",
                "x pb",
                "server CPU",
            ),
            variant_rows,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if envoy_binary() is None:
        print("envoy is not on PATH", file=sys.stderr)
        return 2
    result = asyncio.run(run(args))
    report.emit(tables(result), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
