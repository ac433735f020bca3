"""Injection into manifests: find the pod template of each workload and inject it.

Pods are injected directly; Deployments, StatefulSets, DaemonSets, ReplicaSets,
ReplicationControllers and Jobs through `spec.template`; CronJobs through
`spec.jobTemplate.spec.template`; a `List` item by item.  Every other kind
passes through untouched, so a whole application's multi-document YAML can be
piped through `xds-server inject`.  The output keeps each document's key order
and the documents' order, so it is deterministic and diffs cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from xds_server.inject.inject import Decision, InjectionError, inject_pod
from xds_server.inject.sidecar import InjectionConfig

logger = logging.getLogger(__name__)

TEMPLATE_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"}
)


@dataclass(frozen=True)
class Outcome:
    """What happened to one workload: `ref` is `Kind/namespace/name`."""

    ref: str
    decision: Decision


def inject_object(
    obj: Mapping[str, Any], config: InjectionConfig
) -> tuple[dict[str, Any], list[Outcome]]:
    """A copy of one manifest with its pod template(s) injected, and what was done."""
    kind = obj.get("kind")
    result = dict(obj)
    if kind == "List":
        items: list[dict[str, Any]] = []
        outcomes: list[Outcome] = []
        for item in obj.get("items") or []:
            injected, item_outcomes = inject_object(item, config)
            items.append(injected)
            outcomes.extend(item_outcomes)
        result["items"] = items
        return result, outcomes
    path: tuple[str, ...]
    if kind == "Pod":
        path = ()
    elif kind in TEMPLATE_KINDS:
        path = ("spec", "template")
    elif kind == "CronJob":
        path = ("spec", "jobTemplate", "spec", "template")
    else:
        return result, []
    ref = _ref(obj)
    try:
        pod = _get(obj, path)
        injected, decision = inject_pod(pod, config)
    except InjectionError as error:
        raise InjectionError(f"{ref}: {error}") from None
    return _set(obj, path, injected), [Outcome(ref, decision)]


def inject_yaml(text: str, config: InjectionConfig) -> tuple[str, list[Outcome]]:
    """Multi-document YAML in, the same documents injected out (empty documents dropped)."""
    documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    output: list[str] = []
    outcomes: list[Outcome] = []
    for number, document in enumerate(documents, start=1):
        if not isinstance(document, Mapping):
            raise InjectionError(f"document {number} is not a mapping")
        injected, document_outcomes = inject_object(document, config)
        outcomes.extend(document_outcomes)
        output.append(yaml.safe_dump(injected, sort_keys=False, width=1_000_000))
    return "---\n".join(output), outcomes


def _ref(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name") or metadata.get("generateName") or "?"
    namespace = metadata.get("namespace")
    return f"{obj.get('kind')}/{namespace}/{name}" if namespace else f"{obj.get('kind')}/{name}"


def _get(obj: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    node: Any = obj
    for depth, key in enumerate(path):
        node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            raise InjectionError(f"missing {'.'.join(path[: depth + 1])}")
    return node if isinstance(node, Mapping) else {}


def _set(obj: Mapping[str, Any], path: tuple[str, ...], value: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with `path` replaced by `value`, copying only along the path."""
    if not path:
        return value
    head, *rest = path
    copied = dict(obj)
    copied[head] = _set(obj[head], tuple(rest), value)
    return copied
