"""Which Pod a proxy runs in, and the proxy as that Pod describes it.

A sidecar's bootstrap carries a guess made at injection time; the Pod the
mesh knows is the truth.  When a proxy's node id is `POD.NAMESPACE`, or its
INSTANCE_IP is the Pod's IP, the Pod's labels, service account and IP
replace what the bootstrap declared.
"""

from __future__ import annotations

import dataclasses
import logging

from xds_server.model import MeshSnapshot, Proxy, Workload
from xds_server.model.types import ZONE_LABEL, is_zone

logger = logging.getLogger(__name__)


def workloads_by_ip(mesh: MeshSnapshot) -> dict[str, list[Workload]]:
    by_ip: dict[str, list[Workload]] = {}
    for workload in mesh.workloads.values():
        if workload.ip:
            by_ip.setdefault(workload.ip, []).append(workload)
    return by_ip


def workload_of(
    proxy: Proxy, mesh: MeshSnapshot, by_ip: dict[str, list[Workload]] | None = None
) -> Workload | None:
    """The Pod a proxy runs in: node id `POD.NAMESPACE`, else the one Pod with its INSTANCE_IP.

    By IP, a Pod in the proxy's namespace wins; an IP several Pods share
    (host-network Pods) names none of them.  `by_ip` (`workloads_by_ip(mesh)`)
    saves a scan of every Pod when many proxies are looked up at once.
    """
    name, dot, namespace = proxy.node_id.rpartition(".")  # a namespace has no dots
    if dot and (workload := mesh.workloads.get((namespace, name))) is not None:
        return workload
    if not proxy.ip:
        return None
    found = (by_ip if by_ip is not None else workloads_by_ip(mesh)).get(proxy.ip, [])
    local = [workload for workload in found if workload.namespace == proxy.namespace]
    candidates = local or found
    return candidates[0] if len(candidates) == 1 else None


def with_workload(
    proxy: Proxy, mesh: MeshSnapshot, by_ip: dict[str, list[Workload]] | None = None
) -> Proxy:
    """`proxy` with the labels, service account, namespace and IP of its Pod, if known,
    and its zone when the Pod's labels name it (`topology.kubernetes.io/zone`)."""
    workload = workload_of(proxy, mesh, by_ip)
    if workload is None:
        return proxy
    zone = dict(workload.labels).get(ZONE_LABEL, "")
    return dataclasses.replace(
        proxy,
        namespace=workload.namespace,
        workload=proxy.workload or workload.name,
        labels=workload.labels,
        service_account=workload.service_account,
        ip=workload.ip or proxy.ip,
        zone=zone if is_zone(zone) else proxy.zone,
    )
