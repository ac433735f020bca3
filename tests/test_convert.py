"""Specification of `convert`: Kubernetes manifests in, model values or named errors out."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from xds_server.model import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    ObjectKey,
    Service,
    ServicePort,
    Workload,
)
from xds_server.sources.convert import ManifestError, convert


def manifest(text: str) -> Any:
    return yaml.safe_load(text)


def service(spec: str, name: str = "backend") -> Any:
    return manifest(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {spec}")


def endpoint_slice(endpoints: str, address_type: str = "IPv4") -> Any:
    return manifest(
        f"""
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: backend-abc
          namespace: shop
          labels: {{kubernetes.io/service-name: backend}}
        addressType: {address_type}
        ports: [{{name: http, port: 8080}}]
        endpoints: {endpoints}
        """
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            """
            apiVersion: v1
            kind: Service
            metadata:
              name: backend
              namespace: shop
              labels: {app: backend}
              uid: "1234"
              resourceVersion: "7"
            spec:
              clusterIP: 10.96.0.10
              selector: {app: backend, tier: api}
              ports:
              - {name: http, port: 80, targetPort: http-web}
              - {name: grpc, port: 9090, targetPort: 9091, appProtocol: grpc}
              - {name: dns, port: 53, protocol: UDP}
            status: {loadBalancer: {}}
            """,
            Service(
                namespace="shop",
                name="backend",
                ports=(
                    ServicePort(port=80, name="http", target_port="http-web"),
                    ServicePort(port=9090, name="grpc", target_port=9091, app_protocol="grpc"),
                    ServicePort(port=53, name="dns", target_port=53, protocol="UDP"),
                ),
                selector=(("app", "backend"), ("tier", "api")),
                cluster_ip="10.96.0.10",
            ),
            id="service-named-and-int-target-ports",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 8080}]}",
            Service(namespace="default", name="web", ports=(ServicePort(8080, target_port=8080),)),
            id="service-defaults-namespace-target-port-no-selector",
        ),
        pytest.param(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: db}
            spec: {clusterIP: None, selector: {app: db}, type: ClusterIP, sessionAffinity: None}
            """,
            Service(namespace="default", name="db", selector=(("app", "db"),)),
            id="headless-service-needs-no-ports",
        ),
        pytest.param(
            """
            apiVersion: v1
            kind: Pod
            metadata: {name: web-1, namespace: shop, labels: {app: web}}
            spec:
              serviceAccountName: web
              nodeName: node-a
              containers: [{name: app, image: nginx}]
            status: {podIP: 10.1.0.7, phase: Running}
            """,
            Workload(
                namespace="shop",
                name="web-1",
                labels=(("app", "web"),),
                service_account="web",
                ip="10.1.0.7",
                node_name="node-a",
            ),
            id="pod",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: done}\n"
            "status: {podIP: 10.1.0.8, phase: Succeeded}",
            Workload(namespace="default", name="done"),
            id="a-finished-pod-no-longer-owns-its-ip",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: bare}\nspec: {containers: []}",
            Workload(namespace="default", name="bare"),
            id="pod-defaults",
        ),
        pytest.param(
            """
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: backend-abc
              namespace: shop
              labels: {kubernetes.io/service-name: backend}
            addressType: IPv6
            ports: [{name: http, port: 8080, appProtocol: http}, {name: all}]
            endpoints:
            - addresses: ["fd00:0:0::1"]
              zone: zone-a
              nodeName: node-a
              targetRef: {kind: Pod, name: backend-1, namespace: shop}
            """,
            EndpointSlice(
                namespace="shop",
                name="backend-abc",
                service_name="backend",
                address_type="IPv6",
                ports=(EndpointPort(8080, name="http", app_protocol="http"),),
                endpoints=(
                    Endpoint(
                        ("fd00::1",), zone="zone-a", node_name="node-a", target_pod="backend-1"
                    ),
                ),
            ),
            id="endpoint-slice-ipv6-zone-target-pod",
        ),
    ],
)
def test_good_manifests_convert_to_model_values(source: str, expected: object) -> None:
    assert convert(manifest(source)) == expected


@pytest.mark.parametrize(
    ("conditions", "ready", "serving", "terminating"),
    [
        ("{}", True, True, False),  # nil ready means unknown, treated as ready
        ("{ready: null}", True, True, False),
        ("{ready: true}", True, True, False),
        ("{ready: false}", False, False, False),  # serving defaults to ready
        ("{ready: false, serving: true}", False, True, False),
        ("{ready: false, serving: true, terminating: true}", False, True, True),
        ("{ready: false, serving: false, terminating: true}", False, False, True),
        ("{terminating: true}", True, True, True),
    ],
)
def test_endpoint_conditions_follow_kubernetes_defaults(
    conditions: str, ready: bool, serving: bool, terminating: bool
) -> None:
    converted = convert(endpoint_slice(f"[{{addresses: [10.0.0.1], conditions: {conditions}}}]"))
    assert isinstance(converted, EndpointSlice)
    (endpoint,) = converted.endpoints
    assert (endpoint.ready, endpoint.serving, endpoint.terminating) == (ready, serving, terminating)
    assert endpoint.is_routable == (ready and not terminating)


@pytest.mark.parametrize(
    "source",
    [
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}",
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec: {}",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {bogus: 1}",
    ],
)
def test_kinds_the_mesh_does_not_use_are_ignored(source: str) -> None:
    assert convert(manifest(source)) is None


BAD = [
    # (manifest, object_ref, field, message substring)
    (service("{ports: [{name: a, port: 80}, {name: b, port: abc}]}"),
     "Service default/backend", "spec.ports[1].port", "must be an integer 1-65535, got 'abc'"),
    (service("{ports: [{port: 0}]}"), "Service default/backend", "spec.ports[0].port", "got 0"),
    (service("{ports: [{port: true}]}"), "Service default/backend", "spec.ports[0].port",
     "got true"),
    (service("{ports: [{port: '80'}]}"), "Service default/backend", "spec.ports[0].port",
     "got '80'"),
    (service("{prots: [{port: 80}]}"), "Service default/backend", "spec.prots", "unknown field"),
    (service("{ports: [{port: 80, targetport: 8080}]}"), "Service default/backend",
     "spec.ports[0].targetport", "unknown field"),
    (service("{ports: [{port: 80, targetPort: 70000}]}"), "Service default/backend",
     "spec.ports[0].targetPort", "1-65535"),
    (service("{ports: [{port: 80, targetPort: '8080'}]}"), "Service default/backend",
     "spec.ports[0].targetPort", "port name"),
    (service("{ports: [{port: 80, protocol: HTTP}]}"), "Service default/backend",
     "spec.ports[0].protocol", "must be one of SCTP, TCP, UDP"),
    (service("{}"), "Service default/backend", "spec.ports", "required"),
    (service("{ports: [{name: http, port: 80}, {name: http, port: 81}]}"),
     "Service default/backend", "spec.ports[1].name", "duplicate port name 'http'"),
    (service("{ports: [{name: a, port: 80}, {name: b, port: 80}]}"),
     "Service default/backend", "spec.ports[1].port", "duplicate port 80/TCP"),
    (service("{ports: [{name: a, port: 80}, {port: 81}]}"), "Service default/backend",
     "spec.ports[1].name", "required when the Service has more than one port"),
    (service("{ports: [{name: Web_1, port: 80}]}"), "Service default/backend",
     "spec.ports[0].name", "DNS label"),
    (service("{ports: [{port: 80}], selector: {version: 1}}"), "Service default/backend",
     "spec.selector[version]", "must be a string, got 1"),
    (service("{ports: [{port: 80}], clusterIP: 10.0.0.256}"), "Service default/backend",
     "spec.clusterIP", "IP address"),
    (service("{ports: {port: 80}}"), "Service default/backend", "spec.ports", "must be a list"),
    (service("{ports: [{port: 80}], type: Ingress}"), "Service default/backend", "spec.type",
     "must be one of"),
    (service("[]"), "Service default/backend", "spec", "must be a mapping"),
    (service("{ports: [{port: 80}]}", name="Backend"), "Service default/Backend",
     "metadata.name", "DNS label starting with a letter"),
    (manifest("apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\nspec: {}"),
     "Service shop/<unnamed>", "metadata.name", "required"),
    (manifest("apiVersion: v1\nkind: Service\nmetadata: {name: a, nmespace: b}"),
     "Service default/a", "metadata.nmespace", "unknown field"),
    (manifest("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspc: {}"),
     "Service default/a", "spc", "unknown field"),
    (manifest("apiVersion: v1\nmetadata: {name: a}"), "object default/a", "kind", "required"),
    (manifest("kind: Service\nmetadata: {name: a}"), "Service default/a", "apiVersion",
     "required"),
    (manifest("- a\n- b"), "object", None, "must be a mapping, got a list"),
    (manifest("apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: a}"),
     "EndpointSlice default/a", "apiVersion", "use 'discovery.k8s.io/v1'"),
    (manifest("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\n"
              "addressType: IPv4"),
     "EndpointSlice default/a", "metadata.labels[kubernetes.io/service-name]", "required"),
    (endpoint_slice("[{addresses: [10.0.0.300]}]"), "EndpointSlice shop/backend-abc",
     "endpoints[0].addresses[0]", "must be an IP address, got '10.0.0.300'"),
    (endpoint_slice("[{addresses: ['fd00::1']}]"), "EndpointSlice shop/backend-abc",
     "endpoints[0].addresses[0]", "must be an IPv4 address"),
    (endpoint_slice("[{addresses: []}]"), "EndpointSlice shop/backend-abc",
     "endpoints[0].addresses", "required"),
    (endpoint_slice("[{conditions: {ready: true}}]"), "EndpointSlice shop/backend-abc",
     "endpoints[0].addresses", "required"),
    (endpoint_slice("[{addresses: [10.0.0.1], conditions: {ready: 'yes'}}]"),
     "EndpointSlice shop/backend-abc", "endpoints[0].conditions.ready",
     "must be true or false, got 'yes'"),
    (endpoint_slice("[{addresses: [10.0.0.1], conditions: {healthy: true}}]"),
     "EndpointSlice shop/backend-abc", "endpoints[0].conditions.healthy", "unknown field"),
    (endpoint_slice("[{addresses: [10.0.0.1]}]", address_type="IPv5"),
     "EndpointSlice shop/backend-abc", "addressType", "must be one of FQDN, IPv4, IPv6"),
    (manifest("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: nope}"),
     "Pod default/p", "status.podIP", "IP address"),
    (manifest("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAcount: x}"),
     "Pod default/p", "spec.serviceAcount", "unknown field"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "object_ref", "field", "message"), BAD)
def test_bad_manifests_raise_errors_naming_object_and_field(
    bad: Any, object_ref: str, field: str | None, message: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        convert(bad)
    error = caught.value
    assert (error.object_ref, error.field) == (object_ref, field)
    assert message in error.message
    assert str(error) == ": ".join(p for p in (object_ref, field, error.message) if p)


def test_error_sentence_and_key() -> None:
    with pytest.raises(ManifestError) as caught:
        convert(service("{ports: [{name: a, port: 80}, {name: b, port: abc}]}"))
    assert str(caught.value) == (
        "Service default/backend: spec.ports[1].port: must be an integer 1-65535, got 'abc'"
    )
    assert caught.value.key == ObjectKey(Kind.SERVICE, "default", "backend")


def test_lenient_mode_accepts_fields_newer_than_this_module() -> None:
    newer = service("{ports: [{port: 80, futureField: 1}], futureSpec: true}")
    with pytest.raises(ManifestError):
        convert(newer)
    assert convert(newer, strict=False) == Service(
        namespace="default", name="backend", ports=(ServicePort(80, target_port=80),)
    )
