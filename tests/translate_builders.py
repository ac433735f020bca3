"""Small builders for translation specs: model values in a line each.

Defaults describe the common case (namespace "default", ready endpoints on
127.0.0.0/8), so a spec spells out only what it is about.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    MeshSnapshot,
    Proxy,
    Service,
    ServicePort,
)
from xds_server.model.changes import MeshObject
from xds_server.model.types import labels_of


def http(port: int, name: str = "http", target: int | str | None = None) -> ServicePort:
    return ServicePort(port=port, name=name, target_port=target)


def http2(port: int, name: str = "http2", target: int | str | None = None) -> ServicePort:
    return ServicePort(port=port, name=name, target_port=target)


def grpc(port: int, name: str = "grpc", target: int | str | None = None) -> ServicePort:
    return ServicePort(port=port, name=name, target_port=target)


def tcp(port: int, name: str = "tcp", target: int | str | None = None) -> ServicePort:
    return ServicePort(port=port, name=name, target_port=target)


def service(
    name: str,
    *ports: ServicePort,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    cluster_ip: str | None = None,
) -> Service:
    return Service(
        namespace=namespace,
        name=name,
        ports=ports,
        selector=labels_of(selector) if selector is not None else None,
        cluster_ip=cluster_ip,
    )


def endpoint(
    *addresses: str,
    zone: str | None = None,
    ready: bool = True,
    terminating: bool = False,
    pod: str | None = None,
) -> Endpoint:
    return Endpoint(
        addresses=addresses, ready=ready, terminating=terminating, zone=zone, target_pod=pod
    )


def endpoint_slice(
    of: Service,
    *endpoints: Endpoint,
    ports: dict[str, int] | None = None,
    name: str | None = None,
    address_type: str = "IPv4",
) -> EndpointSlice:
    """A slice of `of`; `ports` maps slice port name to number (default: the Service's)."""
    if ports is None:
        ports = {
            p.name: p.target_port if isinstance(p.target_port, int) else p.port for p in of.ports
        }
    return EndpointSlice(
        namespace=of.namespace,
        name=name or f"{of.name}-abcde",
        service_name=of.name,
        address_type=address_type,
        ports=tuple(
            EndpointPort(port=number, name=port_name) for port_name, number in ports.items()
        ),
        endpoints=endpoints,
    )


def proxy(
    node_id: str = "sidecar-1",
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    ip: str | None = None,
    workload: str = "",
    app_address: str = "127.0.0.1",
    outbound_address: str = "127.0.0.1",
    outbound_port: int = 15001,
) -> Proxy:
    return Proxy(
        node_id=node_id,
        namespace=namespace,
        workload=workload,
        labels=labels_of(labels),
        ip=ip,
        app_address=app_address,
        outbound_address=outbound_address,
        outbound_port=outbound_port,
    )


def upserts(*objects: MeshObject) -> ChangeSet:
    """A ChangeSet upserting `objects`."""
    changes = ChangeSet()
    for obj in objects:
        changes.upsert(obj)
    return changes


def mesh(*objects: MeshObject) -> MeshSnapshot:
    """A snapshot holding `objects`, indexed exactly as the pipeline indexes them."""
    snapshot, _ = MeshSnapshot().apply(upserts(*objects))
    return snapshot


def as_dict(message: Message) -> dict[str, object]:
    """A proto as the JSON Envoy reads (camelCase keys, `@type` on Any)."""
    result: dict[str, object] = json_format.MessageToDict(message)
    return result


def as_dicts(messages: Iterable[Message]) -> list[dict[str, object]]:
    return [as_dict(m) for m in messages]


def by_name(messages: Iterable[Message]) -> dict[str, Message]:
    """Resources keyed by `name` (or `cluster_name` for CLAs)."""
    out: dict[str, Message] = {}
    for m in messages:
        key = m.cluster_name if m.DESCRIPTOR.name == "ClusterLoadAssignment" else m.name
        out[key] = m
    return out


def plaintext_chain(listener: listener_pb2.Listener) -> listener_components_pb2.FilterChain:
    """A listener's one chain without a transport socket."""
    (chain,) = [c for c in listener.filter_chains if not c.HasField("transport_socket")]
    return chain


def hcm_of(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    """The HTTP connection manager of a listener's plaintext chain (the only one, or, in
    PERMISSIVE mode, the last: `translate.mtls` puts the mTLS chain first)."""
    chain = plaintext_chain(listener)
    (network_filter,) = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(hcm), network_filter.name
    return hcm


def tcp_proxy_of(listener: listener_pb2.Listener) -> tcp_proxy_pb2.TcpProxy:
    """The TCP proxy of a listener's plaintext chain (the only one, or, in
    PERMISSIVE mode, the last: `translate.mtls` puts the mTLS chain first)."""
    chain = plaintext_chain(listener)
    (network_filter,) = chain.filters
    tcp_proxy = tcp_proxy_pb2.TcpProxy()
    assert network_filter.typed_config.Unpack(tcp_proxy), network_filter.name
    return tcp_proxy


# --- a representative mesh: every kind of port, zones, clashes --------------

WEB = service(
    "web",
    http(80, target=8080),
    grpc(9090, name="grpc-api"),
    selector={"app": "web"},
    cluster_ip="127.10.0.1",
)
SHOP_WEB = service("web", http(80), namespace="shop", selector={"app": "web"})  # short-name clash
API = service("api", http2(8080, target="h2"), namespace="shop", selector={"app": "api"})
CACHE = service("cache", tcp(5432, name="redis"), namespace="data")  # wins port 5432 over db
DB = service("db", tcp(5432), namespace="data")
DNS = service(
    "dns",
    tcp(53, name="dns-tcp"),
    ServicePort(port=53, name="dns", protocol="UDP"),
    namespace="kube-system",
)


def representative_objects() -> list[Service | EndpointSlice]:
    return [
        WEB,
        SHOP_WEB,
        API,
        CACHE,
        DB,
        DNS,
        endpoint_slice(
            WEB,
            endpoint("127.0.1.1", zone="zone-a"),
            endpoint("127.0.1.2", zone="zone-b"),
            endpoint("127.0.1.3", zone="zone-b", ready=False),
            endpoint("127.0.0.2", zone="zone-a", pod="web-1"),
            name="web-1",
        ),
        endpoint_slice(WEB, endpoint("127.0.1.4", zone="zone-c"), name="web-2"),
        endpoint_slice(SHOP_WEB, endpoint("127.0.2.1")),
        endpoint_slice(API, endpoint("127.0.3.1", zone="zone-a"), ports={"http2": 8443}),
        endpoint_slice(DB, endpoint("127.0.4.1"), endpoint("127.0.4.2", terminating=True)),
        endpoint_slice(DNS, endpoint("127.0.5.1"), ports={"dns-tcp": 53, "dns": 53}),
    ]


def representative_mesh() -> MeshSnapshot:
    return mesh(*representative_objects())


def representative_sidecar() -> Proxy:
    """A web pod: selected by default/web only (shop/web selects pods in shop)."""
    return proxy("web-1", labels={"app": "web"}, ip="127.0.0.2", workload="web-1")
