"""The control plane goes away and comes back; the mesh does not notice.

Real processes only: `xds-server serve` on fixed loopback ports (so it can be
restarted on the same ones), a real Envoy sidecar whose bootstrap comes from
`xds-server bootstrap`, and sample apps as their own processes.  A bounded load
loop (about 250 requests/s, keep-alive clients in threads) runs through the
sidecar the whole time; not one request may fail.

* `kill -9` and a restart a few seconds later: the sidecar is back on the new
  process within a second of it being ready (the bootstrap's ADS backoff is
  capped at 1 s), and an edit made then reaches the sidecar within a second.
* SIGTERM of one of two replicas serving one directory: the sidecar (given both
  addresses) is on the other one at once (the terminated process ends its
  streams instead of letting them hang), a later edit reaches it, and the
  terminated process exits 0 within its grace period.

The measured times are printed (`pytest -s`); `pytest -m slow` runs more rounds.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import EnvoyFactory
from e2e_mesh import Sidecar, service_yaml, slice_yaml, write_documents
from plane_process import ControlPlaneProcess, Load, poll, sample_apps

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]

BACKEND_V1, BACKEND_V2 = "127.0.46.1", "127.0.46.2"
ECHO = {"v1": "127.0.46.3", "v2": "127.0.46.4"}
NODE_ID = "client-0.default"
RECONNECT_WITHIN_S = 1.0
"""After the control plane is ready, the sidecar has a stream on it within this long."""
PROPAGATION_WITHIN_S = 1.0
"""An edit to the manifests reaches the sidecar within this long."""
OUTAGE_S = 2.5
"""How long the control plane stays dead before it is restarted."""
CI_ROUNDS = 3
SLOW_ROUNDS = 10


@dataclass
class Mesh:
    directory: Path
    port: int
    """The one port every sample app listens on (each on its own loopback IP)."""
    tmp: Path
    free_port: Callable[[], int]

    def set_echo(self, version: str) -> float:
        """Point the echo service at one version; return when the edit was written."""
        write_documents(
            self.directory / "echo-endpoints.yaml", slice_yaml("echo", [ECHO[version]], self.port)
        )
        return time.monotonic()

    def control_plane(self, name: str) -> ControlPlaneProcess:
        return ControlPlaneProcess(
            self.directory, self.free_port(), self.free_port(), self.tmp / f"{name}.log"
        )


@pytest.fixture
def mesh(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Mesh]:
    """backend (v1 and v2) under load, echo (v1 or v2) for edits; apps as processes."""
    port = free_port()
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "services.yaml", service_yaml("backend"), service_yaml("echo"))
    write_documents(
        directory / "backend-endpoints.yaml", slice_yaml("backend", [BACKEND_V1, BACKEND_V2], port)
    )
    apps = {
        "backend-v1": ("backend", "v1", f"{BACKEND_V1}:{port}"),
        "backend-v2": ("backend", "v2", f"{BACKEND_V2}:{port}"),
        **{f"echo-{v}": ("echo", v, f"{ip}:{port}") for v, ip in ECHO.items()},
    }
    with sample_apps(apps, tmp_path):
        mesh = Mesh(directory, port, tmp_path, free_port)
        mesh.set_echo("v1")
        yield mesh


@pytest.fixture
def planes() -> Iterator[list[ControlPlaneProcess]]:
    """Control plane processes, killed in teardown; their logs show in a failure's report."""
    started: list[ControlPlaneProcess] = []
    yield started
    for plane in started:
        plane.kill()
        print(f"--- {plane.log.name} ---\n{plane.logs()[-6000:]}")


def bootstrap_command(
    xds_addresses: list[str], outbound_port: int, delta: bool, signer: ControlPlaneProcess
) -> str:
    """The sidecar's bootstrap, as `xds-server bootstrap` renders it, its xDS credential
    signed by `signer` (replicas share the root, so every one accepts it)."""
    command = [
        sys.executable, "-m", "xds_server.cli", "bootstrap",
        "--node-id", NODE_ID, "--namespace", "default",
        "--admin-port", "0", "--outbound-port", str(outbound_port),
        "--admin", signer.admin_url, "--admin-token-file", str(signer.token_file),
        "--cert-dir", str(signer.log.with_name("sidecar-xds")),
    ]  # fmt: skip
    for address in xds_addresses:
        command += ["--xds-address", address]
    if delta:
        command.append("--delta")
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


def start_sidecar(
    envoy_factory: EnvoyFactory,
    mesh: Mesh,
    replicas: list[ControlPlaneProcess],
    delta: bool,
) -> Sidecar:
    outbound_port = mesh.free_port()
    addresses = [replica.xds_address for replica in replicas]
    bootstrap = bootstrap_command(addresses, outbound_port, delta, replicas[0])
    envoy = envoy_factory(bootstrap, name="client")
    envoy.wait_live(timeout=30)
    return Sidecar(envoy, NODE_ID, outbound_port)


def answering_version(sidecar: Sidecar, service: str) -> str:
    """The version of `service` the sidecar routes to now (all of a few requests agree)."""
    seen: set[object] = set()
    for _ in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", sidecar.outbound_port, timeout=2)
        try:
            connection.request("GET", "/", headers={"Host": service})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        seen.add(json.loads(body)["version"] if response.status == 200 else response.status)
    return str(seen.pop()) if len(seen) == 1 else ""


def wait_for_version(sidecar: Sidecar, service: str, version: str, edited_at: float) -> float:
    """Seconds from the edit until the sidecar routes `service` to `version`."""
    poll(
        lambda: answering_version(sidecar, service) == version,
        within=10,
        interval=0.02,
        message=f"{service} {version} through the sidecar",
    )
    return time.monotonic() - edited_at


def report(title: str, figures: dict[str, list[float]], load: Load) -> None:
    result = load.result
    print(f"\n{title}: {result.sent} requests at {result.rate:.0f}/s, "
          f"{len(result.failures)} failed")  # fmt: skip
    for name, values in figures.items():
        shown = ", ".join(f"{value:.3f}" for value in values)
        print(f"  {name} (s): {shown}; max {max(values):.3f}")


# -- kill -9 and restart ------------------------------------------------------------------


def kill_and_restart_rounds(
    mesh: Mesh,
    planes: list[ControlPlaneProcess],
    envoy_factory: EnvoyFactory,
    delta: bool,
    rounds: int,
) -> None:
    plane = mesh.control_plane("control-plane")
    planes.append(plane)
    plane.start().wait_ready()
    sidecar = start_sidecar(envoy_factory, mesh, [plane], delta)
    figures: dict[str, list[float]] = {"reconnect after ready": [], "edit to sidecar": []}
    with Load(sidecar.outbound_port, "backend", "backend", max_seconds=rounds * 15 + 20) as load:
        time.sleep(0.5)  # the load is flowing before the first kill
        for round_number in range(rounds):
            plane.kill()
            killed_at = time.monotonic()
            time.sleep(max(0.0, killed_at + OUTAGE_S - time.monotonic()))
            ready_at = plane.start().wait_ready()
            poll(lambda: plane.serves(NODE_ID), within=10, message="the sidecar reconnected")
            figures["reconnect after ready"].append(time.monotonic() - ready_at)
            # In sync again: an edit made now reaches the sidecar through the new process.
            version = "v2" if round_number % 2 == 0 else "v1"
            edited_at = mesh.set_echo(version)
            figures["edit to sidecar"].append(wait_for_version(sidecar, "echo", version, edited_at))
        result = load.stop()
    report(f"kill -9 x{rounds} ({'delta' if delta else 'sotw'})", figures, load)

    assert result.failures == [], result.failures[:20]
    assert result.ok >= rounds * OUTAGE_S * 100, "the load did not run"
    assert max(figures["reconnect after ready"]) <= RECONNECT_WITHIN_S, figures
    assert max(figures["edit to sidecar"]) <= PROPAGATION_WITHIN_S, figures


@pytest.mark.parametrize("delta", [False], ids=["sotw"])
def test_kill_9_under_load_loses_no_request_and_the_sidecar_rejoins_within_a_second(
    mesh: Mesh, planes: list[ControlPlaneProcess], envoy_factory: EnvoyFactory, delta: bool
) -> None:
    kill_and_restart_rounds(mesh, planes, envoy_factory, delta, CI_ROUNDS)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_kill_9_many_times(
    request: pytest.FixtureRequest,
    mesh: Mesh,
    planes: list[ControlPlaneProcess],
    envoy_factory: EnvoyFactory,
    delta: bool,
) -> None:
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("runs with -m slow")
    kill_and_restart_rounds(mesh, planes, envoy_factory, delta, SLOW_ROUNDS)


# -- SIGTERM with two replicas ------------------------------------------------------------


@pytest.mark.parametrize("delta", [True], ids=["delta"])
def test_sigterm_moves_the_sidecar_to_the_other_replica_with_no_request_lost(
    mesh: Mesh, planes: list[ControlPlaneProcess], envoy_factory: EnvoyFactory, delta: bool
) -> None:
    replicas = [mesh.control_plane("replica-a"), mesh.control_plane("replica-b")]
    planes.extend(replicas)
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_ready()
    sidecar = start_sidecar(envoy_factory, mesh, replicas, delta)
    (serving,) = poll(
        lambda: [r for r in replicas if r.serves(NODE_ID)],
        within=10,
        message="the sidecar on one replica",
    )
    (other,) = [r for r in replicas if r is not serving]

    with Load(sidecar.outbound_port, "backend", "backend", max_seconds=40) as load:
        time.sleep(0.5)
        terminated_at = time.monotonic()
        assert serving.process is not None
        serving.process.send_signal(signal.SIGTERM)
        poll(lambda: other.serves(NODE_ID), within=10, message="moved to the other replica")
        moved_after = time.monotonic() - terminated_at
        code = serving.process.wait(timeout=serving.grace_seconds + 10)
        exited_after = time.monotonic() - terminated_at

        edited_at = mesh.set_echo("v2")
        propagation = wait_for_version(sidecar, "echo", "v2", edited_at)
        time.sleep(0.5)
        result = load.stop()
    report(
        "SIGTERM of the serving replica (delta)",
        {"moved to the other replica": [moved_after], "terminated replica exited": [exited_after],
         "edit to sidecar": [propagation]},
        load,
    )  # fmt: skip

    assert code == 0, serving.logs()[-3000:]
    assert exited_after <= serving.grace_seconds, "the terminated replica outlived its grace"
    assert moved_after <= RECONNECT_WITHIN_S
    assert propagation <= PROPAGATION_WITHIN_S
    assert result.failures == [], result.failures[:20]
    assert result.ok >= 200, "the load did not run"
    assert "Traceback" not in serving.logs()
