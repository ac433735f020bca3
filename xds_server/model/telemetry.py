"""The Telemetry policy as a model value: what a workload's sidecar reports.

Like the security policies, the spec is kept as the generated message's
deterministic bytes, so the value is hashable and compared by content;
`model.telemetry_policy` resolves which Telemetries govern a workload and
merges them into its effective telemetry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_server.model.types import Labels
from xds_server.provenance import Origin


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Access logging, the Prometheus stats port and tracing of the selected sidecars."""

    namespace: str
    name: str
    spec_bytes: bytes = b""
    """`TelemetrySpec`, serialized deterministically."""
    selector: Labels | None = None
    """`spec.selector.matchLabels`; None: every workload of the namespace."""
    creation_timestamp: str | None = None
    generation: int = 0
    origin: Origin | None = field(default=None, compare=False, repr=False)
