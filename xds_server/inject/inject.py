"""Sidecar injection as pure functions: a pod (or a workload's pod template) in, the
same pod with the mesh's containers and volumes out.

Injection is defined once, as an RFC 6902 JSON Patch (`injection_patch`): the
webhook sends exactly that patch to the API server, and the CLI applies the
same operations itself (`inject_pod`).  So the two paths cannot drift: a pod
injected by `xds-server inject` equals the pod the webhook produces.

The patch only adds: the three init containers at the front of
`initContainers`, the volumes at the end of `volumes`, and the
`sidecar.mesh.io/status` annotation.  That annotation makes injection
idempotent (injecting twice is injecting once).  A pod is left as it is when
it opts out (`sidecar.mesh.io/inject: "false"` as a label, which the
webhook's objectSelector also honours, or as an annotation) or uses the host's
network namespace, where capture rules would redirect the node's traffic.  A
pod that cannot be injected (a container or volume already named like ours, a
container port the proxy binds) raises `InjectionError`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xds_server import __version__
from xds_server.inject.sidecar import (
    INJECTED_CONTAINERS,
    INJECTED_VOLUMES,
    InjectionConfig,
    injected_init_containers,
    injected_volumes,
)
from xds_server.model.peer_authentication import TLS_MODE_LABEL

logger = logging.getLogger(__name__)

INJECT_KEY = "sidecar.mesh.io/inject"
STATUS_ANNOTATION = "sidecar.mesh.io/status"

JsonPatch = list[dict[str, Any]]


class InjectionError(ValueError):
    """The pod cannot take a sidecar as it is; the message says why."""


@dataclass(frozen=True)
class Decision:
    """Whether a pod gets a sidecar; `reason` says why not (empty when it does)."""

    inject: bool
    reason: str = ""


def status_annotation(volumes: Sequence[str] = INJECTED_VOLUMES) -> str:
    """The value recorded on injected pods: what was added, by which version."""
    return json.dumps(
        {
            "initContainers": list(INJECTED_CONTAINERS),
            "version": __version__,
            "volumes": list(volumes),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def decide(pod: Mapping[str, Any]) -> Decision:
    """Should `pod` (a Pod or a PodTemplateSpec) be injected?"""
    metadata = _mapping(pod.get("metadata"), "metadata")
    annotations = _mapping(metadata.get("annotations"), "metadata.annotations")
    labels = _mapping(metadata.get("labels"), "metadata.labels")
    spec = _mapping(pod.get("spec"), "spec")
    if STATUS_ANNOTATION in annotations:
        return Decision(False, f"already injected ({STATUS_ANNOTATION} is set)")
    for where, values in (("label", labels), ("annotation", annotations)):
        if str(values.get(INJECT_KEY, "")).lower() == "false":
            return Decision(False, f'opted out with the {where} {INJECT_KEY}: "false"')
    if spec.get("hostNetwork") is True:
        return Decision(False, "uses the host network")
    return Decision(True)


def injection_patch(pod: Mapping[str, Any], config: InjectionConfig) -> tuple[JsonPatch, Decision]:
    """The JSON Patch that injects `pod`, and the decision; no operations when skipped."""
    decision = decide(pod)
    if not decision.inject:
        return [], decision
    spec = _mapping(pod.get("spec"), "spec")
    _check_conflicts(spec, config)
    ops: JsonPatch = []
    volumes = injected_volumes(config)
    status = status_annotation([volume["name"] for volume in volumes])
    metadata = pod.get("metadata")
    if metadata is None:
        ops.append(_add("/metadata", {"annotations": {STATUS_ANNOTATION: status}}))
    elif metadata.get("annotations") is None:
        ops.append(_add("/metadata/annotations", {STATUS_ANNOTATION: status}))
    else:
        ops.append(_add(f"/metadata/annotations/{_escape(STATUS_ANNOTATION)}", status))
    # The sidecar accepts mutual TLS: clients' endpoints for this Pod select it.
    if metadata is None or metadata.get("labels") is None:
        ops.append(_add("/metadata/labels", {TLS_MODE_LABEL: "mtls"}))
    else:
        ops.append(_add(f"/metadata/labels/{_escape(TLS_MODE_LABEL)}", "mtls"))
    containers = injected_init_containers(config)
    if spec.get("initContainers") is None:
        ops.append(_add("/spec/initContainers", containers))
    else:
        ops.extend(_add(f"/spec/initContainers/{i}", c) for i, c in enumerate(containers))
    if spec.get("volumes") is None:
        ops.append(_add("/spec/volumes", volumes))
    else:
        ops.extend(_add("/spec/volumes/-", volume) for volume in volumes)
    return ops, decision


def inject_pod(pod: Mapping[str, Any], config: InjectionConfig) -> tuple[dict[str, Any], Decision]:
    """A copy of `pod` with the sidecar injected (or unchanged, with the reason)."""
    ops, decision = injection_patch(pod, config)
    return apply_additions(pod, ops), decision


def apply_additions(
    document: Mapping[str, Any], ops: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Apply RFC 6902 `add` operations (all injection emits) to a copy of `document`."""
    result: dict[str, Any] = copy.deepcopy(dict(document))
    for op in ops:
        if op.get("op") != "add":
            raise ValueError(f"only add operations are supported, got {op!r}")
        *parents, last = [_unescape(part) for part in str(op["path"]).split("/")[1:]]
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        value = copy.deepcopy(op["value"])
        if isinstance(target, list):
            if last == "-":
                target.append(value)
            else:
                target.insert(int(last), value)
        else:
            target[last] = value
    return result


def _check_conflicts(spec: Mapping[str, Any], config: InjectionConfig) -> None:
    names = {
        str(container.get("name"))
        for key in ("initContainers", "containers")
        for container in _sequence(spec.get(key), f"spec.{key}")
    }
    taken = sorted(names & set(INJECTED_CONTAINERS))
    if taken:
        raise InjectionError(f"container name(s) {', '.join(taken)} are reserved for the mesh")
    volumes = {str(volume.get("name")) for volume in _sequence(spec.get("volumes"), "spec.volumes")}
    taken = sorted(volumes & set(INJECTED_VOLUMES))
    if taken:
        raise InjectionError(f"volume name(s) {', '.join(taken)} are reserved for the mesh")
    for key in ("initContainers", "containers"):
        for container in _sequence(spec.get(key), f"spec.{key}"):
            for port in _sequence(container.get("ports"), "ports"):
                number = port.get("containerPort")
                if number in config.reserved_ports:
                    raise InjectionError(
                        f"container {container.get('name')!r} declares port {number}, "
                        f"which the sidecar binds ({sorted(config.reserved_ports)})"
                    )


def _add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": copy.deepcopy(value)}


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InjectionError(f"{what} must be a mapping, got {type(value).__name__}")
    return value


def _sequence(value: object, what: str) -> Sequence[Mapping[str, Any]]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise InjectionError(f"{what} must be a list of mappings")
    return value
