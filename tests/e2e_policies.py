"""End-to-end helpers for routes and BackendPolicies: manifests, status, provenance, tolerances.

`e2e_mesh` runs the mesh; this module says what the route and policy tests
write and read: a BackendPolicy manifest (`backend_policy_yaml`), a route or
policy's status as the admin API shows it (`policy_status`,
`policy_condition`), what `explain` names behind a proxy's resources
(`explain`), what Envoy's own config says a resource was built from
(`stamped_sources`), and the binomial tolerance traffic shares are judged by
(`within_binomial`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import yaml
from e2e_mesh import admin_json

from xds_server.admin.models import ExplainResult, ResourceExplain
from xds_server.app import ControlPlane
from xds_server.provenance import PROVENANCE_KEY

POLICY_API = {"apiVersion": "policy.xds-server.dev/v1alpha1", "kind": "BackendPolicy"}


def backend_policy_yaml(
    name: str,
    spec: Mapping[str, Any],
    *,
    target: str | None = "backend",
    namespace: str = "default",
) -> str:
    """BackendPolicy `name` with `spec`, targeting Service `target` (None: no targetRefs,
    the namespace default)."""
    refs = {} if target is None else {"targetRefs": [{"kind": "Service", "name": target}]}
    document = POLICY_API | {
        "metadata": {"name": name, "namespace": namespace},
        "spec": refs | dict(spec),
    }
    return yaml.safe_dump(document, sort_keys=False)


def yaml_document(document: Mapping[str, Any]) -> str:
    """A manifest written as JSON (JSON is YAML)."""
    return json.dumps(document) + "\n"


async def policy_status(plane: ControlPlane, key: str) -> dict[str, Any] | None:
    """`/api/policies`' entry for `key` (`Kind/namespace/name`), if listed."""
    kind = key.split("/", 1)[0]
    listed = await admin_json(plane, "/api/policies", kind=kind)
    for status in listed["policies"]:
        if status["key"] == key:
            return dict(status)
    return None


async def policy_condition(
    plane: ControlPlane, key: str, kind: str = "Accepted"
) -> dict[str, Any] | None:
    """The object's own condition of `kind` (a policy's, or a route's rejected as a whole)."""
    status = await policy_status(plane, key)
    if status is None:
        return None
    found = [c for c in status["conditions"] if c["type"] == kind]
    return dict(found[0]) if found else None


async def explain(
    plane: ControlPlane, node_id: str, type_name: str, name: str | None = None
) -> list[ResourceExplain]:
    """What `explain` says of the proxy's resources of `type_name` (only `name`, if given)."""
    params = {"type": type_name} | ({} if name is None else {"name": name})
    path = f"/api/proxies/{quote(node_id, safe='')}/explain"
    return ExplainResult.model_validate(await admin_json(plane, path, **params)).resources


def stamped_sources(config: Mapping[str, Any]) -> list[str]:
    """The source keys Envoy's config dump shows in a resource's (or virtual host's) metadata."""
    metadata = config.get("metadata", {}).get("filter_metadata", {})
    sources: list[str] = metadata.get(PROVENANCE_KEY, {}).get("sources", [])
    return sources


def within_binomial(hits: int, trials: int, share: float, sigmas: float = 4.0) -> bool:
    """Whether `hits` of `trials` is a plausible draw at `share` (normal approximation)."""
    mean = trials * share
    spread = sigmas * math.sqrt(trials * share * (1 - share))
    return mean - spread <= hits <= mean + spread
