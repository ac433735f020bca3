"""The admin app against an in-memory control plane: what a person sees of the mesh.

Specifications for the JSON API and the web page: per-type sync status as
`istioctl proxy-status` names it, one proxy's detail and served config,
errors that name their object, readiness, and HTML that never runs what a
proxy or a manifest put in a name or a message.
"""

from __future__ import annotations

import dataclasses
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
from xds_server.admin.views import sync_status
from xds_server.cache import ResourceSet, Snapshot
from xds_server.model import Proxy
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    make_resource,
)
from xds_server.server import NackStatus, StreamStatus, TypeStatus

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
    transport = httpx.ASGITransport(app=create_app(plane))
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


async def test_a_connected_proxy_without_a_snapshot_has_an_empty_config() -> None:
    plane = FakeControlPlane(views=[proxy_view(NODE)])

    config = (await get(plane, f"/api/proxies/{NODE}/config")).json()

    assert config == {"node_id": NODE, "snapshot_version": None, "types": []}


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
