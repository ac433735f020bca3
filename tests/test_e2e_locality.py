"""Locality-aware routing on real traffic: callers stay in their zone and fail over.

An in-process control plane watches a manifest directory holding Service
`backend` with four sample-app endpoints in three zones (two in `a`, one in
`b`, one in `c`) and a BackendPolicy (YAML, through the file source)
enabling locality with the failover rule `a -> c`.  Two real Envoy sidecars
call it, one in zone `a` (state-of-the-world xDS) and one in zone `b` (Delta),
their zone `node.locality.zone` as the bootstrap sets it:

* each caller's requests all land in its own zone;
* zone a's endpoints go not ready in their EndpointSlice: the zone-a caller's
  traffic moves to zone c, the zone its rule names, and none to b; Envoy's
  `/clusters` shows the priorities (c at 0 now, b at 1);
* zone c's go too: it falls back to the rest (b);
* zone a's come back: the traffic comes home.

The zone-b caller is never affected by zone a's troubles.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    Sidecar,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    start_apps,
    start_sidecar,
    write_documents,
)
from e2e_policies import backend_policy_yaml

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND = "backend:8080"
CLUSTER = "outbound|8080||backend.default.svc.cluster.local"
ENDPOINTS = {  # version (the zone and an index) -> IP
    "a1": "127.0.57.1",
    "a2": "127.0.57.2",
    "b1": "127.0.57.3",
    "c1": "127.0.57.4",
}
REQUESTS = 40

POLICY = backend_policy_yaml(
    "zonal",
    {
        "loadBalancer": {
            "locality": {"enabled": True, "failover": [{"fromZone": "a", "toZone": "c"}]}
        }
    },
)


def slice_yaml(port: int, not_ready: frozenset[str] = frozenset()) -> str:
    """`backend`'s EndpointSlice: each endpoint in its zone, the zones in `not_ready` not ready."""
    endpoints = "".join(
        f"  - addresses: [{ip!r}]\n"
        f"    conditions: {{ready: {'false' if version[0] in not_ready else 'true'}}}\n"
        f"    zone: {version[0]}\n"
        for version, ip in ENDPOINTS.items()
    )
    return (
        textwrap.dedent(
            f"""\
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: backend-zones
              namespace: default
              labels: {{kubernetes.io/service-name: backend}}
            addressType: IPv4
            ports:
              - {{name: http, port: {port}, protocol: TCP}}
            """
        )
        + "endpoints:\n"
        + endpoints
    )


@dataclass
class Caller:
    """A real Envoy sidecar in one zone."""

    sidecar: Sidecar
    zone: str

    async def answers(self, count: int = REQUESTS) -> Counter[str]:
        """Which endpoint (version) answered each of `count` requests (or `HTTP <code>`)."""
        seen: Counter[str] = Counter()
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
            for _ in range(count):
                response = await client.get(
                    f"http://127.0.0.1:{self.sidecar.outbound_port}/", headers={"Host": BACKEND}
                )
                if response.status_code == 200:
                    seen[json.loads(response.text)["version"]] += 1
                else:
                    seen[f"HTTP {response.status_code}"] += 1
        return seen

    async def eds_service_name(self) -> str | None:
        entry = await self.sidecar.active_cluster(CLUSTER)
        if entry is None:
            return None
        cluster: dict[str, Any] = entry["cluster"]
        name: str | None = cluster.get("eds_cluster_config", {}).get("service_name")
        return name

    async def priorities(self) -> dict[str, int]:
        """The priority Envoy gives each of `backend`'s hosts, by endpoint version."""
        by_ip = {ip: version for version, ip in ENDPOINTS.items()}
        hosts = await self.sidecar.cluster_hosts(CLUSTER)
        return {by_ip[ip]: host.get("priority", 0) for ip, host in hosts.items()}


@dataclass
class Zones:
    directory: Path
    port: int
    callers: dict[str, Caller]

    def endpoints_not_ready(self, *zones: str) -> None:
        write_documents(
            self.directory / "services.yaml",
            service_yaml("backend"),
            slice_yaml(self.port, frozenset(zones)),
        )


@pytest.fixture
async def zones(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Zones]:
    async with contextlib.AsyncExitStack() as stack:
        port = free_port()
        await start_apps(stack, port, *(("backend", v, ip) for v, ip in ENDPOINTS.items()))
        directory = manifest_directory(tmp_path, {"policy.yaml": [POLICY]}, "mesh")
        mesh = Zones(directory, port, {})
        mesh.endpoints_not_ready()
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        for zone in ("a", "b"):
            sidecar = await start_sidecar(
                envoy_factory,
                plane.xds_port,
                free_port(),
                delta=zone == "b",  # one caller on each xDS variant
                node_id=f"client-{zone}.default",
                zone=zone,
            )
            mesh.callers[zone] = Caller(sidecar, zone)
        for zone, caller in mesh.callers.items():
            expected = f"{CLUSTER}|zone={zone}"

            async def fetches_its_variant(
                caller: Caller = caller, expected: str = expected
            ) -> bool:
                return await caller.eds_service_name() == expected and len(
                    await caller.priorities()
                ) == len(ENDPOINTS)

            await eventually(
                fetches_its_variant, within=30, message=f"zone {zone}'s caller runs {expected}"
            )
        yield mesh


async def settled_on(caller: Caller, allowed: set[str], message: str) -> Counter[str]:
    """Wait until a short burst lands only on `allowed`, then count a full run."""

    async def burst() -> bool:
        return set(await caller.answers(8)) <= allowed

    await eventually(burst, within=20, interval=0.2, message=message)
    return await caller.answers()


async def test_locality_keeps_traffic_in_the_callers_zone_and_fails_over(zones: Zones) -> None:
    a, b = zones.callers["a"], zones.callers["b"]
    assert await a.priorities() == {"a1": 0, "a2": 0, "c1": 1, "b1": 2}
    assert await b.priorities() == {"b1": 0, "a1": 1, "a2": 1, "c1": 1}

    in_a = await a.answers()
    assert set(in_a) == {"a1", "a2"}, in_a  # all of it in zone a, over both endpoints
    assert sum(in_a.values()) == REQUESTS
    assert set(await b.answers()) == {"b1"}

    # Zone a's endpoints go not ready: the failover rule's zone takes it all, b none.
    zones.endpoints_not_ready("a")
    failed_over = await settled_on(a, {"c1"}, "zone a's caller fails over to zone c")
    assert failed_over == Counter({"c1": REQUESTS}), failed_over
    assert await a.priorities() == {"c1": 0, "b1": 1}
    assert set(await b.answers()) == {"b1"}  # the zone-b caller is untouched

    # Zone c's go too: the rest (zone b) takes it.
    zones.endpoints_not_ready("a", "c")
    rest = await settled_on(a, {"b1"}, "zone a's caller falls back to zone b")
    assert rest == Counter({"b1": REQUESTS}), rest

    # Zone a's endpoints are back: so is its traffic.
    zones.endpoints_not_ready()
    home = await settled_on(a, {"a1", "a2"}, "zone a's caller comes home")
    assert set(home) == {"a1", "a2"} and sum(home.values()) == REQUESTS, home
