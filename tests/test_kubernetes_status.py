"""Kubernetes mode: route and policy status written back to `/status`, by the Lease holder only.

Against kmock's emulated API server over real HTTP through the official
client.  The emulator (`kube_fixtures.ApiServerEmulator`) is taught here what
the status writer needs of a real API server: the Gateway API route kinds and
BackendPolicy with a `/status` subresource (a write there changes only
`status`; a spec change bumps `metadata.generation`), Leases, and optimistic
concurrency (a write naming another resourceVersion is a 409 Conflict).
Each request's bearer token says which replica sent it.
"""

# ruff: noqa: E402 - kube_fixtures is registered for assertion rewriting before it is imported

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import textwrap
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import pytest
import yaml

pytest.register_assert_rewrite("kube_fixtures")

from kmock._internal import rendering
from kube_fixtures import (
    ApiError,
    ApiServerEmulator,
    ResourceKey,
    _key,
    _status,
    kubernetes_control_plane,
    merge_patch,
    write_kubeconfig,
)
from kubernetes import client

from xds_server.model import ChangeSet, Kind, MeshSnapshot, ObjectKey
from xds_server.model.changes import MeshObject
from xds_server.model.status import CONTROLLER_NAME
from xds_server.sources.convert import convert
from xds_server.sources.k8s_status import LEASE_NAME, StatusSettings, StatusWriter

pytestmark = pytest.mark.timeout(60)

LEASES: ResourceKey = ("coordination.k8s.io", "v1", "leases")
HTTP_ROUTES: ResourceKey = ("gateway.networking.k8s.io", "v1", "httproutes")
BACKEND_POLICIES: ResourceKey = ("policy.xds-server.dev", "v1alpha1", "backendpolicies")
SERVICES: ResourceKey = ("", "v1", "services")
CUSTOM = (HTTP_ROUTES, ("gateway.networking.k8s.io", "v1", "grpcroutes"), BACKEND_POLICIES)
WAIT_S = 10.0
OTHER_CONTROLLER = "example.net/gateway-controller"


@attrs.define(kw_only=True)
class StatusApiEmulator(ApiServerEmulator):
    """The emulator, with status subresources, Leases and resourceVersion preconditions."""

    writes: list[tuple[str, str, ResourceKey, str, str | None]] = attrs.field(factory=list)
    """(replica token, method, resource, name, subresource) of every write, in order."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in (LEASES, *CUSTOM):
            self._store[resource] = {}

    def lease(self) -> dict[str, Any] | None:
        return self._store[LEASES].get(("mesh-system", LEASE_NAME))

    def holder(self) -> str | None:
        lease = self.lease()
        return (lease or {}).get("spec", {}).get("holderIdentity")

    def object(self, resource: ResourceKey, name: str, namespace: str = "shop") -> dict[str, Any]:
        return copy.deepcopy(self._store[resource][(namespace, name)])

    def status_writes(self, token: str | None = None) -> list[tuple[str, str]]:
        return [
            (who, name)
            for who, _, _, name, sub in self.writes
            if sub == "status" and (token is None or who == token)
        ]

    def _write(
        self, resource: ResourceKey, name: tuple[str, str], kind: str, obj: Mapping[str, Any]
    ) -> dict[str, Any]:
        if resource in CUSTOM:  # the API server counts spec changes in metadata.generation
            previous = self._store[resource].get(name)
            obj = copy.deepcopy(dict(obj))
            metadata = obj.setdefault("metadata", {})
            if previous is None:
                metadata.setdefault("generation", 1)
            else:
                generation = previous["metadata"].get("generation", 1)
                changed = previous.get("spec") != obj.get("spec")
                metadata["generation"] = generation + 1 if changed else generation
        return super()._write(resource, name, kind, obj)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = _key(request)
        if resource not in (LEASES, *CUSTOM) or request.name is None:
            return await super()._handle(request)
        headers = {key.lower(): value for key, value in request.headers.items()}
        token = str(headers.get("authorization", "")).removeprefix("Bearer ")
        try:
            answer = self._serve(request, resource, token)
        except ApiError as error:
            body = _status(error.status, error.reason or "", error.message or "")
            return aiohttp.web.json_response(body, status=error.status)
        return aiohttp.web.json_response(answer)

    def _serve(self, request: rendering.Request, resource: ResourceKey, token: str) -> Any:
        namespace, name = request.namespace or "default", str(request.name)
        current = self._store[resource].get((namespace, name))
        method = str(request.method.value if hasattr(request.method, "value") else request.method)
        if method.upper() == "GET":
            if current is None:
                raise ApiError(404, "NotFound", f"{name} not found")
            return current
        if current is None:
            raise ApiError(404, "NotFound", f"{name} not found")
        body = request.data if isinstance(request.data, Mapping) else {}
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please try again")
        self.writes.append((token, method.upper(), resource, name, request.subresource))
        if request.subresource == "status":  # only status changes through /status
            updated = merge_patch(current, {"status": body.get("status")})
        elif method.upper() == "PUT":
            updated = merge_patch(dict(body), {"metadata": {"namespace": namespace}})
        else:
            updated = merge_patch(current, body)
        return self._write(resource, (namespace, name), "MODIFIED", updated)


@pytest.fixture
async def api_server() -> AsyncIterator[StatusApiEmulator]:
    import kmock

    async with StatusApiEmulator() as emulator, kmock.Server(emulator):
        try:
            yield emulator
        finally:
            emulator.end_watches()


def configuration_for(api: StatusApiEmulator, token: str) -> client.Configuration:
    configuration = client.Configuration()
    configuration.host = str(api.url).rstrip("/")
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return configuration


# -- the mesh, as manifests in the API and as model values in the pipeline -------------------

MANIFESTS = [
    """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {ports: [{name: http, port: 8080}]}
    """,
    """
    apiVersion: v1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec: {ports: [{name: http, port: 8080}]}
    """,
    """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: to-api, namespace: shop}
    spec:
      parentRefs:
        - {name: gw, namespace: infra}
        - {group: "", kind: Service, name: web, port: 8080}
      rules: [{backendRefs: [{name: api, port: 8080}]}]
    status:
      parents:
        - parentRef: {name: gw, namespace: infra}
          controllerName: example.net/gateway-controller
          conditions:
            - {type: Accepted, status: "True", reason: Accepted, message: "",
               observedGeneration: 1, lastTransitionTime: "2026-01-01T00:00:00Z"}
    """,
    """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: lost, namespace: shop}
    spec:
      parentRefs: [{group: "", kind: Service, name: checkout}]
      rules: [{backendRefs: [{name: api, port: 8080}]}]
    """,
    """
    apiVersion: policy.xds-server.dev/v1alpha1
    kind: BackendPolicy
    metadata: {name: older, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
    spec:
      targetRefs: [{kind: Service, name: web}]
      connectTimeout: 1s
    """,
    """
    apiVersion: policy.xds-server.dev/v1alpha1
    kind: BackendPolicy
    metadata: {name: newer, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}
    spec:
      targetRefs: [{kind: Service, name: web}]
      connectTimeout: 2s
    """,
]
CHECKOUT = """
    apiVersion: v1
    kind: Service
    metadata: {name: checkout, namespace: shop}
    spec: {ports: [{name: http, port: 8080}]}
    """


def manifests(*texts: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(textwrap.dedent(text)) for text in texts]


@dataclass
class Pipeline:
    """What the status writer reads of the pipeline: its mesh and its rejections."""

    mesh: MeshSnapshot = field(default_factory=MeshSnapshot)
    rejected: dict[ObjectKey, str] = field(default_factory=dict)

    def __call__(
        self,
    ) -> tuple[MeshSnapshot, Mapping[ObjectKey, str], Mapping[ObjectKey, tuple[str, ...]]]:
        return self.mesh, self.rejected, {}

    def load(self, objects: list[dict[str, Any]], api: StatusApiEmulator) -> None:
        """The objects as the API server holds them (with their generation), into the mesh."""
        changes = ChangeSet()
        for manifest in objects:
            stored = api.objects_of(_resource(manifest)).get(
                (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
            )
            value: MeshObject | None = convert(stored or manifest, strict=False)
            if value is not None:
                changes.upsert(value)
        self.mesh = self.mesh.apply(changes)[0]


def _resource(manifest: Mapping[str, Any]) -> ResourceKey:
    from kube_fixtures import resource_of

    return resource_of(manifest)


def create_all(api: StatusApiEmulator, objects: list[dict[str, Any]]) -> None:
    for manifest in objects:
        obj = dict(manifest)
        status = obj.pop("status", None)
        api.create(obj)
        if status is not None:  # as its own controller would have written it
            resource = _resource(obj)
            api.patch(
                resource, obj["metadata"]["namespace"], obj["metadata"]["name"], {"status": status}
            )


SETTINGS = StatusSettings(
    namespace="mesh-system",
    lease_duration=2,
    renew_interval=0.2,
    retry_interval=0.1,
    poll_interval=0.05,
    request_timeout=3.0,
    backoff_initial=0.05,
    backoff_max=0.5,
)


@contextlib.asynccontextmanager
async def running_writer(
    api: StatusApiEmulator, pipeline: Pipeline, identity: str, **overrides: Any
) -> AsyncIterator[StatusWriter]:
    settings = dataclasses.replace(SETTINGS, identity=identity, **overrides)
    writer = StatusWriter(pipeline, settings, configuration=configuration_for(api, identity))
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(check: Callable[[], object], *, within: float = WAIT_S) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - the emulator has no event to wait on
            await asyncio.sleep(0.02)


def ours(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        p
        for p in (obj.get("status") or {}).get("parents", [])
        if p["controllerName"] == CONTROLLER_NAME
    ]


def conditions(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in entries}


def route_conditions(api: StatusApiEmulator, name: str) -> dict[str, dict[str, Any]]:
    """Our conditions on route `name` (its first Service parent) by type; {} before we wrote."""
    entries = ours(api.object(HTTP_ROUTES, name))
    return conditions(entries[0]["conditions"]) if entries else {}


def policy_conditions_of(api: StatusApiEmulator, name: str) -> dict[str, dict[str, Any]]:
    """BackendPolicy `name`'s conditions by type; {} before any were written."""
    found = (api.object(BACKEND_POLICIES, name).get("status") or {}).get("conditions")
    return conditions(found) if found else {}


def accepted_reason(found: dict[str, dict[str, Any]]) -> str | None:
    return found.get("Accepted", {}).get("reason")


def route_accepted(api: StatusApiEmulator, name: str) -> bool:
    return route_conditions(api, name).get("Accepted", {}).get("status") == "True"


def settled(writer: StatusWriter, pipeline: Pipeline) -> bool:
    """The writer has read the pipeline's latest state and has nothing left to write."""
    seen = writer._seen
    return (
        seen is not None
        and seen[0] is pipeline.mesh
        and all(writer.settled.get(k) == s for k, s in writer._desired.items())
    )


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture
def pipeline(api_server: StatusApiEmulator) -> Pipeline:
    """MANIFESTS created in the API server and, as it holds them, in the pipeline's mesh."""
    objects = manifests(*MANIFESTS)
    create_all(api_server, objects)
    loaded = Pipeline()
    loaded.load(objects, api_server)
    return loaded


async def test_status_patches_arrive_with_the_right_conditions(
    api_server: StatusApiEmulator, pipeline: Pipeline
) -> None:

    async with running_writer(api_server, pipeline, "replica-a") as writer:
        await eventually(lambda: settled(writer, pipeline) and writer.writes >= 4)
        assert api_server.holder() == "replica-a"

        to_api = api_server.object(HTTP_ROUTES, "to-api")
        parents = to_api["status"]["parents"]
        # The other controller's entry stays as it was; ours names the Service parent as written.
        assert parents[0]["controllerName"] == OTHER_CONTROLLER
        assert parents[0]["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
        [entry] = ours(to_api)
        assert entry["parentRef"] == {"group": "", "kind": "Service", "name": "web", "port": 8080}
        found = conditions(entry["conditions"])
        assert (found["Accepted"]["status"], found["Accepted"]["reason"]) == ("True", "Accepted")
        assert (found["ResolvedRefs"]["status"], found["ResolvedRefs"]["reason"]) == (
            "True",
            "ResolvedRefs",
        )
        assert found["Accepted"]["observedGeneration"] == to_api["metadata"]["generation"] == 1
        accepted_since = found["Accepted"]["lastTransitionTime"]

        lost = route_conditions(api_server, "lost")
        assert (lost["Accepted"]["status"], lost["Accepted"]["reason"]) == (
            "False",
            "NoMatchingParent",
        )
        assert "Service shop/checkout not found" in lost["Accepted"]["message"]

        newer = policy_conditions_of(api_server, "newer")
        assert (newer["Accepted"]["status"], newer["Accepted"]["reason"]) == ("False", "Conflicted")
        assert "BackendPolicy shop/older takes precedence" in newer["Accepted"]["message"]
        older = policy_conditions_of(api_server, "older")
        assert older["Accepted"]["status"] == "True"

        # The same statuses again (a new snapshot, nothing changed): nothing is written.
        writes = len(api_server.status_writes())
        pipeline.load(manifests(*MANIFESTS[:1]), api_server)
        await eventually(lambda: settled(writer, pipeline))
        assert len(api_server.status_writes()) == writes

        # The missing parent appears: `lost` turns Accepted; `to-api` keeps its transition time.
        checkout = manifests(CHECKOUT)
        create_all(api_server, checkout)
        pipeline.load(checkout, api_server)
        await eventually(lambda: route_accepted(api_server, "lost"))
        again = route_conditions(api_server, "to-api")
        assert again["Accepted"]["lastTransitionTime"] == accepted_since

        # A spec change the mesh has not seen: no stale status; once it has, the new generation.
        route = api_server.object(HTTP_ROUTES, "to-api")
        route["spec"]["rules"][0]["backendRefs"][0]["port"] = 9999
        api_server.replace(route)
        await eventually(lambda: settled(writer, pipeline))
        stale = route_conditions(api_server, "to-api")
        assert stale["ResolvedRefs"]["observedGeneration"] == 1  # not stamped with generation 2
        pipeline.load([api_server.object(HTTP_ROUTES, "to-api")], api_server)

        def resolved_refs_of_generation_2() -> dict[str, Any] | None:
            entry = route_conditions(api_server, "to-api")
            refs = entry["ResolvedRefs"]
            return refs if refs["observedGeneration"] == 2 else None

        await eventually(resolved_refs_of_generation_2)
        refs = resolved_refs_of_generation_2()
        assert refs is not None and (refs["status"], refs["reason"]) == ("False", "BackendNotFound")
        assert "has no port 9999" in refs["message"]

        # A rejected policy: Accepted=False Invalid with the message; our ResolvedRefs goes.
        key = ObjectKey(Kind.BACKEND_POLICY, "shop", "older")
        pipeline.rejected = {
            key: "BackendPolicy shop/older: spec.outlierDetection.interval: must be longer than 0s"
        }
        pipeline.mesh = pipeline.mesh.apply(ChangeSet())[0]

        def rejected() -> dict[str, dict[str, Any]] | None:
            found = policy_conditions_of(api_server, "older")
            return found if found["Accepted"]["reason"] == "Invalid" else None

        await eventually(rejected)
        shown = rejected()
        assert shown is not None and set(shown) == {"Accepted"}
        assert "spec.outlierDetection.interval" in shown["Accepted"]["message"]

    assert api_server.holder() is None  # a graceful stop releases the Lease


async def test_only_the_lease_holder_writes_and_another_takes_over_when_it_stops_renewing(
    api_server: StatusApiEmulator, pipeline: Pipeline
) -> None:

    a = running_writer(api_server, pipeline, "replica-a", release_on_stop=False)
    writer_a = await a.__aenter__()
    try:
        await eventually(lambda: settled(writer_a, pipeline) and api_server.holder() == "replica-a")
        async with running_writer(api_server, pipeline, "replica-b") as writer_b:
            # B watches A renew for more than a Lease duration, and writes nothing.
            renewals = len([w for w in api_server.writes if w[0] == "replica-a" and w[2] == LEASES])
            await eventually(
                lambda: (
                    len([w for w in api_server.writes if w[0] == "replica-a" and w[2] == LEASES])
                    >= renewals + 12
                )
            )
            assert api_server.holder() == "replica-a"
            assert not writer_b.lease.held if writer_b.lease else True
            assert [w for w in api_server.writes if w[0] == "replica-b"] == []

            # A stops renewing (a crash: the Lease is not released); a change needs writing.
            await a.__aexit__(None, None, None)
            stopped = asyncio.get_running_loop().time()
            checkout = manifests(CHECKOUT)
            create_all(api_server, checkout)
            pipeline.load(checkout, api_server)

            await eventually(lambda: api_server.holder() == "replica-b", within=WAIT_S)
            took_over = asyncio.get_running_loop().time() - stopped
            assert took_over >= SETTINGS.lease_duration * 0.9  # it waited the Lease out
            await eventually(lambda: route_accepted(api_server, "lost"))
            assert ("replica-b", "lost") in api_server.status_writes("replica-b")
            assert api_server.lease()["spec"]["leaseTransitions"] == 1
            # No two writers at once: every status write of A came before B's first Lease write.
            first_b = next(i for i, w in enumerate(api_server.writes) if w[0] == "replica-b")
            assert all(w[0] == "replica-b" for w in api_server.writes[first_b:])
            assert writer_b.lease is not None and writer_b.lease.held
    finally:
        with contextlib.suppress(Exception):
            await a.__aexit__(None, None, None)


async def test_a_control_plane_watches_routes_and_policies_and_writes_their_status_back(
    api_server: StatusApiEmulator, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    create_all(api_server, manifests(*MANIFESTS))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", str(api_server.url))
    plane = kubernetes_control_plane(kubeconfig, free_port)
    task = asyncio.create_task(plane.run())
    try:
        await asyncio.wait_for(plane.started.wait(), timeout=15)

        def reason(name: str) -> str | None:
            return accepted_reason(route_conditions(api_server, name))

        def policy_reason(name: str) -> str | None:
            return accepted_reason(policy_conditions_of(api_server, name))

        await eventually(
            lambda: (
                (reason("to-api"), reason("lost"), policy_reason("newer"))
                == ("Accepted", "NoMatchingParent", "Conflicted")
            )
        )
        assert api_server.holder() is not None

        # Watched: the missing parent appears in the API, and the route is accepted.
        api_server.create(manifests(CHECKOUT)[0])
        await eventually(lambda: reason("lost") == "Accepted")

        # A spec the API server takes but the mesh refuses (RE2 has no backreferences):
        # Accepted=False, Invalid, naming the field, for the generation the API holds.
        route = api_server.object(HTTP_ROUTES, "lost")
        route["spec"]["rules"][0]["matches"] = [
            {"path": {"type": "RegularExpression", "value": "/(a)\\1"}}
        ]
        api_server.replace(route)
        await eventually(lambda: reason("lost") == "Invalid")
        [entry] = ours(api_server.object(HTTP_ROUTES, "lost"))
        accepted = conditions(entry["conditions"])["Accepted"]
        assert "spec.rules[0].matches[0].path.value" in accepted["message"]
        assert accepted["observedGeneration"] == 2
        assert [p.key for p in plane.policy_statuses() if p.rejected] == [
            ObjectKey(Kind.HTTP_ROUTE, "shop", "lost")
        ]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)


def test_settings_come_from_the_downward_api() -> None:
    settings = StatusSettings.from_environment({"POD_NAMESPACE": "mesh", "POD_NAME": "xds-0"})
    assert (settings.namespace, settings.who()) == ("mesh", "xds-0")
    unnamed = StatusSettings(identity="")
    assert unnamed.who() != unnamed.who()  # each replica its own name
