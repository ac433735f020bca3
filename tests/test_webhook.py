"""The injection webhook: AdmissionReview in, a JSON Patch that gives the injected pod out.

The patch is checked by applying it with an independent RFC 6902 implementation (the
`jsonpatch` package, a test-only dependency): the patched pod must equal what
`xds-server inject` produces for the same pod.  The HTTPS server is exercised for real
on 127.0.0.1 with a generated CA, including a certificate rotation while it runs.  The
self-managed TLS (one Secret shared by every replica, CA patched into the webhook
configuration) is specified against an in-memory store, and its Kubernetes adapter
against a small HTTP API server that keeps resourceVersions and merges `webhooks` by
name as the real one does, reached through the official client.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
import yaml
from cryptography import x509
from kubernetes import client

from xds_server import cli
from xds_server.inject import InjectionConfig, inject_pod, inject_yaml
from xds_server.inject.certs import TlsBundle, generate_tls, renewal_reason
from xds_server.inject.tls_store import (
    KubernetesTlsStore,
    StoredTls,
    bundle_from_secret_data,
    ensure_webhook_tls,
)
from xds_server.inject.webhook import ReviewError, review_response
from xds_server.inject.webhook_server import FileTls, WebhookServer

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
SERVICE_DNS = "mesh-injector.mesh-system.svc"


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d9f8c6b5-",
            "namespace": "shop",
            "labels": {"app": "web"},
        },
        "spec": {"containers": [{"name": "app", "image": "web:1"}], **spec},
    }


def review(obj: Any, *, operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "namespace": "shop",
            "operation": operation,
            "object": obj,
        },
    }


def patched(original: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(original, ops)
    return result


# -- the AdmissionReview ---------------------------------------------------------------

PODS = {
    "bare": pod(),
    "no metadata": {"spec": {"containers": [{"name": "app", "image": "web:1"}]}},
    "own annotations, init containers and volumes": pod(
        initContainers=[{"name": "wait", "image": "busybox"}],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    | {"metadata": {"name": "web", "annotations": {"a/b~c": "keep"}}},
}


@pytest.mark.parametrize("original", PODS.values(), ids=PODS.keys())
def test_the_patch_applied_to_the_pod_gives_the_injected_pod(original: dict[str, Any]) -> None:
    answer = review_response(review(copy.deepcopy(original)), InjectionConfig())
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert answer["response"]["allowed"] is True
    expected, _ = inject_pod(original, InjectionConfig())
    assert patched(original, answer) == expected


@pytest.mark.parametrize(
    ("request_review", "why"),
    [
        (review(pod(), operation="UPDATE"), "not a CREATE"),
        (review({"metadata": {}}, kind="ConfigMap"), "not a Pod"),
        (review(pod(hostNetwork=True)), "host network"),
        (review(pod() | {"metadata": {"labels": {"sidecar.mesh.io/inject": "false"}}}), "opt-out"),
    ],
)
def test_requests_that_need_no_injection_are_allowed_unchanged(
    request_review: dict[str, Any], why: str
) -> None:
    response = review_response(request_review, InjectionConfig())["response"]
    assert response["allowed"] is True, why
    assert "patch" not in response and "patchType" not in response, why


def test_a_pod_that_cannot_be_injected_is_denied_with_the_reason() -> None:
    clash = pod(volumes=[{"name": "mesh-bootstrap", "emptyDir": {}}])
    response = review_response(review(clash), InjectionConfig())["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "mesh-bootstrap are reserved" in response["status"]["message"]


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "AdmissionReview", "request": {"uid": "x"}},
        {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}},
        review(None),
    ],
)
def test_a_malformed_review_is_an_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ReviewError):
        review_response(bad, InjectionConfig())


# -- the HTTPS server ------------------------------------------------------------------


def write_tls(directory: Path, bundle: TlsBundle) -> FileTls:
    (directory / "tls.crt").write_bytes(bundle.cert_pem)
    (directory / "tls.key").write_bytes(bundle.key_pem)
    return FileTls(directory / "tls.crt", directory / "tls.key")


def verifying(ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    return context


@dataclass
class RunningWebhook:
    server: WebhookServer
    ca_pem: bytes
    directory: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[RunningWebhook]:
    bundle = generate_tls(["127.0.0.1", SERVICE_DNS])
    server = WebhookServer(
        InjectionConfig(),
        host="127.0.0.1",
        port=0,
        tls=write_tls(tmp_path, bundle),
        refresh_seconds=0.1,
    )
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.started.wait(), timeout=15)
    yield RunningWebhook(server, bundle.ca_pem, tmp_path)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_https_webhook_answers_with_the_same_injection_as_the_cli(
    webhook: RunningWebhook,
) -> None:
    original = pod()
    async with httpx.AsyncClient(verify=verifying(webhook.ca_pem), timeout=5) as http:
        response = await http.post(f"{webhook.url}/inject", json=review(original))
    assert response.status_code == 200
    cli_output, _ = inject_yaml(yaml.safe_dump(original), InjectionConfig())
    assert patched(original, response.json()) == yaml.safe_load(cli_output)


async def test_the_webhook_refuses_what_is_not_an_admission_review(
    webhook: RunningWebhook,
) -> None:
    async with httpx.AsyncClient(verify=verifying(webhook.ca_pem), timeout=5) as http:
        assert (await http.post(f"{webhook.url}/inject", content=b"{not json")).status_code == 400
        assert (await http.post(f"{webhook.url}/inject", json=[1])).status_code == 400
        assert (await http.get(f"{webhook.url}/readyz")).status_code == 200
        assert (await http.get(f"{webhook.url}/healthz")).status_code == 200


async def test_the_webhook_is_https_only_and_verifiable_only_with_its_ca(
    webhook: RunningWebhook,
) -> None:
    other_ca = generate_tls(["127.0.0.1"]).ca_pem
    async with httpx.AsyncClient(verify=verifying(other_ca), timeout=5) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{webhook.url}/healthz")
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.HTTPError):
            await http.get(f"http://127.0.0.1:{webhook.server.port}/healthz")


async def test_a_rotated_certificate_is_served_without_a_restart(webhook: RunningWebhook) -> None:
    rotated = generate_tls(["127.0.0.1", SERVICE_DNS])
    write_tls(webhook.directory, rotated)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            async with httpx.AsyncClient(verify=verifying(rotated.ca_pem), timeout=5) as http:
                assert (await http.get(f"{webhook.url}/healthz")).status_code == 200
            break
        except httpx.ConnectError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


# -- certificates ------------------------------------------------------------------------


def test_a_generated_certificate_names_the_service_and_chains_to_its_ca() -> None:
    bundle = generate_tls([SERVICE_DNS, "10.96.0.10"], now=NOW)
    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    ca = x509.load_pem_x509_certificate(bundle.ca_pem)
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [SERVICE_DNS]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.96.0.10"]
    assert renewal_reason(bundle, [SERVICE_DNS], now=NOW) == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"now": NOW + datetime.timedelta(days=3640)}, "expires"),
        ({"names": ["other.mesh-system.svc"]}, "does not cover other.mesh-system.svc"),
        ({"key": generate_tls(["x"]).key_pem}, "key does not match"),
        ({"cert": b"garbage"}, "unreadable"),
    ],
)
def test_a_certificate_that_cannot_serve_is_renewed(change: dict[str, Any], reason: str) -> None:
    bundle = generate_tls([SERVICE_DNS], now=NOW)
    bundle = TlsBundle(
        ca_pem=bundle.ca_pem,
        cert_pem=change.get("cert", bundle.cert_pem),
        key_pem=change.get("key", bundle.key_pem),
    )
    found = renewal_reason(bundle, change.get("names", [SERVICE_DNS]), now=change.get("now", NOW))
    assert reason in found


# -- self-managed TLS shared through a Secret --------------------------------------------


@dataclass
class MemoryTlsStore:
    """A Secret and a caBundle in memory; `rival` writes first, as another replica would."""

    stored: StoredTls | None = None
    ca_bundles: list[bytes] = field(default_factory=list)
    rival: TlsBundle | None = None
    versions: int = 0

    def read(self) -> StoredTls | None:
        return self.stored

    def _write(self, bundle: TlsBundle, previous_ca: bytes = b"") -> None:
        self.versions += 1
        self.stored = StoredTls(bundle, str(self.versions), previous_ca)

    def create(self, bundle: TlsBundle, previous_ca: bytes) -> bool:
        if self.rival is not None:
            self._write(self.rival)
            self.rival = None
        if self.stored is not None:
            return False
        self._write(bundle, previous_ca)
        return True

    def replace(self, bundle: TlsBundle, previous_ca: bytes, resource_version: str) -> bool:
        if self.rival is not None:
            self._write(self.rival)
            self.rival = None
        if self.stored is None or self.stored.resource_version != resource_version:
            return False
        self._write(bundle, previous_ca)
        return True

    def patch_ca_bundle(self, ca_pem: bytes) -> None:
        self.ca_bundles.append(ca_pem)


def test_the_first_replica_creates_the_certificate_and_the_next_reuses_it() -> None:
    store = MemoryTlsStore()
    first = ensure_webhook_tls(store, [SERVICE_DNS], now=NOW)
    second = ensure_webhook_tls(store, [SERVICE_DNS], now=NOW)
    assert second == first
    assert store.versions == 1
    assert store.ca_bundles == [first.ca_pem, first.ca_pem]


def test_a_replica_that_loses_the_race_serves_the_winners_certificate() -> None:
    winner = generate_tls([SERVICE_DNS], now=NOW)
    store = MemoryTlsStore(rival=winner)
    assert ensure_webhook_tls(store, [SERVICE_DNS], now=NOW) == winner
    assert store.ca_bundles == [winner.ca_pem]


def test_an_empty_secret_from_the_manifests_is_filled_in() -> None:
    store = MemoryTlsStore(stored=StoredTls(None, "7"))
    bundle = ensure_webhook_tls(store, [SERVICE_DNS], now=NOW)
    assert store.stored == StoredTls(bundle, "1")
    assert store.ca_bundles == [bundle.ca_pem]


def test_renewal_keeps_trusting_the_previous_ca_until_it_expires() -> None:
    old = generate_tls([SERVICE_DNS], now=NOW)
    store = MemoryTlsStore(stored=StoredTls(old, "1"))
    later = NOW + datetime.timedelta(days=3640)  # inside the renewal window, still valid
    new = ensure_webhook_tls(store, [SERVICE_DNS], now=later)
    assert new != old
    assert store.ca_bundles == [new.ca_pem + old.ca_pem]
    # Another replica, refreshing, patches the same bundle rather than dropping the old CA.
    assert ensure_webhook_tls(store, [SERVICE_DNS], now=later) == new
    assert store.ca_bundles[-1] == new.ca_pem + old.ca_pem
    # Once the old CA has expired, it leaves the bundle.
    after = NOW + datetime.timedelta(days=3651)
    ensure_webhook_tls(store, [SERVICE_DNS], now=after)
    assert store.ca_bundles[-1] == new.ca_pem


def test_a_store_that_never_settles_is_an_error() -> None:
    class Contended(MemoryTlsStore):
        def create(self, bundle: TlsBundle, previous_ca: bytes) -> bool:
            return False

    with pytest.raises(RuntimeError, match="could not settle"):
        ensure_webhook_tls(Contended(), [SERVICE_DNS], now=NOW, attempts=3)


# -- the Kubernetes adapter, over HTTP -------------------------------------------------

SECRETS = "/api/v1/namespaces/mesh-system/secrets"
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class ApiState:
    """Secrets with resourceVersions, and webhook configurations patched by name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.revision = 0
        self.secrets: dict[str, dict[str, Any]] = {}
        self.webhooks = {
            "mesh-sidecar-injector": {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "mesh-sidecar-injector", "resourceVersion": "1"},
                "webhooks": [
                    {"name": "other.example.io", "clientConfig": {"url": "https://x"}},
                    {"name": "sidecar-injector.mesh.io", "clientConfig": {"service": {}}},
                ],
            }
        }
        self.patch_types: list[str] = []

    def next_version(self) -> str:
        self.revision += 1
        return str(self.revision)


class ApiHandler(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": reason, "code": code})  # fmt: skip

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        return body

    def do_GET(self) -> None:
        state = self.server.state
        name = self.path.split("?")[0].removeprefix(f"{SECRETS}/")
        with state.lock:
            if name in state.secrets:
                self._send(200, state.secrets[name])
            else:
                self._status(404, "NotFound")

    def do_POST(self) -> None:
        state, body = self.server.state, self._body()
        with state.lock:
            name = body["metadata"]["name"]
            if name in state.secrets:
                return self._status(409, "AlreadyExists")
            body["metadata"]["resourceVersion"] = state.next_version()
            state.secrets[name] = body
            self._send(201, body)

    def do_PUT(self) -> None:
        state, body = self.server.state, self._body()
        name = self.path.split("?")[0].removeprefix(f"{SECRETS}/")
        with state.lock:
            current = state.secrets.get(name)
            if current is None:
                return self._status(404, "NotFound")
            if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return self._status(409, "Conflict")
            body["metadata"]["resourceVersion"] = state.next_version()
            state.secrets[name] = body
            self._send(200, body)

    def do_PATCH(self) -> None:
        state, body = self.server.state, self._body()
        name = self.path.split("?")[0].removeprefix(f"{WEBHOOKS}/")
        with state.lock:
            state.patch_types.append(self.headers["Content-Type"])
            configuration = state.webhooks.get(name)
            if configuration is None:
                return self._status(404, "NotFound")
            if self.headers["Content-Type"] != "application/strategic-merge-patch+json":
                return self._status(415, "UnsupportedMediaType")
            # `webhooks` has patchMergeKey "name": entries merge into the one so named.
            for change in body["webhooks"]:
                (target,) = [w for w in configuration["webhooks"] if w["name"] == change["name"]]
                target["clientConfig"].update(change["clientConfig"])
            self._send(200, configuration)


class ApiServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ApiHandler)
        self.state = ApiState()


@pytest.fixture
def api() -> Iterator[tuple[ApiServer, Any]]:
    server = ApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    configuration = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    with client.ApiClient(configuration) as api_client:
        yield server, api_client
    server.shutdown()
    server.server_close()
    thread.join()


def kube_store(api_client: Any) -> KubernetesTlsStore:
    return KubernetesTlsStore(
        api_client,
        namespace="mesh-system",
        secret_name="mesh-injector-tls",
        webhook_configuration="mesh-sidecar-injector",
        webhook_names=["sidecar-injector.mesh.io"],
    )


def test_replicas_share_one_certificate_through_the_api(api: tuple[ApiServer, Any]) -> None:
    server, api_client = api
    first = ensure_webhook_tls(kube_store(api_client), [SERVICE_DNS])
    second = ensure_webhook_tls(kube_store(api_client), [SERVICE_DNS])
    assert second == first
    (secret,) = server.state.secrets.values()
    assert secret["type"] == "Opaque"
    assert bundle_from_secret_data(secret["data"]) == first
    webhooks = {w["name"]: w for w in server.state.webhooks["mesh-sidecar-injector"]["webhooks"]}
    assert base64.b64decode(webhooks["sidecar-injector.mesh.io"]["clientConfig"]["caBundle"]) == (
        first.ca_pem
    )
    assert "caBundle" not in webhooks["other.example.io"]["clientConfig"]
    assert set(server.state.patch_types) == {"application/strategic-merge-patch+json"}


def test_the_adapter_reports_conflicts_as_lost_races(api: tuple[ApiServer, Any]) -> None:
    _, api_client = api
    store = kube_store(api_client)
    bundle = generate_tls([SERVICE_DNS])
    assert store.read() is None
    assert store.create(bundle, b"") is True
    assert store.create(bundle, b"") is False
    stored = store.read()
    assert stored is not None and stored.bundle == bundle and stored.previous_ca == b""
    assert store.replace(bundle, bundle.ca_pem, stored.resource_version) is True
    assert store.replace(bundle, b"", stored.resource_version) is False, "a stale resourceVersion"
    stored = store.read()
    assert stored is not None and stored.previous_ca == bundle.ca_pem


def test_a_missing_webhook_configuration_is_an_error(api: tuple[ApiServer, Any]) -> None:
    server, api_client = api
    server.state.webhooks.clear()
    with pytest.raises(client.exceptions.ApiException) as raised:
        ensure_webhook_tls(kube_store(api_client), [SERVICE_DNS])
    assert raised.value.status == 404


# -- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "TLS is required"),
        (["--cert", "c.pem"], "give --cert and --key together"),
        (["--tls-secret", "mesh-system"], "expects NAMESPACE/NAME"),
        (["--tls-secret", "mesh-system/tls"], "needs --dns-name"),
    ],
)
def test_the_webhook_command_refuses_incomplete_tls_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["webhook", "--listen", "127.0.0.1:0", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_webhook_command_fails_cleanly_on_a_busy_port_or_a_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = write_tls(tmp_path, generate_tls(["127.0.0.1"]))
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        argv = ["webhook", "--listen", f"127.0.0.1:{port}", "--cert", str(tls.cert)]
        assert cli.main([*argv, "--key", str(tls.key)]) == 1
    assert "Address already in use" in capsys.readouterr().err
    assert cli.main(["webhook", "--listen", "127.0.0.1:0", "--cert", str(tls.cert),
                     "--key", str(tls.cert)]) == 1  # fmt: skip
    assert "SSL" in capsys.readouterr().err
