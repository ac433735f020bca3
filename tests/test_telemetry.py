"""Telemetry manifests in: effective telemetry, statuses and Envoy config out.

The converter's checks (naming object and field), the hierarchy of
`model.telemetry_policy` (workload > namespace > mesh, merged field by field,
oldest wins), the facts a read records, the Accepted status, what
`translate.telemetry_config` renders (JSON access logs with their fields and
filters, the OpenTelemetry tracer and its collector cluster, the stats
listener and its admin cluster), and that a Telemetry change re-translates
only the proxies it may govern.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format
from test_translate_envoy_validate import as_served, validate
from translate_builders import (
    by_name,
    hcm_of,
    http,
    mesh,
    proxy,
    representative_objects,
    representative_sidecar,
    service,
    tcp,
    tcp_proxy_of,
)

from xds_server import translate
from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Kind, Proxy
from xds_server.model.changes import ObjectKey
from xds_server.model.policy import ROOT_NAMESPACE
from xds_server.model.status import policy_conditions
from xds_server.model.telemetry import Telemetry
from xds_server.model.telemetry_policy import DEFAULT_FIELDS, effective_telemetry
from xds_server.pipeline import SnapshotBuilder
from xds_server.pipeline.reads import TrackedMesh
from xds_server.resources import LISTENER
from xds_server.sources.convert import ManifestError, convert
from xds_server.translate.telemetry_config import (
    PROMETHEUS_STATS_CLUSTER,
    PROMETHEUS_STATS_LISTENER,
)

WEB = (("app", "web"),)
SELECT_WEB = {"selector": {"matchLabels": {"app": "web"}}}


def telemetry(
    name: str, spec: dict[str, Any] | None, namespace: str = "default", created: str | None = None
) -> Telemetry:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        metadata["creationTimestamp"] = created
    manifest: dict[str, Any] = {
        "apiVersion": "policy.xds-server.dev/v1alpha1",
        "kind": "Telemetry",
        "metadata": metadata,
    }
    if spec is not None:
        manifest["spec"] = spec
    converted = convert(manifest)
    assert isinstance(converted, Telemetry)
    return converted


# -- the hierarchy ------------------------------------------------------------------------


def test_no_telemetry_changes_nothing() -> None:
    effective = effective_telemetry(mesh(), "default", WEB)
    assert (effective.access_logging, effective.metrics, effective.tracing) == (None, False, None)
    sidecar = proxy(ip="127.0.0.5", labels={"app": "web"})
    world = mesh(service("web", http(8080), selector={"app": "web"}))
    listeners = translate.proxy_listeners(world, sidecar)
    assert PROMETHEUS_STATS_LISTENER not in by_name(listeners)
    assert "Telemetry" not in str(listeners)


def test_fields_merge_from_the_narrowest_telemetry_that_sets_them() -> None:
    mesh_wide = telemetry(
        "mesh",
        {"tracing": {"collector": "10.0.0.9:4317", "randomSamplingPercentage": 5},
         "accessLogging": {}, "metrics": {}},
        namespace=ROOT_NAMESPACE,
    )  # fmt: skip
    namespace = telemetry("ns", {"tracing": {"randomSamplingPercentage": 50}})
    workload = telemetry(
        "web", {**SELECT_WEB, "accessLogging": {"fields": ["METHOD", "RESPONSE_CODE"]}}
    )
    effective = effective_telemetry(mesh(mesh_wide, namespace, workload), "default", WEB)
    assert effective.tracing is not None
    assert (effective.tracing.collector, effective.tracing.sampling_percentage) == (
        "10.0.0.9:4317",
        50,
    )
    assert effective.access_logging is not None
    assert effective.access_logging.fields == ("method", "response_code")
    assert effective.metrics
    assert [p.name for p in effective.governing] == ["web", "ns", "mesh"]
    # Another namespace has only the mesh's.
    other = effective_telemetry(mesh(mesh_wide, namespace, workload), "shop", WEB)
    assert other.tracing is not None and other.tracing.sampling_percentage == 5
    assert other.access_logging is not None and other.access_logging.fields == DEFAULT_FIELDS


def test_disabled_turns_a_section_off_below_a_wider_one() -> None:
    mesh_wide = telemetry(
        "mesh",
        {"accessLogging": {}, "metrics": {}, "tracing": {"collector": "10.0.0.9:4317"}},
        namespace=ROOT_NAMESPACE,
    )
    off = telemetry(
        "off",
        {**SELECT_WEB, "accessLogging": {"disabled": True}, "metrics": {"disabled": True},
         "tracing": {"disabled": True}},
    )  # fmt: skip
    effective = effective_telemetry(mesh(mesh_wide, off), "default", WEB)
    assert effective.access_log_disabled and effective.access_logging is None
    assert not effective.metrics and effective.tracing is None


def test_oldest_wins_among_one_level_and_root_selectors_select_root_workloads() -> None:
    newer = telemetry("a-new", {"metrics": {"port": 9001}}, created="2026-02-01T00:00:00Z")
    older = telemetry("z-old", {"metrics": {"port": 9002}}, created="2026-01-01T00:00:00Z")
    assert effective_telemetry(mesh(newer, older), "default", WEB).stats_port == 9002
    rooted = telemetry("web", {**SELECT_WEB, "metrics": {}}, namespace=ROOT_NAMESPACE)
    assert not effective_telemetry(mesh(rooted), "default", WEB).metrics
    assert effective_telemetry(mesh(rooted), ROOT_NAMESPACE, WEB).metrics


def test_reads_record_the_namespaces_consulted() -> None:
    tracked = TrackedMesh(mesh(telemetry("ns", {"metrics": {}})), set())
    assert effective_telemetry(tracked, "default", WEB).metrics
    assert ("ns", Kind.TELEMETRY, "default") in tracked.reads
    assert ("ns", Kind.TELEMETRY, ROOT_NAMESPACE) in tracked.reads


# -- validation and status ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"bogus": 1}, "spec.bogus: unknown field"),
        ({"accessLogging": {"fields": ["NOPE"]}}, "spec.accessLogging.fields[0]"),
        (
            {"accessLogging": {"filter": {"expression": "x", "errorsOnly": True}}},
            "spec.accessLogging.filter.errorsOnly: at most one of",
        ),
        ({"accessLogging": {"filter": {"expression": "  "}}}, "filter.expression: must not be"),
        ({"metrics": {"port": 70000}}, "spec.metrics.port: must be an integer 1-65535"),
        ({"tracing": {"randomSamplingPercentage": 101}}, "randomSamplingPercentage: must be a"),
        ({"tracing": {"collector": "otel"}}, "spec.tracing.collector: must be HOST:PORT"),
        ({"tracing": {"collector": "otel:99999"}}, "spec.tracing.collector: must be HOST:PORT"),
        (
            {"tracing": {"customTags": {"t": {}}}},
            "spec.tracing.customTags.t: exactly one of literal, header, environment",
        ),
        (
            {"tracing": {"customTags": {"t": {"header": {"name": "bad header"}}}}},
            "spec.tracing.customTags.t.header.name: must be an HTTP header name",
        ),
        (
            {"tracing": {"customTags": {"t": {"environment": {"name": "1X"}}}}},
            "customTags.t.environment.name: must be an environment variable name",
        ),
    ],
)
def test_invalid_telemetries_name_object_and_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as error:
        telemetry("bad", spec)
    assert "Telemetry default/bad" in str(error.value)
    assert message in str(error.value)


def test_status_is_accepted_saying_what_it_sets_and_whom_it_governs() -> None:
    statuses = policy_conditions(
        mesh(telemetry("mesh", {"metrics": {}, "tracing": {}}, namespace=ROOT_NAMESPACE))
    )
    (condition,) = statuses[ObjectKey(Kind.TELEMETRY, ROOT_NAMESPACE, "mesh")].conditions
    assert condition.status == "True"
    assert condition.message == (
        "sets metrics, tracing: governs every workload of the mesh (root namespace, no selector)"
    )
    key = ObjectKey(Kind.TELEMETRY, "default", "bad")
    rejected = policy_conditions(mesh(), {key: "spec.metrics.port: too big"})
    assert rejected[key].conditions[0].status == "False"


# -- translation --------------------------------------------------------------------------

SIDECAR = proxy("web-0.default", ip="127.0.0.5", labels={"app": "web"}, workload="web")
WORLD = (
    service("web", http(8080), selector={"app": "web"}),
    service("db", tcp(5432), selector={"app": "db"}),
)


def listeners_of(*telemetries: Telemetry, sidecar: Proxy = SIDECAR) -> dict[str, Any]:
    return by_name(translate.proxy_listeners(mesh(*WORLD, *telemetries), sidecar))


def stdout_format(log: Any) -> dict[str, Any]:
    stdout = stream_pb2.StdoutAccessLog()
    assert log.typed_config.Unpack(stdout)
    result: dict[str, Any] = json_format.MessageToDict(stdout.log_format.json_format)
    return result


def test_access_logs_become_json_lines_with_the_selected_fields() -> None:
    listeners = listeners_of(
        telemetry(
            "web",
            {
                **SELECT_WEB,
                "accessLogging": {
                    "fields": ["DIRECTION", "METHOD", "RESPONSE_CODE", "DOWNSTREAM_PEER_URI_SAN"]
                },
            },
        )
    )
    inbound = next(lst for name, lst in listeners.items() if name.startswith("inbound"))
    (log,) = hcm_of(inbound).access_log
    fields = stdout_format(log)
    assert set(fields) == {"direction", "method", "response_code", "downstream_peer_uri_san"}
    assert fields["direction"] == "inbound"
    assert fields["downstream_peer_uri_san"] == "%DOWNSTREAM_PEER_URI_SAN%"
    outbound = hcm_of(listeners[translate.OUTBOUND_HTTP_LISTENER_NAME])
    assert stdout_format(outbound.access_log[0])["direction"] == "outbound"
    # A TCP connection has no HTTP fields.
    (tcp_log,) = tcp_proxy_of(listeners["outbound_tcp_5432"]).access_log
    assert set(stdout_format(tcp_log)) == {"direction", "downstream_peer_uri_san"}
    # The listener names the Telemetry it was configured by.
    assert "Telemetry/default/web" in str(inbound.metadata)


def test_filters_errors_only_and_cel() -> None:
    errors = listeners_of(telemetry("t", {"accessLogging": {"filter": {"errorsOnly": True}}}))
    (log,) = hcm_of(errors[translate.OUTBOUND_HTTP_LISTENER_NAME]).access_log
    status, flagged = log.filter.or_filter.filters
    assert status.status_code_filter.comparison.value.default_value == 400
    assert flagged.HasField("response_flag_filter")
    cel = listeners_of(
        telemetry("t", {"accessLogging": {"filter": {"expression": "response.code >= 500"}}})
    )
    (log,) = hcm_of(cel[translate.OUTBOUND_HTTP_LISTENER_NAME]).access_log
    expression = cel_pb2.ExpressionFilter()
    assert log.filter.extension_filter.typed_config.Unpack(expression)
    assert expression.expression == "response.code >= 500"


def test_disabled_access_logging_drops_the_builtin_log() -> None:
    listeners = listeners_of(telemetry("t", {"accessLogging": {"disabled": True}}))
    assert not hcm_of(listeners[translate.OUTBOUND_HTTP_LISTENER_NAME]).access_log
    assert not tcp_proxy_of(listeners["outbound_tcp_5432"]).access_log


def test_tracing_sets_the_opentelemetry_tracer_and_its_collector_cluster() -> None:
    spec = {
        "tracing": {
            "collector": "otel.observability.svc.cluster.local:4317",
            "randomSamplingPercentage": 25,
            "customTags": {
                "team": {"literal": {"value": "payments"}},
                "user": {"header": {"name": "x-user", "defaultValue": "anonymous"}},
                "pod": {"environment": {"name": "POD_NAME"}},
            },
        }
    }
    world = mesh(*WORLD, telemetry("t", spec))
    listeners = by_name(translate.proxy_listeners(world, SIDECAR))
    hcm = hcm_of(listeners[translate.OUTBOUND_HTTP_LISTENER_NAME])
    assert hcm.tracing.random_sampling.value == 25
    assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
    tracer = opentelemetry_pb2.OpenTelemetryConfig()
    assert hcm.tracing.provider.typed_config.Unpack(tracer)
    cluster_name = "tracing_otlp|otel.observability.svc.cluster.local|4317"
    assert tracer.grpc_service.envoy_grpc.cluster_name == cluster_name
    assert tracer.service_name == "web.default"
    tags = {tag.tag: json_format.MessageToDict(tag) for tag in hcm.tracing.custom_tags}
    assert tags["team"]["literal"] == {"value": "payments"}
    assert tags["user"]["requestHeader"] == {"name": "x-user", "defaultValue": "anonymous"}
    assert tags["pod"]["environment"] == {"name": "POD_NAME"}
    inbound = next(lst for name, lst in listeners.items() if name.startswith("inbound"))
    assert hcm_of(inbound).tracing.random_sampling.value == 25
    clusters = by_name(translate.proxy_clusters(world, SIDECAR))
    collector = clusters[cluster_name]
    assert collector.type == cluster_pb2.Cluster.STRICT_DNS
    options = http_protocol_options_pb2.HttpProtocolOptions()
    protocol = collector.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert protocol.Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_tracing_without_a_collector_traces_nothing() -> None:
    listeners = listeners_of(telemetry("t", {"tracing": {"randomSamplingPercentage": 100}}))
    assert not hcm_of(listeners[translate.OUTBOUND_HTTP_LISTENER_NAME]).HasField("tracing")


@pytest.mark.parametrize(
    ("metrics", "metadata", "port"),
    [
        ({}, (), 15090),
        ({}, (("STATS_PORT", "19090"),), 19090),
        ({"port": 9102}, (("STATS_PORT", "19090"),), 9102),
        ({}, (("STATS_PORT", "not-a-port"),), 15090),
    ],
)
def test_the_stats_listener_routes_to_the_admin_interface(
    metrics: dict[str, Any], metadata: tuple[tuple[str, str], ...], port: int
) -> None:
    sidecar = Proxy(
        node_id="web-0.default", ip="127.0.0.5", labels=WEB,
        metadata=(("ADMIN_PORT", "15555"), *metadata),
    )  # fmt: skip
    world = mesh(*WORLD, telemetry("t", {"metrics": metrics}))
    stats = by_name(translate.proxy_listeners(world, sidecar))[PROMETHEUS_STATS_LISTENER]
    assert isinstance(stats, listener_pb2.Listener)
    assert (stats.address.socket_address.address, stats.address.socket_address.port_value) == (
        "0.0.0.0",
        port,
    )
    hcm = hcm_pb2.HttpConnectionManager()
    assert stats.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    (route,) = hcm.route_config.virtual_hosts[0].routes
    assert (route.match.prefix, route.route.cluster) == (
        "/stats/prometheus",
        PROMETHEUS_STATS_CLUSTER,
    )
    admin = by_name(translate.proxy_clusters(world, sidecar))[PROMETHEUS_STATS_CLUSTER]
    address = admin.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.1",
        15555,
    )


def test_no_stats_listener_on_a_port_the_mesh_uses() -> None:
    world = mesh(*WORLD, telemetry("t", {"metrics": {"port": 5432}}))  # db's TCP port
    listeners = by_name(translate.proxy_listeners(world, SIDECAR))
    assert "outbound_tcp_5432" in listeners
    assert PROMETHEUS_STATS_LISTENER not in listeners


# -- the pipeline -------------------------------------------------------------------------

PROXIES = (
    Proxy(node_id="web.ns-a", namespace="ns-a", ip="127.0.0.11", labels=WEB),
    Proxy(node_id="api.ns-a", namespace="ns-a", ip="127.0.0.12", labels=(("app", "api"),)),
    Proxy(node_id="web.ns-b", namespace="ns-b", ip="127.0.0.13", labels=WEB),
)


def listeners_served(cache: SnapshotCache) -> dict[str, str]:
    result = {}
    for sidecar in PROXIES:
        snapshot = cache.get_snapshot(sidecar.node_id)
        assert snapshot is not None
        resources = snapshot.get(LISTENER)
        result[sidecar.node_id] = json.dumps(sorted(r.version for r in resources.values()))
    return result


@pytest.mark.parametrize(
    ("namespace", "selector", "changed"),
    [
        ("ns-a", SELECT_WEB, {"web.ns-a"}),
        ("ns-a", {}, {"web.ns-a", "api.ns-a"}),
        (ROOT_NAMESPACE, {}, {"web.ns-a", "api.ns-a", "web.ns-b"}),
    ],
)
def test_a_telemetry_change_retranslates_only_the_proxies_it_may_govern(
    namespace: str, selector: dict[str, Any], changed: set[str]
) -> None:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    for sidecar in PROXIES:
        builder.add_proxy(sidecar)
    builder.mark_synced()
    before = listeners_served(cache)
    retranslated = builder.retranslated
    changes = ChangeSet()
    changes.upsert(telemetry("t", {**selector, "accessLogging": {}}, namespace=namespace))
    builder.apply(changes)
    after = listeners_served(cache)
    assert {node for node in after if after[node] != before[node]} == changed
    readers = {"ns-a": 2, ROOT_NAMESPACE: 3}[namespace]
    assert builder.retranslated - retranslated == readers


# -- Envoy accepts it ---------------------------------------------------------------------

EVERYTHING = {
    "accessLogging": {
        "fields": ["START_TIME", "METHOD", "DOWNSTREAM_PEER_URI_SAN", "ROUTE_NAME"],
        "filter": {"expression": "response.code >= 500 || response.flags != 0"},
    },
    "metrics": {"port": 15090},
    "tracing": {
        "collector": "otel.observability.svc.cluster.local:4317",
        "randomSamplingPercentage": 12.5,
        "customTags": {
            "team": {"literal": {"value": "payments"}},
            "user": {"header": {"name": "x-user", "defaultValue": "anonymous"}},
            "pod": {"environment": {"name": "POD_NAME"}},
        },
    },
}


@pytest.mark.envoy
@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy is not on PATH")
@pytest.mark.parametrize("interception", ["none", "redirect"])
def test_envoy_validates_everything_a_telemetry_renders(
    tmp_path: Path, interception: Literal["none", "redirect"]
) -> None:
    world = mesh(*representative_objects(), telemetry("all", EVERYTHING, namespace=ROOT_NAMESPACE))
    sidecar = dataclasses.replace(representative_sidecar(), interception=interception)
    bootstrap = as_served(world, sidecar)
    assert PROMETHEUS_STATS_LISTENER in json.dumps(bootstrap)
    assert "envoy.tracers.opentelemetry" in json.dumps(bootstrap)
    validate(bootstrap, tmp_path)
