"""`explain` end to end: the manifest behind each resource a real Envoy runs.

A file-mode control plane reads a mesh spread over several files (Services
in one, their EndpointSlices in others, a second Service and its slice
together) and serves it to a real Envoy sidecar.  For a cluster, its
endpoints and a virtual host of the outbound route table, the admin API's
`/api/proxies/{node}/explain` and the `xds-server explain` command name the
object and the file and document it was read from; Envoy's own
`/config_dump` carries the same objects in the cluster's and the virtual
host's `metadata.filter_metadata["xds-server"]`.  Moving a Service to another
file changes no byte Envoy is sent, but `explain` follows it.

The `explain` function itself is specified last, on hand-built resources:
how origins are shown, virtual hosts resolved against the snapshot, lists
bounded with their totals, and selection by type and name.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    SERVICE_PORT,
    Sidecar,
    eventually,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_sidecar,
    write_documents,
)
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_pb2

from xds_server.admin.explain import explain
from xds_server.admin.models import ExplainResult, ResourceExplain, SourceObject
from xds_server.admin.paging import MAX_NAMES_SHOWN, Page
from xds_server.app import ControlPlane
from xds_server.cache import ResourceSet, Snapshot
from xds_server.provenance import PROVENANCE_KEY, Origin, SourceRef
from xds_server.resources import CLUSTER, PUSH_ORDER, ROUTE, Resource, make_resource
from xds_server.translate.provenance import stamp_generator, stamp_sources

pytestmark = pytest.mark.timeout(120)

NODE = "client-0.default"
BACKEND_SLICE = slice_yaml("backend", ["127.0.45.1", "127.0.45.2"], 9101)
REVIEWS_SLICE = slice_yaml("reviews", ["127.0.45.3"], 9102)
FILES: dict[str, tuple[str, ...]] = {
    "services.yaml": (service_yaml("web"), service_yaml("backend")),
    "backend-endpoints.yaml": (BACKEND_SLICE,),
    "reviews.yaml": (REVIEWS_SLICE, service_yaml("reviews")),
}
"""The mesh: file name -> its YAML documents, in order."""

WHERE: dict[str, tuple[str, int]] = {
    "Service/default/web": ("services.yaml", 0),
    "Service/default/backend": ("services.yaml", 1),
    "EndpointSlice/default/backend-slice": ("backend-endpoints.yaml", 0),
    "EndpointSlice/default/reviews-slice": ("reviews.yaml", 0),
    "Service/default/reviews": ("reviews.yaml", 1),
}
"""Each object's file and document index in `FILES`."""


def cluster(service: str) -> str:
    return f"outbound|{SERVICE_PORT}||{service}.default.svc.cluster.local"


@dataclass
class Mesh:
    plane: ControlPlane
    directory: Path
    sidecar: Sidecar

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.plane.admin_port}"

    async def explain(self, **params: str) -> ExplainResult:
        async with httpx.AsyncClient(base_url=self.admin, timeout=5.0) as client:
            path = f"/api/proxies/{quote(NODE, safe='')}/explain"
            response = await client.get(path, params=params)
        response.raise_for_status()
        return ExplainResult.model_validate(response.json())

    async def explained(self, type_name: str, name: str) -> ResourceExplain:
        [resource] = (await self.explain(type=type_name, name=name)).resources
        return resource

    def origin(self, key: str) -> tuple[str, int]:
        """Where `WHERE` says the object is: (file as the source names it, document)."""
        file, document = WHERE[key]
        return str(self.directory / file), document

    async def envoy_dump(self, resource: str) -> list[dict[str, Any]]:
        dump = await self.sidecar.envoy.config_dump_async(resource=resource)
        configs: list[dict[str, Any]] = dump["configs"]
        return configs


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Mesh]:
    directory = tmp_path / "manifests"
    directory.mkdir()
    for file, documents in FILES.items():
        write_documents(directory / file, *documents)
    async with running_control_plane(directory, free_port) as plane:
        sidecar = await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=False, node_id=NODE
        )
        found = Mesh(plane, directory, sidecar)

        async def every_cluster_running() -> bool:
            names = await sidecar.cluster_names()
            return all(cluster(s) in names for s in ("web", "backend", "reviews"))

        await eventually(every_cluster_running, within=15, message="the mesh's clusters in Envoy")
        yield found


def where(source: SourceObject) -> tuple[str | None, int | None]:
    return source.file, source.document


def stamped(config: dict[str, Any]) -> list[str]:
    """The source keys Envoy's config dump shows on a cluster or a virtual host."""
    sources: list[str] = config["metadata"]["filter_metadata"][PROVENANCE_KEY]["sources"]
    return sources


def explain_cli(mesh: Mesh, *args: str) -> list[dict[str, str]]:
    """`xds-server explain NODE ARGS...`, its table as dicts (every cell is filled)."""
    command = [sys.executable, "-m", "xds_server.cli", "explain", NODE, *args]
    result = subprocess.run(
        [*command, "--admin", mesh.admin], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    header, *lines = result.stdout.splitlines()
    columns = re.split(r"\s{2,}", header.strip())
    return [dict(zip(columns, re.split(r"\s{2,}", line.strip()), strict=True)) for line in lines]


# -- clusters and endpoints ---------------------------------------------------------------


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("type_name", "service", "objects"),
    [
        ("CDS", "backend", ["Service/default/backend"]),
        ("CDS", "reviews", ["Service/default/reviews"]),
        ("EDS", "backend", ["EndpointSlice/default/backend-slice", "Service/default/backend"]),
        ("EDS", "reviews", ["EndpointSlice/default/reviews-slice", "Service/default/reviews"]),
    ],
)
async def test_explain_names_the_files_and_objects_behind_a_cluster_and_its_endpoints(
    mesh: Mesh, type_name: str, service: str, objects: list[str]
) -> None:
    explained = await mesh.explained(type_name, cluster(service))
    rows = await asyncio.to_thread(explain_cli, mesh, cluster(service), "--type", type_name)

    assert sorted(source.key for source in explained.sources) == objects
    assert explained.sources_total == len(objects)
    for source in explained.sources:
        assert where(source) == mesh.origin(source.key)
    assert sorted((row["SOURCE"], row["FROM"]) for row in rows) == [
        (key, "{}#{}".format(*mesh.origin(key))) for key in objects
    ]
    assert {(row["TYPE"], row["NAME"], row["VIRTUAL HOST"]) for row in rows} == {
        (type_name, cluster(service), "-")
    }


@pytest.mark.envoy
@pytest.mark.parametrize("service", ["web", "backend", "reviews"])
async def test_envoys_config_dump_names_the_same_objects_on_each_cluster(
    mesh: Mesh, service: str
) -> None:
    explained = await mesh.explained("CDS", cluster(service))
    running = {
        entry["cluster"]["name"]: entry["cluster"]
        for entry in await mesh.envoy_dump("dynamic_active_clusters")
    }

    assert stamped(running[cluster(service)]) == sorted(s.key for s in explained.sources)
    assert stamped(running[cluster(service)]) == [f"Service/default/{service}"]


# -- routes -------------------------------------------------------------------------------


async def route_table(mesh: Mesh) -> ResourceExplain:
    """The route configuration whose virtual hosts route to the mesh's Services."""
    tables = (await mesh.explain(type="RDS")).resources
    [outbound] = [t for t in tables if any("backend" in h.domains for h in t.virtual_hosts)]
    return outbound


@pytest.mark.envoy
@pytest.mark.parametrize("service", ["web", "backend", "reviews"])
async def test_explain_names_the_service_and_file_behind_each_virtual_host(
    mesh: Mesh, service: str
) -> None:
    table = await route_table(mesh)
    [host] = [h for h in table.virtual_hosts if service in h.domains]
    rows = await asyncio.to_thread(explain_cli, mesh, table.name, "--type", "RDS")
    key = f"Service/default/{service}"

    assert [source.key for source in host.sources] == [key]
    assert where(host.sources[0]) == mesh.origin(key)
    assert {"TYPE": "RDS", "NAME": table.name, "VIRTUAL HOST": host.name, "SOURCE": key} | {
        "FROM": "{}#{}".format(*mesh.origin(key))
    } in rows
    # The table itself was made for the namespace, from every Service in it.
    assert table.generator is not None
    assert (table.generator.namespace, key in {s.key for s in table.sources}) == ("default", True)


@pytest.mark.envoy
async def test_envoys_config_dump_names_the_same_service_on_each_virtual_host(
    mesh: Mesh,
) -> None:
    table = await route_table(mesh)
    [running] = [
        entry["route_config"]
        for entry in await mesh.envoy_dump("dynamic_route_configs")
        if entry["route_config"]["name"] == table.name
    ]
    explained = {host.name: sorted(s.key for s in host.sources) for host in table.virtual_hosts}

    assert {host["name"]: stamped(host) for host in running["virtual_hosts"]} == explained
    assert running["metadata"]["filter_metadata"][PROVENANCE_KEY] == {
        "generator": table.generator.generator if table.generator else None,
        "namespace": "default",
    }


# -- provenance follows the manifest, not the bytes ---------------------------------------


@pytest.mark.envoy
async def test_a_service_moved_to_another_file_is_explained_from_its_new_file(
    mesh: Mesh,
) -> None:
    before = await mesh.explained("CDS", cluster("backend"))
    version = {
        entry["cluster"]["name"]: entry["version_info"]
        for entry in await mesh.envoy_dump("dynamic_active_clusters")
    }
    moved = mesh.directory / "backend.yaml"

    write_documents(moved, service_yaml("backend"))
    write_documents(mesh.directory / "services.yaml", service_yaml("web"))

    async def explained_from_new_file() -> ResourceExplain | None:
        found = await mesh.explained("CDS", cluster("backend"))
        return found if where(found.sources[0]) == (str(moved), 0) else None

    after = await eventually(explained_from_new_file, within=10, message="backend from its file")
    assert after.version == before.version  # provenance is not part of the content
    still = {
        entry["cluster"]["name"]: entry["version_info"]
        for entry in await mesh.envoy_dump("dynamic_active_clusters")
    }
    assert still[cluster("backend")] == version[cluster("backend")]


# -- the explain function, on hand-built resources -----------------------------------------

FILE_ORIGIN = Origin(file="mesh/services.yaml", document=2)
KUBE_ORIGIN = Origin(uid="0b1c", resource_version="41")


def routes(hosts: dict[str, list[str]], *provenance: SourceRef) -> Resource:
    """A route table `outbound|default` of virtual hosts stamped with their source keys."""
    table = route_pb2.RouteConfiguration(name="outbound|default")
    stamp_generator(table, "outbound-routes", "default")
    for name, keys in hosts.items():
        host = table.virtual_hosts.add(name=name, domains=[name])
        stamp_sources(host, keys)
    return make_resource(table, provenance)


def a_cluster(name: str, *provenance: SourceRef) -> Resource:
    return make_resource(cluster_pb2.Cluster(name=name), provenance)


def snapshot_of(*resources: Resource) -> Snapshot:
    by_type: dict[str, dict[str, Resource]] = {}
    for resource in resources:
        by_type.setdefault(resource.type_url, {})[resource.name] = resource
    return Snapshot(resources={t: ResourceSet(list(r.values())) for t, r in by_type.items()})


@pytest.mark.parametrize(
    ("origin", "shown"),
    [
        (FILE_ORIGIN, {"file": "mesh/services.yaml", "document": 2}),
        (KUBE_ORIGIN, {"uid": "0b1c", "resourceVersion": "41"}),
        (None, {}),
    ],
    ids=["file", "kubernetes", "unknown"],
)
def test_a_source_is_shown_with_what_is_known_of_where_it_was_read(
    origin: Origin | None, shown: dict[str, Any]
) -> None:
    ref = SourceRef("Service", "default", "web", origin)
    [explained] = explain(NODE, snapshot_of(a_cluster("c", ref))).resources

    [source] = explained.sources
    assert source.model_dump(mode="json", by_alias=True) == ref.as_json()
    assert source.model_dump(mode="json", by_alias=True) == {
        "kind": "Service",
        "namespace": "default",
        "name": "web",
        **shown,
    }


def test_a_virtual_host_names_its_service_with_the_origin_the_snapshot_knows() -> None:
    web = SourceRef("Service", "default", "web", FILE_ORIGIN)
    reviews = SourceRef("Service", "default", "reviews", KUBE_ORIGIN)
    table = routes(
        {"web": ["Service/default/web"], "reviews": ["Service/default/reviews"], "x": ["odd"]},
        web,
    )
    # The table's own provenance lacks reviews: its origin comes from the cluster's.
    found = explain(NODE, snapshot_of(table, a_cluster("reviews", reviews)), name=table.name)

    [explained] = found.resources
    hosts = {host.name: host.sources for host in explained.virtual_hosts}
    assert [s.key for s in hosts["web"]] == ["Service/default/web"]
    assert (hosts["web"][0].file, hosts["web"][0].document) == ("mesh/services.yaml", 2)
    assert (hosts["reviews"][0].uid, hosts["reviews"][0].resource_version) == ("0b1c", "41")
    assert [(s.kind, s.name) for s in hosts["x"]] == [("", "odd")]  # not Kind/ns/name: kept
    assert explained.generator is not None
    assert (explained.generator.generator, explained.generator.namespace) == (
        "outbound-routes",
        "default",
    )


def test_every_list_is_bounded_and_says_its_total() -> None:
    many = [SourceRef("EndpointSlice", "default", f"s{i:03}") for i in range(MAX_NAMES_SHOWN + 5)]
    table = routes({f"h{i:03}": [] for i in range(MAX_NAMES_SHOWN + 7)})
    clusters = [a_cluster(f"c{i}", *many) for i in range(3)]
    snapshot = snapshot_of(table, *clusters)

    first = explain(NODE, snapshot, page=Page(0, 2))
    rest = explain(NODE, snapshot, page=Page(2, 2))

    assert (first.total, first.next_offset, rest.next_offset) == (4, 2, None)
    assert [r.name for r in first.resources + rest.resources] == [
        "c0", "c1", "c2", "outbound|default"
    ]  # fmt: skip
    assert (len(first.resources[0].sources), first.resources[0].sources_total) == (
        MAX_NAMES_SHOWN,
        MAX_NAMES_SHOWN + 5,
    )
    assert (len(rest.resources[1].virtual_hosts), rest.resources[1].virtual_hosts_total) == (
        MAX_NAMES_SHOWN,
        MAX_NAMES_SHOWN + 7,
    )


@pytest.mark.parametrize(
    ("types", "name", "found"),
    [
        ((CLUSTER,), None, ["c0", "c1"]),
        ((ROUTE,), None, ["outbound|default"]),
        (PUSH_ORDER, "c1", ["c1"]),
        ((ROUTE,), "c1", []),
        (PUSH_ORDER, "nothing", []),
    ],
)
def test_explain_selects_by_type_and_name(
    types: tuple[str, ...], name: str | None, found: list[str]
) -> None:
    snapshot = snapshot_of(routes({}), a_cluster("c0"), a_cluster("c1"))

    result = explain(NODE, snapshot, types, name)

    assert [r.name for r in result.resources] == found
    assert result.total == len(found)


def test_a_proxy_without_a_snapshot_has_nothing_to_explain() -> None:
    result = explain(NODE, None)
    assert (result.snapshot_version, result.resources, result.total) == (None, [], 0)
