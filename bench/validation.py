"""Envoy-rule validation benchmark: what checking `validate.rules` costs, per resource and push.

    python bench/validation.py [--services 10000] [--proxies 20] [--spread 20]
                               [--endpoints 3] [--changes 5] [--repeat 200]

In process, as `service_change.py` runs the builder.  Every resource the
pipeline builds is checked against the Envoy protos' validation rules
(`xds_server.pipeline.validation`) unless `--no-envoy-validation`; this
measures what that adds.

Per resource, by type (median over `--repeat` checks of the same resource):

* `cold`: the resource's content not yet checked (the result cache emptied
  before each check), the rule functions already compiled; this is what a
  changed resource costs;
* `cached`: the same content again (a hit on (type URL, version)): what an
  unchanged resource that a push rebuilds costs;
* `first use`: the one-off cost of compiling the rules of the message types a
  resource holds (a fresh validator, once per process in the server).

The resources: a Service's outbound cluster without a policy and with a
BackendPolicy setting RingHash, circuit breakers, outlier detection and an
HTTP health check; its ClusterLoadAssignment (`--endpoints` endpoints); a
proxy's listeners (the outbound one with its HttpConnectionManager and the
inbound one) and its own clusters; and a namespace's outbound route table of
`--services` virtual hosts, checked with nothing known (every host new),
with one host changed since the last table checked (`validation_tables`: what
a Service change costs a namespace's table) and cached.

Per push, two builders hold the same mesh (`--services` Services, each with
one slice of `--endpoints` endpoints, and `--proxies` proxies over
`--spread` namespaces, proxy k a pod of the first Service of its namespace):
one validates, the other does not.  `--changes` changes of each kind are
applied to both in turn (median wall and CPU time of `SnapshotBuilder.apply`,
and how many messages were checked, i.e. cache misses):

* `endpoint`: one endpoint of one Service replaced (one new load assignment),
  another Service each change, so each is new content;
* `service`: a Service no proxy selects gets a second port, another port number
  each change: its clusters and load assignments, and one virtual host in every
  namespace's route table, change.

The initial sync (the mesh applied, then every proxy's first publish) is
timed for both builders as well.
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
from google.protobuf import json_format
from google.protobuf.message import Message

from xds_server import translate
from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Service, ServicePort
from xds_server.model.policy import BackendPolicy
from xds_server.pipeline import SnapshotBuilder, validation
from xds_server.pipeline.validation import EnvoyValidator
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.resources import CLUSTER, LISTENER, ROUTE, Resource, make_resource, unpack

logger = logging.getLogger("bench.validation")

POLICY_SPEC: dict[str, Any] = {
    "loadBalancer": {
        "algorithm": "RingHash",
        "ringHash": {"minimumRingSize": 64, "maximumRingSize": 4096},
        "hashPolicies": [{"header": {"name": "x-user"}}],
    },
    "connectionPool": {"maxConnections": 100, "maxPendingRequests": 10},
    "outlierDetection": {"consecutive5xx": 3, "maxEjectionPercent": 50},
    "healthCheck": {"interval": "5s", "timeout": "1s", "http": {"path": "/healthz"}},
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--proxies", type=int, default=20)
    parser.add_argument("--spread", type=int, default=20, help="namespaces the proxies are in")
    parser.add_argument("--endpoints", type=int, default=3, help="per Service")
    parser.add_argument("--changes", type=int, default=5, help="of each kind, per builder")
    parser.add_argument("--repeat", type=int, default=200, help="checks per resource")
    args = parser.parse_args(argv)
    if args.services < 2 * synthetic_mesh.SERVICES_PER_NAMESPACE and args.spread > 1:
        args.spread = max(1, args.services // synthetic_mesh.SERVICES_PER_NAMESPACE)
    return args


# -- per resource ------------------------------------------------------------------------


def _median_us(run: Callable[[], None], repeat: int, before: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(report.median(times) * 1e6, 1)


def measure_resource(
    label: str, resource: Resource, message: Message, repeat: int, *, table: bool = False
) -> dict[str, Any]:
    """First-use, cold and cached cost of checking one resource (module doc)."""
    fresh = EnvoyValidator()

    def check(validator: EnvoyValidator) -> None:
        if table:
            validator.validate_route_table(resource)
        else:
            validator.validate(resource, message)

    start = time.perf_counter()
    check(fresh)
    first_use = time.perf_counter() - start
    rounds = max(3, repeat // 20) if table else repeat
    cold = _median_us(lambda: check(fresh), rounds, fresh.clear)
    cached = _median_us(lambda: check(fresh), repeat, lambda: None)
    return {
        "resource": label,
        "type": resource.type_url.rsplit(".", 1)[-1],
        "bytes": resource.size,
        "first_use_ms": report.milliseconds(first_use),
        "cold_us": cold,
        "cached_us": cached,
    }


def one_host_changed(tables: translate.OutboundRouteTables, namespace: str) -> dict[str, Any]:
    """A table whose hosts were all checked, but for one (a Service change): its cost."""
    resource = tables.resource(namespace)
    config = unpack(resource)
    assert isinstance(config, Message)
    validator = EnvoyValidator()
    validator.validate_route_table(resource)
    times = []
    for round_ in range(5):
        changed = type(config)()
        changed.CopyFrom(config)
        changed.virtual_hosts[len(changed.virtual_hosts) // 2].domains.append(f"x-{round_}.bench")
        again = make_resource(changed)
        start = time.perf_counter()
        validator.validate_route_table(again)
        times.append(time.perf_counter() - start)
    return {
        "resource": f"route table {namespace}, one host changed",
        "type": "RouteConfiguration",
        "bytes": resource.size,
        "first_use_ms": None,
        "cold_us": round(report.median(times) * 1e6, 1),
        "cached_us": None,
    }


def per_resource(builder: SnapshotBuilder, args: argparse.Namespace) -> list[dict[str, Any]]:
    mesh = builder.mesh
    svc = synthetic_mesh.service(1)
    tuned = BackendPolicy.of(
        svc.namespace, "tuned", json_format.ParseDict(POLICY_SPEC, api.BackendPolicySpec())
    )
    (plain,) = translate.clusters_for_service(svc, None)
    (shaped,) = translate.clusters_for_service(svc, tuned)
    (assignment,) = translate.load_assignments_for_service(svc, mesh.slices_of(svc))
    node = synthetic_mesh.proxy(0, args.spread)
    snapshot = builder.cache.get_snapshot(node.node_id)
    assert snapshot is not None
    samples: list[tuple[str, Message]] = [
        ("outbound cluster", plain),
        ("outbound cluster with a BackendPolicy", shaped),
        (f"load assignment, {args.endpoints} endpoints", assignment),
    ]
    for resource in snapshot.get(LISTENER).values():
        samples.append((f"listener {resource.name}", unpack(resource)))
    own = [r for r in snapshot.get(CLUSTER).values() if not r.name.startswith("outbound|")]
    samples += [(f"proxy cluster {r.name}", unpack(r)) for r in own[:2]]
    found = [measure_resource(label, make_resource(m), m, args.repeat) for label, m in samples]
    tables = translate.outbound_route_tables(mesh)
    (route,) = snapshot.get(ROUTE).values()
    hosts = len(unpack(route).virtual_hosts)  # type: ignore[attr-defined]
    found.append(
        measure_resource(
            f"route table {node.namespace}, {hosts} hosts, all new",
            route,
            unpack(route),
            args.repeat,
            table=True,
        )
    )
    found.append(one_host_changed(tables, node.namespace))
    return found


# -- per push ----------------------------------------------------------------------------


def second_port(index: int, change: int) -> Service:
    """Service `index` with a second port, a new one each change (so new content)."""
    base = synthetic_mesh.service(index)
    return dataclasses.replace(
        base, ports=(*base.ports, ServicePort(port=8100 + change, name="http-alt"))
    )


def timed_apply(
    builder: SnapshotBuilder, changes: ChangeSet, *, validate: bool
) -> dict[str, float]:
    checker = validation.default_validator()
    validation.configure(enabled=validate)
    checked = checker.checked
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    builder.apply(changes)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if builder.translation_errors():
        raise RuntimeError(f"translation errors: {builder.translation_errors()}")
    return {"wall": wall, "cpu": cpu, "checked": checker.checked - checked}


def synced_builder(
    args: argparse.Namespace, *, validate: bool
) -> tuple[SnapshotBuilder, dict[str, float]]:
    validation.configure(enabled=validate)
    builder = SnapshotBuilder(SnapshotCache())
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    builder.apply(synthetic_mesh.mesh_changes(args.services, args.endpoints))
    for index in range(args.proxies):
        builder.add_proxy(synthetic_mesh.proxy(index, args.spread))
    builder.mark_synced()
    sync = {
        "wall": time.perf_counter() - start_wall,
        "cpu": time.process_time() - start_cpu,
    }
    return builder, sync


def per_push(args: argparse.Namespace) -> tuple[dict[str, Any], SnapshotBuilder]:
    checker = validation.default_validator()
    checker.clear()
    checked = checker.checked
    on, sync_on = synced_builder(args, validate=True)
    sync_on["checked"] = checker.checked - checked
    off, sync_off = synced_builder(args, validate=False)
    moved = args.services // 2  # a Service no proxy selects (proxies pick each namespace's first)
    runs: dict[str, dict[bool, list[dict[str, float]]]] = {
        "endpoint": {True: [], False: []},
        "service": {True: [], False: []},
    }
    for change in range(args.changes):
        for validate, builder in ((True, on), (False, off)):
            # Each change is new content: another Service's endpoint, another port number.
            endpoint = synthetic_mesh.endpoint_change(1 + change, args.endpoints, moved=True)
            runs["endpoint"][validate].append(timed_apply(builder, endpoint, validate=validate))
            batch = ChangeSet()
            batch.upsert(second_port(moved, change))
            runs["service"][validate].append(timed_apply(builder, batch, validate=validate))
    validation.configure(enabled=True)
    pushes = {}
    for kind, by_mode in runs.items():
        summary: dict[str, Any] = {}
        for validate, label in ((True, "with"), (False, "without")):
            measured = by_mode[validate]
            summary[f"{label}_ms"] = report.milliseconds(
                report.median([m["wall"] for m in measured])
            )
            summary[f"{label}_cpu_ms"] = report.milliseconds(
                report.median([m["cpu"] for m in measured])
            )
            summary[f"{label}_checked"] = int(report.median([m["checked"] for m in measured]))
        summary["added_cpu_ms"] = round(summary["with_cpu_ms"] - summary["without_cpu_ms"], 3)
        pushes[kind] = summary
    sync = {
        "with_ms": report.milliseconds(sync_on["wall"]),
        "with_cpu_ms": report.milliseconds(sync_on["cpu"]),
        "with_checked": int(sync_on["checked"]),
        "without_ms": report.milliseconds(sync_off["wall"]),
        "without_cpu_ms": report.milliseconds(sync_off["cpu"]),
    }
    del off
    gc.collect()
    return {"pushes": pushes, "initial_sync": sync, "cache_entries": len(checker.results)}, on


def run(args: argparse.Namespace) -> dict[str, Any]:
    pushes, builder = per_push(args)
    return {
        "benchmark": "validation",
        "code": footprint.code_under_test(),
        "services": args.services,
        "proxies": args.proxies,
        "namespaces_with_proxies": args.spread,
        "endpoints": args.endpoints,
        "changes": args.changes,
        "repeat": args.repeat,
        "resources": per_resource(builder, args),
        **pushes,
    }


def tables(result: dict[str, Any]) -> list[str]:
    params = (
        f"{result['services']} services x {result['endpoints']} endpoints, {result['proxies']} "
        f"proxies in {result['namespaces_with_proxies']} namespaces; "
        f"xds_server {result['code']['commit']}"
    )
    per_resource = report.table(
        f"Envoy-rule validation per resource (median of {result['repeat']}; {params})",
        ("resource", "bytes", "first use ms", "cold us", "cached us"),
        [
            (
                r["resource"],
                r["bytes"],
                "-" if r["first_use_ms"] is None else r["first_use_ms"],
                r["cold_us"],
                "-" if r["cached_us"] is None else r["cached_us"],
            )
            for r in result["resources"]
        ],
    )
    rows = []
    for kind, label in (("endpoint", "one endpoint changed"), ("service", "one Service's port")):
        push = result["pushes"][kind]
        rows += [
            (f"{label}: apply ms", push["with_ms"], push["without_ms"]),
            ("  CPU ms", push["with_cpu_ms"], push["without_cpu_ms"]),
            ("  messages checked", push["with_checked"], push["without_checked"]),
        ]
    sync = result["initial_sync"]
    rows += [
        ("initial sync (mesh + first publish) ms", sync["with_ms"], sync["without_ms"]),
        ("  CPU ms", sync["with_cpu_ms"], sync["without_cpu_ms"]),
        ("  messages checked", sync["with_checked"], 0),
        ("validation results cached", result["cache_entries"], "-"),
    ]
    per_push = report.table(
        f"Per push, with and without validation (median of {result['changes']}; {params})",
        ("", "with", "without"),
        rows,
    )
    return [per_resource, per_push]


def main(argv: Sequence[str] | None = None) -> int:
    return report.main(argv, parse_args, run, tables)


if __name__ == "__main__":
    sys.exit(main())
