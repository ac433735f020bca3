"""PeerAuthentication modes in, inbound filter chains out (`translate.mtls`).

For both layouts (a listener per port, and the captured `virtual_inbound`):
STRICT gives an mTLS chain only (and, captured, refuses plaintext on the
port), PERMISSIVE an mTLS chain for `transport_protocol: tls` beside the
plaintext one with the TLS inspector, DISABLE plaintext only; the TLS context
requires a client certificate, uses the SDS Secrets `default` and `ROOTCA` and
checks the URI SAN against the proxy's trust domain; the HTTP manager behind
mTLS forwards the client certificate's URI.  Envoy accepts it all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from test_peer_authentication import policy
from translate_builders import (
    endpoint,
    endpoint_slice,
    http,
    mesh,
    proxy,
    representative_objects,
    service,
    tcp,
)

from xds_server.model import Kind, Workload
from xds_server.model.peer_authentication import TLS_MODE_LABEL as LABEL
from xds_server.model.peer_authentication import mtls_endpoints
from xds_server.model.policy import ROOT_NAMESPACE
from xds_server.model.security import PeerAuthentication, WorkloadCertificate
from xds_server.pipeline.generators import service_reads
from xds_server.translate import clusters_for_service, load_assignments_for_service, proxy_listeners

WEB = service("web", http(80, target=8080), tcp(5432), selector={"app": "web"})
SIDECAR = proxy("web-1", labels={"app": "web"}, ip="127.0.0.2", workload="web-1")
CAPTURED = dataclasses.replace(SIDECAR, interception="redirect")
CERT = WorkloadCertificate(
    namespace="default", name="default", spiffe_id="spiffe://example.org/ns/default/sa/default"
)


def mode_policy(mode: str, ports: dict[str, str] | None = None) -> PeerAuthentication:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": mode}}
    if ports:
        spec["portLevelMtls"] = {port: {"mode": m} for port, m in ports.items()}
    return policy("web", spec)


def listeners(*objects: Any, sidecar: Any = SIDECAR) -> dict[str, listener_pb2.Listener]:
    return {item.name: item for item in proxy_listeners(mesh(WEB, CERT, *objects), sidecar)}


def tls_of(chain: listener_components_pb2.FilterChain) -> tls_pb2.DownstreamTlsContext:
    context = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(context)
    return context


def hcm(chain: listener_components_pb2.FilterChain) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    assert chain.filters[-1].typed_config.Unpack(manager)
    return manager


def shape(listener: listener_pb2.Listener) -> list[tuple[str, bool]]:
    """(transport_protocol, mTLS?) for every chain."""
    return [
        (c.filter_chain_match.transport_protocol, c.HasField("transport_socket"))
        for c in listener.filter_chains
    ]


def test_the_tls_context_requires_a_mesh_certificate() -> None:
    (chain,) = listeners(mode_policy("STRICT"))["inbound_8080"].filter_chains
    context = tls_of(chain)
    assert context.require_client_certificate.value
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
    assert combined.validation_context_sds_secret_config.sds_config.HasField("ads")
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    assert san.matcher.prefix == "spiffe://example.org/"


def test_without_a_certificate_yet_any_spiffe_id_is_checked() -> None:
    found = {i.name: i for i in proxy_listeners(mesh(WEB, mode_policy("STRICT")), SIDECAR)}
    (chain,) = found["inbound_8080"].filter_chains
    (san,) = tls_of(
        chain
    ).common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert san.matcher.prefix == "spiffe://"


@pytest.mark.parametrize(
    ("objects", "expected", "inspector"),
    [
        ((), [("tls", True), ("", False)], True),  # PERMISSIVE by default
        ((mode_policy("PERMISSIVE"),), [("tls", True), ("", False)], True),
        ((mode_policy("STRICT"),), [("", True)], False),
        ((mode_policy("DISABLE"),), [("", False)], False),
    ],
)
def test_modes_on_a_listener_per_port(
    objects: tuple[PeerAuthentication, ...], expected: list[tuple[str, bool]], inspector: bool
) -> None:
    for name in ("inbound_8080", "inbound_5432"):
        listener = listeners(*objects)[name]
        assert shape(listener) == expected
        names = [f.name for f in listener.listener_filters]
        assert names == (["envoy.filters.listener.tls_inspector"] if inspector else [])


def test_mtls_http_chains_forward_the_client_certificate_uri() -> None:
    secure, plain = listeners()["inbound_8080"].filter_chains
    assert hcm(secure).forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert hcm(secure).set_current_client_cert_details.uri
    # Plaintext keeps SANITIZE: a caller cannot forge the header.
    assert hcm(plain).forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE
    secure.ClearField("transport_socket")
    secure.ClearField("filter_chain_match")
    assert secure.filters[:-1] == plain.filters[:-1]


def test_port_level_overrides_per_listener() -> None:
    found = listeners(mode_policy("STRICT", {"5432": "DISABLE"}))
    assert shape(found["inbound_8080"]) == [("", True)]
    assert shape(found["inbound_5432"]) == [("", False)]


def captured_rows(*objects: Any) -> dict[str, tuple[int, str, bool, bool]]:
    virtual = listeners(*objects, sidecar=CAPTURED)["virtual_inbound"]
    return {
        c.name: (
            c.filter_chain_match.destination_port.value,
            c.filter_chain_match.transport_protocol,
            bool(c.filter_chain_match.application_protocols),
            c.HasField("transport_socket"),
        )
        for c in virtual.filter_chains
        if c.filter_chain_match.destination_port.value != 15006
    }


def test_captured_permissive_adds_an_mtls_chain_per_port() -> None:
    assert captured_rows() == {
        "inbound|8080|||http|mtls": (8080, "tls", False, True),
        "inbound|8080|||http": (8080, "", True, False),
        "inbound|8080|||tcp": (8080, "", False, False),
        "inbound|5432|||tcp|mtls": (5432, "tls", False, True),
        "inbound|5432|||tcp": (5432, "", False, False),
    }
    virtual = listeners(sidecar=CAPTURED)["virtual_inbound"]
    tls = next(f for f in virtual.listener_filters if f.name.endswith("tls_inspector"))
    ranges = tls.filter_disabled.not_match.or_match.rules
    assert sorted(r.destination_port_range.start for r in ranges) == [5432, 8080]


def test_captured_strict_refuses_plaintext_and_disable_is_plaintext() -> None:
    assert captured_rows(mode_policy("STRICT", {"5432": "DISABLE"})) == {
        "inbound|8080|||http|mtls": (8080, "tls", False, True),
        "inbound|8080|||plaintext_blackhole": (8080, "", False, False),
        "inbound|5432|||tcp": (5432, "", False, False),
    }
    virtual = listeners(mode_policy("STRICT"), sidecar=CAPTURED)["virtual_inbound"]
    refused = next(c for c in virtual.filter_chains if c.name.endswith("plaintext_blackhole"))
    assert "BlackHoleCluster" in str(refused.filters[0].typed_config.value)


def test_envoy_accepts_every_mode(tmp_path: Path) -> None:
    from test_translate_envoy_validate import as_served, validate

    for mode in ("STRICT", "PERMISSIVE", "DISABLE"):
        objects = [*representative_objects(), CERT, mode_policy(mode, {"8080": "DISABLE"})]
        for sidecar in (SIDECAR, CAPTURED):
            validate(as_served(mesh(*objects), sidecar), tmp_path)


# -- outbound auto-mTLS ------------------------------------------------------------------

MESHED = Workload(namespace="default", name="web-1", labels=(("app", "web"), (LABEL, "mtls")),
                  ip="10.0.0.1")  # fmt: skip
PLAIN = Workload(namespace="default", name="plain-1", labels=(("app", "web"),), ip="10.0.0.2")


def test_only_sidecar_endpoints_not_disabled_take_mtls() -> None:
    eps = endpoint_slice(
        WEB, endpoint("10.0.0.1"), endpoint("10.0.0.2"), endpoint("10.0.0.3", pod="web-1")
    )
    assert mtls_endpoints(mesh(WEB, eps, MESHED, PLAIN), (eps,)) == {
        ("10.0.0.1", 8080), ("10.0.0.1", 5432), ("10.0.0.3", 8080), ("10.0.0.3", 5432),
    }  # fmt: skip
    disabled = mode_policy("STRICT", {"5432": "DISABLE"})
    assert mtls_endpoints(mesh(WEB, eps, MESHED, disabled), (eps,)) == {
        ("10.0.0.1", 8080), ("10.0.0.3", 8080),
    }  # fmt: skip


def test_clusters_select_mtls_by_endpoint_metadata() -> None:
    (cluster, _) = clusters_for_service(WEB)
    (match,) = cluster.transport_socket_matches
    assert dict(match.match) == {"tlsMode": "mtls"}
    context = tls_pb2.UpstreamTlsContext()
    assert match.transport_socket.typed_config.Unpack(context)
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    assert not cluster.HasField("transport_socket")  # the rest: plaintext
    eps = endpoint_slice(WEB, endpoint("10.0.0.1"), endpoint("10.0.0.2"))
    (http_cla, _) = load_assignments_for_service(WEB, (eps,), frozenset({("10.0.0.1", 8080)}))
    tagged = {
        e.endpoint.address.socket_address.address: dict(
            e.metadata.filter_metadata.get("envoy.transport_socket_match", {})
        )
        for e in http_cla.endpoints[0].lb_endpoints
    }
    assert tagged == {"10.0.0.1": {"tlsMode": "mtls"}, "10.0.0.2": {}}


def test_the_service_generator_declares_pod_and_policy_reads() -> None:
    reads = service_reads(("default", "web"), ROOT_NAMESPACE)
    assert ("ns", Kind.WORKLOAD, "default") in reads
    assert ("ns", Kind.PEER_AUTHENTICATION, "default") in reads
    assert ("ns", Kind.PEER_AUTHENTICATION, ROOT_NAMESPACE) in reads
