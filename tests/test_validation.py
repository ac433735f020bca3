"""Spec: no generated resource breaking one of Envoy's own validation rules is served.

The Envoy protos' `(validate.rules)` annotations are checked on every
resource the pipeline builds (`pipeline.validation`, with protoc-gen-validate):

* a resource that breaks one is refused with an error naming the resource,
  the field path inside it (through `Any`s such as a listener's
  HttpConnectionManager or a cluster's typed load balancing policy) and the
  rule as the proto declares it; valid ones pass, and every resource a
  representative mesh, the benchmarks' synthetic mesh and every BackendPolicy
  the translation tests exercise produce passes;
* results are cached by content (type URL and version; route tables per
  virtual host), so building the same resource again checks nothing;
* in the pipeline, a translation whose output breaks a rule is treated as
  raising: the object to blame (a Service, a BackendPolicy) is left out, its
  last good version stays, and the error names it, the field and the rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from translate_builders import (
    endpoint,
    endpoint_slice,
    http,
    proxy,
    representative_mesh,
    representative_sidecar,
    service,
)

from xds_server import translate
from xds_server.cache import Snapshot, SnapshotCache
from xds_server.model import ChangeSet, ObjectKey, Proxy, Service
from xds_server.model.changes import MeshObject
from xds_server.model.policy import BackendPolicy
from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    HeaderModifier,
    HTTPRoute,
    HTTPRouteRule,
    ParentRef,
    RequestHeaderModifierFilter,
)
from xds_server.pipeline import SnapshotBuilder, validation
from xds_server.pipeline.validation import EnvoyValidationError, EnvoyValidator
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.provenance import Origin
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, make_resource, unpack
from xds_server.translate import backend_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import synthetic_mesh

RING_HASH = "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

WEB = service("web", http(8080), selector={"app": "web"})
WEB_SLICE = endpoint_slice(WEB, endpoint("127.0.1.1"), endpoint("127.0.1.2"))


def copy_of(message: Message) -> Any:
    found = type(message)()
    found.CopyFrom(message)
    return found


def web_cluster() -> cluster_pb2.Cluster:
    (cluster,) = translate.clusters_for_service(WEB, None)
    return cluster


def web_assignment() -> endpoint_pb2.ClusterLoadAssignment:
    (assignment,) = translate.load_assignments_for_service(WEB, (WEB_SLICE,))
    return assignment


def web_listener() -> listener_pb2.Listener:
    """The representative sidecar's first listener that runs an HttpConnectionManager."""
    for listener in translate.proxy_listeners(representative_mesh(), representative_sidecar()):
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.type_url.endswith(HCM):
                    return listener
    raise AssertionError("no HTTP listener")


def route_table() -> route_pb2.RouteConfiguration:
    return translate.outbound_route_config(representative_mesh(), "default")


# -- broken resources, one rule each -------------------------------------------------------


def outlier_percent(cluster: cluster_pb2.Cluster) -> None:
    cluster.outlier_detection.max_ejection_percent.value = 150


def classic_ring(cluster: cluster_pb2.Cluster) -> None:
    cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
    cluster.ring_hash_lb_config.maximum_ring_size.value = 8_388_609


def typed_ring(cluster: cluster_pb2.Cluster) -> None:
    """As BackendPolicy translation builds RingHash: a typed extension, inside an Any."""
    policy = cluster.load_balancing_policy.policies.add()
    policy.typed_extension_config.name = backend_policy.RING_HASH_POLICY
    policy.typed_extension_config.typed_config.Pack(
        ring_hash_pb2.RingHash(minimum_ring_size={"value": 9_000_000})
    )


def no_health_check_interval(cluster: cluster_pb2.Cluster) -> None:
    check = cluster.health_checks.add()
    check.timeout.seconds = 1
    check.unhealthy_threshold.value = check.healthy_threshold.value = 1
    check.tcp_health_check.SetInParent()


def endpoint_port(assignment: endpoint_pb2.ClusterLoadAssignment) -> None:
    lb = assignment.endpoints[0].lb_endpoints[1]
    lb.endpoint.address.socket_address.port_value = 70_000


def empty_route_cluster(config: route_pb2.RouteConfiguration) -> None:
    config.virtual_hosts[1].routes[0].route.cluster = ""


def route_without_action(config: route_pb2.RouteConfiguration) -> None:
    config.virtual_hosts[0].routes[0].ClearField("route")


def header_in_domain(config: route_pb2.RouteConfiguration) -> None:
    config.virtual_hosts[0].domains.append("web\r\nx-injected: 1")


def empty_stat_prefix(listener: listener_pb2.Listener) -> None:
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm):
                hcm.stat_prefix = ""
                network_filter.typed_config.Pack(hcm)
                return


BROKEN = [
    pytest.param(
        web_cluster,
        outlier_percent,
        "outlier_detection.max_ejection_percent",
        "(validate.rules).uint32 { lte: 100 }",
        id="cluster outlier max_ejection_percent > 100",
    ),
    pytest.param(
        web_cluster,
        classic_ring,
        "ring_hash_lb_config.maximum_ring_size",
        "(validate.rules).uint64 { lte: 8388608 }",
        id="cluster ring_hash maximum_ring_size > 8M",
    ),
    pytest.param(
        web_cluster,
        typed_ring,
        "load_balancing_policy.policies[0].typed_extension_config"
        f".typed_config<{RING_HASH}>.minimum_ring_size",
        "(validate.rules).uint64 { lte: 8388608 gte: 1 }",
        id="typed RingHash minimum_ring_size > 8M (inside an Any)",
    ),
    pytest.param(
        web_cluster,
        no_health_check_interval,
        "health_checks[0].interval",
        "(validate.rules).duration { required: true gt { } }",
        id="health check without interval",
    ),
    pytest.param(
        web_assignment,
        endpoint_port,
        "endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value",
        "(validate.rules).uint32 { lte: 65535 }",
        id="endpoint port > 65535",
    ),
    pytest.param(
        route_table,
        empty_route_cluster,
        "virtual_hosts[1].routes[0].route.cluster",
        "(validate.rules).string { min_len: 1 }",
        id="route to an empty cluster name",
    ),
    pytest.param(
        route_table,
        route_without_action,
        "virtual_hosts[0].routes[0].action",
        "(validate.required) = true on the oneof",
        id="route without an action",
    ),
    pytest.param(
        route_table,
        header_in_domain,
        "virtual_hosts[0].domains",
        "well_known_regex: HTTP_HEADER_VALUE",
        id="CR LF in a domain",
    ),
    pytest.param(
        web_listener,
        empty_stat_prefix,
        f"typed_config<{HCM}>.stat_prefix",
        "(validate.rules).string { min_len: 1 }",
        id="HttpConnectionManager without stat_prefix (inside an Any)",
    ),
]


@pytest.mark.parametrize(("build", "breaks", "path", "rule"), BROKEN)
def test_a_resource_breaking_an_envoy_rule_is_refused_naming_field_and_rule(
    build: Callable[[], Message], breaks: Callable[[Any], None], path: str, rule: str
) -> None:
    message = copy_of(build())
    breaks(message)
    resource = make_resource(message)

    with pytest.raises(EnvoyValidationError) as raised:
        EnvoyValidator().validate(resource, message)

    error = raised.value
    assert (error.type_url, error.resource_name) == (resource.type_url, resource.name)
    assert error.field_path.endswith(path)
    assert rule in error.rule
    assert resource.name in str(error) and path in str(error) and rule in str(error)


@pytest.mark.parametrize(("build", "breaks", "path", "rule"), BROKEN)
def test_the_same_resource_unbroken_passes(
    build: Callable[[], Message], breaks: Callable[[Any], None], path: str, rule: str
) -> None:
    message = build()
    EnvoyValidator().validate(make_resource(message), message)


def test_a_route_table_is_checked_per_virtual_host_with_the_same_verdicts() -> None:
    for breaks in (empty_route_cluster, route_without_action, header_in_domain):
        config = copy_of(route_table())
        breaks(config)
        resource = make_resource(config)
        with pytest.raises(EnvoyValidationError) as whole:
            EnvoyValidator().validate(resource, config)
        with pytest.raises(EnvoyValidationError) as per_host:
            EnvoyValidator().validate_route_table(resource)
        assert str(per_host.value) == str(whole.value)


def test_control_characters_in_a_reason_are_escaped() -> None:
    config = copy_of(route_table())
    header_in_domain(config)
    with pytest.raises(EnvoyValidationError) as raised:
        EnvoyValidator().validate_route_table(make_resource(config))
    assert "\x00" not in str(raised.value) and "\n" not in str(raised.value)
    assert "\\x0a" in raised.value.reason


# -- each content is checked once ----------------------------------------------------------


def test_validating_the_same_content_again_checks_nothing() -> None:
    validator = EnvoyValidator()
    cluster = web_cluster()
    validator.validate(make_resource(cluster), cluster)
    assert validator.checked == 1

    validator.validate(make_resource(cluster))  # rebuilt: same bytes, same version
    assert validator.checked == 1
    assert validator.results.hits == 1


def test_a_cached_failure_is_raised_again_without_checking_again() -> None:
    validator = EnvoyValidator()
    cluster = web_cluster()
    outlier_percent(cluster)
    errors = []
    for _ in range(2):
        with pytest.raises(EnvoyValidationError) as raised:
            validator.validate(make_resource(cluster))
        errors.append(raised.value)
    assert validator.checked == 1
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])


def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    validator = EnvoyValidator(cache_entries=2)
    resources = [make_resource(m) for m in (web_cluster(), web_assignment(), web_listener())]
    for resource in resources[:2]:
        validator.validate(resource)
    validator.validate(resources[0])  # used again: now the most recent
    validator.validate(resources[2])  # evicts resources[1]
    assert len(validator.results) == 2 and validator.checked == 3

    validator.validate(resources[0])
    assert validator.checked == 3
    validator.validate(resources[1])
    assert validator.checked == 4


def test_route_tables_sharing_virtual_hosts_check_each_host_once() -> None:
    mesh, _ = synthetic_mesh_snapshot(services=300, namespaces=3)
    tables = translate.outbound_route_tables(mesh)
    validator = EnvoyValidator()
    validator.validate_route_table(tables.resource("bench-0"))
    first = validator.checked
    assert first == 300 + 1  # every host, and the table's own fields

    validator.validate_route_table(tables.resource("bench-1"))
    # bench-1's own hosts gain short names and bench-0's lose them: 200 hosts are new.
    assert validator.checked - first == 200 + 1
    validator.validate_route_table(tables.resource("bench-1"))
    assert validator.checked - first == 200 + 1


def test_turned_off_nothing_is_checked() -> None:
    validator = EnvoyValidator(enabled=False)
    cluster = web_cluster()
    outlier_percent(cluster)
    validator.validate(make_resource(cluster))
    assert validator.checked == 0


def test_the_process_validator_can_be_turned_off_and_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation.default_validator(), "enabled", True)
    cluster = web_cluster()
    outlier_percent(cluster)
    validation.configure(enabled=False)
    validation.validate(make_resource(cluster))
    validation.configure(enabled=True)
    with pytest.raises(EnvoyValidationError):
        validation.validate(make_resource(cluster))


# -- whole meshes pass ---------------------------------------------------------------------


def synthetic_mesh_snapshot(services: int, namespaces: int) -> tuple[Any, list[Service]]:
    from xds_server.model import MeshSnapshot

    per_namespace = services // namespaces
    changes = ChangeSet()
    made = []
    for index in range(services):
        svc = dataclasses.replace(
            synthetic_mesh.service(index), namespace=f"bench-{index // per_namespace}"
        )
        made.append(svc)
        changes.upsert(svc)
        changes.upsert(
            dataclasses.replace(synthetic_mesh.endpoint_slice(index, 3), namespace=svc.namespace)
        )
    mesh, _ = MeshSnapshot().apply(changes)
    return mesh, made


def served(cache: SnapshotCache, *proxies: Proxy) -> Iterator[tuple[str, Any]]:
    for node in proxies:
        snapshot = cache.get_snapshot(node.node_id)
        assert isinstance(snapshot, Snapshot)
        for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
            for resource in snapshot.get(type_url).values():
                yield type_url, resource


def test_every_resource_of_the_synthetic_bench_mesh_passes() -> None:
    builder = SnapshotBuilder(SnapshotCache())
    builder.apply(synthetic_mesh.mesh_changes(200, 3))
    proxies = [
        Proxy(
            node_id=f"p{index}.{synthetic_mesh.namespace_of(index * 100)}",
            namespace=synthetic_mesh.namespace_of(index * 100),
            ip=synthetic_mesh.proxy_address(index),
            labels=synthetic_mesh.app_labels(index * 100),
        )
        for index in range(2)
    ]
    for node in proxies:
        builder.add_proxy(node)
    builder.mark_synced()
    assert builder.translation_errors() == []

    fresh = EnvoyValidator()  # parses every resource from the bytes served
    count = 0
    for type_url, resource in served(builder.cache, *proxies):
        fresh.validate(resource)
        if type_url == ROUTE:
            fresh.validate(resource, unpack(resource))  # whole, as well as per host
        count += 1
    assert count > 400


POLICY_SPECS: list[dict[str, Any]] = [
    {
        "loadBalancer": {
            "algorithm": "RingHash",
            "ringHash": {"minimumRingSize": 16, "maximumRingSize": 8388608},
            "hashPolicies": [{"header": {"name": "x-user"}}, {"sourceIp": True}],
        },
        "connectionPool": {"maxConnections": 1, "maxRequests": 5},
        "outlierDetection": {"consecutive5xx": 2, "maxEjectionPercent": 100},
        "healthCheck": {"interval": "1s", "timeout": "0.5s", "http": {"path": "/healthz"}},
        "faultInjection": {
            "delay": {"fixedDelay": "0.1s", "percentage": 50},
            "abort": {"httpStatus": 503, "percentage": 10},
        },
        "localRateLimit": {"maxTokens": 10, "tokensPerFill": 2, "fillInterval": "1s"},
        "connectTimeout": "0.25s",
    },
    {
        "loadBalancer": {
            "algorithm": "Maglev",
            "hashPolicies": [{"cookie": {"name": "session", "ttl": "60s", "path": "/"}}],
        },
        "healthCheck": {
            "interval": "2s",
            "timeout": "1s",
            "tcp": {"send": "50494e47", "receive": ["504f4e47"]},
        },
    },
    {"loadBalancer": {"algorithm": "LeastRequest", "leastRequest": {"choiceCount": 3}}},
]


def policy(spec: dict[str, Any], name: str = "tuned", namespace: str = "default") -> BackendPolicy:
    return BackendPolicy.of(namespace, name, json_format.ParseDict(spec, api.BackendPolicySpec()))


@pytest.mark.parametrize("spec", POLICY_SPECS)
def test_every_resource_of_a_mesh_with_backend_policies_passes(spec: dict[str, Any]) -> None:
    from test_translate_backend_policy import EVERYTHING

    sidecar = proxy("web-1", labels={"app": "web"}, ip="127.0.1.1", workload="")
    builder = SnapshotBuilder(SnapshotCache())
    objects: list[MeshObject] = [*representative_objects_with(WEB, WEB_SLICE), policy(spec)]
    objects += [
        policy(other | {"targetRefs": [{"kind": "Service", "name": "web"}]}, f"e{index}", "shop")
        for index, other in enumerate(EVERYTHING)
    ]
    builder.apply(changes_of(*objects))
    builder.add_proxy(sidecar)
    builder.mark_synced()
    assert builder.translation_errors() == []
    fresh = EnvoyValidator()
    for _, resource in served(builder.cache, sidecar):
        fresh.validate(resource)


def representative_objects_with(*extra: MeshObject) -> list[MeshObject]:
    from translate_builders import representative_objects

    return [
        obj
        for obj in representative_objects()
        if (obj.namespace, obj.name) not in {(e.namespace, e.name) for e in extra}
    ] + list(extra)


def changes_of(*objects: MeshObject, deleting: tuple[ObjectKey, ...] = ()) -> ChangeSet:
    batch = ChangeSet()
    for key in deleting:
        batch.delete(key)
    for obj in objects:
        batch.upsert(obj)
    return batch


# -- in the pipeline: the object to blame is left out ---------------------------------------

CLIENT = Proxy(node_id="client.default")
BACKEND = service("backend", http(80))
BACKEND_SLICE = endpoint_slice(BACKEND, endpoint("127.0.2.1"))


def synced() -> SnapshotBuilder:
    builder = SnapshotBuilder(SnapshotCache())
    builder.apply(changes_of(WEB, WEB_SLICE, BACKEND, BACKEND_SLICE))
    builder.add_proxy(CLIENT)
    builder.mark_synced()
    return builder


def clusters_of(builder: SnapshotBuilder) -> dict[str, Any]:
    snapshot = builder.cache.get_snapshot(CLIENT.node_id)
    assert isinstance(snapshot, Snapshot)
    return dict(snapshot.get(CLUSTER).items())


def backend_cluster(port: int = 80) -> str:
    return f"outbound|{port}||backend.default.svc.cluster.local"


def test_a_policy_whose_cluster_breaks_an_envoy_rule_is_left_out_naming_field_and_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if translation forgot its own bound on ring sizes: Envoy's rule still holds."""
    builder = synced()
    good = policy({"loadBalancer": {"algorithm": "RingHash", "ringHash": {"minimumRingSize": 64}}})
    good = dataclasses.replace(good, target_refs=(), name="ring")
    builder.apply(changes_of(good))
    before = clusters_of(builder)
    monkeypatch.setattr(backend_policy, "MAX_RING_SIZE", 2**40)

    too_big = policy(
        {"loadBalancer": {"algorithm": "RingHash", "ringHash": {"minimumRingSize": 9_000_000}}}
    )
    read_from = Origin(file="policies.yaml", document=1)
    builder.apply(
        changes_of(
            dataclasses.replace(too_big, target_refs=(), name="ring", origin=read_from),
            service("extra", http(80)),
        )
    )

    after = clusters_of(builder)
    assert after[backend_cluster()].version == before[backend_cluster()].version
    assert "outbound|80||extra.default.svc.cluster.local" in after
    [(shown, error)] = builder.translation_errors()
    assert shown == "BackendPolicy default/ring"
    assert "its last good version stays in force" in error
    assert f"typed_config<{RING_HASH}>.minimum_ring_size" in error
    assert "(validate.rules).uint64 { lte: 8388608 gte: 1 }" in error
    assert "built from BackendPolicy default/ring (policies.yaml, document 1)" in error


def test_a_service_whose_route_table_host_breaks_an_envoy_rule_stays_out() -> None:
    """A value no source lets through (CR LF in a name), built as a model value directly."""
    builder = synced()
    broken = dataclasses.replace(
        service("evil\r\nx-injected: 1", http(80)), origin=Origin(file="evil.yaml", document=0)
    )

    builder.apply(changes_of(broken, service("extra", http(80))))

    assert ("default", broken.name) not in builder.mesh.services
    assert "outbound|80||extra.default.svc.cluster.local" in clusters_of(builder)
    [(shown, error)] = builder.translation_errors()
    assert shown.startswith("Service default/evil")
    assert "stays out of the mesh until fixed" in error
    assert "virtual_hosts[" in error and "].domains" in error
    assert "HTTP_HEADER_VALUE" in error
    assert "built from Service default/evil\r\nx-injected: 1 (evil.yaml, document 0)" in error


def test_a_cluster_breaking_an_envoy_rule_keeps_the_service_s_last_good_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builder = synced()
    before = clusters_of(builder)
    original = translate.clusters_for_service

    def over_ejecting(svc: Service, *args: Any) -> list[cluster_pb2.Cluster]:
        clusters = list(original(svc, *args))
        if svc.name == "backend":
            for cluster in clusters:
                outlier_percent(cluster)
        return clusters

    monkeypatch.setattr(translate, "clusters_for_service", over_ejecting)
    builder.apply(changes_of(service("backend", http(80), http(81))))

    after = clusters_of(builder)
    assert after[backend_cluster()].version == before[backend_cluster()].version
    assert backend_cluster(81) not in after
    [(shown, error)] = builder.translation_errors()
    assert shown == "Service default/backend"
    assert "outlier_detection.max_ejection_percent" in error
    assert "(validate.rules).uint32 { lte: 100 }" in error


def test_a_namespace_policy_that_every_service_blames_is_left_out_once() -> None:
    """Each Service it governs finds the same culprit; it is left out once, not thrice."""
    builder = synced()
    bad = dataclasses.replace(policy({"outlierDetection": {"maxEjectionPercent": 101}}), name="ns")

    builder.apply(changes_of(bad, service("extra", http(80))))

    assert ("default", "ns") not in builder.mesh.backend_policies
    assert "outbound|80||extra.default.svc.cluster.local" in clusters_of(builder)
    [(shown, error)] = builder.translation_errors()
    assert shown == "BackendPolicy default/ns"
    assert "outlierDetection.maxEjectionPercent" in error


def test_serve_validates_unless_told_not_to() -> None:
    from xds_server.cli import _parser
    from xds_server.settings import Settings

    assert Settings().envoy_validation is True
    assert _parser().parse_args(["serve"]).envoy_validation is True
    assert _parser().parse_args(["serve", "--no-envoy-validation"]).envoy_validation is False


# -- route tables: only what differs from the last table checked is walked ---------------------


def simple_fields(data: bytes) -> list[tuple[int, int]]:
    from xds_server.pipeline.validation_tables import field_at

    found, position = [], 0
    while position < len(data):
        _, end = field_at(data, position)
        found.append((position, end))
        position = end
    return found


BASE_TABLE = translate.outbound_route_config(synthetic_mesh_snapshot(60, 2)[0], "bench-0")

Edit = tuple[str, int]


@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["replace", "insert", "delete", "break", "rename", "retag"]),
            st.integers(0, 59),
        ),
        max_size=6,
    ),
    referenced=st.booleans(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_route_table_walked_against_the_last_one_gets_the_same_verdict_as_whole(
    edits: list[Edit], referenced: bool
) -> None:
    from xds_server.pipeline.validation_tables import new_fields

    validator = EnvoyValidator()
    if referenced:  # the last table checked: the base one
        validator.validate_route_table(make_resource(BASE_TABLE))
    config = copy_of(BASE_TABLE)
    for edit, where in edits:
        hosts = config.virtual_hosts
        index = where % max(1, len(hosts))
        if edit == "replace" and hosts:
            hosts[index].domains.append(f"extra-{where}.example")
        elif edit == "insert":
            added = copy_of(BASE_TABLE.virtual_hosts[index])
            added.name = f"new-{where}"
            added.domains[:] = [f"new-{where}.example"]
            kept = list(hosts)
            del hosts[:]
            hosts.extend([*kept[:index], added, *kept[index:]])
        elif edit == "delete" and hosts:
            del hosts[index]
        elif edit == "break" and hosts:
            hosts[index].routes[0].route.cluster = ""
        elif edit == "rename":
            config.name = f"outbound|other-{where}"
        elif edit == "retag":
            config.metadata.filter_metadata["xds-server"].fields["namespace"].string_value = "x"
    resource = make_resource(config)

    _, lengths, _ = new_fields(resource.data, validator._reference)
    bounds = list(itertools.accumulate(lengths, initial=0))
    assert list(itertools.pairwise(bounds)) == simple_fields(resource.data)
    try:
        EnvoyValidator().validate(resource, config)
    except EnvoyValidationError as whole:
        with pytest.raises(EnvoyValidationError) as walked:
            validator.validate_route_table(resource)
        assert str(walked.value) == str(whole)
    else:
        validator.validate_route_table(resource)


def test_a_table_differing_in_one_host_from_the_last_walks_that_host_and_its_own_fields() -> None:
    from xds_server.pipeline.validation_tables import VIRTUAL_HOSTS_FIELD, new_fields

    validator = EnvoyValidator()
    validator.validate_route_table(make_resource(BASE_TABLE))
    config = copy_of(BASE_TABLE)
    config.name = "outbound|elsewhere"
    config.virtual_hosts[40].domains.append("changed.example")
    del config.virtual_hosts[10]

    fields, _, _ = new_fields(make_resource(config).data, validator._reference)

    walked = [f.host_index for f in fields if f.number == VIRTUAL_HOSTS_FIELD]
    assert walked == [39]  # the changed one (after the deletion), nothing else
    assert len(fields) == 3  # and the table's own fields: its name and trailer


def test_a_route_whose_virtual_host_breaks_an_envoy_rule_is_blamed_and_left_out() -> None:
    """A header value no source lets through (CR LF), in an HTTPRoute built as a model value:
    the route tables' isolation searches routes too, so the route is named, not the tables."""
    builder = synced()
    modifier = HeaderModifier(set=(("x-evil", "a\r\nx-injected: 1"),))
    route = HTTPRoute(
        "default",
        "evil-route",
        parent_refs=(ParentRef("backend", port=80),),
        rules=(
            HTTPRouteRule(
                filters=(RequestHeaderModifierFilter(modifier),),
                backend_refs=(BackendRef(BackendObjectRef("backend", port=80)),),
            ),
        ),
        origin=Origin(file="routes.yaml", document=0),
    )

    builder.apply(changes_of(route, service("extra", http(80))))

    assert ("default", "evil-route") not in builder.mesh.http_routes
    assert "outbound|80||extra.default.svc.cluster.local" in clusters_of(builder)
    [(shown, error)] = builder.translation_errors()
    assert shown.startswith("HTTPRoute default/evil-route")
    assert "stays out of the mesh until fixed" in error
