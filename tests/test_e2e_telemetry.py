"""End to end: what a Telemetry asks of real Envoy sidecars.

`backend` is one pod (its sidecar binds the pod IP in front of a sample app,
mTLS by its `tlsMode` label); a client sidecar calls it.  Through both:

* access logs: one JSON line per request on each sidecar's stdout, with the
  configured fields (the backend's line names the caller's SPIFFE ID), with
  "errors only" just the failing requests, with a CEL expression just those it
  holds for;
* metrics: the backend sidecar answers `GET /stats/prometheus` on the
  Telemetry's port, from its admin interface;
* tracing: a request through both sidecars arrives at an OTLP gRPC collector
  the test runs as two spans of one trace, and at a sampling percentage of 25
  the share of requests traced stays within tolerance;
* an invalid Telemetry is rejected, naming the object and field, while a valid
  one keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from conftest import EnvoyFactory
from e2e_mesh import (
    Sidecar,
    admin_json,
    eventually,
    manifest_directory,
    running_control_plane,
    sidecar_bootstrap,
    start_apps,
    write_documents,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from test_e2e_fault_ratelimit import APP_IP, BACKEND_NODE, POD_IP, backend_service, backend_slice
from test_e2e_mtls import CLIENT_ID, CLIENT_POD, POD

from xds_server.model.policy import ROOT_NAMESPACE

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]


def telemetry_yaml(name: str, spec: dict[str, Any], namespace: str = "default") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "policy.xds-server.dev/v1alpha1",
            "kind": "Telemetry",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


FLUSH_MS = "100"
"""Envoy writes access logs out every 10 s by default (`--file-flush-interval-msec`):
these sidecars every 0.1 s, so a line is there soon after its request."""


async def start_pod_sidecar(
    envoy_factory: EnvoyFactory, xds_port: int, free_port: Any, node_id: str, **node: Any
) -> tuple[Sidecar, int]:
    """A pod's sidecar (`sidecar_bootstrap`'s `node`), its admin interface on a known port
    (node metadata ADMIN_PORT says where, for the stats listener's cluster); returns it
    and that port."""
    admin_port, outbound_port = free_port(), free_port()
    bootstrap = yaml.safe_load(
        sidecar_bootstrap(node_id, xds_port, outbound_port, delta=False, **node)
    )
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    bootstrap["node"]["metadata"]["ADMIN_PORT"] = str(admin_port)
    envoy = envoy_factory(
        yaml.safe_dump(bootstrap),
        name=node_id.split(".")[0],
        start=False,
        extra_args=["--file-flush-interval-msec", FLUSH_MS],
    )
    await envoy.start_async()
    await envoy.wait_live_async()
    return Sidecar(envoy, node_id, outbound_port), admin_port


def access_lines(sidecar: Sidecar) -> list[dict[str, Any]]:
    """The JSON access log lines on a sidecar's stdout."""
    lines = []
    for line in sidecar.envoy.logs().splitlines():
        if line.startswith("{") and '"direction"' in line:
            lines.append(json.loads(line))
    return lines


@contextlib.asynccontextmanager
async def mesh_of_two(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory, *telemetries: str
) -> AsyncIterator[tuple[Any, Path, Sidecar, Sidecar, int]]:
    """backend and a client sidecar under `telemetries`: (plane, directory, client,
    backend, backend admin port)."""
    port, tcp_port, tcp_target = free_port(), free_port(), free_port()
    files = {
        "backend.yaml": [backend_service(port, tcp_port, tcp_target)],
        "endpoints.yaml": [backend_slice(port, tcp_target)],
        "pods.yaml": [POD, CLIENT_POD],
        "telemetry.yaml": list(telemetries),
    }
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        directory = manifest_directory(tmp_path, files)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        backend, admin_port = await start_pod_sidecar(
            envoy_factory, plane.xds_port, free_port, BACKEND_NODE, workload="backend-0",
            labels={"app": "backend"}, instance_ip=POD_IP, app_address=APP_IP,
            service_account="backend",
        )  # fmt: skip
        client, _ = await start_pod_sidecar(
            envoy_factory, plane.xds_port, free_port, "client-0.default", workload="client-0",
            labels={"app": "client"}, service_account="client",
        )  # fmt: skip

        async def answered() -> bool:
            return (await client.get("backend", "/warm-up")).status_code == 200

        await eventually(answered, within=30, interval=0.2, message="backend answers")
        yield plane, directory, client, backend, admin_port


FIELDS = ["DIRECTION", "METHOD", "PATH", "RESPONSE_CODE", "REQUEST_ID", "UPSTREAM_CLUSTER",
          "DOWNSTREAM_PEER_URI_SAN", "RESPONSE_FLAGS"]  # fmt: skip


async def test_one_json_line_per_request_with_the_fields_and_the_filter(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    logged = telemetry_yaml("logs", {"accessLogging": {"fields": FIELDS}})
    async with mesh_of_two(tmp_path, free_port, envoy_factory, logged) as mesh:
        _, directory, client, backend, _ = mesh
        ids = []
        for i in range(3):
            response = await client.get("backend", f"/logged-{i}")
            assert response.status_code == 200
            ids.append(json.loads(response.text)["headers"]["x-request-id"])

        def lines_for(sidecar: Sidecar, path: str) -> list[dict[str, Any]]:
            return [line for line in access_lines(sidecar) if line.get("path") == path]

        async def all_logged() -> bool:
            return all(
                len(lines_for(client, f"/logged-{i}")) == 1
                and len(lines_for(backend, f"/logged-{i}")) == 1
                for i in range(3)
            )

        await eventually(all_logged, within=15, message="one line per request on each side")
        for i, request_id in enumerate(ids):
            (outbound,) = lines_for(client, f"/logged-{i}")
            (inbound,) = lines_for(backend, f"/logged-{i}")
            assert set(outbound) == {field.lower() for field in FIELDS}
            assert (outbound["direction"], inbound["direction"]) == ("outbound", "inbound")
            assert outbound["method"] == inbound["method"] == "GET"
            assert outbound["response_code"] == inbound["response_code"] == 200
            assert outbound["request_id"] == inbound["request_id"] == request_id
            assert outbound["upstream_cluster"].startswith("outbound|8080||backend")
            assert inbound["downstream_peer_uri_san"] == CLIENT_ID  # the caller, over mTLS

        # Errors only: a 503 and a request for a host no route knows are logged, a 200 not.
        errors = {"accessLogging": {"fields": FIELDS, "filter": {"errorsOnly": True}}}
        write_documents(directory / "telemetry.yaml", telemetry_yaml("logs", errors))

        probes = iter(range(1_000))

        async def filter_applied() -> bool:
            # A 200 then a 503: lines are written in the order requests end, so once the
            # 503's line is there, the 200's is there too unless the filter left it out.
            n = next(probes)
            await client.get("backend", f"/probe-{n}")
            await client.get("backend", f"/status/503?after={n}")

            async def error_logged() -> bool:
                return bool(lines_for(client, f"/status/503?after={n}"))

            await eventually(error_logged, within=10)
            return not lines_for(client, f"/probe-{n}")

        await eventually(filter_applied, within=30, interval=0.2, message="errors only")
        assert (await client.get("backend", "/fine")).status_code == 200
        assert (await client.get("backend", "/status/503")).status_code == 503
        assert (await client.get("nowhere.invalid", "/lost")).status_code == 404

        async def errors_logged() -> bool:
            return all((lines_for(client, "/status/503"), lines_for(client, "/lost"),
                        lines_for(backend, "/status/503")))  # fmt: skip

        await eventually(errors_logged, within=15, message="the errors are logged")
        assert lines_for(client, "/status/503")[0]["response_code"] == 503
        assert lines_for(client, "/lost")[0]["response_flags"] == "NR"
        assert not lines_for(client, "/fine")
        (backend_error,) = lines_for(backend, "/status/503")  # the callee's side too
        assert backend_error["direction"] == "inbound"


async def test_a_cel_expression_chooses_the_requests_logged(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    spec = {
        "accessLogging": {
            "fields": ["DIRECTION", "PATH"],
            "filter": {"expression": "request.path.startsWith('/keep')"},
        }
    }
    async with mesh_of_two(tmp_path, free_port, envoy_factory, telemetry_yaml("cel", spec)) as mesh:
        _, _, client, _, _ = mesh
        for path in ("/keep-1", "/drop-1", "/keep-2"):
            assert (await client.get("backend", path)).status_code == 200

        async def kept() -> list[str] | None:
            paths = [line["path"] for line in access_lines(client)]
            return paths if "/keep-2" in paths else None

        paths = await eventually(kept, within=15, message="the kept requests' lines")
        assert paths == ["/keep-1", "/keep-2"]


async def test_the_sidecar_serves_prometheus_stats_on_its_port(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    stats_port = free_port()
    metrics = telemetry_yaml(
        "metrics",
        {"selector": {"matchLabels": {"app": "backend"}}, "metrics": {"port": stats_port}},
    )
    async with mesh_of_two(tmp_path, free_port, envoy_factory, metrics) as mesh:
        _, _, client, _, _ = mesh
        await client.get("backend", "/counted")

        async def scraped() -> str | None:
            try:
                async with httpx.AsyncClient(timeout=3.0) as http:
                    response = await http.get(f"http://127.0.0.1:{stats_port}/stats/prometheus")
            except httpx.HTTPError:
                return None
            return response.text if response.status_code == 200 else None

        text = await eventually(scraped, within=20, interval=0.2, message="/stats/prometheus")
        assert "# TYPE envoy_server_live gauge" in text
        # Names carry no pod: listeners, connection managers and clusters are tags with
        # the same values on every sidecar of a Service, so one dashboard serves them all.
        assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="outbound_http"}' in (
            text
        )
        assert re.search(
            r'envoy_cluster_upstream_rq_total\{envoy_cluster_name="inbound\|\d+\|\|"\}', text
        )
        # Only the stats path is routed: the rest of the admin interface is not exposed.
        async with httpx.AsyncClient(timeout=3.0) as http:
            other = await http.get(f"http://127.0.0.1:{stats_port}/config_dump")
        assert other.status_code == 404


def scope_spans(resource_spans: Any) -> Any:
    """The spans' scopes of a ResourceSpans, whichever OTLP classes are installed:
    `xds-protos` ships an older copy of `opentelemetry.proto` (same field number,
    `instrumentation_library_spans`) that may overwrite `opentelemetry-proto`'s."""
    fields = resource_spans.DESCRIPTOR.fields_by_name
    if "scope_spans" in fields:
        return resource_spans.scope_spans
    return resource_spans.instrumentation_library_spans


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A small OTLP gRPC trace collector: keeps (service name, trace id, span id, parent)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in scope_spans(resource_spans):
                for span in scope.spans:
                    self.spans.append(
                        (service, span.trace_id.hex(), span.span_id.hex(),
                         span.parent_span_id.hex())
                    )  # fmt: skip
        return trace_service_pb2.ExportTraceServiceResponse()

    def traces_of(self, service: str) -> set[str]:
        return {trace for name, trace, _, _ in self.spans if name == service}


@contextlib.asynccontextmanager
async def running_collector(port: int) -> AsyncIterator[Collector]:
    collector = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield collector
    finally:
        await server.stop(grace=None)


async def test_a_request_through_two_sidecars_is_one_trace_and_sampling_holds(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    collector_port = free_port()

    def tracing(percentage: float) -> str:
        return telemetry_yaml(
            "tracing",
            {"tracing": {"collector": f"127.0.0.1:{collector_port}",
                         "randomSamplingPercentage": percentage}},
            namespace=ROOT_NAMESPACE,
        )  # fmt: skip

    async with (
        running_collector(collector_port) as collector,
        mesh_of_two(tmp_path, free_port, envoy_factory, tracing(100)) as mesh,
    ):
        _, directory, client, _, _ = mesh
        collector.spans.clear()
        response = await client.get("backend", "/traced")
        assert response.status_code == 200
        traceparent = json.loads(response.text)["headers"]["traceparent"]
        trace_id = traceparent.split("-")[1]

        async def both_hops() -> bool:
            return trace_id in collector.traces_of("client-0.default") and (
                trace_id in collector.traces_of("backend-0.default")
            )

        await eventually(both_hops, within=30, interval=0.5, message="spans of both sidecars")
        spans = [s for s in collector.spans if s[1] == trace_id]
        client_span = next(s for s in spans if s[0] == "client-0.default")
        backend_span = next(s for s in spans if s[0] == "backend-0.default")
        assert backend_span[3] == client_span[2]  # the callee's span is the caller's child

        # 25%: of 200 requests about 50 start a trace (binomial, sd ~6: 4 sd either side).
        write_documents(directory / "telemetry.yaml", tracing(25))
        await asyncio.sleep(2.0)  # the new sampling reaches both sidecars
        collector.spans.clear()
        requests = 200
        sampled_ids = set()
        for i in range(requests):
            response = await client.get("backend", f"/sampled-{i}")
            assert response.status_code == 200
            header = json.loads(response.text)["headers"].get("traceparent", "")
            if header.endswith("-01"):
                sampled_ids.add(header.split("-")[1])
        assert 25 <= len(sampled_ids) <= 75, len(sampled_ids)

        async def exported() -> bool:
            return sampled_ids <= collector.traces_of("backend-0.default") and (
                sampled_ids <= collector.traces_of("client-0.default")
            )

        await eventually(exported, within=30, interval=0.5, message="sampled traces exported")
        # No request the caller did not sample was traced by either sidecar.
        assert collector.traces_of("client-0.default") == sampled_ids
        assert collector.traces_of("backend-0.default") == sampled_ids


async def test_an_invalid_telemetry_is_rejected_naming_the_field_and_others_keep_working(
    tmp_path: Path, free_port: Any, envoy_factory: EnvoyFactory
) -> None:
    logged = telemetry_yaml("logs", {"accessLogging": {"fields": ["DIRECTION", "PATH"]}})
    async with mesh_of_two(tmp_path, free_port, envoy_factory, logged) as mesh:
        plane, directory, client, _, _ = mesh
        bad = textwrap.dedent(
            """\
            apiVersion: policy.xds-server.dev/v1alpha1
            kind: Telemetry
            metadata: {name: broken, namespace: default}
            spec:
              tracing: {collector: "no-port-here"}
            """
        )
        write_documents(directory / "broken.yaml", bad)

        async def rejection() -> str | None:
            found = await admin_json(plane, "/api/policies", kind="Telemetry")
            for item in found["policies"]:
                if "broken" in json.dumps(item):
                    return json.dumps(item)
            return None

        said = await eventually(rejection, within=15, message="the broken Telemetry's status")
        assert "spec.tracing.collector" in said and '"False"' in said
        await client.get("backend", "/still-logged")

        async def still_logged() -> bool:
            return any(line.get("path") == "/still-logged" for line in access_lines(client))

        await eventually(still_logged, within=15, message="the valid Telemetry still applies")
