"""BackendPolicy on real traffic: a real Envoy sidecar calls sample apps through the mesh.

An in-process control plane watches a manifest directory holding Service
`backend` (port 8080) and its EndpointSlice, whose endpoints are sample apps
on their own loopback IPs; one real Envoy client sidecar sends the requests
(`Host: backend:8080`).  Each test writes a BackendPolicy targeting `backend`
into the directory, waits until Envoy runs the cluster it shapes (the
cluster names the policy in its metadata), and then shows the policy at work
on requests and in Envoy's own admin (`/clusters`, `/stats`):

* circuit breaker: past `maxConnections` + `maxPendingRequests`, the excess
  requests are answered 503 with `x-envoy-overloaded` and counted as
  `upstream_rq_pending_overflow` (with the defaults, the same burst succeeds);
* outlier detection: an endpoint answering 500 is ejected after
  `consecutive5xx` errors (`failed_outlier_check`) and traffic moves to the
  healthy ones;
* active health check: an endpoint whose app died is marked
  `failed_active_health_check` by the probes alone, before any request is
  sent, and then no request goes to it (none is retried, it counts none);
* ring hash: one header value stays on one endpoint, different values spread;
* least request: with one endpoint holding slow requests open, new requests
  go to the idle one;
* connect timeout: an endpoint whose listen backlog is full never completes
  a handshake; the caller gives up after the policy's timeout
  (`upstream_cx_connect_timeout`), not the 10 s default.

Then what the control plane says about it: `explain` names the policy
behind the cluster; a policy change re-sends only the targeted Service's
cluster (the other Service's cluster is not touched in Envoy, no listener,
route or endpoint is sent); and a policy that passes the CRD's schema but
that Envoy would reject (a ring smaller than its minimum) is refused with
`Accepted: False, Invalid` naming the field, while Envoy keeps the last good
cluster, rejects nothing, and traffic flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
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
    slice_yaml,
    start_apps,
    start_sidecar,
    write_documents,
)
from e2e_policies import backend_policy_yaml, explain, policy_status, stamped_sources

from xds_server.app import ControlPlane
from xds_server.resources import CLUSTER
from xds_server.sample_app import SampleApp

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

NODE = "client-0.default"
BACKEND = "backend:8080"
BACKEND_CLUSTER = "outbound|8080||backend.default.svc.cluster.local"
OTHER_CLUSTER = "outbound|8080||other.default.svc.cluster.local"
ENDPOINT_IPS = ("127.0.46.1", "127.0.46.2", "127.0.46.3")
OTHER_IP = "127.0.46.20"
BLACKHOLE_IP = "127.0.46.30"
UPDATES = r"^(cluster_manager\.cds|listener_manager\.lds|http\.\w+\.rds\.[^.]+)\.update_success$"


@dataclass
class Mesh:
    plane: ControlPlane
    directory: Path
    sidecar: Sidecar
    apps: list[SampleApp]
    port: int
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.outbound_port}"

    def client(self, timeout: float = 10.0) -> httpx.AsyncClient:
        """A client of the sidecar's outbound listener, closed with the mesh."""
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
        client = httpx.AsyncClient(base_url=self.envoy_url, timeout=timeout, limits=limits)
        self.clients.append(client)
        return client

    async def call(
        self,
        path: str = "/",
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        return await (client or self.client()).get(
            path, headers={"Host": BACKEND} | (headers or {})
        )

    async def who(self, path: str = "/", headers: dict[str, str] | None = None) -> str:
        """The endpoint IP that answered, or `HTTP <status>`."""
        response = await self.call(path, headers)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        host: str = json.loads(response.text)["host"]
        return host

    async def apply_policy(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Write BackendPolicy `name` for `backend` and wait until Envoy runs its cluster."""
        write_documents(self.directory / f"policy-{name}.yaml", backend_policy_yaml(name, spec))
        key = f"BackendPolicy/default/{name}"

        async def shaped() -> dict[str, Any] | None:
            cluster = await self.cluster_config(BACKEND_CLUSTER)
            return cluster if key in stamped_sources(cluster["cluster"]) else None

        found: dict[str, Any] = await eventually(
            shaped, within=20, message=f"Envoy runs {BACKEND_CLUSTER} shaped by {key}"
        )
        return found

    async def cluster_config(self, name: str) -> dict[str, Any]:
        found = await self.sidecar.active_cluster(name)
        if found is None:
            raise AssertionError(f"{name} is not an active cluster")
        return found

    async def hosts(self) -> dict[str, dict[str, Any]]:
        """`backend`'s hosts in Envoy's `/clusters`, by IP."""
        return await self.sidecar.cluster_hosts(BACKEND_CLUSTER)

    async def stat(self, name: str) -> int:
        """`cluster.<backend>.<name>` from Envoy's `/stats` (0 if not there yet)."""
        full = f"cluster.{BACKEND_CLUSTER}.{name}"
        stats = await self.sidecar.envoy.stats_async(f"^{_regex(full)}$")
        return stats.get(full, 0)


def _regex(text: str) -> str:
    return "".join(f"\\{c}" if c in r".|\^$*+?()[]{}" else c for c in text)


def host_stat(host: dict[str, Any], name: str) -> int:
    for entry in host.get("stats", []):
        if entry.get("name") == name:
            return int(entry.get("value", 0))
    return 0


def health_flags(host: dict[str, Any]) -> set[str]:
    return {flag for flag, value in host.get("health_status", {}).items() if value is True}


async def start_mesh(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    endpoints: int,
    stack: contextlib.AsyncExitStack,
) -> Mesh:
    port = free_port()
    ips = ENDPOINT_IPS[:endpoints]
    apps = await start_apps(
        stack, port, *(("backend", f"e{i + 1}", ip) for i, ip in enumerate(ips))
    )
    await start_apps(stack, port, ("other", "v1", OTHER_IP))
    services = [
        service_yaml("backend"),
        slice_yaml("backend", ips, port),
        service_yaml("other"),
        slice_yaml("other", [OTHER_IP], port),
    ]
    directory = manifest_directory(tmp_path, {"services.yaml": services}, "mesh")
    plane = await stack.enter_async_context(running_control_plane(directory, free_port))
    sidecar = await start_sidecar(
        envoy_factory, plane.xds_port, free_port(), delta=False, node_id=NODE
    )
    mesh = Mesh(plane, directory, sidecar, apps, port)

    async def closed() -> None:
        for client in mesh.clients:
            await client.aclose()

    stack.push_async_callback(closed)

    async def every_endpoint() -> bool:
        return len(await mesh.hosts()) == endpoints

    await eventually(every_endpoint, within=20, message="backend's endpoints in Envoy")
    return mesh


@pytest.fixture
async def mesh_of(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Callable[[int], Awaitable[Mesh]]]:
    """`await mesh_of(endpoints)`: the mesh with that many `backend` endpoints."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(endpoints: int) -> Mesh:
            return await start_mesh(tmp_path, free_port, envoy_factory, endpoints, stack)

        yield start


# -- circuit breaker -----------------------------------------------------------------------

BURST = 8
SLOW = "/delay/1500"


async def burst(mesh: Mesh) -> list[httpx.Response]:
    client = mesh.client()
    return list(await asyncio.gather(*(mesh.call(SLOW, client=client) for _ in range(BURST))))


async def test_past_the_connection_pool_excess_requests_get_503_overloaded(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(1)
    assert [r.status_code for r in await burst(mesh)] == [200] * BURST  # the open defaults

    await mesh.apply_policy(
        "pool", {"connectionPool": {"maxConnections": 1, "maxPendingRequests": 1}}
    )
    before = await mesh.stat("upstream_rq_pending_overflow")
    responses = await burst(mesh)

    overloaded = [r for r in responses if r.status_code == 503]
    assert all(r.headers.get("x-envoy-overloaded") == "true" for r in overloaded)
    served = [r for r in responses if r.status_code == 200]
    assert len(served) + len(overloaded) == BURST
    assert served and len(overloaded) >= BURST // 2  # one connection, one request waiting
    assert await mesh.stat("upstream_rq_pending_overflow") - before == len(overloaded)


# -- outlier detection ---------------------------------------------------------------------


async def test_outlier_detection_ejects_the_failing_endpoint_and_traffic_moves_on(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(3)
    failing = mesh.apps[0]
    await mesh.apply_policy(
        "eject",
        {
            "outlierDetection": {
                "consecutive5xx": 3,
                "interval": "1s",
                "baseEjectionTime": "60s",
                # maxEjectionPercent left at 10 %: one of 3 endpoints may still go
            }
        },
    )
    failing.fail_status = 500
    errors = 0
    for _ in range(60):  # bounded: ejection needs 3 errors in a row from that endpoint
        if await mesh.who() == "HTTP 500":
            errors += 1
        if "failed_outlier_check" in health_flags((await mesh.hosts())[failing.host]):
            break
    hosts = await mesh.hosts()
    assert health_flags(hosts[failing.host]) == {"failed_outlier_check"}
    assert errors >= 3
    assert await mesh.stat("outlier_detection.ejections_enforced_consecutive_5xx") >= 1

    answered = [await mesh.who() for _ in range(30)]
    assert set(answered) == {mesh.apps[1].host, mesh.apps[2].host}


# -- active health checks ------------------------------------------------------------------


async def test_an_active_health_check_marks_a_dead_endpoint_before_any_request_fails(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(3)
    dead = mesh.apps[0]
    await mesh.apply_policy(
        "probe",
        {
            "healthCheck": {
                "interval": "0.5s",
                "timeout": "0.5s",
                "unhealthyThreshold": 2,
                "http": {"path": "/healthz"},
            }
        },
    )

    async def all_healthy() -> bool:
        return all(not health_flags(h) for h in (await mesh.hosts()).values())

    await eventually(all_healthy, within=15, message="every endpoint passes its probe")
    await dead.close()  # the pod's app dies; no request is sent until Envoy knows

    async def marked() -> bool:
        return "failed_active_health_check" in health_flags((await mesh.hosts())[dead.host])

    await eventually(marked, within=15, message=f"{dead.host} failed its health check")
    assert await mesh.stat("health_check.failure") >= 2
    retries = await mesh.stat("upstream_rq_retry")

    answered = [await mesh.who() for _ in range(30)]
    assert set(answered) == {mesh.apps[1].host, mesh.apps[2].host}
    assert await mesh.stat("upstream_rq_retry") == retries  # no request went to it and failed
    assert host_stat((await mesh.hosts())[dead.host], "rq_total") == 0


# -- hashing -------------------------------------------------------------------------------


async def test_ring_hash_keeps_one_header_value_on_one_endpoint(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(3)
    await mesh.apply_policy(
        "sticky",
        {
            "loadBalancer": {
                "algorithm": "RingHash",
                "ringHash": {"minimumRingSize": 64},
                "hashPolicies": [{"header": {"name": "x-user"}}],
            }
        },
    )
    alice = {await mesh.who(headers={"x-user": "alice"}) for _ in range(20)}
    assert len(alice) == 1 and alice <= {app.host for app in mesh.apps}
    spread = {await mesh.who(headers={"x-user": f"user-{i}"}) for i in range(30)}
    assert len(spread) >= 2  # 30 keys on one of 3 endpoints: p = 3 * 3^-30
    assert {await mesh.who(headers={"x-user": "alice"}) for _ in range(5)} == alice


# -- least request -------------------------------------------------------------------------


async def test_least_request_favours_the_idle_endpoint_over_the_loaded_one(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(2)
    loaded, idle = mesh.apps
    await mesh.apply_policy(
        "least", {"loadBalancer": {"algorithm": "LeastRequest", "leastRequest": {"choiceCount": 4}}}
    )
    loaded.delay_seconds = 30.0  # whatever lands there stays open
    holding = mesh.client(timeout=40.0)
    held: list[asyncio.Task[httpx.Response]] = []
    try:
        for _ in range(40):  # bounded: until the loaded endpoint holds 2 requests open
            held.append(asyncio.create_task(mesh.call(client=holding)))
            await asyncio.sleep(0.05)
            if host_stat((await mesh.hosts())[loaded.host], "rq_active") >= 2:
                break
        assert host_stat((await mesh.hosts())[loaded.host], "rq_active") >= 2

        # With 4 random picks of 2 endpoints, the loaded one is chosen only when
        # all 4 pick it: 1/16 of requests (round robin would send it 1/2).
        quick = mesh.client(timeout=2.5)
        answered = []
        for _ in range(24):
            try:
                response = await mesh.call(client=quick)
                answered.append(json.loads(response.text)["host"])
            except httpx.TimeoutException:
                answered.append(loaded.host)
        assert answered.count(idle.host) >= 18, answered
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


# -- connect timeout -----------------------------------------------------------------------


@contextlib.contextmanager
def never_accepting(ip: str) -> Iterator[int]:
    """A port on `ip` whose accept queue is full: new handshakes never complete.

    Linux drops a SYN while a listener's accept queue is full (backlog 0
    holds one connection); the fillers are never accepted.  Checked with a
    probe, since a kernel that answered would make the test meaningless.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind((ip, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((ip, port))
            fillers.append(filler)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect((ip, port))
        except TimeoutError:
            pass
        else:
            pytest.skip("this kernel completes handshakes past a full accept queue")
        finally:
            probe.close()
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_the_connect_timeout_bounds_the_wait_for_an_endpoint_that_never_accepts(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    with never_accepting(BLACKHOLE_IP) as port:
        services = [
            service_yaml("backend"),
            slice_yaml("backend", [BLACKHOLE_IP], port),
            backend_policy_yaml("connect", {"connectTimeout": "0.25s"}),
        ]
        directory = manifest_directory(tmp_path, {"services.yaml": services}, "mesh")
        async with running_control_plane(directory, free_port) as plane:
            sidecar = await start_sidecar(
                envoy_factory, plane.xds_port, free_port(), delta=False, node_id=NODE
            )
            mesh = Mesh(plane, directory, sidecar, [], port)
            try:
                cluster = await mesh.apply_policy("connect", {"connectTimeout": "0.25s"})
                assert cluster["cluster"]["connect_timeout"] == "0.250s"
                started = time.monotonic()
                response = await mesh.call()
                elapsed = time.monotonic() - started
            finally:
                for client in mesh.clients:
                    await client.aclose()
            assert response.status_code == 503
            # The first attempt and the route's 2 retries on connect-failure, each
            # cut at 0.25 s (the 10 s default would take 30 s).
            assert await mesh.stat("upstream_cx_connect_timeout") == 3
            assert 0.75 <= elapsed < 5.0


# -- what the control plane says -----------------------------------------------------------


async def test_explain_names_the_policy_behind_the_cluster(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(1)
    await mesh.apply_policy("named", {"connectTimeout": "2s"})
    (resource,) = await explain(mesh.plane, NODE, "CDS", BACKEND_CLUSTER)
    sources = {source.key: source for source in resource.sources}
    assert set(sources) == {"BackendPolicy/default/named", "Service/default/backend"}
    policy = sources["BackendPolicy/default/named"]
    assert policy.file == str(mesh.directory / "policy-named.yaml")
    assert policy.document == 0


async def test_a_policy_change_resends_only_the_targeted_service_s_cluster(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(1)
    await mesh.apply_policy("pushed", {"connectTimeout": "2s"})
    envoy = mesh.sidecar.envoy
    other = await mesh.cluster_config(OTHER_CLUSTER)
    before = await envoy.stats_async(UPDATES)
    generations = {push.generation for push in mesh.plane.pushes()}

    write_documents(
        mesh.directory / "policy-pushed.yaml",
        backend_policy_yaml("pushed", {"connectTimeout": "3s"}),
    )

    async def three_seconds() -> bool:
        found = await mesh.cluster_config(BACKEND_CLUSTER)
        return bool(found["cluster"]["connect_timeout"] == "3s")

    await eventually(three_seconds, within=20, message="the new connect timeout in Envoy")
    await asyncio.sleep(0.5)  # anything else on its way lands
    after = await envoy.stats_async(UPDATES)
    assert {name for name in after if after[name] != before.get(name)} == {
        "cluster_manager.cds.update_success"
    }
    assert (await mesh.cluster_config(OTHER_CLUSTER))["last_updated"] == other["last_updated"]

    new = [push for push in mesh.plane.pushes() if push.generation not in generations]
    changed = {
        type_url: list(names.names) for push in new for type_url, names in push.changed.items()
    }
    assert changed == {CLUSTER: [BACKEND_CLUSTER]}


async def test_a_policy_envoy_would_reject_is_refused_naming_the_field_and_traffic_goes_on(
    mesh_of: Callable[[int], Awaitable[Mesh]],
) -> None:
    mesh = await mesh_of(1)
    await mesh.apply_policy("good", {"connectTimeout": "2s"})
    envoy = mesh.sidecar.envoy
    rejected = r"^cluster_manager\.cds\.update_rejected$"
    bad = {
        "loadBalancer": {
            "algorithm": "RingHash",
            "ringHash": {"minimumRingSize": 4096, "maximumRingSize": 64},
        }
    }
    write_documents(mesh.directory / "policy-good.yaml", backend_policy_yaml("good", bad))

    async def refused() -> dict[str, Any] | None:
        status = await policy_status(mesh.plane, "BackendPolicy/default/good")
        return status if status is not None and status["rejected"] else None

    status = await eventually(refused, within=20, message="the policy is refused")
    (accepted,) = [c for c in status["conditions"] if c["type"] == "Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "spec.loadBalancer.ringHash.minimumRingSize" in accepted["message"]
    # Envoy never saw it: the last good cluster stays, and traffic flows.
    cluster = await mesh.cluster_config(BACKEND_CLUSTER)
    assert cluster["cluster"]["connect_timeout"] == "2s"
    assert "load_balancing_policy" not in cluster["cluster"]
    assert await mesh.who() == mesh.apps[0].host
    assert (await envoy.stats_async(rejected)).get("cluster_manager.cds.update_rejected", 0) == 0
