"""A synthetic mesh for the benchmarks: N HTTP Services with E endpoints each.

Every address is on loopback (127.0.0.0/8) so nothing a benchmark configures
can reach beyond the machine: endpoints are 127.1.0.1 upwards, Service cluster
IPs 127.200.0.1 upwards, proxies' pod IPs (`proxy_address`) 127.3.0.1
upwards.  Services are spread over namespaces of 100 (as a
real cluster would be) and each has one HTTP port, so the mesh translates to
one outbound EDS cluster and one ClusterLoadAssignment per Service, and one
virtual host per Service in each namespace's `outbound|{namespace}` route table.
Service `svc-i` selects the pods labelled `app: svc-i` (`app_labels`), so a
proxy given those labels and an IP has an inbound side for it (`proxy`).

The generator is deterministic: a benchmark's client processes rebuild the
cluster names from the same arguments instead of receiving them.
"""

from __future__ import annotations

from collections.abc import Iterator

from xds_server.model import (
    ChangeSet,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Proxy,
    Service,
    ServicePort,
)
from xds_server.translate import cluster_name

SERVICES_PER_NAMESPACE = 100
SERVICE_PORT = 80
TARGET_PORT = 8080
PORT_NAME = "http"

_ENDPOINT_BASE = (127 << 24) | (1 << 16)
"""127.1.0.0: endpoint k gets the k-th usable address after it."""
_CLUSTER_IP_BASE = (127 << 24) | (200 << 16)
"""127.200.0.0: Service i gets the i-th usable address after it."""
_PROXY_BASE = (127 << 24) | (3 << 16)
"""127.3.0.0: proxy k's pod IP is the k-th usable address after it."""
_LOOPBACK_END = (128 << 24) - 1


def _loopback(base: int, index: int) -> str:
    """The `index`-th address after `base` that ends in neither .0 nor .255."""
    value = base + (index // 254) * 256 + index % 254 + 1
    if value >= _LOOPBACK_END:
        raise ValueError(f"address #{index} after {base:#x} leaves 127.0.0.0/8")
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def endpoint_address(index: int) -> str:
    return _loopback(_ENDPOINT_BASE, index)


def proxy_address(index: int) -> str:
    return _loopback(_PROXY_BASE, index)


def app_labels(index: int) -> tuple[tuple[str, str], ...]:
    """The labels of the pods Service `index` selects."""
    return (("app", f"svc-{index}"),)


def namespace_of(index: int) -> str:
    return f"bench-{index // SERVICES_PER_NAMESPACE}"


def proxy(index: int, namespaces: int) -> Proxy:
    """Proxy `index`, in namespace `index % namespaces`, a pod of that namespace's first Service."""
    first = (index % namespaces) * SERVICES_PER_NAMESPACE
    namespace = namespace_of(first)
    return Proxy(
        node_id=f"proxy-{index}.{namespace}",
        namespace=namespace,
        labels=app_labels(first),
        ip=proxy_address(index),
    )


def service(index: int) -> Service:
    return Service(
        namespace=namespace_of(index),
        name=f"svc-{index}",
        ports=(ServicePort(port=SERVICE_PORT, name=PORT_NAME, target_port=TARGET_PORT),),
        selector=app_labels(index),
        cluster_ip=_loopback(_CLUSTER_IP_BASE, index),
    )


def endpoint_slice(index: int, endpoints: int, *, moved: int | None = None) -> EndpointSlice:
    """Service `index`'s slice; `moved` replaces one endpoint's address with a spare one."""
    addresses = [endpoint_address(index * endpoints + e) for e in range(endpoints)]
    if moved is not None:
        # A spare address past every endpoint of the mesh: one pod replaced by another.
        addresses[moved % endpoints] = _loopback(_ENDPOINT_BASE, 16_000_000 - 1 - index)
    return EndpointSlice(
        namespace=namespace_of(index),
        name=f"svc-{index}-abcde",
        service_name=f"svc-{index}",
        ports=(EndpointPort(port=TARGET_PORT, name=PORT_NAME),),
        endpoints=tuple(
            Endpoint(addresses=(address,), zone="zone-a", node_name="node-1")
            for address in addresses
        ),
    )


def mesh_changes(services: int, endpoints: int) -> ChangeSet:
    """The whole mesh as one ChangeSet, the way a source's initial load arrives."""
    changes = ChangeSet()
    for index in range(services):
        changes.upsert(service(index))
        changes.upsert(endpoint_slice(index, endpoints))
    return changes


def endpoint_change(index: int, endpoints: int, *, moved: bool) -> ChangeSet:
    """One endpoint of Service `index` replaced (`moved`) or put back: an endpoint-only change."""
    changes = ChangeSet()
    changes.upsert(endpoint_slice(index, endpoints, moved=0 if moved else None))
    return changes


class EndpointFlapper:
    """One endpoint of Service `index`, replaced and put back in turn: each change is real."""

    def __init__(self, index: int, endpoints: int) -> None:
        self.index = index
        self.endpoints = endpoints
        self.cluster_name = outbound_cluster_name(index)
        self._moved = False

    def next_change(self) -> ChangeSet:
        self._moved = not self._moved
        return endpoint_change(self.index, self.endpoints, moved=self._moved)


def outbound_cluster_name(index: int) -> str:
    svc = service(index)
    return cluster_name(svc, svc.ports[0])


def outbound_cluster_names(services: int) -> Iterator[str]:
    return (outbound_cluster_name(index) for index in range(services))
