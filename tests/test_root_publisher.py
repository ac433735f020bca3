"""The trust bundle published as a ConfigMap per namespace: written when the bundle or
the namespaces change, re-checked at each resync, a failing namespace retried without
holding up the others.  Against kmock through the official client, too."""

from __future__ import annotations

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported
import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.register_assert_rewrite("kube_fixtures")

from kube_fixtures import ApiServerEmulator
from kubernetes import client

from xds_server.model import MeshSnapshot, Workload
from xds_server.security.root_publisher import (
    ROOT_CERT_KEY,
    ROOT_CONFIGMAP,
    KubernetesConfigMaps,
    RootPublisher,
    mesh_namespaces,
    root_publisher,
)
from xds_server.settings import KubernetesSettings, SecuritySettings, Settings

pytest_plugins = ("kube_fixtures",)

CONFIGMAPS = ("", "v1", "configmaps")


class FakeConfigMaps:
    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], dict[str, str]] = {}
        self.writes: list[str] = []
        self.failing: set[str] = set()

    def write(self, namespace: str, name: str, data: dict[str, str]) -> bool:
        if namespace in self.failing:
            raise RuntimeError(f"configmaps is forbidden in {namespace}")
        self.writes.append(namespace)
        if self.stored.get((namespace, name)) == data:
            return False
        self.stored[(namespace, name)] = dict(data)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def publisher(
    api: FakeConfigMaps, bundle: list[bytes], namespaces: set[str], clock: Clock
) -> RootPublisher:
    return RootPublisher(
        lambda: api, lambda: bundle[0], lambda: namespaces, resync_seconds=60.0, clock=clock
    )


async def test_the_bundle_is_written_once_per_namespace_and_again_when_it_changes() -> None:
    api, bundle, namespaces, clock = FakeConfigMaps(), [b"ROOT-A\n"], {"shop", "db"}, Clock()
    roots = publisher(api, bundle, namespaces, clock)
    assert await roots.sync() == ["db", "shop"]
    assert api.stored[("shop", ROOT_CONFIGMAP)] == {ROOT_CERT_KEY: "ROOT-A\n"}
    assert await roots.sync() == [] and api.writes == ["db", "shop"], "nothing new: no call"

    bundle[0] = b"ROOT-A\nROOT-B\n"  # a root rotation's overlap
    namespaces.add("web")  # and a namespace's first Pod
    assert await roots.sync() == ["db", "shop", "web"]
    assert api.stored[("web", ROOT_CONFIGMAP)] == {ROOT_CERT_KEY: "ROOT-A\nROOT-B\n"}


async def test_a_resync_checks_every_configmap_again() -> None:
    api, clock = FakeConfigMaps(), Clock()
    roots = publisher(api, [b"ROOT-A\n"], {"shop"}, clock)
    await roots.sync()
    del api.stored[("shop", ROOT_CONFIGMAP)]  # deleted by hand
    clock.now = 30.0
    assert await roots.sync() == []
    clock.now = 61.0
    assert await roots.sync() == ["shop"]


async def test_a_failing_namespace_is_retried_and_does_not_hold_up_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, clock = FakeConfigMaps(), Clock()
    api.failing.add("locked")
    roots = publisher(api, [b"ROOT-A\n"], {"locked", "shop"}, clock)
    assert await roots.sync() == ["shop"]
    assert await roots.sync() == []
    warnings = [r.getMessage() for r in caplog.records if "cannot publish" in r.getMessage()]
    assert warnings == [
        "cannot publish the trust bundle to locked/xds-server-root-cert (retrying): "
        "RuntimeError: configmaps is forbidden in locked"
    ], "logged once while it keeps failing the same way"
    api.failing.clear()
    assert await roots.sync() == ["locked"]


async def test_the_client_creates_then_replaces_only_when_the_data_differs(
    api_server: ApiServerEmulator, kube_configuration: client.Configuration
) -> None:
    configmaps = KubernetesConfigMaps(client.ApiClient(kube_configuration))

    async def write(data: dict[str, str]) -> bool:  # blocking calls; kmock serves on the loop
        return await asyncio.to_thread(configmaps.write, "shop", ROOT_CONFIGMAP, data)

    assert await write({ROOT_CERT_KEY: "A"}) is True
    stored = api_server.objects_of(CONFIGMAPS)[("shop", ROOT_CONFIGMAP)]
    assert stored["data"] == {ROOT_CERT_KEY: "A"}
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "xds-server"}
    revision = api_server.revision
    assert await write({ROOT_CERT_KEY: "A"}) is False
    assert api_server.revision == revision, "no write when it already holds the bundle"
    assert await write({ROOT_CERT_KEY: "A\nB"}) is True
    stored = api_server.objects_of(CONFIGMAPS)[("shop", ROOT_CONFIGMAP)]
    assert stored["data"] == {ROOT_CERT_KEY: "A\nB"}


def test_only_a_secured_control_plane_in_kubernetes_publishes(tmp_path: Path) -> None:
    def plane(source: str, **security: Any) -> Any:
        settings = Settings(source=source, security=SecuritySettings(**security))
        return SimpleNamespace(settings=settings)

    assert root_publisher(plane("kubernetes")) is not None
    assert root_publisher(plane(f"file:{tmp_path}")) is None, "file mode: bootstrap writes them"
    assert root_publisher(plane("kubernetes", insecure_xds=True)) is None, "no TLS to check"


def test_the_namespaces_are_the_configured_ones_or_those_with_pods() -> None:
    pods = {
        ("shop", "web-0"): Workload(namespace="shop", name="web-0"),
        ("db", "pg-0"): Workload(namespace="db", name="pg-0"),
    }
    mesh = MeshSnapshot(workloads=pods)
    assert mesh_namespaces(Settings(source="kubernetes"), lambda: mesh)() == {"shop", "db"}
    configured = Settings(source="kubernetes", kubernetes=KubernetesSettings(namespaces=("a",)))
    assert mesh_namespaces(configured, lambda: mesh)() == {"a"}
