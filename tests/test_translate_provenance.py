"""Provenance in Envoy's metadata: every resource names the source objects it came from.

`filter_metadata["xds-server"]` holds `{"sources": ["Kind/namespace/name", ...]}`
on clusters, listeners, filter chains, route tables and virtual hosts made
from particular objects, or `{"generator": ..., "namespace": ...}` on those
made for a whole namespace or proxy (the outbound route table, the outbound
HTTP listener, the capture listeners), whose parts then name their own.
"""

from __future__ import annotations

import dataclasses

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from translate_builders import (
    CACHE,
    DB,
    SHOP_WEB,
    WEB,
    by_name,
    endpoint,
    endpoint_slice,
    grpc,
    http,
    mesh,
    proxy,
    representative_mesh,
    service,
    tcp,
)

from xds_server.model import MeshSnapshot, Proxy, Service
from xds_server.provenance import PROVENANCE_KEY, SourceRef
from xds_server.resources import TYPES, make_resource
from xds_server.translate import (
    clusters_for_service,
    outbound_route_tables,
    proxy_clusters,
    proxy_listeners,
)
from xds_server.translate.naming import virtual_host_name
from xds_server.translate.provenance import (
    Stamped,
    generator_metadata,
    service_key,
    sources_metadata,
    stamp,
    stamp_generator,
    stamp_sources,
    stamped_generator,
    stamped_sources,
)

SELECTED = {"app": "web"}
POD_IP = "127.0.0.2"


def sidecar(*, redirect: bool = False, namespace: str = "default") -> Proxy:
    made = proxy("web-1", namespace=namespace, labels=SELECTED, ip=POD_IP, workload="web-1")
    return dataclasses.replace(made, interception="redirect") if redirect else made


def own_sources(message: Stamped) -> tuple[str, ...]:
    """Only the message's own stamp, not its parts'."""
    found = message.metadata.filter_metadata.get(PROVENANCE_KEY)
    if found is None or "sources" not in found.fields:
        return ()
    return tuple(value.string_value for value in found.fields["sources"].list_value.values)


# --- reading back what was stamped ---------------------------------------------


@pytest.mark.parametrize(
    "message_type",
    [
        cluster_pb2.Cluster,
        listener_pb2.Listener,
        route_pb2.RouteConfiguration,
        route_components_pb2.VirtualHost,
    ],
)
@pytest.mark.parametrize(
    ("keys", "read"),
    [
        ((), ()),
        (("Service/shop/api",), ("Service/shop/api",)),
        (
            ("Service/shop/api", "EndpointSlice/shop/api-x", "Service/shop/api"),
            ("EndpointSlice/shop/api-x", "Service/shop/api"),
        ),
    ],
    ids=["unstamped", "one", "sorted-once"],
)
def test_stamped_sources_read_back_sorted_and_once_after_a_round_trip(
    message_type: type[Stamped], keys: tuple[str, ...], read: tuple[str, ...]
) -> None:
    message = message_type()
    stamp_sources(message, keys)
    served = message_type.FromString(message.SerializeToString(deterministic=True))
    assert stamped_sources(served) == read
    assert all(SourceRef.parse(key).key == key for key in read)


def test_a_generator_stamp_names_no_sources() -> None:
    config = route_pb2.RouteConfiguration()
    stamp_generator(config, "outbound-routes", "shop")
    assert stamped_sources(config) == ()
    assert stamped_generator(config) == ("outbound-routes", "shop")
    assert config.metadata == generator_metadata("outbound-routes", "shop")
    assert stamped_generator(route_pb2.RouteConfiguration()) is None


def test_a_built_stamp_merged_equals_one_stamped_in_place() -> None:
    keys = ("Service/a/b", "EndpointSlice/a/b-1")
    merged, direct = listener_components_pb2.FilterChain(), listener_components_pb2.FilterChain()
    stamp(merged, sources_metadata(keys))
    stamp_sources(direct, keys)
    assert merged.SerializeToString(deterministic=True) == direct.SerializeToString(
        deterministic=True
    )


# --- clusters --------------------------------------------------------------------


@pytest.mark.parametrize("svc", [WEB, SHOP_WEB, CACHE, DB], ids=lambda s: f"{s.namespace}/{s.name}")
def test_an_outbound_cluster_names_its_service(svc: Service) -> None:
    clusters = clusters_for_service(svc)
    assert clusters
    assert {stamped_sources(c) for c in clusters} == {(f"Service/{svc.namespace}/{svc.name}",)}


def test_the_capture_clusters_name_their_generator() -> None:
    clusters = proxy_clusters(representative_mesh(), sidecar(redirect=True))
    capture = [c for c in clusters if not c.name.startswith("inbound|")]
    assert capture
    for cluster in capture:
        assert (stamped_sources(cluster), stamped_generator(cluster)) == ((), ("capture", ""))


# --- inbound: the Services selecting the proxy, and the slice of a named targetPort


NAMED = service("web", http(80, name="http", target="web-http"), selector=SELECTED)
NAMED_CASE = "named targetPort: the Service and the slice that resolved it"
INBOUND_CASES = {
    "numeric targetPort: the Service": (
        mesh(service("web", http(80, target=8080), selector=SELECTED)),
        {8080: ("Service/default/web",)},
    ),
    "two Services on one port: both": (
        mesh(
            service("web", http(80, target=8080), selector=SELECTED),
            service("alias", http(8000, target=8080), selector=SELECTED),
            service("other", tcp(9000), selector={"app": "other"}),
        ),
        {8080: ("Service/default/alias", "Service/default/web")},
    ),
    NAMED_CASE: (
        mesh(
            NAMED,
            endpoint_slice(NAMED, endpoint("127.0.9.9"), ports={"http": 8081}, name="web-a"),
            endpoint_slice(NAMED, endpoint(POD_IP), ports={"http": 8082}, name="web-b"),
        ),
        {8082: ("EndpointSlice/default/web-b", "Service/default/web")},
    ),
    "named targetPort, no slice of this pod: the first slice by name": (
        mesh(
            NAMED,
            endpoint_slice(NAMED, endpoint("127.0.9.9"), ports={"http": 8083}, name="web-z"),
            endpoint_slice(NAMED, endpoint("127.0.9.8"), ports={"http": 8081}, name="web-a"),
        ),
        {8081: ("EndpointSlice/default/web-a", "Service/default/web")},
    ),
    "named targetPort, no slice yet: the Service port, the Service alone": (
        mesh(NAMED),
        {80: ("Service/default/web",)},
    ),
}


@pytest.mark.parametrize(("snapshot", "expected"), INBOUND_CASES.values(), ids=INBOUND_CASES)
def test_inbound_clusters_and_listeners_name_what_put_their_port_there(
    snapshot: MeshSnapshot, expected: dict[int, tuple[str, ...]]
) -> None:
    clusters = by_name(proxy_clusters(snapshot, sidecar()))
    listeners = by_name(proxy_listeners(snapshot, sidecar()))
    assert set(clusters) == {f"inbound|{port}||" for port in expected}
    for port, sources in expected.items():
        assert stamped_sources(clusters[f"inbound|{port}||"]) == sources
        listener = listeners[f"inbound_{port}"]
        assert own_sources(listener) == sources
        assert stamped_sources(listener) == sources


def test_an_inbound_http_listener_names_its_sources_once_not_again_on_its_inline_table() -> None:
    snapshot, expected = INBOUND_CASES[NAMED_CASE]
    (listener,) = [
        item for item in proxy_listeners(snapshot, sidecar()) if item.name == "inbound_8082"
    ]
    assert own_sources(listener) == expected[8082]
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert own_sources(hcm.route_config) == ()
    (vhost,) = hcm.route_config.virtual_hosts
    assert own_sources(vhost) == ()


# --- outbound listeners ------------------------------------------------------------


def test_an_outbound_tcp_listener_names_the_service_owning_its_port() -> None:
    listeners = by_name(proxy_listeners(representative_mesh(), sidecar()))
    assert stamped_sources(listeners["outbound_tcp_5432"]) == ("Service/data/cache",)  # not db
    assert stamped_sources(listeners["outbound_tcp_53"]) == ("Service/kube-system/dns",)


@pytest.mark.parametrize("namespace", ["default", "shop"])
def test_the_outbound_http_listener_names_its_generator_and_namespace(namespace: str) -> None:
    listeners = by_name(proxy_listeners(representative_mesh(), sidecar(namespace=namespace)))
    listener = listeners["outbound_http"]
    assert stamped_sources(listener) == ()
    assert stamped_generator(listener) == ("outbound-http", namespace)


# --- capture listeners: the generator on the listener, the Service on each chain ---


CAPTURED = mesh(
    service("web", http(80, target=8080), selector=SELECTED, cluster_ip="127.10.0.1"),
    service("api", grpc(9090), tcp(5432), namespace="shop", cluster_ip="127.10.0.2"),
)


@pytest.mark.parametrize(
    ("listener_name", "generator", "chains"),
    [
        (
            "virtual_outbound",
            "virtual-outbound",
            {
                "outbound|80||web.default.svc.cluster.local|http": "Service/default/web",
                "outbound|80||web.default.svc.cluster.local|tcp": "Service/default/web",
                "outbound|9090||api.shop.svc.cluster.local|http": "Service/shop/api",
                "outbound|9090||api.shop.svc.cluster.local|tcp": "Service/shop/api",
                "outbound|5432||api.shop.svc.cluster.local|tcp": "Service/shop/api",
            },
        ),
        (
            "virtual_inbound",
            "virtual-inbound",
            {
                "inbound|8080|||http|mtls": "Service/default/web",  # PERMISSIVE, the default
                "inbound|8080|||http": "Service/default/web",
                "inbound|8080|||tcp": "Service/default/web",
            },
        ),
    ],
)
def test_capture_listeners_name_their_generator_and_each_service_chain_its_service(
    listener_name: str, generator: str, chains: dict[str, str]
) -> None:
    listener = by_name(proxy_listeners(CAPTURED, sidecar(redirect=True)))[listener_name]
    assert isinstance(listener, listener_pb2.Listener)
    assert stamped_generator(listener) == (generator, "default")
    named = {chain.name: own_sources(chain) for chain in listener.filter_chains}
    assert {name: sources for name, sources in named.items() if sources} == {
        name: (key,) for name, key in chains.items()
    }
    assert own_sources(listener.default_filter_chain) == ()
    assert stamped_sources(listener) == tuple(sorted(set(chains.values())))


# --- outbound route tables: the table's generator, each virtual host's Service ----


CLASHED = (
    service("web", http(80), grpc(9090), cluster_ip="127.10.0.1"),
    service("api", http(8080), namespace="shop", cluster_ip="127.10.0.1"),
    service("x", http(80), namespace="y.z"),
    service("x.y", http(80), namespace="z"),  # every qualified name is x's in y.z
    service("db", tcp(5432), namespace="data"),
)


def hosts_and_sources(caller: str) -> list[tuple[str, tuple[str, ...]]]:
    config = outbound_route_tables(mesh(*CLASHED)).config(caller)
    return [(vhost.name, own_sources(vhost)) for vhost in config.virtual_hosts]


@pytest.mark.parametrize("caller", ["default", "shop", "y.z", "z", "nowhere"])
def test_a_table_names_its_generator_and_each_virtual_host_its_service(caller: str) -> None:
    config = outbound_route_tables(mesh(*CLASHED)).config(caller)
    assert (stamped_generator(config), own_sources(config)) == (("outbound-routes", caller), ())
    ambiguous = "x.y.z.svc.cluster.local:80"  # see the next spec
    expected = {
        virtual_host_name(svc, port): (service_key(svc),)
        for svc in CLASHED
        for port in svc.ports
        if virtual_host_name(svc, port) != ambiguous
    }
    stamped = dict(item for item in hosts_and_sources(caller) if item[0] != ambiguous)
    assert stamped == {name: expected[name] for name in stamped}
    assert len(stamped) >= 3


def test_virtual_hosts_of_one_name_name_each_their_own_service() -> None:
    """x of y.z and x.y of z are both `x.y.z.svc.cluster.local`: z's table routes both."""
    same = [item for item in hosts_and_sources("z") if item[0] == "x.y.z.svc.cluster.local:80"]
    assert same == [
        ("x.y.z.svc.cluster.local:80", ("Service/y.z/x",)),
        ("x.y.z.svc.cluster.local:80", ("Service/z/x.y",)),
    ]


@pytest.mark.parametrize(
    ("caller", "absent"),
    [
        ("default", {"Service/z/x.y", "Service/data/db"}),
        ("z", {"Service/data/db"}),  # its own table routes x.y by its short name
        ("nowhere", {"Service/z/x.y", "Service/data/db"}),
    ],
)
def test_table_sources_are_the_services_with_a_virtual_host_in_it(
    caller: str, absent: set[str]
) -> None:
    tables = outbound_route_tables(mesh(*CLASHED))
    every = {service_key(svc) for svc in CLASHED}
    assert set(tables.sources(caller)) == every - absent
    assert tables.sources(caller) == stamped_sources(tables.config(caller))


@pytest.mark.parametrize("caller", ["default", "shop", "y.z", "z", "nowhere"])
def test_a_stamped_table_is_still_served_as_its_deterministic_serialization(caller: str) -> None:
    tables = outbound_route_tables(mesh(*CLASHED))
    served, made = tables.resource(caller), make_resource(tables.config(caller))
    assert (served.version, served.any) == (made.version, made.any)


# --- what an operator sees in Envoy's config dump -----------------------------------


def test_a_config_dump_like_unpack_shows_the_sources_on_each_kind() -> None:
    snapshot = representative_mesh()
    resources = [
        make_resource(message)
        for message in (
            *clusters_for_service(WEB),
            *proxy_clusters(snapshot, sidecar()),
            *proxy_listeners(snapshot, sidecar()),
            outbound_route_tables(snapshot).config("default"),
        )
    ]
    dumped = {
        resource.name: json_format.MessageToDict(
            TYPES[resource.type_url].message.FromString(resource.data)
        )
        for resource in resources
    }
    web_cluster = dumped["outbound|80||web.default.svc.cluster.local"]
    assert web_cluster["metadata"]["filterMetadata"][PROVENANCE_KEY] == {
        "sources": ["Service/default/web"]
    }
    assert dumped["inbound|8080||"]["metadata"]["filterMetadata"][PROVENANCE_KEY] == {
        "sources": ["Service/default/web"]
    }
    table = dumped["outbound|default"]
    assert table["metadata"]["filterMetadata"][PROVENANCE_KEY] == {
        "generator": "outbound-routes",
        "namespace": "default",
    }
    hosts = {
        vh["name"]: vh["metadata"]["filterMetadata"][PROVENANCE_KEY] for vh in table["virtualHosts"]
    }
    assert hosts["web.default.svc.cluster.local:80"] == {"sources": ["Service/default/web"]}
    assert hosts["web.shop.svc.cluster.local:80"] == {"sources": ["Service/shop/web"]}
