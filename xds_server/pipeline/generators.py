"""The table of generators: what translation builds, per scope, from which inputs.

Each generator is a pure function over the mesh with a declared scope.  A
*unit* is one generator over one scope instance; what it read of the mesh
(`reads.Fact`s, declared below or recorded by a `TrackedMesh`) goes into the
dependency index (`deps`), and who holds what it built decides which proxies
a change republishes.  A new input kind (a route, a policy, a Secret) is a
new fact some generator reads, or a new row here; never a branch in the
builder.

| generator | scope     | builds   | reads                                | held by          |
|-----------|-----------|----------|--------------------------------------|------------------|
| service   | Service   | CDS, EDS | the Service, its EndpointSlices, the | every proxy      |
|           |           |          | BackendPolicies that may govern it   |                  |
| routes    | namespace | RDS      | the routing surface of every Service | its namespace's  |
|           |           |          | every HTTPRoute, GRPCRoute and       |                  |
|           |           |          | BackendPolicy                        |                  |
| proxy     | proxy     | CDS, LDS,| what translation asked (TrackedMesh) | that proxy       |
|           |           | SDS      | (its identity's WorkloadCertificate, |                  |
|           |           |          | the TrustRoots)                      |                  |
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from google.protobuf.message import Message

from xds_server import translate
from xds_server.cache import ResourceSet
from xds_server.model import EndpointSlice, Kind, MeshSnapshot, ObjectKey, Proxy, Service
from xds_server.model.mesh import NamespacedName
from xds_server.model.peer_authentication import mtls_endpoints, mtls_identities
from xds_server.model.policy import Attachment, BackendPolicy
from xds_server.pipeline.deps import Unit
from xds_server.pipeline.provenance import Provenance
from xds_server.pipeline.reads import ROUTE_POLICIES, Fact, TrackedMesh, object_fact, slices_fact
from xds_server.pipeline.validation import validate, validate_route_table
from xds_server.provenance import SourceRef
from xds_server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Resource,
    make_resource,
)
from xds_server.translate.locality import locality_load_assignments
from xds_server.translate.secrets import proxy_secrets

logger = logging.getLogger(__name__)

Scope = Literal["service", "namespace", "proxy"]
HeldBy = Literal["every proxy", "namespace", "proxy"]


@dataclass(frozen=True, slots=True)
class Generator:
    """One row of the table (see the module doc)."""

    name: str
    """The unit prefix: `service:ns/name`, `routes:ns`, `proxy:node-id`."""
    scope: Scope
    builds: tuple[str, ...]
    """Type URLs of what it builds."""
    held_by: HeldBy
    """Which proxies hold what it builds (so which a change to it republishes)."""


GENERATORS: tuple[Generator, ...] = (
    Generator("service", "service", (CLUSTER, ENDPOINT), "every proxy"),
    Generator("routes", "namespace", (ROUTE,), "namespace"),
    Generator("proxy", "proxy", (CLUSTER, LISTENER, SECRET), "proxy"),
)
GENERATOR_OF: dict[str, Generator] = {generator.name: generator for generator in GENERATORS}


@dataclass
class ProxyState:
    declared: Proxy
    """As the proxy's node metadata describes it."""
    proxy: Proxy
    """As translated: `declared`, with what its Pod says (see `with_workload`)."""
    clusters: ResourceSet = field(default_factory=ResourceSet)
    listeners: ResourceSet = field(default_factory=ResourceSet)
    secrets: ResourceSet = field(default_factory=ResourceSet)
    error: str | None = None


ProxyResources = tuple[ResourceSet, ResourceSet, ResourceSet]
"""A proxy's own clusters, listeners and Secrets."""
ServiceResources = tuple[list[Resource], list[Resource]]
"""A Service's outbound clusters and load assignments."""
Memo = dict[
    NamespacedName,
    tuple[
        Service,
        tuple[EndpointSlice, ...],
        tuple[Attachment | None, frozenset[tuple[str, int]], frozenset[tuple[str, str]]],
        ServiceResources,
    ],
]
"""Service translations already made for this batch, reused by its later rounds."""


def _resources(messages: Iterable[Message], provenance: Provenance) -> list[Resource]:
    return [_checked(m, provenance.stamped(m)) for m in messages]


def _checked(message: Message, sources: tuple[SourceRef, ...]) -> Resource:
    """The resource of `message`, once it passes Envoy's validation rules (else the
    `validation.EnvoyValidationError` raised makes isolation blame its source)."""
    resource = make_resource(message, sources)
    validate(resource, message)
    return resource


def route_table_resource(
    tables: translate.OutboundRouteTables, namespace: str, provenance: Provenance
) -> Resource:
    """`namespace`'s route table, naming every Service whose virtual host it holds."""
    resource = dataclasses.replace(
        tables.resource(namespace), provenance=provenance.refs_of_keys(tables.sources(namespace))
    )
    validate_route_table(resource)
    return resource


def proxy_unit(node_id: str) -> Unit:
    return ("proxy", node_id)


def service_unit_of(key: NamespacedName) -> Unit:
    return ("service", *key)


def route_unit(namespace: str) -> Unit:
    return ("routes", namespace)


ROUTE_READS: frozenset[Fact] = frozenset(
    {
        ("all", Kind.SERVICE, "routing"),
        ("all", Kind.HTTP_ROUTE),
        ("all", Kind.GRPC_ROUTE),
        ("view", ROUTE_POLICIES),
    }
)
"""What every namespace's route table reads: what routing sees of every Service, every
mesh route, and of BackendPolicies only who sets default retries and timeouts for which
Service (`reads.route_policies`): a policy that shapes clusters only rebuilds no table."""


def service_reads(key: NamespacedName, root_namespace: str) -> frozenset[Fact]:
    """What a Service's clusters and load assignments read: it, its slices, the
    BackendPolicies that may govern it (its namespace's and the root namespace's),
    and, for which endpoints take mTLS (`mtls_endpoints`), the Pods of its
    namespace (slices hold the namespace's Pods) and the PeerAuthentications
    that may govern them."""
    return frozenset(
        {
            object_fact(ObjectKey(Kind.SERVICE, *key)),
            slices_fact(*key),
            ("ns", Kind.BACKEND_POLICY, key[0]),
            ("ns", Kind.BACKEND_POLICY, root_namespace),
            ("ns", Kind.WORKLOAD, key[0]),
            ("ns", Kind.PEER_AUTHENTICATION, key[0]),
            ("ns", Kind.PEER_AUTHENTICATION, root_namespace),
        }
    )


def proxy_resources(
    mesh: MeshSnapshot,
    state: ProxyState,
    proxy: Proxy,
    provenance: Provenance | None = None,
    reads: set[Fact] | None = None,
) -> ProxyResources:
    """`proxy`'s clusters, listeners and Secrets on `mesh`, evolved from what `state` holds.

    What translation read is added to `reads`: the proxy unit's inputs.  A Secret
    names the certificate or trust roots it holds (it has no metadata to stamp).
    """
    tracked = TrackedMesh(mesh, reads if reads is not None else set())
    known = provenance if provenance is not None else Provenance(mesh)
    clusters = {r.name: r for r in _resources(translate.proxy_clusters(tracked, proxy), known)}
    listeners = {r.name: r for r in _resources(translate.proxy_listeners(tracked, proxy), known)}
    secrets = {
        secret.name: _checked(secret, known.refs_of([source]))
        for secret, source in proxy_secrets(tracked, proxy)
    }
    return (
        state.clusters.replace_all(clusters),
        state.listeners.replace_all(listeners),
        state.secrets.replace_all(secrets),
    )


def translate_service(
    service: Service,
    slices: tuple[EndpointSlice, ...],
    provenance: Provenance,
    attachment: Attachment | None = None,
    mtls: frozenset[tuple[str, int]] = frozenset(),
    identities: frozenset[tuple[str, str]] = frozenset(),
) -> ServiceResources:
    """A Service's outbound clusters and load assignments, serialized.

    Clusters name the sources stamped in them (the Service, and the
    BackendPolicy governing it); a load assignment (which has no metadata
    field) names its Service and the slices it was built from.  `mtls` are
    the endpoints taking mutual TLS, `identities` the service accounts their
    sidecars must prove (`model.peer_authentication`).
    """
    policy = attachment.policy if attachment is not None else None
    sources = provenance.refs_of([service, *slices])
    return (
        _resources(translate.clusters_for_service(service, policy, identities), provenance),
        [
            _checked(m, sources)
            for m in translate.load_assignments_for_service(service, slices, mtls)
        ]
        + _zone_variants(service, slices, policy, provenance, mtls),
    )


def _zone_variants(
    service: Service,
    slices: tuple[EndpointSlice, ...],
    policy: BackendPolicy | None,
    provenance: Provenance,
    mtls: frozenset[tuple[str, int]] = frozenset(),
) -> list[Resource]:
    """The zone variants of the load assignments, when the policy enables locality
    (`translate.locality`); they name the policy too."""
    assignments = locality_load_assignments(service, slices, policy, mtls)
    if not assignments or policy is None:
        return []
    sources = provenance.refs_of([service, *slices, policy])
    return [_checked(m, sources) for m in assignments]


def service_resources(
    mesh: MeshSnapshot, key: NamespacedName, memo: Memo, provenance: Provenance
) -> ServiceResources:
    """`translate_service` for Service `key` (none if it is gone), once per
    (Service, slices) over a batch's rounds."""
    service, slices = mesh.services.get(key), mesh.slices_by_service.get(key, ())
    if service is None:
        return [], []
    attachment = mesh.backend_policy_for(service)
    mtls, identities = mtls_endpoints(mesh, slices), mtls_identities(mesh, slices)
    known = memo.get(key)
    if (
        known is not None
        and known[0] is service
        and all(a is b for a, b in zip(known[1], slices, strict=False))
        and len(known[1]) == len(slices)
        and known[2] == (attachment, mtls, identities)
    ):
        return known[3]
    resources = translate_service(service, slices, provenance, attachment, mtls, identities)
    memo[key] = (service, slices, (attachment, mtls, identities), resources)
    return resources
