"""Spec: Services in, the shared `outbound` RouteConfiguration out."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from translate_builders import grpc, http, http2, mesh, service, tcp

from xds_server.model import Service, ServicePort
from xds_server.translate import OUTBOUND_ROUTE_NAME, outbound_route_configs


def table(*services: Service) -> route_pb2.RouteConfiguration:
    (config,) = outbound_route_configs(mesh(*services))
    assert config.name == OUTBOUND_ROUTE_NAME
    return config


def domains(config: route_pb2.RouteConfiguration) -> dict[str, list[str]]:
    return {vh.name: list(vh.domains) for vh in config.virtual_hosts}


def route_of(config: route_pb2.RouteConfiguration, vhost: str) -> route_components_pb2.Route:
    (route,) = next(vh.routes for vh in config.virtual_hosts if vh.name == vhost)
    return route


def test_an_empty_mesh_still_has_the_outbound_table() -> None:
    config = table()
    assert config.name == "outbound"
    assert len(config.virtual_hosts) == 0


def test_every_http_port_gets_a_virtual_host_and_tcp_ports_get_none() -> None:
    svc = service("web", http(80), grpc(9090), http2(8443), tcp(5432, name="pg"))
    assert list(domains(table(svc))) == [
        "web.default.svc.cluster.local:80",
        "web.default.svc.cluster.local:9090",
        "web.default.svc.cluster.local:8443",
    ]


def test_a_port_answers_to_every_in_cluster_name_with_its_port() -> None:
    svc = service("web", http(8080), namespace="shop", cluster_ip="127.10.0.1")
    assert domains(table(svc))["web.shop.svc.cluster.local:8080"] == [
        "web.shop.svc.cluster.local:8080",
        "web.shop.svc:8080",
        "web.shop:8080",
        "web:8080",
        "127.10.0.1:8080",
        "web.shop.svc.cluster.local",
        "web.shop.svc",
        "web.shop",
        "web",
        "127.10.0.1",
    ]


@pytest.mark.parametrize(
    ("ports", "bare"),
    [
        ((http(8080), http(80, name="http-main")), 80),
        ((http(8080), grpc(9090)), 8080),
        ((grpc(9090), http(8080)), 9090),
        ((tcp(80), http(8080)), 8080),
    ],
    ids=["port-80-wins", "first-http-port", "grpc-counts", "tcp-80-does-not"],
)
def test_names_without_a_port_go_to_port_80_else_the_first_http_port(
    ports: tuple[ServicePort, ...], bare: int
) -> None:
    found = domains(table(service("web", *ports)))
    with_bare = [name for name, names in found.items() if "web" in names]
    assert with_bare == [f"web.default.svc.cluster.local:{bare}"]
    for names in found.values():
        assert len(names) == len(set(names))


def test_cluster_ip_forms() -> None:
    assert (
        "[::1]:80"
        in domains(table(service("v6", http(80), cluster_ip="::1")))[
            "v6.default.svc.cluster.local:80"
        ]
    )
    headless = domains(table(service("db", http(80), cluster_ip="None")))
    assert headless["db.default.svc.cluster.local:80"][-1] == "db"


@pytest.mark.parametrize(
    ("namespaces", "owner"),
    [
        (("shop", "default"), "default"),
        (("default", "aaa"), "default"),
        (("zoo", "shop"), "shop"),
        (("b", "a", "c"), "a"),
    ],
)
def test_a_clashing_short_name_goes_to_default_else_the_first_namespace(
    namespaces: tuple[str, ...], owner: str
) -> None:
    services = [service("web", http(80), namespace=ns) for ns in namespaces]
    found = domains(table(*services))
    for ns in namespaces:
        names = found[f"web.{ns}.svc.cluster.local:80"]
        assert f"web.{ns}:80" in names
        assert f"web.{ns}" in names
        assert ("web" in names) is (ns == owner)
        assert ("web:80" in names) is (ns == owner)


def test_no_domain_is_ever_routed_twice() -> None:
    services = [
        service("web", http(80), grpc(9090), namespace="default", cluster_ip="127.10.0.1"),
        service("web", http(80), http(8080), namespace="shop", cluster_ip="127.10.0.1"),
        service("api", http(8080, name="http-a"), namespace="default"),
        service("api", grpc(8080), namespace="shop"),
        service("default", http(80), namespace="default"),
    ]
    config = table(*services)
    every = [domain for vh in config.virtual_hosts for domain in vh.domains]
    assert len(every) == len(set(every))
    assert all(len(vh.domains) > 0 for vh in config.virtual_hosts)


def test_virtual_hosts_are_ordered_by_namespace_name_and_declared_port() -> None:
    config = table(
        service("b", http(81), http(80), namespace="default"),
        service("a", http(80), namespace="zeta"),
        service("a", http(80), namespace="default"),
    )
    assert [vh.name for vh in config.virtual_hosts] == [
        "a.default.svc.cluster.local:80",
        "b.default.svc.cluster.local:81",
        "b.default.svc.cluster.local:80",
        "a.zeta.svc.cluster.local:80",
    ]


@pytest.mark.parametrize(
    ("port", "grpc_timeout_header"),
    [(http(80), False), (http2(80), False), (grpc(80), True)],
    ids=["http", "http2", "grpc"],
)
def test_routes_forward_everything_to_the_ports_cluster_without_a_timeout(
    port: ServicePort, grpc_timeout_header: bool
) -> None:
    route = route_of(table(service("web", port)), "web.default.svc.cluster.local:80")
    assert route.match.prefix == "/"
    assert route.route.cluster == "outbound|80||web.default.svc.cluster.local"
    assert route.route.HasField("timeout") and route.route.timeout.ToNanoseconds() == 0
    assert route.route.HasField("max_stream_duration") is grpc_timeout_header
    if grpc_timeout_header:
        assert route.route.max_stream_duration.grpc_timeout_header_max.ToNanoseconds() == 0


def test_routes_retry_only_failures_before_the_app_saw_the_request() -> None:
    route = route_of(table(service("web", http(80))), "web.default.svc.cluster.local:80")
    policy = route.route.retry_policy
    assert set(policy.retry_on.split(",")) == {
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
    }
    assert policy.num_retries.value == 2
    assert [p.name for p in policy.retry_host_predicate] == [
        "envoy.retry_host_predicates.previous_hosts"
    ]


def test_the_table_does_not_depend_on_insertion_order() -> None:
    services = [
        service("web", http(80), namespace="shop"),
        service("web", http(80), grpc(9090), namespace="default"),
        service("api", http(8080), namespace="default"),
    ]
    a = table(*services).SerializeToString(deterministic=True)
    b = table(*reversed(services)).SerializeToString(deterministic=True)
    assert a == b
