"""Spec: a proxy whose traffic iptables captures gets the virtual listeners.

Manifests in, listeners and clusters out, for `interception == "redirect"`:
which filter chain takes which original destination, what it does with it,
that every name resolves, and that a real Envoy accepts the result.  The
"none" mode is specified by the other `test_translate_*` modules and only
checked here for not changing.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message
from test_translate_envoy_validate import as_served, inline_everything, validate
from translate_builders import (
    endpoint,
    endpoint_slice,
    grpc,
    http,
    mesh,
    proxy,
    representative_mesh,
    representative_objects,
    service,
    tcp,
)

from xds_server.model import MeshSnapshot, Proxy
from xds_server.node_metadata import NodeMetadataError, metadata_of, proxy_from_metadata
from xds_server.resources import make_resource
from xds_server.translate import (
    INBOUND_HEADER,
    clusters_for_service,
    load_assignments_for_service,
    outbound_route_config,
    outbound_route_name,
    proxy_clusters,
    proxy_listeners,
)

HTTP_PROTOCOLS = ("http/1.0", "http/1.1", "h2c")
DEFAULT_ROUTES = outbound_route_name("default")

WEB = service(
    "web", http(80, target=8080), grpc(9090), selector={"app": "web"}, cluster_ip="10.96.0.10"
)
DB = service("db", tcp(5432, name="pg"), namespace="data", cluster_ip="10.96.0.20")
HEADLESS = service("peers", tcp(7000), cluster_ip="None")
SIDECAR = dataclasses.replace(
    proxy("web-1", labels={"app": "web"}, ip="10.0.0.5"), interception="redirect"
)


def captured(sidecar: Proxy = SIDECAR, **changes: object) -> Proxy:
    return dataclasses.replace(sidecar, **changes)  # type: ignore[arg-type]


def listeners(snapshot: MeshSnapshot, sidecar: Proxy = SIDECAR) -> dict[str, listener_pb2.Listener]:
    return {listener.name: listener for listener in proxy_listeners(snapshot, sidecar)}


def hcm(chain: listener_components_pb2.FilterChain) -> hcm_pb2.HttpConnectionManager:
    (network_filter,) = chain.filters
    config = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(config), network_filter.name
    return config


def tcp_cluster(chain: listener_components_pb2.FilterChain) -> str:
    (network_filter,) = chain.filters
    config = tcp_proxy_pb2.TcpProxy()
    assert network_filter.typed_config.Unpack(config), network_filter.name
    return str(config.cluster)


def what(chain: listener_components_pb2.FilterChain) -> str:
    """A chain's action in one word: `rds:<name>`, `route:<inline name>` or `tcp:<cluster>`."""
    if chain.filters[0].name == "envoy.filters.network.http_connection_manager":
        config = hcm(chain)
        if config.HasField("rds"):
            return f"rds:{config.rds.route_config_name}"
        return f"route:{config.route_config.name}"
    return f"tcp:{tcp_cluster(chain)}"


def table(listener: listener_pb2.Listener) -> dict[tuple[str, int, bool], str]:
    """(destination CIDR or "*", port, HTTP only?) -> action, for every plaintext filter
    chain (the mTLS ones of PeerAuthentication: tests/test_translate_peer_authentication.py)."""
    rows: dict[tuple[str, int, bool], str] = {}
    for chain in listener.filter_chains:
        match = chain.filter_chain_match
        if match.transport_protocol:
            continue
        cidrs = [f"{r.address_prefix}/{r.prefix_len.value}" for r in match.prefix_ranges] or ["*"]
        (cidr,) = cidrs
        http_only = bool(match.application_protocols)
        if http_only:
            assert tuple(match.application_protocols) == HTTP_PROTOCOLS
        key = (cidr, match.destination_port.value, http_only)
        assert key not in rows, f"two chains match {key}"
        rows[key] = what(chain)
    return rows


# -- which listeners ------------------------------------------------------------------


def test_a_captured_proxy_gets_the_two_virtual_listeners_and_nothing_else() -> None:
    found = proxy_listeners(mesh(WEB, DB), SIDECAR)
    assert [listener.name for listener in found] == ["virtual_outbound", "virtual_inbound"]
    outbound, inbound = found
    assert outbound.address.socket_address.address == "0.0.0.0"
    assert outbound.address.socket_address.port_value == 15001
    assert outbound.traffic_direction == base_pb2.OUTBOUND
    assert inbound.address.socket_address.address == "0.0.0.0"
    assert inbound.address.socket_address.port_value == 15006
    assert inbound.traffic_direction == base_pb2.INBOUND
    assert not outbound.additional_addresses


def test_the_capture_ports_come_from_the_proxy() -> None:
    found = listeners(mesh(WEB), captured(outbound_port=16001, inbound_capture_port=16006))
    assert found["virtual_outbound"].address.socket_address.port_value == 16001
    assert found["virtual_inbound"].address.socket_address.port_value == 16006


def test_an_ipv6_proxy_also_listens_on_the_ipv6_wildcard() -> None:
    for listener in proxy_listeners(mesh(WEB), captured(ip="fd00::5")):
        (extra,) = listener.additional_addresses
        assert extra.address.socket_address.address == "::"
        assert extra.address.socket_address.port_value == listener.address.socket_address.port_value


def test_a_proxy_that_is_not_captured_keeps_the_explicit_listeners() -> None:
    explicit = proxy("web-1", labels={"app": "web"}, ip="10.0.0.5")
    assert explicit.interception == "none"
    names = {listener.name for listener in proxy_listeners(mesh(WEB, DB), explicit)}
    assert names == {"outbound_http", "inbound_8080", "inbound_9090", "outbound_tcp_5432"}
    assert {c.name for c in proxy_clusters(mesh(WEB, DB), explicit)} == {
        "inbound|8080||",
        "inbound|9090||",
    }


@pytest.mark.parametrize("listener", ["virtual_outbound", "virtual_inbound"])
def test_the_original_destination_is_restored_first(listener: str) -> None:
    found = listeners(mesh(WEB, DB))[listener]
    names = [f.name for f in found.listener_filters]
    # Inbound, the TLS inspector tells mTLS from plaintext (PERMISSIVE, the default).
    tls = ["envoy.filters.listener.tls_inspector"] if listener == "virtual_inbound" else []
    assert names == [
        "envoy.filters.listener.original_dst",
        *tls,
        "envoy.filters.listener.http_inspector",
    ]
    assert found.continue_on_listener_filters_timeout, "a silent client falls back to TCP"


def test_http_inspection_is_limited_to_the_ports_with_http_chains() -> None:
    outbound = listeners(mesh(WEB, DB))["virtual_outbound"]
    inspector = outbound.listener_filters[1]
    ranges = inspector.filter_disabled.not_match.or_match.rules
    assert [(r.destination_port_range.start, r.destination_port_range.end) for r in ranges] == [
        (80, 81),
        (9090, 9091),
    ]
    only_db = listeners(mesh(DB))["virtual_outbound"]
    assert [f.name for f in only_db.listener_filters] == ["envoy.filters.listener.original_dst"]
    one = listeners(mesh(service("a", http(8080), cluster_ip="10.96.0.30")))["virtual_outbound"]
    single = one.listener_filters[1].filter_disabled.not_match.destination_port_range
    assert (single.start, single.end) == (8080, 8081)


# -- virtual_outbound -------------------------------------------------------------------


def test_outbound_chains_by_original_destination() -> None:
    web80 = "outbound|80||web.default.svc.cluster.local"
    web9090 = "outbound|9090||web.default.svc.cluster.local"
    db = "outbound|5432||db.data.svc.cluster.local"
    assert table(listeners(mesh(WEB, DB, HEADLESS))["virtual_outbound"]) == {
        # the explicit HTTP proxy of the "none" mode, at its own address
        ("127.0.0.1/32", 15001, False): f"rds:{DEFAULT_ROUTES}",
        # anything else sent to the outbound port would loop into the sidecar
        ("*", 15001, False): "tcp:BlackHoleCluster",
        # HTTP to a Service: routed by Host; other bytes to the same address: TCP
        ("10.96.0.10/32", 80, True): f"rds:{DEFAULT_ROUTES}",
        ("10.96.0.10/32", 80, False): f"tcp:{web80}",
        ("10.96.0.10/32", 9090, True): f"rds:{DEFAULT_ROUTES}",
        ("10.96.0.10/32", 9090, False): f"tcp:{web9090}",
        ("10.96.0.20/32", 5432, False): f"tcp:{db}",
        # the headless Service has no cluster IP: its pods' IPs pass through
    }


def test_traffic_for_no_service_passes_through_to_where_it_was_going() -> None:
    outbound = listeners(mesh(WEB))["virtual_outbound"]
    default = outbound.default_filter_chain
    assert not default.HasField("filter_chain_match")
    assert what(default) == "tcp:PassthroughCluster"


@pytest.mark.parametrize("namespace", ["default", "shop"])
def test_captured_http_is_routed_by_host_with_the_table_of_the_proxys_namespace(
    namespace: str,
) -> None:
    sidecar = dataclasses.replace(SIDECAR, namespace=namespace)
    outbound = listeners(mesh(WEB), sidecar)["virtual_outbound"]
    http_chains = [c for c in outbound.filter_chains if c.filter_chain_match.application_protocols]
    assert len(http_chains) == 2
    for chain in http_chains:
        config = hcm(chain)
        assert config.rds.route_config_name == f"outbound|{namespace}"
        assert config.rds.config_source.HasField("ads")
        assert config.stat_prefix == "virtual_outbound_http"
        assert config.codec_type == hcm_pb2.HttpConnectionManager.AUTO
    explicit = next(c for c in outbound.filter_chains if c.name == "outbound_http")
    assert hcm(explicit).rds.route_config_name == f"outbound|{namespace}"
    routes = outbound_route_config(mesh(WEB), namespace)
    domains = {d for vhost in routes.virtual_hosts for d in vhost.domains}
    # What a captured client sends: the short names only mean web.default from "default".
    assert {"web.default:80", "10.96.0.10:80", "10.96.0.10"} <= domains
    assert ({"web:80", "web"} <= domains) is (namespace == "default")


def test_the_explicit_chain_is_the_explicit_listeners_connection_manager() -> None:
    outbound = listeners(mesh(WEB))["virtual_outbound"]
    explicit = next(c for c in outbound.filter_chains if c.name == "outbound_http")
    explicit_listener = listeners(mesh(WEB), proxy())["outbound_http"]
    assert hcm(explicit) == hcm(explicit_listener.filter_chains[0])
    assert hcm(explicit).http_protocol_options.allow_absolute_url.value is True


def test_a_wildcard_outbound_address_makes_the_whole_port_the_explicit_proxy() -> None:
    rows = table(listeners(mesh(), captured(outbound_address="0.0.0.0"))["virtual_outbound"])
    assert rows == {("*", 15001, False): f"rds:{DEFAULT_ROUTES}"}


def test_a_cluster_ip_claimed_twice_goes_to_the_first_service_by_name() -> None:
    first = service("a", tcp(6379), cluster_ip="10.96.0.40")
    second = service("b", tcp(6379), cluster_ip="10.96.0.40")
    rows = table(listeners(mesh(second, first))["virtual_outbound"])
    assert rows[("10.96.0.40/32", 6379, False)] == "tcp:outbound|6379||a.default.svc.cluster.local"


def test_ipv6_cluster_ips_match_as_128_bit_prefixes() -> None:
    v6 = service("v6", tcp(6379), cluster_ip="fd00:10::a")
    rows = table(listeners(mesh(v6))["virtual_outbound"])
    assert (
        rows[("fd00:10::a/128", 6379, False)] == "tcp:outbound|6379||v6.default.svc.cluster.local"
    )


# -- virtual_inbound --------------------------------------------------------------------


def test_inbound_chains_by_original_destination_port() -> None:
    pg = service("pg", tcp(5432), selector={"app": "web"}, cluster_ip="10.96.0.50")
    assert table(listeners(mesh(WEB, pg))["virtual_inbound"]) == {
        ("*", 15006, False): "tcp:BlackHoleCluster",
        ("*", 5432, False): "tcp:inbound|5432||",
        ("*", 8080, True): "route:inbound|8080",
        ("*", 8080, False): "tcp:inbound|8080||",
        ("*", 9090, True): "route:inbound|9090",
        ("*", 9090, False): "tcp:inbound|9090||",
    }


def test_inbound_http_is_stamped_with_the_proxys_node_id_and_sent_to_the_app() -> None:
    inbound = listeners(mesh(WEB))["virtual_inbound"]
    chain = next(c for c in inbound.filter_chains if c.name == "inbound|8080|||http")
    config = hcm(chain)
    assert config.stat_prefix == "inbound_8080"
    route_config: route_pb2.RouteConfiguration = config.route_config
    (added,) = route_config.request_headers_to_add
    assert (added.header.key, added.header.value) == (INBOUND_HEADER, "web-1")
    (vhost,) = route_config.virtual_hosts
    assert vhost.routes[0].route.cluster == "inbound|8080||"
    clusters = {c.name: c for c in proxy_clusters(mesh(WEB), SIDECAR)}
    address = clusters["inbound|8080||"].load_assignment.endpoints[0].lb_endpoints[0]
    socket = address.endpoint.address.socket_address
    assert (socket.address, socket.port_value) == ("127.0.0.1", 8080)


def test_ports_no_service_declares_pass_through_to_the_pod() -> None:
    default = listeners(mesh(WEB))["virtual_inbound"].default_filter_chain
    assert what(default) == "tcp:InboundPassthroughCluster"


def test_a_service_port_on_a_capture_port_gets_no_inbound_chain() -> None:
    odd = service("odd", tcp(15006), tcp(15001, name="tcp-out"), selector={"app": "web"})
    rows = table(listeners(mesh(odd))["virtual_inbound"])
    assert rows == {("*", 15006, False): "tcp:BlackHoleCluster"}


def test_without_an_ip_the_inbound_side_only_passes_through() -> None:
    rows = table(listeners(mesh(WEB), captured(ip=None))["virtual_inbound"])
    assert rows == {("*", 15006, False): "tcp:BlackHoleCluster"}


# -- clusters ---------------------------------------------------------------------------


def test_passthrough_and_blackhole_clusters_come_with_the_proxys_own() -> None:
    clusters = {c.name: c for c in proxy_clusters(mesh(WEB), SIDECAR)}
    assert set(clusters) == {
        "inbound|8080||",
        "inbound|9090||",
        "PassthroughCluster",
        "InboundPassthroughCluster",
        "BlackHoleCluster",
    }
    for name in ("PassthroughCluster", "InboundPassthroughCluster"):
        cluster = clusters[name]
        assert cluster.type == cluster_pb2.Cluster.ORIGINAL_DST
        assert cluster.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
        assert cluster.original_dst_lb_config.use_http_header is False
        assert cluster.circuit_breakers.thresholds[0].max_connections.value == 2**32 - 1
    assert not clusters["PassthroughCluster"].HasField("upstream_bind_config")
    bind = clusters["InboundPassthroughCluster"].upstream_bind_config
    assert bind.source_address.address == "127.0.0.6"
    assert [extra.address.address for extra in bind.extra_source_addresses] == ["::6"]
    blackhole = clusters["BlackHoleCluster"]
    assert blackhole.type == cluster_pb2.Cluster.STATIC
    assert not blackhole.load_assignment.endpoints


# -- consistency --------------------------------------------------------------------------


def captured_sidecar() -> Proxy:
    """The representative mesh's web pod, captured."""
    web = proxy("web-1", labels={"app": "web"}, ip="127.0.0.2", workload="web-1")
    return captured(web, interception="redirect")


def everything(snapshot: MeshSnapshot, sidecar: Proxy) -> list[Message]:
    services = list(snapshot.sorted_services())
    return [
        *(c for s in services for c in clusters_for_service(s)),
        *proxy_clusters(snapshot, sidecar),
        *(cla for s in services for cla in load_assignments_for_service(s, snapshot.slices_of(s))),
        *proxy_listeners(snapshot, sidecar),
        outbound_route_config(snapshot, sidecar.namespace),
    ]


def test_every_reference_of_every_chain_resolves() -> None:
    snapshot = representative_mesh()
    out = everything(snapshot, captured_sidecar())
    clusters = {m.name for m in out if isinstance(m, cluster_pb2.Cluster)}
    routes = {m.name: m for m in out if isinstance(m, route_pb2.RouteConfiguration)}
    present = {(r.type_url, r.name) for r in map(make_resource, out)}
    for resource in map(make_resource, out):
        assert resource.refs <= present, resource.name
    for listener in (m for m in out if isinstance(m, listener_pb2.Listener)):
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            action, _, name = what(chain).partition(":")
            if action == "tcp":
                assert name in clusters, (listener.name, chain.name)
            elif action == "rds":
                assert name in routes
            else:
                for vhost in hcm(chain).route_config.virtual_hosts:
                    assert all(route.route.cluster in clusters for route in vhost.routes)
    for config in routes.values():
        for vhost in config.virtual_hosts:
            assert all(route.route.cluster in clusters for route in vhost.routes)


def test_the_same_mesh_in_any_order_gives_the_same_bytes() -> None:
    objects = representative_objects()

    def serialized(snapshot: MeshSnapshot) -> list[bytes]:
        return [m.SerializeToString(deterministic=True) for m in everything(snapshot, SIDECAR)]

    assert serialized(mesh(*objects)) == serialized(mesh(*reversed(objects)))


# -- node metadata ---------------------------------------------------------------------------


def test_interception_round_trips_through_node_metadata() -> None:
    sidecar = captured(inbound_capture_port=16006)
    metadata = metadata_of(sidecar)
    assert (metadata["INTERCEPTION_MODE"], metadata["INBOUND_CAPTURE_PORT"]) == (
        "REDIRECT",
        "16006",
    )
    assert proxy_from_metadata(sidecar.node_id, metadata) == sidecar
    assert metadata_of(proxy())["INTERCEPTION_MODE"] == "NONE"


@pytest.mark.parametrize(("value", "mode"), [("REDIRECT", "redirect"), ("redirect", "redirect"),
                                             ("NONE", "none"), ("", "none")])  # fmt: skip
def test_interception_modes_are_read_in_any_case(value: str, mode: str) -> None:
    assert proxy_from_metadata("n", {"INTERCEPTION_MODE": value}).interception == mode


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"INTERCEPTION_MODE": "TPROXY"}, "INTERCEPTION_MODE"),
        ({"INTERCEPTION_MODE": 1}, "INTERCEPTION_MODE"),
        ({"INBOUND_CAPTURE_PORT": "0"}, "INBOUND_CAPTURE_PORT"),
        (
            {"INTERCEPTION_MODE": "REDIRECT", "INBOUND_CAPTURE_PORT": "15001"},
            "INBOUND_CAPTURE_PORT",
        ),
    ],
)
def test_bad_interception_metadata_names_the_key(metadata: dict[str, object], field: str) -> None:
    with pytest.raises(NodeMetadataError) as caught:
        proxy_from_metadata("n", metadata)
    assert caught.value.field == field


# -- a real Envoy accepts it -------------------------------------------------------------------

needs_envoy = pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy is not on PATH")


CAPTURED_MESHES = {
    "representative": (representative_mesh, captured_sidecar),
    "empty": (mesh, lambda: SIDECAR),
    "ipv6 proxy and service": (
        lambda: mesh(
            service("v6", http(8080), selector={"app": "web"}, cluster_ip="fd00:10::a"),
            endpoint_slice(
                service("v6", http(8080), cluster_ip="fd00:10::a"),
                endpoint("fd00::7"),
                address_type="IPv6",
            ),
        ),
        lambda: captured(ip="fd00::5", app_address="::1"),
    ),
    "single http port": (lambda: mesh(WEB), lambda: SIDECAR),
}


@pytest.mark.envoy
@needs_envoy
@pytest.mark.parametrize(("build_mesh", "build_proxy"), CAPTURED_MESHES.values(),
                         ids=CAPTURED_MESHES.keys())  # fmt: skip
def test_envoy_accepts_the_captured_listeners_inlined(
    build_mesh: object, build_proxy: object, tmp_path: Path
) -> None:
    validate(inline_everything(build_mesh(), build_proxy()), tmp_path)  # type: ignore[operator]


@pytest.mark.envoy
@needs_envoy
def test_envoy_accepts_the_captured_listeners_as_served_over_ads(tmp_path: Path) -> None:
    validate(as_served(representative_mesh(), captured_sidecar()), tmp_path)
