"""Which manifests are near misses of the kinds the mesh reads, and what they probably meant.

A directory of manifests holds many kinds the mesh has no use for
(Deployments, ConfigMaps, CRDs); those are ignored quietly, since reporting
each would bury real problems.  But a typo in `kind` or `apiVersion` of a
Service or EndpointSlice (or an HTTPRoute, GRPCRoute or BackendPolicy)
silently drops the object, and the user sees nothing at all; so a manifest
that is *almost* one the mesh reads is reported, as a warning with a "did you mean":

- a kind that differs from a mesh kind only by case, surrounding space, a
  plural `s` or one or two typed letters (`Services`, `Service `,
  `endpointslice`, `Serivce`); one letter for a short kind (`Pods`, not `Job`);
- a mesh kind under an apiVersion that differs only by case or space (`V1`),
  or under another built-in Kubernetes group (`apps/v1`, `networking.k8s.io/v1`);
- a kind that cannot be any Kubernetes kind (not a CamelCase name of at most
  63 characters), which no other tool would read either.

A mesh kind in a third-party group (`serving.knative.dev/v1` Service) is
another kind that shares the name, and is ignored.  A mesh kind in its own
group at a version the mesh does not read (`discovery.k8s.io/v1beta1`) is
an error, not a warning: the user meant that object, and it cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from xds_server.sources.object_reader import escaped
from xds_server.sources.schema import Severity

__all__ = ["KindMiss", "near_miss"]

_WELL_KNOWN = frozenset({
    "job", "node", "nodes", "event", "secret", "endpoints", "serviceaccount", "podtemplate",
    "role", "lease", "tcproute", "backendlbpolicy",
})  # fmt: skip
"""Real kinds a few letters from a mesh kind: never a typo of one."""
_COMPARED_CHARS = 64
_KIND_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
"""What any Kubernetes kind looks like (a Go type name, CamelCase)."""


@dataclass(frozen=True)
class KindMiss:
    """A manifest that is probably meant as `kind`, and the message that says so."""

    kind: str | None
    """The kind probably meant, when there is one."""
    field: str
    message: str
    severity: Severity = "warning"


def _distance(a: str, b: str, most: int) -> int:
    """Edit distance with transpositions (optimal string alignment), capped at `most + 1`."""
    if abs(len(a) - len(b)) > most:
        return most + 1
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        if min(current) > most:
            return most + 1
        previous2, previous = previous, current
    return previous[-1]


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _built_in_group(group: str) -> bool:
    return "." not in group or group == "k8s.io" or group.endswith(".k8s.io")


def _meant_kind(kind: str, kinds: Iterable[str]) -> str | None:
    typed = kind.strip().lower()[:_COMPARED_CHARS]
    if typed in _WELL_KNOWN or len(kind) > _COMPARED_CHARS:
        return None
    for candidate in kinds:
        target = candidate.lower()
        if typed in (target, target + "s"):
            return candidate
        if _distance(typed, target, 1 if len(target) <= 4 else 2) <= (1 if len(target) <= 4 else 2):
            return candidate
    return None


def near_miss(api_version: str, kind: str, supported: Iterable[tuple[str, str]]) -> KindMiss | None:
    """Why (`api_version`, `kind`), which the mesh does not read, looks meant as one it does.

    None for a kind the mesh has no use for: it is ignored quietly.
    """
    version_of = {k: v for v, k in supported}
    if kind not in version_of:
        meant = _meant_kind(kind, version_of)
        if meant is None and not _KIND_NAME.fullmatch(kind):
            return KindMiss(None, "kind", f"'{escaped(kind)}' is not a Kubernetes kind name")
        if meant is None:
            return None
        return KindMiss(
            meant, "kind",
            f"kind '{escaped(kind)}' is not one the mesh reads; did you mean "
            f"'{meant}' (apiVersion {version_of[meant]})?",
        )  # fmt: skip
    wanted = version_of[kind]
    if api_version.strip().lower() == wanted.lower():
        return KindMiss(
            kind, "apiVersion",
            f"'{escaped(api_version)}' is not an apiVersion the mesh reads; did you mean "
            f"'{wanted}'?",
        )  # fmt: skip
    if _group(api_version) == _group(wanted):
        return KindMiss(
            kind, "apiVersion",
            f"unsupported version '{escaped(api_version)}', use '{wanted}'", "error",
        )  # fmt: skip
    if _built_in_group(_group(api_version)):
        return KindMiss(
            kind, "apiVersion",
            f"Kubernetes has no {kind} in '{escaped(api_version)}'; did you mean '{wanted}'?",
        )  # fmt: skip
    return None
