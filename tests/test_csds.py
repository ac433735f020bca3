"""CSDS over a real gRPC server: each proxy's config and sync state, as the admin sees it.

Proxies are driven in process (`FakeStream`, so every ACK and NACK is the
spec's own); the Client Status Discovery Service runs on a real grpc.aio
server beside ADS (`bind_grpc_server(services=...)`) and is asked through the
generated stub, with the admin token as `authorization: Bearer` metadata.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from ads_fakes import (
    FakeStream,
    cluster,
    load_assignment,
    mesh,
    new_servicer,
    request,
)
from ads_fakes import snapshot as make_snapshot
from envoy.admin.v3.config_dump_shared_pb2 import ClientResourceStatus
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, regex_pb2, string_pb2, struct_pb2, value_pb2

from xds_server.admin.auth import AdminToken
from xds_server.admin.client_status import CsdsAccess, namespace_of, shown_resource
from xds_server.admin.redact import redact_text
from xds_server.admin.views import SyncStatus, sync_status
from xds_server.cache import Snapshot
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, SECRET
from xds_server.security.authn import TokenReviewAuthenticator
from xds_server.server import AggregatedDiscoveryServer, bind_grpc_server
from xds_server.server.auth import AuthenticationError, PeerIdentity
from xds_server.server.csds import ClientStatusBuilder, ClientStatusServer

TOKEN = AdminToken("csds-test-admin-token-0123", "test")
AUTH = (("authorization", f"Bearer {TOKEN.value}"),)
KEY_PEM = (
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n"
)
Generic = csds_pb2.ClientConfig.GenericXdsConfig

CONFIG_STATUS = {
    SyncStatus.SYNCED: csds_pb2.SYNCED,
    SyncStatus.STALE: csds_pb2.STALE,
    SyncStatus.NACKED: csds_pb2.ERROR,
    SyncStatus.NOT_SENT: csds_pb2.NOT_SENT,
}


def keyed_secret(name: str) -> secret_pb2.Secret:
    """An SDS Secret holding a private key inline, as a workload certificate does."""
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain={"inline_string": "-----BEGIN CERTIFICATE-----\n..."},
            private_key={"inline_string": KEY_PEM},
        ),
    )


class Csds:
    """A servicer whose CSDS is served on a real port, and calls to it."""

    def __init__(self, servicer: AggregatedDiscoveryServer, channel: grpc.aio.Channel) -> None:
        self.servicer = servicer
        self.stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)

    async def fetch(
        self, *matchers: node_pb2.NodeMatcher, exclude: bool = False
    ) -> dict[str, csds_pb2.ClientConfig]:
        response = await self.stub.FetchClientStatus(
            csds_pb2.ClientStatusRequest(node_matchers=matchers, exclude_resource_contents=exclude),
            metadata=AUTH,
        )
        return {config.node.id: config for config in response.config}


@asynccontextmanager
async def csds_on(*snapshots: tuple[str, Snapshot]) -> AsyncIterator[Csds]:
    servicer = new_servicer(*snapshots)
    builder = ClientStatusBuilder(
        streams=servicer.streams,
        snapshot_of=servicer.cache.get_snapshot,
        sync_of=sync_status,
        show=shown_resource,
        clean_text=redact_text,
    )
    service = ClientStatusServer(builder, CsdsAccess(TOKEN, None, "mesh-system"))
    server, port = bind_grpc_server(servicer, "127.0.0.1:0", services=[service])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Csds(servicer, channel)
    finally:
        await channel.close()
        servicer.close()
        await server.stop(0)


def entries(config: csds_pb2.ClientConfig, type_url: str) -> dict[str, Generic]:
    return {e.name: e for e in config.generic_xds_configs if e.type_url == type_url}


async def acked(stream: FakeStream, type_url: str, *names: str, node_id: str) -> None:
    """Subscribe to `names` of `type_url` (all if none) and ACK what comes back."""
    stream.send(request(type_url, *names, node_id=node_id))
    response = await stream.response()
    stream.send(request(type_url, *names, version=response.version_info, nonce=response.nonce))
    await stream.settled()


async def test_a_synced_proxy_reads_synced_and_acked_with_its_secret_redacted() -> None:
    served = make_snapshot(
        "v1",
        cluster("a"),
        cluster("b"),
        load_assignment("a", 8000),
        load_assignment("b", 8001),
        keyed_secret("default"),
    )
    async with csds_on(("web-1.shop", served)) as csds:
        stream = FakeStream(csds.servicer)
        await acked(stream, CLUSTER, node_id="web-1.shop")
        await acked(stream, SECRET, "default", node_id="web-1.shop")

        config = (await csds.fetch())["web-1.shop"]

        clusters = entries(config, CLUSTER)
        assert sorted(clusters) == ["a", "b"]
        for entry in clusters.values():
            assert (entry.config_status, entry.client_status) == (
                csds_pb2.SYNCED,
                ClientResourceStatus.ACKED,
            )
            assert entry.version_info == served.type_version(CLUSTER)
            assert entry.last_updated.seconds > 0
        sent = cluster("a")
        assert clusters["a"].xds_config.Unpack(sent) and sent == cluster("a")
        secret = secret_pb2.Secret()
        assert entries(config, SECRET)["default"].xds_config.Unpack(secret)
        assert secret.tls_certificate.private_key.inline_string == "[redacted]"
        assert secret.tls_certificate.certificate_chain.inline_string.startswith("-----BEGIN")
        assert b"PRIVATE KEY" not in config.SerializeToString()
        assert config.node.cluster == "test"  # the node the stream sent, not only its id


async def test_stale_nacked_and_missing_resources_read_as_the_admin_reads_their_types() -> None:
    v1 = mesh("v1", "a")
    async with csds_on(("web-1.shop", v1)) as csds:
        stream = FakeStream(csds.servicer)
        stream.send(request(CLUSTER, node_id="web-1.shop"))
        await stream.response()  # never answered: STALE
        stream.send(request(LISTENER))
        rejected = await stream.response()
        stream.send(
            request(
                LISTENER, nonce=rejected.nonce, error=f"listener http: bad filter\n{KEY_PEM}oops"
            )
        )
        stream.send(request(ENDPOINT, "a", "ghost"))
        await stream.response()
        status = await stream.settled()

        config = (await csds.fetch())["web-1.shop"]

        for entry in config.generic_xds_configs:
            if entry.name != "ghost":
                admin = sync_status(status.types[entry.type_url])
                assert entry.config_status == CONFIG_STATUS[admin], entry.type_url
        assert entries(config, CLUSTER)["a"].client_status == ClientResourceStatus.REQUESTED
        nacked = entries(config, LISTENER)["http"]
        assert (nacked.config_status, nacked.client_status) == (
            csds_pb2.ERROR,
            ClientResourceStatus.NACKED,
        )
        assert nacked.error_state.details.startswith("listener http: bad filter")
        assert "PRIVATE KEY" not in nacked.error_state.details
        assert nacked.error_state.version_info == v1.type_version(LISTENER)
        assert nacked.error_state.last_update_attempt.seconds > 0
        ghost = entries(config, ENDPOINT)["ghost"]
        assert (ghost.config_status, ghost.client_status) == (
            csds_pb2.NOT_SENT,
            ClientResourceStatus.DOES_NOT_EXIST,
        )
        assert not ghost.HasField("xds_config")


def exact(node_id: str) -> node_pb2.NodeMatcher:
    return node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(exact=node_id))


def metadata_is(key: str, value: str) -> node_pb2.NodeMatcher:
    return node_pb2.NodeMatcher(
        node_metadatas=[
            struct_pb2.StructMatcher(
                path=[struct_pb2.StructMatcher.PathSegment(key=key)],
                value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value)),
            )
        ]
    )


@pytest.fixture
async def three_proxies() -> AsyncIterator[Csds]:
    nodes = ("web-1.shop", "web-2.shop", "db-1.store")
    async with csds_on(*((n, mesh("v1", "a")) for n in nodes)) as csds:
        for node_id in nodes:
            stream = FakeStream(csds.servicer)
            first = request(CLUSTER, node_id=node_id)
            first.node.metadata.update({"NAMESPACE": node_id.split(".")[1]})
            stream.send(first)
            await stream.response()
            await stream.settled()
        yield csds


@pytest.mark.parametrize(
    ("matchers", "chosen"),
    [
        ((), ["db-1.store", "web-1.shop", "web-2.shop"]),
        ((exact("web-2.shop"),), ["web-2.shop"]),
        (
            (node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(prefix="web-")),),
            ["web-1.shop", "web-2.shop"],
        ),
        (
            (
                node_pb2.NodeMatcher(
                    node_id=string_pb2.StringMatcher(suffix=".STORE", ignore_case=True)
                ),
            ),
            ["db-1.store"],
        ),
        (
            (
                node_pb2.NodeMatcher(
                    node_id=string_pb2.StringMatcher(
                        safe_regex=regex_pb2.RegexMatcher(regex=r"web-\d")
                    )
                ),
            ),
            [],
        ),
        ((exact("db-1.store"), exact("web-1.shop")), ["db-1.store", "web-1.shop"]),
        ((metadata_is("NAMESPACE", "shop"),), ["web-1.shop", "web-2.shop"]),
        ((exact("nobody"),), []),
    ],
    ids=[
        "none",
        "exact",
        "prefix",
        "suffix-any-case",
        "regex-whole-id",
        "any-of",
        "metadata",
        "no-one",
    ],
)
async def test_node_matchers_choose_which_proxies_are_answered(
    three_proxies: Csds, matchers: tuple[node_pb2.NodeMatcher, ...], chosen: list[str]
) -> None:
    assert sorted(await three_proxies.fetch(*matchers)) == chosen


async def test_a_matcher_that_cannot_be_evaluated_is_invalid_argument(three_proxies: Csds) -> None:
    broken = node_pb2.NodeMatcher(
        node_id=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex="(unclosed"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await three_proxies.fetch(broken)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_excluding_contents_keeps_the_status_and_drops_the_resources(
    three_proxies: Csds,
) -> None:
    config = (await three_proxies.fetch(exact("web-1.shop"), exclude=True))["web-1.shop"]
    assert entries(config, CLUSTER)["a"].config_status == csds_pb2.STALE
    assert not any(e.HasField("xds_config") for e in config.generic_xds_configs)


async def test_the_stream_answers_each_request_with_the_state_of_that_moment(
    three_proxies: Csds,
) -> None:
    call = three_proxies.stub.StreamClientStatus(metadata=AUTH)
    await call.write(csds_pb2.ClientStatusRequest(node_matchers=[exact("web-1.shop")]))
    first = await call.read()
    await call.write(csds_pb2.ClientStatusRequest())
    second = await call.read()
    await call.done_writing()
    assert [c.node.id for c in first.config] == ["web-1.shop"]
    assert len(second.config) == 3


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-the-admin-token-at-all"),),
        (("authorization", "Basic x"),),
    ],
    ids=["no-token", "wrong-token", "not-bearer"],
)
async def test_a_caller_without_the_admin_token_is_permission_denied(
    three_proxies: Csds, metadata: tuple[tuple[str, str], ...]
) -> None:
    request_ = csds_pb2.ClientStatusRequest()
    with pytest.raises(grpc.aio.AioRpcError) as fetched:
        await three_proxies.stub.FetchClientStatus(request_, metadata=metadata)
    assert fetched.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin token" in (fetched.value.details() or "")
    call = three_proxies.stub.StreamClientStatus(metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await call.write(request_)
        await call.read()
    assert streamed.value.code() == grpc.StatusCode.PERMISSION_DENIED


class KnownPeers:
    """An authenticator that knows callers by their peer address (as a certificate would)."""

    def __init__(self, principals: dict[str, str]) -> None:
        self.principals = principals

    async def authenticate(self, context: Any) -> PeerIdentity:
        principal = self.principals.get(context.peer())
        if principal is None:
            raise AuthenticationError("the stream presented no client certificate")
        return PeerIdentity(principal, "x509")


class Caller:
    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._peer, self._metadata = peer, metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.mark.parametrize(
    ("caller", "admitted"),
    [
        (Caller("ipv4:10.0.0.1:1"), True),
        (Caller("ipv4:10.0.0.2:1"), False),
        (Caller("ipv4:10.0.0.2:1", AUTH), True),
        (Caller("ipv4:10.0.0.3:1"), False),
    ],
    ids=["control-plane-namespace", "other-namespace", "other-namespace-with-token", "unknown"],
)
async def test_an_identity_of_the_control_planes_namespace_or_the_token_admits(
    caller: Caller, admitted: bool
) -> None:
    access = CsdsAccess(
        TOKEN,
        KnownPeers(
            {
                "ipv4:10.0.0.1:1": "spiffe://cluster.local/ns/mesh-system/sa/debugger",
                "ipv4:10.0.0.2:1": "spiffe://cluster.local/ns/shop/sa/web",
            }
        ),
        "mesh-system",
    )
    refusal = await access(caller)
    assert (refusal is None) == admitted, refusal


class TokenReviews:
    """TokenReview as the API server answers it, for ServiceAccount tokens of `accounts`."""

    def __init__(self, accounts: dict[str, str]) -> None:
        self.accounts = accounts
        self.reviewed: list[str] = []

    def __call__(self, token: str, audience: str) -> Any:
        self.reviewed.append(token)
        account = self.accounts.get(token)
        if account is None:
            return SimpleNamespace(authenticated=False, error="invalid token")
        user = SimpleNamespace(
            username=f"system:serviceaccount:{account}",
            extra={"authentication.kubernetes.io/pod-name": ["pod-0"]},
        )
        return SimpleNamespace(authenticated=True, audiences=[audience], user=user)


@pytest.mark.parametrize(
    ("token", "admitted", "reviewed"),
    [
        ("token-of-mesh-system-debugger", True, True),
        ("token-of-shop-web", False, True),
        ("not-a-token", False, True),
        (TOKEN.value, True, False),
    ],
    ids=["control-plane-namespace", "other-namespace", "refused-token", "admin-token"],
)
async def test_in_kubernetes_a_serviceaccount_token_of_the_namespace_or_the_admin_token_admits(
    token: str, admitted: bool, reviewed: bool
) -> None:
    reviews = TokenReviews(
        {
            "token-of-mesh-system-debugger": "mesh-system:debugger",
            "token-of-shop-web": "shop:web",
        }
    )
    access = CsdsAccess(
        TOKEN, TokenReviewAuthenticator("cluster.local", "xds-server", reviews), "mesh-system"
    )
    refusal = await access(Caller("ipv4:10.0.0.9:1", (("authorization", f"Bearer {token}"),)))
    assert (refusal is None) == admitted, refusal
    # The admin token is recognised here; it is never sent to the API server for review.
    assert bool(reviews.reviewed) == reviewed


@pytest.mark.parametrize(
    ("principal", "namespace"),
    [
        ("spiffe://cluster.local/ns/mesh-system/sa/x", "mesh-system"),
        ("spiffe://cluster.local/ns//sa/x", None),
        ("spiffe://cluster.local/ns/mesh-system/sa/x/more", None),
        ("https://cluster.local/ns/mesh-system/sa/x", None),
    ],
)
def test_the_namespace_of_a_spiffe_id(principal: str, namespace: str | None) -> None:
    assert namespace_of(principal) == namespace
