"""Proxies for the push benchmark: real gRPC ADS clients in a process of their own.

Each client opens its own HTTP/2 connection (a local subchannel pool) and
behaves as Envoy does on an ADS stream: it subscribes to CDS and LDS as
wildcards, to EDS by cluster name and to RDS `outbound|default` (its node has
no metadata, so its namespace is "default"), and ACKs every
response with its version and nonce.  A "subscribed" client names every
outbound cluster in EDS, as Envoy does for the clusters CDS gave it; an
"unsubscribed" one names all but the cluster whose endpoint will change.

The clients live in a separate process so that the server's process CPU
time counts the server alone.  The parent drives them over a `Connection`:

* `("mark",)`: zero every client's byte counters and forget when it last got
  EDS; answered with `("marked",)`;
* `("status",)`: answered with `("status", {node_id: ClientStatus})`: how many
  requests each client has queued and the latest nonce it got of each type,
  which the parent compares with the server's view to tell that nothing is
  in flight;
* `("report",)`: answered with `("report", {node_id: ClientReport})`: bytes
  received by type since the mark, and when (`time.monotonic()`, a clock
  shared by every process on Linux) the first EDS response after it arrived;
* `("stop",)`: close every stream and exit.

`ClientProcess` is the parent's side: it starts the process and holds the
conversation.

Nothing is sent to the parent between a mark and a report, so the parent's
CPU time in that window is the server's.  A client whose stream fails
reports `("error", text)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import grpc
import synthetic_mesh
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DiscoveryRequest,
)

from xds_server.node_metadata import DEFAULT_NAMESPACE
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SHORT_NAMES
from xds_server.translate import outbound_route_name

logger = logging.getLogger(__name__)

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
)


@dataclass(frozen=True)
class ClientSpec:
    node_id: str
    subscribed: bool


@dataclass(frozen=True)
class ClientStatus:
    requests: int
    nonces: dict[str, str]


@dataclass(frozen=True)
class ClientReport:
    bytes_by_type: dict[str, int]
    eds_received_at: float | None


@dataclass(frozen=True)
class ClientPlan:
    address: str
    delta: bool
    services: int
    changed_service: int
    clients: tuple[ClientSpec, ...]


class AdsClient:
    """One proxy's ADS stream: subscribe, ACK everything, count response bytes by type."""

    def __init__(self, spec: ClientSpec, plan: ClientPlan, names: list[str]) -> None:
        self.spec = spec
        self.delta = plan.delta
        changed = synthetic_mesh.outbound_cluster_name(plan.changed_service)
        self.eds_names = names if spec.subscribed else [n for n in names if n != changed]
        self.bytes: Counter[str] = Counter()
        self.eds_received_at: float | None = None
        self.requests = 0
        self.nonces: dict[str, str] = {}
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()

    def subscriptions(self) -> dict[str, list[str]]:
        return {
            CLUSTER: [],
            ENDPOINT: self.eds_names,
            LISTENER: [],
            ROUTE: [outbound_route_name(DEFAULT_NAMESPACE)],
        }

    async def run(self, channel: grpc.aio.Channel) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        node = Node(id=self.spec.node_id, cluster="bench")
        first = True
        for type_url, names in self.subscriptions().items():
            self._send(self._initial(type_url, names, node if first else None))
            first = False
        if self.delta:
            call = stub.DeltaAggregatedResources(self._requests())
        else:
            call = stub.StreamAggregatedResources(self._requests())
        async for response in call:
            if response.type_url == ENDPOINT and self.eds_received_at is None:
                self.eds_received_at = time.monotonic()
            self.bytes[SHORT_NAMES.get(response.type_url, response.type_url)] += response.ByteSize()
            self.nonces[response.type_url] = response.nonce
            self._send(self._ack(response))

    def mark(self) -> None:
        self.bytes.clear()
        self.eds_received_at = None

    def report(self) -> ClientReport:
        return ClientReport(dict(self.bytes), self.eds_received_at)

    def status(self) -> ClientStatus:
        return ClientStatus(self.requests, dict(self.nonces))

    def _send(self, request: Any) -> None:
        self.requests += 1
        self._outbox.put_nowait(request)

    def close(self) -> None:
        self._outbox.put_nowait(None)

    def _initial(self, type_url: str, names: list[str], node: Node | None) -> Any:
        if self.delta:
            return DeltaDiscoveryRequest(
                node=node, type_url=type_url, resource_names_subscribe=names
            )
        return DiscoveryRequest(node=node, type_url=type_url, resource_names=names)

    def _ack(self, response: Any) -> Any:
        if self.delta:
            return DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        return DiscoveryRequest(
            type_url=response.type_url,
            version_info=response.version_info,
            response_nonce=response.nonce,
            resource_names=self.subscriptions()[response.type_url],
        )

    async def _requests(self) -> AsyncIterator[Any]:
        while (request := await self._outbox.get()) is not None:
            yield request


def client_process(plan: ClientPlan, conn: Connection) -> None:
    """The child process's entry point (picklable, for the `spawn` start method)."""
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_serve_parent(plan, conn))
    finally:
        conn.close()


async def _serve_parent(plan: ClientPlan, conn: Connection) -> None:
    names = list(synthetic_mesh.outbound_cluster_names(plan.services))
    clients = [AdsClient(spec, plan, names) for spec in plan.clients]
    channels = [grpc.aio.insecure_channel(plan.address, options=CHANNEL_OPTIONS) for _ in clients]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                commands.put_nowait(conn.recv())
        except EOFError:  # the parent went away
            stop.set()

    loop.add_reader(conn.fileno(), readable)
    try:
        async with asyncio.TaskGroup() as tasks:
            for client, channel in zip(clients, channels, strict=True):
                tasks.create_task(_run_client(client, channel, conn))
            tasks.create_task(_obey(commands, clients, conn, stop))
            await stop.wait()
            for client in clients:
                client.close()
    finally:
        loop.remove_reader(conn.fileno())
        for channel in channels:
            await channel.close(grace=None)


async def _run_client(client: AdsClient, channel: grpc.aio.Channel, conn: Connection) -> None:
    try:
        await client.run(channel)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            conn.send(("error", f"{client.spec.node_id}: {error.code().name} {error.details()}"))


async def _obey(
    commands: asyncio.Queue[tuple[Any, ...]],
    clients: Iterable[AdsClient],
    conn: Connection,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        getter = asyncio.ensure_future(commands.get())
        stopper = asyncio.ensure_future(stop.wait())
        done, pending = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if getter not in done:
            return
        command = getter.result()[0]
        if command == "mark":
            for client in clients:
                client.mark()
            conn.send(("marked",))
        elif command == "status":
            conn.send(("status", {client.spec.node_id: client.status() for client in clients}))
        elif command == "report":
            conn.send(("report", {client.spec.node_id: client.report() for client in clients}))
        elif command == "stop":
            stop.set()


class ClientProcess:
    """The child process of proxies, and the request/reply conversation with it."""

    def __init__(self, plan: ClientPlan) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=client_process, args=(plan, child_conn), name="bench-ads-clients", daemon=True
        )
        self._process.start()
        child_conn.close()

    async def ask(self, command: str, reply_within: float = 30.0) -> Any:
        return await asyncio.to_thread(self._ask, command, reply_within)

    def check(self) -> None:
        """Raise if a client reported an error or the process died."""
        try:
            while self._conn.poll():
                self._reply(self._conn.recv())
        except EOFError:
            pass  # the process ended: say so below, with its exit code
        if not self._process.is_alive():
            raise RuntimeError(f"the client process exited with {self._process.exitcode}")

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # the process is already gone
            self._conn.send(("stop",))
        self._process.join(10.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def _ask(self, command: str, reply_within: float) -> Any:
        self._conn.send((command,))
        deadline = time.monotonic() + reply_within
        while self._conn.poll(max(0.0, deadline - time.monotonic())):
            reply = self._reply(self._conn.recv())
            if reply[0] == command or (command == "mark" and reply[0] == "marked"):
                return reply[1] if len(reply) > 1 else None
        raise TimeoutError(f"the client process did not answer {command!r} in {reply_within}s")

    @staticmethod
    def _reply(message: tuple[Any, ...]) -> tuple[Any, ...]:
        if message[0] == "error":
            raise RuntimeError(f"an ADS client failed: {message[1]}")
        return message
