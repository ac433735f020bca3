"""Policy-change benchmark: one BackendPolicy changes in a 10,000-service mesh; what does it cost?

    python bench/policy_change.py [--services 10000] [--proxies 20] [--changes 5]

The control plane is the real serving path, in this process (`serving`), and
the proxies are real gRPC ADS clients in a child process (`ads_clients`, as in
`push.py`), so this process's CPU time is the server's.  The synthetic mesh
(`synthetic_mesh`: namespaces of 100 Services) goes through `initial_sync`;
then, for SotW and for Delta, `--proxies` proxies connect (CDS and LDS
wildcard, EDS for every cluster, RDS `outbound|default`; no inbound side) and
sync.  Three scenarios, `--changes` changes each, alternating between two
versions of the policy so that every change is real:

* `service`: a BackendPolicy of bench-0 targeting `svc-0` changes its
  connection pool and outlier detection.  One cluster changes.
* `namespace`: a BackendPolicy of bench-1 without targetRefs (the namespace
  default) changes the same way: the 100 clusters of bench-1 change.
* `inbound-only`: the `service` policy changes only its `localRateLimit`,
  which shapes the target's own sidecar (its inbound listener), not its
  callers' clusters: no proxy here runs `svc-0`, so none is sent anything.

Every proxy holds every Service's cluster, so a cluster change reaches every
proxy; what must hold is that each is sent only the changed clusters and the
load assignments of those clusters (Envoy warms a changed cluster by
fetching its endpoints again, so the server re-sends them), nothing of any
other Service and no listener or route.  Over Delta that is the bytes of
those resources; over SotW the protocol sends the full CDS set in every CDS
response (shown, not a goal).  A proxy whose resources did not change is
sent 0 bytes (the `inbound-only` scenario).

Measured per change (median): the wall and CPU time of `SnapshotBuilder.apply`
(translate + publish), and the server's CPU from `apply` until every proxy
ACKed the new CDS (with nothing to send: the apply alone); the bytes each proxy
received, by type (client side) and as the server counted them; how many
clusters changed and the serialized size of them and their load assignments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import footprint
import report
import serving
import synthetic_mesh
from ads_clients import ClientPlan, ClientProcess, ClientReport, ClientSpec
from serving import ControlPlaneUnderTest

from xds_server.cache import Snapshot
from xds_server.model import ChangeSet
from xds_server.model.policy import BackendPolicy
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.resources import CLUSTER, ENDPOINT, SHORT_NAMES

logger = logging.getLogger("bench.policy_change")

ENVELOPE_BYTES = 256
"""A Delta response's wrapping of one resource (name, version, Any type URL), at most."""
RESPONSE_BYTES = 512
"""A response's own fields (type URL, nonce, system version), at most, for two types."""

VARIANTS = ("sotw", "delta")
SERVICE, NAMESPACE, INBOUND_ONLY = "service", "namespace", "inbound-only"
SCENARIOS = (SERVICE, NAMESPACE, INBOUND_ONLY)
TARGET = 0
"""`svc-0` (namespace bench-0): the `service` scenario's target."""
DEFAULT_NAMESPACE_INDEX = 1
"""bench-1: the `namespace` scenario's namespace."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=10_000, help="Services in the mesh")
    parser.add_argument("--proxies", type=int, default=20, help="proxies connected per variant")
    parser.add_argument("--changes", type=int, default=5, help="changes per scenario")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for the proxies to sync"
    )
    args = parser.parse_args(argv)
    per_namespace = synthetic_mesh.SERVICES_PER_NAMESPACE
    if args.services <= per_namespace or args.proxies < 1 or args.changes < 1:
        parser.error(f"need --services > {per_namespace} (2 namespaces), --proxies >= 1")
    return args


def policy(scenario: str, version: int) -> BackendPolicy:
    """Scenario's policy in one of two versions (0, 1): each change flips between them."""
    spec = api.BackendPolicySpec()
    if scenario == NAMESPACE:
        namespace = synthetic_mesh.namespace_of(
            DEFAULT_NAMESPACE_INDEX * synthetic_mesh.SERVICES_PER_NAMESPACE
        )
        name = "namespace-default"
    else:
        namespace = synthetic_mesh.namespace_of(TARGET)
        name = "svc-0-policy"
        spec.target_refs.add(kind="Service", name=f"svc-{TARGET}")
    if scenario == INBOUND_ONLY:
        # Cluster-shaping sections fixed; only the target's own rate limit moves.
        spec.connection_pool.max_connections.value = 100
        spec.local_rate_limit.max_tokens = 100 + version
        spec.local_rate_limit.fill_interval.FromSeconds(1)
    else:
        spec.connection_pool.max_connections.value = 100 + version
        spec.connection_pool.max_pending_requests.value = 50
        spec.outlier_detection.consecutive_5xx.value = 3 + version
        spec.outlier_detection.interval.FromSeconds(5)
    return BackendPolicy.of(namespace, name, spec)


def upsert(obj: BackendPolicy) -> ChangeSet:
    changes = ChangeSet()
    changes.upsert(obj)
    return changes


@dataclass(frozen=True)
class ChangeMeasurement(serving.PushCost):
    clusters_changed: int
    changed_cluster_bytes: int


def changed_clusters(before: Snapshot, after: Snapshot) -> tuple[int, int]:
    """How many clusters differ between two snapshots, and the bytes of the new ones and
    of their load assignments (Envoy warms a changed cluster by fetching its endpoints
    again, so the server sends both)."""
    old, new = before.get(CLUSTER), after.get(CLUSTER)
    changed = [r for name, r in new.items() if name not in old or old[name].version != r.version]
    assignments = after.get(ENDPOINT)
    size = sum(r.size for r in changed)
    size += sum(assignments[r.name].size for r in changed if r.name in assignments)
    return len(changed), size


async def measure_change(
    plane: ControlPlaneUnderTest, clients: ClientProcess, nodes: set[str], changes: ChangeSet
) -> ChangeMeasurement:
    await clients.ask("mark")
    some_node = min(nodes)
    snapshot_before = plane.cache.get_snapshot(some_node)
    bytes_before = serving.server_bytes(plane, nodes)
    acks_wanted = plane.ads.acks[CLUSTER] + len(nodes)
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    plane.pipeline.builder.apply(changes)
    apply_wall, apply_cpu = time.perf_counter() - wall, time.process_time() - cpu
    snapshot_after = plane.cache.get_snapshot(some_node)
    if snapshot_before is None or snapshot_after is None:
        raise RuntimeError(f"{some_node} has no snapshot")
    count, size = changed_clusters(snapshot_before, snapshot_after)
    if count:
        await asyncio.wait_for(plane.ads.wait_acks(CLUSTER, acks_wanted), 60.0)
    push_wall, push_cpu = time.perf_counter() - wall, time.process_time() - cpu
    await asyncio.sleep(0.5)  # anything else on its way has arrived by now
    await asyncio.wait_for(serving.wait_synced(plane, clients, nodes, own_snapshot(plane)), 60.0)
    reports: dict[str, ClientReport] = await clients.ask("report")
    bytes_after = serving.server_bytes(plane, nodes)
    return ChangeMeasurement(
        apply_wall_s=apply_wall,
        apply_cpu_s=apply_cpu,
        push_wall_s=push_wall,
        push_cpu_s=push_cpu,
        clusters_changed=count,
        changed_cluster_bytes=size,
        client_bytes={node: dict(r.bytes_by_type) for node, r in reports.items()},
        server_bytes={
            node: serving.bytes_growth(bytes_before.get(node, {}), now)
            for node, now in bytes_after.items()
        },
    )


def own_snapshot(plane: ControlPlaneUnderTest) -> Callable[[str], str | None]:
    """The version each node's stream must be at: its own snapshot's in the cache.

    Not the builder's generation (`serving.wait_synced`'s default): a change
    that leaves a proxy's resources as they were publishes it no new snapshot,
    so its stream stays at the version it had.
    """

    def version(node: str) -> str | None:
        snapshot = plane.cache.get_snapshot(node)
        return None if snapshot is None else snapshot.version

    return version


async def measure_scenario(
    plane: ControlPlaneUnderTest,
    clients: ClientProcess,
    nodes: set[str],
    scenario: str,
    changes: int,
) -> dict[str, Any]:
    # Attach the policy first, untimed: the changes measured are changes of a policy.
    plane.pipeline.builder.apply(upsert(policy(scenario, 0)))
    await asyncio.wait_for(serving.wait_synced(plane, clients, nodes, own_snapshot(plane)), 60.0)
    measured = []
    for change in range(changes):
        measured.append(
            await measure_change(plane, clients, nodes, upsert(policy(scenario, 1 - change % 2)))
        )
    return summarize(measured, len(nodes))


def summarize(changes: list[ChangeMeasurement], proxies: int) -> dict[str, Any]:
    def most(source: str) -> tuple[int, dict[str, int]]:
        """The most bytes any proxy got in a change, and that proxy's bytes by type."""
        worst: tuple[int, dict[str, int]] = (0, {})
        for change in changes:
            for by_type in getattr(change, source).values():
                total = sum(by_type.values())
                if total >= worst[0]:
                    worst = (total, by_type)
        return worst

    def least(source: str) -> int:
        return min(
            (sum(t.values()) for c in changes for t in getattr(c, source).values()), default=0
        )

    push_cpu = report.median([c.push_cpu_s for c in changes])
    client_most, client_types = most("client_bytes")
    server_most, _ = most("server_bytes")
    return {
        "apply_ms": report.milliseconds(report.median([c.apply_wall_s for c in changes])),
        "apply_cpu_ms": report.milliseconds(report.median([c.apply_cpu_s for c in changes])),
        "push_wall_ms": report.milliseconds(report.median([c.push_wall_s for c in changes])),
        "push_cpu_ms": report.milliseconds(push_cpu),
        "push_cpu_per_proxy_ms": report.milliseconds(push_cpu / proxies),
        "clusters_changed": int(report.median([c.clusters_changed for c in changes])),
        "changed_cluster_bytes": int(report.median([c.changed_cluster_bytes for c in changes])),
        "most_bytes_per_proxy": client_most,
        "least_bytes_per_proxy": least("client_bytes"),
        "bytes_by_type": client_types,
        "server_most_bytes_per_proxy": server_most,
        "types_sent": sorted(
            {t for c in changes for by_type in c.client_bytes.values() for t in by_type}
        ),
    }


async def measure_variant(
    plane: ControlPlaneUnderTest, variant: str, args: argparse.Namespace
) -> dict[str, Any]:
    specs = [ClientSpec(f"{variant}-proxy-{i}", True) for i in range(args.proxies)]
    nodes = {spec.node_id for spec in specs}
    plan = ClientPlan(
        address=plane.address,
        delta=variant == "delta",
        services=args.services,
        changed_service=TARGET,
        clients=tuple(specs),
    )
    clients = ClientProcess(plan)
    try:
        async with asyncio.timeout(args.timeout):
            sync_s = await serving.wait_synced(plane, clients, nodes, own_snapshot(plane))
        scenarios = {
            scenario: await measure_scenario(plane, clients, nodes, scenario, args.changes)
            for scenario in SCENARIOS
        }
        clients.check()
    finally:
        await asyncio.to_thread(clients.stop)
    await serving.wait_disconnected(plane, nodes)
    return {"proxies": len(nodes), "sync_s": round(sync_s, 3), "scenarios": scenarios}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with ControlPlaneUnderTest() as plane:
        wall, cpu = time.perf_counter(), time.process_time()
        plane.pipeline.initial_sync(synthetic_mesh.mesh_changes(args.services, 1))
        build_ms = report.milliseconds(time.perf_counter() - wall)
        build_cpu_ms = report.milliseconds(time.process_time() - cpu)
        variants = {variant: await measure_variant(plane, variant, args) for variant in VARIANTS}
    delta = variants["delta"]["scenarios"]
    return {
        "benchmark": "policy_change",
        "code": footprint.code_under_test(),
        "services": args.services,
        "proxies": args.proxies,
        "changes": args.changes,
        "mesh_build_ms": build_ms,
        "mesh_build_cpu_ms": build_cpu_ms,
        "variants": variants,
        "goal_met": {
            # Delta: each proxy is sent the changed clusters and their endpoints, nothing else.
            "delta_only_changed_clusters": all(
                set(delta[s]["types_sent"]) <= {"CDS", "EDS"}
                and delta[s]["most_bytes_per_proxy"]
                <= delta[s]["changed_cluster_bytes"]
                + ENVELOPE_BYTES * 2 * delta[s]["clusters_changed"]
                + RESPONSE_BYTES
                for s in (SERVICE, NAMESPACE)
            ),
            "unchanged_proxies_sent_nothing": all(
                v["scenarios"][INBOUND_ONLY]["most_bytes_per_proxy"] == 0 for v in variants.values()
            ),
        },
    }


def tables(result: dict[str, Any]) -> list[str]:
    variants: dict[str, dict[str, Any]] = result["variants"]
    header = ("", *variants)
    rows: list[tuple[Any, ...]] = []
    for scenario in SCENARIOS:
        runs = [v["scenarios"][scenario] for v in variants.values()]
        rows += [
            (f"{scenario}: clusters changed", *(r["clusters_changed"] for r in runs)),
            ("  their bytes and their endpoints'", *(r["changed_cluster_bytes"] for r in runs)),
            ("  most bytes to a proxy", *(_bytes(r) for r in runs)),
            ("  least bytes to a proxy", *(r["least_bytes_per_proxy"] for r in runs)),
            ("  as the server counted (most)", *(r["server_most_bytes_per_proxy"] for r in runs)),
            ("  apply (translate + publish), ms", *(r["apply_ms"] for r in runs)),
            ("    of which CPU, ms", *(r["apply_cpu_ms"] for r in runs)),
            ("  apply until every CDS ACK, ms", *(r["push_wall_ms"] for r in runs)),
            ("    server CPU, ms", *(r["push_cpu_ms"] for r in runs)),
            ("    server CPU per proxy, ms", *(r["push_cpu_per_proxy_ms"] for r in runs)),
        ]
    rows.append(("initial sync of all proxies, s", *(v["sync_s"] for v in variants.values())))
    title = (
        f"One BackendPolicy changed among {result['services']} services, "
        f"{result['proxies']} proxies (median of {result['changes']} changes; mesh built in "
        f"{result['mesh_build_ms']:.0f} ms; xds_server {result['code']['commit']}; "
        f"goals met: {result['goal_met']})"
    )
    return [report.table(title, header, rows)]


def _bytes(summary: dict[str, Any]) -> str:
    detail = " ".join(
        f"{SHORT_NAMES.get(name, name)}={size}"
        for name, size in sorted(summary["bytes_by_type"].items())
    )
    total = summary["most_bytes_per_proxy"]
    return f"{total} ({detail})" if detail else str(total)


def main(argv: Sequence[str] | None = None) -> int:
    return report.main(argv, parse_args, run, tables)


if __name__ == "__main__":
    sys.exit(main())
