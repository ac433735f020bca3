"""A Kubernetes API server for tests: kmock's emulator, taught the list/watch protocol.

Stock `kmock.KubernetesEmulator` serves objects over real HTTP, but not the
protocol a watcher depends on: it assigns no resourceVersion, replays every
object as ADDED on each new watch whatever `resourceVersion` is asked, and
ignores `labelSelector`, `timeoutSeconds`, `limit` and `continue`.
`ApiServerEmulator` fills those gaps the way the API server behaves:

* every write takes the next value of one cluster-wide counter as its
  `metadata.resourceVersion` (as etcd's revision), and a list answers with
  the counter as `metadata.resourceVersion`; list items come without `kind`
  and `apiVersion`, as the real API sends them;
* `limit` and `continue` page a list from one snapshot; `expire_continue_tokens`
  (from `list_hook`, say) makes the next continue a `410 Expired`;
* a watch from resourceVersion N replays only the events after N, from a
  bounded event history (`history_limit`), then streams live ones; a watch
  without a resourceVersion (or "0") starts with an ADDED per object; a watch
  from before the history window is answered `410 Gone` (an ERROR event, or
  an HTTP 410 with `gone_as_http`), and `compact()` forces that window past
  every watcher;
* `allowWatchBookmarks=true` gets a BOOKMARK carrying the current revision
  whenever the stream has been quiet for `bookmark_interval` seconds, and one
  just before `timeoutSeconds` ends it (as the API server's watch cache does);
* `timeoutSeconds` ends the stream (cleanly) when it expires;
* `labelSelector` filters lists and watches, with the API server's
  transitions: an object that stops matching is DELETED from a watch, one that
  starts matching is ADDED;
* the test controls the connection: `drop_watches()` aborts every open watch
  (a broken TCP connection), `stall_watches()` makes them go silent without
  closing (only the client's read timeout can notice), and `unavailable`
  answers 503 for the named resources (or "*") as an API server being
  restarted does.

`served_api()` serves one emulator on a fixed port that a test can take away
(`ServedApi.stop`: every connection reset, new ones refused, as when the API
server process dies) and bring back with the same state (`ServedApi.start`).

Writes go through the test's own methods (`create`, `replace`, `apply`,
`patch`, `delete`) or over HTTP (POST, PUT, PATCH as a JSON merge patch,
DELETE).  `list_requests`/`watch_requests` show what the client asked.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import itertools
import re
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import attrs
import kmock
import pytest
from e2e_mesh import plane_settings
from kmock._internal import apps, rendering
from kubernetes import client

from xds_server.app import ControlPlane
from xds_server.settings import KubernetesSettings

ResourceKey = tuple[str, str, str]
"""(group, version, plural); the core group is ""."""
ObjectName = tuple[str, str]
"""(namespace, name); namespace "" for cluster-scoped objects."""

SERVICES: ResourceKey = ("", "v1", "services")
PODS: ResourceKey = ("", "v1", "pods")
ENDPOINT_SLICES: ResourceKey = ("discovery.k8s.io", "v1", "endpointslices")
SECRETS: ResourceKey = ("", "v1", "secrets")
"""The control plane keeps its root CA in one (`security.ca_store`)."""
KINDS: dict[ResourceKey, str] = {
    SERVICES: "Service",
    PODS: "Pod",
    ENDPOINT_SLICES: "EndpointSlice",
    SECRETS: "Secret",
}
HTTP_ROUTES: ResourceKey = ("gateway.networking.k8s.io", "v1", "httproutes")
GRPC_ROUTES: ResourceKey = ("gateway.networking.k8s.io", "v1", "grpcroutes")
BACKEND_POLICIES: ResourceKey = ("policy.xds-server.dev", "v1alpha1", "backendpolicies")
CUSTOM_KINDS: dict[ResourceKey, str] = {
    HTTP_ROUTES: "HTTPRoute",
    GRPC_ROUTES: "GRPCRoute",
    BACKEND_POLICIES: "BackendPolicy",
}
"""Custom resources the emulator serves once a test calls `install_crd` (404 until then)."""


def resource_of(obj: Mapping[str, Any]) -> ResourceKey:
    """The resource a manifest belongs to, from its apiVersion and kind."""
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    for key, kind in (KINDS | CUSTOM_KINDS).items():
        if (key[0], key[1], kind) == (group, version, obj["kind"]):
            return key
    return (group, version, f"{str(obj['kind']).lower()}s")


def _api_version(resource: ResourceKey) -> str:
    return f"{resource[0]}/{resource[1]}" if resource[0] else resource[1]


def _name_of(obj: Mapping[str, Any]) -> ObjectName:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or "default"), str(metadata["name"])


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: nested maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# -- label selectors ------------------------------------------------------------------

_SET_RULE = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_VALUE_RULE = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on the commas that separate requirements (not those inside `in (a,b)`)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part for part in (*parts, current) if part.strip()]


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Label selector semantics: `a=b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`."""
    for requirement in _split_selector(selector or ""):
        if match := _VALUE_RULE.match(requirement):
            key, operator, value = match.groups()
            if (labels.get(key) == value) != (operator != "!="):
                return False
            continue
        match = _SET_RULE.match(requirement)
        if match is None:
            raise ValueError(f"unsupported label selector {requirement!r}")
        negated, key, operator, values = match.groups()
        if operator:
            choices = {v.strip() for v in values.split(",")}
            if (labels.get(key) in choices) != (operator == "in"):
                return False
        elif (key in labels) == bool(negated):
            return False
    return True


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


# -- the emulator ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    revision: int
    resource: ResourceKey
    type: str
    obj: dict[str, Any]
    previous: dict[str, Any] | None = None


@dataclass(eq=False)
class _Watcher:
    resource: ResourceKey
    namespace: str | None
    selector: str | None
    transport: asyncio.BaseTransport | None
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)
    stalled: bool = False

    def translate(self, event: _Event) -> dict[str, Any] | None:
        """The event as this watcher sees it (selector transitions), or None."""
        if event.resource != self.resource:
            return None
        if self.namespace is not None and _name_of(event.obj)[0] != self.namespace:
            return None
        now = selector_matches(self.selector, _labels(event.obj))
        before = event.previous is not None and selector_matches(
            self.selector, _labels(event.previous)
        )
        kind = event.type
        if kind == "MODIFIED" and now != before:
            kind = "ADDED" if now else "DELETED"
        elif not now and not (kind == "DELETED" and before):
            return None
        return {"type": kind, "object": event.obj}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiError(kmock.KubernetesError):
    """An API error answered as a Status (kmock renders it with its status code)."""


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with resourceVersions, history, 410 Gone and bookmarks."""

    history_limit: int = 1000
    bookmark_interval: float = 0.2
    gone_as_http: bool = False
    unavailable: set[str] = attrs.field(factory=set)
    """Plurals (or "*") answered 503 Service Unavailable."""
    list_hook: Callable[[rendering.Request], None] | None = None
    """Called before each list request is answered (e.g. to expire continue tokens)."""

    _revision: int = attrs.field(default=0, init=False)
    _compacted: int = attrs.field(default=0, init=False)
    _store: dict[ResourceKey, dict[ObjectName, dict[str, Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False
    )
    _history: collections.deque[_Event] = attrs.field(factory=collections.deque, init=False)
    _watchers: set[_Watcher] = attrs.field(factory=set, init=False)
    _snapshots: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _tokens: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in KINDS:
            self._store[resource] = {}

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.end_watches()
        await super().__aexit__(exc_type, exc_value, traceback)

    def end_watches(self) -> None:
        """End every watch stream cleanly (before the HTTP server stops)."""
        self._closing = True
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    # -- state, for tests ---------------------------------------------------------
    @property
    def revision(self) -> int:
        """The resourceVersion of the latest write."""
        return self._revision

    def install_crd(self, resource: ResourceKey) -> None:
        """Serve a custom resource (see CUSTOM_KINDS), as once its CRD is applied."""
        self._store.setdefault(resource, {})

    def objects_of(self, resource: ResourceKey) -> dict[ObjectName, dict[str, Any]]:
        return dict(self._store[resource])

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        resource, name = resource_of(obj), _name_of(obj)
        if name in self._store[resource]:
            raise ApiError(409, "AlreadyExists", f"{name[1]} already exists")
        return self._write(resource, name, "ADDED", obj)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        resource, name = resource_of(obj), _name_of(obj)
        if name not in self._store[resource]:
            raise ApiError(404, "NotFound", f"{name[1]} not found")
        return self._write(resource, name, "MODIFIED", obj)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace, as `kubectl apply` of a whole object does."""
        resource, name = resource_of(obj), _name_of(obj)
        kind = "MODIFIED" if name in self._store[resource] else "ADDED"
        return self._write(resource, name, kind, obj)

    def patch(
        self, resource: ResourceKey, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        current = self._store[resource].get((namespace, name))
        if current is None:
            raise ApiError(404, "NotFound", f"{name} not found")
        return self._write(resource, (namespace, name), "MODIFIED", merge_patch(current, patch))

    def delete(self, resource: ResourceKey, namespace: str, name: str) -> dict[str, Any]:
        current = self._store[resource].pop((namespace, name), None)
        if current is None:
            raise ApiError(404, "NotFound", f"{name} not found")
        self._revision += 1
        final = merge_patch(current, {"metadata": {"resourceVersion": str(self._revision)}})
        self._record(_Event(self._revision, resource, "DELETED", final, current))
        return final

    def compact(self) -> None:
        """Forget all history: every watch from an earlier resourceVersion gets 410 Gone."""
        self._history.clear()
        self._compacted = self._revision

    def expire_continue_tokens(self) -> None:
        self._snapshots.clear()

    def drop_watches(self) -> int:
        """Abort every open watch connection, as a network failure would; returns how many."""
        dropped = 0
        for watcher in list(self._watchers):
            if watcher.transport is not None and not watcher.transport.is_closing():
                watcher.transport.abort()  # type: ignore[attr-defined]
                dropped += 1
        return dropped

    def stall_watches(self) -> None:
        """Open watches go silent (no events, no bookmarks, no timeout) until the client leaves."""
        for watcher in self._watchers:
            watcher.stalled = True

    @property
    def open_watches(self) -> int:
        return sum(1 for watcher in self._watchers if not watcher.stalled)

    def list_requests(self, resource: ResourceKey) -> list[kmock.Request]:
        return self._requests_of(kmock.action.LIST, resource)

    def watch_requests(self, resource: ResourceKey) -> list[kmock.Request]:
        return self._requests_of(kmock.action.WATCH, resource)

    def _requests_of(self, action: kmock.action, resource: ResourceKey) -> list[kmock.Request]:
        return [
            request
            for request in list(self._requests)
            if request.action == action and _key(request) == resource
        ]

    # -- writes ---------------------------------------------------------------------
    def _write(
        self, resource: ResourceKey, name: ObjectName, kind: str, obj: Mapping[str, Any]
    ) -> dict[str, Any]:
        previous = self._store[resource].get(name)
        self._revision += 1
        stored = copy.deepcopy(dict(obj))
        stored["apiVersion"] = _api_version(resource)
        stored["kind"] = KINDS.get(resource, obj.get("kind"))
        metadata = stored.setdefault("metadata", {})
        metadata["namespace"] = name[0]
        metadata["resourceVersion"] = str(self._revision)
        metadata.setdefault("uid", f"uid-{name[0]}-{name[1]}")
        self._store[resource][name] = stored
        self._record(_Event(self._revision, resource, kind, stored, previous))
        return copy.deepcopy(stored)

    def _record(self, event: _Event) -> None:
        self._history.append(event)
        while len(self._history) > self.history_limit:
            self._compacted = self._history.popleft().revision
        for watcher in self._watchers:
            watcher.queue.put_nowait(event)

    # -- HTTP -------------------------------------------------------------------------
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = _key(request)
        if resource is None:
            return await apps.RawHandler._handle(self, request)  # discovery and the like
        if "*" in self.unavailable or resource[2] in self.unavailable:
            return aiohttp.web.json_response(
                _status(503, "ServiceUnavailable", "the server is currently unavailable"),
                status=503,
            )
        try:
            written = self._http_write(request, resource)
        except ApiError as error:
            return aiohttp.web.json_response(
                _status(error.status, error.reason or "", error.message or ""), status=error.status
            )
        if written is not None:
            return aiohttp.web.json_response(
                written, status=201 if request.method == "POST" else 200
            )
        # Reads go through kmock's reactions first (a test may intercept them), then ours.
        return await apps.RawHandler._handle(self, request)

    def _http_write(
        self, request: rendering.Request, resource: ResourceKey
    ) -> dict[str, Any] | None:
        method, namespace = request.method, request.namespace or "default"
        body = request.data if isinstance(request.data, Mapping) else {}
        if method == "POST" and request.name is None:
            obj = merge_patch(body, {"metadata": {"namespace": namespace}})
            return self._write_new(resource, obj)
        if method == "PUT" and request.name is not None:
            obj = merge_patch(body, {"metadata": {"namespace": namespace, "name": request.name}})
            if (namespace, request.name) not in self._store[resource]:
                raise ApiError(404, "NotFound", f"{request.name} not found")
            return self._write(resource, (namespace, request.name), "MODIFIED", obj)
        if method == "PATCH" and request.name is not None:
            return self.patch(resource, namespace, request.name, body)
        if method == "DELETE" and request.name is not None:
            return self.delete(resource, namespace, request.name)
        return None

    def _write_new(self, resource: ResourceKey, obj: dict[str, Any]) -> dict[str, Any]:
        name = _name_of(obj)
        if name in self._store[resource]:
            raise ApiError(409, "AlreadyExists", f"{name[1]} already exists")
        return self._write(resource, name, "ADDED", obj)

    def _known(self, request: rendering.Request) -> ResourceKey:
        resource = _key(request)
        if resource is None or resource not in self._store:
            raise kmock.KubernetesResourceNotFoundError()
        return resource

    def _matching(
        self, resource: ResourceKey, namespace: str | None, selector: str | None
    ) -> list[dict[str, Any]]:
        return [
            obj
            for (obj_namespace, _), obj in sorted(self._store[resource].items())
            if (namespace is None or obj_namespace == namespace)
            and selector_matches(selector, _labels(obj))
        ]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        resource = self._known(request)
        if self.list_hook is not None:
            self.list_hook(request)
        token = request.params.get("continue")
        if token:
            items = self._snapshots.pop(token, None)
            if items is None:
                raise ApiError(410, "Expired", "The provided continue parameter is too old")
            revision = int(token.partition(":")[0])
        else:
            selector = request.params.get("labelSelector")
            items = self._matching(resource, request.namespace, selector)
            revision = self._revision
        limit = int(request.params.get("limit") or 0)
        metadata: dict[str, Any] = {"resourceVersion": str(revision)}
        if limit and len(items) > limit:
            items, rest = items[:limit], items[limit:]
            token = f"{revision}:{next(self._tokens)}"
            self._snapshots[token] = rest
            metadata |= {"continue": token, "remainingItemCount": len(rest)}
        return {
            "kind": f"{KINDS.get(resource, 'Object')}List",
            "apiVersion": _api_version(resource),
            "metadata": metadata,
            "items": [
                {key: value for key, value in obj.items() if key not in ("kind", "apiVersion")}
                for obj in items
            ],
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        resource = self._known(request)
        obj = self._store[resource].get((request.namespace or "", request.name or ""))
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError()
        return obj

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        resource = self._known(request)
        params = request.params
        since = params.get("resourceVersion") or "0"
        if not since.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}")
        raw = request._raw_request
        watcher = _Watcher(
            resource,
            request.namespace,
            params.get("labelSelector"),
            raw.transport if raw is not None else None,
        )
        expired = int(since) != 0 and int(since) < self._compacted
        if int(since) == 0:  # "start at most recent": the current state, as ADDED
            backlog = [
                {"type": "ADDED", "object": obj}
                for obj in self._matching(resource, watcher.namespace, watcher.selector)
            ]
        else:
            backlog = [
                translated
                for event in self._history
                if event.revision > int(since) and (translated := watcher.translate(event))
            ]
        if expired and self.gone_as_http:
            raise ApiError(410, "Gone", f"too old resource version: {since} ({self._compacted})")
        yield b""  # send the headers now: the client is watching
        if expired:
            message = f"too old resource version: {since} ({self._compacted})"
            yield {"type": "ERROR", "object": _status(410, "Expired", message)}
            return
        self._watchers.add(watcher)  # no await since the backlog was taken: nothing is missed
        try:
            for event in backlog:
                yield event
            async for event in self._live(watcher, params):
                yield event
        finally:
            self._watchers.discard(watcher)

    async def _live(
        self, watcher: _Watcher, params: Mapping[str, str]
    ) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        timeout = params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        bookmarks = params.get("allowWatchBookmarks") == "true"
        while not self._closing:
            if watcher.stalled:
                await self._until_client_leaves(watcher)
                return
            remaining = deadline - loop.time() if deadline is not None else None
            if remaining is not None and remaining <= 0:
                if bookmarks:  # as the API server does, a last bookmark before the end
                    yield self._bookmark(watcher)
                return  # timeoutSeconds: the server ends the watch
            wait = min(
                remaining if remaining is not None else float("inf"),
                self.bookmark_interval if bookmarks else float("inf"),
            )
            try:
                async with asyncio.timeout(None if wait == float("inf") else wait):
                    event = await watcher.queue.get()
            except TimeoutError:
                if bookmarks and not watcher.stalled:
                    yield self._bookmark(watcher)
                continue
            if event is None or watcher.stalled:
                continue
            translated = watcher.translate(event)
            if translated is not None:
                yield translated

    def _bookmark(self, watcher: _Watcher) -> dict[str, Any]:
        """Everything up to the current revision has been sent to this watcher."""
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": KINDS.get(watcher.resource, "Object"),
                "apiVersion": _api_version(watcher.resource),
                "metadata": {"resourceVersion": str(self._revision)},
            },
        }

    async def _until_client_leaves(self, watcher: _Watcher) -> None:
        while not self._closing and watcher.transport is not None:
            if watcher.transport.is_closing():
                return
            await asyncio.sleep(0.05)


def _key(request: rendering.Request) -> ResourceKey | None:
    resource = request.resource
    if resource is None or not isinstance(resource.plural, str):
        return None
    return (str(resource.group or ""), str(resource.version or ""), resource.plural)


# -- manifests ------------------------------------------------------------------------


def service(
    name: str,
    *,
    namespace: str = "default",
    port: int = 8080,
    target_port: int | None = None,
    selector: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector if selector is not None else {"app": name}),
            "ports": [{"name": "http", "port": port, "targetPort": target_port or port}],
            "type": "ClusterIP",
        },
    }


def endpoint_slice(
    service_name: str,
    addresses: Iterable[str],
    port: int,
    *,
    namespace: str = "default",
    name: str | None = None,
    pod_names: Iterable[str] | None = None,
) -> dict[str, Any]:
    pods = list(pod_names) if pod_names is not None else None
    endpoints = []
    for index, address in enumerate(addresses):
        endpoint: dict[str, Any] = {"addresses": [address], "conditions": {"ready": True}}
        if pods is not None:
            endpoint["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": pods[index]}
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-abcde",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }


def pod(
    name: str,
    ip: str | None,
    *,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    service_account: str = "default",
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running" if ip else "Pending"}
    if ip:
        status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "sample-app:latest"}],
            "nodeName": "node-1",
        },
        "status": status,
    }


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
async def api_server() -> AsyncIterator[ApiServerEmulator]:
    """The emulated API server on a free 127.0.0.1 port; stopped after the test."""
    async with ApiServerEmulator() as emulator, kmock.Server(emulator):
        try:
            yield emulator
        finally:
            emulator.end_watches()


@pytest.fixture
def kube_configuration(api_server: ApiServerEmulator) -> client.Configuration:
    """An official-client configuration pointing at the emulated API server."""
    configuration = client.Configuration()
    configuration.host = str(api_server.url).rstrip("/")
    return configuration


@pytest.fixture
def kubeconfig(api_server: ApiServerEmulator, tmp_path: Path) -> Path:
    """A kubeconfig file for the emulated API server (as `--kubeconfig` takes)."""
    return write_kubeconfig(tmp_path / "kubeconfig", str(api_server.url))


def write_kubeconfig(path: Path, url: str) -> Path:
    """A kubeconfig at `path` naming the API server at `url`; returns `path`."""
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Config
            clusters:
              - name: emulated
                cluster: {{server: "{url.rstrip("/")}"}}
            users:
              - name: tester
                user: {{token: not-checked}}
            contexts:
              - name: emulated
                context: {{cluster: emulated, user: tester}}
            current-context: emulated
            """
        )
    )
    return path


# -- what watches it in the tests --------------------------------------------------------

FAST = KubernetesSettings(
    watch_timeout=1.0,
    read_timeout_margin=1.0,
    connect_timeout=2.0,
    list_timeout=5.0,
    backoff_initial=0.05,
    backoff_max=0.4,
)
"""A `KubernetesSource` against the emulator: short watches, quick retries."""
PLANE_KUBERNETES = KubernetesSettings(
    watch_timeout=2.0,
    read_timeout_margin=2.0,
    connect_timeout=2.0,
    list_timeout=5.0,
    backoff_initial=0.05,
    backoff_max=0.5,
)
"""The source of a whole control plane (`kubernetes_control_plane`) against the emulator."""


def kubernetes_control_plane(kubeconfig: Path, free_port: Callable[[], int]) -> ControlPlane:
    """An in-process control plane in Kubernetes mode, watching the API `kubeconfig` names."""
    kubernetes = dataclasses.replace(PLANE_KUBERNETES, kubeconfig=kubeconfig)
    return ControlPlane(plane_settings("kubernetes", free_port, kubernetes=kubernetes))


@dataclass
class ServedApi:
    """An emulator served on one 127.0.0.1 port, which the test can stop and start again.

    Served by aiohttp's raw test server, as `kmock.Server` serves it, but without
    kmock's test client and its process-wide DNS interception, which must be
    exited in the reverse order of entry: several of these start and stop in any order.
    """

    emulator: ApiServerEmulator
    port: int = 0
    _server: aiohttp.test_utils.RawTestServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen again, on the same port (a free one the first time), with the same state."""
        assert self._server is None, "already serving"
        server = aiohttp.test_utils.RawTestServer(
            self.emulator, host="127.0.0.1", port=self.port or None
        )
        await server.start_server()
        assert server.port is not None
        self._server, self.port = server, server.port

    async def stop(self) -> None:
        """Go away as a killed API server does: open watches reset, the port refuses."""
        assert self._server is not None, "not serving"
        server, self._server = self._server, None
        self.emulator.drop_watches()
        await server.close()


@contextlib.asynccontextmanager
async def served_api() -> AsyncIterator[ServedApi]:
    """A `ServedApi`, serving on entry; stopped (if serving) on exit."""
    async with ApiServerEmulator() as emulator:
        served = ServedApi(emulator)
        await served.start()
        try:
            yield served
        finally:
            emulator.end_watches()
            if served.serving:
                await served.stop()


@contextlib.contextmanager
def unavailable(api: ApiServerEmulator, *plurals: str) -> Iterator[None]:
    """The named resources (default: all) answer 503 inside the block."""
    names = set(plurals or ("*",))
    api.unavailable |= names
    try:
        yield
    finally:
        api.unavailable -= names
