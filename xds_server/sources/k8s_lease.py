"""The status Lease: which replica of the control plane writes route and policy status.

A `coordination.k8s.io/v1` Lease named `xds-server-status` in the control
plane's namespace, kept as client-go's leader election keeps one: the holder
renews it every `renew_interval`; another replica takes it over once it has
seen no change to it for `lease_duration`, timed on its own clock from when
it saw the record change (so clock skew between nodes does not matter).  The
holder stops acting `renew_deadline` (two thirds of the duration) after its
last successful renewal began, before anyone else may take over.  Every write
carries the resourceVersion it read, so two candidates cannot both win a
round (409 Conflict).  `release` clears the holder, so a successor need not
wait the duration out after a graceful stop.

Each method is one round of blocking calls of the official client, run by the
caller in a worker thread (`sources.k8s_status`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)

LEASE_NAME = "xds-server-status"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
HTTP_NOT_FOUND, HTTP_CONFLICT = 404, 409


@dataclass(frozen=True)
class StatusSettings:
    namespace: str = "mesh-system"
    """Where the Lease lives: the control plane's own namespace."""
    identity: str = ""
    """This replica's name in the Lease; empty: host name, pid and a random suffix."""
    lease_duration: int = 15
    """Seconds without renewal after which another replica may take the Lease."""
    renew_interval: float = 2.0
    retry_interval: float = 2.0
    """How often a replica that does not hold the Lease looks at it."""
    poll_interval: float = 0.5
    """How often the pipeline's state is checked for new statuses."""
    request_timeout: float = 5.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    release_on_stop: bool = True

    @property
    def renew_deadline(self) -> float:
        return self.lease_duration * 2 / 3

    def who(self) -> str:
        if self.identity:
            return self.identity
        return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> StatusSettings:
        """`POD_NAMESPACE` (else the service account's namespace, else mesh-system) and
        `POD_NAME` (else the host name), as the downward API gives them."""
        env = os.environ if environ is None else environ
        namespace = env.get("POD_NAMESPACE", "")
        if not namespace:
            try:
                namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
            except OSError:
                namespace = ""
        identity = env.get("POD_NAME", "")
        return cls(namespace=namespace or cls.namespace, identity=identity)


def now_utc() -> datetime:
    return datetime.now(UTC)


def _micro_time(moment: datetime) -> str:
    """`metav1.MicroTime`: RFC 3339 with microseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def api_time(moment: datetime) -> str:
    """`metav1.Time`: RFC 3339 in seconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def json_of(response: Any) -> dict[str, Any]:
    body = json.loads(response.data)
    return body if isinstance(body, dict) else {}


class StatusLease:
    """One replica's view of the Lease; each method is one round of blocking API calls."""

    def __init__(
        self,
        api: client.CoordinationV1Api,
        settings: StatusSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = now_utc,
    ) -> None:
        self._api = api
        self._settings = settings
        self.identity = settings.who()
        self._clock, self._wall = clock, wall
        self._held_until = 0.0
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    @property
    def held(self) -> bool:
        """This replica may write status now."""
        return self._clock() < self._held_until

    def acquire_or_renew(self) -> bool:
        """Renew the Lease if ours, take it if free or expired; whether we hold it now."""
        started = self._clock()
        timeout = self._settings.request_timeout
        namespace = self._settings.namespace
        try:
            lease = json_of(
                self._api.read_namespaced_lease(
                    LEASE_NAME, namespace, _preload_content=False, _request_timeout=timeout
                )
            )
        except ApiException as error:
            if error.status != HTTP_NOT_FOUND:
                raise
            return self._create(started)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), lease.get("metadata", {}).get("resourceVersion"))
        if record != self._observed:
            self._observed, self._observed_at = record, started
        duration = spec.get("leaseDurationSeconds") or self._settings.lease_duration
        if holder and holder != self.identity and started < self._observed_at + duration:
            self._held_until = 0.0
            return False  # someone else holds it and renews it
        now = _micro_time(self._wall())
        ours = holder == self.identity
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self._settings.lease_duration,
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if ours else now,
            "leaseTransitions": (spec.get("leaseTransitions") or 0) + (0 if ours else 1),
        }
        try:
            self._api.replace_namespaced_lease(
                LEASE_NAME,
                namespace,
                client.V1Lease.model_validate(lease),
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as error:
            if error.status != HTTP_CONFLICT:
                raise
            self._held_until = 0.0
            return False  # another replica wrote it since we read it
        if not ours:
            logger.info("took the status Lease %s/%s from %r", namespace, LEASE_NAME, holder)
        self._held_until = started + self._settings.renew_deadline
        return True

    def _create(self, started: float) -> bool:
        now = _micro_time(self._wall())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": self._settings.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self._settings.lease_duration,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            self._api.create_namespaced_lease(
                self._settings.namespace,
                client.V1Lease.model_validate(body),
                _preload_content=False,
                _request_timeout=self._settings.request_timeout,
            )
        except ApiException as error:
            if error.status != HTTP_CONFLICT:
                raise
            return False  # another replica created it first
        logger.info("created the status Lease %s/%s", self._settings.namespace, LEASE_NAME)
        self._held_until = started + self._settings.renew_deadline
        return True

    def release(self) -> None:
        """Give the Lease up (if held), so another replica takes it at once."""
        if not self.held:
            return
        self._held_until = 0.0
        timeout = self._settings.request_timeout
        namespace = self._settings.namespace
        lease = json_of(
            self._api.read_namespaced_lease(
                LEASE_NAME, namespace, _preload_content=False, _request_timeout=timeout
            )
        )
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != self.identity:
            return
        lease["spec"] = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1}
        self._api.replace_namespaced_lease(
            LEASE_NAME,
            namespace,
            client.V1Lease.model_validate(lease),
            _preload_content=False,
            _request_timeout=timeout,
        )
