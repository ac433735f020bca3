"""Typed settings for the control plane, filled from CLI flags (no globals)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def split_host_port(value: str) -> tuple[str, int]:
    """'127.0.0.1:15010' or '[::1]:15010' -> (host, port), with a clear error."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host.strip("[]"), number


@dataclass(frozen=True)
class DebounceSettings:
    """Bursts of changes are merged: wait for `quiet` seconds of calm, never more
    than `max_delay` after the first change; endpoint-only bursts use `endpoint_quiet`."""

    quiet: float = 0.1
    max_delay: float = 1.0
    endpoint_quiet: float = 0.01


@dataclass(frozen=True)
class Settings:
    source: str = "file:examples"
    xds_listen: str = "127.0.0.1:15010"
    admin_listen: str = "127.0.0.1:15014"
    debounce: DebounceSettings = DebounceSettings()
    grace_seconds: float = 2.0

    @property
    def source_directory(self) -> Path:
        kind, _, rest = self.source.partition(":")
        if kind != "file" or not rest:
            raise ValueError(f"unsupported source {self.source!r}; expected file:DIR")
        return Path(rest)
