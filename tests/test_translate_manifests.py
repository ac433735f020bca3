"""Manifests in, Envoy protos out: YAML through the real converter and pipeline.

Each case is the Kubernetes YAML a user writes and the Envoy configuration a
proxy receives for it, read back from the published snapshot.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Proxy
from xds_server.model.types import labels_of
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, unpack
from xds_server.sources.convert import convert

BACKEND = """
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  selector: {app: backend}
  ports:
    - {name: http, port: 8080, targetPort: 9090}
    - {name: grpc-api, port: 9000, appProtocol: grpc}
    - {name: db, port: 5432}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-1
  namespace: shop
  labels: {kubernetes.io/service-name: backend}
addressType: IPv4
ports:
  - {name: http, port: 9090}
  - {name: grpc-api, port: 9000}
  - {name: db, port: 5432}
endpoints:
  - {addresses: [127.0.40.1], conditions: {ready: true}, zone: zone-a}
  - {addresses: [127.0.40.2], conditions: {ready: true, terminating: true}, zone: zone-a}
  - {addresses: [127.0.40.3], conditions: {ready: false}, zone: zone-b}
  - {addresses: [127.0.40.4], zone: zone-b}
"""


def published(manifests: str, proxy: Proxy) -> dict[str, dict[str, dict[str, Any]]]:
    """Run manifests through convert -> pipeline -> cache; return the proxy's config as JSON."""
    changes = ChangeSet()
    for document in yaml.safe_load_all(textwrap.dedent(manifests)):
        obj = convert(document)
        assert obj is not None
        changes.upsert(obj)
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(changes)
    builder.add_proxy(proxy)
    builder.mark_synced()
    snapshot = cache.get_snapshot(proxy.node_id)
    assert snapshot is not None
    return {
        type_url: {
            name: json_format.MessageToDict(unpack(resource))
            for name, resource in snapshot.get(type_url).items()
        }
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    }


CLIENT = Proxy(node_id="client.shop", namespace="shop")
BACKEND_POD = Proxy(
    node_id="backend-0.shop",
    namespace="shop",
    labels=labels_of({"app": "backend"}),
    ip="127.0.41.1",
    app_address="127.0.0.1",
)


def addresses(cla: dict[str, Any]) -> dict[str, list[str]]:
    return {
        group.get("locality", {}).get("zone", ""): [
            e["endpoint"]["address"]["socketAddress"]["address"] for e in group["lbEndpoints"]
        ]
        for group in cla.get("endpoints", [])
    }


def test_only_ready_endpoints_are_served_grouped_by_zone() -> None:
    config = published(BACKEND, CLIENT)
    cla = config[ENDPOINT]["outbound|8080||backend.shop.svc.cluster.local"]
    # terminating and not-ready endpoints are out; ready unset means ready
    assert addresses(cla) == {"zone-a": ["127.0.40.1"], "zone-b": ["127.0.40.4"]}
    ports = {e["endpoint"]["address"]["socketAddress"]["portValue"]
             for g in cla["endpoints"] for e in g["lbEndpoints"]}  # fmt: skip
    assert ports == {9090}  # the slice port named like the service port


@pytest.mark.parametrize(
    ("cluster", "http2"),
    [
        ("outbound|8080||backend.shop.svc.cluster.local", False),
        ("outbound|9000||backend.shop.svc.cluster.local", True),
        ("outbound|5432||backend.shop.svc.cluster.local", False),
    ],
)
def test_every_service_port_is_an_eds_cluster_with_its_protocol(cluster: str, http2: bool) -> None:
    config = published(BACKEND, CLIENT)
    spec = config[CLUSTER][cluster]
    assert spec["type"] == "EDS"
    assert "ads" in spec["edsClusterConfig"]["edsConfig"]
    has_http2 = "http2ProtocolOptions" in str(spec.get("typedExtensionProtocolOptions", {}))
    assert has_http2 == http2


def test_http_ports_become_virtual_hosts_answering_to_every_kubernetes_name() -> None:
    config = published(BACKEND, CLIENT)
    assert list(config[ROUTE]) == ["outbound|shop"]  # the table of the client's namespace
    routes = config[ROUTE]["outbound|shop"]
    vhosts = {v["name"]: v for v in routes["virtualHosts"]}
    http = vhosts["backend.shop.svc.cluster.local:8080"]
    for domain in ("backend", "backend.shop", "backend.shop.svc",
                   "backend.shop.svc.cluster.local"):  # fmt: skip
        assert domain in http["domains"]
        assert f"{domain}:8080" in http["domains"]
    route = http["routes"][0]["route"]
    assert route["cluster"] == "outbound|8080||backend.shop.svc.cluster.local"
    assert "backend.shop.svc.cluster.local:9000" in vhosts  # gRPC is HTTP too
    assert not any("5432" in name for name in vhosts)  # TCP is not


def test_tcp_ports_get_a_tcp_proxy_listener() -> None:
    config = published(BACKEND, CLIENT)
    listener = config[LISTENER]["outbound_tcp_5432"]
    assert listener["address"]["socketAddress"]["portValue"] == 5432
    assert "outbound|5432||backend.shop.svc.cluster.local" in str(listener)


def test_a_selected_workload_gets_inbound_listeners_forwarding_to_its_app() -> None:
    config = published(BACKEND, BACKEND_POD)
    inbound = config[LISTENER]["inbound_9090"]
    assert inbound["address"]["socketAddress"] == {"address": "127.0.41.1", "portValue": 9090}
    assert "x-mesh-inbound" in str(inbound)
    cluster = config[CLUSTER]["inbound|9090||"]
    endpoint = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]
    assert endpoint["address"]["socketAddress"] == {"address": "127.0.0.1", "portValue": 9090}


def test_a_client_that_no_service_selects_gets_no_inbound_listeners() -> None:
    config = published(BACKEND, CLIENT)
    assert not [name for name in config[LISTENER] if name.startswith("inbound")]
    assert config[LISTENER]["outbound_http"]["address"]["socketAddress"] == {
        "address": "127.0.0.1",
        "portValue": 15001,
    }
