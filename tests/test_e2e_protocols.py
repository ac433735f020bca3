"""gRPC and raw TCP through a real Envoy sidecar, chosen by the Service's port protocol.

A port with `appProtocol: grpc` is carried as HTTP/2 end to end (unary and
streaming calls, routed by `:authority`); a `tcp-` port gets a TCP proxy
listener on the sidecar.  Both over SotW and Delta.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from conftest import EnvoyFactory
from e2e_mesh import Sidecar, eventually, running_control_plane, start_sidecar, write_documents

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

GREETER_POD, DB_POD = "127.0.34.1", "127.0.34.2"
METHOD, STREAM_METHOD = "/mesh.test.Greeter/Say", "/mesh.test.Greeter/Count"


def manifests(name: str, port_yaml: str, pod_ip: str, port: int) -> list[str]:
    service = f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}, namespace: default}}
        spec:
          ports: [{port_yaml}]
        """
    endpoints = f"""\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {name}-1
          namespace: default
          labels: {{kubernetes.io/service-name: {name}}}
        addressType: IPv4
        ports: [{{name: {name}-port, port: {port}}}]
        endpoints: [{{addresses: [{pod_ip}]}}]
        """
    return [textwrap.dedent(service), textwrap.dedent(endpoints)]


async def start_greeter(port: int) -> grpc.aio.Server:
    """A gRPC server with raw-bytes methods: no generated code needed."""

    async def say(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        proxied = b" (proxied)" if "x-request-id" in metadata else b""  # Envoy adds it
        return b"hello " + request + proxied

    async def count(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "mesh.test.Greeter",
                {
                    "Say": grpc.unary_unary_rpc_method_handler(say),
                    "Count": grpc.unary_stream_rpc_method_handler(count),
                },
            )
        ]
    )
    server.add_insecure_port(f"{GREETER_POD}:{port}")
    await server.start()
    return server


async def start_echo(port: int) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(b"echo:" + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, DB_POD, port)


def manifest_directory(tmp_path: Path, documents: list[str]) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_documents(directory / "mesh.yaml", *documents)
    return directory


async def cluster_counter(sidecar: Sidecar, cluster: str, counter: str) -> int:
    stats = await sidecar.envoy.stats_async()
    return stats.get(f"cluster.{cluster}.{counter}", 0)


async def test_grpc_calls_are_routed_by_authority_over_http2(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory, delta: bool
) -> None:
    port = free_port()
    greeter = await start_greeter(port)
    documents = manifests("greeter", f"{{name: api, port: {port}, appProtocol: grpc}}",
                          GREETER_POD, port)  # fmt: skip
    documents[1] = documents[1].replace("greeter-port", "api")
    try:
        directory = manifest_directory(tmp_path, documents)
        async with running_control_plane(directory, free_port) as plane:
            sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=delta)
            cluster = f"outbound|{port}||greeter.default.svc.cluster.local"
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{sidecar.outbound_port}",
                options=[("grpc.default_authority", f"greeter:{port}")],
            )
            async with channel:
                say = channel.unary_unary(METHOD)
                reply = await say(b"mesh", timeout=5)
                assert reply == b"hello mesh (proxied)"
                count = channel.unary_stream(STREAM_METHOD)
                assert [m async for m in count(b"5", timeout=5)] == [b"0", b"1", b"2", b"3", b"4"]
            assert await cluster_counter(sidecar, cluster, "upstream_rq_total") == 2
            assert await cluster_counter(sidecar, cluster, "upstream_cx_http2_total") >= 1
    finally:
        await greeter.stop(None)


async def test_tcp_ports_are_proxied_byte_for_byte(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory, delta: bool
) -> None:
    port = free_port()
    echo = await start_echo(port)
    documents = manifests("db", f"{{name: tcp-db, port: {port}}}", DB_POD, port)
    documents[1] = documents[1].replace("db-port", "tcp-db")
    try:
        directory = manifest_directory(tmp_path, documents)
        async with running_control_plane(directory, free_port) as plane:
            sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=delta)

            async def listening() -> bool:
                names = {status["name"] for status in await sidecar.envoy.listeners_async()}
                return f"outbound_tcp_{port}" in names

            await eventually(listening, within=10, message="outbound TCP listener")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"ping")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(9), 5) == b"echo:ping"
            finally:
                writer.close()
                await writer.wait_closed()
            cluster = f"outbound|{port}||db.default.svc.cluster.local"
            assert await cluster_counter(sidecar, cluster, "upstream_cx_total") == 1
    finally:
        echo.close()
        await echo.wait_closed()
