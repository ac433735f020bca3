"""End to end: mutual TLS between two real Envoy sidecars, per PeerAuthentication mode.

`backend` is one pod (its Pod manifest carries `security.xds-server.io/tlsMode:
mtls`, service account `backend`): its sidecar binds the pod IP in front of a
sample app.  A client sidecar (service account `client`) calls it through its
outbound listener.  With the default (PERMISSIVE) the call is mutual TLS: the
app sees `x-forwarded-client-cert` naming the client's SPIFFE ID, and a
plaintext client straight to the pod IP is still answered.  STRICT refuses that
plaintext client while the sidecar's call keeps working; DISABLE sends
plaintext (no XFCC).
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    eventually,
    manifest_directory,
    running_control_plane,
    start_apps,
    start_sidecar,
    write_documents,
)
from test_e2e_fault_ratelimit import APP_IP, BACKEND_NODE, POD_IP, backend_service, backend_slice

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
POD = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: Pod
    metadata:
      name: backend-0
      namespace: default
      labels: {{app: backend, security.xds-server.io/tlsMode: mtls}}
    spec:
      serviceAccountName: backend
      containers: [{{name: app, image: backend}}]
    status: {{podIP: {POD_IP}, phase: Running}}
    """
)
CLIENT_POD = textwrap.dedent(
    """\
    apiVersion: v1
    kind: Pod
    metadata: {name: client-0, namespace: default, labels: {app: client}}
    spec:
      serviceAccountName: client
      containers: [{name: app, image: client}]
    """
)


def peer_yaml(mode: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: policy.xds-server.dev/v1alpha1
        kind: PeerAuthentication
        metadata: {{name: backend, namespace: default}}
        spec:
          selector: {{matchLabels: {{app: backend}}}}
          mtls: {{mode: {mode}}}
        """
    )


async def plaintext(port: int) -> int | str:
    try:
        async with httpx.AsyncClient(timeout=3.0) as client:
            return (await client.get(f"http://{POD_IP}:{port}/")).status_code
    except httpx.HTTPError as error:
        return type(error).__name__


async def test_sidecars_talk_mtls_per_mode(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {
        "backend.yaml": [backend_service(port, tcp_port, tcp_target)],
        "endpoints.yaml": [backend_slice(port, tcp_target)],
        "pods.yaml": [POD, CLIENT_POD],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=False, node_id=BACKEND_NODE,
            workload="backend-0", labels={"app": "backend"}, instance_ip=POD_IP,
            app_address=APP_IP, service_account="backend",
        )  # fmt: skip
        client = await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=False,
            node_id="client-0.default", workload="client-0", labels={"app": "client"},
            service_account="client",
        )  # fmt: skip

        async def xfcc() -> str | None:
            response = await client.get("backend")
            if response.status_code != 200:
                return None
            headers: dict[str, str] = json.loads(response.text)["headers"]
            return headers.get("x-forwarded-client-cert", "")

        seen = await eventually(xfcc, within=30, interval=0.2, message="mTLS call")
        assert f"URI={CLIENT_ID}" in seen
        assert await plaintext(port) == 200  # PERMISSIVE, the default

        write_documents(directory / "peer.yaml", peer_yaml("STRICT"))

        async def refused() -> bool:
            return await plaintext(port) != 200

        await eventually(refused, within=20, interval=0.2, message="STRICT refuses plaintext")
        assert f"URI={CLIENT_ID}" in (await xfcc() or "")

        write_documents(directory / "peer.yaml", peer_yaml("DISABLE"))

        async def plain_call() -> bool:
            return await xfcc() == "" and await plaintext(port) == 200

        await eventually(plain_call, within=20, interval=0.2, message="DISABLE is plaintext")
