"""End to end: AuthorizationPolicies by principal and namespace between real sidecars.

`backend` is one meshed pod in `default` (PERMISSIVE, the default: its callers'
sidecars use mutual TLS by themselves).  Its callers are real sidecars of their
own identities, in other namespaces: `shop/frontend`, `shop/job-nightly`,
`shop/other` and `ops/admin`.  So the principal a rule sees is the URI SAN of
the certificate the control plane issued to the calling sidecar, and its
namespace is the one in that SPIFFE ID.

HTTP: with no policy every caller is answered; then an exact principal, a
prefix wildcard and a namespace allow, anything else gets 403, and DENY rules
(by a principal suffix wildcard, by namespace) beat those ALLOWs.  Each denial
is counted per policy in the backend's RBAC stats and logged naming the policy
and the caller.  TCP: a connection a DENY rule refuses is closed without a byte;
the backend's log names the policy that refused it and the caller, and the
network RBAC filter counts it, while an allowed caller's bytes go through.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EnvoyFactory
from e2e_mesh import eventually, manifest_directory, start_apps, write_documents
from e2e_security import MeshSidecar, backend_manifests, security_plane, start_mesh_sidecar

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]

POD_IP, APP_IP, BACKEND_OUTBOUND = "127.0.44.1", "127.0.44.2", "127.0.44.3"
BACKEND_HOST = "backend.default.svc.cluster.local"
CALLERS = {
    "frontend": ("shop", "frontend", "127.0.44.11"),
    "job": ("shop", "job-nightly", "127.0.44.12"),
    "other": ("shop", "other", "127.0.44.13"),
    "admin": ("ops", "admin", "127.0.44.14"),
}
"""Caller sidecars: (namespace, service account, the address of their outbound listeners)."""


def policy_yaml(name: str, spec: dict[str, Any]) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: policy.xds-server.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {{name: {name}, namespace: default}}
        """
    ) + yaml.safe_dump({"spec": {"selector": {"matchLabels": {"app": "backend"}}, **spec}})


ALLOW_CALLERS = {
    "rules": [
        {
            "from": [
                {
                    "source": {
                        "principals": [
                            "cluster.local/ns/shop/sa/frontend",  # exact (Istio's form)
                            "spiffe://cluster.local/ns/shop/sa/job-*",  # prefix wildcard
                        ]
                    }
                }
            ]
        },
        {"from": [{"source": {"namespaces": ["ops"]}}]},
    ]
}
DENY_ADMIN_SECRETS = {
    "action": "DENY",
    "rules": [
        {
            "from": [{"source": {"principals": ["*/sa/admin"]}}],  # suffix wildcard
            "to": [{"operation": {"paths": ["/secret*"]}}],
        }
    ],
}
DENY_SHOP_ADMIN_PATHS = {
    "action": "DENY",
    "rules": [
        {
            "from": [{"source": {"namespaces": ["shop"]}}],
            "to": [{"operation": {"paths": ["/admin*"]}}],
        }
    ],
}
HTTP_CASES = [
    ("frontend", "/", 200),  # the exact principal
    ("frontend", "/secret", 200),  # the DENY rule names */sa/admin only
    ("frontend", "/admin", 403),  # DENY by namespace beats ALLOW by principal
    ("job", "/", 200),  # the prefix wildcard
    ("job", "/admin", 403),
    ("other", "/", 403),  # namespace shop alone is not allowed
    ("other", "/secret", 403),
    ("admin", "/", 200),  # the ops namespace
    ("admin", "/admin", 200),  # the shop DENY does not apply to ops
    ("admin", "/secret/key", 403),  # DENY by principal suffix beats ALLOW by namespace
]


@dataclass
class Mesh:
    directory: Path
    backend: MeshSidecar
    callers: dict[str, MeshSidecar]
    port: int
    tcp_port: int
    tcp_target: int

    def write_policies(self, **specs: dict[str, Any]) -> None:
        write_documents(
            self.directory / "authorization.yaml",
            *(policy_yaml(name.replace("_", "-"), spec) for name, spec in specs.items()),
        )

    async def statuses(self) -> list[int | str]:
        return [
            await self.callers[caller].status(BACKEND_HOST, path) for caller, path, _ in HTTP_CASES
        ]

    async def tcp_answer(self, caller: str) -> bytes:
        """What an HTTP request over the TCP port through `caller`'s sidecar gets back
        (b"": the connection was closed without a byte)."""
        address = self.callers[caller].address
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, self.tcp_port), timeout=5
        )
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return await asyncio.wait_for(reader.read(), timeout=5)
        except ConnectionError:
            return b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def started_mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory, *callers: str
) -> AsyncIterator[Mesh]:
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {"backend.yaml": backend_manifests(POD_IP, port, tcp_port, tcp_target)}
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        await start_apps(stack, tcp_target, ("backend", "tcp", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(
            security_plane(directory, free_port, tmp_path / "ca", svid_ttl_seconds=3600.0)
        )
        backend = await start_mesh_sidecar(
            envoy_factory, plane, node_id="backend-0.default", service_account="backend",
            address=BACKEND_OUTBOUND, outbound_port=free_port(), workload="backend-0",
            labels={"app": "backend"}, instance_ip=POD_IP, app_address=APP_IP,
        )  # fmt: skip
        sidecars = {}
        for caller in callers:
            namespace, account, address = CALLERS[caller]
            sidecars[caller] = await start_mesh_sidecar(
                envoy_factory, plane, node_id=f"{caller}-0.{namespace}",
                service_account=account, address=address, outbound_port=free_port(),
            )  # fmt: skip
        mesh = Mesh(directory, backend, sidecars, port, tcp_port, tcp_target)

        async def all_answered() -> bool:
            statuses = [await sidecar.status(BACKEND_HOST) for sidecar in sidecars.values()]
            return statuses == [200] * len(sidecars)

        await eventually(all_answered, within=30, interval=0.2, message="every caller answered")
        yield mesh


async def test_principal_and_namespace_rules_between_sidecars_with_deny_before_allow(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with started_mesh(tmp_path, free_port, envoy_factory, *CALLERS) as mesh:
        # No policy: every caller is answered, on every path.
        assert await mesh.statuses() == [200] * len(HTTP_CASES)

        mesh.write_policies(
            allow_callers=ALLOW_CALLERS,
            deny_admin_secrets=DENY_ADMIN_SECRETS,
            deny_shop_admin_paths=DENY_SHOP_ADMIN_PATHS,
        )
        expected = [status for _, _, status in HTTP_CASES]

        async def enforced() -> list[int | str] | None:
            statuses = await mesh.statuses()
            return statuses if statuses == expected else None

        await eventually(enforced, within=20, interval=0.3, message="policies enforced")

        prefix = f"http.inbound_{mesh.port}.rbac"
        counter = mesh.backend.counter
        assert await counter(f"{prefix}.deny.policy.default/deny-admin-secrets[rule-0].denied") >= 1
        assert (
            await counter(f"{prefix}.deny.policy.default/deny-shop-admin-paths[rule-0].denied") >= 2
        )
        assert await counter(f"{prefix}.allow.denied") >= 2  # `other`: no ALLOW rule matches
        lines = [
            'rbac-denied "GET /secret/key" 403 details=rbac_access_denied_matched_policy'
            "[default/deny-admin-secrets[rule-0]] peer=spiffe://cluster.local/ns/ops/sa/admin",
            'rbac-denied "GET /admin" 403 details=rbac_access_denied_matched_policy'
            "[default/deny-shop-admin-paths[rule-0]] "
            "peer=spiffe://cluster.local/ns/shop/sa/job-nightly",
            'rbac-denied "GET /" 403 details=rbac_access_denied_matched_policy[none] '
            "peer=spiffe://cluster.local/ns/shop/sa/other allow=default/allow-callers",
        ]

        async def logged() -> bool:
            logs = mesh.backend.envoy.logs()
            return all(line in logs for line in lines)

        # Envoy flushes access logs on a timer: the lines arrive shortly.
        await eventually(logged, within=15, interval=0.3, message=f"denials logged: {lines}")


async def test_denied_tcp_connections_are_closed_counted_and_logged_with_the_policy(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    callers = ("frontend", "other", "admin")
    async with started_mesh(tmp_path, free_port, envoy_factory, *callers) as mesh:
        for caller in callers:  # no policy: every connection is served
            assert (await mesh.tcp_answer(caller)).startswith(b"HTTP/1.1 200"), caller
        deny_frontend_tcp = {
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                    "to": [{"operation": {"ports": [str(mesh.tcp_target)]}}],
                }
            ],
        }
        mesh.write_policies(allow_callers=ALLOW_CALLERS, deny_frontend_tcp=deny_frontend_tcp)

        async def answers() -> list[bool]:
            return [(await mesh.tcp_answer(c)).startswith(b"HTTP/1.1 200") for c in callers]

        async def enforced() -> bool:
            # frontend: DENY beats its ALLOW; other: no ALLOW rule; admin: namespace ops.
            return await answers() == [False, False, True]

        await eventually(enforced, within=20, interval=0.3, message="TCP rules enforced")
        assert [await mesh.tcp_answer(caller) for caller in callers[:2]] == [b"", b""]
        chain = f"inbound_{mesh.tcp_target}"
        assert await mesh.backend.counter(f"{chain}.deny.rbac.denied") >= 2  # frontend
        assert await mesh.backend.counter(f"{chain}.allow.rbac.denied") >= 2  # other
        assert await mesh.backend.counter(f"{chain}.allow.rbac.allowed") >= 1  # admin
        lines = [
            "inbound rbac-denied tcp details=rbac_access_denied_matched_policy"
            "[default/deny-frontend-tcp[rule-0]] peer=spiffe://cluster.local/ns/shop/sa/frontend "
            "allow=default/allow-callers",
            "inbound rbac-denied tcp details=rbac_access_denied_matched_policy[none] "
            "peer=spiffe://cluster.local/ns/shop/sa/other allow=default/allow-callers",
        ]

        async def logged() -> bool:
            logs = mesh.backend.envoy.logs()
            return all(line in logs for line in lines)

        await eventually(logged, within=15, interval=0.3, message=f"denials logged: {lines}")
        # Only refused connections get such a line: the allowed caller's has none.
        assert "ns/ops/sa/admin allow=" not in mesh.backend.envoy.logs()
