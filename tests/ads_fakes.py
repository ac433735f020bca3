"""Fakes and builders for the ADS server specs.

`FakeStream` drives the servicer the way gRPC does (an async iterator of
requests and a context that receives writes and aborts) so a spec reads as a
conversation: send a request, expect a response, ACK it.  `settled()` waits
on the servicer's own status (every request handled, latest snapshot
processed) instead of sleeping, so "nothing was sent" is a real assertion.

Snapshot builders make small, consistent meshes from plain protos and evolve
them through `ResourceSet.evolve`, so change tracking works as in production.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from xds_server.cache import ResourceSet, Snapshot, SnapshotCache
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Resource,
    make_resource,
)
from xds_server.server import AggregatedDiscoveryServer, StreamStatus, bind_grpc_server

TIMEOUT = 5.0
"""Upper bound on any wait in these specs; reached only when a spec fails."""

# --- proto builders -----------------------------------------------------------


def cluster(name: str, *, timeout_s: int = 1, service_name: str = "") -> cluster_pb2.Cluster:
    """An EDS cluster fed over ADS."""
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=timeout_s),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            service_name=service_name,
            eds_config=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource()
            ),
        ),
    )


def load_assignment(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints of `name` on 127.0.0.1 at `ports`."""
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=_socket_address(port))
                    )
                    for port in ports
                ]
            )
        ],
    )


def listener(name: str, route_name: str, *, port: int = 15001) -> listener_pb2.Listener:
    """An HTTP listener whose routes come from RDS (`route_name`)."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(
            route_config_name=route_name,
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource()
            ),
        ),
    )
    typed = any_pb2.Any()
    typed.Pack(hcm)
    return listener_pb2.Listener(
        name=name,
        address=_socket_address(port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="hcm", typed_config=typed)]
            )
        ],
    )


def route_config(
    name: str, cluster_name: str, *, prefix: str = "/"
) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=prefix),
                        route=route_components_pb2.RouteAction(cluster=cluster_name),
                    )
                ],
            )
        ],
    )


def secret(name: str) -> secret_pb2.Secret:
    return secret_pb2.Secret(name=name)


def _socket_address(port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
    )


# --- snapshots ----------------------------------------------------------------


def snapshot(version: str, *messages: Message) -> Snapshot:
    """A snapshot holding `messages`, one ResourceSet per type."""
    by_type: dict[str, list[Resource]] = {}
    for message in messages:
        resource = make_resource(message)
        by_type.setdefault(resource.type_url, []).append(resource)
    return Snapshot(
        resources={type_url: ResourceSet(resources) for type_url, resources in by_type.items()},
        version=version,
    )


def evolve(
    old: Snapshot,
    version: str,
    *upserts: Message,
    remove: Iterable[tuple[str, str]] = (),
) -> Snapshot:
    """`old` with `upserts` and removals of (type URL, name), tracked as changes."""
    added: dict[str, list[Resource]] = {}
    for message in upserts:
        resource = make_resource(message)
        added.setdefault(resource.type_url, []).append(resource)
    removed: dict[str, list[str]] = {}
    for type_url, name in remove:
        removed.setdefault(type_url, []).append(name)
    resources = dict(old.resources)
    for type_url in set(added) | set(removed):
        current = resources.get(type_url)
        base = current if isinstance(current, ResourceSet) else ResourceSet(current or {})
        resources[type_url] = base.evolve(added.get(type_url, ()), removed.get(type_url, ()))
    return Snapshot(resources=resources, version=version)


def mesh(version: str = "v1", *names: str) -> Snapshot:
    """Per name: an EDS cluster and its endpoints; plus listener `http` -> route `http` -> first."""
    names = names or ("a", "b")
    messages: list[Message] = []
    for index, name in enumerate(names):
        messages += [cluster(name), load_assignment(name, 8000 + index)]
    messages += [listener("http", "http"), route_config("http", names[0])]
    return snapshot(version, *messages)


def current(servicer: AggregatedDiscoveryServer, node_id: str) -> Snapshot:
    """The snapshot the servicer's cache holds for `node_id`."""
    snap = servicer.cache.get_snapshot(node_id)
    assert snap is not None
    return snap


def resource_of(snap: Snapshot, type_url: str, name: str) -> Resource:
    return snap.get(type_url)[name]


# --- requests -----------------------------------------------------------------


def node(node_id: str = "proxy-1") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster="test")


def request(
    type_url: str,
    *names: str,
    version: str = "",
    nonce: str = "",
    error: str | None = None,
    node_id: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    """A SotW request; `node_id` adds a node (first requests need one)."""
    message = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=names, version_info=version, response_nonce=nonce
    )
    if node_id is not None:
        message.node.CopyFrom(node(node_id))
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def delta_request(
    type_url: str,
    subscribe: Iterable[str] = (),
    unsubscribe: Iterable[str] = (),
    *,
    nonce: str = "",
    error: str | None = None,
    initial: dict[str, str] | None = None,
    node_id: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    message = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        initial_resource_versions=initial or {},
        response_nonce=nonce,
    )
    if node_id is not None:
        message.node.CopyFrom(node(node_id))
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def names_in(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """Names of the resources in a SotW response, in order."""
    names = []
    for packed in response.resources:
        message = _MESSAGES[packed.type_url]()
        packed.Unpack(message)
        names.append(
            message.cluster_name
            if isinstance(message, endpoint_pb2.ClusterLoadAssignment)
            else message.name
        )
    return names


_MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
}


# --- the fake gRPC stream -----------------------------------------------------


class FakeAbort(Exception):
    """What `FakeContext.abort` raises, like grpc.aio does, to end the handler."""


_peers = itertools.count(40000)


class FakeContext:
    """Captures what the servicer writes and how it ends the call.

    `stop_reading()` makes writes block, as a proxy that no longer reads its
    stream (its flow-control window full) does; `resume_reading()` lets them
    through.  `writes_started` counts every write the servicer attempted.
    """

    def __init__(self, peer: str | None = None) -> None:
        self.written: asyncio.Queue[Any] = asyncio.Queue()
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self._peer = peer or f"ipv4:127.0.0.1:{next(_peers)}"
        self._reading = asyncio.Event()
        self._reading.set()
        self.writes_started = 0
        self.done_callbacks: list[Callable[[Any], None]] = []

    def stop_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def write(self, message: Any) -> None:
        self.writes_started += 1
        await self._reading.wait()
        self.written.put_nowait(message)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code = code
        self.details = details
        raise FakeAbort(f"{code}: {details}")

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.done_callbacks.append(callback)

    def call_done(self) -> None:
        """gRPC is done with the call (its status went out, or the connection went)."""
        callbacks, self.done_callbacks = self.done_callbacks, []
        for callback in callbacks:
            callback(self)

    def peer(self) -> str:
        return self._peer


class RequestQueue:
    """The request side of a stream: an async iterator fed by the spec."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, message: Any) -> None:
        self._queue.put_nowait(message)

    def end(self) -> None:
        self._queue.put_nowait(None)

    def pending(self) -> int:
        """Requests sent that the servicer has not read yet."""
        return self._queue.qsize()

    def __aiter__(self) -> RequestQueue:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item


class FakeStream:
    """One proxy's ADS stream (SotW or Delta) against a servicer."""

    def __init__(
        self, servicer: AggregatedDiscoveryServer, *, delta: bool = False, peer: str | None = None
    ) -> None:
        self.servicer = servicer
        self.context = FakeContext(peer)
        self.requests = RequestQueue()
        self.sent_requests = 0
        handler = servicer.DeltaAggregatedResources if delta else servicer.StreamAggregatedResources
        self.task = asyncio.create_task(handler(self.requests, self.context))

    def send(self, message: Any) -> None:
        self.sent_requests += 1
        self.requests.put(message)

    async def response(self) -> Any:
        """The next response written to the proxy."""
        return await asyncio.wait_for(self.context.written.get(), TIMEOUT)

    async def responses(self, count: int) -> list[Any]:
        return [await self.response() for _ in range(count)]

    async def settled(self) -> StreamStatus:
        """Wait until every request sent was handled and the node's latest snapshot processed."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while True:
            status = self.status()
            if status is not None and status.requests == self.sent_requests:
                current = self.servicer.cache.get_snapshot(status.node_id)
                if current is None or status.snapshot_version == current.version:
                    return status
            if self.task.done() or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"stream did not settle: {status}")
            await asyncio.sleep(0)

    async def silent(self) -> StreamStatus:
        """Settle, and check nothing was written that the spec did not take."""
        status = await self.settled()
        assert self.context.written.empty(), (
            f"unexpected response: {self.context.written.get_nowait()}"
        )
        return status

    def status(self) -> StreamStatus | None:
        for status in self.servicer.streams():
            if status.peer == self.context.peer():
                return status
        return None

    async def end(self) -> None:
        """The proxy closes its side; the handler returns."""
        self.requests.end()
        await asyncio.wait_for(self.task, TIMEOUT)

    async def aborted(self) -> grpc.StatusCode | None:
        """Wait for the handler to end; the status code it aborted with, if any."""
        with suppress(FakeAbort):
            await asyncio.wait_for(self.task, TIMEOUT)
        return self.context.code


def new_servicer(*snapshots: tuple[str, Snapshot]) -> AggregatedDiscoveryServer:
    """A servicer over a fresh cache holding the given (node id, snapshot) pairs."""
    cache = SnapshotCache()
    for node_id, snap in snapshots:
        cache.set_snapshot(node_id, snap)
    return AggregatedDiscoveryServer(cache)


@asynccontextmanager
async def real_server(servicer: AggregatedDiscoveryServer) -> AsyncIterator[grpc.aio.Channel]:
    """The servicer on a real grpc.aio server on 127.0.0.1, and a channel to it."""
    server, port = bind_grpc_server(servicer, "127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        servicer.close()
        await server.stop(1.0)
