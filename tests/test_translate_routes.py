"""Spec: Services and a caller's namespace in, that namespace's outbound RouteConfiguration out."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from translate_builders import grpc, http, http2, mesh, service, tcp

from xds_server.model import MeshSnapshot, Service, ServicePort
from xds_server.resources import make_resource
from xds_server.translate import (
    OutboundRouteTables,
    outbound_route_config,
    outbound_route_tables,
)


def table(*services: Service, caller: str = "default") -> route_pb2.RouteConfiguration:
    config = outbound_route_config(mesh(*services), caller)
    assert config.name == f"outbound|{caller}"
    return config


def domains(config: route_pb2.RouteConfiguration) -> dict[str, list[str]]:
    return {vh.name: list(vh.domains) for vh in config.virtual_hosts}


def route_of(config: route_pb2.RouteConfiguration, vhost: str) -> route_components_pb2.Route:
    (route,) = next(vh.routes for vh in config.virtual_hosts if vh.name == vhost)
    return route


def cluster_for(config: route_pb2.RouteConfiguration, host: str) -> str | None:
    """The cluster a request with `Host: host` goes to (our tables have no wildcards)."""
    found = [vh for vh in config.virtual_hosts if host in vh.domains]
    assert len(found) <= 1, f"{host} is routed twice"
    if not found:
        return None  # Envoy answers 404
    (route,) = found[0].routes
    return str(route.route.cluster)


def cluster(name: str, namespace: str, port: int = 8080) -> str:
    return f"outbound|{port}||{name}.{namespace}.svc.cluster.local"


@pytest.mark.parametrize("caller", ["default", "shop"])
def test_an_empty_mesh_still_has_the_callers_table(caller: str) -> None:
    config = table(caller=caller)
    assert config.name == f"outbound|{caller}"
    assert len(config.virtual_hosts) == 0


def test_every_http_port_gets_a_virtual_host_and_tcp_ports_get_none() -> None:
    svc = service("web", http(80), grpc(9090), http2(8443), tcp(5432, name="pg"))
    assert list(domains(table(svc))) == [
        "web.default.svc.cluster.local:80",
        "web.default.svc.cluster.local:9090",
        "web.default.svc.cluster.local:8443",
    ]


@pytest.mark.parametrize(
    ("caller", "names"),
    [
        (
            "shop",  # the Service's own namespace: the short name too
            [
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
            ],
        ),
        (
            "default",  # any other namespace: `web` would mean web.default there
            [
                "web.shop.svc.cluster.local:8080",
                "web.shop.svc:8080",
                "web.shop:8080",
                "127.10.0.1:8080",
                "web.shop.svc.cluster.local",
                "web.shop.svc",
                "web.shop",
                "127.10.0.1",
            ],
        ),
    ],
)
def test_a_port_answers_to_every_name_a_client_in_the_callers_namespace_may_use(
    caller: str, names: list[str]
) -> None:
    svc = service("web", http(8080), namespace="shop", cluster_ip="127.10.0.1")
    assert domains(table(svc, caller=caller))["web.shop.svc.cluster.local:8080"] == names


# Two namespaces with a `backend` each (distinct cluster IPs), a third with none.
BACKENDS = (
    service("backend", http(8080), namespace="default", cluster_ip="127.10.0.1"),
    service("backend", http(8080), namespace="shop", cluster_ip="127.10.0.2"),
    service("frontend", http(80), namespace="web"),
)


@pytest.mark.parametrize(
    ("caller", "host", "expected"),
    [
        # a short name resolves in the caller's namespace, as DNS resolves it
        ("shop", "backend", cluster("backend", "shop")),
        ("shop", "backend:8080", cluster("backend", "shop")),
        ("default", "backend", cluster("backend", "default")),
        ("default", "backend:8080", cluster("backend", "default")),
        ("web", "backend", None),
        ("web", "backend:8080", None),
        ("web", "frontend", cluster("frontend", "web", 80)),
        ("shop", "frontend", None),
        # qualified names and cluster IPs mean the same from anywhere
        ("shop", "backend.default", cluster("backend", "default")),
        ("shop", "backend.default:8080", cluster("backend", "default")),
        ("default", "backend.shop", cluster("backend", "shop")),
        ("default", "backend.shop.svc:8080", cluster("backend", "shop")),
        ("web", "backend.shop.svc.cluster.local", cluster("backend", "shop")),
        ("web", "backend.default.svc.cluster.local:8080", cluster("backend", "default")),
        ("default", "127.10.0.2:8080", cluster("backend", "shop")),
        ("shop", "127.10.0.1", cluster("backend", "default")),
        ("default", "frontend.web", cluster("frontend", "web", 80)),
        # a name with the wrong port is no name
        ("shop", "backend:9090", None),
        ("default", "backend.shop:80", None),
    ],
)
def test_short_names_resolve_in_the_callers_namespace_and_qualified_names_anywhere(
    caller: str, host: str, expected: str | None
) -> None:
    assert cluster_for(table(*BACKENDS, caller=caller), host) == expected


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
@pytest.mark.parametrize("caller", ["default", "elsewhere"])
def test_names_without_a_port_go_to_port_80_else_the_first_http_port(
    ports: tuple[ServicePort, ...], bare: int, caller: str
) -> None:
    found = domains(table(service("web", *ports), caller=caller))
    with_bare = [name for name, names in found.items() if "web.default" in names]
    assert with_bare == [f"web.default.svc.cluster.local:{bare}"]
    assert ("web" in found[with_bare[0]]) is (caller == "default")
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


# Services that claim the same names: a cluster IP declared twice (the file
# source allows it), and names Kubernetes would reject ("web.shop" in
# "default" is short for what `web.shop` names).
CLASHING = (
    service("web", http(80), grpc(9090), namespace="default", cluster_ip="127.10.0.1"),
    service("web", http(80), http(8080), namespace="shop", cluster_ip="127.10.0.1"),
    service("api", http(8080, name="http-a"), namespace="default"),
    service("api", grpc(8080), namespace="shop"),
    service("default", http(80), namespace="default"),
    service("web.shop", http(80), namespace="default"),
)


@pytest.mark.parametrize("services", [BACKENDS, CLASHING], ids=["backends", "clashing"])
@pytest.mark.parametrize("caller", ["default", "shop", "web", "nowhere"])
def test_no_domain_is_ever_routed_twice(services: tuple[Service, ...], caller: str) -> None:
    config = table(*services, caller=caller)
    every = [domain for vh in config.virtual_hosts for domain in vh.domains]
    assert len(every) == len(set(every))
    assert all(len(vh.domains) > 0 for vh in config.virtual_hosts)


@pytest.mark.parametrize(
    ("caller", "host", "expected"),
    [
        # a cluster IP declared twice: the first Service by (namespace, name), from anywhere
        ("shop", "127.10.0.1:80", cluster("web", "default", 80)),
        ("default", "127.10.0.1", cluster("web", "default", 80)),
        ("shop", "127.10.0.1:8080", cluster("web", "shop")),  # the only one with 8080
        # the short names stay with the caller's namespace
        ("shop", "web", cluster("web", "shop", 80)),
        ("default", "web", cluster("web", "default", 80)),
        # a short name that is also a qualified name stays qualified
        ("default", "web.shop", cluster("web", "shop", 80)),
        ("default", "web.shop.default", cluster("web.shop", "default", 80)),
    ],
)
def test_clashing_domains_go_to_the_first_service_and_qualified_names_win(
    caller: str, host: str, expected: str
) -> None:
    assert cluster_for(table(*CLASHING, caller=caller), host) == expected


def test_virtual_hosts_are_ordered_by_namespace_name_and_declared_port() -> None:
    config = table(
        service("b", http(81), http(80), namespace="default"),
        service("a", http(80), namespace="zeta"),
        service("a", http(80), namespace="default"),
        caller="zeta",
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


@pytest.mark.parametrize("caller", ["default", "shop", "nowhere"])
def test_the_table_does_not_depend_on_insertion_order(caller: str) -> None:
    services = [
        service("web", http(80), namespace="shop"),
        service("web", http(80), grpc(9090), namespace="default"),
        service("api", http(8080), namespace="default"),
    ]
    a = table(*services, caller=caller).SerializeToString(deterministic=True)
    b = table(*reversed(services), caller=caller).SerializeToString(deterministic=True)
    assert a == b


# -- the tables as served: assembled from bytes, reused across snapshots -----------------


@pytest.mark.parametrize("services", [(), BACKENDS, CLASHING], ids=["empty", "backends", "clash"])
@pytest.mark.parametrize("caller", ["default", "shop", "web", "nowhere"])
def test_the_served_bytes_are_the_tables_deterministic_serialization(
    services: tuple[Service, ...], caller: str
) -> None:
    tables = outbound_route_tables(mesh(*services))
    config = tables.config(caller)
    assert tables.encoded(caller) == config.SerializeToString(deterministic=True)
    served, made = tables.resource(caller), make_resource(config)
    assert (served.name, served.version, served.refs) == (made.name, made.version, made.refs)
    assert served.any == made.any


def changed(services: tuple[Service, ...], change: str) -> tuple[Service, ...]:
    _, *rest = services
    if change == "nothing":
        return services
    if change == "a port added":
        return (service("backend", http(8080), http(80), namespace="default"), *rest)
    if change == "a service added":
        return (*services, service("backend", http(8080), namespace="web"))
    if change == "a service removed":
        return tuple(rest)
    assert change == "a cluster IP taken", change
    return (*services, service("thief", http(8080), namespace="aaa", cluster_ip="127.10.0.2"))


def fresh_and_reused(before: MeshSnapshot, after: MeshSnapshot) -> tuple[OutboundRouteTables, ...]:
    return OutboundRouteTables(after), OutboundRouteTables(after, OutboundRouteTables(before))


@pytest.mark.parametrize(
    "change",
    ["nothing", "a port added", "a service added", "a service removed", "a cluster IP taken"],
)
def test_tables_built_from_the_previous_snapshots_equal_tables_built_afresh(change: str) -> None:
    before, after = mesh(*BACKENDS), mesh(*changed(BACKENDS, change))
    fresh, reused = fresh_and_reused(before, after)
    for caller in ("aaa", "default", "shop", "web", "nowhere"):
        assert reused.encoded(caller) == fresh.encoded(caller), caller


def test_an_unchanged_mesh_reuses_the_served_tables() -> None:
    before = OutboundRouteTables(mesh(*BACKENDS))
    served = before.resource("shop")
    assert OutboundRouteTables(mesh(*BACKENDS), before).resource("shop") is served
    moved = mesh(*changed(BACKENDS, "a port added"))
    assert OutboundRouteTables(moved, before).resource("shop") is not served


def test_the_tables_are_built_once_per_mesh_snapshot() -> None:
    snapshot = mesh(*BACKENDS)
    assert outbound_route_tables(snapshot) is outbound_route_tables(snapshot)
