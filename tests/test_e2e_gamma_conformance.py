"""Gateway API mesh conformance (GAMMA), adapted: upstream's scenarios on real Envoy sidecars.

The scenarios and expectation tables of the Gateway API conformance suite
(kubernetes-sigs/gateway-api, `conformance/tests/mesh/*` and the HTTPRoute
tests of `conformance/tests/httproute-*`), each case citing the upstream file
it comes from, run against this project: the file source reads the routes as
YAML, the control plane runs in-process, a real Envoy sidecar is the client's.

How the upstream setup maps onto ours:

* The namespace `gateway-conformance-mesh` holds Services `echo`, `echo-v1`,
  `echo-v2` (and `echo-v3`) with ports `http` 80, `http-alt` 8080 and `grpc`
  7070, as `conformance/mesh/manifests.yaml` declares them; their pods are
  sample apps (`xds_server.sample_app`, which echo service, path and headers)
  on 127.0.58.x.  Nothing binds the Service ports in the sidecar's explicit
  proxy mode, so they are upstream's numbers and a Host without a port means
  port 80, as upstream's requests do.
* Upstream's client is the `echo-v1` pod of the mesh, sending with a Host
  header; ours is a sidecar's outbound listener, sent the same Host.
* Upstream binds every mesh test's routes to `echo`; here they share one
  mesh, so each test's routes bind to a Service of its own, named after it
  (a routing construct without endpoints: whatever answers was chosen by a
  route).  The HTTPRoute tests written for a Gateway get the same treatment:
  their `infra-backend-vN:8080` backends are `echo-vN:8080`.
* What the sample app cannot play (backend-set response headers, per-request
  retry simulation, `?delay=`) `ConformanceEcho` plays, as upstream's
  `echo-advanced` image does (`X-Echo-Set-Header`, `succeedAfter`, ...).
* Upstream retries each case until it is consistently met; here a table is
  retried as a whole until it holds (the routes arrived), then must hold once
  more, every case of it.

A case that cannot apply to a sidecar mesh or to this project stays in its
table with the reason (`skip=`), and is reported as skipped by
`test_cases_that_cannot_apply_here`.  docs/routes.md ("Conformance") lists
what is covered and what is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import math
import textwrap
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from conftest import EnvoyFactory
from e2e_mesh import Sidecar, running_control_plane, start_sidecar, write_documents

from xds_server.sample_app import SampleApp, start_sample_app

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

NS = "gateway-conformance-mesh"
CONSUMER_NS = "gateway-conformance-mesh-consumer"
PODS = {"echo-v1": "127.0.58.1", "echo-v2": "127.0.58.2", "echo-v3": "127.0.58.3"}
ADVANCED = ("echo-advanced", "127.0.58.9")
GRPC_SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
"""Upstream's gRPC echo service (its methods Echo, EchoTwo, EchoThree)."""
CONVERGE_S = 20.0
"""How long a table may take to hold first (the routes reach the sidecar)."""
CONCURRENCY = 8
MODIFY = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {
        "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
        "add": [
            {"name": "X-Header-Add", "value": "header-val-1"},
            {"name": "X-Header-Add-Append", "value": "header-val-2"},
        ],
        "remove": ["X-Header-Remove"],
    },
}
"""The request header modifier upstream's rewrite, mirror and response tests share
(`$MODIFY` in a route's rules)."""


# -- the mesh ---------------------------------------------------------------------------


def service_doc(name: str, *, pods: bool = True, ports: str = "") -> str:
    """A Service with upstream's ports; `pods`: a selector (its EndpointSlice is apart).

    Upstream's `echo` declares its gRPC port `kubernetes.io/h2c`, the pods' Services by
    the port's name; parents here are `echo`'s kind.
    """
    grpc_port: dict[str, Any] = {"name": "grpc", "port": 7070}
    if name not in PODS:
        grpc_port["appProtocol"] = "kubernetes.io/h2c"
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "ports": yaml.safe_load(ports)
            if ports
            else [
                {"name": "http", "port": 80, "appProtocol": "http", "targetPort": 8080},
                {"name": "http-alt", "port": 8080, "appProtocol": "http"},
                grpc_port,
            ]
        },
    }
    if pods:
        document["spec"]["selector"] = {"app": name}
    return json.dumps(document) + "\n"


def slice_doc(service: str, addresses: Sequence[str], http_port: int, grpc_port: int) -> str:
    """The Service's endpoints: each pod serves both HTTP ports on `http_port`."""
    return (
        json.dumps(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service}-slice",
                    "namespace": NS,
                    "labels": {"kubernetes.io/service-name": service},
                },
                "addressType": "IPv4",
                "ports": [
                    {"name": "http", "port": http_port, "protocol": "TCP"},
                    {"name": "http-alt", "port": http_port, "protocol": "TCP"},
                    {"name": "grpc", "port": grpc_port, "protocol": "TCP"},
                ],
                "endpoints": [
                    {"addresses": [address], "conditions": {"ready": True}} for address in addresses
                ],
            }
        )
        + "\n"
    )


def route_doc(
    name: str,
    parent: str,
    rules: str,
    *,
    kind: str = "HTTPRoute",
    port: int | None = 80,
    namespace: str = NS,
    hostnames: Sequence[str] = (),
    created: str | None = None,
) -> str:
    """An upstream route, its rules as upstream's YAML, bound to `parent` in NS."""
    parent_ref: dict[str, Any] = {"group": "", "kind": "Service", "name": parent}
    if port is not None:
        parent_ref["port"] = port
    if namespace != NS:
        parent_ref["namespace"] = NS
    rules = textwrap.dedent(rules).replace("$MODIFY", json.dumps(MODIFY))
    spec: dict[str, Any] = {"parentRefs": [parent_ref], "rules": yaml.safe_load(rules)}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    document = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace}
        | ({"creationTimestamp": created} if created else {}),
        "spec": spec,
    }
    return json.dumps(document) + "\n"


class ConformanceEcho(http.server.ThreadingHTTPServer):
    """What upstream's echo-advanced does that the sample app does not.

    `X-Echo-Set-Header: Name:value,...` sets response headers; `?delay=1s`
    answers late; `?uuid=..&succeedAfter=N[&responseCode=C][&delayRetry=D]`
    fails the first N attempts of that uuid (after D) with C, or by closing
    the connection unanswered when C is not given.  The body is the sample
    app's JSON (service, path, method, headers).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _EchoHandler)
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A late answer to a request Envoy gave up on fails to write: expected here."""


def _seconds(text: str | None) -> float:
    if not text:
        return 0.0
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    return float(text.removesuffix("s"))


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ConformanceEcho

    def do_GET(self) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        time.sleep(min(_seconds(query.get("delay")), 5.0))
        status = 200
        if "succeedAfter" in query:
            with self.server.lock:
                attempt = self.server.attempts.get(query.get("uuid", ""), 0) + 1
                self.server.attempts[query.get("uuid", "")] = attempt
            if attempt <= int(query["succeedAfter"]):
                time.sleep(min(_seconds(query.get("delayRetry")), 5.0))
                if "responseCode" not in query:
                    self.close_connection = True  # no answer: the connection just closes
                    return
                status = int(query["responseCode"])
        names = {name.lower() for name in self.headers}
        body = json.dumps(
            {
                "service": ADVANCED[0],
                "path": self.path,
                "method": self.command,
                "headers": {name: ", ".join(self.headers.get_all(name, [])) for name in names},
            }
        ).encode()
        self.send_response(status)
        for pair in filter(None, (self.headers.get("x-echo-set-header") or "").split(",")):
            name, _, value = pair.partition(":")
            self.send_header(name.strip(), value.strip())
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def start_echo_server(ip: str, port: int) -> grpc.aio.Server:
    """A gRPC pod: every call answers JSON with its name and the metadata it saw."""
    name = next(pod for pod, address in PODS.items() if address == ip)

    async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        seen: dict[str, list[str]] = {}
        for key, value in context.invocation_metadata() or ():
            seen.setdefault(key, []).append(value if isinstance(value, str) else value.decode())
        metadata = {key: ",".join(values) for key, values in seen.items()}
        return json.dumps({"service": name, "headers": metadata}).encode()

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(answer)
    methods = {method: handler for method in ("Echo", "EchoTwo", "EchoThree")}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(GRPC_SERVICE, methods)])
    server.add_insecure_port(f"{ip}:{port}")
    await server.start()
    return server


@dataclass
class Mesh:
    directory: Path
    sidecars: dict[str, Sidecar]
    """By namespace: NS always, CONSUMER_NS when asked for."""
    apps: dict[str, SampleApp]
    client: httpx.AsyncClient
    grpc_port: int

    def write_routes(self, *documents: str) -> None:
        write_documents(self.directory / "routes.yaml", *documents)


@contextlib.asynccontextmanager
async def conformance_mesh(
    tmp_path: Path,
    free_port: Callable[[], int],
    envoy_factory: EnvoyFactory,
    *routes: str,
    parents: Sequence[str] = (),
    extra: Sequence[str] = (),
    consumer: bool = False,
    grpc_pods: bool = False,
) -> AsyncIterator[Mesh]:
    """Upstream's mesh (`conformance/mesh/manifests.yaml`), `routes` and `parents`."""
    http_port, grpc_port = free_port(), free_port()
    directory = tmp_path / "manifests"
    directory.mkdir()
    async with AsyncExitStack() as stack:
        apps = {}
        for name, ip in PODS.items():
            apps[name] = await start_sample_app(name, "v1", ip, http_port)
            stack.push_async_callback(apps[name].close)
        echo = ConformanceEcho((ADVANCED[1], http_port))
        threading.Thread(target=echo.serve_forever, args=(0.05,), daemon=True).start()
        stack.callback(echo.server_close)
        stack.push_async_callback(asyncio.to_thread, echo.shutdown)
        if grpc_pods:
            for ip in PODS.values():
                server = await start_echo_server(ip, grpc_port)
                stack.push_async_callback(server.stop, None)
        pods = {**{name: [ip] for name, ip in PODS.items()}, "echo": list(PODS.values())[:2]}
        pods[ADVANCED[0]] = [ADVANCED[1]]
        write_documents(
            directory / "services.yaml",
            *(service_doc(name) for name in pods),
            *(slice_doc(name, ips, http_port, grpc_port) for name, ips in pods.items()),
            *(service_doc(name, pods=False) for name in parents),
            *extra,
        )
        write_documents(directory / "routes.yaml", *routes)
        plane = await stack.enter_async_context(running_control_plane(directory, free_port))
        sidecars = {NS: await start_sidecar(
            envoy_factory, plane.xds_port, free_port(), delta=False,
            node_id=f"client-0.{NS}", namespace=NS,
        )}  # fmt: skip
        if consumer:
            sidecars[CONSUMER_NS] = await start_sidecar(
                envoy_factory, plane.xds_port, free_port(), delta=True,
                node_id=f"client-0.{CONSUMER_NS}", namespace=CONSUMER_NS,
            )  # fmt: skip
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        )
        yield Mesh(directory, sidecars, apps, client, grpc_port)


# -- cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Redirect:
    """What `Location` must say; None: upstream's default (setRedirectRequestDefaults):
    the request's scheme (http), host and path, and no port or the scheme's own."""

    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None


@dataclass(frozen=True)
class Case:
    """One request and what must come of it (upstream's `http.ExpectedResponse`)."""

    source: str
    """The upstream file (under conformance/tests/) the case comes from."""
    host: str
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    backend: str | None = None
    """The pod that must answer (with 200); None: only `status` counts."""
    status: int = 200
    seen_path: str | None = None
    seen_host: str | None = None
    seen: Mapping[str, str] = field(default_factory=dict)
    """Request headers the backend must see (values as upstream joins them: `a,b`)."""
    unseen: tuple[str, ...] = ()
    backend_sets: Mapping[str, str] = field(default_factory=dict)
    """Response headers the backend is asked to set (X-Echo-Set-Header)."""
    answer: Mapping[str, str] = field(default_factory=dict)
    """Response headers the client must get."""
    not_answered: tuple[str, ...] = ()
    redirect: Redirect | None = None
    caller: str = NS
    skip: str = ""
    """Why the case cannot apply here (it is reported, not run)."""

    def __str__(self) -> str:
        return f"{self.source}: {self.method} {self.host}{self.path} {dict(self.headers)}"


def joined(value: str | None) -> str | None:
    """Header values as upstream compares them: repeated values joined by `,`."""
    return None if value is None else value.replace(", ", ",")


async def mismatches(mesh: Mesh, case: Case) -> list[str]:
    """What differs from the case's expectations (empty: the case holds)."""
    headers = dict(case.headers)
    if case.backend_sets:
        headers["X-Echo-Set-Header"] = ",".join(f"{k}:{v}" for k, v in case.backend_sets.items())
    sidecar = mesh.sidecars[case.caller]
    try:
        response = await mesh.client.request(
            case.method,
            f"http://127.0.0.1:{sidecar.outbound_port}{case.path}",
            headers={"Host": case.host, **headers},
        )
    except httpx.HTTPError as error:
        return [f"{case}: {error!r}"]
    found: list[str] = []
    if response.status_code != case.status:
        return [f"{case}: status {response.status_code}, not {case.status}"]
    for name, value in case.answer.items():
        if joined(response.headers.get(name)) != value:
            found.append(f"{case}: response {name}: {response.headers.get(name)!r} != {value!r}")
    found.extend(
        f"{case}: response {name} present" for name in case.not_answered if name in response.headers
    )
    if case.redirect is not None:
        found.extend(f"{case}: {problem}" for problem in redirect_mismatches(case, response))
    if case.backend is None:
        return found
    body = response.json()
    seen = {name.lower(): joined(value) for name, value in body["headers"].items()}
    if body["service"] != case.backend:
        found.append(f"{case}: answered by {body['service']}, not {case.backend}")
    if case.seen_path is not None and body["path"] != case.seen_path:
        found.append(f"{case}: backend saw path {body['path']!r}, not {case.seen_path!r}")
    if case.seen_host is not None and seen.get("host") != case.seen_host:
        found.append(f"{case}: backend saw host {seen.get('host')!r}, not {case.seen_host!r}")
    for name, value in case.seen.items():
        if seen.get(name.lower()) != value:
            found.append(f"{case}: backend saw {name}: {seen.get(name.lower())!r} != {value!r}")
    found.extend(f"{case}: backend saw {name}" for name in case.unseen if name.lower() in seen)
    return found


def redirect_mismatches(case: Case, response: httpx.Response) -> list[str]:
    """Upstream's redirect comparison (conformance/utils/http/http.go), host defaulting to
    the request's (which upstream cannot know in a mesh, and so does not check)."""
    location = response.headers.get("location", "")
    got = urllib.parse.urlsplit(location)
    want = case.redirect
    assert want is not None
    scheme = want.scheme or "http"
    problems = []
    if got.scheme != scheme:
        problems.append(f"Location {location!r}: scheme is not {scheme}")
    if got.hostname != (want.host or case.host.partition(":")[0]):
        problems.append(f"Location {location!r}: host is not {want.host or case.host}")
    well_known = {"http": 80, "https": 443}[scheme]
    if want.port is None and got.port not in (None, well_known):
        problems.append(f"Location {location!r}: port is neither absent nor {well_known}")
    if want.port is not None and got.port != want.port:
        problems.append(f"Location {location!r}: port is not {want.port}")
    path = want.path or urllib.parse.urlsplit(case.path).path
    if got.path != path:
        problems.append(f"Location {location!r}: path is not {path}")
    return problems


async def run_table(mesh: Mesh, cases: Sequence[Case]) -> list[str]:
    """Every applicable case once (a few at a time): what went wrong."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> list[str]:
        async with gate:
            return await mismatches(mesh, case)

    # A retry case's attempts are counted per uuid: each run gets new ones.
    fresh = [
        dataclasses.replace(case, path=case.path.replace("{uuid}", uuid.uuid4().hex))
        for case in cases
        if not case.skip
    ]
    results = await asyncio.gather(*(one(case) for case in fresh))
    return [problem for found in results for problem in found]


async def converge(
    table: Callable[[], Awaitable[list[str]]], within: float = CONVERGE_S, passes: int = 2
) -> None:
    """`table()` finds nothing wrong `passes` times in a row within `within` seconds:
    upstream's eventually consistent response (the routes must arrive first; a pass
    slowed by a busy machine starts the count again instead of failing)."""
    deadline = time.monotonic() + within
    clean = 0
    while clean < passes:
        found = await table()
        clean = 0 if found else clean + 1
        if found and time.monotonic() > deadline:
            raise AssertionError(f"not met {passes} times in a row in time:\n" + "\n".join(found))
        if found:
            await asyncio.sleep(0.2)


async def assert_table(mesh: Mesh, cases: Sequence[Case]) -> None:
    await converge(lambda: run_table(mesh, cases))


# -- matching ------------------------------------------------------------------------------

MATCHING_ROUTES = [
    # mesh/httproute-matching.yaml
    route_doc("mesh-matching", "matching", """
      - matches:
        - path: {type: PathPrefix, value: /}
        - headers: [{name: version, value: one}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches:
        - path: {type: PathPrefix, value: /v2}
        - headers: [{name: version, value: two}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # mesh/httproute-query-param-matching.yaml
    route_doc("mesh-query-param-matching", "query-params", """
      - matches: [{queryParams: [{name: animal, value: whale}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{queryParams: [{name: animal, value: dolphin}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches:
        - path: {type: PathPrefix, value: /path1}
          queryParams: [{name: animal, value: whale}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches:
        - headers: [{name: version, value: one}]
          queryParams: [{name: animal, value: whale}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches:
        - path: {type: PathPrefix, value: /path3}
          queryParams: [{name: animal, value: shark}]
        - path: {type: PathPrefix, value: /path4}
          headers: [{name: version, value: three}]
          queryParams: [{name: animal, value: kraken}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /path5}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{queryParams: [{name: animal, value: hydra}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # httproute-header-matching.yaml
    route_doc("header-matching", "header-matching", """
      - matches: [{headers: [{name: version, value: one}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{headers: [{name: version, value: two}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # httproute-method-matching.yaml
    route_doc("method-matching", "method-matching", """
      - matches: [{method: POST}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{method: GET}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /path1}, method: GET}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{headers: [{name: version, value: one}], method: PUT}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches:
        - {path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}],
           method: POST}
        backendRefs: [{name: echo-v3, port: 8080}]
      - matches:
        - {path: {type: PathPrefix, value: /path3}, method: PATCH}
        - {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}],
           method: DELETE}
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /path5}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{method: PATCH}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{headers: [{name: version, value: four}]}]
        backendRefs: [{name: echo-v3, port: 8080}]
    """),
    # httproute-path-match-order.yaml
    route_doc("path-matching-order", "path-match-order", """
      - matches: [{path: {type: Exact, value: /match}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: Exact, value: /match/exact}}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{path: {type: Exact, value: /match/exact/one}}]
        backendRefs: [{name: echo-v3, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /match/}}]
        backendRefs: [{name: echo-v3, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /match/prefix/}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /match/prefix/one}}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # httproute-exact-path-matching.yaml
    route_doc("exact-matching", "exact-matching", """
      - matches: [{path: {type: Exact, value: /one}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: Exact, value: /two}}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # httproute-matching-across-routes.yaml: hostnames kept (the mesh ignores them, GEP-1294)
    route_doc("matching-part1", "across-routes", """
      - matches:
        - path: {type: PathPrefix, value: /}
        - headers: [{name: version, value: one}]
        backendRefs: [{name: echo-v1, port: 8080}]
    """, hostnames=["example.com", "example.net"]),
    route_doc("matching-part2", "across-routes", """
      - matches:
        - path: {type: PathPrefix, value: /v2}
        - headers: [{name: version, value: two}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """, hostnames=["example.com"]),
    # mesh/httproute-simple-same-namespace.yaml
    route_doc("gateway-conformance-mesh-test", "simple", """
      - backendRefs: [{name: echo-v1, port: 8080}]
    """),
    # mesh/mesh-split.yaml (its parent is echo itself, as upstream's)
    route_doc("mesh-split", "echo", """
      - matches: [{path: {type: Exact, value: /v1}}]
        backendRefs: [{name: echo-v1, port: 80}]
      - matches: [{path: {type: Exact, value: /v2}}]
        backendRefs: [{name: echo-v2, port: 80}]
    """, port=None),
    # mesh/httproute-named-rule.yaml
    route_doc("mesh-http-named-rules", "named-rule", """
      - name: named-rule
        matches: [{path: {type: PathPrefix, value: /named}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /unnamed}}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # httproute-omitted-backendrefs.yaml
    route_doc("omitted-backendrefs", "omitted-backendrefs", """
      - matches: [{path: {type: Exact, value: /omitted-no-forward}}]
      - matches: [{path: {type: Exact, value: /empty-no-forward}}]
        backendRefs: []
      - matches: [{path: {type: PathPrefix, value: /}}]
        backendRefs: [{name: echo-v1, port: 8080}]
    """),
    # httproute-invalid-nonexistent-backendref.yaml
    route_doc("invalid-nonexistent-backend-ref", "nonexistent-backend", """
      - backendRefs: [{name: nonexistent, port: 8080}]
    """),
    # Ours, from HTTPRouteRule.matches: equal matches in two routes go to the oldest
    # route, then to the first by {namespace}/{name}; a route without a creationTimestamp
    # (a file may give none) comes after every dated one (docs/routes.md).
    route_doc("a-newer", "ties", """
      - matches: [{path: {type: Exact, value: /age}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: Exact, value: /undated}}]
        backendRefs: [{name: echo-v1, port: 8080}]
    """, created="2024-02-01T00:00:00Z"),
    route_doc("b-older", "ties", """
      - matches: [{path: {type: Exact, value: /age}}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """, created="2024-01-01T00:00:00Z"),
    route_doc("c-undated", "ties", """
      - matches: [{path: {type: Exact, value: /undated}}, {path: {type: Exact, value: /name}}]
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    route_doc("d-undated", "ties", """
      - matches: [{path: {type: Exact, value: /name}}]
        backendRefs: [{name: echo-v3, port: 8080}]
    """),
    # httproute-query-param-matching.yaml (the Gateway's: mesh/'s plus case and precedence)
    route_doc("query-param-matching", "query-param-matching", """
      - matches: [{queryParams: [{name: animal, value: whale}]}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{queryParams: [{name: animal, value: dolphin}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches:
        - queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]
        - queryParams: [{name: ANIMAL, value: Whale}]
        backendRefs: [{name: echo-v3, port: 8080}]
      - matches:
        - path: {type: PathPrefix, value: /path1}
          queryParams: [{name: animal, value: whale}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches:
        - headers: [{name: version, value: one}]
          queryParams: [{name: animal, value: whale}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches:
        - path: {type: PathPrefix, value: /path2}
          headers: [{name: version, value: two}]
          queryParams: [{name: animal, value: whale}]
        backendRefs: [{name: echo-v3, port: 8080}]
      - matches:
        - path: {type: PathPrefix, value: /path3}
          queryParams: [{name: animal, value: shark}]
        - path: {type: PathPrefix, value: /path4}
          headers: [{name: version, value: three}]
          queryParams: [{name: animal, value: kraken}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /path5}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{queryParams: [{name: animal, value: hydra}]}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{headers: [{name: version, value: four}]}]
        backendRefs: [{name: echo-v3, port: 8080}]
    """),
]  # fmt: skip
MATCHING_PARENTS = [
    "matching", "query-params", "header-matching", "method-matching", "path-match-order",
    "exact-matching", "across-routes", "simple", "named-rule", "omitted-backendrefs",
    "nonexistent-backend", "query-param-matching", "ties",
]  # fmt: skip


def _cases(source: str, host: str, rows: Sequence[tuple[Any, ...]]) -> list[Case]:
    """Rows of (path, headers, backend or status[, method]) as Cases."""
    cases = []
    for path, headers, expected, *method in rows:
        outcome: dict[str, Any] = (
            {"status": expected} if isinstance(expected, int) else {"backend": expected}
        )
        cases.append(Case(source, host, path, *method, headers=headers, **outcome))
    return cases


V1, V2, V3 = "echo-v1", "echo-v2", "echo-v3"
ACROSS_NET = "the example.net cases need hostnames, which mesh routes ignore (GEP-1294)"
MATCHING_CASES = [
    *_cases("mesh/httproute-matching.go", "matching", [
        ("/", {}, V1),
        ("/example", {}, V1),
        ("/", {"Version": "one"}, V1),
        ("/v2", {}, V2),
        ("/v2/example", {}, V2),
        ("/", {"Version": "two"}, V2),
        ("/v2/", {}, V2),
        ("/v2example", {}, V1),
        ("/foo/v2/example", {}, V1),
    ]),
    *_cases("mesh/httproute-query-param-matching.go", "query-params", [
        ("/?animal=whale", {}, V1),
        ("/?animal=dolphin", {}, V2),
        ("/?animal=whale&otherparam=irrelevant", {}, V1),
        ("/?animal=dolphin&color=yellow", {}, V2),
        ("/?color=blue", {}, 404),
        ("/?animal=dog", {}, 404),
        ("/?animal=whaledolphin", {}, 404),
        ("/", {}, 404),
        ("/path1?animal=whale", {}, V1),
        ("/?animal=whale", {"version": "one"}, V2),
        ("/path3?animal=shark", {}, V1),
        ("/path4?animal=kraken", {"version": "three"}, V1),
        ("/?animal=shark", {}, 404),
        ("/path4?animal=kraken", {}, 404),
        ("/path5?animal=hydra", {}, V1),
    ]),
    *_cases("httproute-query-param-matching.go", "query-param-matching", [
        ("/?animal=whale", {}, V1),
        ("/?animal=dolphin", {}, V2),
        ("/?animal=dolphin&color=blue", {}, V3),
        ("/?ANIMAL=Whale", {}, V3),
        ("/?animal=whale&otherparam=irrelevant", {}, V1),
        ("/?animal=dolphin&color=yellow", {}, V2),
        ("/?color=blue", {}, 404),
        ("/?animal=dog", {}, 404),
        ("/?animal=whaledolphin", {}, 404),
        ("/", {}, 404),
        ("/path1?animal=whale", {}, V1),
        ("/?animal=whale", {"version": "one"}, V2),
        ("/path2?animal=whale", {"version": "two"}, V3),
        ("/path3?animal=shark", {}, V1),
        ("/path4?animal=kraken", {"version": "three"}, V1),
        ("/?animal=shark", {}, 404),
        ("/path4?animal=kraken", {}, 404),
        ("/path5?animal=hydra", {}, V1),
        ("/?animal=hydra", {"version": "four"}, V3),
    ]),
    *_cases("httproute-header-matching.go", "header-matching", [
        ("/", {"Version": "one"}, V1),
        ("/", {"Version": "two"}, V2),
        ("/", {"Version": "two", "Color": "orange"}, V1),
        ("/", {"Version": "two", "Color": "blue"}, V2),
        ("/", {"Color": "orange"}, 404),
        ("/", {"Some-Other-Header": "one"}, 404),
        ("/", {"Color": "blue"}, V1),
        ("/", {"Color": "green"}, V1),
        ("/", {"Color": "red"}, V2),
        ("/", {"Color": "yellow"}, V2),
        ("/", {"Color": "purple"}, 404),
    ]),
    *_cases("httproute-method-matching.go", "method-matching", [
        ("/", {}, V1, "POST"),
        ("/", {}, V2, "GET"),
        ("/", {}, 404, "HEAD"),
        ("/path1", {}, V1, "GET"),
        ("/", {"version": "one"}, V2, "PUT"),
        ("/path2", {"version": "two"}, V3, "POST"),
        ("/path3", {}, V1, "PATCH"),
        ("/path4", {"version": "three"}, V1, "DELETE"),
        ("/", {}, 404, "PUT"),
        ("/path4", {}, 404, "DELETE"),
        ("/path5", {}, V1, "PATCH"),
        ("/", {"version": "four"}, V2, "PATCH"),
    ]),
    *_cases("httproute-path-match-order.go", "path-match-order", [
        ("/match/exact/one", {}, V3),
        ("/match/exact", {}, V2),
        ("/match", {}, V1),
        ("/match/prefix/one/any", {}, V2),
        ("/match/prefix/any", {}, V1),
        ("/match/any", {}, V3),
    ]),
    *_cases("httproute-exact-path-matching.go", "exact-matching", [
        ("/one", {}, V1),
        ("/two", {}, V2),
        ("/", {}, 404),
        ("/one/example", {}, 404),
        ("/two/", {}, 404),
        ("/Two", {}, 404),
    ]),
    # Upstream's Host example.com is the parent here (mesh routes ignore hostnames).
    *_cases("httproute-matching-across-routes.go", "across-routes", [
        ("/", {}, V1),
        ("/example", {}, V1),
        ("/example", {"Version": "one"}, V1),
        ("/v2", {}, V2),
        ("/v2/example", {}, V2),
        ("/", {"Version": "two"}, V2),
    ]),
    Case("httproute-matching-across-routes.go", "example.net", "/example", backend=V1,
         skip=ACROSS_NET),
    Case("httproute-matching-across-routes.go", "example.net", "/v2", backend=V1,
         skip=ACROSS_NET),
    Case("mesh/httproute-simple-same-namespace.go", "simple", "/", backend=V1),
    Case("mesh/mesh-split.go", "echo", "/v1", backend=V1),
    Case("mesh/mesh-split.go", "echo", "/v2", backend=V2),
    # Upstream expects the path /named for /unnamed too, which no rule here rewrites:
    # the backend sees the path as sent.
    Case("mesh/httproute-named-rule.go", "named-rule", "/named", backend=V1, seen_path="/named"),
    Case("mesh/httproute-named-rule.go", "named-rule", "/unnamed", backend=V2,
         seen_path="/unnamed"),
    *_cases("httproute-omitted-backendrefs.go", "omitted-backendrefs", [
        ("/forward", {}, V1),
        ("/omitted-no-forward", {}, 500),
        ("/empty-no-forward", {}, 500),
    ]),
    Case("httproute-invalid-nonexistent-backendref.go", "nonexistent-backend", "/", status=500),
    *_cases("(spec) HTTPRouteRule.matches ties", "ties", [
        ("/age", {}, V2),  # b-older is older than a-newer
        ("/undated", {}, V1),  # a-newer is dated, c-undated is not
        ("/name", {}, V2),  # both undated: c- before d-
    ]),
]  # fmt: skip


async def test_matching_and_precedence(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with conformance_mesh(
        tmp_path, free_port, envoy_factory, *MATCHING_ROUTES, parents=MATCHING_PARENTS
    ) as mesh:
        await assert_table(mesh, MATCHING_CASES)


# -- filters and redirects ------------------------------------------------------------------

HEADER_RULES = """
  - matches: [{path: {type: PathPrefix, value: /set}}]
    {where}: [{type: RequestHeaderModifier, requestHeaderModifier: {
      set: [{name: X-Header-Set, value: set-overwrites-values}]}}]
  - matches: [{path: {type: PathPrefix, value: /add}}]
    {where}: [{type: RequestHeaderModifier, requestHeaderModifier: {
      add: [{name: X-Header-Add, value: add-appends-values}]}}]
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    {where}: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]
  - matches: [{path: {type: PathPrefix, value: /multiple}}]
    {where}: [{type: RequestHeaderModifier, requestHeaderModifier: {
      set: [{name: X-Header-Set-1, value: header-set-1},
            {name: X-Header-Set-2, value: header-set-2}],
      add: [{name: X-Header-Add-1, value: header-add-1},
            {name: X-Header-Add-2, value: header-add-2},
            {name: X-Header-Add-3, value: header-add-3}],
      remove: [X-Header-Remove-1, X-Header-Remove-2]}}]
  - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
    {where}: [{type: RequestHeaderModifier, requestHeaderModifier: {
      set: [{name: X-Header-Set, value: header-set}],
      add: [{name: X-Header-Add, value: header-add}],
      remove: [X-Header-Remove]}}]
"""
"""mesh/httproute-request-header-modifier(-backend).yaml: on the rule, or on its backendRef."""


def header_rules(on_backend: bool) -> str:
    """Each rule to echo-v1:8080, its filters on the rule or on the backendRef."""
    rules = yaml.safe_load(HEADER_RULES.replace("{where}", "filters"))
    for rule in rules:
        ref = {"name": V1, "port": 8080}
        if on_backend:
            ref["filters"] = rule.pop("filters")
        rule["backendRefs"] = [ref]
    return json.dumps(rules)


SENT = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1"}
MODIFIED = {
    "X-Header-Add": "header-val-1",
    "X-Header-Add-Append": "append-val-1,header-val-2",
    "X-Header-Set": "set-overwrites-values",
}

FILTER_ROUTES = [
    route_doc("mesh-request-header-modifier", "request-headers", header_rules(False)),
    route_doc("mesh-request-header-modifier", "backend-request-headers", header_rules(True))
    .replace('"name": "mesh-request-header-modifier"', '"name": "mesh-backend-header-modifier"'),
    # mesh/httproute-rewrite-path.yaml
    route_doc("mesh-rewrite-path", "rewrite-path", """
      - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch,
                   replacePrefixMatch: /one}}}]
        backendRefs: [{name: echo-v1, port: 80}]
      - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch,
                   replacePrefixMatch: /}}}]
        backendRefs: [{name: echo-v1, port: 80}]
      - matches: [{path: {type: PathPrefix, value: /full/one}}]
        filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath,
                   replaceFullPath: /one}}}]
        backendRefs: [{name: echo-v1, port: 80}]
      - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
        filters:
        - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}}
        - $MODIFY
        backendRefs: [{name: echo-v1, port: 80}]
      - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
        filters:
        - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch,
            replacePrefixMatch: /prefix}}}
        - $MODIFY
        backendRefs: [{name: echo-v1, port: 80}]
    """),
    # httproute-rewrite-host.yaml (its hostname rewrite.example is the parent's name here)
    route_doc("rewrite-host", "rewrite-host", """
      - matches: [{path: {type: PathPrefix, value: /one}}]
        filters: [{type: URLRewrite, urlRewrite: {hostname: one.example.org}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - filters: [{type: URLRewrite, urlRewrite: {hostname: example.org}}]
        backendRefs: [{name: echo-v2, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /rewrite-host-and-modify-headers}}]
        filters:
        - {type: URLRewrite, urlRewrite: {hostname: test.example.org}}
        - $MODIFY
        backendRefs: [{name: echo-v2, port: 8080}]
    """),
    # httproute-backend-url-rewrite.yaml: the filter on the rule's one backendRef
    route_doc("backend-url-rewrite", "backend-url-rewrite", """
      - matches: [{path: {type: PathPrefix, value: /full}}]
        backendRefs: [{name: echo-v1, port: 8080, filters: [{type: URLRewrite,
          urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /rewritten-full}}}]}]
      - matches: [{path: {type: PathPrefix, value: /prefix}}]
        backendRefs: [{name: echo-v1, port: 8080, filters: [{type: URLRewrite,
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten-prefix}}}]}]
    """),
    # httproute-response-header-modifier.yaml (the backend is echo-advanced)
    route_doc("response-header-modifier", "response-headers", """
      - matches: [{path: {type: PathPrefix, value: /set}}]
        filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {
          set: [{name: X-Header-Set, value: set-overwrites-values}]}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /add}}]
        filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {
          add: [{name: X-Header-Add, value: add-appends-values}]}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /remove}}]
        filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {
          remove: [X-Header-Remove]}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /multiple}}]
        filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {
          set: [{name: X-Header-Set-1, value: header-set-1},
                {name: X-Header-Set-2, value: header-set-2}],
          add: [{name: X-Header-Add-1, value: header-add-1},
                {name: X-Header-Add-2, value: header-add-2},
                {name: X-Header-Add-3, value: header-add-3}],
          remove: [X-Header-Remove-1, X-Header-Remove-2]}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
        filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {
          set: [{name: X-Header-Set, value: header-set}],
          add: [{name: X-Header-Add, value: header-add},
                {name: x-lowercase-add, value: lowercase-add},
                {name: x-Mixedcase-ADD-1, value: mixedcase-add-1},
                {name: X-mixeDcase-add-2, value: mixedcase-add-2},
                {name: X-UPPERCASE-ADD, value: uppercase-add}],
          remove: [X-Header-Remove]}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /response-and-request-header-modifiers}}]
        filters:
        - {type: ResponseHeaderModifier, responseHeaderModifier: {
            set: [{name: X-Header-Set-1, value: header-set-1},
                  {name: X-Header-Set-2, value: header-set-2}],
            add: [{name: X-Header-Add-1, value: header-add-1},
                  {name: X-Header-Add-2, value: header-add-2}],
            remove: [X-Header-Remove-1, X-Header-Remove-2]}}
        - $MODIFY
        backendRefs: [{name: echo-advanced, port: 8080}]
    """),
]  # fmt: skip
REDIRECT_ROUTES = [
    # mesh/httproute-30{3,7,8}-redirect.yaml
    *(route_doc(f"mesh-{code}-redirect", f"redirect-{code}", """
      - matches: [{path: {type: PathPrefix, value: $PATH}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: $CODE}}]
    """.replace("$PATH", path).replace("$CODE", str(code)))
      for code, path in ((303, "/redirect"), (307, "/temporary"), (308, "/permanent"))),
    # mesh/httproute-redirect-host-and-status.yaml
    route_doc("mesh-redirect-host-and-status", "redirect-host", """
      - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301,
                                                              hostname: example.org}}]
    """),
    # mesh/httproute-redirect-path.yaml
    route_doc("mesh-redirect-path", "redirect-path", """
      - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
        filters: [{type: RequestRedirect, requestRedirect: {
          path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
      - matches: [{path: {type: PathPrefix, value: /full}}]
        filters: [{type: RequestRedirect, requestRedirect: {
          path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]
      - matches: [{path: {type: PathPrefix, value: /path-and-host}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org,
          path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
      - matches: [{path: {type: PathPrefix, value: /path-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301,
          path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
      - matches: [{path: {type: PathPrefix, value: /full-path-and-host}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org,
          path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]
      - matches: [{path: {type: PathPrefix, value: /full-path-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301,
          path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}}]
    """),
    # mesh/httproute-redirect-port.yaml
    route_doc("mesh-redirect-port", "redirect-port", """
      - matches: [{path: {type: PathPrefix, value: /port}}]
        filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
      - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
      - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
      - matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {port: 8083, hostname: example.org,
          statusCode: 302}}]
    """),
    # mesh/httproute-redirect-scheme.yaml
    route_doc("mesh-redirect-scheme", "redirect-scheme", """
      - matches: [{path: {type: PathPrefix, value: /scheme}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, scheme: https}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-and-host-and-status}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302,
          hostname: example.org}}]
    """),
    # httproute-redirect-port-and-scheme.yaml: the listeners on 80 and 8080 are the parent's
    # ports 80 and 8080 (its HTTPS listener on 443 has no mesh counterpart).
    route_doc("http-route-for-listener-on-port-80", "redirect-port-scheme", """
      - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-nil}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-80}}]
        filters: [{type: RequestRedirect, requestRedirect: {port: 80, hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-8080}}]
        filters: [{type: RequestRedirect, requestRedirect: {port: 8080, hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-nil}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-443}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 443,
                                                              hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-8443}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443,
                                                              hostname: example.org}}]
    """),
    route_doc("http-route-for-listener-on-port-8080", "redirect-port-scheme", """
      - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-nil}}]
        filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-80}}]
        filters: [{type: RequestRedirect, requestRedirect: {port: 80, hostname: example.org}}]
      - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-nil}}]
        filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
    """, port=8080),
    # httproute-backend-request-redirect.yaml: the filter on the rule's one backendRef
    route_doc("backend-request-redirect", "backend-request-redirect", """
      - matches: [{path: {type: PathPrefix, value: /full}}]
        backendRefs: [{name: echo-v1, port: 8080, filters: [{type: RequestRedirect,
          requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /redirected-full}}}]}]
      - matches: [{path: {type: PathPrefix, value: /prefix}}]
        backendRefs: [{name: echo-v1, port: 8080, filters: [{type: RequestRedirect,
          requestRedirect: {path: {type: ReplacePrefixMatch,
                                   replacePrefixMatch: /redirected-prefix}}}]}]
    """),
    # Ours, from HTTPRequestRedirectFilter.port ("If redirect scheme is empty, the redirect
    # port MUST be the Gateway Listener port"): a Service without port 80, called without
    # a port in Host (its first HTTP port answers to the bare name).
    route_doc("redirect-listener-port", "redirect-alt", """
      - matches: [{path: {type: PathPrefix, value: /redirect}}]
        filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]
    """, port=None),
]  # fmt: skip
FILTER_PARENTS = [
    "request-headers", "backend-request-headers", "rewrite-path", "rewrite-host",
    "response-headers", "backend-url-rewrite", "redirect-303", "redirect-307", "redirect-308",
    "redirect-host", "redirect-path", "redirect-port", "redirect-scheme", "redirect-port-scheme",
    "backend-request-redirect",
]  # fmt: skip
ALT_PARENT = service_doc(
    "redirect-alt", pods=False, ports="[{name: http-alt, port: 8080, appProtocol: http}]"
)


def header_cases(source: str, host: str) -> list[Case]:
    """mesh/httproute-request-header-modifier.go's table (it serves both manifests)."""
    return [
        Case(source, host, "/set", headers={"Some-Other-Header": "val"}, backend=V1,
             seen_path="/set",
             seen={"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
        Case(source, host, "/set", headers={"Some-Other-Header": "val",
                                            "X-Header-Set": "some-other-value"},
             backend=V1, seen={"Some-Other-Header": "val",
                               "X-Header-Set": "set-overwrites-values"}),
        Case(source, host, "/add", headers={"Some-Other-Header": "val"}, backend=V1,
             seen={"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}),
        Case(source, host, "/add", headers={"Some-Other-Header": "val",
                                            "X-Header-Add": "some-other-value"},
             backend=V1, seen={"Some-Other-Header": "val",
                               "X-Header-Add": "some-other-value,add-appends-values"}),
        Case(source, host, "/remove", headers={"X-Header-Remove": "val"}, backend=V1,
             seen_path="/remove", unseen=("X-Header-Remove",)),
        Case(source, host, "/multiple",
             headers={"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                      "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val"},
             backend=V1,
             seen={"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                   "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2",
                   "X-Header-Add-3": "header-add-3", "Another-Header": "another-header-val"},
             unseen=("X-Header-Remove-1", "X-Header-Remove-2")),
        Case(source, host, "/case-insensitivity",
             headers={"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                      "x-header-remove": "original-val-remove",
                      "Another-Header": "another-header-val"},
             backend=V1,
             seen={"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
                   "Another-Header": "another-header-val"},
             unseen=("x-header-remove",)),
    ]  # fmt: skip


RESPONSE = "httproute-response-header-modifier.go"
ADV = ADVANCED[0]
FILTER_CASES = [
    *header_cases("mesh/httproute-request-header-modifier.go", "request-headers"),
    *header_cases("mesh/httproute-request-header-modifier.go (backend)",
                  "backend-request-headers"),
    # mesh/httproute-rewrite-path.go
    *(Case("mesh/httproute-rewrite-path.go", "rewrite-path", path, backend=V1, seen_path=seen)
      for path, seen in (("/prefix/one/two", "/one/two"), ("/strip-prefix/three", "/three"),
                         ("/strip-prefix", "/"), ("/full/one/two", "/one"))),
    Case("mesh/httproute-rewrite-path.go", "rewrite-path",
         "/full/rewrite-path-and-modify-headers/test",
         headers={**SENT, "X-Header-Set": "set-val"}, backend=V1, seen_path="/test",
         seen=MODIFIED, unseen=("X-Header-Remove",)),
    Case("mesh/httproute-rewrite-path.go", "rewrite-path",
         "/prefix/rewrite-path-and-modify-headers/one",
         headers={**SENT, "X-Header-Set": "set-val"}, backend=V1, seen_path="/prefix/one",
         seen=MODIFIED, unseen=("X-Header-Remove",)),
    # httproute-rewrite-host.go
    Case("httproute-rewrite-host.go", "rewrite-host", "/one", backend=V1, seen_path="/one",
         seen_host="one.example.org"),
    Case("httproute-rewrite-host.go", "rewrite-host", "/two", backend=V2, seen_path="/two",
         seen_host="example.org"),
    Case("httproute-rewrite-host.go", "rewrite-host", "/rewrite-host-and-modify-headers",
         headers=SENT, backend=V2, seen_host="test.example.org", seen=MODIFIED,
         unseen=("X-Header-Remove",)),
    # httproute-backend-url-rewrite.go
    Case("httproute-backend-url-rewrite.go", "backend-url-rewrite", "/full/original",
         backend=V1, seen_path="/rewritten-full"),
    Case("httproute-backend-url-rewrite.go", "backend-url-rewrite", "/prefix/original",
         backend=V1, seen_path="/rewritten-prefix/original"),
    # httproute-response-header-modifier.go
    Case(RESPONSE, "response-headers", "/set", backend=ADV,
         backend_sets={"Some-Other-Header": "val"},
         answer={"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
    Case(RESPONSE, "response-headers", "/set", backend=ADV,
         backend_sets={"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
         answer={"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"}),
    Case(RESPONSE, "response-headers", "/add", backend=ADV,
         backend_sets={"Some-Other-Header": "val"},
         answer={"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"}),
    Case(RESPONSE, "response-headers", "/add", backend=ADV,
         backend_sets={"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
         answer={"Some-Other-Header": "val",
                 "X-Header-Add": "some-other-value,add-appends-values"}),
    Case(RESPONSE, "response-headers", "/remove", backend=ADV,
         backend_sets={"X-Header-Remove": "val"}, not_answered=("X-Header-Remove",)),
    Case(RESPONSE, "response-headers", "/multiple", backend=ADV,
         backend_sets={"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                       "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val",
                       "X-Header-Remove-1": "val"},
         answer={"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                 "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2",
                 "X-Header-Add-3": "header-add-3", "Another-Header": "another-header-val"},
         not_answered=("X-Header-Remove-1", "X-Header-Remove-2")),
    Case(RESPONSE, "response-headers", "/case-insensitivity", backend=ADV,
         backend_sets={"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                       "x-header-remove": "original-val-remove",
                       "Another-Header": "another-header-val"},
         answer={"X-Header-Set": "header-set", "X-Header-Add": "original-val-add,header-add",
                 "X-Lowercase-Add": "lowercase-add", "X-Mixedcase-Add-1": "mixedcase-add-1",
                 "X-Mixedcase-Add-2": "mixedcase-add-2", "X-Uppercase-Add": "uppercase-add",
                 "Another-Header": "another-header-val"},
         not_answered=("X-Header-Remove",)),
    Case(RESPONSE, "response-headers", "/response-and-request-header-modifiers", backend=ADV,
         headers={**SENT, "X-Header-Echo": "echo"},
         backend_sets={"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2",
                       "X-Header-Remove-2": "remove-val-2", "Another-Header": "another-header-val",
                       "X-Header-Remove-1": "remove-val-1", "X-Header-Echo": "echo"},
         seen={**MODIFIED, "X-Header-Echo": "echo"}, unseen=("X-Header-Remove",),
         answer={"X-Header-Set-1": "header-set-1", "X-Header-Set-2": "header-set-2",
                 "X-Header-Add-1": "header-add-1", "X-Header-Add-2": "add-val-2,header-add-2",
                 "Another-Header": "another-header-val", "X-Header-Echo": "echo"},
         not_answered=("X-Header-Remove-1", "X-Header-Remove-2")),
]  # fmt: skip


def redirect_case(source: str, parent: str, sent: str, status: int, **expected: Any) -> Case:
    """A request to `parent` + `sent` answered `status` with the `Redirect` `expected`."""
    return Case(f"mesh/{source}", parent, sent, status=status, redirect=Redirect(**expected))


EXAMPLE = "example.org"
REDIRECT_CASES = [
    redirect_case("httproute-303-redirect.go", "redirect-303", "/redirect", 303),
    redirect_case("httproute-307-redirect.go", "redirect-307", "/temporary", 307),
    redirect_case("httproute-308-redirect.go", "redirect-308", "/permanent", 308),
    redirect_case("httproute-redirect-host-and-status.go", "redirect-host", "/hostname-redirect",
                  302, host=EXAMPLE),
    redirect_case("httproute-redirect-host-and-status.go", "redirect-host", "/host-and-status",
                  301, host=EXAMPLE),
    redirect_case("httproute-redirect-path.go", "redirect-path", "/original-prefix/lemon", 302,
                  path="/replacement-prefix/lemon"),
    redirect_case("httproute-redirect-path.go", "redirect-path", "/full/path/original", 302,
                  path="/full-path-replacement"),
    redirect_case("httproute-redirect-path.go", "redirect-path", "/path-and-host", 302,
                  host=EXAMPLE, path="/replacement-prefix"),
    redirect_case("httproute-redirect-path.go", "redirect-path", "/path-and-status", 301,
                  path="/replacement-prefix"),
    redirect_case("httproute-redirect-path.go", "redirect-path", "/full-path-and-host", 302,
                  host=EXAMPLE, path="/replacement-full"),
    redirect_case("httproute-redirect-path.go", "redirect-path", "/full-path-and-status", 301,
                  path="/replacement-full"),
    redirect_case("httproute-redirect-port.go", "redirect-port", "/port", 302, port=8083),
    redirect_case("httproute-redirect-port.go", "redirect-port", "/port-and-host", 302,
                  host=EXAMPLE, port=8083),
    redirect_case("httproute-redirect-port.go", "redirect-port", "/port-and-status", 301,
                  port=8083),
    redirect_case("httproute-redirect-port.go", "redirect-port", "/port-and-host-and-status",
                  302, host=EXAMPLE, port=8083),
    redirect_case("httproute-redirect-scheme.go", "redirect-scheme", "/scheme", 302,
                  scheme="https"),
    redirect_case("httproute-redirect-scheme.go", "redirect-scheme", "/scheme-and-host", 302,
                  scheme="https", host=EXAMPLE),
    redirect_case("httproute-redirect-scheme.go", "redirect-scheme", "/scheme-and-status", 301,
                  scheme="https"),
    redirect_case("httproute-redirect-scheme.go", "redirect-scheme",
                  "/scheme-and-host-and-status", 302, scheme="https", host=EXAMPLE),
    *(Case("httproute-redirect-port-and-scheme.go", host, path, status=302,
           redirect=Redirect(scheme=scheme, host=EXAMPLE, port=port))
      for host, path, scheme, port in (
          ("redirect-port-scheme", "/scheme-nil-and-port-nil", "http", None),
          ("redirect-port-scheme", "/scheme-nil-and-port-80", "http", None),
          ("redirect-port-scheme", "/scheme-nil-and-port-8080", "http", 8080),
          ("redirect-port-scheme", "/scheme-https-and-port-nil", "https", None),
          ("redirect-port-scheme", "/scheme-https-and-port-443", "https", None),
          ("redirect-port-scheme", "/scheme-https-and-port-8443", "https", 8443),
          ("redirect-port-scheme:8080", "/scheme-nil-and-port-nil", "http", 8080),
          ("redirect-port-scheme:8080", "/scheme-nil-and-port-80", "http", None),
          ("redirect-port-scheme:8080", "/scheme-https-and-port-nil", "https", None),
      )),
    Case("httproute-redirect-port-and-scheme.go", "example.org", "/scheme-nil-and-port-nil",
         status=302, redirect=Redirect(scheme="https", host=EXAMPLE),
         skip="its https-listener-on-443 cases need a Gateway's HTTPS listener: mesh traffic "
              "reaches the sidecar as plaintext HTTP, and TLS is not a route's"),
    Case("httproute-backend-request-redirect.go", "backend-request-redirect",
         "/full/original", status=302, redirect=Redirect(path="/redirected-full")),
    Case("httproute-backend-request-redirect.go", "backend-request-redirect",
         "/prefix/original", status=302, redirect=Redirect(path="/redirected-prefix/original")),
    # Ours (see REDIRECT_ROUTES): the listener port is the Service port 8080.
    Case("(spec) HTTPRequestRedirectFilter.port", "redirect-alt", "/redirect", status=303,
         redirect=Redirect(port=8080)),
    Case("(spec) HTTPRequestRedirectFilter.port", "redirect-alt:8080", "/redirect", status=303,
         redirect=Redirect(port=8080)),
]  # fmt: skip


async def test_filters_rewrites_and_redirects(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with conformance_mesh(
        tmp_path, free_port, envoy_factory, *FILTER_ROUTES, *REDIRECT_ROUTES,
        parents=FILTER_PARENTS, extra=[ALT_PARENT],
    ) as mesh:  # fmt: skip
        await assert_table(mesh, [*FILTER_CASES, *REDIRECT_CASES])


# -- weights and mirrors ------------------------------------------------------------------

WEIGHT_ROUTES = [
    # mesh/httproute-weight.yaml
    route_doc("mesh-weighted-backends", "weight", """
      - backendRefs: [{name: echo-v1, port: 8080, weight: 70},
                      {name: echo-v2, port: 8080, weight: 30}]
    """),
    # httproute-weight.yaml
    route_doc("weighted-backends", "weight-zero", """
      - backendRefs: [{name: echo-v1, port: 8080, weight: 70},
                      {name: echo-v2, port: 8080, weight: 30},
                      {name: echo-v3, port: 8080, weight: 0}]
    """),
    # httproute-request-header-modifier-backend-weights.yaml
    route_doc("request-header-modifier-backend-weights", "backend-weights", """
      - backendRefs:
        - name: echo-v1
          port: 8080
          weight: 10
          filters: [{type: RequestHeaderModifier,
                     requestHeaderModifier: {set: [{name: Backend, value: echo-v1}]}}]
        - name: echo-v2
          port: 8080
          weight: 10
          filters: [{type: RequestHeaderModifier,
                     requestHeaderModifier: {set: [{name: Backend, value: echo-v2}]}}]
    """),
    # httproute-request-mirror.yaml, httproute-request-multiple-mirrors.yaml and
    # httproute-request-percentage-mirror.yaml (one route: their paths do not overlap)
    route_doc("request-mirror", "mirror", """
      - matches: [{path: {type: PathPrefix, value: /mirror}}]
        filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /mirror-and-modify-headers}}]
        filters:
        - $MODIFY
        - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}}}
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /multi-mirror}}]
        filters:
        - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v3, port: 8080}}}
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /multi-mirror-and-modify-request-headers}}]
        filters:
        - $MODIFY
        - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v3, port: 8080}}}
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /percent-mirror}}]
        filters: [{type: RequestMirror, requestMirror: {
          backendRef: {name: echo-v2, port: 8080}, percent: 20}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /percent-mirror-fraction}}]
        filters: [{type: RequestMirror, requestMirror: {
          backendRef: {name: echo-v2, port: 8080}, fraction: {numerator: 25, denominator: 50}}}]
        backendRefs: [{name: echo-v1, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /percent-mirror-and-modify-headers}}]
        filters:
        - $MODIFY
        - {type: RequestMirror, requestMirror: {
            backendRef: {name: echo-v2, port: 8080}, percent: 35}}
        backendRefs: [{name: echo-v1, port: 8080}]
    """),
]  # fmt: skip
MIRROR_CASES = [
    # httproute-request-mirror.go / httproute-request-multiple-mirrors.go: the client sees
    # only the primary (echo-v1) and its request as the filters made it.
    Case("httproute-request-mirror.go", "mirror", "/mirror", backend=V1, seen_path="/mirror"),
    Case("httproute-request-mirror.go", "mirror", "/mirror-and-modify-headers", headers=SENT,
         backend=V1, seen=MODIFIED, unseen=("X-Header-Remove",)),
    Case("httproute-request-multiple-mirrors.go", "mirror", "/multi-mirror", backend=V1),
    Case("httproute-request-multiple-mirrors.go", "mirror",
         "/multi-mirror-and-modify-request-headers", headers=SENT, backend=V1, seen=MODIFIED,
         unseen=("X-Header-Remove",)),
    Case("httproute-request-percentage-mirror.go", "mirror", "/percent-mirror", backend=V1),
]  # fmt: skip
SAMPLES = 300
BATCH = 20


async def answered_by(mesh: Mesh, host: str, path: str, count: int) -> list[str]:
    """Who answered each of `count` requests (bounded in time), or `HTTP <code>`."""
    deadline = time.monotonic() + 45

    async def one() -> str:
        response = await mesh.client.get(
            f"http://127.0.0.1:{mesh.sidecars[NS].outbound_port}{path}", headers={"Host": host}
        )
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        body = response.json()
        if body["headers"].get("backend", body["service"]) != body["service"]:
            return f"{body['service']} with Backend: {body['headers']['backend']}"
        return str(body["service"])

    answers: list[str] = []
    while len(answers) < count:
        assert time.monotonic() < deadline, f"{count} requests took too long"
        answers.extend(
            await asyncio.gather(*(one() for _ in range(min(BATCH, count - len(answers)))))
        )
    return answers


def within_four_sigma(count: int, total: int, share: float) -> bool:
    return abs(count - total * share) <= 4 * math.sqrt(total * share * (1 - share))


async def settled_hits(apps: Sequence[SampleApp], at_least: Sequence[int] = ()) -> list[int]:
    """The apps' hit counters once mirrored copies stop arriving: each at least the
    given count, then unchanged for half a second (bounded)."""
    deadline = time.monotonic() + 15
    history = [[app.hits for app in apps]]
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        history = [*history[-2:], [app.hits for app in apps]]
        reached = all(now >= low for now, low in zip(history[-1], at_least, strict=False))
        if reached and len(history) == 3 and history[0] == history[1] == history[2]:
            break
    return history[-1]


async def test_weights_and_mirrors(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    parents = ["weight", "weight-zero", "backend-weights", "mirror"]
    async with conformance_mesh(
        tmp_path, free_port, envoy_factory, *WEIGHT_ROUTES, parents=parents
    ) as mesh:
        await assert_table(mesh, MIRROR_CASES)
        v1, v2, v3 = (mesh.apps[name] for name in (V1, V2, V3))

        # httproute-request-mirror.go, httproute-request-multiple-mirrors.go: every
        # request reaches each mirror once.
        for path, mirrors in (("/mirror", [v2]), ("/multi-mirror", [v2, v3])):
            before = await settled_hits([v1, v2, v3])
            answers = await answered_by(mesh, "mirror", path, 20)
            assert answers == [V1] * 20
            due = [count + 20 for count in before[:2]] + [before[2] + 20 * (v3 in mirrors)]
            after = await settled_hits([v1, v2, v3], due)
            copies = {
                app.name: b - a for app, a, b in zip([v1, v2, v3], before, after, strict=True)
            }
            assert copies == {V1: 20, V2: 20, V3: 20 if v3 in mirrors else 0}, (path, copies)

        # httproute-request-percentage-mirror.go: percent 20, fraction 25/50, percent 35.
        for path, share in (("/percent-mirror", 0.2), ("/percent-mirror-fraction", 0.5),
                            ("/percent-mirror-and-modify-headers", 0.35)):  # fmt: skip
            before = await settled_hits([v2])
            assert set(await answered_by(mesh, "mirror", path, SAMPLES)) == {V1}
            (copies,) = [b - a for a, b in zip(before, await settled_hits([v2]), strict=True)]
            assert within_four_sigma(copies, SAMPLES, share), (path, copies, share)

        # mesh/httproute-weight.go and httproute-weight.go: 70/30 (and 0 for echo-v3).
        for parent in ("weight", "weight-zero"):
            answers = await answered_by(mesh, parent, "/", SAMPLES)
            assert set(answers) <= {V1, V2}, set(answers)
            assert within_four_sigma(answers.count(V1), SAMPLES, 0.7), (parent, answers.count(V1))

        # httproute-request-header-modifier-backend-weights.go: 100 requests, each backend
        # sees the header its own backendRef sets (answered_by flags any other).
        answers = await answered_by(mesh, "backend-weights", "/", 100)
        assert set(answers) == {V1, V2}, set(answers)


# -- timeouts and retries -----------------------------------------------------------------

TIMEOUT_ROUTES = [
    # httproute-timeout-request.yaml
    route_doc("request-timeout", "request-timeout", """
      - matches: [{path: {type: PathPrefix, value: /request-timeout}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
        timeouts: {request: 500ms}
      - matches: [{path: {type: PathPrefix, value: /disable-request-timeout}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
        timeouts: {request: 0s}
    """),
    # httproute-timeout-backend-request.yaml
    route_doc("backend-request-timeout", "backend-timeout", """
      - matches: [{path: {type: PathPrefix, value: /backend-timeout}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
        timeouts: {backendRequest: 500ms}
      - matches: [{path: {type: PathPrefix, value: /disable-backend-timeout}}]
        backendRefs: [{name: echo-advanced, port: 8080}]
        timeouts: {backendRequest: 0s}
    """),
    # httproute-retry.yaml, httproute-retry-with-timeouts.yaml,
    # httproute-retry-connection-error.yaml (one parent: their paths do not overlap)
    route_doc("retries", "retry", """
      - matches: [{path: {type: PathPrefix, value: /retry/code-500-attempts-3}}]
        retry: {codes: [500], attempts: 3}
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /retry/code-all-attempts-2}}]
        retry: {codes: [500, 502, 503, 504], attempts: 2}
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /retry/backend-request-timeout-200ms}}]
        retry: {attempts: 2}
        timeouts: {backendRequest: 200ms}
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /retry/request-timeout-200ms}}]
        retry: {codes: [500], attempts: 5}
        timeouts: {backendRequest: 200ms, request: 400ms}
        backendRefs: [{name: echo-advanced, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /retry/no-status-code-attempts-3}}]
        retry: {attempts: 3}
        backendRefs: [{name: echo-advanced, port: 8080}]
    """),
]  # fmt: skip


def retry_case(source: str, path: str, status: int, **simulation: str) -> Case:
    query = urllib.parse.urlencode({"uuid": "{uuid}", **simulation}, safe="{}")
    return Case(source, "retry", f"{path}?{query}", status=status)


RETRY = "httproute-retry.go"
WITH_TIMEOUTS = "httproute-retry-with-timeouts.go"
CONNECTION = "httproute-retry-connection-error.go"
A3, ALL2 = "/retry/code-500-attempts-3", "/retry/code-all-attempts-2"
TIMEOUT_CASES = [
    Case("httproute-timeout-request.go", "request-timeout", "/request-timeout", backend=ADV),
    Case("httproute-timeout-request.go", "request-timeout", "/request-timeout?delay=1s",
         status=504),
    Case("httproute-timeout-request.go", "request-timeout", "/disable-request-timeout?delay=1s",
         backend=ADV),
    Case("httproute-timeout-backend-request.go", "backend-timeout", "/backend-timeout",
         backend=ADV),
    Case("httproute-timeout-backend-request.go", "backend-timeout", "/backend-timeout?delay=1s",
         status=504),
    Case("httproute-timeout-backend-request.go", "backend-timeout",
         "/disable-backend-timeout?delay=1s", backend=ADV),
    retry_case(RETRY, A3, 200, responseCode="500", succeedAfter="2"),
    retry_case(RETRY, A3, 500, responseCode="500", succeedAfter="4"),
    retry_case(RETRY, A3, 503, responseCode="503", succeedAfter="2"),
    *(retry_case(RETRY, ALL2, status, responseCode=code, succeedAfter=after)
      for code in ("500", "502", "503", "504")
      for after, status in (("1", 200), ("3", int(code)))),
    retry_case(WITH_TIMEOUTS, "/retry/backend-request-timeout-200ms", 200, responseCode="500",
               succeedAfter="2", delayRetry="300ms"),
    retry_case(WITH_TIMEOUTS, "/retry/backend-request-timeout-200ms", 504, responseCode="500",
               succeedAfter="3", delayRetry="300ms"),
    retry_case(WITH_TIMEOUTS, "/retry/request-timeout-200ms", 200, responseCode="500",
               succeedAfter="1"),
    retry_case(WITH_TIMEOUTS, "/retry/request-timeout-200ms", 504, responseCode="500",
               succeedAfter="4", delayRetry="100ms"),
    retry_case(CONNECTION, "/retry/no-status-code-attempts-3", 200, succeedAfter="2"),
    # Upstream accepts 500 or 503; Envoy answers 503 when the upstream resets.
    retry_case(CONNECTION, "/retry/no-status-code-attempts-3", 503, succeedAfter="4"),
]  # fmt: skip


async def test_timeouts_and_retries(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    parents = ["request-timeout", "backend-timeout", "retry"]
    async with conformance_mesh(
        tmp_path, free_port, envoy_factory, *TIMEOUT_ROUTES, parents=parents
    ) as mesh:
        await assert_table(mesh, TIMEOUT_CASES)


# -- mesh binding: ports, frontends, consumers ------------------------------------------------

PORT_ROUTES = [
    # mesh/mesh-ports.yaml
    route_doc("mesh-split-v1", "echo-v1", """
      - filters: [{type: ResponseHeaderModifier,
                   responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}]
        backendRefs: [{name: echo-v1, port: 80}]
    """),
    route_doc("mesh-split-v2", "echo-v2", """
      - filters: [{type: ResponseHeaderModifier,
                   responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}]
        backendRefs: [{name: echo-v2, port: 80}]
    """, port=None),
]  # fmt: skip
FRONTEND_ROUTES = [
    # mesh/mesh-frontend.yaml
    route_doc("mesh-split-v1", "echo-v2", """
      - filters: [{type: ResponseHeaderModifier,
                   responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
        backendRefs: [{name: echo-v2, port: 80}]
    """, port=None),
]  # fmt: skip
CONSUMER_ROUTES = [
    # mesh/mesh-consumer-route.yaml
    route_doc("mesh-echo-add-header", "echo-v1", """
      - filters: [{type: ResponseHeaderModifier,
                   responseHeaderModifier: {set: [{name: X-Header-Set, value: set}]}}]
        backendRefs: [{name: echo-v1, namespace: gateway-conformance-mesh, port: 80}]
    """, port=None, namespace=CONSUMER_NS),
]  # fmt: skip
SET = "X-Header-Set"
BASIC_CASES = [Case("mesh/mesh-basic.go", "echo", backend=None)]
PORT_CASES = [
    Case("mesh/mesh-ports.go", "echo-v1", backend=V1, answer={SET: "v1"}),
    Case("mesh/mesh-ports.go", "echo-v1:8080", backend=V1, not_answered=(SET,)),
    Case("mesh/mesh-ports.go", "echo-v2", backend=V2, answer={SET: "v2"}),
    Case("mesh/mesh-ports.go", "echo-v2:8080", backend=V2, answer={SET: "v2"}),
]
FRONTEND_CASES = [
    Case("mesh/mesh-frontend.go", "echo-v2", backend=V2, answer={SET: "set"}),
    Case("mesh/mesh-frontend.go", f"{PODS[V2]}:8080", backend=V2, not_answered=(SET,),
         skip="a pod IP bypasses the Service's routes only through capture mode's passthrough "
              "(translate/capture.py, needs iptables in a network namespace); the explicit "
              "proxy this test uses routes by Host and has no virtual host for a pod IP"),
    # mesh/mesh-frontend-hostname.go: the cluster IP decides, not Host.
    Case("mesh/mesh-frontend-hostname.go", "echo-v1", backend=V2, answer={SET: "set"},
         skip="SupportMeshClusterIPMatching (optional) is not claimed: routes are chosen by "
              "Host, also in capture mode (its chains pick HTTP by cluster IP, then route by "
              "Host)"),
]  # fmt: skip
CONSUMER_CASES = [
    Case("mesh/mesh-consumer-route.go", f"echo-v1.{NS}", backend=V1, answer={SET: "set"},
         caller=CONSUMER_NS),
    Case("mesh/mesh-consumer-route.go", f"echo-v1.{NS}", backend=V1, not_answered=(SET,)),
]  # fmt: skip


async def test_ports_frontends_and_consumer_routes(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with conformance_mesh(tmp_path, free_port, envoy_factory, consumer=True) as mesh:
        # mesh/mesh-basic.go: no routes, and the mesh client reaches echo.
        await assert_table(mesh, BASIC_CASES)
        # Upstream applies each manifest to its own test; here they follow one another.
        for routes, cases in ((PORT_ROUTES, PORT_CASES), (FRONTEND_ROUTES, FRONTEND_CASES),
                              (CONSUMER_ROUTES, CONSUMER_CASES)):  # fmt: skip
            mesh.write_routes(*routes)
            await assert_table(mesh, cases)


# -- gRPC ---------------------------------------------------------------------------------------

GRPC_ROUTES = [
    # mesh/grpcroute-weight.yaml
    route_doc("mesh-grpc-weighted-backends", "grpc-weight", """
      - backendRefs: [{name: echo-v1, port: 7070, weight: 70},
                      {name: echo-v2, port: 7070, weight: 30},
                      {name: echo-v3, port: 7070, weight: 0}]
    """, kind="GRPCRoute", port=7070),
    # mesh/grpcroute-request-header-modifier.yaml
    route_doc("grpc-request-header-modifier", "grpc-headers", """
      - matches: [{headers: [{name: x-test-case, value: set}]}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {
          set: [{name: x-header-set, value: set-overwrites-values}]}}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{headers: [{name: x-test-case, value: add}]}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {
          add: [{name: x-header-add, value: add-appends-values}]}}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{headers: [{name: x-test-case, value: remove}]}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {
          remove: [x-header-remove]}}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{headers: [{name: x-test-case, value: multi}]}]
        filters: [{type: RequestHeaderModifier, requestHeaderModifier: {
          set: [{name: x-header-set-1, value: header-set-1},
                {name: x-header-set-2, value: header-set-2}],
          add: [{name: x-header-add-1, value: header-add-1},
                {name: x-header-add-2, value: header-add-2}],
          remove: [x-header-remove-1, x-header-remove-2]}}]
        backendRefs: [{name: echo-v2, port: 7070}]
    """, kind="GRPCRoute", port=7070),
]  # fmt: skip
# grpcroute-exact-method-matching.yaml and grpcroute-header-matching.yaml
GRPC_MATCH_ROUTES = [
    route_doc("grpc-exact-method-matching", "grpc-method-matching", """
      - matches: [{method: {service: $SERVICE, method: Echo}}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{method: {service: $SERVICE, method: EchoTwo}}]
        backendRefs: [{name: echo-v2, port: 7070}]
    """.replace("$SERVICE", GRPC_SERVICE), kind="GRPCRoute", port=7070),
    route_doc("grpc-header-matching", "grpc-header-matching", """
      - matches: [{headers: [{name: version, value: one}]}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{headers: [{name: version, value: two}]}]
        backendRefs: [{name: echo-v2, port: 7070}]
      - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]
        backendRefs: [{name: echo-v1, port: 7070}]
      - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]
        backendRefs: [{name: echo-v2, port: 7070}]
    """, kind="GRPCRoute", port=7070),
]  # fmt: skip
GRPC_PARENTS = ["grpc-weight", "grpc-headers", "grpc-method-matching", "grpc-header-matching"]


@dataclass(frozen=True)
class GrpcCase:
    """One call and what must come of it (upstream's `grpc.ExpectedResponse`)."""

    source: str
    parent: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    method: str = "Echo"
    backend: str | None = None
    """The pod that must answer; None: the call fails with `code`."""
    code: grpc.StatusCode = grpc.StatusCode.OK
    seen: Mapping[str, str] = field(default_factory=dict)
    """Metadata the backend must see (repeated values joined by `,`)."""
    unseen: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.source}: {self.parent} {self.method} {dict(self.metadata)}"


UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
"""What a call no GRPCRoute rule matches gets (Envoy's 404, as gRPC maps it)."""
MODIFIER = "mesh/grpcroute-request-header-modifier.go"
GRPC_CASES = [
    GrpcCase("grpcroute-exact-method-matching.go", "grpc-method-matching", backend=V1),
    GrpcCase("grpcroute-exact-method-matching.go", "grpc-method-matching", method="EchoTwo",
             backend=V2),
    GrpcCase("grpcroute-exact-method-matching.go", "grpc-method-matching", method="EchoThree",
             code=UNIMPLEMENTED),
    *(GrpcCase("grpcroute-header-matching.go", "grpc-header-matching", metadata, **outcome)
      for metadata, outcome in (
          ({"version": "one"}, {"backend": V1}),
          ({"version": "two"}, {"backend": V2}),
          ({"version": "two", "color": "orange"}, {"backend": V1}),
          ({"version": "two", "color": "blue"}, {"backend": V2}),
          ({"color": "orange"}, {"code": UNIMPLEMENTED}),
          ({"some-other-header": "one"}, {"code": UNIMPLEMENTED}),
          ({"color": "blue"}, {"backend": V1}),
          ({"color": "green"}, {"backend": V1}),
          ({"color": "red"}, {"backend": V2}),
          ({"color": "yellow"}, {"backend": V2}),
          ({"color": "purple"}, {"code": UNIMPLEMENTED}),
      )),
    GrpcCase(MODIFIER, "grpc-headers",
             {"x-test-case": "set", "some-other-header": "this-header-should-be-set",
              "x-header-set": "this-value-should-be-overwritten"}, backend=V1,
             seen={"x-test-case": "set", "some-other-header": "this-header-should-be-set",
                   "x-header-set": "set-overwrites-values"}),
    GrpcCase(MODIFIER, "grpc-headers",
             {"x-test-case": "add", "x-header-add": "this-value-should-be-appended"}, backend=V1,
             seen={"x-test-case": "add",
                   "x-header-add": "this-value-should-be-appended,add-appends-values"}),
    GrpcCase(MODIFIER, "grpc-headers",
             {"x-test-case": "remove", "x-header-remove": "this-should-be-removed"}, backend=V1,
             seen={"x-test-case": "remove"}, unseen=("x-header-remove",)),
    GrpcCase(MODIFIER, "grpc-headers",
             {"x-test-case": "multi", "x-header-set-2": "set-header-2",
              "x-header-add-2": "add-header-2", "x-header-remove-2": "should-be-removed-2"},
             backend=V2,
             seen={"x-test-case": "multi", "x-header-set-1": "header-set-1",
                   "x-header-set-2": "header-set-2", "x-header-add-1": "header-add-1",
                   "x-header-add-2": "add-header-2,header-add-2"},
             unseen=("x-header-remove-1", "x-header-remove-2")),
]  # fmt: skip


async def grpc_call(
    target: str, parent: str, method: str = "Echo", metadata: Mapping[str, str] | None = None
) -> tuple[grpc.StatusCode, dict[str, Any]]:
    """One unary call through the sidecar with `:authority` `parent:7070`."""
    options = [("grpc.default_authority", f"{parent}:7070")]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        try:
            reply = await channel.unary_unary(f"/{GRPC_SERVICE}/{method}")(
                b"", metadata=list((metadata or {}).items()), timeout=5
            )
        except grpc.aio.AioRpcError as error:
            return error.code(), {}
    answer: dict[str, Any] = json.loads(reply)
    return grpc.StatusCode.OK, answer


async def grpc_mismatches(target: str, case: GrpcCase) -> list[str]:
    code, answer = await grpc_call(target, case.parent, case.method, case.metadata)
    if case.backend is None:
        return [] if code == case.code else [f"{case}: {code}, not {case.code}"]
    if code != grpc.StatusCode.OK:
        return [f"{case}: {code}"]
    found = [] if answer["service"] == case.backend else [f"{case}: by {answer['service']}"]
    seen = answer["headers"]
    found += [f"{case}: saw {k}: {seen.get(k)!r}" for k, v in case.seen.items() if seen.get(k) != v]
    return found + [f"{case}: saw {name}" for name in case.unseen if name in seen]


async def test_grpc_routes(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: EnvoyFactory
) -> None:
    async with conformance_mesh(
        tmp_path, free_port, envoy_factory, *GRPC_ROUTES, *GRPC_MATCH_ROUTES,
        parents=GRPC_PARENTS, grpc_pods=True,
    ) as mesh:  # fmt: skip
        target = f"127.0.0.1:{mesh.sidecars[NS].outbound_port}"

        async def table() -> list[str]:
            results = await asyncio.gather(*(grpc_mismatches(target, c) for c in GRPC_CASES))
            return [problem for found in results for problem in found]

        await converge(table)

        # mesh/grpcroute-weight.go: 70/30, none to the weight-0 backend (one channel).
        options = [("grpc.default_authority", "grpc-weight:7070")]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            answers: list[str] = []
            stop = time.monotonic() + 45
            while len(answers) < SAMPLES:
                assert time.monotonic() < stop, "the gRPC split took too long"
                batch = await asyncio.gather(
                    *(channel.unary_unary(f"/{GRPC_SERVICE}/Echo")(b"", timeout=5)
                      for _ in range(BATCH))
                )  # fmt: skip
                answers.extend(json.loads(reply)["service"] for reply in batch)
            assert set(answers) <= {V1, V2}, set(answers)
            assert within_four_sigma(answers.count(V1), len(answers), 0.7), answers.count(V1)


# -- what cannot apply here -------------------------------------------------------------------

ALL_TABLES = [
    *MATCHING_CASES, *FILTER_CASES, *REDIRECT_CASES, *MIRROR_CASES, *TIMEOUT_CASES,
    *BASIC_CASES, *PORT_CASES, *FRONTEND_CASES, *CONSUMER_CASES,
]  # fmt: skip


@pytest.mark.parametrize(
    "case", [case for case in ALL_TABLES if case.skip], ids=lambda case: case.source
)
def test_cases_that_cannot_apply_here(case: Case) -> None:
    pytest.skip(f"{case}: {case.skip}")
