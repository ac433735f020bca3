"""NACKs named on their source objects: which manifest is behind what Envoy rejected.

A fake control plane serves a snapshot of hand-built resources with
provenance; a NACK blames some of them.  `/api/errors`, the proxy's JSON and
its pages name, for each blamed resource, the source objects it was made from
(kind/namespace/name with the file and document, or uid and resourceVersion),
as found in the proxy's current snapshot; a name the snapshot no longer holds
is of unknown source, never guessed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from test_admin import FakeControlPlane, get, nack, proxy_view, synced, typed

from xds_server.admin.views import BlamedResource, source_text
from xds_server.cache import ResourceSet, Snapshot
from xds_server.provenance import Origin, SourceRef
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, Resource, make_resource

NODE = "web-0.default"
WEB = SourceRef("Service", "default", "web", Origin(file="services.yaml", document=0))
WEB_SLICE = SourceRef(
    "EndpointSlice", "default", "web-abc", Origin(file="endpoints.yaml", document=2)
)
API = SourceRef("Service", "shop", "api", Origin(uid="7f3c-11", resource_version="4711"))
WEB_JSON = {
    "kind": "Service",
    "namespace": "default",
    "name": "web",
    "file": "services.yaml",
    "document": 0,
}
SLICE_JSON = {
    "kind": "EndpointSlice",
    "namespace": "default",
    "name": "web-abc",
    "file": "endpoints.yaml",
    "document": 2,
}
WEB_TEXT = "Service default/web (services.yaml, document 0)"
SLICE_TEXT = "EndpointSlice default/web-abc (endpoints.yaml, document 2)"


def listener(name: str, *sources: SourceRef) -> Resource:
    return make_resource(listener_pb2.Listener(name=name), provenance=sources)


def cluster(name: str, *sources: SourceRef) -> Resource:
    return make_resource(cluster_pb2.Cluster(name=name), provenance=sources)


def served(*resources: Resource) -> Snapshot:
    by_type: dict[str, list[Resource]] = {}
    for resource in resources:
        by_type.setdefault(resource.type_url, []).append(resource)
    return Snapshot({t: ResourceSet(rs) for t, rs in by_type.items()}, version="7")


def nacked(type_url: str, *blamed: str) -> Any:
    """A proxy whose latest response of `type_url` was rejected, blaming `blamed`."""
    rejected = nack("2", type_url=type_url, node_id=NODE, resources=blamed)
    return proxy_view(NODE, typed(type_url, nonce="2", sent="v2", acked="v1", last_nack=rejected))


def plane(*resources: Resource, type_url: str = LISTENER, blamed: tuple[str, ...]) -> Any:
    snapshots = {NODE: served(*resources)} if resources else {}
    return FakeControlPlane(views=[nacked(type_url, *blamed)], snapshots=snapshots)


async def errors_nack(fake: FakeControlPlane) -> dict[str, Any]:
    [found] = (await get(fake, "/api/errors")).json()["nacks"]
    entry: dict[str, Any] = found
    return entry


async def test_errors_name_the_manifest_behind_a_rejected_listener() -> None:
    fake = plane(listener("inbound_8080", WEB), listener("outbound", WEB), blamed=("inbound_8080",))

    found = await errors_nack(fake)

    assert found["resources"] == ["inbound_8080"]
    assert found["sources"] == [WEB_JSON]
    assert found["blamed"] == [{"resource": "inbound_8080", "sources": [WEB_JSON]}]


async def test_each_blamed_resource_names_its_own_sources_and_the_union_is_listed_once() -> None:
    fake = plane(
        cluster("outbound|80||web", WEB, WEB_SLICE),
        cluster("outbound|80||api", API),
        cluster("outbound|80||other", WEB),
        type_url=CLUSTER,
        blamed=("outbound|80||web", "outbound|80||other"),
    )

    found = await errors_nack(fake)

    assert found["blamed"] == [
        {"resource": "outbound|80||web", "sources": [WEB_JSON, SLICE_JSON]},
        {"resource": "outbound|80||other", "sources": [WEB_JSON]},
    ]
    assert found["sources"] == [WEB_JSON, SLICE_JSON]


@pytest.mark.parametrize(
    ("resources", "blamed_sources"),
    [
        pytest.param((), None, id="no-snapshot"),
        pytest.param((listener("outbound", WEB),), None, id="no-longer-served"),
        pytest.param((listener("inbound_8080"),), [], id="served-without-provenance"),
    ],
)
async def test_a_resource_whose_source_is_unknown_is_said_so_not_guessed(
    resources: tuple[Resource, ...], blamed_sources: list[Any] | None
) -> None:
    fake = plane(*resources, blamed=("inbound_8080",))

    found = await errors_nack(fake)

    assert found["blamed"] == [{"resource": "inbound_8080", "sources": blamed_sources}]
    assert found["sources"] == []


async def test_the_proxy_json_names_the_sources_on_its_last_nack() -> None:
    fake = plane(listener("inbound_8080", WEB), blamed=("inbound_8080",))

    detail = (await get(fake, f"/api/proxies/{NODE}")).json()
    [row] = (await get(fake, "/api/proxies")).json()

    for shown in (detail, row):
        [lds] = [t for t in shown["types"] if t["type"] == "LDS"]
        assert lds["last_nack"]["sources"] == [WEB_JSON]


@pytest.mark.parametrize("path", [f"/proxies/{NODE}", "/"], ids=["proxy-page", "index"])
async def test_the_pages_say_which_object_a_rejected_resource_came_from(path: str) -> None:
    fake = plane(listener("inbound_8080", WEB), blamed=("inbound_8080", "gone"))

    page = html.unescape((await get(fake, path)).text)

    assert f"rejected listener inbound_8080 from {WEB_TEXT}" in page
    assert "rejected listener gone from an unknown source" in page


async def test_a_resolved_nack_is_no_error_but_keeps_its_sources_in_the_proxy_json() -> None:
    resolved = nack("2", type_url=LISTENER, node_id=NODE, resources=("inbound_8080",))
    view = proxy_view(NODE, typed(LISTENER, nonce="3", sent="v3", acked="v3", last_nack=resolved))
    fake = FakeControlPlane(views=[view], snapshots={NODE: served(listener("inbound_8080", WEB))})

    assert (await get(fake, "/api/errors")).json()["nacks"] == []
    [lds] = (await get(fake, f"/api/proxies/{NODE}")).json()["types"]
    assert lds["last_nack"]["sources"] == [WEB_JSON]


async def test_a_proxy_without_nacks_costs_no_snapshot_lookup() -> None:
    @dataclass
    class CountingPlane(FakeControlPlane):
        looked_up: list[str] = field(default_factory=list)

        def snapshot(self, node_id: str) -> Snapshot | None:
            self.looked_up.append(node_id)
            return super().snapshot(node_id)

    fake = CountingPlane(views=[proxy_view(NODE, synced(CLUSTER))])

    await get(fake, "/api/errors")
    await get(fake, "/api/proxies")

    assert fake.looked_up == []


@pytest.mark.parametrize(
    ("blamed", "text"),
    [
        (
            BlamedResource(LISTENER, "inbound_8080", (WEB,)),
            f"rejected listener inbound_8080 from {WEB_TEXT}",
        ),
        (
            BlamedResource(CLUSTER, "outbound|80||web", (WEB, WEB_SLICE)),
            f"rejected cluster outbound|80||web from {WEB_TEXT} and {SLICE_TEXT}",
        ),
        (
            BlamedResource(ENDPOINT, "outbound|80||api", (API,)),
            "rejected cluster load assignment outbound|80||api from "
            "Service shop/api (uid 7f3c-11, resourceVersion 4711)",
        ),
        (
            BlamedResource(LISTENER, "gone", None),
            "rejected listener gone from an unknown source (no longer in the proxy's snapshot)",
        ),
        (
            BlamedResource(LISTENER, "bare", ()),
            "rejected listener bare from an unknown source (it names none)",
        ),
    ],
    ids=["file", "two-sources", "kubernetes", "not-served", "no-provenance"],
)
def test_the_sentence_names_each_object_and_where_it_was_read(
    blamed: BlamedResource, text: str
) -> None:
    assert blamed.text() == text


def test_an_object_read_from_nowhere_is_named_alone() -> None:
    assert source_text(SourceRef("Service", "default", "web")) == "Service default/web"
