"""End to end: AuthorizationPolicies enforced by a real Envoy sidecar on real requests.

`backend` is one pod: its sidecar (no capture) binds the pod IP with an HTTP
port and a TCP port, in front of sample apps.  Requests go straight to the
sidecar's inbound listeners (what a caller's sidecar would do, minus mutual
TLS), so these cover the rules that need no peer identity: path, method,
header and destination port; DENY before ALLOW; no policy allows; an ALLOW
rule on HTTP attributes matches nothing on TCP (fail closed); a plaintext
caller matches no principal or namespace rule and is what `notPrincipals:
["*"]` denies; AUDIT logs without denying.  A denied HTTP
request gets 403, a denied TCP connection is closed without a byte; each
denial is counted in the sidecar's RBAC stats and logged with the policy that
denied it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import textwrap
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import EnvoyFactory
from e2e_mesh import (
    eventually,
    manifest_directory,
    running_control_plane,
    start_apps,
    start_sidecar,
    write_documents,
)
from e2e_policies import explain, policy_condition, stamped_sources
from test_e2e_fault_ratelimit import APP_IP, BACKEND_NODE, POD_IP, backend_service, backend_slice

from xds_server.app import ControlPlane
from xds_server.envoy_process import EnvoyProcess

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]


def policy_yaml(name: str, spec: dict[str, Any]) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: policy.xds-server.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {{name: {name}, namespace: default}}
        """
    ) + yaml.safe_dump({"spec": spec})


DENY_SECRET = {
    "selector": {"matchLabels": {"app": "backend"}},
    "action": "DENY",
    "rules": [{"to": [{"operation": {"paths": ["/open/secret*"]}}]}],
}
ALLOW_SOME = {
    "action": "ALLOW",
    "rules": [
        {"to": [{"operation": {"paths": ["/open/*"], "methods": ["GET"]}}]},
        {
            "to": [{"operation": {"paths": ["/by-header"]}}],
            "when": [{"key": "request.headers[x-user]", "values": ["alice", "ops-*"]}],
        },
    ],
}


@dataclass
class Pod:
    directory: Path
    plane: ControlPlane
    target: EnvoyProcess
    port: int
    tcp_target: int

    async def request(self, method: str, path: str, **headers: str) -> int:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.request(
                method, f"http://{POD_IP}:{self.port}{path}", headers=headers
            )
            return response.status_code

    async def tcp_answer(self) -> bytes:
        """What an HTTP request over the TCP port gets back (b"": the connection was closed)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(POD_IP, self.tcp_target), timeout=5
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

    def write_policies(self, **specs: dict[str, Any]) -> None:
        write_documents(
            self.directory / "authorization.yaml",
            *(policy_yaml(name.replace("_", "-"), spec) for name, spec in specs.items()),
        )

    async def counter(self, name: str) -> int:
        return (await self.target.stats_async(filter=f"^{re.escape(name)}$")).get(name, 0)


@contextlib.asynccontextmanager
async def started_pod(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Pod]:
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {
        "backend.yaml": [backend_service(port, tcp_port, tcp_target)],
        "endpoints.yaml": [backend_slice(port, tcp_target)],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        await start_apps(stack, tcp_target, ("backend", "tcp", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        target = await start_sidecar(
            envoy_factory,
            plane.xds_port,
            free_port(),
            delta=False,
            node_id=BACKEND_NODE,
            workload="backend-0",
            labels={"app": "backend"},
            instance_ip=POD_IP,
            app_address=APP_IP,
        )
        pod = Pod(directory, plane, target.envoy, port, tcp_target)
        await eventually(
            lambda: _answers(pod), within=20, interval=0.2, message="backend's sidecar"
        )
        yield pod


async def _answers(pod: Pod) -> bool:
    try:
        return await pod.request("GET", "/") == 200
    except httpx.TransportError:
        return False


async def statuses(pod: Pod, cases: list[tuple[str, str, dict[str, str]]]) -> list[int]:
    return [await pod.request(method, path, **headers) for method, path, headers in cases]


CASES: list[tuple[tuple[str, str, dict[str, str]], int]] = [
    (("GET", "/open/page", {}), 200),  # ALLOW rule 0
    (("POST", "/open/page", {}), 403),  # wrong method: no ALLOW rule matches
    (("GET", "/elsewhere", {}), 403),  # wrong path
    (("GET", "/open/secret/key", {}), 403),  # DENY beats ALLOW
    (("GET", "/by-header", {"x-user": "alice"}), 200),  # ALLOW rule 1
    (("GET", "/by-header", {"x-user": "ops-bob"}), 200),  # prefix wildcard
    (("GET", "/by-header", {"x-user": "mallory"}), 403),
    (("GET", "/by-header", {}), 403),
]


async def test_path_method_and_header_rules_with_deny_before_allow(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with started_pod(tmp_path, free_port, envoy_factory) as pod:
        # No policy: everything is allowed, HTTP and TCP.
        assert await statuses(pod, [case for case, _ in CASES]) == [200] * len(CASES)
        assert (await pod.tcp_answer()).startswith(b"HTTP/1.1 200")

        pod.write_policies(deny_secret=DENY_SECRET, allow_some=ALLOW_SOME)
        expected = [status for _, status in CASES]

        async def enforced() -> bool:
            return await statuses(pod, [case for case, _ in CASES]) == expected

        await eventually(enforced, within=20, interval=0.3, message="policies enforced")

        prefix = f"http.inbound_{pod.port}.rbac"
        assert await pod.counter(f"{prefix}.deny.denied") >= 1
        assert await pod.counter(f"{prefix}.deny.policy.default/deny-secret[rule-0].denied") >= 1
        assert await pod.counter(f"{prefix}.allow.denied") >= 5
        assert await pod.counter(f"{prefix}.allow.allowed") >= 3
        # Envoy flushes access logs on a timer: the denial's line arrives shortly.
        denied_line = (
            'rbac-denied "GET /open/secret/key" 403 '
            "details=rbac_access_denied_matched_policy[default/deny-secret[rule-0]]"
        )

        async def logged() -> bool:
            return denied_line in pod.target.logs()

        await eventually(logged, within=15, interval=0.3, message="the denial logged")
        # No ALLOW rule matched: Envoy names no policy, the line names the ALLOW ones.
        assert (
            'rbac-denied "POST /open/page" 403 details=rbac_access_denied_matched_policy[none] '
            "peer=- allow=default/allow-some"
        ) in pod.target.logs()

        # TCP: the DENY rule names a path, which a connection cannot show: the rule is kept
        # without it (Istio's fail-closed reading), so it denies every connection.
        assert await pod.tcp_answer() == b""
        assert await pod.counter(f"inbound_{pod.tcp_target}.deny.rbac.denied") >= 1

        # Removing the ALLOW policy: the DENY one alone lets the rest through.
        pod.write_policies(deny_secret=DENY_SECRET)

        async def only_denied() -> bool:
            return await statuses(
                pod, [("POST", "/anything", {}), ("GET", "/open/secret", {})]
            ) == [200, 403]

        await eventually(only_denied, within=20, interval=0.3, message="ALLOW removed")
        assert await pod.tcp_answer() == b""

        # An ALLOW policy whose only rule needs HTTP attributes: on TCP the rule matches
        # nothing, so every connection is refused, by the ALLOW filter.
        pod.write_policies(allow_some=ALLOW_SOME)

        async def allow_only() -> bool:
            return await statuses(pod, [("GET", "/open/secret", {})]) == [200]

        await eventually(allow_only, within=20, interval=0.3, message="DENY removed")
        assert await pod.tcp_answer() == b""
        assert await pod.counter(f"inbound_{pod.tcp_target}.allow.rbac.denied") >= 1


async def test_audit_policies_log_what_they_match_and_deny_nothing(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with started_pod(tmp_path, free_port, envoy_factory) as pod:
        audit = {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/audited"]}}]}]}
        pod.write_policies(audit_some=audit)
        counter = f"http.inbound_{pod.port}.rbac.audit.policy.default/audit-some[rule-0].allowed"

        async def audited() -> bool:
            return await pod.request("GET", "/audited") == 200 and await pod.counter(counter) > 0

        await eventually(audited, within=20, interval=0.3, message="the AUDIT filter")
        matched = await pod.counter(counter)
        assert await pod.request("GET", "/elsewhere") == 200
        assert await pod.counter(counter) == matched  # the rule did not match

        async def logged() -> bool:
            return 'rbac-audit "GET /audited" 200' in pod.target.logs()

        await eventually(logged, within=15, interval=0.3, message="the audit log line")
        assert 'rbac-audit "GET /elsewhere"' not in pod.target.logs()


async def test_destination_port_rules_and_a_namespace_wide_policy(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with started_pod(tmp_path, free_port, envoy_factory) as pod:
        deny_tcp = {
            "action": "DENY",
            "rules": [{"to": [{"operation": {"ports": [str(pod.tcp_target)]}}]}],
        }
        pod.write_policies(deny_tcp_port=deny_tcp)

        async def closed() -> bool:
            return await pod.tcp_answer() == b""

        await eventually(closed, within=20, interval=0.3, message="TCP port denied")
        assert await pod.request("GET", "/") == 200  # the HTTP port is another port
        # explain and Envoy's own config name the policy behind the governed listeners.
        listener = f"inbound_{pod.tcp_target}"
        [explained] = await explain(pod.plane, BACKEND_NODE, "LDS", listener)
        named = [(s.kind, s.namespace, s.name, s.file) for s in explained.sources]
        policy_file = str(pod.directory / "authorization.yaml")
        assert ("AuthorizationPolicy", "default", "deny-tcp-port", policy_file) in named
        dump = await pod.target.config_dump_async(resource="dynamic_listeners")
        [running] = [c for c in dump["configs"] if c["name"] == listener]
        sources = stamped_sources(running["active_state"]["listener"])
        assert "AuthorizationPolicy/default/deny-tcp-port" in sources

        allow_tcp_only = {"rules": [{"to": [{"operation": {"ports": [str(pod.tcp_target)]}}]}]}
        pod.write_policies(allow_tcp_only=allow_tcp_only)

        async def swapped() -> bool:
            opened = (await pod.tcp_answer()).startswith(b"HTTP/1.1 200")
            return opened and await pod.request("GET", "/") == 403

        await eventually(swapped, within=20, interval=0.3, message="only the TCP port allowed")


async def test_an_invalid_policy_is_rejected_naming_its_field_and_the_others_still_apply(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with started_pod(tmp_path, free_port, envoy_factory) as pod:
        bad_path = {"rules": [{"to": [{"operation": {"paths": ["admin"]}}]}]}
        pod.write_policies(deny_secret=DENY_SECRET, bad_path=bad_path)

        async def denied() -> bool:
            return await pod.request("GET", "/open/secret") == 403

        await eventually(denied, within=20, interval=0.3, message="the valid policy applied")
        # The invalid ALLOW policy would deny everything else: it is not applied.
        assert await pod.request("GET", "/elsewhere") == 200

        async def rejected() -> dict[str, Any] | None:
            return await policy_condition(pod.plane, "AuthorizationPolicy/default/bad-path")

        condition = await eventually(rejected, within=10, interval=0.2, message="status")
        assert condition["status"] == "False", condition
        assert "spec.rules[0].to[0].operation.paths[0]" in condition["message"], condition
        accepted = await policy_condition(pod.plane, "AuthorizationPolicy/default/deny-secret")
        assert accepted is not None and accepted["status"] == "True", accepted


async def test_a_plaintext_caller_has_no_principal_and_no_namespace(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with started_pod(tmp_path, free_port, envoy_factory) as pod:
        only_client = {
            "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}]},
                {"from": [{"source": {"namespaces": ["default"]}}]},
            ]
        }
        pod.write_policies(only_client=only_client)

        async def refused() -> bool:
            return await pod.request("GET", "/") == 403 and await pod.tcp_answer() == b""

        await eventually(refused, within=20, interval=0.3, message="principal rules enforced")

        # Istio's "deny unauthenticated": notPrincipals ["*"] matches a caller without one.
        unauthenticated = {
            "action": "DENY",
            "rules": [{"from": [{"source": {"notPrincipals": ["*"]}}]}],
        }
        pod.write_policies(deny_unauthenticated=unauthenticated)

        async def still_refused() -> bool:
            denied = f"http.inbound_{pod.port}.rbac.deny.denied"
            return await pod.request("GET", "/") == 403 and await pod.counter(denied) > 0

        await eventually(still_refused, within=20, interval=0.3, message="DENY unauthenticated")
