"""Specification of `convert`: Kubernetes manifests in, model values or named errors out."""

from __future__ import annotations

from typing import Any

import pytest
from convert_checks import manifest

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
from xds_server.sources import limits
from xds_server.sources.convert import ManifestError, convert
from xds_server.sources.object_reader import show


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
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}",
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: x}",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}",
        "apiVersion: v1\nkind: Node\nmetadata: {name: x}",
        "apiVersion: example.com/v1\nkind: EndpointSlice\nmetadata: {name: x}",
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


SERVICE_BODY = "metadata: {name: web}\nspec: {ports: [{port: 80}]}"


@pytest.mark.parametrize(
    ("api_version", "kind", "field", "meant", "message"),
    [
        ("v1", "Services", "kind", "Service", "did you mean 'Service' (apiVersion v1)?"),
        ("v1", "'Service '", "kind", "Service", "kind 'Service ' is not one the mesh reads"),
        ("v1", "service", "kind", "Service", "did you mean 'Service'"),
        ("v1", "Serivce", "kind", "Service", "did you mean 'Service'"),
        ("discovery.k8s.io/v1", "endpointslice", "kind", "EndpointSlice",
         "did you mean 'EndpointSlice' (apiVersion discovery.k8s.io/v1)?"),
        ("discovery.k8s.io/v1", "EndpointSlices", "kind", "EndpointSlice", "did you mean"),
        ("v1", "Pods", "kind", "Pod", "did you mean 'Pod'"),
        ("apps/v1", "Service", "apiVersion", "Service",
         "Kubernetes has no Service in 'apps/v1'; did you mean 'v1'?"),
        ("networking.k8s.io/v1", "Service", "apiVersion", "Service", "did you mean 'v1'?"),
        ("V1", "Service", "apiVersion", "Service",
         "'V1' is not an apiVersion the mesh reads; did you mean 'v1'?"),
        ("'v1 '", "Service", "apiVersion", "Service", "did you mean 'v1'?"),
        ("v1", "EndpointSlice", "apiVersion", "EndpointSlice",
         "did you mean 'discovery.k8s.io/v1'?"),
    ],
)  # fmt: skip
def test_near_miss_kinds_are_warnings_keyed_by_the_object_they_meant(
    api_version: str, kind: str, field: str, meant: str, message: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        convert(manifest(f"apiVersion: {api_version}\nkind: {kind}\n{SERVICE_BODY}"))
    error = caught.value
    assert (error.severity, error.field) == ("warning", field)
    assert message in error.message
    assert error.key == ObjectKey(Kind(meant), "default", "web")


@pytest.mark.parametrize("kind", ["Service" * 100, "'Web Thing'", '"Thing\\0"', "'Dé'", "'5'"])
def test_a_kind_no_kubernetes_kind_could_be_is_a_warning(kind: str) -> None:
    with pytest.raises(ManifestError) as caught:
        convert(manifest(f"apiVersion: v1\nkind: {kind}\n{SERVICE_BODY}"))
    assert (caught.value.severity, caught.value.field, caught.value.key) == (
        "warning",
        "kind",
        None,
    )
    assert caught.value.message.endswith("is not a Kubernetes kind name")
    assert len(str(caught.value)) < 300


def test_an_unsupported_version_of_a_mesh_kind_is_an_error() -> None:
    with pytest.raises(ManifestError) as caught:
        convert(manifest(f"apiVersion: v2\nkind: Service\n{SERVICE_BODY}"))
    assert caught.value.severity == "error"
    assert (caught.value.field, caught.value.message) == (
        "apiVersion",
        "unsupported version 'v2', use 'v1'",
    )


SLICE_HEAD = (
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
    "metadata: {name: s, labels: {kubernetes.io/service-name: web}}\n"
)
POD_HEAD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"


def web(spec: str) -> Any:
    return manifest(f"apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}")


def slice_of(body: str) -> Any:
    return manifest(SLICE_HEAD + body)


def endpoints(items: str, address_type: str = "IPv4") -> Any:
    return slice_of(f"addressType: {address_type}\nendpoints: {items}")


def big_slice(endpoint_count: int, addresses: int = 1, ports: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": f"p{i}", "port": 1000 + i} for i in range(ports)],
        "endpoints": [
            {"addresses": [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(addresses)]}
            for _ in range(endpoint_count)
        ],
    }  # fmt: skip


def with_metadata(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", **fields},
            "spec": {"ports": [{"port": 80}]}}  # fmt: skip


HOSTILE = [
    # (manifest, field, message substring): what the API server, or protobuf, would refuse
    (web("{ports: [{port: 1:20}]}"), "spec.ports[0].port", "got '1:20'"),
    (web("{ports: [{port: 80.0}]}"), "spec.ports[0].port", "got 80.0"),
    (web("{ports: [{port: 80, nodePort: 30000}]}"), "spec.ports[0].nodePort",
     "only a NodePort or LoadBalancer"),
    (web("{ports: [{port: 80, nodePort: 70000}], type: NodePort}"), "spec.ports[0].nodePort",
     "0-65535"),
    (web("{ports: [{port: 80, appProtocol: 'a b'}]}"), "spec.ports[0].appProtocol", "appProtocol"),
    (web("{ports: [{port: 80}], sessionAffinity: Sticky}"), "spec.sessionAffinity",
     "must be one of ClientIP, None"),
    (web("{ports: [{port: 80}], externalTrafficPolicy: Global}"), "spec.externalTrafficPolicy",
     "Cluster, Local"),
    (web("{ports: [{port: 80}], ipFamilyPolicy: DualStack}"), "spec.ipFamilyPolicy", "one of"),
    (web("{ports: [{port: 80}], ipFamilies: [IPv4, IPv4]}"), "spec.ipFamilies[1]", "duplicate"),
    (web("{ports: [{port: 80}], ipFamilies: [IPv5]}"), "spec.ipFamilies[0]", "one of IPv4, IPv6"),
    (web("{ports: [{port: 80}], clusterIP: 10.0.0.1, clusterIPs: [10.0.0.2]}"),
     "spec.clusterIPs[0]", "must equal spec.clusterIP"),
    (web("{ports: [{port: 80}], clusterIPs: [10.0.0.1, 10.0.0.2]}"), "spec.clusterIPs[1]",
     "one IPv4 and one IPv6"),
    (web("{ports: [{port: 80}], clusterIPs: [10.0.0.1, 'fd00::1'], ipFamilyPolicy: SingleStack}"),
     "spec.clusterIPs", "SingleStack"),
    (web("{ports: [{port: 80}], clusterIPs: ['fd00::1'], ipFamilies: [IPv4]}"),
     "spec.ipFamilies[0]", "must be IPv6"),
    (web("{ports: [{port: 80}], clusterIPs: [a, b, c]}"), "spec.clusterIPs", "at most 2 items"),
    (web("{ports: [{port: 80}], clusterIP: 'fe80::1%eth0'}"), "spec.clusterIP", "IP address"),
    (web("{ports: [{port: 80}], externalIPs: [1.2.3]}"), "spec.externalIPs[0]", "IP address"),
    (web("{ports: [{port: 80}], externalIPs: [5]}"), "spec.externalIPs[0]", "must be a string"),
    (web("{type: ExternalName}"), "spec.externalName", "required"),
    (web("{type: ExternalName, externalName: 'bad name'}"), "spec.externalName", "DNS subdomain"),
    (web("{type: ExternalName, externalName: db.example.com, clusterIP: 10.0.0.1}"),
     "spec.clusterIP", "must be empty"),
    (web("{ports: [{port: 80}], publishNotReadyAddresses: 'yes'}"),
     "spec.publishNotReadyAddresses", "must be true or false"),
    (web("{ports: [{port: 80}], selector: {app: 'a b'}}"), "spec.selector[app]", "label value"),
    (web("{ports: [{port: 80}], selector: {'-app': a}}"), "spec.selector[-app]", "label key"),
    (web("{ports: [{port: 80}], selector: {'Example.com/app': a}}"),
     "spec.selector[Example.com/app]", "label key prefix must be a DNS subdomain"),
    (web("{ports: [{port: 80}], selector: {app: " + "v" * 64 + "}}"), "spec.selector[app]",
     "at most 63 characters"),
    (web("{ports: [{port: 80}], healthCheckNodePort: '1'}"), "spec.healthCheckNodePort",
     "must be an integer"),
    (with_metadata(uid=1234), "metadata.uid", "must be a string, got 1234"),
    (with_metadata(generation=2**70), "metadata.generation", "integer too large"),
    (with_metadata(labels={"k" * 64: "v"}), f"metadata.labels[{'k' * 64}]", "label key must be"),
    (with_metadata(labels={"k" * 5000: "v"}),
     f"metadata.labels[{'k' * limits.MAX_SHOWN_VALUE_CHARS}…]", "label key must be"),
    (with_metadata(annotations={"a": "v" * (limits.MAX_ANNOTATIONS_BYTES + 1)}),
     "metadata.annotations", "at most 262,144 bytes"),
    (with_metadata(annotations={"a/b/c": "v"}), "metadata.annotations[a/b/c]", "annotation key"),
    (with_metadata(annotations={"note": "x\x00y"}), "metadata.annotations[note]",
     "must not contain NUL"),
    (with_metadata(finalizers=["a", 1]), "metadata.finalizers[1]", "must be a string"),
    (with_metadata(managedFields=[{"manager": "x\ud800"}]), "metadata.managedFields[0].manager",
     "lone surrogates (U+D800 at 1)"),
    ({**with_metadata(), "status": {"loadBalancer": {"ingress": [{"ip": 2**64}]}}},
     "status.loadBalancer.ingress[0].ip", "integer too large"),
    ({**with_metadata(), "status": {b"raw": 1}}, "status", "field names must be strings"),
    ({**big_slice(1), "endpoints": [{"addresses": ["10.0.0.1"], "zone": "x\ud800y"}]},
     "endpoints[0].zone", "lone surrogates (U+D800 at 1)"),
    (endpoints('[{addresses: [10.0.0.1], zone: "x\\ty"}]'), "endpoints[0].zone",
     "control characters or lone surrogates (U+0009 at 1)"),
    (endpoints('[{addresses: [10.0.0.1], zone: "x\\u2028y"}]'), "endpoints[0].zone", "U+2028"),
    (endpoints("[{addresses: [10.0.0.1], zone: " + "z" * 5000 + "}]"), "endpoints[0].zone",
     "at most 4,096 characters"),
    (endpoints("[{addresses: [10.0.0.1], hostname: Web_1}]"), "endpoints[0].hostname",
     "DNS label"),
    (endpoints("[{addresses: [10.0.0.1], nodeName: 'node a'}]"), "endpoints[0].nodeName",
     "DNS subdomain"),
    (endpoints('[{addresses: [10.0.0.1], targetRef: {kind: Pod, name: "a\\x01"}}]'),
     "endpoints[0].targetRef.name", "control characters"),
    (endpoints("[{addresses: [10.0.0.1], targetRef: {kind: Pod, name: 7}}]"),
     "endpoints[0].targetRef.name", "must be a string, got 7"),
    (endpoints("[{addresses: [10.0.0.1], hints: {forZones: [{name: 3}]}}]"),
     "endpoints[0].hints.forZones[0].name", "must be a string"),
    (endpoints("[{addresses: [0.0.0.0]}]"), "endpoints[0].addresses[0]", "unicast"),
    (endpoints("[{addresses: [224.0.0.1]}]"), "endpoints[0].addresses[0]", "unicast"),
    (endpoints("[{addresses: ['::ffff:10.0.0.1']}]", "IPv6"), "endpoints[0].addresses[0]",
     "IPv4-mapped"),
    (endpoints("[{addresses: ['10.0.0.1', 'fd00::1']}]"), "endpoints[0].addresses[1]",
     "must be an IPv4 address"),
    (endpoints("[{addresses: [localhost]}]", "FQDN"), "endpoints[0].addresses[0]",
     "fully qualified domain name"),
    (endpoints("[{addresses: [10.0.0.1], conditions: {ready: 1}}]"),
     "endpoints[0].conditions.ready", "must be true or false, got 1"),
    (endpoints("[{addresses: 10.0.0.1}]"), "endpoints[0].addresses", "must be a list of strings"),
    (slice_of("addressType: IPv4\nports: [{name: a, port: 80}, {name: a}]"), "ports[1].name",
     "duplicate port name 'a'"),
    (slice_of("addressType: IPv4\nports: [{port: 80, appProtocol: '-x'}]"),
     "ports[0].appProtocol", "appProtocol must be"),
    (big_slice(limits.MAX_ENDPOINTS_PER_SLICE + 1), "endpoints", "at most 1,000 items, got 1,001"),
    (big_slice(1, addresses=limits.MAX_ADDRESSES_PER_ENDPOINT + 1), "endpoints[0].addresses",
     "at most 100 items"),
    (big_slice(1, ports=limits.MAX_PORTS_PER_SLICE + 1), "ports", "at most 100 items"),
    (manifest(POD_HEAD + "status: {phase: Done}"), "status.phase", "must be one of Failed"),
    (manifest(POD_HEAD + "status: {podIPs: [{ip: nope}]}"), "status.podIPs[0].ip", "IP address"),
    (manifest(POD_HEAD + "spec: {serviceAccountName: 'Web Admin'}"), "spec.serviceAccountName",
     "DNS subdomain"),
    (manifest(POD_HEAD + "spec: {nodeName: 'a\\tb'}"), "spec.nodeName", "DNS subdomain"),
    (manifest(POD_HEAD + "spec: {containers: {name: app}}"), "spec.containers", "must be a list"),
    (manifest(POD_HEAD + "spec: {hostNetwork: 'true'}"), "spec.hostNetwork", "true or false"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "field", "message"), HOSTILE)
def test_what_kubernetes_or_protobuf_would_refuse_is_a_field_error(
    bad: Any, field: str, message: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        convert(bad)
    assert (caught.value.field, caught.value.severity) == (field, "error")
    assert message in caught.value.message
    assert len(str(caught.value)) <= limits.MAX_ERROR_CHARS


@pytest.mark.parametrize(
    ("target", "expected"), [("0", 80), ("''", 80), ("8080", 8080), ("http", "http")]
)
def test_an_empty_target_port_defaults_to_the_port(target: str, expected: int | str) -> None:
    converted = convert(web(f"{{ports: [{{port: 80, targetPort: {target}}}]}}"))
    assert isinstance(converted, Service)
    assert converted.ports[0].target_port == expected


def test_objects_at_kubernetes_limits_convert() -> None:
    converted = convert(
        big_slice(
            limits.MAX_ENDPOINTS_PER_SLICE,
            limits.MAX_ADDRESSES_PER_ENDPOINT,
            limits.MAX_PORTS_PER_SLICE,
        )
    )
    assert isinstance(converted, EndpointSlice)
    assert len(converted.endpoints) == limits.MAX_ENDPOINTS_PER_SLICE
    assert len(converted.ports) == limits.MAX_PORTS_PER_SLICE


def test_what_kubectl_get_writes_converts() -> None:
    """Server-set fields, null timestamps, dual stack, annotations with any text."""
    converted = convert(
        manifest(
            """
            apiVersion: v1
            kind: Service
            metadata:
              name: web
              namespace: shop
              uid: 6f1b2c3d-0000-4000-8000-000000000000
              resourceVersion: "812"
              generation: 3
              creationTimestamp: 2024-05-01T10:00:00Z
              deletionTimestamp: null
              labels: {app.kubernetes.io/name: web, tier: ""}
              annotations:
                kubectl.kubernetes.io/last-applied-configuration: |
                  {"apiVersion":"v1","kind":"Service"}
                Example.com/Note: "multi\\nline\\ttext ✓"
              finalizers: [service.kubernetes.io/load-balancer-cleanup]
            spec:
              type: LoadBalancer
              clusterIP: 10.96.0.10
              clusterIPs: [10.96.0.10, "fd00::10"]
              ipFamilies: [IPv4, IPv6]
              ipFamilyPolicy: PreferDualStack
              sessionAffinity: None
              externalTrafficPolicy: Local
              internalTrafficPolicy: Cluster
              healthCheckNodePort: 31000
              allocateLoadBalancerNodePorts: true
              selector: {app.kubernetes.io/name: web}
              ports:
              - {name: http, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP,
                 appProtocol: kubernetes.io/h2c}
            status: {loadBalancer: {ingress: [{ip: 192.0.2.10}]}}
            """
        )
    )
    assert converted == Service(
        namespace="shop",
        name="web",
        ports=(ServicePort(80, name="http", target_port=8080, app_protocol="kubernetes.io/h2c"),),
        selector=(("app.kubernetes.io/name", "web"),),
        cluster_ip="10.96.0.10",
    )


@pytest.mark.parametrize(
    "value",
    [
        "a" * 5_000_000,
        "\x00" * 1000,
        "\ud800" * 1000,
        10**5000,
        -(10**5000),
        1e308,
        b"bytes",
        {"a": 1},
        [1],
        None,
        True,
    ],
    ids=lambda value: type(value).__name__,
)
def test_values_are_shown_bounded(value: Any) -> None:
    shown = show(value)
    assert len(shown) <= limits.MAX_SHOWN_VALUE_CHARS + 40
    shown.encode("utf-8")  # printable anywhere: no lone surrogate survives


def test_a_huge_name_makes_a_bounded_error() -> None:
    with pytest.raises(ManifestError) as caught:
        convert(with_metadata(name="A" * 5_000_000))
    text = str(caught.value)
    assert len(text) <= limits.MAX_ERROR_CHARS
    assert text.startswith("Service default/AAAA")
    assert "…" in text
    assert "(5,000,000 characters)" in text
