"""The status vocabulary of routes and policies: condition types, reasons and status values.

`status` computes what the control plane says of each HTTPRoute, GRPCRoute
and BackendPolicy (its module doc is the specification); this module owns the
words (the Gateway API's condition types and reasons, GEP-713's for
policies), the frozen values both status outlets read (`Condition`,
`ParentStatus`, `ObjectStatus`), and the two ways a message names several
things (`listed`, and `resolution` for a ResolvedRefs condition).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from xds_server.model.changes import ObjectKey
from xds_server.model.routes import ParentRef
from xds_server.provenance import Origin

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "xds-server.dev/mesh"
"""`status.parents[].controllerName` of the entries this control plane writes."""

ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
PARTIALLY_INVALID = "PartiallyInvalid"
CONDITION_TYPES = (ACCEPTED, RESOLVED_REFS, PARTIALLY_INVALID)
"""The condition types this control plane sets (and so may replace or remove)."""

# Reasons (Gateway API `RouteConditionReason`, GEP-713 `PolicyConditionReason`).
REASON_ACCEPTED = "Accepted"
REASON_RESOLVED_REFS = "ResolvedRefs"
NO_MATCHING_PARENT = "NoMatchingParent"
CONFLICTED = "Conflicted"
INVALID = "Invalid"
BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"
REF_NOT_PERMITTED = "RefNotPermitted"
TARGET_NOT_FOUND = "TargetNotFound"
UNSUPPORTED_VALUE = "UnsupportedValue"

MAX_PROBLEMS_NAMED = 5
"""Unresolved references a message names one by one; the rest are counted."""

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition, as `metav1.Condition` holds it (without its transition time)."""

    type: str
    status: Status
    reason: str
    message: str = ""
    observed_generation: int = 0

    @property
    def holds(self) -> bool:
        return self.status == "True"


@dataclass(frozen=True, slots=True)
class ParentStatus:
    """A route's conditions for one of its Service parents."""

    parent_ref: ParentRef
    """As the route wrote it (`namespace` None: the route's own)."""
    conditions: tuple[Condition, ...]

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """What the control plane says of one route or policy."""

    key: ObjectKey
    generation: int
    conditions: tuple[Condition, ...] = ()
    """A policy's conditions; for a route, only set when it was rejected as a whole."""
    parents: tuple[ParentStatus, ...] = ()
    """A route's conditions per Service parent."""
    rejected: bool = False
    in_mesh: bool = True
    """False for a rejected object no version of which is in the mesh."""
    origin: Origin | None = field(default=None, compare=False)

    def condition(self, kind: str, parent: ParentRef | None = None) -> Condition | None:
        """The condition of `kind`: for a route, of `parent` (or of the object when rejected)."""
        if parent is not None:
            for entry in self.parents:
                if entry.parent_ref == parent:
                    return entry.condition(kind)
            return None
        return next((c for c in self.conditions if c.type == kind), None)

    @property
    def accepted(self) -> bool:
        """Every Accepted condition it carries holds (and it carries one)."""
        found = [c for c in self.conditions if c.type == ACCEPTED] + [
            c for p in self.parents for c in p.conditions if c.type == ACCEPTED
        ]
        return bool(found) and all(c.holds for c in found)


def listed(values: Iterable[object]) -> str:
    shown = [str(value) for value in values]
    return ", ".join(shown) if shown else "none"


def resolution(problems: list[tuple[str, str]], generation: int, fine: str) -> Condition:
    if not problems:
        return Condition(RESOLVED_REFS, "True", REASON_RESOLVED_REFS, fine, generation)
    named = "; ".join(message for _, message in problems[:MAX_PROBLEMS_NAMED])
    more = len(problems) - MAX_PROBLEMS_NAMED
    if more > 0:
        named += f"; and {more} more"
    return Condition(RESOLVED_REFS, "False", problems[0][0], named, generation)
