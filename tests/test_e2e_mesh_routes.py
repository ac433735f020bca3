"""Gateway API mesh routes (GAMMA) on real traffic through real Envoy sidecars.

HTTPRoutes and GRPCRoutes are YAML in the watched directory, next to the
Services they bind to; the control plane runs in-process, the sidecars are
real Envoys and the upstreams sample apps ("pods" on their own loopback IPs,
without sidecars: what is shown is the caller's routing).  Each parent
Service here is a routing construct without endpoints of its own (GEP-1294,
"Service without selectors"): whatever answers was chosen by a route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from conftest import EnvoyFactory
from e2e_mesh import (
    Sidecar,
    eventually,
    manifest_directory,
    running_control_plane,
    service_yaml,
    slice_yaml,
    start_apps,
    start_sidecar,
    write_documents,
)
from e2e_policies import (
    backend_policy_yaml,
    explain,
    stamped_sources,
    within_binomial,
    yaml_document,
)

from xds_server.app import ControlPlane
from xds_server.sample_app import SampleApp

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

APPS = {"web-v1": "127.0.36.1", "web-v2": "127.0.36.2", "shadow": "127.0.36.3"}
GREETERS = {"greeter-say": "127.0.36.11", "greeter-rest": "127.0.36.12"}
SAY, COUNT = "/mesh.test.Greeter/Say", "/mesh.test.Greeter/Count"


def http_route(name: str, parent: str, rules: list[dict[str, Any]], **meta: Any) -> str:
    parent_ref: dict[str, Any] = {"group": "", "kind": "Service", "name": parent}
    namespace = meta.pop("namespace", "default")
    if namespace != "default":
        parent_ref["namespace"] = "default"
    document = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"parentRefs": [parent_ref], "rules": rules},
    }
    return yaml_document(document)


def to(name: str, port: int, weight: int | None = None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": port, **extra}
    if weight is not None:
        ref["weight"] = weight
    return ref


@dataclass
class Mesh:
    directory: Path
    plane: ControlPlane
    sidecar: Sidecar
    port: int
    apps: dict[str, SampleApp]
    client: httpx.AsyncClient

    def write_routes(self, *documents: str) -> None:
        write_documents(self.directory / "routes.yaml", *documents)

    async def get(self, host: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        return await self.client.request(
            kwargs.pop("method", "GET"),
            f"http://127.0.0.1:{self.sidecar.outbound_port}{path}",
            headers={"Host": f"{host}:{self.port}", **kwargs.pop("headers", {})},
            **kwargs,
        )

    async def who(self, host: str, path: str = "/", **kwargs: Any) -> str:
        response = await self.get(host, path, **kwargs)
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        return str(response.json()["service"])

    async def answers(self, host: str, path: str, expected: str, **kwargs: Any) -> None:
        """Wait until `host` + `path` is answered by `expected` (the routes arrived)."""

        async def check() -> bool:
            return await self.who(host, path, **kwargs) == expected

        await eventually(check, within=15, message=f"{host}{path} answered by {expected}")


@pytest.fixture
async def mesh(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> AsyncIterator[Mesh]:
    port = free_port()
    parents = ["split", "match", "filters", "mirror", "flaky", "slow", "consumed"]
    services = [
        *(service_yaml(name, port) for name in [*APPS, *parents]),
        *(slice_yaml(name, [ip], port) for name, ip in APPS.items()),
    ]
    async with AsyncExitStack() as stack:
        started = await start_apps(stack, port, *((name, "v1", ip) for name, ip in APPS.items()))
        apps = dict(zip(APPS, started, strict=True))
        directory = manifest_directory(tmp_path, {"services.yaml": services})
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10.0))
        yield Mesh(directory, plane, sidecar, port, apps, client)


async def test_an_80_20_split_lands_within_statistical_tolerance(mesh: Mesh) -> None:
    rules = [{"backendRefs": [to("web-v1", mesh.port, 80), to("web-v2", mesh.port, 20)]}]
    mesh.write_routes(http_route("split", "split", rules))
    await mesh.answers("split", "/", "web-v1")
    total = 400
    counts = {"web-v1": 0, "web-v2": 0}
    deadline = time.monotonic() + 40
    for _ in range(total):
        assert time.monotonic() < deadline, "the split took too long"
        counts[await mesh.who("split")] += 1
    # Binomial(400, 0.8): mean 320, sigma 8; 4 sigma either side.
    assert within_binomial(counts["web-v1"], total, 0.8), counts
    assert counts["web-v1"] + counts["web-v2"] == total


async def test_header_path_query_and_method_matches_pick_their_backend(mesh: Mesh) -> None:
    v1, v2 = [to("web-v1", mesh.port)], [to("web-v2", mesh.port)]
    rules = [
        {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": v2},
        {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": v2},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/pre"}}], "backendRefs": v2},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}],
         "backendRefs": v2},
        {"matches": [{"queryParams": [{"name": "v", "value": "2"}]}], "backendRefs": v2},
        {"matches": [{"method": "POST"}], "backendRefs": v2},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": v1},
    ]  # fmt: skip
    mesh.write_routes(http_route("match", "match", rules))
    await mesh.answers("match", "/exact", "web-v2")
    cases: Sequence[tuple[str, dict[str, Any], str]] = [
        ("/", {}, "web-v1"),
        ("/", {"headers": {"X-Canary": "yes"}}, "web-v2"),
        ("/", {"headers": {"X-Canary": "no"}}, "web-v1"),
        ("/exact", {}, "web-v2"),
        ("/exact/more", {}, "web-v1"),  # Exact is exact
        ("/pre", {}, "web-v2"),
        ("/pre/fix", {}, "web-v2"),
        ("/prefix", {}, "web-v1"),  # PathPrefix matches whole path elements
        ("/re/42", {}, "web-v2"),
        ("/re/x42", {}, "web-v1"),  # the regex matches the whole path
        ("/any?v=2", {}, "web-v2"),
        ("/any?v=3", {}, "web-v1"),
        ("/", {"method": "POST"}, "web-v2"),
    ]
    seen = [(path, kwargs, await mesh.who("match", path, **kwargs)) for path, kwargs, _ in cases]
    assert seen == list(cases)


async def test_a_route_governs_only_its_port_and_unmatched_requests_get_404(mesh: Mesh) -> None:
    rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/only"}}],
              "backendRefs": [to("web-v1", mesh.port)]}]  # fmt: skip
    mesh.write_routes(http_route("match", "match", rules))
    await mesh.answers("match", "/only/this", "web-v1")
    assert await mesh.who("match", "/other") == "HTTP 404"  # GAMMA: matched by no rule
    assert await mesh.who("web-v2", "/other") == "web-v2"  # no route: the default route


async def test_a_missing_backend_answers_500_for_its_share_only(mesh: Mesh) -> None:
    rules = [{"backendRefs": [to("web-v1", mesh.port), to("nobody", mesh.port)]}]
    mesh.write_routes(http_route("split", "split", rules))
    await mesh.answers("split", "/", "web-v1")
    total = 200
    answers = [await mesh.who("split") for _ in range(total)]
    assert set(answers) == {"web-v1", "HTTP 500"}
    assert within_binomial(answers.count("HTTP 500"), total, 0.5)


async def test_a_rule_envoy_would_reject_is_left_out_and_nothing_is_nacked(mesh: Mesh) -> None:
    rules = [
        # Python's re takes it, Envoy's RE2 refuses it (program size over 100): left out.
        {"matches": [{"path": {"type": "RegularExpression", "value": "/a{200}"}}],
         "backendRefs": [to("web-v2", mesh.port)]},
        {"backendRefs": [to("web-v1", mesh.port)]},
    ]  # fmt: skip
    mesh.write_routes(http_route("match", "match", rules))
    await mesh.answers("match", "/", "web-v1")
    assert await mesh.who("match", "/" + "a" * 200) == "web-v1"
    assert await mesh.who("web-v2") == "web-v2"  # other Services keep their routes
    stats = await mesh.sidecar.envoy.stats_async(filter=r"rds\..*update_rejected$")
    assert stats and set(stats.values()) == {0}, stats
    # The route's status says which rule is left out, and that the rest is in force.
    (status,) = [s for s in mesh.plane.policy_statuses() if s.key.name == "match"]
    assert status.accepted
    (parent,) = status.parents
    partially = parent.condition("PartiallyInvalid")
    assert partially is not None and partially.reason == "UnsupportedValue", status
    assert "spec.rules[0]" in partially.message, partially.message


async def test_header_modifiers_and_url_rewrite_are_seen_by_the_upstream(mesh: Mesh) -> None:
    rules = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "x-set", "value": "set-by-route"}],
                    "add": [{"name": "x-add", "value": "added"}],
                    "remove": ["x-drop"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                    "set": [{"name": "x-response", "value": "from-route"}]}},
                {"type": "URLRewrite", "urlRewrite": {
                    "hostname": "rewritten.example",
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}},
            ],
            "backendRefs": [to("web-v1", mesh.port)],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/full"}},
                        {"path": {"type": "Exact", "value": "/whole"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {
                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/replaced"}}}],
            "backendRefs": [to("web-v1", mesh.port)],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/strip"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {
                "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}],
            "backendRefs": [to("web-v1", mesh.port)],
        },
    ]  # fmt: skip
    mesh.write_routes(http_route("filters", "filters", rules))
    await mesh.answers("filters", "/old", "web-v1")
    rewritten = {
        path: (await mesh.get("filters", path)).json()["path"]
        for path in ("/full/deep/x?q=2", "/whole", "/strip/a/b?c=d", "/strip", "/strip/")
    }
    assert rewritten == {
        "/full/deep/x?q=2": "/replaced?q=2",  # the query string is kept
        "/whole": "/replaced",
        "/strip/a/b?c=d": "/a/b?c=d",
        "/strip": "/",
        "/strip/": "/",
    }
    response = await mesh.get(
        "filters", "/old/page?q=1", headers={"x-set": "client", "x-add": "client", "x-drop": "1"}
    )
    seen = response.json()
    assert seen["path"] == "/new/page?q=1"
    assert seen["headers"]["x-set"] == "set-by-route"
    assert seen["headers"]["x-add"] == "client, added"
    assert "x-drop" not in seen["headers"]
    assert seen["headers"]["host"] == "rewritten.example"
    assert response.headers["x-response"] == "from-route"


@pytest.mark.parametrize(
    ("redirect", "status", "location"),
    [
        ({"statusCode": 301, "hostname": "example.org"}, 301, "http://example.org:{port}/moved/x"),
        ({"scheme": "https", "hostname": "example.org"}, 302, "https://example.org/moved/x"),
        ({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/elsewhere"}, "statusCode": 308,
          "port": 8443}, 308, "http://filters:8443/elsewhere"),
    ],
)  # fmt: skip
async def test_a_redirect_answers_its_status_and_location(
    mesh: Mesh, redirect: dict[str, Any], status: int, location: str
) -> None:
    rules = [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]},
        {"backendRefs": [to("web-v1", mesh.port)]},
    ]  # fmt: skip
    mesh.write_routes(http_route("filters", "filters", rules))

    async def redirected() -> httpx.Response | None:
        response = await mesh.get("filters", "/moved/x")
        return response if response.status_code == status else None

    response = await eventually(redirected, within=15, message="the redirect")
    assert response.headers["location"] == location.format(port=mesh.port)


async def test_a_mirror_receives_copies_while_the_client_sees_the_primary(mesh: Mesh) -> None:
    rules = [
        {
            "filters": [{"type": "RequestMirror",
                         "requestMirror": {"backendRef": to("shadow", mesh.port)}}],
            "backendRefs": [to("web-v1", mesh.port)],
        }
    ]  # fmt: skip
    mesh.write_routes(http_route("mirror", "mirror", rules))
    await mesh.answers("mirror", "/warmup", "web-v1")
    shadow, primary = mesh.apps["shadow"], mesh.apps["web-v1"]
    copies = [f"/copy/{i}" for i in range(20)]
    answers = {await mesh.who("mirror", path) for path in copies}
    assert answers == {"web-v1"}  # only the primary's answer reaches the client

    # Counted by path: copies of the warm-up requests may still be arriving.
    async def mirrored() -> bool:
        return all(shadow.path_hits[path] == 1 for path in copies)

    await eventually(mirrored, within=10, message="one copy of each request at the mirror")
    assert all(primary.path_hits[path] == 1 for path in copies)


async def test_retries_mask_a_flaky_upstream_and_stop_at_the_configured_attempts(
    mesh: Mesh,
) -> None:
    flaky = mesh.apps["web-v2"]
    without = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [to("web-v2", mesh.port)]}]  # fmt: skip
    mesh.write_routes(http_route("flaky", "flaky", without))
    await mesh.answers("flaky", "/", "web-v2")
    # Without a route retry: every other request fails (the mesh retries only connect errors).
    statuses = [(await mesh.get("flaky", "/?fail_every=2")).status_code for _ in range(20)]
    assert statuses.count(503) == 10

    retried = [{**without[0], "retry": {"codes": [503], "attempts": 2, "backoff": "10ms"}}]
    mesh.write_routes(http_route("flaky", "flaky", retried))

    async def retrying() -> bool:
        statuses = [(await mesh.get("flaky", "/?fail_every=2")).status_code for _ in range(4)]
        return statuses == [200] * 4

    await eventually(retrying, within=15, message="the retry policy")
    before = flaky.hits
    statuses = [(await mesh.get("flaky", "/?fail_every=2")).status_code for _ in range(50)]
    assert statuses.count(200) == 50  # a failure is retried, and the retry succeeds
    # Every request after the first starts with a failing attempt: one retry each.
    assert 99 <= flaky.hits - before <= 100

    before = flaky.hits
    for _ in range(5):
        assert (await mesh.get("flaky", "/status/503")).status_code == 503
    assert flaky.hits - before == 5 * 3  # the first attempt and exactly 2 retries each


async def test_a_slow_upstream_yields_504_within_the_route_timeout(mesh: Mesh) -> None:
    rules = [{"backendRefs": [to("web-v1", mesh.port)], "timeouts": {"request": "500ms"}}]
    mesh.write_routes(http_route("slow", "slow", rules))
    await mesh.answers("slow", "/", "web-v1")
    started = time.monotonic()
    response = await mesh.get("slow", "/delay/5000")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 0.4 <= elapsed < 3.0, elapsed
    assert (await mesh.get("slow", "/delay/50")).status_code == 200


async def test_a_backend_policys_retry_and_timeout_govern_callers_without_a_route(
    mesh: Mesh,
) -> None:
    # web-v2 has no route: its callers use the default route, which the policy shapes.
    policy = backend_policy_yaml(
        "web-v2",
        {"retry": {"attempts": 1, "codes": [503]}, "timeouts": {"request": "0.5s"}},
        target="web-v2",
    )
    assert (await mesh.get("web-v2", "/?fail_every=2")).status_code in (200, 503)
    write_documents(mesh.directory / "policy.yaml", policy)

    async def retried() -> bool:
        statuses = [(await mesh.get("web-v2", "/?fail_every=2")).status_code for _ in range(4)]
        return statuses == [200] * 4

    await eventually(retried, within=15, message="the policy's retry")
    statuses = [(await mesh.get("web-v2", "/?fail_every=2")).status_code for _ in range(20)]
    assert statuses == [200] * 20
    started = time.monotonic()
    assert (await mesh.get("web-v2", "/delay/5000")).status_code == 504
    assert time.monotonic() - started < 3.0
    # A route of the Service's own wins over the policy: no retry for 503 there.
    rules = [{"backendRefs": [to("web-v2", mesh.port)], "retry": {"codes": [500]}}]
    mesh.write_routes(http_route("web-v2", "web-v2", rules))

    async def own_retry() -> bool:
        statuses = [(await mesh.get("web-v2", "/?fail_every=2")).status_code for _ in range(4)]
        return 503 in statuses

    await eventually(own_retry, within=15, message="the route's own retry policy")


async def test_a_consumer_route_applies_only_to_its_namespaces_callers(
    mesh: Mesh, envoy_factory: EnvoyFactory, free_port: Callable[[], int]
) -> None:
    producer = http_route("consumed", "consumed", [{"backendRefs": [to("web-v1", mesh.port)]}])
    consumer = http_route(
        "consumer",
        "consumed",
        [{"backendRefs": [to("web-v2", mesh.port, namespace="default")]}],
        namespace="shop",
    )
    mesh.write_routes(producer, consumer)
    shop = await start_sidecar(
        envoy_factory,
        mesh.plane.xds_port,
        free_port(),
        delta=True,
        node_id="client-0.shop",
        namespace="shop",
    )
    host = f"consumed.default:{mesh.port}"
    await mesh.answers("consumed.default", "/", "web-v1")

    async def shop_routed() -> bool:
        return await shop.who_answers(host) == "web-v2 v1"

    await eventually(shop_routed, within=15, message="the consumer route in shop")
    assert {await shop.who_answers(host) for _ in range(10)} == {"web-v2 v1"}
    assert {await mesh.who("consumed.default") for _ in range(10)} == {"web-v1"}

    # explain and Envoy's own config name the route behind each caller's virtual host.
    name = f"consumed.default.svc.cluster.local:{mesh.port}"
    for sidecar, route in ((mesh.sidecar, "HTTPRoute/default/consumed"),
                           (shop, "HTTPRoute/shop/consumer")):  # fmt: skip
        assert route in await explained_sources(mesh.plane, sidecar.node_id, name)
        assert route in await running_sources(sidecar, name)


async def explained_sources(plane: ControlPlane, node_id: str, vhost: str) -> list[str]:
    for resource in await explain(plane, node_id, "RDS"):
        for host in resource.virtual_hosts:
            if host.name == vhost:
                return [source.key for source in host.sources]
    return []


async def running_sources(sidecar: Sidecar, vhost: str) -> list[str]:
    dump = await sidecar.envoy.config_dump_async(resource="dynamic_route_configs")
    for entry in dump["configs"]:
        for host in entry["route_config"].get("virtual_hosts", []):
            if host["name"] == vhost:
                return stamped_sources(host)
    return []


# -- gRPC ---------------------------------------------------------------------------------


async def start_greeter(name: str, ip: str, port: int) -> grpc.aio.Server:
    """A gRPC server whose every method answers with its own name."""

    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return name.encode()

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(answer)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "mesh.test.Greeter", {"Say": handler, "Count": handler}
            )
        ]
    )
    server.add_insecure_port(f"{ip}:{port}")
    await server.start()
    return server


def grpc_service(name: str, port: int) -> str:
    return yaml_document(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "grpc", "port": port, "appProtocol": "grpc"}]},
        }
    )


async def test_a_grpc_method_match_routes_to_its_backend(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    port = free_port()
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "greeter", "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
            "rules": [
                {"matches": [{"method": {"service": "mesh.test.Greeter", "method": "Say"}}],
                 "backendRefs": [{"name": "greeter-say", "port": port}]},
                {"backendRefs": [{"name": "greeter-rest", "port": port}]},
            ],
        },
    }  # fmt: skip
    mesh = [
        *(grpc_service(name, port) for name in ["greeter", *GREETERS]),
        *(slice_yaml(name, [ip], port).replace("name: http", "name: grpc")
          for name, ip in GREETERS.items()),
        yaml_document(route),
    ]  # fmt: skip
    directory = manifest_directory(tmp_path, {"mesh.yaml": mesh})
    servers = [await start_greeter(name, ip, port) for name, ip in GREETERS.items()]
    try:
        async with running_control_plane(directory, free_port) as plane:
            sidecar = await start_sidecar(envoy_factory, plane.xds_port, free_port(), delta=False)
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{sidecar.outbound_port}",
                options=[("grpc.default_authority", f"greeter:{port}")],
            )
            async with channel:

                async def call(method: str) -> bytes | str:
                    try:
                        reply: bytes = await channel.unary_unary(method)(b"", timeout=5)
                    except grpc.aio.AioRpcError as error:
                        return str(error.code())
                    return reply

                async def routed() -> bool:
                    return await call(SAY) == b"greeter-say"

                await eventually(routed, within=15, message="the GRPCRoute")
                assert {await call(SAY) for _ in range(5)} == {b"greeter-say"}
                assert {await call(COUNT) for _ in range(5)} == {b"greeter-rest"}
    finally:
        await asyncio.gather(*(server.stop(None) for server in servers))
