"""End to end: a BackendPolicy's faults and rate limit, on real requests through real Envoys.

`backend` is one "pod": its sidecar (a real Envoy, no capture) binds the pod IP
and forwards to the sample app behind it; a client sidecar calls it by name.
The BackendPolicy is a manifest in the watched directory, like the Service.
What is asserted is what a caller sees: latencies, statuses and headers over a
bounded number of requests, against the configured rates with binomial
tolerances (about 4 standard deviations), with the target Envoy's own fault
and rate-limit counters as corroboration.  On a TCP port the bucket counts
connections, and those past it are closed.  Changing the policy reconfigures
the target's sidecar and sends the client's nothing; `explain` and Envoy's
own config name the policy behind the target's inbound listener; a policy
that passes the CRD's schema but breaks an Envoy rule is withheld (the target
keeps its last good listener and rejects nothing) and its status names the
field.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    SERVICE_PORT,
    Sidecar,
    eventually,
    manifest_directory,
    running_control_plane,
    start_apps,
    start_sidecar,
    write_documents,
)
from e2e_policies import (
    backend_policy_yaml,
    explain,
    policy_condition,
    stamped_sources,
    within_binomial,
)
from test_e2e_precise_pushes import responses_sent, update_counts

from xds_server.app import ControlPlane
from xds_server.envoy_process import EnvoyProcess
from xds_server.sample_app import SampleApp
from xds_server.translate.inbound_policy import RATE_LIMITED_HEADER

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

POD_IP = "127.0.41.1"
"""The backend pod's IP: where its sidecar's inbound listener binds."""
APP_IP = "127.0.41.2"
"""Where the backend app listens (a pod's loopback, here its own address)."""
BACKEND_NODE = "backend-0.default"
CONCURRENCY = 20


def backend_service(http_target: int, tcp_port: int, tcp_target: int) -> str:
    """backend: HTTP on 8080, and a TCP port (the same kind of app, proxied as bytes)."""
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: backend, namespace: default}}
        spec:
          selector: {{app: backend}}
          ports:
            - {{name: http, port: {SERVICE_PORT}, targetPort: {http_target}}}
            - {{name: tcp, port: {tcp_port}, targetPort: {tcp_target}}}
        """
    )


def backend_slice(http_target: int, tcp_target: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: backend-slice
          namespace: default
          labels: {{kubernetes.io/service-name: backend}}
        addressType: IPv4
        ports:
          - {{name: http, port: {http_target}, protocol: TCP}}
          - {{name: tcp, port: {tcp_target}, protocol: TCP}}
        endpoints:
          - addresses: [{POD_IP!r}]
            conditions: {{ready: true}}
        """
    )


POLICY_NAME = "backend-resilience"
POLICY_KEY = f"BackendPolicy/default/{POLICY_NAME}"
Spec = dict[str, Any]


@dataclass
class Mesh:
    directory: Path
    plane: ControlPlane
    app: SampleApp
    target: EnvoyProcess
    client: Sidecar
    tcp_port: int
    """backend's TCP Service port: the client's outbound TCP listener for it."""
    tcp_target: int
    """The app port behind it: the target's inbound TCP listener."""

    @property
    def port(self) -> int:
        return self.app.port

    def write_policy(self, spec: Spec) -> None:
        write_documents(self.directory / "policy.yaml", backend_policy_yaml(POLICY_NAME, spec))

    async def target_stats(self, pattern: str) -> dict[str, int]:
        return await self.target.stats_async(filter=pattern)

    async def counter(self, name: str) -> int:
        stats = await self.target_stats(f"^{name}$")
        return stats.get(name, 0)


FAULT_ABORT_BODY = "fault filter abort"
"""The body of a response the fault filter aborted."""
RATE_LIMITED_BODY = "local_rate_limited"
"""The body of a response the local rate limit refused."""


@contextlib.asynccontextmanager
async def started_mesh(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    policy_spec: Spec | None,
    *,
    delta: bool = False,
) -> AsyncIterator[Mesh]:
    """backend's app and sidecar, a client sidecar, and `policy_spec` from the start.

    The target's listener then has the policy's filters from its first version,
    so no connection of an older listener is still draining when a test counts.
    """
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {
        "backend.yaml": [backend_service(port, tcp_port, tcp_target)],
        "endpoints.yaml": [backend_slice(port, tcp_target)],
    }
    if policy_spec is not None:
        files["policy.yaml"] = [backend_policy_yaml(POLICY_NAME, policy_spec)]
    async with contextlib.AsyncExitStack() as stack:
        (app,) = await start_apps(stack, port, ("backend", "v1", APP_IP))
        await start_apps(stack, tcp_target, ("backend", "tcp", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        target = await start_sidecar(
            envoy_factory,
            plane.xds_port,
            free_port(),
            delta=delta,
            node_id=BACKEND_NODE,
            workload="backend-0",
            labels={"app": "backend"},
            instance_ip=POD_IP,
            app_address=APP_IP,
        )
        client = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=delta)
        mesh = Mesh(directory, plane, app, target.envoy, client, tcp_port, tcp_target)
        await eventually(
            lambda: through_the_target(mesh),
            within=20,
            interval=0.2,
            message="client -> backend's sidecar",
        )
        yield mesh


async def through_the_target(mesh: Mesh) -> bool:
    """Whether a request came back from backend's sidecar (its app, or a fault or limit)."""
    response = await mesh.client.get("backend")
    return response.status_code == 200 or response.text in (FAULT_ABORT_BODY, RATE_LIMITED_BODY)


@dataclass(frozen=True)
class Answer:
    status: int
    seconds: float
    headers: httpx.Headers
    body: str

    def inbound_node(self) -> str:
        """The node id of the sidecar the app saw the request come through."""
        node: str = json.loads(self.body)["headers"]["x-mesh-inbound"]
        return node


async def burst(mesh: Mesh, count: int, concurrency: int = CONCURRENCY) -> list[Answer]:
    """`count` GETs to `backend` through the client sidecar, `concurrency` at a time."""
    limit = asyncio.Semaphore(concurrency)
    url = f"http://127.0.0.1:{mesh.client.outbound_port}/"
    async with httpx.AsyncClient(
        timeout=15.0, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def one() -> Answer:
            async with limit:
                started = time.monotonic()
                response = await client.get(url, headers={"Host": "backend"})
                elapsed = time.monotonic() - started
                return Answer(response.status_code, elapsed, response.headers, response.text)

        return await asyncio.gather(*(one() for _ in range(count)))


MeshWith = Callable[..., contextlib.AbstractAsyncContextManager[Mesh]]


@pytest.fixture
def mesh_with(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> MeshWith:
    """`async with mesh_with(policy_spec, delta=...) as mesh:` (see `started_mesh`)."""
    return functools.partial(started_mesh, tmp_path, free_port, envoy_factory)


# -- fault injection ----------------------------------------------------------------------


DELAY_SECONDS = 1.0
DELAY_SHARE = 0.5
DELAYED = {
    "faultInjection": {
        "delay": {"fixedDelay": f"{DELAY_SECONDS}s", "percentage": DELAY_SHARE * 100}
    }
}


async def test_a_delay_holds_about_the_configured_share_for_the_configured_time(
    mesh_with: MeshWith,
) -> None:
    async with mesh_with(DELAYED) as mesh:
        before = await mesh.counter(f"http.inbound_{mesh.port}.fault.delays_injected")
        answers = await burst(mesh, 60)
        assert {a.status for a in answers} == {200}
        # Latencies fall in two groups: at least the delay, or well under it.  The
        # split is at the delay itself (a delayed request cannot take less), and the
        # count of those at or over it must match Envoy's own count of delays.
        delayed = [a for a in answers if a.seconds >= DELAY_SECONDS]
        prompt = [a for a in answers if a.seconds < DELAY_SECONDS]
        assert within_binomial(len(delayed), len(answers), DELAY_SHARE), len(delayed)
        assert sorted(a.seconds for a in prompt)[len(prompt) // 2] < DELAY_SECONDS / 2
        # Every request still reached the app, through the target's sidecar.
        assert {a.inbound_node() for a in answers} == {BACKEND_NODE}
        injected = await mesh.counter(f"http.inbound_{mesh.port}.fault.delays_injected")
        assert abs((injected - before) - len(delayed)) <= 2, (injected - before, len(delayed))


ABORT_STATUS = 503
ABORT_SHARE = 0.3
ABORTED = {
    "faultInjection": {"abort": {"httpStatus": ABORT_STATUS, "percentage": ABORT_SHARE * 100}}
}


async def test_an_abort_answers_about_the_configured_share_with_the_status(
    mesh_with: MeshWith,
) -> None:
    async with mesh_with(ABORTED) as mesh:
        aborts = f"http.inbound_{mesh.port}.fault.aborts_injected"
        before = await mesh.counter(aborts)
        answers = await burst(mesh, 100)
        aborted = [a for a in answers if a.status == ABORT_STATUS]
        assert {a.status for a in answers} <= {200, ABORT_STATUS}
        assert within_binomial(len(aborted), len(answers), ABORT_SHARE), len(aborted)
        # Aborted by the fault filter of the target's sidecar: the app never answered.
        assert all(a.body == FAULT_ABORT_BODY for a in aborted)
        served = [a for a in answers if a.status == 200]
        assert {a.inbound_node() for a in served} == {BACKEND_NODE}
        assert await mesh.counter(aborts) - before == len(aborted)


async def test_explain_names_the_policy_behind_the_targets_inbound_listener(
    mesh_with: MeshWith,
) -> None:
    async with mesh_with(ABORTED) as mesh:
        listener = f"inbound_{mesh.port}"
        [explained] = await explain(mesh.plane, BACKEND_NODE, "LDS", listener)
        policy = [s for s in explained.sources if s.kind == "BackendPolicy"]
        assert [(s.namespace, s.name) for s in policy] == [("default", POLICY_NAME)]
        assert policy[0].file == str(mesh.directory / "policy.yaml")
        # Envoy runs the listener with the same names in its metadata.
        dump = await mesh.target.config_dump_async(resource="dynamic_listeners")
        [running] = [c for c in dump["configs"] if c["name"] == listener]
        assert POLICY_KEY in stamped_sources(running["active_state"]["listener"])


# -- local rate limiting ------------------------------------------------------------------


BUCKET = 5
FILL_SECONDS = 4
LIMITED = {
    "localRateLimit": {
        "maxTokens": BUCKET,
        "tokensPerFill": BUCKET,
        "fillInterval": f"{FILL_SECONDS}s",
    }
}
ROOMY = {"localRateLimit": LIMITED["localRateLimit"] | {"maxTokens": 1000}}
"""A rate limit no test reaches: a policy on the port that refuses nothing."""


async def test_a_local_rate_limit_answers_429_past_the_bucket_and_recovers_after_a_fill(
    mesh_with: MeshWith,
) -> None:
    async with mesh_with(LIMITED) as mesh:
        await wait_for_a_fill(mesh)
        refused = f"inbound_{mesh.port}.http_local_rate_limit.rate_limited"
        before = await mesh.counter(refused)
        answers = await burst(mesh, 20)
        ok = [a for a in answers if a.status == 200]
        limited = [a for a in answers if a.status == 429]
        assert len(ok) + len(limited) == len(answers)
        # A full bucket admits its size; one fill during the burst at most adds a bucket.
        assert BUCKET <= len(ok) <= 2 * BUCKET, len(ok)
        assert all(a.headers.get(RATE_LIMITED_HEADER) == "true" for a in limited)
        assert all(a.body == RATE_LIMITED_BODY for a in limited)
        assert all(RATE_LIMITED_HEADER not in a.headers for a in ok)
        assert await mesh.counter(refused) - before == len(limited)

        # The next fill lets requests through again.
        async def admitted() -> bool:
            return (await mesh.client.get("backend")).status_code == 200

        await eventually(admitted, within=FILL_SECONDS * 3, interval=0.5, message="a refill")


async def wait_for_a_fill(mesh: Mesh) -> None:
    """Let the bucket fill up again after the requests that showed the path is up.

    Set-up, not an assertion: the bucket exposes no token count, and after a
    fill interval without requests it is full whichever way Envoy refills it.
    """
    await asyncio.sleep(FILL_SECONDS + 0.5)


# -- a policy change reaches the target's sidecar only -------------------------------------


async def test_changing_the_policy_pushes_to_the_targets_sidecar_only(
    mesh_with: MeshWith, delta: bool
) -> None:
    async with mesh_with(ROOMY, delta=delta) as mesh:
        client_updates = await asyncio.to_thread(update_counts, mesh.client.envoy)
        client_responses = responses_sent(mesh.plane, mesh.client.node_id)
        target_updates = await asyncio.to_thread(update_counts, mesh.target)

        mesh.write_policy({"faultInjection": {"abort": {"httpStatus": 418}}})

        async def teapot() -> bool:
            return (await mesh.client.get("backend")).status_code == 418

        await eventually(teapot, within=10, message="the new policy on the target's sidecar")
        assert await asyncio.to_thread(update_counts, mesh.target) != target_updates
        await asyncio.sleep(0.5)  # anything still on its way to the client lands
        assert await asyncio.to_thread(update_counts, mesh.client.envoy) == client_updates
        assert responses_sent(mesh.plane, mesh.client.node_id) == client_responses


# -- a policy Envoy would reject never reaches Envoy ------------------------------------------


async def test_a_policy_envoy_would_reject_is_withheld_and_its_status_names_the_field(
    mesh_with: MeshWith,
) -> None:
    async with mesh_with(ROOMY) as mesh:
        rejected = "listener_manager.lds.update_rejected"

        # Valid for the CRD's schema; Envoy refuses a bucket refilled under every 50 ms.
        mesh.write_policy({"localRateLimit": {"maxTokens": 1, "fillInterval": "0.010s"}})

        async def accepted_condition() -> dict[str, Any] | None:
            condition = await policy_condition(mesh.plane, POLICY_KEY)
            return condition if condition is not None and condition["status"] == "False" else None

        condition = await eventually(
            accepted_condition, within=10, message="the policy's status says it is not accepted"
        )
        assert condition["reason"] == "Invalid"
        assert "spec.localRateLimit.fillInterval" in condition["message"]
        # The target keeps its last good listener (the roomy bucket): nothing is refused,
        # and Envoy was never sent the config it would have rejected.
        answers = await burst(mesh, 10)
        assert {a.status for a in answers} == {200}
        assert await mesh.counter(rejected) == 0


# -- on a TCP port the bucket counts connections --------------------------------------------


async def exchange_over_tcp(port: int) -> bool:
    """One connection to the client's outbound TCP listener: whether a response came back."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
    except (ConnectionError, OSError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return reply.startswith(b"HTTP/1.1 200")


async def test_on_a_tcp_port_connections_past_the_bucket_are_closed(mesh_with: MeshWith) -> None:
    async with mesh_with(LIMITED) as mesh:
        await eventually(
            lambda: exchange_over_tcp(mesh.tcp_port), within=20, interval=0.5, message="TCP path"
        )
        await wait_for_a_fill(mesh)
        refused = f"local_rate_limit.inbound_{mesh.tcp_target}.rate_limited"
        before = await mesh.counter(refused)
        served = [await exchange_over_tcp(mesh.tcp_port) for _ in range(12)]
        # A full bucket admits its size in connections; one fill during the run adds a bucket.
        assert BUCKET <= served.count(True) <= 2 * BUCKET, served
        assert await mesh.counter(refused) - before == served.count(False)
