"""AuthorizationPolicies from Kubernetes: listed and watched once their CRD is installed.

The emulated API server (`kube_fixtures`) serves the CRD's objects, written
through the official client as `kubectl` would; an invalid edit keeps the
last good version and is named with its field; a cluster without the CRD
still syncs everything else.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.register_assert_rewrite("kube_fixtures")

from kube_fixtures import SERVICES, ApiServerEmulator, service
from test_kubernetes_policies import Cluster, cluster, eventually, start_source

from xds_server.model import Kind, ObjectKey
from xds_server.model.authorization import spec_of
from xds_server.model.security import AuthorizationPolicy

pytest_plugins = ("kube_fixtures",)
pytestmark = pytest.mark.timeout(60)

__all__ = ["cluster", "start_source"]  # fixtures, used by name

AUTHORIZATION_POLICIES = ("policy.xds-server.dev", "v1alpha1", "authorizationpolicies")
KEY = ObjectKey(Kind.AUTHORIZATION_POLICY, "default", "web-readers")


def authorization_policy(paths: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "policy.xds-server.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-readers", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": paths}}]}],
        },
    }


def paths_of(policy: object) -> list[str]:
    assert isinstance(policy, AuthorizationPolicy)
    return list(spec_of(policy).rules[0].to[0].operation.paths)


async def test_authorization_policies_are_listed_watched_and_checked(
    api_server: ApiServerEmulator, cluster: Cluster, start_source: Callable[[], Any]
) -> None:
    api_server.install_crd(AUTHORIZATION_POLICIES)
    api_server.create(service("web"))
    await cluster.create(AUTHORIZATION_POLICIES, authorization_policy(["/admin*"]))

    source, recorder = await start_source()
    listed = recorder.mesh[KEY]
    assert paths_of(listed) == ["/admin*"]
    assert isinstance(listed, AuthorizationPolicy) and listed.selector == (("app", "web"),)
    assert listed.origin is not None and listed.origin.uid == "uid-default-web-readers"

    await cluster.replace(AUTHORIZATION_POLICIES, authorization_policy(["/private"]))
    await eventually(lambda: paths_of(recorder.mesh[KEY]) == ["/private"])

    await cluster.replace(AUTHORIZATION_POLICIES, authorization_policy(["private"]))
    await eventually(lambda: source.errors)
    (error,) = source.errors
    assert (error.object_ref, error.field) == (
        "AuthorizationPolicy default/web-readers",
        "spec.rules[0].to[0].operation.paths[0]",
    )
    assert paths_of(recorder.mesh[KEY]) == ["/private"]

    await cluster.delete(AUTHORIZATION_POLICIES, "web-readers")
    await eventually(lambda: KEY not in recorder.mesh)


async def test_without_the_crd_everything_else_syncs(
    api_server: ApiServerEmulator, start_source: Callable[[], Any]
) -> None:
    api_server.create(service("web"))
    _, recorder = await start_source()
    assert ObjectKey(Kind.SERVICE, "default", "web") in recorder.mesh
    assert api_server.watch_requests(SERVICES)
