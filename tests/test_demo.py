"""`xds-server demo --once`: the README's first command, as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(180)]


@pytest.mark.parametrize("flags", [[], ["--delta"]], ids=["sotw", "delta"])
def test_the_demo_sends_traffic_through_real_sidecars_and_exits_zero(flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", "demo", "--once", *flags],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "traffic check: OK" in result.stdout
    assert "backend v1" in result.stdout and "backend v2" in result.stdout
    assert "through sidecar backend-v1" in result.stdout
    # the frontend's sidecar called the backend's with mutual TLS, as its identity
    assert "mTLS from spiffe://cluster.local/ns/default/sa/frontend" in result.stdout
