"""Spec: the mesh and one proxy in, that proxy's listeners out."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import Message
from translate_builders import (
    grpc,
    hcm_of,
    http,
    mesh,
    proxy,
    service,
    tcp,
    tcp_proxy_of,
)

from xds_server.model import MeshSnapshot, Proxy, Service
from xds_server.translate import proxy_listeners


def listeners(snapshot: MeshSnapshot, sidecar: Proxy) -> dict[str, listener_pb2.Listener]:
    found = proxy_listeners(snapshot, sidecar)
    named = {listener.name: listener for listener in found}
    assert len(named) == len(found), "listener names are unique"
    return named


def bound(listener: listener_pb2.Listener) -> tuple[str, int]:
    address = listener.address.socket_address
    return address.address, address.port_value


def log_format(config: Message) -> str:
    """The access log line format of an HTTP connection manager or TCP proxy."""
    (log,) = config.access_log
    stdout = stream_pb2.StdoutAccessLog()
    assert log.typed_config.Unpack(stdout)
    return str(stdout.log_format.text_format_source.inline_string)


WEB = service("web", http(80, target=8080), grpc(9090), selector={"app": "web"})
DB = service("db", tcp(5432, name="pg"), namespace="data", selector={"app": "db"})
SIDECAR = proxy("web-1", labels={"app": "web"}, ip="127.0.0.2")


# --- outbound HTTP ----------------------------------------------------------


def test_the_outbound_http_listener_takes_the_apps_requests_on_the_outbound_port() -> None:
    outbound = listeners(mesh(WEB), SIDECAR)["outbound_http"]
    assert bound(outbound) == ("127.0.0.1", 15001)
    assert outbound.traffic_direction == base_pb2.OUTBOUND
    sidecar = proxy(outbound_address="127.0.0.5", outbound_port=15006)
    assert bound(listeners(mesh(), sidecar)["outbound_http"]) == ("127.0.0.5", 15006)


@pytest.mark.parametrize(
    ("namespace", "route_config"),
    [("default", "outbound|default"), ("shop", "outbound|shop"), ("data", "outbound|data")],
)
def test_the_outbound_http_listener_routes_by_its_namespaces_table_over_ads(
    namespace: str, route_config: str
) -> None:
    hcm = hcm_of(listeners(mesh(WEB), proxy(namespace=namespace))["outbound_http"])
    assert hcm.rds.route_config_name == route_config
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.rds.config_source.resource_api_version == config_source_pb2.V3
    assert hcm.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    assert hcm.use_remote_address.value is False
    assert hcm.normalize_path.value is True
    assert hcm.http_protocol_options.allow_absolute_url.value is True
    assert hcm.stat_prefix == "outbound_http"


def test_http_access_logs_show_the_response_code_and_upstream_host() -> None:
    line = log_format(hcm_of(listeners(mesh(WEB), SIDECAR)["outbound_http"]))
    assert line.startswith("[%START_TIME%] outbound ")
    for field in ("%RESPONSE_CODE%", "%UPSTREAM_HOST%", "%UPSTREAM_CLUSTER%"):
        assert field in line
    assert line.endswith("\n")


def test_a_proxy_in_an_empty_mesh_has_just_the_outbound_http_listener() -> None:
    assert list(listeners(mesh(), SIDECAR)) == ["outbound_http"]


# --- outbound TCP -----------------------------------------------------------


def test_each_tcp_service_port_gets_an_outbound_listener_on_its_port() -> None:
    redis = service("cache", tcp(6379, name="redis"), tcp(5432, name="pg"), namespace="data")
    found = listeners(mesh(WEB, DB, redis), SIDECAR)
    tcp_names = [name for name in found if name.startswith("outbound_tcp_")]
    assert tcp_names == ["outbound_tcp_5432", "outbound_tcp_6379"]
    pg = found["outbound_tcp_5432"]
    assert bound(pg) == ("127.0.0.1", 5432)
    assert pg.traffic_direction == base_pb2.OUTBOUND
    assert tcp_proxy_of(found["outbound_tcp_6379"]).cluster == (
        "outbound|6379||cache.data.svc.cluster.local"
    )
    line = log_format(tcp_proxy_of(pg))
    assert "%UPSTREAM_HOST%" in line and line.startswith("[%START_TIME%] outbound tcp")


@pytest.mark.parametrize(
    ("services", "winner"),
    [
        (
            [service("db", tcp(5432), namespace="data"), service("pg", tcp(5432), namespace="a")],
            "outbound|5432||pg.a.svc.cluster.local",
        ),
        (
            [service("b", tcp(5432), namespace="x"), service("a", tcp(5432), namespace="x")],
            "outbound|5432||a.x.svc.cluster.local",
        ),
        (
            [service("a", http(5432), namespace="a"), service("b", tcp(5432), namespace="b")],
            "outbound|5432||b.b.svc.cluster.local",
        ),
    ],
    ids=["namespace-first", "then-name", "http-ports-do-not-compete"],
)
def test_a_tcp_port_wanted_by_two_services_goes_to_the_first_by_namespace_and_name(
    services: list[Service], winner: str
) -> None:
    found = listeners(mesh(*services), proxy())
    assert tcp_proxy_of(found["outbound_tcp_5432"]).cluster == winner


def test_no_tcp_listener_on_the_outbound_http_port() -> None:
    clash = service("proxyish", tcp(15001))
    assert "outbound_tcp_15001" not in listeners(mesh(clash), proxy())


def test_no_tcp_listener_on_a_port_the_local_app_listens_on() -> None:
    """The app binds app_address:8080; an outbound listener there would fail to bind."""
    app = service("app", tcp(8080), selector={"app": "me"})
    other = service("other", tcp(8080, name="tcp-other"), namespace="other")
    sidecar = proxy(labels={"app": "me"}, ip="127.0.0.2")
    found = listeners(mesh(app, other), sidecar)
    assert "outbound_tcp_8080" not in found
    assert "inbound_8080" in found
    without_inbound = listeners(mesh(app, other), proxy(labels={"app": "me"}))
    assert "outbound_tcp_8080" in without_inbound


def test_a_wildcard_outbound_address_clashes_with_inbound_ports() -> None:
    db = service("db", tcp(5432), selector={"app": "db"})
    sidecar = proxy(labels={"app": "db"}, ip="127.0.0.2", outbound_address="0.0.0.0")
    found = listeners(mesh(db), sidecar)
    assert bound(found["inbound_5432"]) == ("127.0.0.2", 5432)
    assert "outbound_tcp_5432" not in found


# --- inbound ----------------------------------------------------------------


def test_inbound_http_listeners_forward_to_the_app_and_stamp_the_node_id() -> None:
    inbound = listeners(mesh(WEB), SIDECAR)["inbound_8080"]
    assert bound(inbound) == ("127.0.0.2", 8080)
    assert inbound.traffic_direction == base_pb2.INBOUND
    hcm = hcm_of(inbound)
    assert not hcm.HasField("rds")
    assert hcm.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    (vhost,) = hcm.route_config.virtual_hosts
    assert list(vhost.domains) == ["*"]
    (route,) = vhost.routes
    assert route.route.cluster == "inbound|8080||"
    (header,) = hcm.route_config.request_headers_to_add
    assert (header.header.key, header.header.value) == ("x-mesh-inbound", "web-1")
    assert header.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert log_format(hcm).startswith("[%START_TIME%] inbound ")


def test_inbound_grpc_listeners_honour_the_grpc_timeout_header() -> None:
    hcm = hcm_of(listeners(mesh(WEB), SIDECAR)["inbound_9090"])
    (route,) = hcm.route_config.virtual_hosts[0].routes
    assert route.route.cluster == "inbound|9090||"
    assert route.route.max_stream_duration.HasField("grpc_timeout_header_max")


def test_inbound_tcp_listeners_proxy_bytes_to_the_app() -> None:
    sidecar = proxy("db-0", namespace="data", labels={"app": "db"}, ip="127.0.0.3")
    inbound = listeners(mesh(DB), sidecar)["inbound_5432"]
    assert bound(inbound) == ("127.0.0.3", 5432)
    assert inbound.traffic_direction == base_pb2.INBOUND
    assert tcp_proxy_of(inbound).cluster == "inbound|5432||"


@pytest.mark.parametrize(
    "sidecar",
    [
        proxy("web-1", labels={"app": "web"}),
        proxy("web-1", labels={"app": "api"}, ip="127.0.0.2"),
        proxy("web-1", labels={"app": "web"}, ip="127.0.0.2", namespace="shop"),
    ],
    ids=["no-ip", "not-selected", "other-namespace"],
)
def test_no_inbound_listeners(sidecar: Proxy) -> None:
    assert not [name for name in listeners(mesh(WEB), sidecar) if name.startswith("inbound")]


def test_services_sharing_a_target_port_share_one_inbound_listener() -> None:
    a = service("a", http(80, target=8080), selector={"app": "web"})
    b = service("b", http(8080, name="http-b"), selector={"app": "web"})
    found = listeners(mesh(a, b), SIDECAR)
    assert [name for name in found if name.startswith("inbound")] == ["inbound_8080"]


def test_listeners_come_in_a_stable_order() -> None:
    assert list(listeners(mesh(WEB, DB), SIDECAR)) == [
        "outbound_http",
        "inbound_8080",
        "inbound_9090",
        "outbound_tcp_5432",
    ]
