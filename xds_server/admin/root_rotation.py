"""`POST /api/ca/rotate-root`: start a root rotation with an overlap period.

The one admin endpoint that changes the mesh, so it requires the admin token
(`admin.auth`).  The control plane does the work (`ControlPlane.rotate_root`:
a new root trusted beside the old one at once, every certificate re-issued
under it once the bundle has settled, the old root dropped when the overlap
ends); this module owns the request and response models (pydantic, shared
with `xds-server ca rotate-root`) and turns a refusal (a rotation already
under way, a user-supplied root, an overlap too short) into a 409 naming why.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from pydantic import Field

from xds_server.admin.models import ApiModel

logger = logging.getLogger(__name__)

MAX_OVERLAP_SECONDS = 90 * 24 * 3600.0
"""The longest overlap asked for (a root's own lifetime is longer)."""


class RotationInfo(Protocol):
    """What the control plane says of a rotation it started."""

    @property
    def new_serial(self) -> str: ...
    @property
    def old_serial(self) -> str: ...
    @property
    def reissue_at(self) -> float: ...
    @property
    def overlap_ends_at(self) -> float: ...


@runtime_checkable
class RootRotationView(Protocol):
    """What a view offers for `/api/ca/rotate-root` (`ControlPlane` implements it)."""

    async def rotate_root(self, overlap_seconds: float) -> RotationInfo:
        """Start a rotation; ValueError (its message for the caller) when it cannot."""
        ...


class RotateRootRequest(ApiModel):
    overlap_seconds: float = Field(
        gt=0,
        le=MAX_OVERLAP_SECONDS,
        description="how long the old and the new root are both trusted",
    )


class RootRotationModel(ApiModel):
    new_root_serial: str
    old_root_serial: str
    reissue_at: datetime
    """Every workload certificate is re-issued under the new root from then."""
    overlap_ends_at: datetime
    """The old root leaves the trust bundle then."""


def rotation_model(info: RotationInfo) -> RootRotationModel:
    return RootRotationModel(
        new_root_serial=info.new_serial,
        old_root_serial=info.old_serial,
        reissue_at=datetime.fromtimestamp(info.reissue_at, UTC),
        overlap_ends_at=datetime.fromtimestamp(info.overlap_ends_at, UTC),
    )
