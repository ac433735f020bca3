"""Telemetries from Kubernetes: listed and watched once their CRD is installed, and
their Accepted condition written back as a policy's.

The emulated API server (`kube_fixtures`) serves the CRD's objects, written
through the official client as `kubectl` would; an invalid edit keeps the last
good version and is named with its field.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.register_assert_rewrite("kube_fixtures")

from kube_fixtures import ApiServerEmulator, service
from test_kubernetes_policies import Cluster, cluster, eventually, start_source

from xds_server.model import Kind, ObjectKey
from xds_server.model.status_conditions import ACCEPTED, INVALID, Condition, ObjectStatus
from xds_server.model.telemetry import Telemetry
from xds_server.model.telemetry_policy import spec_of
from xds_server.sources.k8s_status import RESOURCES, desired_status

pytest_plugins = ("kube_fixtures",)
pytestmark = pytest.mark.timeout(60)

__all__ = ["cluster", "start_source"]  # fixtures, used by name

TELEMETRIES = ("policy.xds-server.dev", "v1alpha1", "telemetries")
KEY = ObjectKey(Kind.TELEMETRY, "default", "web-tracing")


def telemetry(percentage: Any) -> dict[str, Any]:
    return {
        "apiVersion": "policy.xds-server.dev/v1alpha1",
        "kind": "Telemetry",
        "metadata": {"name": "web-tracing", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "tracing": {
                "collector": "otel.observability:4317",
                "randomSamplingPercentage": percentage,
            },
        },
    }


def sampling_of(policy: object) -> float:
    assert isinstance(policy, Telemetry)
    return spec_of(policy).tracing.random_sampling_percentage.value


async def test_telemetries_are_listed_watched_and_checked(
    api_server: ApiServerEmulator, cluster: Cluster, start_source: Callable[[], Any]
) -> None:
    api_server.install_crd(TELEMETRIES)
    api_server.create(service("web"))
    await cluster.create(TELEMETRIES, telemetry(10))

    source, recorder = await start_source()
    listed = recorder.mesh[KEY]
    assert sampling_of(listed) == 10
    assert isinstance(listed, Telemetry) and listed.selector == (("app", "web"),)
    assert listed.origin is not None and listed.origin.uid == "uid-default-web-tracing"

    await cluster.replace(TELEMETRIES, telemetry(50))
    await eventually(lambda: sampling_of(recorder.mesh[KEY]) == 50)

    await cluster.replace(TELEMETRIES, telemetry(150))
    await eventually(lambda: source.errors)
    (error,) = source.errors
    assert (error.object_ref, error.field) == (
        "Telemetry default/web-tracing",
        "spec.tracing.randomSamplingPercentage",
    )
    assert sampling_of(recorder.mesh[KEY]) == 50

    await cluster.delete(TELEMETRIES, "web-tracing")
    await eventually(lambda: KEY not in recorder.mesh)


def test_status_is_written_to_the_telemetry_as_policy_conditions() -> None:
    assert RESOURCES[Kind.TELEMETRY] == TELEMETRIES
    rejected = ObjectStatus(
        KEY, 3, (Condition(ACCEPTED, "False", INVALID, "spec.tracing.collector: bad", 3),)
    )
    live = {"metadata": {"generation": 3}, "status": {}}
    written = desired_status(rejected, live, datetime(2026, 1, 1, tzinfo=UTC))
    assert written is not None
    (condition,) = written["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Accepted",
        "False",
        "Invalid",
    )
    assert condition["message"] == "spec.tracing.collector: bad"
    assert condition["observedGeneration"] == 3
