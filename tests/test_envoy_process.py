"""EnvoyProcess runs real Envoys: they proxy traffic, run side by side, and really stop."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from xds_server.bootstrap import render_bootstrap
from xds_server.envoy_process import (
    EnvoyError,
    EnvoyProcess,
    envoy_binary,
    wait_for,
    wait_for_async,
)

if TYPE_CHECKING:
    from conftest import EnvoyFactory, SampleAppFactory

pytestmark = pytest.mark.envoy


def static_bootstrap(
    *,
    listener_port: int,
    upstream_port: int,
    admin_port: int = 0,
    domains: tuple[str, ...] = ("*",),
) -> str:
    """Envoy with one HTTP listener on 127.0.0.1 routing `domains` to one upstream."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": list(domains),
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ],
        },
        "http_filters": [router],
    }
    config: dict[str, Any] = {
        "node": {"id": "static-test", "cluster": "test"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "http",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listener_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "app",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "app",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(config)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def get(url: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        return await client.get(url, headers=headers)


async def test_envoy_proxies_a_request_to_the_sample_app(
    envoy_factory: EnvoyFactory, sample_app: SampleAppFactory, free_port: Any
) -> None:
    backend = await sample_app(name="backend", version="v1")
    listener_port = free_port()
    envoy = envoy_factory(static_bootstrap(listener_port=listener_port, upstream_port=backend.port))

    response = await get(f"http://127.0.0.1:{listener_port}/hello", **{"x-test": "1"})

    assert response.status_code == 200
    body = response.json()
    assert (body["service"], body["version"], body["path"]) == ("backend", "v1", "/hello")
    assert body["headers"]["x-test"] == "1"
    assert "x-request-id" in body["headers"], "Envoy adds a request id on the way"
    stats = await envoy.stats_async(filter=r"^cluster\.app\.upstream_rq_2xx$")
    assert stats == {"cluster.app.upstream_rq_2xx": 1}


async def test_a_sidecar_carries_call_from_one_app_to_another(
    envoy_factory: EnvoyFactory, sample_app: SampleAppFactory, free_port: Any
) -> None:
    """The demo's shape: frontend -> its sidecar's outbound listener -> backend."""
    backend = await sample_app(name="backend", version="v2")
    outbound_port = free_port()
    envoy_factory(
        static_bootstrap(
            listener_port=outbound_port, upstream_port=backend.port, domains=("backend:8080",)
        )
    )
    frontend = await sample_app(
        name="frontend", upstream_proxy=f"127.0.0.1:{outbound_port}", upstream_host="backend:8080"
    )

    response = await get(f"{frontend.url}/call")

    assert response.status_code == 200
    upstream = response.json()["upstream_response"]
    assert (upstream["service"], upstream["version"]) == ("backend", "v2")
    assert upstream["headers"]["host"] == "backend:8080"


def test_two_envoys_run_at_once_on_their_own_admin_ports(
    envoy_factory: EnvoyFactory, free_port: Any
) -> None:
    ports = [free_port(), free_port()]
    envoys = [
        envoy_factory(
            static_bootstrap(listener_port=free_port(), upstream_port=free_port(), admin_port=port),
            name=f"side-by-side-{index}",
        )
        for index, port in enumerate(ports)
    ]

    assert [envoy.admin_port for envoy in envoys] == ports
    assert envoys[0].pid != envoys[1].pid
    for envoy in envoys:
        assert envoy.is_running
        assert envoy.server_info()["state"] == "LIVE"
        assert envoy.ready()


def test_admin_port_zero_is_discovered(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    assert envoy.admin_port > 0
    assert envoy.admin_url == f"http://127.0.0.1:{envoy.admin_port}"


def test_stop_really_ends_the_process(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    pid = envoy.pid
    assert pid is not None and pid_exists(pid)

    assert envoy.stop() == 0, "SIGTERM is a clean shutdown"

    assert not envoy.is_running
    assert not pid_exists(pid)
    assert envoy.stop() == 0, "stopping twice is harmless"


def test_kill_ends_the_process_at_once(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    pid = envoy.pid
    assert pid is not None
    assert envoy.kill() == -9
    assert not pid_exists(pid)


def test_no_shared_memory_is_left_behind(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    envoy.kill()
    after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    assert {name for name in after - before if "envoy" in name} == set()


def test_context_manager_stops_on_exit(tmp_path: Path, free_port: Any) -> None:
    if envoy_binary() is None:
        pytest.skip("envoy is not on PATH")
    config = tmp_path / "cm.yaml"
    config.write_text(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    envoy = EnvoyProcess(config)
    try:
        with envoy:
            pid = envoy.pid
            assert envoy.is_running
        assert pid is not None and not pid_exists(pid)
        assert envoy.log_path == tmp_path / "cm.log"
    finally:
        envoy.kill()


def test_a_rejected_config_fails_start_with_the_log(envoy_factory: EnvoyFactory) -> None:
    envoy = envoy_factory("static_resources: {clusters: [{name: x, type: NOPE}]}\n", start=False)
    with pytest.raises(EnvoyError, match="did not start") as caught:
        envoy.start(timeout=10)
    assert "NOPE" in str(caught.value), "the log is part of the error"
    assert not envoy.is_running


def test_wait_for_fails_fast_when_envoy_dies(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    envoy.kill()
    with pytest.raises(EnvoyError, match="exited"):
        envoy.wait_for(lambda: False, timeout=30)


def test_admin_views(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    upstream_port = free_port()
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=upstream_port))

    (cluster,) = [c for c in envoy.clusters() if c["name"] == "app"]
    address = cluster["host_statuses"][0]["address"]["socket_address"]
    assert address["port_value"] == upstream_port
    assert [listener["name"] for listener in envoy.listeners()] == ["http"]
    dump = envoy.config_dump(resource="static_clusters")
    assert {c["cluster"]["name"] for c in dump["configs"]} == {"app"}
    assert envoy.admin_get("/ready") == "LIVE\n"
    assert isinstance(envoy.admin_get("/server_info"), dict)
    assert envoy.stats(filter="^server.live$") == {"server.live": 1}
    assert "OK" in envoy.admin_post("/healthcheck/fail")
    with pytest.raises(EnvoyError, match="404"):
        envoy.admin_get("/no-such-admin-path")


def test_a_sidecar_without_a_control_plane_serves_its_admin_api(
    envoy_factory: EnvoyFactory, request: pytest.FixtureRequest
) -> None:
    """The rendered bootstrap starts even before the control plane exists."""
    # A port bound but never listened on refuses every connection for as long as
    # the socket is held; a fixed "closed" port may be served on some machines.
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind(("127.0.0.1", 0))
    request.addfinalizer(closed.close)
    xds_address = f"127.0.0.1:{closed.getsockname()[1]}"
    for delta in (False, True):
        bootstrap = render_bootstrap(
            node_id=f"lonely-{delta}",
            namespace="ns",
            xds_address=xds_address,
            admin_port=0,
            delta=delta,
        )
        envoy = envoy_factory(bootstrap, name=f"lonely-{'delta' if delta else 'sotw'}")
        info = envoy.server_info()
        assert info["node"]["id"] == f"lonely-{delta}"
        assert info["state"] != "LIVE", "still waiting for its first CDS/LDS"
        # Envoy sets connected_state to 1 as it opens each stream attempt, before the
        # connection is refused (and back to 0 then): read it between attempts.
        deadline = time.monotonic() + 10
        while envoy.stats(filter="control_plane.connected_state") != {
            "control_plane.connected_state": 0
        }:
            assert time.monotonic() < deadline, "connected to a control plane that is not there"
            time.sleep(0.05)


async def test_async_helpers(envoy_factory: EnvoyFactory, free_port: Any) -> None:
    envoy = envoy_factory(static_bootstrap(listener_port=free_port(), upstream_port=free_port()))
    clusters = await envoy.wait_for_async(envoy.clusters_async, timeout=5)
    assert "app" in {c["name"] for c in clusters}
    assert (await envoy.config_dump_async(resource="static_listeners"))["configs"]
    assert await envoy.admin_get_async("/ready") == "LIVE\n"
    assert await envoy.listeners_async()


def test_wait_for_returns_the_value_or_times_out() -> None:
    values = iter([0, None, "", "done"])
    assert wait_for(lambda: next(values), timeout=5, interval=0) == "done"
    with pytest.raises(TimeoutError, match="never"):
        wait_for(lambda: False, timeout=0.05, message="never")
    calls = iter([1, 2, 3])

    def flaky() -> int:
        call = next(calls)
        if call < 3:
            raise OSError("connection refused")
        return call

    assert wait_for(flaky, timeout=5, interval=0, ignore=(OSError,)) == 3


async def test_wait_for_async_accepts_sync_and_async_predicates() -> None:
    async def truthy() -> str:
        return "yes"

    assert await wait_for_async(truthy, timeout=1) == "yes"
    assert await wait_for_async(lambda: 3, timeout=1) == 3
    with pytest.raises(TimeoutError):
        await wait_for_async(lambda: 0, timeout=0.05)
