"""End to end: a BackendPolicy that Envoy's own validation rules reject never reaches Envoy.

A real Envoy client sidecar calls two Services, `backend` (governed by a
RingHash BackendPolicy, a manifest in the watched directory) and `other`.
`minimumRingSize: 9000000` passes the CRD's schema (it only says minimum 1),
but Envoy's `RingHash.minimum_ring_size` is `(validate.rules).uint64 = {lte:
8388608}`: served, it would make Envoy reject the whole CDS update.

Two layers keep it out, and each is shown alone:

1. as shipped, BackendPolicy translation checks the bound itself and names
   the CRD's field (`spec.loadBalancer.ringHash.minimumRingSize`);
2. with that check gone (as if translation had a bug: the test raises its
   bound), the pipeline's Envoy-rule validation (`pipeline.validation`) still
   withholds the cluster, naming Envoy's field path and rule.

Either way the policy is left out with its last good version in force: the
sidecar keeps the ring it had, `cluster_manager.cds.update_rejected` and
`listener_manager.lds.update_rejected` stay 0, `/api/errors` names the
policy, its file and the field, its status says it is not accepted, and
changes to other Services keep reaching the sidecar.  Fixing the policy
clears the error and the new ring arrives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    Sidecar,
    admin_json,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_apps,
    start_sidecar,
    write_documents,
)
from e2e_policies import backend_policy_yaml, policy_condition

from xds_server.app import ControlPlane
from xds_server.translate import backend_policy

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BACKEND, OTHER_V1, OTHER_V2 = "127.0.44.1", "127.0.44.2", "127.0.44.3"
BACKEND_CLUSTER = "outbound|8080||backend.default.svc.cluster.local"
RING_HASH = "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
REJECTED_STATS = ("cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected")
POLICY_FILE = "policy.yaml"


def ring_policy(minimum_ring_size: int) -> str:
    ring_hash = {
        "algorithm": "RingHash",
        "ringHash": {"minimumRingSize": minimum_ring_size},
        "hashPolicies": [{"header": {"name": "x-user"}}],
    }
    return backend_policy_yaml("ring", {"loadBalancer": ring_hash})


@dataclass
class Mesh:
    directory: Path
    plane: ControlPlane
    client: Sidecar
    port: int

    def write_policy(self, minimum_ring_size: int) -> None:
        write_documents(self.directory / POLICY_FILE, ring_policy(minimum_ring_size))

    def write_other(self, *addresses: str) -> None:
        write_documents(
            self.directory / "other-endpoints.yaml", slice_yaml("other", list(addresses), self.port)
        )

    async def translation_errors(self) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = (await admin_json(self.plane, "/api/errors"))["translation"]
        return errors

    async def ring_size_in_envoy(self) -> int | None:
        """The minimum ring size of backend's cluster as the sidecar runs it."""
        entry = await self.client.active_cluster(BACKEND_CLUSTER)
        cluster = {} if entry is None else entry["cluster"]
        for policy in cluster.get("load_balancing_policy", {}).get("policies", []):
            config = policy["typed_extension_config"]["typed_config"]
            if config.get("@type", "").endswith(RING_HASH):
                return int(config.get("minimum_ring_size", 0))
        return None

    async def rejected_updates(self) -> dict[str, int]:
        stats = await self.client.envoy.stats_async(
            filter="^(cluster_manager.cds|listener_manager.lds).update_rejected$"
        )
        return {name: stats.get(name, 0) for name in REJECTED_STATS}

    async def answers(self, host: str, count: int) -> set[str]:
        return {await self.client.who_answers(host) for _ in range(count)}

    async def policy_accepted(self) -> dict[str, Any]:
        condition = await policy_condition(self.plane, "BackendPolicy/default/ring")
        assert condition is not None, "the policy has no Accepted condition"
        return condition


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Mesh]:
    port = free_port()
    files = {
        "services.yaml": [service_yaml("backend"), service_yaml("other")],
        "backend-endpoints.yaml": [slice_yaml("backend", [BACKEND], port)],
        "other-endpoints.yaml": [slice_yaml("other", [OTHER_V1], port)],
        POLICY_FILE: [ring_policy(64)],
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(
            stack,
            port,
            ("backend", "v1", BACKEND),
            ("other", "v1", OTHER_V1),
            ("other", "v2", OTHER_V2),
        )
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        client = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)
        found = Mesh(directory, plane, client, port)
        await eventually(
            found.ring_size_in_envoy, within=20, message="the first ring reaches Envoy"
        )
        yield found


async def assert_withheld(mesh: Mesh, *naming: str, other: set[str]) -> None:
    """The policy is left out naming `naming`; the sidecar keeps its ring and takes no
    rejected update; traffic (and a change to `other`) flows as before."""

    async def error_naming_the_policy() -> dict[str, str] | None:
        for error in await mesh.translation_errors():
            if error["object"] == "BackendPolicy default/ring" and all(
                text in error["error"] for text in naming
            ):
                return error
        return None

    error = await eventually(error_naming_the_policy, within=15, message="/api/errors")
    assert "its last good version stays in force" in error["error"]
    condition = await mesh.policy_accepted()
    assert condition["status"] == "False", condition

    mesh.write_other(*sorted(OTHER_V1 if a == "other v1" else OTHER_V2 for a in other))

    async def other_moved() -> bool:
        return await mesh.answers("other", 6) == other

    await eventually(other_moved, within=15, message="the change to other reaches the sidecar")
    assert await mesh.answers("backend", 3) == {"backend v1"}
    assert await mesh.ring_size_in_envoy() == 64
    assert await mesh.rejected_updates() == dict.fromkeys(REJECTED_STATS, 0)


async def test_a_policy_breaking_an_envoy_rule_never_reaches_envoy(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await mesh.answers("backend", 2) == {"backend v1"}
    assert await mesh.rejected_updates() == dict.fromkeys(REJECTED_STATS, 0)

    # 1. As shipped: translation's own check names the CRD's field.
    mesh.write_policy(9_000_000)
    await assert_withheld(
        mesh,
        "spec.loadBalancer.ringHash.minimumRingSize",
        other={"other v1", "other v2"},
    )

    # 2. Translation's check gone: Envoy's own rule, checked before serving, still holds.
    monkeypatch.setattr(backend_policy, "MAX_RING_SIZE", 2**40)
    mesh.write_policy(9_000_001)
    await assert_withheld(
        mesh,
        "EnvoyValidationError",
        f"typed_config<{RING_HASH}>.minimum_ring_size",
        "(validate.rules).uint64 { lte: 8388608 gte: 1 }",
        f"{POLICY_FILE}, document 0)",
        other={"other v2"},
    )

    # Fixed: the error clears and the new ring reaches Envoy.
    mesh.write_policy(128)

    async def new_ring() -> bool:
        return await mesh.ring_size_in_envoy() == 128

    await eventually(new_ring, within=15, message="the fixed policy reaches Envoy")
    assert await mesh.translation_errors() == []
    assert (await mesh.policy_accepted())["status"] == "True"
    assert await mesh.rejected_updates() == dict.fromkeys(REJECTED_STATS, 0)
