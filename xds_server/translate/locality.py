"""Locality-aware load balancing: a caller's own zone first, then its failover zones.

A BackendPolicy with `loadBalancer.locality.enabled` keeps each caller's
traffic in its own zone while that zone has routable endpoints, and fails
over when they go.  It is done with Envoy priorities, as Istio does it: the
load assignment a caller in zone Z gets puts

* Z's endpoints at priority 0,
* then the `toZone` of each failover rule `fromZone: Z`, in rule order, one
  priority each,
* then every other zone (endpoints without a zone included) at the next one;

empty groups are skipped, so priorities stay contiguous.  Envoy sends a
priority's share to the next one as its healthy endpoints drop below
1/overprovisioning (Envoy's default factor 1.4: fully at 0 healthy, partly
below 72 %), and an endpoint whose slice says it is not ready is not sent at
all (`endpoints`), so a zone whose endpoints all go sends nothing at
priority 0 and its callers move to the next priority at once.

The outbound clusters and load assignments stay mesh-wide and shared; only
Services whose policy enables locality pay, and only per zone, never per
proxy:

* the Service's unit also emits, per meshed port, a *zone variant* of its
  load assignment for every zone a caller may be in that changes the order
  (`caller_zones`: the zones of its endpoints and the `fromZone`s of its
  rules), named `<cluster>|zone=<zone>` (`variant_name`; the cache takes a
  `|key=value` suffix as naming a variant of that cluster's endpoints);
* a proxy in such a zone gets, in its own cluster layer (which wins over the
  mesh-wide one), a copy of the Service's cluster whose EDS service name is
  its zone's variant (`for_caller`).  A caller in any other zone, or in none,
  keeps the shared cluster: every endpoint is then "another zone", which is
  the flat assignment anyway.

Which Services enable locality, the caller zones each has variants for, and
the identities its mTLS endpoints prove (which the zone copies of its clusters
check, as the shared ones do: `mtls`), is one view of the mesh
(`locality_targets`), compared by value between snapshots: proxies
re-translate when it changes (a policy turns locality on, a zone appears among
a Service's endpoints, a Pod behind it runs as another service account), not
on every endpoint change.  The zone variants carry the endpoints' `tlsMode`
metadata like the flat assignment, so auto-mTLS selects the same socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from xds_server.model import EndpointSlice, MeshSnapshot, Proxy, Service
from xds_server.model.peer_authentication import mtls_identities
from xds_server.model.policy import BackendPolicy
from xds_server.model.types import is_zone
from xds_server.policy_api import backend_policy_pb2
from xds_server.resources import load_assignment_variant
from xds_server.translate.endpoints import HostPort, locality_lb_endpoints, zone_hosts

logger = logging.getLogger(__name__)

VIEW = "locality_targets"
"""The name of the derived view (`MeshSnapshot.derive`, `pipeline.reads.COMPARED_VIEWS`)."""


def variant_name(cluster: str, zone: str) -> str:
    """The load assignment of `cluster` as callers in `zone` get it."""
    return load_assignment_variant(cluster, "zone", zone)


def locality_of(policy: BackendPolicy | None) -> backend_policy_pb2.LocalityLoadBalancing | None:
    """The policy's locality settings when it enables locality-aware routing, else None."""
    if policy is None:
        return None
    spec = policy.spec()
    if not spec.HasField("load_balancer") or not spec.load_balancer.HasField("locality"):
        return None
    locality = spec.load_balancer.locality
    return locality if locality.enabled.value else None


def check_locality(policy: BackendPolicy) -> None:
    """Raise ValueError naming the policy and field for a failover rule that cannot work."""
    locality = locality_of(policy)
    if locality is None:
        return
    for index, rule in enumerate(locality.failover):
        field = f"spec.loadBalancer.locality.failover[{index}]"
        for name, zone in (("fromZone", rule.from_zone), ("toZone", rule.to_zone)):
            if not is_zone(zone):
                raise ValueError(
                    f"BackendPolicy {policy.namespace}/{policy.name}: {field}.{name}: "
                    f"{zone!r} is not a zone (a label value such as 'us-east-1a')"
                )
        if rule.from_zone == rule.to_zone:
            raise ValueError(
                f"BackendPolicy {policy.namespace}/{policy.name}: {field}.toZone: "
                f"{rule.to_zone!r} is its fromZone; a zone cannot fail over to itself"
            )


def caller_zones(
    locality: backend_policy_pb2.LocalityLoadBalancing, slices: Iterable[EndpointSlice]
) -> frozenset[str]:
    """The caller zones that get a variant: where the Service has endpoints (ready or
    not, so a readiness flap changes no cluster), and the `fromZone` of each rule."""
    zones = {e.zone for s in slices for e in s.endpoints if e.zone and is_zone(e.zone)}
    zones.update(r.from_zone for r in locality.failover if is_zone(r.from_zone))
    return frozenset(zones)


def priorities(
    caller_zone: str,
    present: Iterable[str],
    failover: Sequence[backend_policy_pb2.LocalityFailover] = (),
) -> list[list[str]]:
    """The zones of `present` in priority order for a caller in `caller_zone` (module doc).

    `present` may hold "" (endpoints without a zone): always among the rest.
    """
    remaining = set(present)
    groups: list[list[str]] = []
    for zone in (caller_zone, *(r.to_zone for r in failover if r.from_zone == caller_zone)):
        if zone in remaining:
            groups.append([zone])
            remaining.discard(zone)
    if remaining:
        groups.append(sorted(remaining))
    return groups


def prioritized_assignment(
    name: str,
    by_zone: dict[str, set[HostPort]],
    caller_zone: str,
    failover: Sequence[backend_policy_pb2.LocalityFailover] = (),
    mtls: frozenset[tuple[str, int]] = frozenset(),
) -> endpoint_pb2.ClusterLoadAssignment:
    """`by_zone`'s hosts as a caller in `caller_zone` should see them, named `name`
    (those in `mtls` marked for the cluster's mTLS transport socket)."""
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for priority, zones in enumerate(priorities(caller_zone, by_zone, failover)):
        for zone in zones:
            assignment.endpoints.append(
                locality_lb_endpoints(zone, by_zone[zone], priority, mtls=mtls)
            )
    return assignment


def locality_load_assignments(
    service: Service,
    slices: Sequence[EndpointSlice],
    policy: BackendPolicy | None,
    mtls: frozenset[tuple[str, int]] = frozenset(),
) -> list[endpoint_pb2.ClusterLoadAssignment]:
    """The zone variants of the Service's load assignments (none without locality); the
    endpoints in `mtls` say so in their metadata, as in the flat assignment (`endpoints`)."""
    locality = locality_of(policy)
    if policy is None or locality is None:
        return []
    check_locality(policy)
    zones = sorted(caller_zones(locality, slices))
    return [
        prioritized_assignment(variant_name(name, zone), by_zone, zone, locality.failover, mtls)
        for name, by_zone in zone_hosts(service, slices)
        for zone in zones
    ]


def for_caller(cluster: cluster_pb2.Cluster, zone: str) -> cluster_pb2.Cluster:
    """A copy of the shared EDS `cluster` that fetches its zone-`zone` variant."""
    copy = cluster_pb2.Cluster()
    copy.CopyFrom(cluster)
    copy.eds_cluster_config.service_name = variant_name(cluster.name, zone)
    return copy


# -- which Services enable locality, and for which caller zones ------------------------


@dataclass(frozen=True, slots=True)
class LocalityTarget:
    """A Service whose governing policy enables locality, and its variants' caller zones."""

    namespace: str
    name: str
    policy: tuple[str, str]
    zones: frozenset[str]
    identities: frozenset[tuple[str, str]] = frozenset()
    """The service accounts its mTLS endpoints' sidecars prove (the zone copies of its
    clusters check them as the shared ones do)."""


def locality_targets(mesh: MeshSnapshot) -> tuple[LocalityTarget, ...]:
    """Every Service with locality enabled, by namespace and name (once per snapshot)."""
    return mesh.derive(VIEW, lambda: _locality_targets(mesh))


def _locality_targets(mesh: MeshSnapshot) -> tuple[LocalityTarget, ...]:
    # The view is compared by value: it reads the snapshot's tables and its untracked
    # methods (`MeshSnapshot.x(mesh)`), so a tracking reader notes the view alone.
    found: dict[tuple[str, str], LocalityTarget] = {}
    for key in sorted(mesh.backend_policies):
        policy = mesh.backend_policies[key]
        locality = locality_of(policy)
        if locality is None:
            continue
        for service in _may_govern(mesh, policy):
            attachment = MeshSnapshot.backend_policy_for(mesh, service)
            if attachment is None or attachment.policy != policy:
                continue
            slices = MeshSnapshot.slices_of(mesh, service)
            found[(service.namespace, service.name)] = LocalityTarget(
                service.namespace,
                service.name,
                key,
                caller_zones(locality, slices),
                mtls_identities(mesh, slices),
            )
    return tuple(found[k] for k in sorted(found))


def _may_govern(mesh: MeshSnapshot, policy: BackendPolicy) -> Iterable[Service]:
    """The Services `policy` may attach to (attachment itself is `backend_policy_for`'s)."""
    if not policy.target_refs:
        if policy.namespace == mesh.root_namespace:
            return mesh.services.values()
        return mesh.services_in(policy.namespace)
    services: list[Service] = []
    for ref in policy.target_refs:
        namespace = ref.namespace or policy.namespace
        if ref.kind == "Service":
            service = mesh.services.get((namespace, ref.name))
            if service is not None:
                services.append(service)
        elif ref.kind == "Namespace":
            services.extend(mesh.services_in(ref.name))
    return services


def targets_changed(before: object, after: object) -> bool:
    """Whether a changed object can change `locality_targets` at all: any policy,
    Service, Pod or PeerAuthentication change (the view is then compared by value); a
    slice's only when the zones or the addresses (and so the Pods) it lists change."""
    if isinstance(before, EndpointSlice) or isinstance(after, EndpointSlice):
        return _slice_shape(before) != _slice_shape(after)
    return True


def _slice_shape(obj: object) -> tuple[Any, ...] | None:
    if not isinstance(obj, EndpointSlice):
        return None
    zones = frozenset(e.zone or "" for e in obj.endpoints)
    pods = frozenset((e.target_pod, tuple(e.addresses)) for e in obj.endpoints)
    ports = tuple(p.port for p in obj.ports)
    return (obj.namespace, obj.service_name, zones, pods, ports)


def caller_clusters(
    mesh: MeshSnapshot,
    proxy: Proxy,
    clusters_for_service: Callable[
        [Service, BackendPolicy, frozenset[tuple[str, str]]], list[cluster_pb2.Cluster]
    ],
) -> list[cluster_pb2.Cluster]:
    """`proxy`'s copies of the shared clusters of every Service with locality enabled
    that has a variant for the proxy's zone (`for_caller`); none without a zone.

    Reads the `locality_targets` view, then each chosen Service and its policy
    (so a change to either re-translates the proxy, with their provenance).
    """
    zone = proxy.zone
    if not zone:
        return []
    clusters: list[cluster_pb2.Cluster] = []
    for target in locality_targets(mesh):
        if zone not in target.zones:
            continue
        service = mesh.service(target.namespace, target.name)
        attachment = mesh.backend_policy_for(service) if service is not None else None
        if service is None or attachment is None or locality_of(attachment.policy) is None:
            continue
        clusters.extend(
            for_caller(c, zone)
            for c in clusters_for_service(service, attachment.policy, target.identities)
        )
    return clusters
