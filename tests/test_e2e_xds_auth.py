"""End to end: the xDS port serves TLS and serves only proxies that prove who they are.

A real `xds-server serve` (file mode) and real Envoys bootstrapped with the real
`xds-server bootstrap`, which has the sidecar's key signed by the control plane.
Such a sidecar is served; one without a credential, with a forged one (a
certificate naming the right SPIFFE ID from a CA of its own) or with one of
another identity never receives config, and the refusal is logged.  A raw gRPC
client holding a genuine credential that asks for another workload's Secret is
refused PERMISSION_DENIED.  After a root rotation, a sidecar whose credential
was renewed during the overlap (the bootstrap command run again; Envoy reads
the files again) reconnects to the restarted control plane, while one not
renewed is refused: it no longer trusts the server, nor the server it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import EnvoyFactory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from e2e_mesh import service_yaml, slice_yaml, write_documents
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from plane_process import ControlPlaneProcess, poll

from xds_server.envoy_process import EnvoyProcess
from xds_server.resources import SECRET
from xds_server.security.xds_client import CERTIFICATE_FILE, KEY_FILE, ROOTS_FILE

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]

WEB_IP = "127.0.47.2"


@pytest.fixture
def plane(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[ControlPlaneProcess]:
    """`serve` on a mesh with one Service, its CA in the test's own directory."""
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "web.yaml", service_yaml("web"), slice_yaml("web", [WEB_IP], 8080))
    process = ControlPlaneProcess(
        directory,
        free_port(),
        free_port(),
        tmp_path / "serve.log",
        extra=("--ca-dir", str(tmp_path / "ca")),
    )
    process.start().wait_ready()
    try:
        yield process
    finally:
        process.stop()
        print(f"--- serve log ---\n{process.logs()[-6000:]}")


def bootstrap(
    plane: ControlPlaneProcess, node_id: str, cert_dir: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`xds-server bootstrap` as a user runs it, with the control plane's admin token."""
    command = [
        sys.executable, "-m", "xds_server.cli", "bootstrap",
        "--node-id", node_id, "--namespace", "default", "--admin-port", "0",
        "--xds-address", plane.xds_address, "--admin", plane.admin_url,
        "--admin-token-file", str(plane.token_file), "--cert-dir", str(cert_dir),
        "-o", str(cert_dir.with_suffix(".yaml")), *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)


def start(envoy_factory: EnvoyFactory, path: Path, name: str) -> EnvoyProcess:
    return envoy_factory(path.read_text(), name=name, start=True)


def has_web_cluster(envoy: EnvoyProcess) -> bool:
    return any("web" in status["name"] for status in envoy.clusters())


def refusals(plane: ControlPlaneProcess) -> str:
    return "\n".join(
        line
        for line in plane.logs().splitlines()
        if "refusing ADS stream" in line or "denied" in line
    )


def test_a_bootstrapped_sidecar_is_served_and_its_key_never_left_it(
    plane: ControlPlaneProcess, envoy_factory: EnvoyFactory, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "web-0"
    bootstrap(plane, "web-0.default", cert_dir)

    assert (cert_dir / KEY_FILE).stat().st_mode & 0o077 == 0
    certificate = x509.load_pem_x509_certificate((cert_dir / CERTIFICATE_FILE).read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/default"
    ]
    assert "PRIVATE KEY" not in plane.logs()
    envoy = start(envoy_factory, cert_dir.with_suffix(".yaml"), "web-0")
    poll(lambda: has_web_cluster(envoy), within=20, message="the sidecar got its clusters")
    assert plane.serves("web-0.default")


def test_the_bootstrap_command_needs_the_admin_token(
    plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("x" * 43)
    wrong.chmod(0o600)
    command = [
        sys.executable, "-m", "xds_server.cli", "bootstrap", "--node-id", "web-0.default",
        "--admin-port", "0", "--admin", plane.admin_url, "--admin-token-file", str(wrong),
        "--cert-dir", str(tmp_path / "never"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert not (tmp_path / "never" / CERTIFICATE_FILE).exists()


def test_no_credential_a_forged_one_or_another_identitys_node_gets_no_config(
    plane: ControlPlaneProcess, envoy_factory: EnvoyFactory, tmp_path: Path
) -> None:
    # Plaintext, no certificate: the TLS port never gets a stream from it.
    plain = tmp_path / "plain"
    plain.mkdir()
    bootstrap(plane, "plain-0.default", plain / "x", "--insecure-xds")
    # Forged: the right SPIFFE ID, from a CA of its own, the server's roots trusted.
    forged_dir = tmp_path / "forged"
    bootstrap(plane, "forged-0.default", forged_dir)
    forge_certificate(forged_dir, "spiffe://cluster.local/ns/default/sa/default")
    # Another identity: a genuine certificate of sa/intruder claiming node web-0's
    # identity (service account default, as its metadata says).
    intruder_dir = tmp_path / "intruder"
    bootstrap(plane, "web-0.default", intruder_dir, "--service-account", "intruder")
    text = (
        intruder_dir.with_suffix(".yaml")
        .read_text()
        .replace("SERVICE_ACCOUNT: intruder", "SERVICE_ACCOUNT: default")
    )
    intruder_dir.with_suffix(".yaml").write_text(text)

    envoys = [
        start(envoy_factory, (plain / "x").with_suffix(".yaml"), "plain"),
        start(envoy_factory, forged_dir.with_suffix(".yaml"), "forged"),
        start(envoy_factory, intruder_dir.with_suffix(".yaml"), "intruder"),
    ]

    poll(
        lambda: "may not claim node web-0.default" in refusals(plane),
        within=20,
        message="the intruder refused and logged",
    )
    time.sleep(2.0)  # several reconnect attempts each
    assert [has_web_cluster(envoy) for envoy in envoys] == [False, False, False]
    assert plane.proxies() == []
    assert "PERMISSION_DENIED" in plane.logs() or "may not claim" in plane.logs()


def forge_certificate(cert_dir: Path, spiffe_id: str) -> None:
    """Replace the sidecar's certificate with one a CA of its own signed."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "cluster.local")])
    now = datetime.datetime.now(datetime.UTC)
    key = serialization.load_pem_private_key((cert_dir / KEY_FILE).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (cert_dir / CERTIFICATE_FILE).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))


def test_a_genuine_proxy_asking_for_another_workloads_secret_is_refused(
    plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cert_dir = tmp_path / "web-0"
    bootstrap(plane, "web-0.default", cert_dir)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(cert_dir / ROOTS_FILE).read_bytes(),
        private_key=(cert_dir / KEY_FILE).read_bytes(),
        certificate_chain=(cert_dir / CERTIFICATE_FILE).read_bytes(),
    )

    async def ask(names: list[str]) -> tuple[grpc.StatusCode | None, int]:
        async with grpc.aio.secure_channel(plane.xds_address, credentials) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            request = discovery_pb2.DiscoveryRequest(type_url=SECRET, resource_names=names)
            request.node.id = "web-0.default"
            call = stub.StreamAggregatedResources()
            try:
                await call.write(request)
                response = await asyncio.wait_for(call.read(), timeout=10)
                if response is grpc.aio.EOF:
                    return await call.code(), 0
                return None, len(response.resources)
            except grpc.aio.AioRpcError as error:
                return error.code(), 0
            finally:
                call.cancel()

    code, served = asyncio.run(ask(["default", "ROOTCA"]))  # its own: served
    assert code is None and served >= 1
    assert asyncio.run(ask(["spiffe://cluster.local/ns/default/sa/other"]))[0] == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert "may only ask for the Secrets" in plane.logs()


def rotate_root(plane: ControlPlaneProcess, overlap: float) -> dict[str, str]:
    request = urllib.request.Request(
        f"{plane.admin_url}/api/ca/rotate-root",
        data=json.dumps({"overlap_seconds": overlap}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {plane.token_file.read_text().strip()}",
        },
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as reply:
        answer: dict[str, str] = json.loads(reply.read())
    return answer


def test_after_a_root_rotation_a_renewed_sidecar_reconnects_and_a_stale_one_cannot(
    plane: ControlPlaneProcess, envoy_factory: EnvoyFactory, tmp_path: Path
) -> None:
    renewed_dir, stale_dir = tmp_path / "renewed", tmp_path / "stale"
    bootstrap(plane, "renewed-0.default", renewed_dir)
    bootstrap(plane, "stale-0.default", stale_dir)
    renewed = start(envoy_factory, renewed_dir.with_suffix(".yaml"), "renewed")
    stale = start(envoy_factory, stale_dir.with_suffix(".yaml"), "stale")
    poll(lambda: plane.serves("renewed-0.default") and plane.serves("stale-0.default"),
         within=20, message="both sidecars served")  # fmt: skip

    rotation = rotate_root(plane, overlap=10.0)
    reissue_at = datetime.datetime.fromisoformat(rotation["reissue_at"]).timestamp()
    time.sleep(max(0.0, reissue_at - time.time()) + 0.5)
    bootstrap(plane, "renewed-0.default", renewed_dir)  # the renewal: run it again
    overlap_ends = datetime.datetime.fromisoformat(rotation["overlap_ends_at"]).timestamp()
    time.sleep(max(0.0, overlap_ends - time.time()) + 1.0)
    old_root = x509.load_pem_x509_certificates((stale_dir / ROOTS_FILE).read_bytes())
    new_roots = x509.load_pem_x509_certificates((renewed_dir / ROOTS_FILE).read_bytes())
    assert len(new_roots) == 2 and old_root[0] in new_roots  # both, during the overlap

    plane.kill()
    plane.start().wait_ready()  # the new root only, from its store

    poll(lambda: plane.serves("renewed-0.default"), within=20, message="the renewed one back")
    time.sleep(2.0)
    assert not plane.serves("stale-0.default")
    assert renewed.clusters() and stale.clusters()  # neither restarted: both keep config
    assert "Handshake failed" in plane.logs() or "CERTIFICATE_VERIFY_FAILED" in stale.logs()


def test_insecure_xds_says_so_at_start_up(tmp_path: Path, free_port: Callable[[], int]) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    process = ControlPlaneProcess(
        directory, free_port(), free_port(), tmp_path / "insecure.log",
        extra=("--insecure-xds", "--ca-dir", str(tmp_path / "ca")),
    )  # fmt: skip
    process.start().wait_ready()
    try:
        assert "INSECURE: --insecure-xds serves xDS in PLAINTEXT" in process.logs()
    finally:
        process.stop()
