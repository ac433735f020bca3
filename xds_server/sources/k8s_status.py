"""Kubernetes mode: route and policy status written back to each object's `/status`.

The conditions are `model.status`'s (the same the admin shows in file mode);
this module owns getting them into the API server, correctly and quietly:

* Only the holder of the `coordination.k8s.io/v1` Lease `xds-server-status`
  (in the control plane's namespace) writes, so replicas never fight; how it
  is held, renewed, taken over and released is `sources.k8s_lease`'s.  On
  acquiring it, the writer forgets what it settled (another replica may have
  written since) and compares every object again.
* A write is a read-modify-write, as the Gateway API requires of route
  status: GET the object's status, keep every `status.parents[]` entry of
  other controllers (and condition types we do not own) as they are, replace
  ours, and PATCH (JSON merge patch) with the resourceVersion read, so a
  concurrent writer makes us re-read (409), not overwrite.  Nothing is sent
  when the result equals what is there.  `lastTransitionTime` moves only
  when a condition's status changes; `observedGeneration` is the generation
  the conditions were computed for.  When the object's generation is newer
  than the mesh's version of it, the write waits for the mesh to catch up
  (the Gateway API's rule against stale status).  A rejected object is
  judged on its latest spec (the rejection is about it): its conditions get
  the live generation, and a route's entries its live Service parentRefs.
* It never blocks the pipeline: an asyncio task polls the pipeline's current
  mesh and rejections (`inputs`, cheap identity checks), computes the
  desired statuses when they changed, and writes the objects whose desired
  status differs from what it last settled, through the official client in
  worker threads, a few at a time.  Failures back off (per object for an
  object the server refuses, globally while the API is unreachable); an
  object that is gone (404) is left to the watch.

The official client is synchronous; its calls run in `asyncio.to_thread`,
each bounded by `request_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xds_server.model import Kind, MeshSnapshot, ObjectKey
from xds_server.model.routes import ParentRef
from xds_server.model.status import (
    CONDITION_TYPES,
    CONTROLLER_NAME,
    Condition,
    ObjectStatus,
    policy_conditions,
)
from xds_server.sources.convert_policy import POLICY_GROUP
from xds_server.sources.convert_routes import GATEWAY_API_GROUP
from xds_server.sources.k8s_lease import (
    HTTP_CONFLICT,
    HTTP_NOT_FOUND,
    LEASE_NAME,
    StatusLease,
    StatusSettings,
    api_time,
    json_of,
    now_utc,
)
from xds_server.sources.k8s_retry import Backoff

__all__ = ["LEASE_NAME", "StatusSettings", "StatusWriter"]

logger = logging.getLogger(__name__)

RESOURCES: dict[Kind, tuple[str, str, str]] = {
    Kind.HTTP_ROUTE: (GATEWAY_API_GROUP, "v1", "httproutes"),
    Kind.GRPC_ROUTE: (GATEWAY_API_GROUP, "v1", "grpcroutes"),
    Kind.BACKEND_POLICY: (POLICY_GROUP, "v1alpha1", "backendpolicies"),
    Kind.AUTHORIZATION_POLICY: (POLICY_GROUP, "v1alpha1", "authorizationpolicies"),
    Kind.TELEMETRY: (POLICY_GROUP, "v1alpha1", "telemetries"),
}
"""Where each kind's objects live: (group, version, plural)."""
WRITES_AT_ONCE = 4

Inputs = Callable[
    [], tuple[MeshSnapshot, Mapping[ObjectKey, str], Mapping[ObjectKey, tuple[str, ...]]]
]
"""The pipeline's current mesh, rejections and routes' left-out rules (called on the
event loop); see `model.status.policy_conditions`."""


# -- one object's status, merged into what is there ------------------------------------------


def condition_json(
    condition: Condition, generation: int, before: Sequence[Mapping[str, Any]], now: datetime
) -> dict[str, Any]:
    """A `metav1.Condition`; `lastTransitionTime` kept from `before` if the status is the same."""
    previous = next((c for c in before if c.get("type") == condition.type), None)
    moved = previous is None or previous.get("status") != condition.status
    transition = api_time(now) if moved or not previous else previous.get("lastTransitionTime")
    return {
        "type": condition.type,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message,
        "observedGeneration": generation,
        "lastTransitionTime": transition or api_time(now),
    }


def merged_conditions(
    current: Sequence[Mapping[str, Any]],
    ours: Sequence[Condition],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """`current` with our condition types replaced (others kept, in place) and ours added."""
    by_type = {c.type: c for c in ours}
    result: list[dict[str, Any]] = []
    placed: set[str] = set()
    for existing in current:
        kind = existing.get("type")
        if kind in by_type:
            result.append(condition_json(by_type[kind], generation, current, now))
            placed.add(kind)
        elif kind not in CONDITION_TYPES:
            result.append(dict(existing))
    result.extend(condition_json(c, generation, current, now) for c in ours if c.type not in placed)
    return result


def parent_ref_json(ref: ParentRef) -> dict[str, Any]:
    shown: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "name": ref.name}
    if ref.namespace is not None:
        shown["namespace"] = ref.namespace
    if ref.port is not None:
        shown["port"] = ref.port
    if ref.section_name is not None:
        shown["sectionName"] = ref.section_name
    return shown


def _is_service(ref: Mapping[str, Any]) -> bool:
    return ref.get("group") in ("", "core") and ref.get("kind") == "Service"


def desired_status(
    status: ObjectStatus, live: Mapping[str, Any], now: datetime
) -> dict[str, Any] | None:
    """The object's whole `status` after our write; None: not ours to write yet (stale mesh)."""
    metadata = live.get("metadata") or {}
    generation = int(metadata.get("generation") or 0)
    if not status.rejected and status.generation < generation:
        return None  # the mesh has not seen the latest spec: its status would be stale
    observed = generation if status.rejected else status.generation
    current: dict[str, Any] = dict(live.get("status") or {})
    if status.key.kind in (Kind.BACKEND_POLICY, Kind.AUTHORIZATION_POLICY, Kind.TELEMETRY):
        existing = current.get("conditions") or []
        current["conditions"] = merged_conditions(existing, status.conditions, observed, now)
        return current
    spec_refs = [
        ref for ref in (live.get("spec") or {}).get("parentRefs") or [] if _is_service(ref)
    ]
    if status.rejected:
        entries = [(ref, status.conditions) for ref in spec_refs]
    elif len(spec_refs) == len(status.parents):
        entries = [(ref, p.conditions) for ref, p in zip(spec_refs, status.parents, strict=True)]
    else:
        entries = [(parent_ref_json(p.parent_ref), p.conditions) for p in status.parents]
    parents = current.get("parents") or []
    others = [p for p in parents if p.get("controllerName") != CONTROLLER_NAME]
    ours_before = {
        json.dumps(p.get("parentRef"), sort_keys=True): p.get("conditions") or []
        for p in parents
        if p.get("controllerName") == CONTROLLER_NAME
    }
    ours = [
        {
            "parentRef": dict(ref),
            "controllerName": CONTROLLER_NAME,
            "conditions": merged_conditions(
                ours_before.get(json.dumps(ref, sort_keys=True), []), conditions, observed, now
            ),
        }
        for ref, conditions in entries
    ]
    current["parents"] = others + ours
    return current


# -- the writer -------------------------------------------------------------------------------


@dataclass
class _Pending:
    failures: int = 0
    not_before: float = 0.0


@dataclass
class StatusWriter:
    """Holds the Lease (or waits for it) and writes changed statuses (module doc)."""

    inputs: Inputs
    settings: StatusSettings = field(default_factory=StatusSettings)
    configuration: client.Configuration | None = None
    load_configuration: Callable[[], client.Configuration] | None = None
    """Loads the client configuration when none is given (retried with backoff)."""
    rng: random.Random = field(default_factory=random.Random)
    lease: StatusLease | None = None
    settled: dict[ObjectKey, ObjectStatus] = field(default_factory=dict)
    """What each object's status was last written as (or found to be)."""
    writes: int = 0
    """PATCHes sent (tests and metrics read it)."""
    _desired: dict[ObjectKey, ObjectStatus] = field(default_factory=dict)
    _seen: tuple[object, object, object] | None = None
    _pending: set[ObjectKey] = field(default_factory=set)
    """Keys whose desired status is not what was settled."""
    _failing: dict[ObjectKey, _Pending] = field(default_factory=dict)
    _custom: client.CustomObjectsApi | None = None

    async def run(self) -> None:
        """Until cancelled: keep the Lease, and write while holding it."""
        configuration = self.configuration or await self._configured()
        api_client = client.ApiClient(configuration)
        self._custom = client.CustomObjectsApi(api_client)
        lease = self.lease = StatusLease(client.CoordinationV1Api(api_client), self.settings)
        logger.info("status writer %r: waiting for the Lease", lease.identity)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_lease(lease))
                tasks.create_task(self._write_statuses(lease))
        finally:
            if self.settings.release_on_stop:
                try:
                    await asyncio.to_thread(lease.release)
                except Exception as error:  # shutting down: say so, go on
                    logger.warning("could not release the status Lease: %s", error)
            api_client.close()  # type: ignore[no-untyped-call]

    async def _configured(self) -> client.Configuration:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max, self.rng)
        while True:
            try:
                if self.load_configuration is None:
                    return client.Configuration.get_default_copy()
                return await asyncio.to_thread(self.load_configuration)
            except Exception as error:
                delay = backoff.next()
                logger.error(
                    "status writer: no client configuration (%s); retry in %.1fs", error, delay
                )
                await asyncio.sleep(delay)

    async def _keep_lease(self, lease: StatusLease) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max, self.rng)
        was_held = False
        while True:
            try:
                held = await asyncio.to_thread(lease.acquire_or_renew)
                backoff.reset()
                delay = self.settings.renew_interval if held else self.settings.retry_interval
            except Exception as error:
                held = lease.held  # a failed renewal: we hold it until the deadline passes
                delay = min(backoff.next(), self.settings.renew_interval)
                logger.warning("status Lease: %s; retrying in %.1fs", error, delay)
            if held and not was_held:
                logger.info("status writer %r holds the Lease: writing status", lease.identity)
                self.settled.clear()  # another replica may have written since: look again
                self._pending = set(self._desired)
            elif was_held and not held:
                logger.info("status writer %r lost the Lease", lease.identity)
            was_held = held
            await asyncio.sleep(delay)

    def _refresh(self) -> bool:
        """Recompute the desired statuses if the pipeline's mesh or rejections moved."""
        mesh, rejected, partial = self.inputs()
        if (
            self._seen is not None
            and self._seen[0] is mesh
            and self._seen[1] == rejected
            and self._seen[2] == partial
        ):
            return False
        self._seen = (mesh, dict(rejected), dict(partial))
        statuses = policy_conditions(mesh, rejected, partial)
        for kind in (Kind.HTTP_ROUTE, Kind.GRPC_ROUTE):  # a route no longer ours: clear ours
            table = mesh.table(kind)
            for namespace, name in table:
                key = ObjectKey(kind, namespace, name)
                if key not in statuses:
                    statuses[key] = ObjectStatus(
                        key, getattr(table[namespace, name], "generation", 0)
                    )
        self._desired = statuses
        for gone in self.settled.keys() - statuses.keys():
            del self.settled[gone]
        for gone in self._failing.keys() - statuses.keys():
            del self._failing[gone]
        self._pending = {k for k, status in statuses.items() if self.settled.get(k) != status}
        return True

    async def _write_statuses(self, lease: StatusLease) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max, self.rng)
        while True:
            self._refresh()
            now = time.monotonic()
            due = [
                self._desired[key]
                for key in sorted(self._pending, key=lambda k: (k.kind.value, *k[1:]))
                if key not in self._failing or self._failing[key].not_before <= now
            ]
            if not lease.held or not due:
                await asyncio.sleep(self.settings.poll_interval)
                continue
            for start in range(0, len(due), WRITES_AT_ONCE):
                if not lease.held:
                    break
                batch = due[start : start + WRITES_AT_ONCE]
                outcomes = await asyncio.gather(
                    *(asyncio.to_thread(self._write, status) for status in batch),
                    return_exceptions=True,
                )
                unreachable = False
                for status, outcome in zip(batch, outcomes, strict=True):
                    unreachable |= self._settle(status, outcome)
                if unreachable:
                    delay = backoff.next()
                    logger.warning("status writes failing; retrying in %.1fs", delay)
                    await asyncio.sleep(delay)
                    break
                backoff.reset()
                if self._refresh():  # a newer mesh since: write that, not this
                    break

    def _settle(self, status: ObjectStatus, outcome: object) -> bool:
        """Record a write's outcome; True if the API seems unreachable (back off globally)."""
        key = status.key
        if self._desired.get(key) != status:
            return False  # superseded while it was written: the new one is pending
        if not isinstance(outcome, BaseException):
            self.settled[key] = status
            self._pending.discard(key)
            self._failing.pop(key, None)
            return False
        if isinstance(outcome, ApiException) and outcome.status == HTTP_NOT_FOUND:
            self.settled[key] = status  # gone: the watch will delete it
            self._pending.discard(key)
            return False
        if isinstance(outcome, ApiException) and outcome.status == HTTP_CONFLICT:
            return False  # written by someone else since we read it: read again next round
        if isinstance(outcome, ApiException) and outcome.status and 400 <= outcome.status < 500:
            pending = self._failing.setdefault(key, _Pending())
            pending.failures += 1
            delay = min(
                self.settings.backoff_max, self.settings.backoff_initial * 2**pending.failures
            )
            pending.not_before = time.monotonic() + delay
            logger.error("status of %s refused: HTTP %s %s", key, outcome.status, outcome.reason)
            return False
        logger.warning("writing the status of %s failed: %s", key, outcome)
        return True

    def _write(self, status: ObjectStatus) -> None:
        """GET the object, merge, PATCH if different (in a worker thread)."""
        assert self._custom is not None
        group, version, plural = RESOURCES[status.key.kind]
        key, timeout = status.key, self.settings.request_timeout
        live = json_of(
            self._custom.get_namespaced_custom_object_status(
                group, version, key.namespace, plural, key.name,
                _preload_content=False, _request_timeout=timeout,
            )
        )  # fmt: skip
        wanted = desired_status(status, live, now_utc())
        if wanted is None or wanted == (live.get("status") or {}):
            return
        body = {
            "metadata": {"resourceVersion": (live.get("metadata") or {}).get("resourceVersion")},
            "status": wanted,
        }
        self._custom.patch_namespaced_custom_object_status(
            group, version, key.namespace, plural, key.name, body,
            _content_type="application/merge-patch+json", _request_timeout=timeout,
            _preload_content=False,
        )  # fmt: skip
        self.writes += 1
        logger.debug("wrote the status of %s", key)
