"""The file source reads routes and policies beside Services, into the MeshSnapshot.

A real `FileSource` watches a real directory; what it emits is applied to a
`MeshSnapshot`, as the pipeline applies it.  A broken route is reported
naming its file, line, object and field, and keeps its last good version,
while the good objects around it apply.
"""

from __future__ import annotations

from pathlib import Path

from file_source_fixtures import Mesh, running_source, svc, until, write

from xds_server.model import Kind, MeshSnapshot, ObjectKey
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import GRPCRoute, HTTPRoute

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web}}]
  rules:
  - backendRefs: [{{name: web, port: 80, weight: {weight}}}]
"""
GRPC_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{method: {service: echo.Echo}}], backendRefs: [{name: web, port: 80}]}]
"""
POLICY = """\
apiVersion: policy.xds-server.dev/v1alpha1
kind: BackendPolicy
metadata: {{name: {name}, namespace: default{created}}}
spec:
  targetRefs: [{{kind: Service, name: web}}]
  connectionPool: {{maxConnections: {connections}}}
"""


def route(name: str = "split", weight: int = 1) -> str:
    return ROUTE.format(name=name, weight=weight)


def policy(name: str = "limits", connections: int = 1, created: str | None = None) -> str:
    stamp = f", creationTimestamp: '{created}'" if created else ""
    return POLICY.format(name=name, connections=connections, created=stamp)


def snapshot(mesh: Mesh) -> MeshSnapshot:
    """The snapshot the pipeline would hold after every ChangeSet the source emitted."""
    current = MeshSnapshot()
    for changes in mesh.changes:
        current, _ = current.apply(changes)
    return current


async def test_routes_and_policies_reach_the_snapshot_and_a_broken_route_keeps_its_last_good(
    tmp_path: Path,
) -> None:
    write(tmp_path / "web.yaml", svc("web"), route(), policy())
    write(tmp_path / "grpc.yaml", GRPC_ROUTE)
    async with running_source(tmp_path) as (source, mesh):
        mesh_now = snapshot(mesh)
        split = mesh_now.http_routes[("default", "split")]
        assert {type(r) for r in mesh_now.routes_for("default", "web")} == {HTTPRoute, GRPCRoute}
        attached = mesh_now.backend_policy_for(mesh_now.services[("default", "web")])
        assert attached is not None and attached.policy.name == "limits"
        assert attached.policy.spec().connection_pool.max_connections.value == 1
        assert split.origin is not None and split.origin.file == str(tmp_path / "web.yaml")
        assert source.errors == []

        # The route breaks (a weight out of range), the policy and a new route change.
        write(
            tmp_path / "web.yaml",
            svc("web"),
            route(weight=-5),
            policy(connections=7),
            route("other", 3),
        )
        text = (tmp_path / "web.yaml").read_text().splitlines()
        line = next(i for i, t in enumerate(text, 1) if "weight: -5" in t)
        await until(lambda: ("default", "other") in snapshot(mesh).http_routes)
        mesh_now = snapshot(mesh)
        assert mesh_now.http_routes[("default", "split")].rules == split.rules  # last good
        policy_now = mesh_now.backend_policies[("default", "limits")]
        assert policy_now.spec().connection_pool.max_connections.value == 7
        (error,) = source.errors
        assert str(error) == (
            f"{tmp_path / 'web.yaml'}:{line}: HTTPRoute default/split: "
            "spec.rules[0].backendRefs[0].weight: must be an integer 0-1000000, got -5"
        )

        # Fixed: the error goes, the new version applies.
        write(tmp_path / "web.yaml", svc("web"), route(weight=9), policy(connections=7))
        other = ObjectKey(Kind.HTTP_ROUTE, "default", "other")
        await until(lambda: not source.errors and other not in mesh.objects)
        route_now = snapshot(mesh).http_routes[("default", "split")]
        assert route_now.rules[0].backend_refs[0].weight == 9


async def test_a_broken_policy_is_named_and_deleting_a_route_removes_it(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", svc("web"), route())
    write(tmp_path / "p.yaml", policy().replace("maxConnections", "maxConnection"))
    async with running_source(tmp_path) as (source, mesh):
        (error,) = source.errors
        assert (error.object_ref, error.field, error.message) == (
            "BackendPolicy default/limits",
            "spec.connectionPool.maxConnection",
            "unknown field",
        )
        assert snapshot(mesh).backend_policies == {}
        assert ObjectKey(Kind.HTTP_ROUTE, "default", "split") in mesh.objects

        write(tmp_path / "a.yaml", svc("web"))
        await until(lambda: ObjectKey(Kind.HTTP_ROUTE, "default", "split") not in mesh.objects)
        assert snapshot(mesh).routes_for("default", "web") == ()


async def test_without_creation_timestamps_the_dated_policy_wins_then_the_first_by_name(
    tmp_path: Path,
) -> None:
    """The documented order (docs/sources.md): dated before undated, then namespace/name."""
    write(
        tmp_path / "p.yaml",
        svc("web"),
        policy("a-undated", 1),
        policy("z-dated", 2, created="2024-05-01T12:00:00Z"),
        policy("b-undated", 3),
    )
    async with running_source(tmp_path) as (_, mesh):
        mesh_now = snapshot(mesh)
        attached = mesh_now.backend_policy_for(mesh_now.services[("default", "web")])
        assert attached is not None
        assert attached.policy.name == "z-dated"
        assert [p.name for p in attached.conflicted] == ["a-undated", "b-undated"]
        assert all(isinstance(p, BackendPolicy) for p in attached.conflicted)
