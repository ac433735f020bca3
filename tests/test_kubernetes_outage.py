"""The mesh through a Kubernetes API outage: proxies keep their config while the API is
away, and when it comes back every change made meanwhile reaches Envoy within 2 s, once.

End to end: an in-process control plane on the Kubernetes source, with the
production retry settings, reads an `ApiServerEmulator` (kmock, over real
HTTP) and serves a real Envoy sidecar, through which a real app is called.
The API then goes away for 30 s in one of two ways, side by side (one API,
control plane and sidecar each, so both fit the time of one outage):

* **refused**: the emulator is stopped (open watches reset, connections
  refused), as when the API server's process dies;
* **503**: it stays up but answers every request 503 and cuts the open
  watches, as an API server that lost etcd, or its load balancer, does.

Meanwhile the API's state changes (an endpoint added, one removed, a Service
port changed, a Service added, one deleted), and it comes back with its
history compacted, so every watch's resume is answered 410 Gone and must
relist.  The pure part, the retry pace (`k8s_retry.RetryPolicy`) and the
watch loop that follows it, is specified on a fake clock below.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import urllib3.exceptions

pytest.register_assert_rewrite("kube_fixtures")

import itertools

from conftest import EnvoyFactory
from e2e_mesh import Sidecar, eventually, start_sidecar
from kube_fixtures import (
    ENDPOINT_SLICES,
    PODS,
    SERVICES,
    ApiServerEmulator,
    ResourceKey,
    ServedApi,
    endpoint_slice,
    served_api,
    service,
    write_kubeconfig,
)
from kubernetes.client.exceptions import ApiException

from xds_server.app import ControlPlane
from xds_server.sample_app import start_sample_app
from xds_server.settings import KubernetesSettings, SecuritySettings, Settings
from xds_server.sources.k8s_kinds import MESH_KINDS
from xds_server.sources.k8s_retry import OUTAGE_PROBE_MAX_S, RetryPolicy, WatchFailed
from xds_server.sources.k8s_watch import ResourceWatch, WatchReport

OUTAGE_S = 30.0
CATCH_UP_S = 2.0
"""Every change made during the outage is in Envoy this soon after the API is back."""
REPORT_WITHIN_S = 6.0
"""How long arrival is watched for, so a late change is reported with its time."""
REQUEST_INTERVAL_S = 0.25
POLL_S = 0.05
SERVICE_PORT = 8080
DEFAULTS = KubernetesSettings()
"""The production retry pace: backoff 0.5 s doubling to 30 s for refusals."""


# -- the API's state: before, the changes made during the outage, and Envoy's view of it


def before_the_outage(api: ApiServerEmulator, backend_port: int) -> None:
    api.create(service("backend", port=SERVICE_PORT, target_port=backend_port))
    api.create(endpoint_slice("backend", ["127.0.0.1"], backend_port))
    for name, addresses in (
        ("grow", ["127.0.77.1"]),
        ("shrink", ["127.0.77.2", "127.0.77.3"]),
        ("web", ["127.0.77.4"]),
        ("old", ["127.0.77.5"]),
    ):
        api.create(service(name, port=SERVICE_PORT, target_port=9000))
        api.create(endpoint_slice(name, addresses, 9000))


@dataclass(frozen=True)
class Change:
    """One change made while the API is away, and the outbound clusters it shows in."""

    what: str
    apply: Callable[[ApiServerEmulator], object]
    clusters: tuple[str, ...]


def outbound(name: str, port: int = SERVICE_PORT) -> str:
    return f"outbound|{port}||{name}.default.svc.cluster.local"


def _create_fresh(api: ApiServerEmulator) -> None:
    api.create(service("fresh", port=SERVICE_PORT, target_port=9000))
    api.create(endpoint_slice("fresh", ["127.0.77.6"], 9000))


def _delete_old(api: ApiServerEmulator) -> None:
    api.delete(SERVICES, "default", "old")
    api.delete(ENDPOINT_SLICES, "default", "old-abcde")


CHANGES = (
    Change(
        "endpoint added",
        lambda api: api.replace(endpoint_slice("grow", ["127.0.77.1", "127.0.77.7"], 9000)),
        (outbound("grow"),),
    ),
    Change(
        "endpoint removed",
        lambda api: api.replace(endpoint_slice("shrink", ["127.0.77.2"], 9000)),
        (outbound("shrink"),),
    ),
    Change(
        "Service port changed",
        lambda api: api.replace(service("web", port=9090, target_port=9000)),
        (outbound("web"), outbound("web", 9090)),
    ),
    Change("Service added", _create_fresh, (outbound("fresh"),)),
    Change("Service deleted", _delete_old, (outbound("old"),)),
)

ClusterView = dict[str, list[str]]
"""Outbound cluster name -> its hosts (`ip:port`), sorted, duplicates kept."""


def expected_view(api: ApiServerEmulator) -> ClusterView:
    """What Envoy should hold for the API's state: one cluster per Service port, with
    the ready addresses of its slices' same-named port."""
    slices = list(api.objects_of(ENDPOINT_SLICES).values())
    view: ClusterView = {}
    for (namespace, name), obj in api.objects_of(SERVICES).items():
        for port in obj["spec"]["ports"]:
            view[outbound(name, port["port"])] = sorted(
                f"{address}:{slice_port['port']}"
                for eps in slices
                if eps["metadata"]["namespace"] == namespace
                and eps["metadata"]["labels"]["kubernetes.io/service-name"] == name
                for slice_port in eps["ports"]
                if slice_port["name"] == port["name"]
                for endpoint in eps["endpoints"]
                if endpoint["conditions"]["ready"]
                for address in endpoint["addresses"]
            )
    return view


async def envoy_view(sidecar: Sidecar) -> ClusterView:
    """The outbound clusters Envoy has now, from its admin API."""
    return {
        status["name"]: sorted(
            "{address}:{port_value}".format(**host["address"]["socket_address"])
            for host in status.get("host_statuses", [])
        )
        for status in await sidecar.envoy.clusters_async()
        if status["name"].startswith("outbound|")
    }


def part(view: ClusterView, names: tuple[str, ...]) -> dict[str, list[str] | None]:
    return {name: view.get(name) for name in names}


# -- the two ways the API goes away --------------------------------------------------


@dataclass(frozen=True)
class Outage:
    name: str
    begin: Callable[[ServedApi], Awaitable[None]]
    end: Callable[[ServedApi], Awaitable[None]]
    delta: bool
    """Which xDS flavour its sidecar speaks (one each, so both are covered)."""


async def _answer_503(api: ServedApi) -> None:
    api.emulator.unavailable.add("*")
    api.emulator.drop_watches()


async def _answer_again(api: ServedApi) -> None:
    api.emulator.unavailable.discard("*")


OUTAGES = (
    Outage("refused", ServedApi.stop, ServedApi.start, delta=True),
    Outage("503", _answer_503, _answer_again, delta=False),
)


# -- one mesh, through one outage ------------------------------------------------------


@dataclass
class Mesh:
    outage: Outage
    api: ServedApi
    plane: ControlPlane
    sidecar: Sidecar


@dataclass
class Observed:
    """What one mesh went through; asserted on by the test."""

    outage: str
    requests: list[str] = field(default_factory=list)
    """`service version` (or the failure) of each request through the sidecar."""
    views_during_outage: list[ClusterView] = field(default_factory=list)
    ready_during_outage: list[bool] = field(default_factory=list)
    before: ClusterView = field(default_factory=dict)
    arrival_s: dict[str, float | None] = field(default_factory=dict)
    """Seconds from the API's return to each change being in Envoy (None: never)."""
    final: ClusterView = field(default_factory=dict)
    expected: ClusterView = field(default_factory=dict)
    lists_after_return: dict[ResourceKey, int] = field(default_factory=dict)
    source_errors_after: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_mesh(
    outage: Outage,
    envoy_factory: EnvoyFactory,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> AsyncIterator[Mesh]:
    """An API, a control plane on it (production retry settings) and a client sidecar
    whose `backend` Service is a real app; everything is stopped on exit."""
    async with contextlib.AsyncExitStack() as stack:
        api = await stack.enter_async_context(served_api())
        app_port = free_port()
        app = await start_sample_app("backend", "v1", "127.0.0.1", app_port)
        stack.push_async_callback(app.close)
        before_the_outage(api.emulator, app_port)
        kubeconfig = write_kubeconfig(tmp_path / f"kubeconfig-{outage.name}", api.url)
        plane = ControlPlane(
            Settings(
                source="kubernetes",
                xds_listen=f"127.0.0.1:{free_port()}",
                admin_listen=f"127.0.0.1:{free_port()}",
                grace_seconds=0.5,
                kubernetes=KubernetesSettings(kubeconfig=kubeconfig),
                # the test's sidecar proves itself with a certificate this plane signs
                security=SecuritySettings(xds_client_auth="certificate"),
            )
        )
        task = asyncio.create_task(plane.run())

        async def stop_plane() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)

        stack.push_async_callback(stop_plane)
        await asyncio.wait_for(plane.started.wait(), timeout=15)
        sidecar = await start_sidecar(
            envoy_factory,
            plane.xds_port,
            free_port(),
            delta=outage.delta,
            node_id=f"client-{outage.name}.default",
        )
        yield Mesh(outage, api, plane, sidecar)


async def who_answers(sidecar: Sidecar) -> str:
    try:
        return await sidecar.who_answers("backend")
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"


async def through_an_outage(mesh: Mesh) -> Observed:
    """Take the API away for OUTAGE_S, change it meanwhile, bring it back compacted."""
    api, sidecar, loop = mesh.api.emulator, mesh.sidecar, asyncio.get_running_loop()
    seen = Observed(mesh.outage.name)

    async def in_sync() -> bool:
        return await envoy_view(sidecar) == expected_view(api)

    await eventually(in_sync, within=10, message=f"{seen.outage}: Envoy has the API's state")
    seen.before = await envoy_view(sidecar)
    lists_before = {
        kind: len(api.list_requests(kind)) for kind in (SERVICES, ENDPOINT_SLICES, PODS)
    }

    async def keep_calling() -> None:
        while True:  # bounded: cancelled after the catch-up (at most ~40 s at 4/s)
            seen.requests.append(await who_answers(sidecar))
            await asyncio.sleep(REQUEST_INTERVAL_S)

    caller = asyncio.create_task(keep_calling())
    try:
        await mesh.outage.begin(mesh.api)
        began = loop.time()
        # The changes, spread over the outage; Envoy's view and readiness sampled each second.
        due = [began + OUTAGE_S * (i + 1) / (len(CHANGES) + 1) for i in range(len(CHANGES))]
        pending = list(zip(due, CHANGES, strict=True))
        while (now := loop.time()) < began + OUTAGE_S:
            while pending and pending[0][0] <= now:
                pending.pop(0)[1].apply(api)
            seen.views_during_outage.append(await envoy_view(sidecar))
            seen.ready_during_outage.append(mesh.plane.is_ready())
            await asyncio.sleep(min(1.0, max(0.0, began + OUTAGE_S - loop.time())))
        assert not pending
        api.compact()  # the history the watches would resume from is gone: 410 Gone
        seen.expected = expected_view(api)
        await mesh.outage.end(mesh.api)
        back = loop.time()

        seen.arrival_s = dict.fromkeys((change.what for change in CHANGES), None)
        while loop.time() < back + REPORT_WITHIN_S and None in seen.arrival_s.values():
            view, at = await envoy_view(sidecar), loop.time() - back
            for change in CHANGES:
                if seen.arrival_s[change.what] is None and part(view, change.clusters) == part(
                    seen.expected, change.clusters
                ):
                    seen.arrival_s[change.what] = round(at, 3)
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(1.0)  # nothing arrives late, twice, or is taken back
    finally:
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
    seen.final = await envoy_view(sidecar)
    seen.lists_after_return = {
        kind: len(api.list_requests(kind)) - count for kind, count in lists_before.items()
    }
    async with httpx.AsyncClient(timeout=5.0) as http:
        errors = await http.get(f"http://127.0.0.1:{mesh.plane.admin_port}/api/errors")
        seen.source_errors_after = errors.json()["source"]
    return seen


@pytest.mark.envoy
@pytest.mark.timeout(90)
async def test_the_mesh_rides_out_a_30s_api_outage_and_catches_up_within_2s_of_its_return(
    envoy_factory: EnvoyFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        meshes = [
            await stack.enter_async_context(
                running_mesh(outage, envoy_factory, free_port, tmp_path)
            )
            for outage in OUTAGES
        ]
        async with asyncio.TaskGroup() as group:
            runs = [group.create_task(through_an_outage(mesh)) for mesh in meshes]
    observed = [run.result() for run in runs]
    for seen in observed:
        print(f"\n{seen.outage}: change -> seconds in Envoy after the API's return:")
        for what, seconds in seen.arrival_s.items():
            print(f"  {what:22} {seconds}")

    for seen in observed:
        label = f"outage {seen.outage!r}"
        # Throughout: the last known config stays, traffic flows, the plane stays ready.
        assert len(seen.requests) >= OUTAGE_S / REQUEST_INTERVAL_S / 2, label
        assert set(seen.requests) == {"backend v1"}, label
        assert len(seen.views_during_outage) >= OUTAGE_S - 2, label
        assert all(view == seen.before for view in seen.views_during_outage), label
        assert all(seen.ready_during_outage), label
        # After: each change within 2 s, and Envoy ends in exactly the API's state.
        late = {what: s for what, s in seen.arrival_s.items() if s is None or s > CATCH_UP_S}
        assert late == {}, f"{label}: not in Envoy within {CATCH_UP_S}s: {seen.arrival_s}"
        assert seen.final == seen.expected, label
        assert seen.final != seen.before, label
        # One relist per watch, no more; and no error left once the API is back.
        assert set(seen.lists_after_return.values()) == {1}, f"{label}: {seen.lists_after_return}"
        assert seen.source_errors_after == [], label


# -- the retry pace, on a fake clock -----------------------------------------------------


def connection_refused() -> Exception:
    reason = urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")
    return urllib3.exceptions.MaxRetryError(None, "/api/v1/services", reason)


def http_error(status: int, retry_after: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="")
    error.headers = {"Retry-After": retry_after} if retry_after is not None else None
    return error


UNREACHABLE: dict[str, tuple[Callable[[], Exception], bool]] = {
    # failure: (the exception the client raises, whether it relists every third time)
    "connection refused": (connection_refused, False),
    "stream cut": (lambda: urllib3.exceptions.ProtocolError("Response ended prematurely"), False),
    "read timeout": (lambda: urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"), False),
    "connection reset": (lambda: ConnectionResetError(104, "Connection reset by peer"), False),
    "HTTP 503": (lambda: http_error(503), False),
    # A 500 or 504 may be the server refusing our resourceVersion ("too large"): relist.
    "HTTP 500": (lambda: http_error(500), True),
    "HTTP 504": (lambda: http_error(504), True),
}


def policy(seed: int = 1) -> RetryPolicy:
    return RetryPolicy(DEFAULTS.backoff_initial, DEFAULTS.backoff_max, random.Random(seed))


@pytest.mark.parametrize("failure", list(UNREACHABLE), ids=list(UNREACHABLE))
def test_an_unreachable_api_is_probed_at_most_a_second_apart_however_long_it_is_away(
    failure: str,
) -> None:
    error, relists = UNREACHABLE[failure]
    retry, clock = policy(), 0.0
    delays, relisted = [], []
    while clock < 300.0:  # five minutes away
        decision = retry.failed(error())
        delays.append(decision.delay)
        relisted.append(decision.relist)
        clock += decision.delay
    assert relisted == [relists and n % 3 == 2 for n in range(len(delays))]
    assert max(delays) <= OUTAGE_PROBE_MAX_S
    assert min(delays[3:]) >= OUTAGE_PROBE_MAX_S / 2, "jittered, but no faster than half of it"
    assert retry.expired() == 0.0, "the 410 that greets us on return relists at once"


def test_any_answer_ends_the_outage_pace() -> None:
    retry = policy()
    for _ in range(20):
        retry.failed(connection_refused())
    retry.answered()  # e.g. a watch's headers arrived, then its stream was cut at once
    assert retry.failed(connection_refused()).delay <= DEFAULTS.backoff_initial


def test_a_server_that_refuses_us_is_retried_patiently_and_relisted_every_third_time() -> None:
    retry = policy()
    decisions = [retry.failed(http_error(403)) for _ in range(12)]
    delays = [decision.delay for decision in decisions]
    assert delays[-1] > DEFAULTS.backoff_max / 2
    assert all(later >= earlier / 2 for earlier, later in itertools.pairwise(delays))
    assert [decision.relist for decision in decisions] == [False, False, True] * 4
    assert [retry.failed(WatchFailed("500 boom")).relist for _ in range(3)] == [False, False, True]
    retry.progressed()
    assert retry.failed(http_error(403)).delay <= DEFAULTS.backoff_initial


def test_a_410_right_after_a_relist_that_got_nowhere_backs_off() -> None:
    retry = policy()
    delays = [retry.expired() for _ in range(8)]
    assert delays[0] == 0.0
    assert 0 < delays[1] <= DEFAULTS.backoff_initial
    assert delays[-1] > 10 * DEFAULTS.backoff_initial, "expiring every version: back off"
    retry.progressed()  # a watch delivered an event: the next 410 is news again
    assert retry.expired() == 0.0


@pytest.mark.parametrize(
    ("watch_was_healthy", "waits"), [(True, False), (False, True)], ids=["ran", "ended-at-once"]
)
def test_a_watch_the_server_ends_at_once_is_retried_after_a_backoff(
    watch_was_healthy: bool, waits: bool
) -> None:
    retry = policy()
    delays = [retry.watch_ended(watch_was_healthy) for _ in range(6)]
    assert (min(delays) > 0) is waits
    assert (delays[-1] > OUTAGE_PROBE_MAX_S) is waits


@pytest.mark.parametrize(
    ("status", "retry_after", "at_least"),
    [(429, "5", 5.0), (503, "3", 3.0), (429, "3600", DEFAULTS.backoff_max), (503, "soon", 0.0)],
)
def test_retry_after_is_obeyed_up_to_backoff_max(
    status: int, retry_after: str, at_least: float
) -> None:
    delay = policy().failed(http_error(status, retry_after)).delay
    assert at_least <= delay <= max(at_least, DEFAULTS.backoff_initial) * 1.25


@dataclass
class FakeClock:
    now: float = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeResponse:
    """As much of a urllib3 response as a watch reads."""

    data: bytes = b""
    lines: Callable[[], Iterator[bytes]] = lambda: iter(())

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        return self.lines()

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


@dataclass
class FlakyApi:
    """One kind's list function on a fake clock: up, then refusing connections from
    `down_at` to `back_at` (the open watch cut), then up with its history compacted."""

    clock: FakeClock
    down_at: float
    back_at: float
    on_resumed: Callable[[], None]
    requests: list[tuple[float, str]] = field(default_factory=list)

    def __call__(self, **params: Any) -> FakeResponse:
        now, watching = self.clock.now, bool(params.get("watch"))
        self.requests.append((now, "watch" if watching else "list"))
        if self.down_at <= now < self.back_at:
            raise connection_refused()
        version = "1" if now < self.down_at else "2"
        if not watching:
            return FakeResponse(
                json.dumps({"metadata": {"resourceVersion": version}, "items": []}).encode()
            )
        if params["resource_version"] == "1" and now >= self.back_at:
            gone = {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}
            return FakeResponse(lines=lambda: iter([json.dumps(gone).encode() + b"\n"]))
        if now >= self.back_at:  # watching from the relist: done
            self.on_resumed()
            return FakeResponse()
        return FakeResponse(lines=self._until_the_outage)

    def _until_the_outage(self) -> Iterator[bytes]:
        self.clock.now = self.down_at
        raise urllib3.exceptions.ProtocolError("Connection broken")
        yield b""  # a generator


def test_after_an_outage_the_watch_relists_within_a_probe_interval_of_the_api_return() -> None:
    """With the production settings, the outage that once left relists 15 s late."""
    clock, reports = FakeClock(), list[WatchReport]()
    watch: ResourceWatch

    def stop() -> None:
        watch.stop()

    api = FlakyApi(clock, down_at=10.0, back_at=10.0 + OUTAGE_S, on_resumed=stop)
    watch = ResourceWatch(
        MESH_KINDS[0], None, (api, api), DEFAULTS, reports.append,
        rng=random.Random(3), monotonic=clock.monotonic, sleep=clock.sleep,
    )  # fmt: skip
    watch.run()

    lists = [at for at, verb in api.requests if verb == "list"]
    assert len(lists) == 2
    assert api.back_at <= lists[1] <= api.back_at + OUTAGE_PROBE_MAX_S
    probes = [at for at, _ in api.requests if api.down_at <= at < api.back_at]
    gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
    assert max(gaps) <= OUTAGE_PROBE_MAX_S
    assert len(probes) <= 2 * OUTAGE_S / OUTAGE_PROBE_MAX_S + 3, "probing, not spinning"
    errors = [report.errors for report in reports if report.errors is not None]
    assert errors[-1] == (), "the failure is cleared once the API answers"
