"""Routes and policies from Kubernetes: listed and watched like every kind, CRDs optional.

The emulated API server (`kube_fixtures`) serves HTTPRoute, GRPCRoute and
BackendPolicy once a test installs their CRDs; objects are written through the
official client's `CustomObjectsApi`, as `kubectl` would write them, and the
source reads them over real watch streams.  A cluster without a CRD answers
its list 404: the other kinds sync and are watched all the same, the missing
kind is logged once per watch and picked up when its CRD appears.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.register_assert_rewrite("kube_fixtures")

from kube_fixtures import (
    BACKEND_POLICIES,
    FAST,
    GRPC_ROUTES,
    HTTP_ROUTES,
    SERVICES,
    ApiServerEmulator,
    service,
)
from kubernetes import client

from xds_server.model import ChangeSet, Kind, ObjectKey
from xds_server.model.changes import MeshObject
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import GRPCRoute, HTTPRoute
from xds_server.sources.kubernetes import KubernetesSource

pytest_plugins = ("kube_fixtures",)

pytestmark = pytest.mark.timeout(60)

WAIT_S = 10.0
CRDS = (HTTP_ROUTES, GRPC_ROUTES, BACKEND_POLICIES)


def http_route(name: str, weight: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default", "generation": 1,
                     "creationTimestamp": "2024-05-01T12:00:00Z"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 8080, "weight": weight}]}],
        },
    }  # fmt: skip


def grpc_route(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
            "rules": [{"matches": [{"method": {"service": "echo.Echo"}}],
                       "backendRefs": [{"name": "web", "port": 8080}]}],
        },
    }  # fmt: skip


def backend_policy(name: str, connections: int) -> dict[str, Any]:
    return {
        "apiVersion": "policy.xds-server.dev/v1alpha1",
        "kind": "BackendPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targetRefs": [{"kind": "Service", "name": "web"}],
            "connectionPool": {"maxConnections": connections},
        },
    }


@dataclass
class Recorder:
    changesets: list[ChangeSet] = field(default_factory=list)
    mesh: dict[ObjectKey, MeshObject] = field(default_factory=dict)

    def __call__(self, changes: ChangeSet) -> None:
        self.changesets.append(changes)
        for key in changes.deletes:
            self.mesh.pop(key, None)
        self.mesh.update(changes.upserts)


async def eventually(check: Callable[[], object], within: float = WAIT_S) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polled: the source emits from its threads
            await asyncio.sleep(0.02)


class Cluster:
    """Writes through the official client, as kubectl does (over HTTP to the emulator)."""

    def __init__(self, configuration: client.Configuration) -> None:
        self.api = client.CustomObjectsApi(client.ApiClient(configuration))

    async def create(self, resource: tuple[str, str, str], body: dict[str, Any]) -> None:
        group, version, plural = resource
        await asyncio.to_thread(
            self.api.create_namespaced_custom_object, group, version, "default", plural, body
        )

    async def replace(self, resource: tuple[str, str, str], body: dict[str, Any]) -> None:
        group, version, plural = resource
        await asyncio.to_thread(
            self.api.replace_namespaced_custom_object,
            group, version, "default", plural, body["metadata"]["name"], body,
        )  # fmt: skip

    async def delete(self, resource: tuple[str, str, str], name: str) -> None:
        group, version, plural = resource
        await asyncio.to_thread(
            self.api.delete_namespaced_custom_object, group, version, "default", plural, name
        )


@pytest.fixture
def cluster(kube_configuration: client.Configuration) -> Cluster:
    return Cluster(kube_configuration)


@pytest.fixture
async def start_source(
    kube_configuration: client.Configuration,
) -> AsyncIterator[Callable[[], Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def start() -> tuple[KubernetesSource, Recorder]:
        source = KubernetesSource(FAST, configuration=kube_configuration, rng=random.Random(3))
        recorder, ready = Recorder(), asyncio.Event()
        tasks.append(asyncio.create_task(source.run(recorder, ready)))
        await asyncio.wait_for(ready.wait(), WAIT_S)
        return source, recorder

    yield start
    for task in tasks:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def route_key(name: str) -> ObjectKey:
    return ObjectKey(Kind.HTTP_ROUTE, "default", name)


async def test_routes_and_policies_are_listed_then_watched(
    api_server: ApiServerEmulator, cluster: Cluster, start_source: Callable[[], Any]
) -> None:
    for resource in CRDS:
        api_server.install_crd(resource)
    api_server.create(service("web"))
    await cluster.create(HTTP_ROUTES, http_route("split"))
    await cluster.create(GRPC_ROUTES, grpc_route("echo"))
    await cluster.create(BACKEND_POLICIES, backend_policy("limits", 3))

    source, recorder = await start_source()
    assert len(recorder.changesets) == 1, "the first emit is the whole mesh"
    split = recorder.mesh[route_key("split")]
    assert isinstance(split, HTTPRoute)
    assert split.creation_timestamp == "2024-05-01T12:00:00Z" and split.generation == 1
    assert split.origin is not None and split.origin.uid == "uid-default-split"
    assert isinstance(recorder.mesh[ObjectKey(Kind.GRPC_ROUTE, "default", "echo")], GRPCRoute)
    limits = recorder.mesh[ObjectKey(Kind.BACKEND_POLICY, "default", "limits")]
    assert isinstance(limits, BackendPolicy)
    assert limits.spec().connection_pool.max_connections.value == 3
    assert source.errors == []

    # An edit arrives over the watch.
    await cluster.replace(HTTP_ROUTES, http_route("split", weight=7))
    await eventually(
        lambda: recorder.mesh[route_key("split")].rules[0].backend_refs[0].weight == 7  # type: ignore[union-attr]
    )
    await cluster.replace(BACKEND_POLICIES, backend_policy("limits", 9))
    policy_key = ObjectKey(Kind.BACKEND_POLICY, "default", "limits")
    await eventually(
        lambda: recorder.mesh[policy_key].spec().connection_pool.max_connections.value == 9  # type: ignore[union-attr]
    )

    # An invalid version keeps the last good one and is named.
    await cluster.replace(HTTP_ROUTES, http_route("split", weight=-1))
    await eventually(lambda: source.errors)
    (error,) = source.errors
    assert (error.object_ref, error.field) == (
        "HTTPRoute default/split",
        "spec.rules[0].backendRefs[0].weight",
    )
    assert recorder.mesh[route_key("split")].rules[0].backend_refs[0].weight == 7  # type: ignore[union-attr]

    # A delete arrives.
    await cluster.delete(GRPC_ROUTES, "echo")
    await eventually(lambda: ObjectKey(Kind.GRPC_ROUTE, "default", "echo") not in recorder.mesh)
    assert api_server.watch_requests(HTTP_ROUTES), "routes are watched, not polled"


async def test_a_missing_crd_does_not_stop_services_being_watched(
    api_server: ApiServerEmulator,
    cluster: Cluster,
    start_source: Callable[[], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="xds_server.sources.k8s_watch")
    api_server.install_crd(HTTP_ROUTES)  # the Gateway API's, but no BackendPolicy CRD
    api_server.install_crd(GRPC_ROUTES)
    api_server.create(service("web"))
    await cluster.create(HTTP_ROUTES, http_route("split"))

    source, recorder = await start_source()
    assert set(recorder.mesh) == {ObjectKey(Kind.SERVICE, "default", "web"), route_key("split")}
    assert source.errors == []

    api_server.create(service("api"))
    await eventually(lambda: ObjectKey(Kind.SERVICE, "default", "api") in recorder.mesh)
    await eventually(lambda: len(api_server.list_requests(BACKEND_POLICIES)) >= 3)
    warnings = [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and "backendpolicies" in r.getMessage()
    ]  # fmt: skip
    assert len(warnings) == 1, "logged once, however often it is retried"
    assert "is its CRD installed?" in warnings[0]

    # The CRD is installed: the next list (with backoff) finds its objects.
    api_server.install_crd(BACKEND_POLICIES)
    await cluster.create(BACKEND_POLICIES, backend_policy("limits", 2))
    await eventually(lambda: ObjectKey(Kind.BACKEND_POLICY, "default", "limits") in recorder.mesh)
    assert api_server.watch_requests(SERVICES)
    assert source.errors == []
