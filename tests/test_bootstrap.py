"""Sidecar bootstraps: render, read back as the server will, and have Envoy accept them.

The round trip is the contract: `render_bootstrap` -> YAML -> `Bootstrap` proto ->
`node` -> `proxy_from_node` gives back the proxy the bootstrap was rendered for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import envoy.extensions.access_loggers.file.v3.file_pb2
import envoy.extensions.filters.http.router.v3.router_pb2
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2
import envoy.extensions.resource_monitors.downstream_connections.v3.downstream_connections_pb2
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401 (Any types)
import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from google.protobuf import json_format, struct_pb2

from xds_server.bootstrap import (
    build_bootstrap,
    load_template,
    parse_host_port,
    parse_xds_addresses,
    render_bootstrap,
    render_bootstrap_for_proxy,
)
from xds_server.cli import main
from xds_server.envoy_process import envoy_binary, validate_bootstrap
from xds_server.inject.pod_bootstrap import render_pod_bootstrap
from xds_server.model.types import Proxy
from xds_server.node_metadata import NodeMetadataError, metadata_of, proxy_from_node

REPO = Path(__file__).resolve().parent.parent
CANONICAL_TEMPLATE = REPO / "envoy-bootstrap" / "sidecar.yaml"
PACKAGED_TEMPLATE = REPO / "xds_server" / "templates" / "sidecar.yaml"

needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="envoy is not on PATH")


def parse(text: str) -> bootstrap_pb2.Bootstrap:
    """What Envoy would load, as a proto (unknown fields are errors)."""
    return json_format.ParseDict(yaml.safe_load(text), bootstrap_pb2.Bootstrap())


def node(metadata: dict[str, Any], node_id: str = "sidecar~10.0.0.1~web-1.shop") -> base_pb2.Node:
    struct = struct_pb2.Struct()
    struct.update(metadata)
    return base_pb2.Node(id=node_id, metadata=struct)


def xds_cluster(bootstrap: bootstrap_pb2.Bootstrap, name: str = "xds_cluster") -> Any:
    (cluster,) = [c for c in bootstrap.static_resources.clusters if c.name == name]
    return cluster


# -- the template ------------------------------------------------------------------


def test_packaged_template_is_a_copy_of_the_canonical_one() -> None:
    assert PACKAGED_TEMPLATE.read_bytes() == CANONICAL_TEMPLATE.read_bytes(), (
        "copy envoy-bootstrap/sidecar.yaml to xds_server/templates/sidecar.yaml"
    )


def test_packaged_template_is_what_the_renderer_loads() -> None:
    assert load_template() == yaml.safe_load(CANONICAL_TEMPLATE.read_text())


def test_template_is_a_complete_bootstrap() -> None:
    bootstrap = parse(CANONICAL_TEMPLATE.read_text())
    ads = bootstrap.dynamic_resources.ads_config
    assert ads.api_type == config_source_pb2.ApiConfigSource.GRPC
    assert ads.grpc_services[0].envoy_grpc.cluster_name == "xds_cluster"
    assert ads.set_node_on_first_message_only
    assert proxy_from_node(bootstrap.node).workload == "example"


# -- render and read back ------------------------------------------------------------

ROUND_TRIPS: dict[str, tuple[dict[str, Any], Proxy]] = {
    "full": (
        dict(
            node_id="sidecar~10.0.0.7~web-5d8f-abcde.shop",
            namespace="shop",
            workload="web",
            service_account="web-sa",
            labels={"app": "web", "version": "v2"},
            instance_ip="10.0.0.7",
            app_address="127.0.0.1",
            outbound_address="127.0.0.1",
            outbound_port=15001,
        ),
        Proxy(
            node_id="sidecar~10.0.0.7~web-5d8f-abcde.shop",
            namespace="shop",
            workload="web",
            service_account="web-sa",
            labels=(("app", "web"), ("version", "v2")),
            ip="10.0.0.7",
        ),
    ),
    "minimal": (
        dict(node_id="n1", namespace="default"),
        Proxy(node_id="n1"),
    ),
    "local demo addresses": (
        dict(
            node_id="frontend",
            namespace="demo",
            workload="frontend",
            instance_ip="127.0.0.2",
            app_address="127.0.0.3",
            outbound_address="127.0.0.4",
            outbound_port=25001,
        ),
        Proxy(
            node_id="frontend",
            namespace="demo",
            workload="frontend",
            ip="127.0.0.2",
            app_address="127.0.0.3",
            outbound_address="127.0.0.4",
            outbound_port=25001,
        ),
    ),
    "ipv6": (
        dict(node_id="v6", namespace="ns", instance_ip="fd00::7", app_address="::1"),
        Proxy(node_id="v6", namespace="ns", ip="fd00::7", app_address="::1"),
    ),
    # Values YAML would otherwise read as booleans, nulls, numbers or structure.
    "yaml-hostile values": (
        dict(
            node_id="n: {x}",
            namespace="null",
            workload="yes",
            labels={"on": "off", "n": "007", "tricky": "a: b # c\n- d", "quote": "'\""},
        ),
        Proxy(
            node_id="n: {x}",
            namespace="null",
            workload="yes",
            labels=(("n", "007"), ("on", "off"), ("quote", "'\""), ("tricky", "a: b # c\n- d")),
        ),
    ),
}


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize(("options", "expected"), ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_render_round_trips_to_the_proxy(
    options: dict[str, Any], expected: Proxy, delta: bool
) -> None:
    text = render_bootstrap(xds_address="127.0.0.1:18000", admin_port=15000, delta=delta, **options)
    bootstrap = parse(text)
    assert proxy_from_node(bootstrap.node) == expected
    expected_api = "DELTA_GRPC" if delta else "GRPC"
    assert (
        config_source_pb2.ApiConfigSource.ApiType.Name(
            bootstrap.dynamic_resources.ads_config.api_type
        )
        == expected_api
    )


def test_render_fills_node_ads_xds_cluster_and_admin() -> None:
    bootstrap = parse(
        render_bootstrap(
            node_id="n1",
            namespace="shop",
            workload="web",
            xds_address="10.1.2.3:18000",
            admin_port=15999,
            admin_address="127.0.0.5",
        )
    )
    assert bootstrap.node.cluster == "web.shop"
    assert bootstrap.node.metadata.fields["OUTBOUND_PORT"].string_value == "15001"
    ads = bootstrap.dynamic_resources.ads_config
    assert ads.transport_api_version == config_source_pb2.V3
    for source in (bootstrap.dynamic_resources.cds_config, bootstrap.dynamic_resources.lds_config):
        assert source.HasField("ads")
        assert source.resource_api_version == config_source_pb2.V3
    cluster = xds_cluster(bootstrap)
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert cluster.connect_timeout.seconds == 1
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert (
        endpoint.address.socket_address.address,
        endpoint.address.socket_address.port_value,
    ) == (
        "10.1.2.3",
        18000,
    )
    admin = bootstrap.admin.address.socket_address
    assert (admin.address, admin.port_value) == ("127.0.0.5", 15999)


def test_node_cluster_is_the_namespace_without_a_workload() -> None:
    text = render_bootstrap(node_id="n", namespace="shop", xds_address="1.2.3.4:1", admin_port=0)
    assert parse(text).node.cluster == "shop"


@pytest.mark.parametrize(
    ("xds_address", "cluster_type", "host", "port"),
    [
        ("127.0.0.1:18000", cluster_pb2.Cluster.STATIC, "127.0.0.1", 18000),
        ("[::1]:18001", cluster_pb2.Cluster.STATIC, "::1", 18001),
        ("xds.mesh-system.svc:15010", cluster_pb2.Cluster.STRICT_DNS, "xds.mesh-system.svc", 15010),
        ("localhost:18000", cluster_pb2.Cluster.STRICT_DNS, "localhost", 18000),
    ],
)  # fmt: skip
def test_xds_cluster_type_follows_the_address(
    xds_address: str, cluster_type: int, host: str, port: int
) -> None:
    text = render_bootstrap(node_id="n", namespace="ns", xds_address=xds_address, admin_port=0)
    cluster = xds_cluster(parse(text))
    assert cluster.type == cluster_type
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (host, port)


def test_xds_cluster_can_be_renamed() -> None:
    bootstrap = parse(
        render_bootstrap(
            node_id="n",
            namespace="ns",
            xds_address="127.0.0.1:18000",
            admin_port=0,
            cluster_name_for_xds="control-plane",
        )
    )
    assert bootstrap.dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name == (
        "control-plane"
    )
    assert [c.name for c in bootstrap.static_resources.clusters] == ["control-plane"]
    assert xds_cluster(bootstrap, "control-plane").load_assignment.cluster_name == "control-plane"


def test_an_adapted_template_keeps_its_edits(tmp_path: Path) -> None:
    template = yaml.safe_load(CANONICAL_TEMPLATE.read_text())
    template["static_resources"]["clusters"][0]["connect_timeout"] = "3s"
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(template))
    text = render_bootstrap(
        node_id="n", namespace="ns", xds_address="127.0.0.1:1", admin_port=0, template_path=path
    )
    assert xds_cluster(parse(text)).connect_timeout.seconds == 3


def test_rendering_does_not_modify_the_template() -> None:
    template = load_template()
    before = yaml.safe_dump(template)
    build_bootstrap(Proxy(node_id="n"), xds_address="127.0.0.1:1", admin_port=0, template=template)
    assert yaml.safe_dump(template) == before


def test_render_for_proxy_carries_extra_metadata() -> None:
    proxy = Proxy(node_id="n", metadata=(("CLUSTER_ID", "kind"), ("MESH_ID", "m1")))
    text = render_bootstrap_for_proxy(proxy, xds_address="127.0.0.1:1", admin_port=0)
    assert proxy_from_node(parse(text).node) == proxy


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"xds_address": "127.0.0.1"}, "xds_address"),
        ({"xds_address": "127.0.0.1:http"}, "xds_address"),
        ({"xds_address": "127.0.0.1:0"}, "xds_address"),
        ({"xds_address": ":18000"}, "xds_address"),
        ({"xds_address": "::1:18000"}, "brackets"),
        ({"admin_port": 70000}, "admin_port"),
        ({"admin_address": "localhost"}, "admin_address"),
        ({"node_id": ""}, "node_id"),
        ({"cluster_name_for_xds": ""}, "cluster_name_for_xds"),
        ({"instance_ip": "10.0.0"}, "INSTANCE_IP"),
        ({"app_address": "app.local"}, "APP_ADDRESS"),
        ({"outbound_address": "nope"}, "OUTBOUND_ADDRESS"),
        ({"outbound_port": 0}, "OUTBOUND_PORT"),
        ({"outbound_port": 65536}, "OUTBOUND_PORT"),
    ],
)
def test_render_rejects_malformed_input(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = dict(
        node_id="n", namespace="ns", xds_address="127.0.0.1:18000", admin_port=0
    )
    with pytest.raises(ValueError, match=message):
        render_bootstrap(**(arguments | options))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:1", ("127.0.0.1", 1)), ("[fd00::1]:80", ("fd00::1", 80)), ("a.b:9", ("a.b", 9))],
)
def test_parse_host_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value) == expected


# -- reconnecting: a short ADS backoff, several control plane replicas -------------------


def endpoints_of(bootstrap: bootstrap_pb2.Bootstrap) -> list[tuple[str, int]]:
    (locality,) = xds_cluster(bootstrap).load_assignment.endpoints
    return [
        (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
        for e in locality.lb_endpoints
    ]


RENDERED = {
    "template": lambda: CANONICAL_TEMPLATE.read_text(),
    "bootstrap": lambda: render_bootstrap(
        node_id="n", namespace="ns", xds_address="127.0.0.1:18000", admin_port=0
    ),
    "injected sidecar": lambda: render_pod_bootstrap(
        pod_name="web-1",
        namespace="shop",
        pod_ip="10.0.0.7",
        service_account="web",
        xds_address="xds-server.mesh-system.svc:15010",
    ),
}


@pytest.mark.parametrize("render", RENDERED.values(), ids=RENDERED.keys())
def test_the_ads_stream_comes_back_after_a_short_capped_backoff(render: Any) -> None:
    # Envoy's default is 0.5 s growing to 30 s: after a control plane restart a sidecar
    # could wait many seconds more before it reconnects.
    ads = parse(render()).dynamic_resources.ads_config
    backoff = ads.grpc_services[0].envoy_grpc.retry_policy.retry_back_off
    base, cap = backoff.base_interval.ToMilliseconds(), backoff.max_interval.ToMilliseconds()
    assert 50 <= base <= 250
    assert base <= cap < 1000, (
        "capped below a second, so a restarted control plane is rejoined within one"
    )


@pytest.mark.parametrize(
    ("xds_address", "cluster_type", "expected"),
    [
        (["127.0.0.1:15010", "127.0.0.2:15010"], cluster_pb2.Cluster.STATIC,
         [("127.0.0.1", 15010), ("127.0.0.2", 15010)]),
        ("127.0.0.1:1, [::1]:2", cluster_pb2.Cluster.STATIC, [("127.0.0.1", 1), ("::1", 2)]),
        (["a.mesh.svc:15010,b.mesh.svc:15010"], cluster_pb2.Cluster.STRICT_DNS,
         [("a.mesh.svc", 15010), ("b.mesh.svc", 15010)]),
        (["10.0.0.1:1", "xds.mesh.svc:2"], cluster_pb2.Cluster.STRICT_DNS,
         [("10.0.0.1", 1), ("xds.mesh.svc", 2)]),
    ],
    ids=["list", "comma-separated", "host names", "mixed"],
)  # fmt: skip
def test_several_xds_addresses_are_one_endpoint_each(
    xds_address: Any, cluster_type: int, expected: list[tuple[str, int]]
) -> None:
    bootstrap = parse(
        render_bootstrap(node_id="n", namespace="ns", xds_address=xds_address, admin_port=0)
    )
    assert endpoints_of(bootstrap) == expected
    cluster = xds_cluster(bootstrap)
    assert cluster.type == cluster_type
    # Each new stream attempt takes the next replica.
    assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN


@pytest.mark.parametrize(
    ("xds_address", "message"),
    [
        ([], "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("127.0.0.1:1,", "expected HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:1", "given twice"),
        (["127.0.0.1:1", "127.0.0.2"], "'127.0.0.2' is not HOST:PORT"),
    ],
)
def test_malformed_xds_addresses_are_rejected(xds_address: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_xds_addresses(xds_address)


def test_the_bootstrap_command_takes_repeated_and_comma_separated_addresses(
    tmp_path: Path,
) -> None:
    output = tmp_path / "envoy.yaml"
    argv = ["bootstrap", "--node-id", "n", "--admin-port", "0", "-o", str(output), "--insecure-xds"]
    argv += ["--xds-address", "127.0.0.1:1", "--xds-address", "127.0.0.2:2,127.0.0.3:3"]
    assert main(argv) == 0
    assert endpoints_of(parse(output.read_text())) == [
        ("127.0.0.1", 1),
        ("127.0.0.2", 2),
        ("127.0.0.3", 3),
    ]


def test_the_bootstrap_command_defaults_to_the_local_control_plane(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bootstrap", "--node-id", "n", "--admin-port", "0", "--insecure-xds"]) == 0
    assert endpoints_of(parse(capsys.readouterr().out)) == [("127.0.0.1", 15010)]


def test_the_bootstrap_command_names_a_bad_address(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bootstrap", "--node-id", "n", "--admin-port", "0", "--xds-address", "a:1,b"]
    assert main(argv) == 2
    assert "'b' is not HOST:PORT" in capsys.readouterr().err


# -- reading node metadata -----------------------------------------------------------


def test_missing_metadata_takes_the_documented_defaults() -> None:
    assert proxy_from_node(node({}, node_id="bare")) == Proxy(
        node_id="bare",
        namespace="default",
        workload="",
        service_account="default",
        labels=(),
        ip=None,
        app_address="127.0.0.1",
        outbound_address="127.0.0.1",
        outbound_port=15001,
    )


def test_empty_strings_count_as_missing() -> None:
    empty = {key: "" for key in ("NAMESPACE", "SERVICE_ACCOUNT", "INSTANCE_IP", "OUTBOUND_PORT")}
    assert proxy_from_node(node(empty, node_id="n")) == Proxy(node_id="n")


def test_outbound_port_may_be_a_number() -> None:
    # A Struct stores numbers as doubles; a hand-written bootstrap may not quote the port.
    assert proxy_from_node(node({"OUTBOUND_PORT": 15006})).outbound_port == 15006


def test_unknown_keys_are_kept_as_sorted_strings() -> None:
    proxy = proxy_from_node(node({"Z": "last", "A": {"nested": [1, True]}, "B": 2}))
    assert proxy.metadata == (("A", '{"nested":[1,true]}'), ("B", "2"), ("Z", "last"))


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"OUTBOUND_PORT": "http"}, "OUTBOUND_PORT"),
        ({"OUTBOUND_PORT": "70000"}, "OUTBOUND_PORT"),
        ({"OUTBOUND_PORT": 15001.5}, "OUTBOUND_PORT"),
        ({"OUTBOUND_PORT": True}, "OUTBOUND_PORT"),
        ({"INSTANCE_IP": "10.0.0.300"}, "INSTANCE_IP"),
        ({"APP_ADDRESS": "localhost"}, "APP_ADDRESS"),
        ({"OUTBOUND_ADDRESS": 127}, "OUTBOUND_ADDRESS"),
        ({"NAMESPACE": ["a"]}, "NAMESPACE"),
        ({"WORKLOAD_NAME": 1}, "WORKLOAD_NAME"),
        ({"SERVICE_ACCOUNT": {"a": "b"}}, "SERVICE_ACCOUNT"),
        ({"LABELS": "app=web"}, "LABELS"),
        ({"LABELS": {"replicas": 3}}, "LABELS"),
    ],
)
def test_malformed_metadata_names_the_field(metadata: dict[str, Any], field: str) -> None:
    with pytest.raises(NodeMetadataError, match=field) as caught:
        proxy_from_node(node(metadata))
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_a_node_without_an_id_is_rejected() -> None:
    with pytest.raises(NodeMetadataError, match="id"):
        proxy_from_node(base_pb2.Node())


def test_extra_metadata_may_not_shadow_known_keys() -> None:
    with pytest.raises(NodeMetadataError, match="NAMESPACE"):
        metadata_of(Proxy(node_id="n", metadata=(("NAMESPACE", "other"),)))


# -- Envoy accepts what we render ------------------------------------------------------


@pytest.mark.envoy
@needs_envoy
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize(
    "xds_address",
    ["127.0.0.1:18000", "localhost:18000", "[::1]:18000", "127.0.0.1:1,127.0.0.2:2,[::1]:3"],
)
def test_envoy_validates_rendered_bootstraps(tmp_path: Path, delta: bool, xds_address: str) -> None:
    options = ROUND_TRIPS["full"][0]
    path = tmp_path / "bootstrap.yaml"
    path.write_text(render_bootstrap(xds_address=xds_address, admin_port=0, delta=delta, **options))
    assert "OK" in validate_bootstrap(path)


@pytest.mark.envoy
@needs_envoy
def test_envoy_validates_the_template_as_shipped() -> None:
    assert "OK" in validate_bootstrap(CANONICAL_TEMPLATE)
