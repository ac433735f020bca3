"""The xDS port's bounds are set from `xds-server serve` flags and reach the ADS server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xds_server.app import ControlPlane
from xds_server.settings import Settings


async def test_settings_become_the_ads_servers_limits() -> None:
    settings = Settings(
        xds_max_request_bytes=1024 * 1024,
        xds_max_streams_per_peer=3,
        xds_stuck_stream_seconds=5.0,
    )
    limits = ControlPlane(settings).ads.limits
    assert (limits.max_request_bytes, limits.max_streams_per_peer) == (1024 * 1024, 3)
    assert limits.stuck_stream_seconds == 5.0


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--xds-max-streams-per-peer", "0", "must be at least 1"),
        ("--xds-max-request-bytes", "lots", "expected a whole number"),
    ],
)
def test_a_bad_limit_is_a_usage_error_naming_the_flag(flag: str, value: str, message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "xds_server.cli", "serve", flag, value],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2
    assert flag in run.stderr and message in run.stderr
    assert "Traceback" not in run.stderr
