"""Proxies proven by projected ServiceAccount tokens, reviewed through kmock's TokenReview.

A stream with a token the API server authenticates for the audience, naming a
service account and bound to the node's Pod, is served with that account's
SPIFFE ID; one bound to another Pod is PERMISSION_DENIED; one without a token
or with a token the review refuses is UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import kmock
import pytest
from ads_fakes import FakeContext, RequestQueue, request, secret, snapshot
from kubernetes import client

from xds_server.cache import SnapshotCache
from xds_server.model import MeshSnapshot, Workload
from xds_server.resources import SECRET
from xds_server.security.authn import TokenReviewAuthenticator, token_review
from xds_server.security.guard import MeshNodeGuard
from xds_server.server import AggregatedDiscoveryServer

AUDIENCE = "xds-server"
TOKENS = {"web-token": ("web", "web-1"), "db-token": ("db", "db-1")}


class TokenContext:
    """A fake stream context carrying `authorization` metadata."""

    def __init__(self, inner: Any, token: str | None) -> None:
        self._inner, self._token = inner, token

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self._token}")] if self._token else []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def review_answer(req: Any) -> dict[str, Any]:
    spec = req.data["spec"]
    found = TOKENS.get(spec["token"])
    if found is None or AUDIENCE not in spec.get("audiences", []):
        return {
            "kind": "TokenReview",
            "spec": spec,
            "status": {"authenticated": False, "error": "invalid"},
        }
    account, pod = found
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": spec,  # the API server answers with the review it was sent, and its status
        "status": {
            "authenticated": True,
            "audiences": [AUDIENCE],
            "user": {
                "username": f"system:serviceaccount:shop:{account}",
                "extra": {"authentication.kubernetes.io/pod-name": [pod]},
            },
        },
    }


def servicer(configuration: client.Configuration) -> AggregatedDiscoveryServer:
    cache = SnapshotCache()
    for node_id in ("web-1.shop", "db-1.shop"):
        cache.set_snapshot(node_id, snapshot("v1", secret("default")))
    pods = {
        ("shop", "web-1"): Workload(namespace="shop", name="web-1", service_account="web"),
        ("shop", "db-1"): Workload(namespace="shop", name="db-1", service_account="db"),
    }
    review = token_review(client.ApiClient(configuration))
    return AggregatedDiscoveryServer(
        cache,
        authenticator=TokenReviewAuthenticator("cluster.local", AUDIENCE, review),
        authorizer=MeshNodeGuard("cluster.local", lambda: MeshSnapshot(workloads=pods)),
    )


@pytest.fixture
async def kube_configuration() -> AsyncIterator[client.Configuration]:
    """kmock serving TokenReview (the one API call authentication makes)."""
    async with kmock.RawHandler() as mock, kmock.Server(mock):
        mock["post /apis/authentication.k8s.io/v1/tokenreviews"] << review_answer
        configuration = client.Configuration()
        configuration.host = str(mock.url).rstrip("/")
        yield configuration


async def open_stream(
    server: AggregatedDiscoveryServer, token: str | None, node_id: str
) -> tuple[grpc.StatusCode | None, int]:
    context = FakeContext()
    requests = RequestQueue()
    task = asyncio.create_task(
        server.StreamAggregatedResources(requests, TokenContext(context, token))  # type: ignore[arg-type]
    )
    requests.put(request(SECRET, "default", node_id=node_id))
    getter = asyncio.ensure_future(context.written.get())
    done, _ = await asyncio.wait({task, getter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        requests.end()
        await asyncio.wait_for(task, 10)
        return None, len(getter.result().resources)
    getter.cancel()
    return context.code, 0


async def test_a_token_bound_to_the_nodes_pod_is_served_with_its_accounts_identity(
    kube_configuration: client.Configuration,
) -> None:
    server = servicer(kube_configuration)
    assert await open_stream(server, "web-token", "web-1.shop") == (None, 1)


async def test_a_token_of_another_pod_is_permission_denied(
    kube_configuration: client.Configuration,
) -> None:
    server = servicer(kube_configuration)
    assert await open_stream(server, "web-token", "db-1.shop") == (
        grpc.StatusCode.PERMISSION_DENIED,
        0,
    )


async def test_no_token_or_a_refused_one_is_unauthenticated(
    kube_configuration: client.Configuration,
) -> None:
    server = servicer(kube_configuration)
    for token in (None, "forged"):
        assert await open_stream(server, token, "web-1.shop") == (
            grpc.StatusCode.UNAUTHENTICATED,
            0,
        )
