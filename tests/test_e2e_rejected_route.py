"""A route edit the API would refuse never reaches Envoy, and says why in its status.

Through the file source and a real sidecar: an HTTPRoute splits `web` to v2;
an edit gives it a negative weight (the CRD's `minimum: 0`).  The edit is
rejected naming the file, object and field, the route's status is
`Accepted=False` with that message, the sidecar keeps routing as the last
good version said, another Service's change still arrives, and Envoy
rejected no update.  Fixing the file brings the new routing in.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_mesh import (
    eventually,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_sidecar,
    write_documents,
)

from xds_server.model import Kind
from xds_server.model.status import ACCEPTED
from xds_server.sample_app import start_sample_app

pytestmark = pytest.mark.envoy

PORT = 8080
V1, V2, OTHER = "127.0.61.1", "127.0.61.2", "127.0.61.3"


def route_yaml(backend: str, weight: int) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: web-split, namespace: default}}
        spec:
          parentRefs: [{{group: "", kind: Service, name: web, port: {PORT}}}]
          rules:
            - backendRefs: [{{name: {backend}, port: {PORT}, weight: {weight}}}]
        """
    )


@pytest.fixture
async def apps() -> AsyncIterator[None]:
    started = [
        await start_sample_app(name, "v1", address, PORT)
        for name, address in (("web", V1), ("web-v2", V2), ("other", OTHER))
    ]
    yield
    for app in started:
        await app.close()


async def test_an_invalid_route_edit_is_rejected_by_field_and_the_last_good_routing_stays(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: Any,
    apps: None,
    delta: bool,
) -> None:
    write_documents(
        tmp_path / "services.yaml",
        service_yaml("web"),
        slice_yaml("web", [V1], PORT),
        service_yaml("web-v2"),
        slice_yaml("web-v2", [V2], PORT),
        service_yaml("other"),
        slice_yaml("other", [OTHER], PORT),
    )
    routes = tmp_path / "routes.yaml"
    write_documents(routes, route_yaml("web-v2", 1))
    async with running_control_plane(tmp_path, free_port) as plane:
        sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=delta)
        async with httpx.AsyncClient(timeout=5) as client:

            async def who(host: str) -> str:
                response = await client.get(
                    f"http://127.0.0.1:{sidecar.outbound_port}/",
                    headers={"Host": f"{host}:{PORT}"},
                )
                return str(response.json()["service"]) if response.status_code == 200 else ""

            async def routed_to(expected: str) -> bool:
                return await who("web") == expected

            await eventually(lambda: routed_to("web-v2"), message="the route in force")

            write_documents(routes, route_yaml("web-v2", -1))

            def rejection() -> Any:
                statuses = [s for s in plane.policy_statuses() if s.key.name == "web-split"]
                return statuses[0] if statuses and not statuses[0].accepted else None

            async def rejected() -> Any:
                return rejection()

            status = await eventually(rejected, message="the rejection in the route's status")
            assert status.key.kind is Kind.HTTP_ROUTE
            (parent,) = status.parents
            accepted = parent.condition(ACCEPTED)
            assert accepted is not None and accepted.reason == "Invalid"
            assert "routes.yaml" in accepted.message and "weight" in accepted.message
            errors = [str(e) for e in plane.source.errors]
            assert any("web-split" in e and "weight" in e for e in errors), errors

            # The last good version stays in force, and other changes still arrive.
            for _ in range(10):
                assert await who("web") == "web-v2"
            write_documents(
                tmp_path / "more.yaml",
                service_yaml("late"),
                slice_yaml("late", [OTHER], PORT),
            )
            await eventually(lambda: _answers(who, "late", "other"), message="a later change")
            rejected_updates = await sidecar.envoy.stats_async(filter=r"update_rejected$")
            assert rejected_updates and set(rejected_updates.values()) == {0}, rejected_updates

            write_documents(routes, route_yaml("other", 1))  # fixed: the new routing applies
            await eventually(lambda: routed_to("other"), message="the fixed route")
            fixed = [s for s in plane.policy_statuses() if s.key.name == "web-split"]
            assert fixed and fixed[0].accepted


async def _answers(who: Callable[[str], Any], host: str, expected: str) -> bool:
    return bool(await who(host) == expected)
