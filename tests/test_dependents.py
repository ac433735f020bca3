"""What a source object feeds: `/api/objects/{kind}/{namespace}/{name}` and `xds-server affected`.

Against a real in-process builder (the dependency index as the pipeline
keeps it) for what is listed, and against a fake view for the HTTP side:
kinds, 404s, paging, the models the CLI reads, and the CLI's table.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from xds_server import cli_affected
from xds_server.admin import create_app
from xds_server.admin.auth import AdminToken
from xds_server.admin.dependents import (
    DependentsResponse,
    HeldResource,
    ObjectDependents,
    gather,
    parse_kind,
    response,
)
from xds_server.admin.paging import Page
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    ObjectKey,
    Proxy,
    Service,
    ServicePort,
    Workload,
)
from xds_server.pipeline import SnapshotBuilder
from xds_server.provenance import Origin, SourceRef
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

TOKEN = AdminToken("test-admin-token-" + "x" * 16, "tests")
"""The admin token of the app under test."""

WEB = Service(
    "ns-a",
    "web",
    (ServicePort(80, "http", target_port=8080),),
    selector=(("app", "web"),),
    origin=Origin(file="a.yaml", document=1),
)
WEB_SLICE = EndpointSlice(
    "ns-a",
    "web-1",
    "web",
    ports=(EndpointPort(8080, "http"),),
    endpoints=(Endpoint(("127.0.0.11",)),),
    origin=Origin(file="a.yaml", document=2),
)
STRAY_POD = Workload("ns-b", "stray", labels=(("app", "nobody"),), ip="10.9.9.9")
WEB_PROXY = Proxy(node_id="web.ns-a", namespace="ns-a", ip="127.0.0.11", labels=(("app", "web"),))
CLIENT_PROXY = Proxy(
    node_id="client.ns-b", namespace="ns-b", ip="127.0.0.12", labels=(("app", "web"),)
)
"""Labelled as WEB selects, but in another namespace: WEB does not select it."""
WEB_CLUSTER = "outbound|80||web.ns-a.svc.cluster.local"
BOTH = [CLIENT_PROXY.node_id, WEB_PROXY.node_id]


def mesh_builder() -> tuple[SnapshotCache, SnapshotBuilder]:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    changes = ChangeSet()
    for obj in (WEB, WEB_SLICE, STRAY_POD):
        changes.upsert(obj)
    builder.apply(changes)
    for proxy in (WEB_PROXY, CLIENT_PROXY):
        builder.add_proxy(proxy)
    builder.mark_synced()
    return cache, builder


def held(kind: Kind, namespace: str, name: str) -> dict[tuple[str, str], list[str]]:
    """(type URL, resource) -> proxies holding it, for the object's dependents."""
    cache, builder = mesh_builder()
    found = gather(ObjectKey(kind, namespace, name), builder, cache.get_snapshot)
    return {(r.type_url, r.name): list(r.proxies) for r in found.resources}


# -- what is listed (a real builder) ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "resource", "proxies"),
    [
        pytest.param(Kind.SERVICE, "web", (CLUSTER, WEB_CLUSTER), BOTH, id="service-cluster"),
        pytest.param(Kind.SERVICE, "web", (ENDPOINT, WEB_CLUSTER), BOTH, id="service-endpoints"),
        pytest.param(
            Kind.SERVICE,
            "web",
            (LISTENER, "inbound_8080"),
            [WEB_PROXY.node_id],
            id="service-inbound-listener-of-the-selected-proxy-only",
        ),
        pytest.param(
            Kind.SERVICE,
            "web",
            (ROUTE, "outbound|ns-b"),
            [CLIENT_PROXY.node_id],
            id="service-route-table-of-each-namespace",
        ),
        pytest.param(
            Kind.ENDPOINT_SLICE, "web-1", (ENDPOINT, WEB_CLUSTER), BOTH, id="slice-load-assignment"
        ),
    ],
)
def test_an_object_lists_what_is_built_from_it_and_who_holds_it(
    kind: Kind, name: str, resource: tuple[str, str], proxies: list[str]
) -> None:
    assert held(kind, "ns-a", name)[resource] == proxies


def test_a_slice_the_mesh_lacks_feeds_nothing() -> None:
    assert held(Kind.ENDPOINT_SLICE, "ns-a", "web-2") == {}


def test_the_unselected_proxys_own_listeners_are_not_listed_for_the_service() -> None:
    resources = held(Kind.SERVICE, "ns-a", "web")
    own = [key for key, proxies in resources.items() if key[0] == LISTENER]
    assert own and all(resources[key] == [WEB_PROXY.node_id] for key in own)


def test_an_object_nothing_reads_is_empty_lists_and_says_the_mesh_holds_it() -> None:
    cache, builder = mesh_builder()
    found = gather(ObjectKey(Kind.WORKLOAD, "ns-b", "stray"), builder, cache.get_snapshot)
    answer = response(found, Page())
    assert (answer.in_mesh, answer.units, answer.resources, answer.proxies) == (True, [], [], [])


def test_an_object_the_mesh_lacks_says_so_and_keeps_where_it_would_be_read() -> None:
    cache, builder = mesh_builder()
    found = gather(ObjectKey(Kind.SERVICE, "ns-a", "absent"), builder, cache.get_snapshot)
    answer = response(found, Page())
    assert not answer.in_mesh
    assert (LISTENER, WEB_CLUSTER) not in {(r.type_url, r.name) for r in answer.resources}
    assert "routes:ns-a" in answer.units  # a new Service there would re-run its route table


def test_the_object_names_where_it_was_read() -> None:
    cache, builder = mesh_builder()
    answer = response(gather(ObjectKey.of(WEB), builder, cache.get_snapshot), Page())
    assert (answer.key, answer.object.where) == ("Service/ns-a/web", "a.yaml#1")
    assert "service:ns-a/web" in answer.units


# -- the HTTP side (a fake view) ------------------------------------------------------------


def dependents_of(key: ObjectKey, resources: int = 3, proxies: int = 2) -> ObjectDependents:
    nodes = tuple(f"proxy-{i}" for i in range(proxies))
    return ObjectDependents(
        key=key,
        source=SourceRef(key.kind.value, key.namespace, key.name, Origin("m.yaml", 0)),
        units=(f"service:{key.namespace}/{key.name}",),
        resources=tuple(HeldResource(CLUSTER, f"c{i}", nodes) for i in range(resources)),
        proxies=nodes,
    )


@dataclass
class FakePlane:
    """An AdminView with a dependency index: answers every key with `dependents_of`."""

    asked: list[ObjectKey] = field(default_factory=list)

    def is_ready(self) -> bool:
        return True

    def readiness_detail(self) -> dict[str, Any]:
        return {}

    def proxies(self) -> list[Any]:
        return []

    def snapshot(self, node_id: str) -> Snapshot | None:
        return None

    def source_errors(self) -> list[str]:
        return []

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"

    def dependents(self, key: ObjectKey) -> ObjectDependents:
        self.asked.append(key)
        return dependents_of(key)


async def get(plane: Any, path: str, **params: int) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.get(path, params=params)


@pytest.mark.parametrize(
    ("written", "kind"),
    [
        ("Service", Kind.SERVICE),
        ("services", Kind.SERVICE),
        ("svc", Kind.SERVICE),
        ("endpointslice", Kind.ENDPOINT_SLICE),
        ("EndpointSlices", Kind.ENDPOINT_SLICE),
        ("Pod", Kind.WORKLOAD),
        ("po", Kind.WORKLOAD),
    ],
)
async def test_a_kind_is_named_as_kubectl_names_it(written: str, kind: Kind) -> None:
    plane = FakePlane()
    reply = await get(plane, f"/api/objects/{written}/ns-a/web")
    assert reply.status_code == 200
    assert plane.asked == [ObjectKey(kind, "ns-a", "web")]


async def test_an_unknown_kind_is_a_404_naming_the_kinds() -> None:
    reply = await get(FakePlane(), "/api/objects/Deployment/ns-a/web")
    assert reply.status_code == 404
    assert "Deployment" in reply.json()["detail"] and "EndpointSlice" in reply.json()["detail"]
    with pytest.raises(ValueError, match="unknown kind"):
        parse_kind("Deployment")


async def test_a_view_without_a_dependency_index_is_a_501() -> None:
    class Bare(FakePlane):
        dependents = None  # type: ignore[assignment]

    reply = await get(Bare(), "/api/objects/Service/ns-a/web")
    assert reply.status_code == 501


@pytest.mark.parametrize(
    ("offset", "limit", "resources", "proxies", "following"),
    [(0, 2, ["c0", "c1"], ["proxy-0", "proxy-1"], 2), (2, 2, ["c2"], [], None)],
)
async def test_resources_and_proxies_come_a_page_at_a_time(
    offset: int, limit: int, resources: list[str], proxies: list[str], following: int | None
) -> None:
    reply = await get(FakePlane(), "/api/objects/Service/ns-a/web", offset=offset, limit=limit)
    answer = DependentsResponse.model_validate(reply.json())
    assert [r.name for r in answer.resources] == resources
    assert answer.proxies == proxies
    assert answer.total == {"resources": 3, "proxies": 2}
    assert answer.next_offset == following
    assert reply.json() == answer.model_dump(mode="json", by_alias=True)


# -- the CLI ------------------------------------------------------------------------------


def test_the_table_names_the_object_each_resource_and_its_proxies() -> None:
    found = response(dependents_of(ObjectKey(Kind.SERVICE, "ns-a", "web"), 2, 5), Page())
    text = cli_affected.show(found, "table")
    lines = text.splitlines()
    assert lines[0] == "Service/ns-a/web (m.yaml#0)"
    assert lines[2].split() == ["TYPE", "RESOURCE", "PROXIES"]
    assert lines[3].split(maxsplit=2) == ["CDS", "c0", "proxy-0, proxy-1, proxy-2 (+2)"]
    assert lines[-1].startswith("2 resources, held by 5 proxies: proxy-0, ")


def test_an_object_nothing_is_built_from_says_so() -> None:
    key = ObjectKey(Kind.WORKLOAD, "ns-b", "stray")
    empty = ObjectDependents(key, None, (), (), ())
    assert cli_affected.show(response(empty, Page()), "table") == (
        "Pod/ns-b/stray: not in the mesh\nnothing is built from it\n"
    )


@pytest.mark.parametrize("bad", ["Service/web", "Service//web", "a/b/c/d"])
def test_the_object_must_be_kind_namespace_name(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="KIND/NAMESPACE/NAME"):
        cli_affected._object(bad)
