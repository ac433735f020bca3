"""Spec: Services in, shared EDS clusters out; a proxy in, its inbound clusters out."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from translate_builders import (
    endpoint,
    endpoint_slice,
    grpc,
    http,
    http2,
    mesh,
    proxy,
    service,
    tcp,
)

from xds_server.model import MeshSnapshot, Proxy, Service, ServicePort
from xds_server.translate import (
    cluster_name,
    clusters_for_service,
    inbound_cluster_name,
    proxy_clusters,
)

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def speaks_http2(cluster: cluster_pb2.Cluster) -> bool:
    if HTTP_OPTIONS not in cluster.typed_extension_protocol_options:
        return False
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[HTTP_OPTIONS].Unpack(options)
    return options.explicit_http_config.HasField("http2_protocol_options")


def static_hosts(cluster: cluster_pb2.Cluster) -> list[tuple[str, int]]:
    return [
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
        for locality in cluster.load_assignment.endpoints
        for lb in locality.lb_endpoints
    ]


@pytest.mark.parametrize(
    ("svc", "port", "name"),
    [
        (service("web", http(80)), http(80), "outbound|80||web.default.svc.cluster.local"),
        (
            service("db", tcp(5432), namespace="data"),
            tcp(5432),
            "outbound|5432||db.data.svc.cluster.local",
        ),
    ],
)
def test_cluster_names_follow_istio(svc: Service, port: ServicePort, name: str) -> None:
    assert cluster_name(svc, port) == name


def test_one_eds_cluster_per_service_port_fetched_over_ads() -> None:
    svc = service("web", http(80, target=8080), grpc(9090), tcp(5432, name="pg"))
    clusters = clusters_for_service(svc)
    assert [c.name for c in clusters] == [
        "outbound|80||web.default.svc.cluster.local",
        "outbound|9090||web.default.svc.cluster.local",
        "outbound|5432||web.default.svc.cluster.local",
    ]
    for cluster in clusters:
        assert cluster.type == cluster_pb2.Cluster.EDS
        eds = cluster.eds_cluster_config
        assert eds.eds_config.HasField("ads")
        assert eds.eds_config.resource_api_version == config_source_pb2.V3
        assert eds.service_name == ""  # the CLA carries the cluster's own name
        assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
        assert cluster.connect_timeout.seconds == 10


def test_circuit_breakers_are_opened_up_past_envoys_low_defaults() -> None:
    (cluster,) = clusters_for_service(service("web", http(80)))
    (thresholds,) = cluster.circuit_breakers.thresholds
    for limit in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        assert getattr(thresholds, limit).value == 2**32 - 1


@pytest.mark.parametrize(
    ("port", "http2"),
    [
        (http(80), False),
        (http2(80), True),
        (grpc(80), True),
        (tcp(80), False),
        (ServicePort(80, name="web", app_protocol="kubernetes.io/h2c"), True),
        (ServicePort(80, name="web", app_protocol="grpc-web"), False),
    ],
    ids=["http", "http2", "grpc", "tcp", "appProtocol-h2c", "appProtocol-grpc-web"],
)
def test_http2_and_grpc_ports_speak_http2_upstream(port: ServicePort, http2: bool) -> None:
    (cluster,) = clusters_for_service(service("web", port))
    assert speaks_http2(cluster) is http2


def test_udp_ports_and_repeated_port_numbers_get_no_extra_cluster() -> None:
    svc = service(
        "dns",
        tcp(53, name="dns-tcp"),
        ServicePort(53, name="dns", protocol="UDP"),
        ServicePort(5353, name="mdns", protocol="UDP"),
    )
    assert [c.name for c in clusters_for_service(svc)] == [
        "outbound|53||dns.default.svc.cluster.local"
    ]


def test_a_service_without_ports_has_no_clusters() -> None:
    assert clusters_for_service(service("headless")) == []


# --- inbound clusters -------------------------------------------------------

WEB = service(
    "web", http(80, target=8080), grpc(9090), selector={"app": "web"}, namespace="default"
)


def test_inbound_clusters_reach_the_local_app_on_each_target_port() -> None:
    clusters = proxy_clusters(mesh(WEB), proxy(labels={"app": "web"}, ip="127.0.0.2"))
    assert [c.name for c in clusters] == ["inbound|8080||", "inbound|9090||"]
    assert [static_hosts(c) for c in clusters] == [[("127.0.0.1", 8080)], [("127.0.0.1", 9090)]]
    assert all(c.type == cluster_pb2.Cluster.STATIC for c in clusters)
    assert [speaks_http2(c) for c in clusters] == [False, True]
    assert inbound_cluster_name(8080) == "inbound|8080||"


def test_inbound_clusters_use_the_proxys_app_address() -> None:
    sidecar = proxy(labels={"app": "web"}, ip="127.0.0.2", app_address="127.0.0.3")
    (first, _) = proxy_clusters(mesh(WEB), sidecar)
    assert static_hosts(first) == [("127.0.0.3", 8080)]


@pytest.mark.parametrize(
    ("sidecar", "why"),
    [
        (proxy(labels={"app": "web"}), "no ip"),
        (proxy(labels={"app": "other"}, ip="127.0.0.2"), "not selected"),
        (proxy(labels={"app": "web"}, ip="127.0.0.2", namespace="shop"), "other namespace"),
        (proxy(labels={"app": "web"}, ip="127.0.0.1"), "ip is the app's own address"),
    ],
    ids=["no-ip", "not-selected", "other-namespace", "ip-is-app-address"],
)
def test_no_inbound_clusters(sidecar: Proxy, why: str) -> None:
    assert proxy_clusters(mesh(WEB), sidecar) == [], why


def test_two_services_on_one_target_port_share_one_inbound_cluster() -> None:
    a = service("a", http(80, target=8080), selector={"app": "web"})
    b = service("b", http(8080), selector={"app": "web"})
    clusters = proxy_clusters(mesh(a, b), proxy(labels={"app": "web"}, ip="127.0.0.2"))
    assert [c.name for c in clusters] == ["inbound|8080||"]


def test_the_first_service_by_name_decides_a_shared_ports_protocol() -> None:
    a = service("a", grpc(8080), selector={"app": "web"})
    b = service("b", tcp(8080), selector={"app": "web"})
    (cluster,) = proxy_clusters(mesh(b, a), proxy(labels={"app": "web"}, ip="127.0.0.2"))
    assert speaks_http2(cluster)


def test_an_inbound_port_on_the_outbound_listeners_address_is_left_out() -> None:
    svc = service("web", http(15001), http(8080, name="http-alt"), selector={"app": "web"})
    sidecar = proxy(
        labels={"app": "web"}, ip="127.0.0.2", outbound_address="0.0.0.0", app_address="127.0.0.3"
    )
    assert [c.name for c in proxy_clusters(mesh(svc), sidecar)] == ["inbound|8080||"]


NAMED = service("api", http(80, target="web"), selector={"app": "api"})


def named_mesh() -> MeshSnapshot:
    return mesh(
        NAMED,
        endpoint_slice(
            NAMED,
            endpoint("127.0.0.20", pod="api-0"),
            endpoint("127.0.0.21", pod="api-1", ready=False),
            ports={"http": 8081},
            name="api-a",
        ),
        endpoint_slice(
            NAMED, endpoint("127.0.0.22", pod="api-2"), ports={"http": 8082}, name="api-b"
        ),
    )


@pytest.mark.parametrize(
    ("snapshot", "sidecar", "port"),
    [
        (named_mesh(), proxy(labels={"app": "api"}, ip="127.0.0.22"), 8082),
        (named_mesh(), proxy(labels={"app": "api"}, ip="127.0.0.21"), 8081),
        (named_mesh(), proxy(labels={"app": "api"}, ip="127.0.0.9", workload="api-2"), 8082),
        (named_mesh(), proxy(labels={"app": "api"}, ip="127.0.0.9"), 8081),
        (mesh(NAMED), proxy(labels={"app": "api"}, ip="127.0.0.9"), 80),
    ],
    ids=["own-ip", "own-ip-not-ready", "own-pod-name", "first-slice", "no-slices-service-port"],
)
def test_a_named_target_port_resolves_through_the_endpoint_slices(
    snapshot: MeshSnapshot, sidecar: Proxy, port: int
) -> None:
    (cluster,) = proxy_clusters(snapshot, sidecar)
    assert cluster.name == f"inbound|{port}||"
    assert static_hosts(cluster) == [("127.0.0.1", port)]


@pytest.mark.parametrize(
    ("target", "port"),
    [(None, 80), (8080, 8080), ("8081", 8081), (0, None), (70000, None)],
)
def test_numeric_target_ports(target: int | str | None, port: int | None) -> None:
    svc = service("web", http(80, target=target), selector={"app": "web"})
    clusters = proxy_clusters(mesh(svc), proxy(labels={"app": "web"}, ip="127.0.0.2"))
    assert [c.name for c in clusters] == ([] if port is None else [f"inbound|{port}||"])
