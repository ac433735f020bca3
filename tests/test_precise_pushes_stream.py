"""A Service change reaches, over ADS, only the proxies whose resources it changes.

The builder publishes into the cache a servicer serves; two fake SotW
streams, one per namespace, subscribe to everything and ACK.  Moving the
targetPort of a Service selecting the proxy in `ns-a` sends that proxy its
new listener and cluster, and the `ns-b` proxy nothing at all.
"""

from __future__ import annotations

from typing import Any

from ads_fakes import FakeStream, names_in, request

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Proxy, Service, ServicePort
from xds_server.pipeline import SnapshotBuilder
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.server import AggregatedDiscoveryServer

A = Proxy(node_id="a-0.ns-a", namespace="ns-a", ip="127.0.0.21", labels=(("app", "web"),))
B = Proxy(node_id="b-0.ns-b", namespace="ns-b", ip="127.0.0.22", labels=(("app", "web"),))


def web(target_port: int) -> ChangeSet:
    changes = ChangeSet()
    changes.upsert(
        Service(
            "ns-a",
            "web",
            (ServicePort(8080, "http", target_port=target_port),),
            selector=(("app", "web"),),
        )
    )
    return changes


async def ack(stream: FakeStream, response: Any, *names: str) -> None:
    stream.send(
        request(response.type_url, *names, version=response.version_info, nonce=response.nonce)
    )


async def subscribed(servicer: AggregatedDiscoveryServer, proxy: Proxy) -> FakeStream:
    stream = FakeStream(servicer, peer=f"ipv4:{proxy.ip}:5000")
    stream.send(request(CLUSTER, node_id=proxy.node_id))
    clusters = await stream.response()
    await ack(stream, clusters)
    eds = tuple(name for name in names_in(clusters) if name.startswith("outbound|"))
    rds = (f"outbound|{proxy.namespace}",)
    for type_url, names in ((ENDPOINT, eds), (LISTENER, ()), (ROUTE, rds)):
        stream.send(request(type_url, *names))
        await ack(stream, await stream.response(), *names)
    await stream.silent()
    return stream


async def test_only_the_proxy_whose_resources_change_is_sent_anything() -> None:
    cache = SnapshotCache()
    builder = SnapshotBuilder(cache)
    builder.apply(web(9001))
    for proxy in (A, B):
        builder.add_proxy(proxy)
    builder.mark_synced()
    servicer = AggregatedDiscoveryServer(cache)
    a, b = await subscribed(servicer, A), await subscribed(servicer, B)

    builder.apply(web(9002))

    sent = {(await a.response()).type_url for _ in range(2)}
    assert sent == {CLUSTER, LISTENER}  # the inbound cluster and listener moved to 9002
    await a.silent()
    await b.silent()  # and the other namespace's proxy heard nothing
    for stream in (a, b):
        await stream.end()
    servicer.close()
