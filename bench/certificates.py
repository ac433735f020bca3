"""Certificate benchmark: how fast the issuer signs, and what a rotation wave costs.

    python bench/certificates.py [--issue 500] [--runs 5] [--proxies 1000] [--services 100]

* Issuance: `--issue` identities issued from scratch by `CertificateIssuer.reconcile`
  (a P-256 key generated and an SVID signed per identity, the PEM made), `--runs`
  times; certificates per second is the median.
* Rotation wave: a mesh of `--services` Services (`synthetic_mesh`) and `--proxies`
  proxies of distinct identities (one service account each) goes through the real
  `SnapshotBuilder`; the issuer issues every identity and the builder applies it.
  Then every certificate is re-issued at once (what a root rotation's re-issue, or
  a TTL wave, does): measured are the issuer's CPU for the wave, the builder's
  `apply` wall and CPU time (translate the proxies whose Secret changed, publish),
  how many proxies got a new snapshot, and the bytes of the SDS resources that
  changed (what the server sends, each proxy its own `default` Secret).
The cost of one rotation wave should be the proxies' own Secrets and nothing else:
no cluster, listener or route changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import report
import synthetic_mesh

from xds_server.ca import CertificateAuthority
from xds_server.cache import SnapshotCache
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import CLUSTER, LISTENER, ROUTE, SECRET
from xds_server.security import CertificateIssuer

TTL = datetime.timedelta(hours=24)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issue", type=int, default=500, help="identities per issuance run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--services", type=int, default=100)
    return parser.parse_args(argv)


def identities(count: int) -> set[tuple[str, str]]:
    return {(f"ns-{i % 10}", f"sa-{i}") for i in range(count)}


def issuance(ca: CertificateAuthority, count: int) -> float:
    """Seconds to issue `count` identities from scratch."""
    issuer = CertificateIssuer(ca, ttl=TTL)
    issuer.identities_changed(identities(count))
    started = time.perf_counter()
    changes = issuer.reconcile()
    elapsed = time.perf_counter() - started
    assert len(changes) == count + 1  # the certificates and the trust roots
    return elapsed


def versions(builder: SnapshotBuilder, node_id: str, type_url: str) -> dict[str, str]:
    snapshot = builder.cache.get_snapshot(node_id)
    assert snapshot is not None
    return {name: r.version for name, r in snapshot.resources[type_url].items()}


def rotation_wave(proxies: int, services: int) -> dict[str, Any]:
    builder = SnapshotBuilder(SnapshotCache())
    builder.apply(synthetic_mesh.mesh_changes(services, 2))
    builder.mark_synced()
    namespaces = max(1, services // synthetic_mesh.SERVICES_PER_NAMESPACE)
    ca = CertificateAuthority.generate_root("cluster.local")
    clock = [time.time()]
    issuer = CertificateIssuer(ca, ttl=TTL, clock=lambda: clock[0])
    builder.on_identities = issuer.identities_changed
    for index in range(proxies):
        base = synthetic_mesh.proxy(index, namespaces)
        builder.add_proxy(dataclasses.replace(base, service_account=f"sa-{index}"))
    assert len(builder.identities) == proxies
    builder.apply(issuer.reconcile())
    nodes = sorted(builder.proxies)
    before = {
        t: {n: versions(builder, n, t) for n in nodes} for t in (SECRET, CLUSTER, LISTENER, ROUTE)
    }
    clock[0] += TTL.total_seconds() / 2 + 1  # every certificate is past its half-life
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    wave = issuer.reconcile()
    issue_cpu = time.process_time() - cpu
    retranslated = builder.retranslated
    cpu, wall = time.process_time(), time.perf_counter()
    builder.apply(wave)
    apply_cpu, apply_wall = time.process_time() - cpu, time.perf_counter() - wall
    sds_bytes = 0
    proxies_pushed = 0
    other_changes = 0
    for node in nodes:
        snapshot = builder.cache.get_snapshot(node)
        assert snapshot is not None
        changed = [
            r
            for name, r in snapshot.resources[SECRET].items()
            if before[SECRET][node].get(name) != r.version
        ]
        sds_bytes += sum(r.size for r in changed)
        proxies_pushed += bool(changed)
        for type_url in (CLUSTER, LISTENER, ROUTE):
            other_changes += versions(builder, node, type_url) != before[type_url][node]
    return {
        "proxies": proxies,
        "services": services,
        "certificates_reissued": len(wave.upserts),
        "issue_cpu_ms": report.milliseconds(issue_cpu),
        "apply_wall_ms": report.milliseconds(apply_wall),
        "apply_cpu_ms": report.milliseconds(apply_cpu),
        "proxies_retranslated": builder.retranslated - retranslated,
        "proxies_pushed": proxies_pushed,
        "sds_bytes": sds_bytes,
        "sds_bytes_per_proxy": sds_bytes / max(1, proxies_pushed),
        "proxies_with_other_changes": other_changes,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    ca = CertificateAuthority.generate_root("cluster.local")
    issuance(ca, min(10, args.issue))  # warm up
    runs = [issuance(ca, args.issue) for _ in range(args.runs)]
    per_second = [args.issue / seconds for seconds in runs]
    return {
        "benchmark": "certificates",
        "parameters": vars(args),
        "issuance_per_second": statistics.median(per_second),
        "issuance_runs_per_second": per_second,
        "rotation": rotation_wave(args.proxies, args.services),
    }


def tables(result: dict[str, Any]) -> list[str]:
    rotation = result["rotation"]
    return [
        report.table(
            f"issuance ({result['parameters']['issue']} identities x "
            f"{result['parameters']['runs']} runs, P-256 key + SVID each)",
            ["median certificates/s", "runs"],
            [
                [
                    f"{result['issuance_per_second']:.0f}",
                    " ".join(f"{r:.0f}" for r in result["issuance_runs_per_second"]),
                ]
            ],
        ),
        report.table(
            f"rotation wave ({rotation['proxies']} proxies of distinct identities, "
            f"{rotation['services']} services)",
            ["what", "value"],
            [[key, value] for key, value in rotation.items()],
        ),
    ]


if __name__ == "__main__":
    sys.exit(report.main(None, parse_args, run, tables))
