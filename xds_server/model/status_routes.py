"""Route status: the conditions of one HTTPRoute or GRPCRoute, per Service parent.

`Accepted` (the parent Service and its port exist; a GRPCRoute binding the
same Service port from the same namespace wins over an HTTPRoute, GEP-1294)
and `ResolvedRefs` (every backendRef and mirror backendRef is a core Service
that exists, with the port), from the model alone; `status` (whose module doc
is the specification) assembles them for the whole mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from xds_server.model.changes import Kind, ObjectKey
from xds_server.model.mesh import MeshSnapshot
from xds_server.model.routes import (
    BackendObjectRef,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    MeshRoute,
    ParentRef,
    RequestMirrorFilter,
    RouteFilter,
)
from xds_server.model.status_conditions import (
    ACCEPTED,
    BACKEND_NOT_FOUND,
    CONFLICTED,
    INVALID_KIND,
    NO_MATCHING_PARENT,
    REASON_ACCEPTED,
    Condition,
    ObjectStatus,
    ParentStatus,
    listed,
    resolution,
)
from xds_server.model.types import Service

logger = logging.getLogger(__name__)


PortBinding = tuple[str, str, str, int]
"""(route namespace, Service namespace, Service name, port): one route group's claim."""


def _ports_covered(ref: ParentRef, service: Service) -> set[int]:
    """The Service ports a parentRef attaches to (every port when it names none)."""
    if ref.port is not None:
        return {ref.port}
    if ref.section_name is not None:
        return {p.port for p in service.ports if p.name == ref.section_name}
    return {p.port for p in service.ports}


def grpc_bindings(mesh: MeshSnapshot) -> dict[PortBinding, str]:
    """Which GRPCRoute (the first by name) binds each Service port, per route namespace."""
    found: dict[PortBinding, str] = {}
    for name in sorted(mesh.grpc_routes):
        route = mesh.grpc_routes[name]
        for ref in route.parent_refs:
            if not ref.is_service:
                continue
            namespace = ref.namespace or route.namespace
            service = mesh.service(namespace, ref.name)
            if service is None:
                continue
            for port in _ports_covered(ref, service):
                found.setdefault((route.namespace, namespace, ref.name, port), route.name)
    return found


def _kind_of(route: MeshRoute) -> str:
    return Kind.GRPC_ROUTE.value if isinstance(route, GRPCRoute) else Kind.HTTP_ROUTE.value


def route_status(
    route: MeshRoute, mesh: MeshSnapshot, grpc_ports: Mapping[PortBinding, str] | None = None
) -> ObjectStatus | None:
    """A route's conditions per Service parent; None when no parent is a Service."""
    refs = [ref for ref in route.parent_refs if ref.is_service]
    if not refs:
        return None
    bindings = grpc_ports if grpc_ports is not None else grpc_bindings(mesh)
    resolved = _resolved_refs(route, mesh)
    parents = tuple(
        ParentStatus(ref, (_route_accepted(route, ref, mesh, bindings), resolved)) for ref in refs
    )
    key = ObjectKey(Kind(_kind_of(route)), route.namespace, route.name)
    return ObjectStatus(key, route.generation, parents=parents, origin=route.origin)


def _route_accepted(
    route: MeshRoute, ref: ParentRef, mesh: MeshSnapshot, grpc_ports: Mapping[PortBinding, str]
) -> Condition:
    generation = route.generation
    namespace = ref.namespace or route.namespace
    service = mesh.service(namespace, ref.name)
    shown = f"Service {namespace}/{ref.name}"
    if service is None:
        return Condition(ACCEPTED, "False", NO_MATCHING_PARENT, f"{shown} not found", generation)
    ports = sorted(p.port for p in service.ports)
    if ref.port is not None and ref.port not in ports:
        message = f"parentRef port {ref.port}: {shown} has no such port (it has {listed(ports)})"
        return Condition(ACCEPTED, "False", NO_MATCHING_PARENT, message, generation)
    covered = _ports_covered(ref, service)
    if ref.section_name is not None and not covered:
        names = sorted(p.name for p in service.ports if p.name)
        message = (
            f"parentRef sectionName {ref.section_name!r}: {shown} has no port of that name "
            f"(it has {listed(names)})"
        )
        return Condition(ACCEPTED, "False", NO_MATCHING_PARENT, message, generation)
    if isinstance(route, HTTPRoute):
        taken = {
            port: grpc_ports[binding]
            for port in covered
            if (binding := (route.namespace, namespace, ref.name, port)) in grpc_ports
        }
        if taken:
            winners = ", ".join(
                f"port {port} (GRPCRoute {route.namespace}/{name})"
                for port, name in sorted(taken.items())
            )
            if len(taken) == len(covered):
                message = (
                    f"{shown}: a GRPCRoute binds {winners}; only one route type applies to a "
                    "Service port and GRPCRoute takes precedence over HTTPRoute (GEP-1294)"
                )
                return Condition(ACCEPTED, "False", CONFLICTED, message, generation)
            return Condition(
                ACCEPTED,
                "True",
                REASON_ACCEPTED,
                f"{_role(route, namespace, shown)}; not on {winners}, which a GRPCRoute binds",
                generation,
            )
    return Condition(ACCEPTED, "True", REASON_ACCEPTED, _role(route, namespace, shown), generation)


def _role(route: MeshRoute, namespace: str, shown: str) -> str:
    if namespace == route.namespace:
        return f"producer route for {shown}: applies to requests from every namespace"
    return f"consumer route for {shown}: applies to requests from namespace {route.namespace}"


def _backends(route: MeshRoute) -> Iterable[tuple[str, BackendObjectRef]]:
    """Every backend a route refers to, with the field naming it."""
    rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.rules
    for i, rule in enumerate(rules):
        yield from _mirrors(f"spec.rules[{i}].filters", rule.filters)
        for j, backend in enumerate(rule.backend_refs):
            where = f"spec.rules[{i}].backendRefs[{j}]"
            yield where, backend.backend
            yield from _mirrors(f"{where}.filters", backend.filters)


def _mirrors(
    where: str, filters: tuple[RouteFilter, ...]
) -> Iterable[tuple[str, BackendObjectRef]]:
    for k, route_filter in enumerate(filters):
        if isinstance(route_filter, RequestMirrorFilter):
            yield f"{where}[{k}].requestMirror.backendRef", route_filter.backend


def _resolved_refs(route: MeshRoute, mesh: MeshSnapshot) -> Condition:
    problems: list[tuple[str, str]] = []
    for where, ref in _backends(route):
        if ref.group not in ("", "core") or ref.kind != "Service":
            group = ref.group or "core"
            problems.append(
                (
                    INVALID_KIND,
                    f"{where}: kind {ref.kind} of group {group} is not supported (Service)",
                )
            )
            continue
        namespace = ref.namespace or route.namespace
        service = mesh.service(namespace, ref.name)
        if service is None:
            problems.append(
                (BACKEND_NOT_FOUND, f"{where}: Service {namespace}/{ref.name} not found")
            )
        elif ref.port is not None and ref.port not in {p.port for p in service.ports}:
            problems.append(
                (
                    BACKEND_NOT_FOUND,
                    f"{where}: Service {namespace}/{ref.name} has no port {ref.port}",
                )
            )
    return resolution(problems, route.generation, "every backendRef resolves")
