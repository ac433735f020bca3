"""File mode: routes' and policies' status conditions in `/api/policies` and `xds-server status`.

A control plane runs on a directory of YAML (Services, HTTPRoutes,
BackendPolicies); nobody writes status in file mode, so the admin API and the
CLI are where the conditions show: accepted objects, a missing parent, a
missing backend, two policies in conflict, a policy whose target is missing,
and objects the source (a field the schema refuses) or translation (a value
Envoy would refuse) rejected, each with the message naming the field.  An
edit that fixes an object turns its conditions around.
"""

# ruff: noqa: E402 - e2e_mesh is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("e2e_mesh")

from e2e_mesh import eventually, running_control_plane, service_yaml, write_documents
from test_cli_admin import table_rows, xds_server

from xds_server.admin.policies import PolicyList, PolicyStatusModel
from xds_server.app import ControlPlane

pytestmark = pytest.mark.timeout(90)


def http_route(name: str, parent: str, backend: str, *, weight: int = 1, port: int = 8080) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: {name}, namespace: default, generation: 4}}
        spec:
          parentRefs:
            - {{group: "", kind: Service, name: {parent}, port: {port}}}
          rules:
            - backendRefs:
                - {{name: {backend}, port: 8080, weight: {weight}}}
        """
    )


def backend_policy(name: str, target: str, *, created: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: policy.xds-server.dev/v1alpha1
        kind: BackendPolicy
        metadata: {{name: {name}, namespace: default, creationTimestamp: "{created}"}}
        spec:
          targetRefs:
            - {{kind: Service, name: {target}}}
          connectTimeout: 2s
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


ROUTES = (
    http_route("to-api", "web", "api"),
    http_route("lost-parent", "gone", "api"),
    http_route("lost-backend", "web", "nowhere"),
    http_route("wrong-port", "web", "api", port=9999),
    http_route("bad-weight", "web", "api", weight=-1),
)
POLICIES = (
    backend_policy("older", "web", created="2026-01-01T00:00:00Z"),
    backend_policy("newer", "web", created="2026-02-01T00:00:00Z"),
    backend_policy("nobody", "ghost", created="2026-01-01T00:00:00Z"),
    backend_policy(
        "envoy-refuses",
        "api",
        created="2026-01-01T00:00:00Z",
        extra="outlierDetection: {interval: 0s}\n",
    ),
)

# key -> (parent index or None) -> (Accepted status/reason, ResolvedRefs status/reason, words)
EXPECTED: dict[str, tuple[tuple[str, str], tuple[str, str] | None, str]] = {
    "HTTPRoute/default/to-api": (("True", "Accepted"), ("True", "ResolvedRefs"), "producer route"),
    "HTTPRoute/default/lost-parent": (
        ("False", "NoMatchingParent"),
        ("True", "ResolvedRefs"),
        "Service default/gone not found",
    ),
    "HTTPRoute/default/lost-backend": (
        ("True", "Accepted"),
        ("False", "BackendNotFound"),
        "spec.rules[0].backendRefs[0]: Service default/nowhere not found",
    ),
    "HTTPRoute/default/wrong-port": (
        ("False", "NoMatchingParent"),
        None,
        "parentRef port 9999: Service default/web has no such port",
    ),
    "HTTPRoute/default/bad-weight": (
        ("False", "Invalid"),
        None,
        "spec.rules[0].backendRefs[0].weight",
    ),
    "BackendPolicy/default/older": (("True", "Accepted"), ("True", "ResolvedRefs"), "governs"),
    "BackendPolicy/default/newer": (
        ("False", "Conflicted"),
        ("True", "ResolvedRefs"),
        "BackendPolicy default/older takes precedence for Service default/web",
    ),
    "BackendPolicy/default/nobody": (
        ("False", "TargetNotFound"),
        ("False", "TargetNotFound"),
        "spec.targetRefs[0]: Service default/ghost not found",
    ),
    "BackendPolicy/default/envoy-refuses": (
        ("False", "Invalid"),
        None,
        "spec.outlierDetection.interval",
    ),
}


def conditions(policy: PolicyStatusModel) -> dict[str, tuple[str, str, str]]:
    """The object's conditions (a route's first parent's, unless rejected as a whole)."""
    found = policy.conditions or (policy.parents[0].conditions if policy.parents else [])
    return {c.type: (c.status, c.reason, c.message) for c in found}


def admin_url(plane: ControlPlane) -> str:
    return f"http://127.0.0.1:{plane.admin_port}"


async def policies(plane: ControlPlane, **params: str) -> dict[str, PolicyStatusModel]:
    async with httpx.AsyncClient(base_url=admin_url(plane), timeout=10) as client:
        reply = await client.get("/api/policies", params=params)
    assert reply.status_code == 200, reply.text
    body: Any = reply.json()
    listed = PolicyList.model_validate(body)
    assert listed.model_dump(mode="json", by_alias=True) == body  # the model is the JSON
    return {policy.key: policy for policy in listed.policies}


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "services.yaml", service_yaml("web"), service_yaml("api"))
    write_documents(directory / "routes.yaml", *ROUTES)
    write_documents(directory / "policies.yaml", *POLICIES)
    return directory


@pytest.fixture
async def plane(manifests: Path, free_port: Callable[[], int]) -> AsyncIterator[ControlPlane]:
    """A control plane on `manifests`, once every route and policy there has a status."""
    async with running_control_plane(manifests, free_port) as plane:
        await eventually(
            lambda: asyncio.sleep(0, len(plane.policy_statuses()) == len(EXPECTED)),
            within=15,
            message="every route and policy has a status",
        )
        yield plane


async def test_the_admin_api_shows_each_route_and_policy_with_its_conditions(
    plane: ControlPlane, manifests: Path
) -> None:
    shown = await policies(plane)

    assert set(shown) == set(EXPECTED)
    for key, (accepted, resolved, words) in EXPECTED.items():
        found = conditions(shown[key])
        assert found["Accepted"][:2] == accepted, (key, found)
        if resolved is not None:
            assert found["ResolvedRefs"][:2] == resolved, (key, found)
        assert any(words in message for _, _, message in found.values()), (key, found)
        assert shown[key].accepted == (accepted[0] == "True")

    # Provenance: the file and document each came from; a route's generation is observed.
    assert str(shown["HTTPRoute/default/to-api"].object.file).endswith("/routes.yaml")
    assert shown["HTTPRoute/default/to-api"].object.document == 0
    assert shown["BackendPolicy/default/newer"].object.document == 1
    to_api = shown["HTTPRoute/default/to-api"].parents[0]
    assert to_api.controller_name == "xds-server.dev/mesh"
    assert (to_api.parent_ref.kind, to_api.parent_ref.name, to_api.parent_ref.port) == (
        "Service",
        "web",
        8080,
    )
    assert {c.observed_generation for c in to_api.conditions} == {4}
    # Rejected by the source: never in the mesh; by translation: the source read it.
    assert (
        shown["HTTPRoute/default/bad-weight"].rejected,
        shown["HTTPRoute/default/bad-weight"].in_mesh,
    ) == (True, False)
    assert shown["BackendPolicy/default/envoy-refuses"].rejected

    only_policies = await policies(plane, kind="backendpolicies")
    assert set(only_policies) == {k for k in EXPECTED if k.startswith("BackendPolicy/")}

    async with httpx.AsyncClient(base_url=admin_url(plane), timeout=10) as client:
        paged = (await client.get("/api/policies", params={"limit": 2, "offset": 8})).json()
        bad_kind = await client.get("/api/policies", params={"kind": "Gateway"})
        index = await client.get("/")
    assert (paged["total"], len(paged["policies"]), paged["next_offset"]) == (9, 1, None)
    assert bad_kind.status_code == 400 and "Gateway" in bad_kind.text
    assert "Routes and policies (9, 6 not accepted)" in index.text
    assert "NoMatchingParent" in index.text

    # Fix two objects: the parent appears, the conflict goes; conditions follow.
    write_documents(
        manifests / "services.yaml",
        service_yaml("web"),
        service_yaml("api"),
        service_yaml("gone"),
    )
    write_documents(manifests / "policies.yaml", POLICIES[0], POLICIES[2], POLICIES[3])

    async def fixed() -> bool:
        now = await policies(plane)
        return (
            now["HTTPRoute/default/lost-parent"].accepted
            and "BackendPolicy/default/newer" not in now
        )

    await eventually(fixed, within=15, message="the fixed route accepted, the policy gone")


async def test_xds_server_status_prints_the_routes_and_policies_table(plane: ControlPlane) -> None:
    url = admin_url(plane)
    both, table, as_json = await asyncio.gather(
        asyncio.to_thread(xds_server, "status", "--admin", url),
        asyncio.to_thread(xds_server, "status", "policies", "--admin", url),
        asyncio.to_thread(xds_server, "status", "policies", "--admin", url, "-o", "json"),
    )

    assert (table.returncode, table.stderr) == (0, "")
    rows = {f"{r['KIND']}/{r['NAMESPACE']}/{r['NAME']}": r for r in table_rows(table.stdout)}
    assert set(rows) == set(EXPECTED)
    for key, (accepted, resolved, _) in EXPECTED.items():
        assert rows[key]["ACCEPTED"] == " ".join(accepted), rows[key]
        if resolved is not None:
            assert rows[key]["RESOLVED REFS"] == " ".join(resolved), rows[key]
    assert rows["HTTPRoute/default/to-api"]["PARENT"] == "Service/web:8080"
    assert rows["BackendPolicy/default/nobody"]["PARENT"] == "-"
    assert "Service default/ghost not found" in rows["BackendPolicy/default/nobody"]["MESSAGE"]
    assert "weight" in rows["HTTPRoute/default/bad-weight"]["MESSAGE"]

    # Plain `status`: no proxy is connected, then the same table after a blank line.
    assert both.returncode == 0, both.stderr
    first, second = both.stdout.split("\n\n", 1)
    assert first.strip() == "no proxies connected"
    assert second == table.stdout

    assert as_json.returncode == 0, as_json.stderr
    shown = [PolicyStatusModel.model_validate(item) for item in json.loads(as_json.stdout)]
    assert {policy.key for policy in shown} == set(EXPECTED)
