"""The admin app against an in-memory control plane: what a person sees of the mesh.

Specifications for the JSON API and the web page: per-type sync status as
`istioctl proxy-status` names it, one proxy's detail and served config,
errors that name their object, readiness, and HTML that never runs what a
proxy or a manifest put in a name or a message.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import any_pb2

from xds_server.admin import AdminView, ProxyView, SyncStatus, create_app
from xds_server.admin.auth import AdminToken
from xds_server.admin.paging import DEFAULT_LIMIT, MAX_LIMIT, MAX_NAMES_SHOWN
from xds_server.admin.views import sync_status
from xds_server.cache import ResourceSet, Snapshot
from xds_server.model import Proxy
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    XDS_TYPES,
    XdsType,
    make_resource,
)
from xds_server.server import NackStatus, StreamStatus, TypeStatus

TOKEN = AdminToken("test-admin-token-" + "x" * 16, "tests")
"""The admin token of the app under test."""

AT = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
NODE = "client-0.default"
EVIL = "<script>alert('node')</script>"


# -- builders -------------------------------------------------------------------------


def nack(
    nonce: str,
    *,
    type_url: str = CLUSTER,
    node_id: str = NODE,
    message: str = "Proto constraint validation failed: connect_timeout must be positive",
    resources: tuple[str, ...] = ("bad-cluster",),
) -> NackStatus:
    return NackStatus(
        node_id=node_id,
        type_url=type_url,
        rejected_version=f"v{nonce}",
        kept_version="v1",
        nonce=nonce,
        message=message,
        at=AT,
        resources=resources,
    )


def typed(
    type_url: str = CLUSTER,
    *,
    nonce: str = "",
    sent: str = "",
    acked: str = "",
    last_nack: NackStatus | None = None,
    names: tuple[str, ...] = (),
) -> TypeStatus:
    return TypeStatus(
        type_url=type_url,
        wildcard=not names,
        names=names,
        version_sent=sent,
        nonce=nonce,
        acked_version=acked,
        last_nack=last_nack,
        responses=int(nonce or 0),
        bytes_sent=100 * int(nonce or 0),
        acks=1 if acked else 0,
        nacks=1 if last_nack else 0,
    )


def synced(type_url: str, version: str = "v1") -> TypeStatus:
    return typed(type_url, nonce="1", sent=version, acked=version)


def stream(
    node_id: str = NODE, *types: TypeStatus, stream_id: int = 1, kind: Any = "sotw"
) -> StreamStatus:
    return StreamStatus(
        stream_id=stream_id,
        node_id=node_id,
        kind=kind,
        peer="ipv4:127.0.0.1:40000",
        connected_at=AT,
        snapshot_version="3",
        requests=7,
        types=MappingProxyType({t.type_url: t for t in types}),
    )


def proxy_view(
    node_id: str = NODE, *types: TypeStatus, stream_id: int = 1, **errors: str | None
) -> ProxyView:
    proxy = Proxy(
        node_id=node_id,
        namespace="default",
        workload="client",
        labels=(("app", "client"), ("version", "v1")),
        ip="10.0.0.7",
    )
    return ProxyView(stream(node_id, *types, stream_id=stream_id), proxy, **errors)


def cluster(name: str, seconds: int = 1) -> cluster_pb2.Cluster:
    message = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    message.connect_timeout.FromSeconds(seconds)
    return message


def snapshot(*clusters: cluster_pb2.Cluster, version: str = "3") -> Snapshot:
    messages = [
        *clusters,
        *(endpoint_pb2.ClusterLoadAssignment(cluster_name=c.name) for c in clusters),
    ]
    resources = [make_resource(m) for m in messages]
    resources.append(make_resource(listener_pb2.Listener(name="outbound")))
    return Snapshot(
        resources={
            type_url: ResourceSet([r for r in resources if r.type_url == type_url])
            for type_url in (CLUSTER, ENDPOINT, LISTENER)
        },
        version=version,
    )


@dataclass
class FakeControlPlane:
    """An AdminView held in memory: tests set exactly what the admin should see."""

    ready: bool = True
    views: list[ProxyView] = field(default_factory=list)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def is_ready(self) -> bool:
        return self.ready

    def readiness_detail(self) -> dict[str, Any]:
        return {"xds_serving": True, "sources_synced": self.ready, "source": "file:/mesh"}

    def proxies(self) -> list[ProxyView]:
        return list(self.views)

    def snapshot(self, node_id: str) -> Snapshot | None:
        return self.snapshots.get(node_id)

    def source_errors(self) -> list[str]:
        return list(self.errors)

    def metrics(self) -> tuple[bytes, str]:
        return b"xds_streams 1\n", "text/plain; version=0.0.4"


async def get(plane: AdminView, path: str, params: dict[str, str] | None = None) -> httpx.Response:
    """One request to the admin app, in process (no server, no port)."""
    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.get(path, params=params)


# -- sync status --------------------------------------------------------------------------

STATUS_CASES = [
    pytest.param(None, SyncStatus.NOT_SENT, id="never-subscribed"),
    pytest.param(typed(), SyncStatus.NOT_SENT, id="subscribed-nothing-sent"),
    pytest.param(typed(nonce="1", sent="v1"), SyncStatus.STALE, id="first-response-unanswered"),
    pytest.param(typed(nonce="1", sent="v1", acked="v1"), SyncStatus.SYNCED, id="acked"),
    pytest.param(typed(nonce="2", sent="v2", acked="v1"), SyncStatus.STALE, id="update-unanswered"),
    pytest.param(
        typed(nonce="2", sent="v2", acked="v1", last_nack=nack("2")),
        SyncStatus.NACKED,
        id="latest-response-nacked",
    ),
    pytest.param(
        typed(nonce="3", sent="v3", acked="v1", last_nack=nack("2")),
        SyncStatus.STALE,
        id="nack-superseded-by-a-new-push",
    ),
    pytest.param(
        typed(nonce="3", sent="v3", acked="v3", last_nack=nack("2")),
        SyncStatus.SYNCED,
        id="nack-resolved-by-a-later-ack",
    ),
]


@pytest.mark.parametrize(("status", "expected"), STATUS_CASES)
async def test_each_type_reports_its_sync_status(
    status: TypeStatus | None, expected: SyncStatus
) -> None:
    assert sync_status(status) is expected
    plane = FakeControlPlane(views=[proxy_view(NODE, *([status] if status else []))])

    [row] = (await get(plane, "/api/proxies")).json()

    assert row["sync"]["CDS"] == expected.value
    if status is not None:
        [cds] = row["types"]
        assert (cds["type"], cds["status"]) == ("CDS", expected.value)


async def test_a_proxy_row_keeps_the_stream_fields_and_adds_the_workload_and_every_type() -> None:
    plane = FakeControlPlane(
        views=[
            proxy_view(
                NODE,
                synced(CLUSTER),
                typed(
                    ENDPOINT,
                    nonce="2",
                    sent="v2",
                    acked="v1",
                    last_nack=nack("2", type_url=ENDPOINT),
                ),
                synced(LISTENER),
                typed(ROUTE, nonce="1", sent="v1"),
            )
        ]
    )

    [row] = (await get(plane, "/api/proxies")).json()

    assert row["node_id"] == NODE
    assert (row["kind"], row["peer"], row["connected_at"]) == (
        "sotw",
        "ipv4:127.0.0.1:40000",
        AT.isoformat(),
    )
    assert (row["workload"], row["namespace"], row["labels"]) == (
        "client",
        "default",
        {"app": "client", "version": "v1"},
    )
    assert row["sync"] == {
        "CDS": "SYNCED",
        "EDS": "NACKED",
        "LDS": "SYNCED",
        "RDS": "STALE",
        "SDS": "NOT SENT",
    }
    assert [t["type_url"] for t in row["types"]] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    eds = row["types"][1]
    assert eds["last_nack"]["message"].startswith("Proto constraint validation failed")
    assert eds["last_nack"]["resources"] == ["bad-cluster"]
    assert row["snapshot_error"] is None


# -- one proxy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/proxies/nobody.default", "/api/proxies/nobody.default/config"],
)
async def test_an_unknown_node_is_a_404_that_names_it(path: str) -> None:
    plane = FakeControlPlane(views=[proxy_view(NODE, synced(CLUSTER))])

    response = await get(plane, path)

    assert response.status_code == 404
    assert response.json() == {"detail": "no connected proxy has node id 'nobody.default'"}


async def test_the_page_of_an_unknown_node_is_a_404_page() -> None:
    response = await get(FakeControlPlane(), "/proxies/" + quote(EVIL, safe=""))

    assert response.status_code == 404
    assert "No connected proxy has node id" in response.text
    assert EVIL not in response.text
    assert "&lt;script&gt;" in response.text


async def test_a_proxy_detail_is_its_newest_stream_even_with_a_slash_in_its_id() -> None:
    node_id = "router/gateway-1"
    plane = FakeControlPlane(
        views=[
            proxy_view(node_id, typed(CLUSTER, nonce="1", sent="v1"), stream_id=4),
            proxy_view(node_id, synced(CLUSTER), stream_id=9),
            proxy_view(NODE, synced(CLUSTER), stream_id=5),
        ]
    )

    response = await get(plane, "/api/proxies/" + quote(node_id, safe=""))

    assert response.status_code == 200
    detail = response.json()
    assert (detail["node_id"], detail["stream_id"], detail["streams_for_node"]) == (node_id, 9, 2)
    assert detail["sync"]["CDS"] == "SYNCED"


# -- served config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_filter", "types"),
    [
        (None, ["CDS", "EDS", "LDS", "RDS", "SDS"]),
        ("CDS", ["CDS"]),
        ("eds", ["EDS"]),
        (LISTENER, ["LDS"]),
        ("RDS", ["RDS"]),
    ],
)
async def test_the_config_served_to_a_proxy_can_be_filtered_by_type(
    type_filter: str | None, types: list[str]
) -> None:
    plane = FakeControlPlane(
        views=[proxy_view(NODE, synced(CLUSTER))],
        snapshots={NODE: snapshot(cluster("outbound|8080||backend"))},
    )
    query = {"type": type_filter} if type_filter else {}

    config = (await get(plane, f"/api/proxies/{NODE}/config", params=query)).json()

    assert config["node_id"] == NODE
    assert config["snapshot_version"] == "3"
    assert [t["type"] for t in config["types"]] == types


async def test_each_served_resource_has_its_name_version_and_proto_as_json() -> None:
    served = snapshot(cluster("outbound|8080||backend", seconds=5), cluster("a-first"))
    plane = FakeControlPlane(views=[proxy_view(NODE)], snapshots={NODE: served})

    config = (await get(plane, f"/api/proxies/{NODE}/config?type=CDS")).json()

    [cds] = config["types"]
    assert cds["type_url"] == CLUSTER
    assert cds["version"] == served.type_version(CLUSTER)
    assert [r["name"] for r in cds["resources"]] == ["a-first", "outbound|8080||backend"]
    backend = cds["resources"][1]
    assert backend["version"] == served.get(CLUSTER)["outbound|8080||backend"].version
    # Field names as in Envoy's own /config_dump.
    assert backend["resource"] == {
        "name": "outbound|8080||backend",
        "type": "EDS",
        "connect_timeout": "5s",
    }


async def test_a_resource_holding_an_unknown_any_is_shown_as_text_not_an_error() -> None:
    odd = cluster("odd")
    odd.typed_extension_protocol_options["x"].CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/example.Unknown", value=b"\x08\x01")
    )
    plane = FakeControlPlane(views=[proxy_view(NODE)], snapshots={NODE: snapshot(odd)})

    response = await get(plane, f"/api/proxies/{NODE}/config?type=CDS")

    assert response.status_code == 200
    [resource] = response.json()["types"][0]["resources"]
    assert "example.Unknown" in resource["resource"]["@error"]
    assert 'name: "odd"' in resource["resource"]["text"]


async def test_an_unknown_type_filter_is_a_400_that_lists_the_accepted_ones() -> None:
    plane = FakeControlPlane(views=[proxy_view(NODE)], snapshots={NODE: snapshot()})

    response = await get(plane, f"/api/proxies/{NODE}/config?type=XDS")

    assert response.status_code == 400
    assert response.json()["detail"] == (
        "unknown type 'XDS': expected one of CDS, EDS, LDS, RDS, SDS or a type URL"
    )


def one_of_every_type() -> Snapshot:
    """A snapshot holding one resource of every registered type, named after its type."""
    resources = []
    for xds_type in XDS_TYPES:
        message = xds_type.message()
        name_field = "cluster_name" if xds_type.type_url == ENDPOINT else "name"
        setattr(message, name_field, f"the-{xds_type.short_name}")
        resources.append(make_resource(message))
    return Snapshot(resources={r.type_url: ResourceSet([r]) for r in resources}, version="3")


@pytest.mark.parametrize("xds_type", XDS_TYPES, ids=lambda t: t.short_name)
@pytest.mark.parametrize("spelling", ["short", "lower", "url"])
async def test_every_registered_type_can_be_selected_and_shown(
    xds_type: XdsType, spelling: str
) -> None:
    plane = FakeControlPlane(
        views=[proxy_view(NODE, synced(xds_type.type_url))], snapshots={NODE: one_of_every_type()}
    )
    selector = {
        "short": xds_type.short_name,
        "lower": xds_type.short_name.lower(),
        "url": xds_type.type_url,
    }[spelling]

    config = (await get(plane, f"/api/proxies/{NODE}/config", {"type": selector})).json()
    row = (await get(plane, f"/api/proxies/{NODE}")).json()
    page = (await get(plane, f"/proxies/{NODE}", {"type": selector})).text

    [served] = config["types"]
    assert (served["type"], served["type_url"]) == (xds_type.short_name, xds_type.type_url)
    [resource] = served["resources"]
    assert resource["name"] == f"the-{xds_type.short_name}"
    assert f"the-{xds_type.short_name}" in json.dumps(resource["resource"])
    assert row["sync"][xds_type.short_name] == "SYNCED"
    assert f'<a href="?type={xds_type.short_name}" class="current">' in page
    assert f"<code>the-{xds_type.short_name}</code>" in page


async def test_a_connected_proxy_without_a_snapshot_has_an_empty_config() -> None:
    plane = FakeControlPlane(views=[proxy_view(NODE)])

    config = (await get(plane, f"/api/proxies/{NODE}/config")).json()

    assert config == {
        "node_id": NODE,
        "snapshot_version": None,
        "types": [],
        "offset": 0,
        "limit": DEFAULT_LIMIT,
        "total": {},
        "next_offset": None,
    }


# -- errors, readiness, health, metrics ---------------------------------------------------


async def test_errors_name_the_file_the_proxy_and_the_blamed_resource() -> None:
    plane = FakeControlPlane(
        errors=["services.yaml: Service default/backend: spec.ports[0].port: not a port"],
        views=[
            proxy_view(
                NODE,
                typed(CLUSTER, nonce="2", sent="v2", acked="v1", last_nack=nack("2")),
                typed(LISTENER, nonce="3", sent="v3", acked="v3", last_nack=nack("2")),
            ),
            proxy_view("broken.default", snapshot_error="inconsistent snapshot for broken"),
            proxy_view("no-meta.default", metadata_error="LABELS is not a JSON object"),
        ],
    )

    errors = (await get(plane, "/api/errors")).json()

    assert errors["source"] == plane.errors
    assert errors["translation"] == []  # this view does not offer them
    # Only the unresolved NACK: the LDS one was followed by an ACK.
    [cds_nack] = errors["nacks"]
    assert (cds_nack["node_id"], cds_nack["type"], cds_nack["resources"]) == (
        NODE,
        "CDS",
        ["bad-cluster"],
    )
    assert "connect_timeout must be positive" in cds_nack["message"]
    assert errors["snapshots"] == [
        {"node_id": "broken.default", "error": "inconsistent snapshot for broken"}
    ]
    assert errors["metadata"] == [
        {"node_id": "no-meta.default", "error": "LABELS is not a JSON object"}
    ]


@pytest.mark.parametrize(
    ("ready", "code", "banner"), [(True, 200, "Ready"), (False, 503, "Not ready")]
)
async def test_readiness_is_a_status_code_for_probes_and_a_banner_for_people(
    ready: bool, code: int, banner: str
) -> None:
    plane = FakeControlPlane(ready=ready)

    response = await get(plane, "/readyz")

    assert response.status_code == code
    assert response.json() == {
        "ready": ready,
        "xds_serving": True,
        "sources_synced": ready,
        "source": "file:/mesh",
    }
    assert f"<strong>{banner}</strong>" in (await get(plane, "/")).text


async def test_health_and_metrics_are_served_as_before() -> None:
    plane = FakeControlPlane()

    assert (await get(plane, "/healthz")).json() == {"status": "ok"}
    metrics = await get(plane, "/metrics")
    assert metrics.text == "xds_streams 1\n"
    assert metrics.headers["content-type"].startswith("text/plain")


# -- the web page -------------------------------------------------------------------------


async def test_the_page_lists_proxies_with_colour_coded_status_and_their_nacks() -> None:
    plane = FakeControlPlane(
        errors=["endpoints.yaml: EndpointSlice default/echo: endpoints[0]: not an IP"],
        views=[
            proxy_view(
                NODE,
                synced(CLUSTER),
                typed(ENDPOINT, nonce="1", sent="v1"),
                typed(
                    LISTENER,
                    nonce="2",
                    sent="v2",
                    acked="v1",
                    last_nack=nack("2", type_url=LISTENER, resources=("inbound|9080",)),
                ),
            )
        ],
    )

    page = await get(plane, "/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert text.index("endpoints.yaml: EndpointSlice default/echo") < text.index(NODE)
    assert f'href="proxies/{quote(NODE, safe="")}"' in text
    for css_class in ("synced", "stale", "nacked", "not-sent"):
        assert f'class="sync sync-{css_class}"' in text
    assert "LDS NACKED" in text
    assert "<code>inbound|9080</code>" in text
    assert "connect_timeout must be positive" in text


async def test_the_proxy_page_shows_subscriptions_and_config_with_the_blamed_resource_marked() -> (
    None
):
    plane = FakeControlPlane(
        views=[
            proxy_view(
                NODE,
                typed(CLUSTER, nonce="2", sent="v2", acked="v1", last_nack=nack("2")),
                typed(ENDPOINT, nonce="1", sent="v1", acked="v1", names=("bad-cluster", "good")),
            )
        ],
        snapshots={NODE: snapshot(cluster("good"), cluster("bad-cluster", seconds=-1))},
    )

    page = (await get(plane, f"/proxies/{NODE}")).text

    assert f"<h1>{NODE}</h1>" in page
    assert "<h2>Subscriptions</h2>" in page
    assert "2 name(s)" in page
    assert '<details class="resource blamed"><summary><code>bad-cluster</code>' in page
    assert '<details class="resource"><summary><code>good</code>' in page
    assert "&quot;connect_timeout&quot;: &quot;-1s&quot;" in page  # pretty JSON, escaped
    assert 'href="../api/proxies/client-0.default/config"' in page


async def test_the_proxy_page_can_show_one_type() -> None:
    plane = FakeControlPlane(
        views=[proxy_view(NODE, synced(CLUSTER))],
        snapshots={NODE: snapshot(cluster("good"))},
    )

    page = (await get(plane, f"/proxies/{NODE}?type=EDS")).text

    assert "<h3>EDS " in page
    assert "<h3>CDS " not in page
    assert '<a href="?type=EDS" class="current">EDS</a>' in page


def evil_plane() -> FakeControlPlane:
    evil_nack = nack(
        "2",
        node_id=EVIL,
        message="<img src=x onerror=alert('message')>",
        resources=("<script>alert('resource')</script>",),
    )
    bad = cluster("<script>alert('resource')</script>")
    return FakeControlPlane(
        errors=["<b onmouseover=alert('source')>services.yaml</b>"],
        views=[
            dataclasses.replace(
                proxy_view(
                    EVIL,
                    typed(CLUSTER, nonce="2", sent="v2", acked="v1", last_nack=evil_nack),
                    snapshot_error="<script>alert('snapshot')</script>",
                ),
                proxy=Proxy(node_id=EVIL, workload="<i>w</i>", labels=(("<k>", "<v>"),)),
            )
        ],
        snapshots={EVIL: snapshot(bad)},
    )


@pytest.mark.parametrize("path", ["/", "/proxies/" + quote(EVIL, safe="")])
async def test_everything_a_proxy_or_a_manifest_names_is_escaped_in_html(path: str) -> None:
    response = await get(evil_plane(), path)

    assert response.status_code == 200
    text = response.text
    for raw in ("<script>alert", "<img src=x", "<b onmouseover", "<i>w</i>", "<k>", "<v>"):
        assert raw not in text
    assert "&lt;script&gt;alert(&#x27;node&#x27;)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(&#x27;message&#x27;)&gt;" in text
    assert "&lt;script&gt;alert(&#x27;resource&#x27;)&lt;/script&gt;" in text
    # The only <script> on the page is the page's own refresh script.
    assert text.count("<script") == 1


async def test_a_node_id_in_a_link_is_url_quoted() -> None:
    text = (await get(evil_plane(), "/")).text

    assert f'href="proxies/{quote(EVIL, safe="")}"' in text


# -- bounded responses: pages, and bounded text -----------------------------------------------

MANY = 250
"""More than one default page (100) of proxies, errors or resources."""


@dataclass
class TranslatingPlane(FakeControlPlane):
    """A view that also lists the objects translation left out."""

    dropped: list[tuple[str, str]] = field(default_factory=list)

    def translation_errors(self) -> list[tuple[str, str]]:
        return list(self.dropped)


def many_proxies(count: int = MANY) -> list[ProxyView]:
    return [
        proxy_view(f"p-{i:03d}.default", synced(CLUSTER), stream_id=i + 1) for i in range(count)
    ]


PAGES = [
    pytest.param({}, range(0, 100), 100, id="default-page"),
    pytest.param({"offset": "100"}, range(100, 200), 200, id="second-page"),
    pytest.param({"offset": "200"}, range(200, 250), None, id="last-page"),
    pytest.param({"offset": "240", "limit": "5"}, range(240, 245), 245, id="small-page"),
    pytest.param({"limit": str(MAX_LIMIT)}, range(0, 250), None, id="largest-page"),
    pytest.param({"offset": "900"}, range(0), None, id="past-the-end"),
]


@pytest.mark.parametrize(("params", "expected", "next_offset"), PAGES)
async def test_the_proxy_list_is_paged_with_its_total_and_next_page_in_headers(
    params: dict[str, str], expected: range, next_offset: int | None
) -> None:
    plane = FakeControlPlane(views=many_proxies())

    response = await get(plane, "/api/proxies", params=params)

    assert response.status_code == 200
    assert [row["node_id"] for row in response.json()] == [f"p-{i:03d}.default" for i in expected]
    assert response.headers["x-total-count"] == str(MANY)
    if next_offset is None:
        assert "x-next-offset" not in response.headers
        assert "link" not in response.headers
    else:
        assert response.headers["x-next-offset"] == str(next_offset)
        assert f"offset={next_offset}" in response.headers["link"]
        assert response.headers["link"].endswith('; rel="next"')


@pytest.mark.parametrize(
    ("path", "params", "field_name"),
    [
        ("/api/proxies", {"limit": str(MAX_LIMIT + 1)}, "limit"),
        ("/api/proxies", {"limit": "0"}, "limit"),
        ("/api/errors", {"offset": "-1"}, "offset"),
        (f"/api/proxies/{NODE}/config", {"limit": "many"}, "limit"),
        ("/", {"limit": str(10 * MAX_LIMIT)}, "limit"),
    ],
)
async def test_a_page_out_of_bounds_is_a_422_naming_the_parameter(
    path: str, params: dict[str, str], field_name: str
) -> None:
    plane = FakeControlPlane(views=[proxy_view(NODE)], snapshots={NODE: snapshot()})

    response = await get(plane, path, params=params)

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["query", field_name]


async def test_errors_are_paged_list_by_list_with_totals() -> None:
    plane = TranslatingPlane(
        errors=[f"file-{i:03d}.yaml: bad" for i in range(MANY)],
        dropped=[(f"Service default/s-{i}", "not applied") for i in range(30)],
        views=[proxy_view(f"n-{i}.default", snapshot_error="refused") for i in range(120)],
    )

    first = (await get(plane, "/api/errors")).json()
    last = (await get(plane, "/api/errors", params={"offset": "200"})).json()

    assert first["total"] == {
        "source": MANY,
        "translation": 30,
        "nacks": 0,
        "snapshots": 120,
        "metadata": 0,
    }
    assert (len(first["source"]), len(first["translation"]), len(first["snapshots"])) == (
        100,
        30,
        100,
    )
    assert first["translation"][0] == {"object": "Service default/s-0", "error": "not applied"}
    assert (first["offset"], first["limit"], first["next_offset"]) == (0, DEFAULT_LIMIT, 100)
    assert last["source"] == [f"file-{i:03d}.yaml: bad" for i in range(200, MANY)]
    assert (last["translation"], last["snapshots"], last["next_offset"]) == ([], [], None)


async def test_the_config_of_a_proxy_is_paged_per_type() -> None:
    served = snapshot(*(cluster(f"c-{i:03d}") for i in range(MANY)))
    plane = FakeControlPlane(views=[proxy_view(NODE)], snapshots={NODE: served})

    first = (await get(plane, f"/api/proxies/{NODE}/config", params={"type": "CDS"})).json()
    last = (
        await get(plane, f"/api/proxies/{NODE}/config", params={"type": "CDS", "offset": "200"})
    ).json()

    [cds] = first["types"]
    assert (cds["total"], len(cds["resources"]), first["next_offset"]) == (MANY, 100, 100)
    assert cds["resources"][0]["name"] == "c-000"
    [cds] = last["types"]
    assert [r["name"] for r in cds["resources"]] == [f"c-{i:03d}" for i in range(200, MANY)]
    assert last["next_offset"] is None


async def test_the_pages_show_one_page_and_link_to_the_next() -> None:
    plane = TranslatingPlane(
        views=many_proxies(),
        errors=[f"file-{i:03d}.yaml: bad" for i in range(150)],
        dropped=[("EndpointSlice default/web-slice", "translating it raised ValueError")],
        snapshots={"p-000.default": snapshot(*(cluster(f"c-{i:03d}") for i in range(MANY)))},
    )

    index = (await get(plane, "/")).text
    second = (await get(plane, "/", params={"offset": "100"})).text
    detail = (await get(plane, "/proxies/p-000.default", params={"type": "CDS"})).text

    assert index.count('<a href="proxies/p-') == 100
    assert "p-099.default" in index and "p-100.default" not in index
    assert "Showing 1-100 of 250 proxies" in index
    assert 'href="?offset=100&amp;limit=100">next</a>' in index
    assert "p-100.default" in second and "p-099.default" not in second
    assert "150 source error(s)" in index and "and 50 more" in index
    assert index.count("<li>file-") == 100
    assert "1 object(s) could not be translated" in index
    assert "EndpointSlice default/web-slice: translating it raised ValueError" in index
    assert detail.count('<details class="resource') == 100
    assert "Showing 1-100 of 250 resources" in detail
    assert 'href="?type=CDS&amp;offset=100&amp;limit=100">next</a>' in detail


HUGE = "x" * 5_000_000 + "\ud800"


async def test_huge_or_unencodable_error_text_is_cut_everywhere() -> None:
    huge_nack = nack("2", message=HUGE, resources=tuple(f"r-{i}" for i in range(5000)))
    plane = TranslatingPlane(
        errors=[HUGE] * 3,
        dropped=[(f"Service default/{HUGE}", HUGE)],
        views=[
            proxy_view(
                NODE,
                typed(CLUSTER, nonce="2", sent="v2", acked="v1", last_nack=huge_nack),
                typed(ENDPOINT, nonce="1", names=tuple(f"n-{i}" for i in range(10_000))),
                snapshot_error=HUGE,
                metadata_error=HUGE,
            )
        ],
        snapshots={NODE: snapshot(cluster("bad-cluster"))},
    )

    for path in ("/api/errors", "/api/proxies", f"/api/proxies/{NODE}", "/", f"/proxies/{NODE}"):
        response = await get(plane, path)
        assert response.status_code == 200, path
        assert len(response.content) < 100_000, path
    errors = (await get(plane, "/api/errors")).json()
    texts = [
        *errors["source"],
        errors["translation"][0]["object"],
        errors["translation"][0]["error"],
        errors["nacks"][0]["message"],
        errors["snapshots"][0]["error"],
        errors["metadata"][0]["error"],
    ]
    assert all(1 <= len(text) <= 1000 and text.endswith("…") for text in texts)
    assert errors["nacks"][0]["resources_total"] == 5000
    assert len(errors["nacks"][0]["resources"]) == MAX_NAMES_SHOWN
    [row] = (await get(plane, "/api/proxies")).json()
    eds = row["types"][1]
    assert (len(eds["names"]), eds["names_total"]) == (MAX_NAMES_SHOWN, 10_000)
    assert "and 9900 more" in (await get(plane, f"/proxies/{NODE}")).text


async def test_an_error_quoting_a_lone_surrogate_is_shown_escaped() -> None:
    plane = TranslatingPlane(
        errors=["services.yaml: Service default/x\ud800y: metadata.name: not a DNS label"],
        dropped=[("EndpointSlice default/x\ud800y", "zone 'x\ud800y' raised")],
    )

    page = await get(plane, "/")
    errors = (await get(plane, "/api/errors")).json()

    assert page.status_code == 200
    assert page.text.count("x\\ud800y") == 3
    assert errors["source"] == [
        "services.yaml: Service default/x\\ud800y: metadata.name: not a DNS label"
    ]
    assert errors["translation"] == [
        {"object": "EndpointSlice default/x\\ud800y", "error": "zone 'x\\ud800y' raised"}
    ]
