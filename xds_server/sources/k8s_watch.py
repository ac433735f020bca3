"""List then watch one kind (in one namespace, or all) for ever: the Kubernetes protocol.

`ResourceWatch.run` is the loop client-go's reflector runs, written for the
official (synchronous) client and run in a thread of its own:

1. List, in pages of `list_page_size` (`limit` and `continue`), without a
   resourceVersion, so the list is a consistent, current snapshot.  A `410`
   on a continue token (the snapshot expired mid-list) restarts the list.
   The snapshot replaces what the watch held before (`WatchedObjects.replace`
   emits the exact difference), and its resourceVersion is where watching
   starts.
2. Watch from the last resourceVersion seen, with `allowWatchBookmarks` (the
   server then moves our resourceVersion forward even while this kind is
   quiet, so a reconnect after a busy hour elsewhere does not need a relist)
   and a `timeoutSeconds` the server ends the stream after.  When it does,
   watch again from where we are: no relist.
3. `410 Gone` (an ERROR event with code 410, or an HTTP 410): our
   resourceVersion is older than the server keeps history for.  Go to 1, at
   once: the 410 itself proves the server is back, whatever failed before it.
4. Any other failure (connection refused or reset, a silent connection hitting
   the client-side read timeout, an HTTP error, an ERROR event, bad JSON):
   report it, wait, and watch again from the same resourceVersion.  How long
   to wait is `k8s_retry.RetryPolicy`'s call: short probes (at most a second
   apart) while the API is unreachable, so its return is noticed at once;
   patient exponential backoff when it answers but refuses.  When the server
   itself keeps refusing the watch (an ERROR event, or an HTTP error other
   than 429 and 503, which only say "later") a few times in a row, relist:
   that gets us out of a resourceVersion it will not serve, e.g. one "too
   large" for a lagging API server.  An outage (refused connections, 503)
   resumes without a relist, unless the history moved on meanwhile (410).

5. A kind marked `optional` (a custom resource) whose list is answered `404`
   has no CRD in this cluster: it counts as an empty list (so the source's
   first sync does not wait for it, and objects of a CRD since removed are
   deleted), is logged once, and is listed again with the patient backoff
   until the CRD is installed.

The loop never ends on an error: only `stop` ends it.  What it learns goes to
`report` as `WatchReport`s (a ChangeSet, whether a full list just completed,
the watch's current errors); the caller moves them to its event loop.  Each
ChangeSet's `observed_at` is the wall-clock time its event arrived (for a
list, its first page), where a change's push latency starts.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from xds_server.model import ChangeSet
from xds_server.settings import KubernetesSettings
from xds_server.sources.k8s_kinds import ListFunction, WatchedKind
from xds_server.sources.k8s_retry import ResourceExpired, RetryPolicy, WatchFailed
from xds_server.sources.k8s_state import (
    KubernetesSourceError,
    WatchedObjects,
    resource_version_of,
)
from xds_server.sources.metrics import (
    RESTART_EXPIRED,
    RESTART_FAILED,
    RESTART_NOT_SERVED,
    SourceMetrics,
)

__all__ = ["ResourceWatch", "WatchReport"]

logger = logging.getLogger(__name__)

HTTP_GONE = 410
HTTP_NOT_FOUND = 404
MIN_HEALTHY_WATCH_S = 1.0
"""A watch the server ends sooner than this, with no event, counts as a failure
(so a server that closes every watch at once cannot make us spin)."""


@dataclass(frozen=True)
class WatchReport:
    """What one watch learned: sent from its thread to the source."""

    watch: str
    changes: ChangeSet
    synced: bool = False
    """A full list has just been applied."""
    errors: tuple[KubernetesSourceError, ...] | None = None
    """The watch's problems now, when they changed (None: unchanged)."""


def _lines(response: Any) -> Iterator[str]:
    """The newline-delimited JSON of a watch response, one line at a time."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line.decode("utf-8")
    if buffer.strip():
        yield buffer.decode("utf-8")


class KindNotServed(Exception):
    """An optional kind's list was answered 404: its CRD is not installed."""

    def __init__(self, cause: ApiException) -> None:
        super().__init__(_describe_api_error(cause))
        self.cause = cause


def _describe_api_error(error: ApiException) -> str:
    """`HTTP 403 Forbidden: services is forbidden: User ... cannot list ...`."""
    text = f"HTTP {error.status} {error.reason or ''}".rstrip()
    try:
        status = json.loads(error.body) if error.body else None
    except (TypeError, ValueError):
        status = None
    if isinstance(status, Mapping) and isinstance(status.get("message"), str):
        text = f"{text}: {status['message']}"
    return text


class ResourceWatch:
    """One list-then-watch loop, for one kind in one namespace (None: all namespaces)."""

    def __init__(
        self,
        kind: WatchedKind,
        namespace: str | None,
        lists: tuple[ListFunction, ListFunction],
        settings: KubernetesSettings,
        report: Callable[[WatchReport], None],
        *,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        metrics: SourceMetrics | None = None,
    ) -> None:
        """`monotonic` and `sleep` (default: a wait that `stop` cuts short) are the
        watch's clock, which tests replace with a fake one."""
        self.kind = kind
        self.namespace = namespace
        self.name = kind.describe(namespace)
        in_namespace, in_all = lists
        self._list_function = in_all if namespace is None else in_namespace
        self._settings = settings
        self._report = report
        self._rng = rng or random.Random()
        self._metrics = metrics
        self.objects = WatchedObjects(self.name, kind.api_version, kind.kind, kind.convert)
        self._failure: KubernetesSourceError | None = None
        self._reported_errors: tuple[KubernetesSourceError, ...] = ()
        self._not_served = False
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._stop = threading.Event()
        self._monotonic = monotonic
        self._sleep = sleep or self._stop.wait
        self._retry = RetryPolicy(
            settings.backoff_initial,
            settings.backoff_max,
            self._rng,
            probe_max=settings.outage_probe_max,
        )

    # -- control, from other threads --------------------------------------
    def stop(self) -> None:
        """Ask `run` to return; unblocks a watch waiting for the server."""
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    # -- the loop ------------------------------------------------------------
    def run(self) -> None:
        """List and watch until `stop()`; never raises."""
        need_list = True
        while not self._stop.is_set():
            delay = 0.0
            operation = "list"
            try:
                if need_list:
                    self._list()
                    need_list = False
                operation = "watch"
                delay = self._retry.watch_ended(self._watch())
            except ResourceExpired as error:
                need_list = True
                delay = self._retry.expired()
                logger.info("%s: %s; relisting%s", self.name, error, _after(delay))
                self._restarted(RESTART_EXPIRED)
            except KindNotServed as error:
                need_list = True
                delay = self._retry.failed(error.cause).delay
                self._restarted(RESTART_NOT_SERVED)
            except Exception as error:
                if self._stop.is_set():
                    break
                retry = self._retry.failed(error)
                delay, need_list = retry.delay, need_list or retry.relist
                self._failed(operation, error, delay)
                self._restarted(RESTART_FAILED)
            if delay and not self._stop.is_set():
                self._sleep(delay)
        logger.debug("%s: stopped", self.name)

    def _list(self) -> None:
        """A full, paginated list; replaces what this watch held."""
        items: list[Mapping[str, Any]] = []
        token: str | None = None
        observed_at: float | None = None
        while True:
            params: dict[str, Any] = {"limit": self._settings.list_page_size}
            if token:
                params["_continue"] = token
            try:
                page = self._call(
                    params, (self._settings.connect_timeout, self._settings.list_timeout)
                )
            except ApiException as error:
                if error.status == HTTP_NOT_FOUND and self.kind.optional and token is None:
                    self._absent(error)
                raise
            observed_at = observed_at or time.time()
            try:
                body: Any = json.loads(page.data)
            finally:
                page.release_conn()
            if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
                raise ValueError("the list response has no items")
            items.extend(item for item in body["items"] if isinstance(item, Mapping))
            metadata = body.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                version = str(metadata.get("resourceVersion") or "")
                break
        if not version:
            raise ValueError("the list response has no metadata.resourceVersion")
        self._failure = None
        if self._not_served:
            logger.info("%s: served now", self.name)
            self._not_served = False
        changes = self.objects.replace(items, version)
        changes.observed_at = observed_at
        logger.info(
            "%s: listed %d objects at resourceVersion %s (%d changes)",
            self.name, len(items), version, len(changes),
        )  # fmt: skip
        self._send(changes, synced=True)

    def _watch(self) -> bool:
        """One watch request, read until the server ends it; False if it was suspiciously short."""
        timeout_seconds = max(1, round(self._settings.watch_timeout * self._rng.uniform(1.0, 2.0)))
        params: dict[str, Any] = {
            "watch": True,
            "resource_version": self.objects.resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_seconds,
        }
        read_timeout = timeout_seconds + self._settings.read_timeout_margin
        started = self._monotonic()
        response = self._call(params, (self._settings.connect_timeout, read_timeout))
        events = 0
        with self._response_lock:
            self._response = response
        try:
            if self._stop.is_set():
                return True
            if self._failure is not None:
                logger.info("%s: watching again", self.name)
                self._failure = None
                self._send(ChangeSet())
            for line in _lines(response):
                self._event(json.loads(line), time.time())
                if not events:
                    self._retry.progressed()
                events += 1
                if self._stop.is_set():
                    break
        finally:
            with self._response_lock:
                self._response = None
            response.close()
            response.release_conn()
        return events > 0 or self._monotonic() - started >= min(
            MIN_HEALTHY_WATCH_S, timeout_seconds / 2
        )

    def _event(self, event: Any, observed_at: float) -> None:
        if not isinstance(event, Mapping) or not isinstance(event.get("object"), Mapping):
            raise ValueError(f"malformed watch event: {str(event)[:200]}")
        kind, obj = event.get("type"), event["object"]
        if kind == "BOOKMARK":
            self.objects.bookmark(resource_version_of(obj))
        elif kind == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason") or ""
            if code == HTTP_GONE:
                raise ResourceExpired(f"watch expired: {message}")
            raise WatchFailed(f"the server ended the watch: {code} {message}".rstrip())
        elif kind in ("ADDED", "MODIFIED", "DELETED"):
            changes = self.objects.apply_event(kind, obj)
            changes.observed_at = observed_at
            self._send(changes)
        else:
            logger.debug("%s: ignoring a %r event", self.name, kind)

    def _call(self, params: dict[str, Any], timeout: tuple[float, float]) -> Any:
        """Call the kind's list function; the raw urllib3 response on success."""
        if self.namespace is not None:
            params["namespace"] = self.namespace
        if self.kind.label_selector:
            params["label_selector"] = self.kind.label_selector
        try:
            response = self._list_function(
                **params, _preload_content=False, _request_timeout=timeout
            )
        except ApiException as error:
            if error.status == HTTP_GONE:
                raise ResourceExpired(_describe_api_error(error)) from None
            raise
        self._retry.answered()
        return response

    def _absent(self, error: ApiException) -> None:
        """The kind's CRD is not installed: it has no objects (and the first sync may go on)."""
        level = logging.DEBUG if self._not_served else logging.WARNING
        logger.log(
            level, "%s: not served (%s): is its CRD installed? Listing again, with backoff",
            self.name, _describe_api_error(error),
        )  # fmt: skip
        self._not_served = True
        self._failure = None
        changes = self.objects.replace((), self.objects.resource_version or "")
        self._send(changes, synced=True)
        raise KindNotServed(error)

    # -- reporting -----------------------------------------------------------
    def _restarted(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.watch_restarted(self.kind.kind, reason)

    def _failed(self, verb: str, error: Exception, delay: float) -> None:
        text = _describe_api_error(error) if isinstance(error, ApiException) else str(error)
        problem = KubernetesSourceError(
            self.name, None, None, f"{verb} failed: {text or type(error).__name__}"
        )
        level = logging.WARNING if problem != self._failure else logging.DEBUG
        logger.log(level, "%s; retrying in %.1fs", problem, delay)
        self._failure = problem
        self._send(ChangeSet())

    def _send(self, changes: ChangeSet, *, synced: bool = False) -> None:
        errors = self.objects.errors
        if self._failure is not None:
            errors = (self._failure, *errors)
        changed_errors = errors != self._reported_errors
        if not (changes or synced or changed_errors):
            return
        self._reported_errors = errors
        self._report(WatchReport(self.name, changes, synced, errors if changed_errors else None))


def _after(delay: float) -> str:
    return f" in {delay:.1f}s" if delay else ""


def _shutdown(response: Any) -> None:
    """Unblock a thread reading `response`: shut its socket down (closing is not enough)."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:  # urllib3 >= 2.3
            shutdown()
            return
        connection = getattr(response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
