"""Spec: a BackendPolicy's fault injection and local rate limit, on the target's sidecar.

A policy spec in, the inbound side's filters out: which Envoy filter each part
becomes, with which values, in which order, on which ports (explicit inbound
listeners and captured `virtual_inbound` chains), named in provenance; what
is rejected and how it is named; that a port without such a policy keeps its
exact bytes; and that a real Envoy accepts the result (`envoy --mode validate`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import (
    local_rate_limit_pb2 as http_rate_limit_pb2,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.local_ratelimit.v3 import (
    local_rate_limit_pb2 as network_rate_limit_pb2,
)
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format
from test_translate_envoy_validate import as_served, inline_everything, validate
from translate_builders import (
    endpoint,
    endpoint_slice,
    grpc,
    http,
    plaintext_chain,
    proxy,
    service,
    tcp,
)

from xds_server.model import ChangeSet, MeshSnapshot, Proxy, Service
from xds_server.model.policy import BackendPolicy
from xds_server.pipeline.reads import TrackedMesh
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.translate import inbound_policy, proxy_clusters, proxy_listeners
from xds_server.translate.filters import ROUTER, TCP_PROXY
from xds_server.translate.inbound import inbound_ports
from xds_server.translate.inbound_policy import (
    FAULT,
    HTTP_LOCAL_RATE_LIMIT,
    NETWORK_LOCAL_RATE_LIMIT,
    RATE_LIMITED_HEADER,
    InvalidInboundPolicy,
    has_inbound_effect,
    inbound_http_filters,
    inbound_network_filters,
    inbound_policy_errors,
    per_million,
)
from xds_server.translate.provenance import stamped_sources

MILLION = percent_pb2.FractionalPercent.MILLION
POD_IP = "10.0.0.5"

WEB = service("web", http(80, target=8080), grpc(9090), selector={"app": "web"})
DB = service("db", tcp(5432, name="pg"), selector={"app": "web"})
OTHER = service("other", http(80, target=8081), selector={"app": "other"})
WEB_SIDECAR = proxy("web-1", labels={"app": "web"}, ip=POD_IP)
OTHER_SIDECAR = proxy("other-1", labels={"app": "other"}, ip="10.0.0.6")


def spec_of(yaml_like: dict[str, object]) -> api.BackendPolicySpec:
    """A spec from its CRD (camelCase JSON) form, as a manifest writes it."""
    return json_format.ParseDict(yaml_like, api.BackendPolicySpec())


def policy(
    spec: dict[str, object], *targets: str, namespace: str = "default", name: str = "p"
) -> BackendPolicy:
    refs = [{"kind": "Service", "name": target} for target in targets]
    return BackendPolicy.of(namespace, name, spec_of({"targetRefs": refs, **spec}))


def snapshot(*objects: Service | BackendPolicy) -> MeshSnapshot:
    changes = ChangeSet()
    for obj in [*objects, endpoint_slice(WEB, endpoint(POD_IP))]:
        changes.upsert(obj)
    mesh, _ = MeshSnapshot().apply(changes)
    return mesh


def listeners(mesh: MeshSnapshot, sidecar: Proxy = WEB_SIDECAR) -> dict[str, listener_pb2.Listener]:
    return {listener.name: listener for listener in proxy_listeners(mesh, sidecar)}


def hcm_of(chain: listener_components_pb2.FilterChain) -> hcm_pb2.HttpConnectionManager:
    (network_filter,) = chain.filters
    hcm = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(hcm), network_filter.name
    return hcm


def filter_names(hcm: hcm_pb2.HttpConnectionManager) -> list[str]:
    return [f.name for f in hcm.http_filters]


def fault_of(hcm: hcm_pb2.HttpConnectionManager) -> fault_pb2.HTTPFault:
    (found,) = [f for f in hcm.http_filters if f.name == FAULT]
    fault = fault_pb2.HTTPFault()
    assert found.typed_config.Unpack(fault)
    return fault


def limit_of(hcm: hcm_pb2.HttpConnectionManager) -> http_rate_limit_pb2.LocalRateLimit:
    (found,) = [f for f in hcm.http_filters if f.name == HTTP_LOCAL_RATE_LIMIT]
    limit = http_rate_limit_pb2.LocalRateLimit()
    assert found.typed_config.Unpack(limit)
    return limit


def serialized(messages: Iterable[listener_pb2.Listener]) -> list[bytes]:
    return [m.SerializeToString(deterministic=True) for m in messages]


DELAY = {"faultInjection": {"delay": {"fixedDelay": "0.250s", "percentage": 12.5}}}
ABORT = {"faultInjection": {"abort": {"httpStatus": 503, "percentage": 33.3333}}}
LIMIT = {"localRateLimit": {"maxTokens": 5, "tokensPerFill": 2, "fillInterval": "10s"}}
BOTH = {
    "faultInjection": {"delay": {"fixedDelay": "1s"}, "abort": {"httpStatus": 418}},
    "localRateLimit": {"maxTokens": 3, "fillInterval": "1s"},
}


# -- the filters, from a spec -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        (DELAY, [FAULT]),
        (ABORT, [FAULT]),
        (LIMIT, [HTTP_LOCAL_RATE_LIMIT]),
        (BOTH, [HTTP_LOCAL_RATE_LIMIT, FAULT]),
        ({}, []),
        ({"faultInjection": {}}, []),  # neither delay nor abort: nothing to inject
        ({"connectTimeout": "2s", "loadBalancer": {"algorithm": "Random"}}, []),
    ],
    ids=["delay", "abort", "limit", "both", "empty", "empty-fault", "callers-only"],
)
def test_each_part_becomes_one_filter_rate_limit_first(
    spec: dict[str, object], names: list[str]
) -> None:
    got = inbound_http_filters(policy(spec, "web"), "inbound_8080")
    assert [f.name for f in got] == names
    assert has_inbound_effect(policy(spec, "web")) is bool(names)


def test_a_delay_holds_the_share_of_requests_for_the_fixed_delay() -> None:
    (found,) = inbound_http_filters(policy(DELAY, "web"), "inbound_8080")
    fault = fault_pb2.HTTPFault()
    assert found.typed_config.Unpack(fault)
    assert fault.delay.fixed_delay.ToMilliseconds() == 250
    assert (fault.delay.percentage.numerator, fault.delay.percentage.denominator) == (
        125_000,
        MILLION,
    )
    assert not fault.HasField("abort")


def test_an_abort_answers_the_share_of_requests_with_the_status() -> None:
    (found,) = inbound_http_filters(policy(ABORT, "web"), "inbound_8080")
    fault = fault_pb2.HTTPFault()
    assert found.typed_config.Unpack(fault)
    assert fault.abort.http_status == 503
    assert (fault.abort.percentage.numerator, fault.abort.percentage.denominator) == (
        333_333,
        MILLION,
    )
    assert not fault.HasField("delay")


def test_an_unset_percentage_means_every_request() -> None:
    hcm = hcm_pb2.HttpConnectionManager(http_filters=inbound_http_filters(policy(BOTH, "web"), "x"))
    fault = fault_of(hcm)
    assert fault.delay.percentage.numerator == 1_000_000
    assert fault.abort.percentage.numerator == 1_000_000
    assert fault.abort.http_status == 418


@pytest.mark.parametrize(
    ("percent", "numerator"),
    [(0, 0), (0.0001, 1), (0.01, 100), (12.5, 125_000), (50, 500_000), (99.9999, 999_999)],
)
def test_percentages_are_kept_to_a_millionth(percent: float, numerator: int) -> None:
    assert per_million(percent) == percent_pb2.FractionalPercent(
        numerator=numerator, denominator=MILLION
    )


def test_a_rate_limit_is_a_token_bucket_answering_429_with_a_marker() -> None:
    hcm = hcm_pb2.HttpConnectionManager(
        http_filters=inbound_http_filters(policy(LIMIT, "web"), "inbound_8080")
    )
    limit = limit_of(hcm)
    assert limit.stat_prefix == "inbound_8080"
    assert limit.status.code == 429
    bucket = limit.token_bucket
    assert (bucket.max_tokens, bucket.tokens_per_fill.value, bucket.fill_interval.seconds) == (
        5,
        2,
        10,
    )
    for share in (limit.filter_enabled, limit.filter_enforced):
        value = share.default_value
        assert value.numerator == 100
        assert value.denominator == percent_pb2.FractionalPercent.HUNDRED
    (header,) = limit.response_headers_to_add
    assert (header.header.key, header.header.value) == (RATE_LIMITED_HEADER, "true")
    assert not limit.local_rate_limit_per_downstream_connection  # one bucket per port


def test_an_unset_tokens_per_fill_adds_one_token() -> None:
    hcm = hcm_pb2.HttpConnectionManager(http_filters=inbound_http_filters(policy(BOTH, "web"), "x"))
    assert limit_of(hcm).token_bucket.tokens_per_fill.value == 1


def test_on_tcp_the_bucket_counts_connections() -> None:
    (found,) = inbound_network_filters(policy(LIMIT, "db"), "inbound_5432")
    assert found.name == NETWORK_LOCAL_RATE_LIMIT
    limit = network_rate_limit_pb2.LocalRateLimit()
    assert found.typed_config.Unpack(limit)
    assert limit.stat_prefix == "inbound_5432"
    assert (limit.token_bucket.max_tokens, limit.token_bucket.fill_interval.seconds) == (5, 10)
    assert inbound_network_filters(policy(DELAY, "db"), "inbound_5432") == []  # HTTP-only
    assert inbound_network_filters(None, "inbound_5432") == []


# -- what Envoy would reject is rejected here, naming the field ------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"faultInjection": {"delay": {"fixedDelay": "0s"}}},
            "spec.faultInjection.delay.fixedDelay: must be greater than 0s",
        ),
        (
            {"faultInjection": {"delay": {"fixedDelay": "1s", "percentage": 100.5}}},
            "spec.faultInjection.delay.percentage: 100.5 is not in 0-100",
        ),
        (
            {"faultInjection": {"abort": {"httpStatus": 600}}},
            "spec.faultInjection.abort.httpStatus: 600 is not in 200-599",
        ),
        (
            {"faultInjection": {"abort": {"httpStatus": 503, "percentage": -1}}},
            "spec.faultInjection.abort.percentage: -1.0 is not in 0-100",
        ),
        (
            {"localRateLimit": {"maxTokens": 0, "fillInterval": "1s"}},
            "spec.localRateLimit.maxTokens: must be at least 1",
        ),
        (
            {"localRateLimit": {"maxTokens": 1, "tokensPerFill": 0, "fillInterval": "1s"}},
            "spec.localRateLimit.tokensPerFill: must be at least 1",
        ),
        (
            {"localRateLimit": {"maxTokens": 1, "fillInterval": "0.010s"}},
            "spec.localRateLimit.fillInterval: must be at least 0.050s",
        ),
        (
            {"localRateLimit": {"maxTokens": 1}},
            "spec.localRateLimit.fillInterval: must be at least 0.050s",
        ),
    ],
    ids=[
        "zero-delay",
        "delay-share",
        "status",
        "abort-share",
        "max-tokens",
        "tokens-per-fill",
        "fast-fill",
        "no-fill",
    ],
)
def test_values_envoy_rejects_are_errors_naming_the_policy_and_field(
    spec: dict[str, object], message: str
) -> None:
    bad = policy(spec, "web", namespace="shop", name="chaos")
    (error,) = inbound_policy_errors(bad)
    assert error.startswith(message)
    with pytest.raises(InvalidInboundPolicy, match=r"^BackendPolicy shop/chaos: spec\."):
        inbound_http_filters(bad, "inbound_8080")


def test_a_bad_policy_fails_only_the_proxies_it_governs() -> None:
    bad = policy({"faultInjection": {"delay": {"fixedDelay": "0s"}}}, "web")
    mesh = snapshot(WEB, OTHER, bad)
    with pytest.raises(InvalidInboundPolicy):
        proxy_listeners(mesh, WEB_SIDECAR)
    assert listeners(mesh, OTHER_SIDECAR)  # its Service has no policy: translates as ever


# -- on the proxy: which ports, which bytes ---------------------------------------------


def test_the_targets_http_ports_run_the_filters_before_the_router() -> None:
    found = listeners(snapshot(WEB, DB, policy(BOTH, "web")))
    for name in ("inbound_8080", "inbound_9090"):
        chain = plaintext_chain(found[name])
        assert filter_names(hcm_of(chain)) == [HTTP_LOCAL_RATE_LIMIT, FAULT, ROUTER], name
    # db selects the same pod and has no policy: its port is untouched.
    chain = plaintext_chain(found["inbound_5432"])
    assert [f.name for f in chain.filters] == [TCP_PROXY]


def test_a_tcp_target_port_gets_the_connection_limit_before_the_tcp_proxy() -> None:
    chain = plaintext_chain(listeners(snapshot(WEB, DB, policy(LIMIT, "db")))["inbound_5432"])
    assert [f.name for f in chain.filters] == [NETWORK_LOCAL_RATE_LIMIT, TCP_PROXY]


def test_the_listener_names_the_policy_among_its_sources_and_the_cluster_does_not() -> None:
    mesh = snapshot(WEB, policy(LIMIT, "web", name="limits"))
    listener = listeners(mesh)["inbound_8080"]
    assert stamped_sources(listener) == ("BackendPolicy/default/limits", "Service/default/web")
    clusters = {c.name: c for c in proxy_clusters(mesh, WEB_SIDECAR)}
    assert "BackendPolicy/default/limits" not in stamped_sources(clusters["inbound|8080||"])


@pytest.mark.parametrize(
    "governing",
    [
        None,
        policy({"connectTimeout": "2s"}, "web"),  # about callers only
        policy(BOTH, "other"),  # another Service's
        policy(BOTH, "web", namespace="elsewhere"),  # attaches to nothing here
    ],
    ids=["none", "callers-only", "other-service", "other-namespace"],
)
def test_a_port_without_an_inbound_policy_keeps_todays_bytes(
    governing: BackendPolicy | None,
) -> None:
    today = snapshot(WEB, DB, OTHER)
    with_policy = snapshot(WEB, DB, OTHER, *([governing] if governing else []))
    for sidecar in (WEB_SIDECAR, dataclasses.replace(WEB_SIDECAR, interception="redirect")):
        assert serialized(proxy_listeners(with_policy, sidecar)) == serialized(
            proxy_listeners(today, sidecar)
        )
    assert all(p.policy is None for p in inbound_ports(with_policy, WEB_SIDECAR))


def test_namespace_and_mesh_defaults_reach_every_sidecar_they_govern() -> None:
    namespace_default = BackendPolicy.of("default", "ns-default", spec_of(LIMIT))
    mesh_default = BackendPolicy.of("mesh-system", "mesh-default", spec_of(DELAY))
    for governing, name in ((namespace_default, HTTP_LOCAL_RATE_LIMIT), (mesh_default, FAULT)):
        mesh = snapshot(WEB, OTHER, governing)
        for sidecar, port in ((WEB_SIDECAR, "inbound_8080"), (OTHER_SIDECAR, "inbound_8081")):
            chain = plaintext_chain(listeners(mesh, sidecar)[port])
            assert filter_names(hcm_of(chain)) == [name, ROUTER]


def test_two_services_on_one_target_port_share_the_first_ones_policy() -> None:
    canary = service("web-canary", http(80, target=8080), selector={"app": "web"})
    mesh = snapshot(WEB, canary, policy(ABORT, "web-canary", name="canary-faults"))
    # web sorts first but has no such policy: web-canary's applies to the shared port.
    (port,) = [p for p in inbound_ports(mesh, WEB_SIDECAR) if p.port == 8080]
    assert port.policy is not None and port.policy.name == "canary-faults"


def test_inbound_translation_reads_the_policies_that_may_govern_the_proxy() -> None:
    reads: set[tuple[object, ...]] = set()
    proxy_listeners(TrackedMesh(snapshot(WEB, OTHER), reads), WEB_SIDECAR)
    policy_facts = {fact for fact in reads if "BackendPolicy" in str(fact)}
    assert len(policy_facts) == 2  # the proxy's namespace and the root namespace
    assert {fact[-1] for fact in policy_facts} == {"default", "mesh-system"}
    # A proxy with no inbound side reads no policy.
    reads.clear()
    proxy_listeners(TrackedMesh(snapshot(WEB), reads), proxy("client", labels={}))
    assert not {fact for fact in reads if "BackendPolicy" in str(fact)}


def test_changing_the_policy_changes_only_the_targets_listeners() -> None:
    before = snapshot(WEB, OTHER, policy(LIMIT, "web"))
    after = snapshot(WEB, OTHER, policy(BOTH, "web"))
    assert serialized(proxy_listeners(before, OTHER_SIDECAR)) == serialized(
        proxy_listeners(after, OTHER_SIDECAR)
    )
    assert serialized(proxy_listeners(before, WEB_SIDECAR)) != serialized(
        proxy_listeners(after, WEB_SIDECAR)
    )


# -- captured traffic: the virtual inbound listener -------------------------------------


CAPTURED = dataclasses.replace(WEB_SIDECAR, interception="redirect")


def inbound_chains(mesh: MeshSnapshot) -> dict[str, listener_components_pb2.FilterChain]:
    virtual = listeners(mesh, CAPTURED)["virtual_inbound"]
    return {chain.name: chain for chain in virtual.filter_chains}


def test_captured_http_chains_run_the_filters_and_their_tcp_fallbacks_the_limit() -> None:
    chains = inbound_chains(snapshot(WEB, DB, policy(BOTH, "web", name="chaos")))
    for port in (8080, 9090):
        http_chain = chains[f"inbound|{port}|||http"]
        assert filter_names(hcm_of(http_chain)) == [HTTP_LOCAL_RATE_LIMIT, FAULT, ROUTER]
        fallback = chains[f"inbound|{port}|||tcp"]
        assert [f.name for f in fallback.filters] == [NETWORK_LOCAL_RATE_LIMIT, TCP_PROXY]
        for chain in (http_chain, fallback):
            assert "BackendPolicy/default/chaos" in stamped_sources(chain)
    assert [f.name for f in chains["inbound|5432|||tcp"].filters] == [TCP_PROXY]
    assert "BackendPolicy/default/chaos" not in stamped_sources(chains["inbound|5432|||tcp"])


def test_captured_chains_match_the_explicit_listeners_filters() -> None:
    mesh = snapshot(WEB, policy(BOTH, "web"))
    explicit = plaintext_chain(listeners(mesh)["inbound_8080"])
    captured = inbound_chains(mesh)["inbound|8080|||http"]
    assert list(hcm_of(captured).http_filters) == list(hcm_of(explicit).http_filters)


# -- a real Envoy accepts it ------------------------------------------------------------


@pytest.mark.envoy
@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy is not on PATH")
@pytest.mark.parametrize("interception", ["none", "redirect"])
def test_envoy_accepts_the_filters(interception: str, tmp_path: Path) -> None:
    mesh = snapshot(WEB, DB, policy(BOTH, "web"), policy(LIMIT, "db", name="db-limit"))
    sidecar = dataclasses.replace(WEB_SIDECAR, ip="127.0.0.5", interception=interception)
    assert any(p.policy is not None for p in inbound_ports(mesh, sidecar))
    (tmp_path / "inlined").mkdir()
    validate(inline_everything(mesh, sidecar), tmp_path / "inlined")
    (tmp_path / "served").mkdir()
    validate(as_served(mesh, sidecar), tmp_path / "served")


@pytest.mark.envoy
@pytest.mark.skipif(shutil.which("envoy") is None, reason="envoy is not on PATH")
@pytest.mark.parametrize(
    ("spec", "envoy_says"),
    [
        ({"faultInjection": {"delay": {"fixedDelay": "0s"}}}, "value must be greater than 0s"),
        (
            {"localRateLimit": {"maxTokens": 1, "fillInterval": "0.010s"}},
            "fill timer must be >= 50ms",
        ),
    ],
    ids=["zero-delay", "fast-fill"],
)
def test_what_is_rejected_here_envoy_rejects_too(
    spec: dict[str, object], envoy_says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks are Envoy's own rules: without them, Envoy refuses the listener."""
    monkeypatch.setattr(inbound_policy, "_check", lambda policy: None)
    mesh = snapshot(WEB, policy(spec, "web"))
    sidecar = dataclasses.replace(WEB_SIDECAR, ip="127.0.0.5")
    with pytest.raises(AssertionError, match=envoy_says):
        validate(inline_everything(mesh, sidecar), tmp_path)
