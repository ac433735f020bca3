"""`xds-server demo`: the whole mesh on one machine, with real Envoy sidecars.

Starts the control plane on the example manifests, three sample services as
separate processes (a frontend and two backend versions), a real Envoy sidecar
for each, then sends requests client -> frontend sidecar -> frontend ->
frontend sidecar -> backend sidecar -> backend and prints who answered.
Every "pod" has a loopback IP (127.0.10.x) where its sidecar listens; its app
listens on 127.0.20.x, so nothing collides.  The mesh is secured as in
production: each sidecar proves its identity to the xDS port with a client
certificate signed for its service account, receives its SVID over SDS, and
sidecars talk mutual TLS (the backend sees the frontend's SPIFFE ID).
Everything started is stopped on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xds_server.app import ControlPlane
from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import EnvoyProcess, free_port, wait_for_async
from xds_server.security.xds_client import new_key_and_csr, write_client_tls
from xds_server.settings import Settings

logger = logging.getLogger(__name__)

OUTBOUND_PORT = 15001


@dataclass(frozen=True)
class DemoPod:
    name: str
    app: str
    version: str
    ip: str
    app_ip: str
    upstream_host: str | None = None

    @property
    def node_id(self) -> str:
        return f"{self.name}.default"


PODS = (
    DemoPod("frontend-7d9f8-x1", "frontend", "v1", "127.0.10.1", "127.0.20.1", "backend:8080"),
    DemoPod("backend-v1-5c6b7-a1", "backend", "v1", "127.0.10.2", "127.0.20.2"),
    DemoPod("backend-v2-8e9f0-b2", "backend", "v2", "127.0.10.3", "127.0.20.3"),
)
APP_PORT = 8080


def bundled_examples() -> Path:
    """The repository's examples/ directory (the demo runs from a checkout)."""
    return Path(__file__).resolve().parent.parent / "examples"


def _port_or_free(preferred: int) -> int:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _http_get(url: str, host: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except ValueError:
            return error.code, {"body": body.decode(errors="replace")}


def _caller(xfcc: str) -> str:
    """The caller's SPIFFE ID in an `x-forwarded-client-cert` header, or `-`."""
    for part in xfcc.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "uri":
            return value.strip('"')
    return "-"


class Demo:
    def __init__(self, manifests: Path, delta: bool, workdir: Path) -> None:
        self.manifests = manifests
        self.delta = delta
        self.workdir = workdir
        self.apps: list[subprocess.Popen[bytes]] = []
        self.envoys: list[EnvoyProcess] = []
        self.xds_port = _port_or_free(15010)
        self.admin_port = _port_or_free(15014)

    def start_app(self, pod: DemoPod) -> None:
        command = [
            sys.executable, "-m", "xds_server.sample_app",
            "--name", pod.app, "--version", pod.version,
            "--listen", f"{pod.app_ip}:{APP_PORT}",
        ]  # fmt: skip
        if pod.upstream_host:
            command += ["--upstream-proxy", f"{pod.ip}:{OUTBOUND_PORT}"]
            command += ["--upstream-host", pod.upstream_host]
        log = (self.workdir / f"{pod.name}.app.log").open("wb")
        self.apps.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))

    def start_sidecar(self, pod: DemoPod, plane: ControlPlane) -> EnvoyProcess:
        """The pod's sidecar, with the xDS credential `xds-server bootstrap` would get:
        its own key, signed by the control plane for its service account."""
        key_pem, csr_pem = new_key_and_csr()
        signed = plane.sign_xds_client_certificate("default", pod.app, csr_pem, 24 * 3600.0)
        credential = write_client_tls(signed, key_pem, self.workdir / f"{pod.name}.xds")
        bootstrap = render_bootstrap(
            node_id=pod.node_id,
            namespace="default",
            workload=pod.name.rsplit("-", 2)[0],
            xds_address=f"127.0.0.1:{self.xds_port}",
            admin_port=0,
            delta=self.delta,
            labels={"app": pod.app, "version": pod.version},
            instance_ip=pod.ip,
            app_address=pod.app_ip,
            outbound_address=pod.ip,
            outbound_port=OUTBOUND_PORT,
            service_account=pod.app,
            xds_tls=credential,
        )
        envoy = EnvoyProcess.from_yaml(bootstrap, self.workdir, name=pod.name)
        self.envoys.append(envoy)
        return envoy

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        for app in self.apps:
            app.terminate()
        for app in self.apps:
            try:
                app.wait(timeout=5)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()

    async def check_traffic(self, requests: int = 12) -> bool:
        frontend = PODS[0]
        url = f"http://{frontend.ip}:{OUTBOUND_PORT}/call"

        async def frontend_answers() -> bool:
            status, _ = await asyncio.to_thread(_http_get, url, "frontend", 2.0)
            return status == 200

        await wait_for_async(
            frontend_answers, timeout=30, interval=0.2, message="traffic through the mesh",
            ignore=(OSError,),
        )  # fmt: skip
        answered: Counter[str] = Counter()
        crossed_ok = True
        print(
            f"\nclient -> {frontend.ip}:{OUTBOUND_PORT} (Host: frontend) /call, {requests} times:"
        )
        for _ in range(requests):
            status, body = await asyncio.to_thread(_http_get, url, "frontend")
            upstream: dict[str, Any] = body.get("upstream_response") or {}
            inner = upstream.get("body")
            answer: dict[str, Any] = inner if isinstance(inner, dict) else upstream
            headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
            who = f"{answer.get('service')} {answer.get('version')}"
            via = headers.get("x-mesh-inbound", "-")
            caller = _caller(headers.get("x-forwarded-client-cert", ""))
            print(f"  {status}  frontend -> {who:<12} (through sidecar {via}, mTLS from {caller})")
            if status != 200 or "x-mesh-inbound" not in headers or caller == "-":
                crossed_ok = False
            answered[who] += 1
        print("\nanswers: " + ", ".join(f"{who}: {n}" for who, n in sorted(answered.items())))
        both_versions = {"backend v1", "backend v2"} <= set(answered)
        return crossed_ok and both_versions

    def print_help(self) -> None:
        frontend = PODS[0]
        print(
            f"""
The mesh is up. Try:
  curl -s -H 'Host: frontend' http://{frontend.ip}:{OUTBOUND_PORT}/call     # through two sidecars
  curl -s -H 'Host: backend:8080' http://{frontend.ip}:{OUTBOUND_PORT}/     # frontend's sidecar
  open   http://127.0.0.1:{self.admin_port}/                             # admin page
  curl -s http://127.0.0.1:{self.admin_port}/api/proxies                  # the same as JSON
  curl -s http://127.0.0.1:{self.envoys[0].admin_port}/clusters       # frontend sidecar admin
Edit {self.manifests}/endpoints.yaml (e.g. drop the 127.0.10.3 endpoint) and traffic follows.
Ctrl-C stops everything."""
        )


async def run_demo(
    *, once: bool = False, delta: bool = False, manifests: Path | None = None
) -> int:
    manifests = manifests or bundled_examples()
    if not manifests.is_dir():
        print(f"xds-server demo: no manifests directory at {manifests}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xds-demo-") as tmp:
        demo = Demo(manifests, delta, Path(tmp))
        control_plane = ControlPlane(
            Settings(
                source=f"file:{manifests}",
                xds_listen=f"127.0.0.1:{demo.xds_port}",
                admin_listen=f"127.0.0.1:{demo.admin_port}",
            )
        )
        plane = asyncio.create_task(control_plane.run(), name="control-plane")
        try:
            await asyncio.wait_for(control_plane.started.wait(), timeout=30)
            mode = "Delta" if delta else "state-of-the-world"
            print(f"control plane: xDS 127.0.0.1:{demo.xds_port} ({mode}), "
                  f"admin http://127.0.0.1:{demo.admin_port}, manifests {manifests}")  # fmt: skip
            for pod in PODS:
                demo.start_app(pod)
                envoy = demo.start_sidecar(pod, control_plane)
                await envoy.start_async()
                print(f"pod {pod.name:<22} ip {pod.ip}  app {pod.app_ip}:{APP_PORT}  "
                      f"sidecar admin 127.0.0.1:{envoy.admin_port}")  # fmt: skip
            ok = await demo.check_traffic()
            print("\ntraffic check: " + ("OK" if ok else "FAILED"))
            if once or not ok:
                return 0 if ok else 1
            demo.print_help()
            await plane  # runs until Ctrl-C cancels us
            return 0
        finally:
            demo.stop()
            plane.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await plane
