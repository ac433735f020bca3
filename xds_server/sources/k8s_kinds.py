"""The kinds the Kubernetes source watches: one table row per kind, no watch code per kind.

A `WatchedKind` says where a kind lives in the API (its list functions in the
official client, for one namespace and for all) and how its objects become
model values (`convert`, shared with the file source).  The watch machinery in
`k8s_watch` knows nothing else about a kind, so a policy CRD is one more row,
for example:

    WatchedKind(
        kind="TrafficPolicy",
        api_version="mesh.example.io/v1alpha1",
        plural="trafficpolicies",
        lists=custom_object_lists("mesh.example.io", "v1alpha1", "trafficpolicies"),
    )

with its conversion added to `convert`.  The list functions are the client's
generated ones called with `_preload_content=False`: the raw JSON is exactly
what `convert` reads (camelCase, as in a manifest), we skip the client's model
deserialisation, and the same call works for built-in kinds and custom objects.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from xds_server.model.changes import MeshObject
from xds_server.sources.convert import convert
from xds_server.sources.convert_policy import POLICY_GROUP
from xds_server.sources.convert_routes import GATEWAY_API_GROUP, GATEWAY_API_VERSION_V1

__all__ = [
    "MESH_KINDS",
    "ListFunction",
    "WatchedKind",
    "convert_from_api",
    "core_v1_lists",
    "custom_object_lists",
    "discovery_v1_lists",
]

logger = logging.getLogger(__name__)

ListFunction = Callable[..., Any]
"""A generated list call of the official client: `(**params) -> urllib3 response`."""
ListFunctions = Callable[[client.ApiClient], tuple[ListFunction, ListFunction]]
"""Binds a kind to an ApiClient: (list in one namespace, list in all namespaces)."""


def convert_from_api(manifest: Mapping[str, Any]) -> MeshObject | None:
    """`convert` for objects the API server already validated.

    Not strict: the API server adds fields (status, defaults) and newer
    Kubernetes versions add fields this code has never heard of; refusing
    those would drop valid objects.  Typos cannot reach us this way, because
    the API server's own strict decoding rejected them at `kubectl apply`.
    """
    return convert(manifest, strict=False)


def core_v1_lists(namespaced: str, all_namespaces: str) -> ListFunctions:
    """List functions of `CoreV1Api`, by method name."""

    def bind(api_client: client.ApiClient) -> tuple[ListFunction, ListFunction]:
        api = client.CoreV1Api(api_client)
        return getattr(api, namespaced), getattr(api, all_namespaces)

    return bind


def discovery_v1_lists(namespaced: str, all_namespaces: str) -> ListFunctions:
    """List functions of `DiscoveryV1Api`, by method name."""

    def bind(api_client: client.ApiClient) -> tuple[ListFunction, ListFunction]:
        api = client.DiscoveryV1Api(api_client)
        return getattr(api, namespaced), getattr(api, all_namespaces)

    return bind


def custom_object_lists(group: str, version: str, plural: str) -> ListFunctions:
    """List functions of `CustomObjectsApi` for one custom resource (a policy CRD)."""

    def bind(api_client: client.ApiClient) -> tuple[ListFunction, ListFunction]:
        api = client.CustomObjectsApi(api_client)
        return (
            functools.partial(
                api.list_namespaced_custom_object, group=group, version=version, plural=plural
            ),
            functools.partial(
                api.list_cluster_custom_object, group=group, version=version, plural=plural
            ),
        )

    return bind


@dataclass(frozen=True)
class WatchedKind:
    """One kind the source lists and watches."""

    kind: str
    api_version: str
    plural: str
    lists: ListFunctions
    convert: Callable[[Mapping[str, Any]], MeshObject | None] = field(
        default=convert_from_api, compare=False
    )
    label_selector: str | None = None
    """Watch only the objects these labels select (Kubernetes selector syntax)."""
    optional: bool = False
    """A custom resource whose CRD a cluster may not have installed: a list answered 404
    counts as an empty list (the other kinds' first sync does not wait for it), is logged
    once, and is retried with backoff until the CRD appears."""

    def describe(self, namespace: str | None) -> str:
        """How logs and errors name one watch: `v1 services in default`."""
        where = f"in {namespace}" if namespace else "in all namespaces"
        return f"{self.api_version} {self.plural} {where}"


MESH_KINDS: tuple[WatchedKind, ...] = (
    WatchedKind(
        kind="Service",
        api_version="v1",
        plural="services",
        lists=core_v1_lists("list_namespaced_service", "list_service_for_all_namespaces"),
    ),
    WatchedKind(
        kind="EndpointSlice",
        api_version="discovery.k8s.io/v1",
        plural="endpointslices",
        lists=discovery_v1_lists(
            "list_namespaced_endpoint_slice", "list_endpoint_slice_for_all_namespaces"
        ),
    ),
    WatchedKind(
        kind="Pod",
        api_version="v1",
        plural="pods",
        lists=core_v1_lists("list_namespaced_pod", "list_pod_for_all_namespaces"),
    ),
    WatchedKind(
        kind="HTTPRoute",
        api_version=GATEWAY_API_VERSION_V1,
        plural="httproutes",
        lists=custom_object_lists(GATEWAY_API_GROUP, "v1", "httproutes"),
        optional=True,
    ),
    WatchedKind(
        kind="GRPCRoute",
        api_version=GATEWAY_API_VERSION_V1,
        plural="grpcroutes",
        lists=custom_object_lists(GATEWAY_API_GROUP, "v1", "grpcroutes"),
        optional=True,
    ),
    WatchedKind(
        kind="BackendPolicy",
        api_version=f"{POLICY_GROUP}/v1alpha1",
        plural="backendpolicies",
        lists=custom_object_lists(POLICY_GROUP, "v1alpha1", "backendpolicies"),
        optional=True,
    ),
    WatchedKind(
        kind="AuthorizationPolicy",
        api_version=f"{POLICY_GROUP}/v1alpha1",
        plural="authorizationpolicies",
        lists=custom_object_lists(POLICY_GROUP, "v1alpha1", "authorizationpolicies"),
        optional=True,
    ),
    WatchedKind(
        kind="PeerAuthentication",
        api_version=f"{POLICY_GROUP}/v1alpha1",
        plural="peerauthentications",
        lists=custom_object_lists(POLICY_GROUP, "v1alpha1", "peerauthentications"),
        optional=True,
    ),
    WatchedKind(
        kind="Telemetry",
        api_version=f"{POLICY_GROUP}/v1alpha1",
        plural="telemetries",
        lists=custom_object_lists(POLICY_GROUP, "v1alpha1", "telemetries"),
        optional=True,
    ),
)
"""What the mesh model is built from: Services, their EndpointSlices, and Pods
(each sidecar's own labels, service account and IP); and what configures its
traffic: Gateway API HTTPRoutes and GRPCRoutes (GAMMA) and BackendPolicies, whose
CRDs a cluster may lack (`optional`)."""
