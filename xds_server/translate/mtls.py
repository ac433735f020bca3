"""Mutual TLS between sidecars: the TLS contexts, inspector and XFCC settings translation uses.

Every context references the proxy's SDS Secrets by name (`secrets`): its
own SVID as `default`, the mesh's roots as `ROOTCA`.  The names are the same
for every proxy, so shared outbound clusters carry one context for all.

Peers are checked twice: the chain must verify against `ROOTCA` (only the
mesh's CA signs it), and the URI SAN must be a SPIFFE ID of the trust
domain.  Inbound, the trust domain is the proxy's own (its certificate's
SPIFFE ID, which the proxy generator already reads for its Secrets; until
that certificate arrives, any `spiffe://` ID, which still has to verify
against the roots).  Outbound, a client accepts only the identities of the
destination: as Istio does, the URI SAN must be the SPIFFE ID of a service
account of the Pods behind the Service's mTLS endpoints
(`model.peer_authentication.mtls_identities`), so a sidecar presenting
another workload's certificate (a hijacked address, a mislabelled Pod) is
refused.  Outbound clusters are shared by every proxy and the mesh holds no
trust domain apart from its certificates, so each ID is matched with its
trust domain as any one DNS label-like segment (`spiffe://<td>/ns/<ns>/sa/<sa>`,
anchored RE2) and the roots decide the trust domain: the CA only issues IDs
of its own.  Both are pure functions of the model.

An inbound HTTP connection manager behind mutual TLS sets
`x-forwarded-client-cert` (`SANITIZE_SET` with the URI): the app sees the
caller's SPIFFE ID, and a caller cannot forge the header, since a plaintext
chain's manager keeps the default `SANITIZE` and drops it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import range_pb2

from xds_server.model import MeshSnapshot, Proxy
from xds_server.model.peer_authentication import MtlsMode
from xds_server.translate.core import packed
from xds_server.translate.filters import HTTP_CONNECTION_MANAGER
from xds_server.translate.secrets import SVID_SECRET_NAME, TRUST_ROOTS_SECRET_NAME

__all__ = [
    "TLS_INSPECTOR",
    "TLS_TRANSPORT_PROTOCOL",
    "captured_chains",
    "downstream_mtls_socket",
    "forward_client_cert",
    "inbound_chains",
    "only_on_ports",
    "proxy_trust_domain",
    "secure_chains",
    "secure_inbound",
    "spiffe_id_pattern",
    "spiffe_prefix",
    "tls_inspector",
    "upstream_mtls_socket",
]

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_TRANSPORT_PROTOCOL = "tls"
"""What the TLS inspector sets as `transport_protocol` on a TLS connection."""
TRANSPORT_SOCKET_TLS = "envoy.transport_sockets.tls"


def proxy_trust_domain(mesh: MeshSnapshot, proxy: Proxy) -> str | None:
    """The trust domain of the proxy's own SPIFFE ID, or None before its certificate exists."""
    certificate = mesh.certificate_of(proxy.namespace, proxy.service_account)
    if certificate is None or not certificate.spiffe_id.startswith("spiffe://"):
        return None
    return certificate.spiffe_id.removeprefix("spiffe://").split("/", 1)[0] or None


def spiffe_prefix(trust_domain: str | None) -> str:
    return f"spiffe://{trust_domain}/" if trust_domain else "spiffe://"


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            ads=config_source_pb2.AggregatedConfigSource(),
            resource_api_version=config_source_pb2.V3,
        ),
    )


def _uri_san(matcher: string_pb2.StringMatcher) -> common_pb2.SubjectAltNameMatcher:
    return common_pb2.SubjectAltNameMatcher(
        san_type=common_pb2.SubjectAltNameMatcher.URI, matcher=matcher
    )


def spiffe_id_pattern(namespace: str, service_account: str) -> str:
    """The RE2 pattern of the SPIFFE ID of `namespace`/`service_account` in any trust
    domain (one path segment: the roots decide which)."""
    return f"^spiffe://[^/]+/ns/{re.escape(namespace)}/sa/{re.escape(service_account)}$"


def _common_context(
    sans: Iterable[common_pb2.SubjectAltNameMatcher],
) -> tls_pb2.CommonTlsContext:
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[_sds(SVID_SECRET_NAME)],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_pb2.CertificateValidationContext(
                match_typed_subject_alt_names=list(sans)
            ),
            validation_context_sds_secret_config=_sds(TRUST_ROOTS_SECRET_NAME),
        ),
    )


def _prefix_san(trust_domain: str | None) -> common_pb2.SubjectAltNameMatcher:
    return _uri_san(string_pb2.StringMatcher(prefix=spiffe_prefix(trust_domain)))


def downstream_mtls_socket(trust_domain: str | None) -> base_pb2.TransportSocket:
    """An inbound chain's TLS: the proxy's SVID, a client certificate of the mesh required."""
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=_common_context([_prefix_san(trust_domain)])
    )
    context.require_client_certificate.value = True
    return base_pb2.TransportSocket(name=TRANSPORT_SOCKET_TLS, typed_config=packed(context))


def upstream_mtls_socket(
    identities: Iterable[tuple[str, str]] = (),
) -> base_pb2.TransportSocket:
    """A client sidecar's TLS to a destination sidecar whose certificate must name one of
    `identities` (namespace, service account), sorted so the bytes are stable; with
    none (no endpoint takes mTLS, so the socket is never chosen) any mesh ID."""
    sans = [
        _uri_san(
            string_pb2.StringMatcher(
                safe_regex=regex_pb2.RegexMatcher(regex=spiffe_id_pattern(namespace, account))
            )
        )
        for namespace, account in sorted(set(identities))
    ]
    context = tls_pb2.UpstreamTlsContext(
        common_tls_context=_common_context(sans or [_prefix_san(None)])
    )
    return base_pb2.TransportSocket(name=TRANSPORT_SOCKET_TLS, typed_config=packed(context))


def tls_inspector(
    disabled: listener_components_pb2.ListenerFilterChainMatchPredicate | None = None,
) -> listener_components_pb2.ListenerFilter:
    """The listener filter telling TLS from plaintext (`transport_protocol`)."""
    listener_filter = listener_components_pb2.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=packed(tls_inspector_pb2.TlsInspector())
    )
    if disabled is not None:
        listener_filter.filter_disabled.CopyFrom(disabled)
    return listener_filter


def forward_client_cert(hcm: hcm_pb2.HttpConnectionManager) -> None:
    """The caller's certificate URI (its SPIFFE ID) in `x-forwarded-client-cert` to the app."""
    hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.SANITIZE_SET
    hcm.set_current_client_cert_details.uri = True


def _variant(
    chain: listener_components_pb2.FilterChain, mtls: bool
) -> listener_components_pb2.FilterChain:
    """A copy of `chain`; with `mtls`, its HTTP manager forwards the client certificate."""
    copy = listener_components_pb2.FilterChain()
    copy.CopyFrom(chain)
    if mtls:
        for network_filter in copy.filters:
            if network_filter.name == HTTP_CONNECTION_MANAGER:
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                forward_client_cert(hcm)
                network_filter.typed_config.CopyFrom(packed(hcm))
    return copy


def secure_chains(
    chain: listener_components_pb2.FilterChain,
    mode: MtlsMode,
    trust_domain: str | None,
    *,
    inspected: bool,
) -> list[listener_components_pb2.FilterChain]:
    """An inbound port's plaintext `chain` as the chains `mode` wants (`inbound_chains`)."""
    return inbound_chains(
        mode, lambda mtls: _variant(chain, mtls), trust_domain, inspected=inspected
    )


def secure_inbound(
    listener: listener_pb2.Listener, mode: MtlsMode, trust_domain: str | None
) -> listener_pb2.Listener:
    """An inbound port's listener (one plaintext chain) under `mode`, in place.

    PERMISSIVE adds the TLS inspector, which tells the two chains apart;
    STRICT needs none: its one chain is TLS, and a plaintext client fails the handshake.
    """
    if mode is MtlsMode.DISABLE:
        return listener
    (plain,) = listener.filter_chains
    chains = secure_chains(plain, mode, trust_domain, inspected=False)
    del listener.filter_chains[:]
    listener.filter_chains.extend(chains)
    if mode is MtlsMode.PERMISSIVE:
        listener.listener_filters.append(tls_inspector())
        # A client silent until the server speaks (server-first TCP) is plaintext.
        listener.continue_on_listener_filters_timeout = True
    return listener


def inbound_chains(
    mode: MtlsMode,
    build: Callable[[bool], listener_components_pb2.FilterChain],
    trust_domain: str | None,
    *,
    inspected: bool,
) -> list[listener_components_pb2.FilterChain]:
    """An inbound port's filter chains under `mode`.

    `build(mtls)` makes the port's chain (its match, its filters: the HTTP
    manager forwards the client certificate when `mtls`).  STRICT: the mTLS
    chain only; PERMISSIVE: the mTLS chain for `transport_protocol: tls` and
    the plaintext chain for the rest; DISABLE: plaintext only.  `inspected`:
    the listener runs the TLS inspector on this port, so even a STRICT chain
    matches `tls` (the listener refuses plaintext on the port itself).
    """
    if mode is MtlsMode.DISABLE:
        return [build(False)]
    secure = build(True)
    if secure.name:
        secure.name = f"{secure.name}|mtls"
    secure.transport_socket.CopyFrom(downstream_mtls_socket(trust_domain))
    if inspected or mode is MtlsMode.PERMISSIVE:
        secure.filter_chain_match.transport_protocol = TLS_TRANSPORT_PROTOCOL
    if mode is MtlsMode.STRICT:
        return [secure]
    return [secure, build(False)]


def only_on_ports(
    ports: Iterable[int],
) -> listener_components_pb2.ListenerFilterChainMatchPredicate:
    """A listener filter's `filter_disabled` that leaves it enabled on `ports` only."""
    rules = [
        listener_components_pb2.ListenerFilterChainMatchPredicate(
            destination_port_range=range_pb2.Int32Range(start=port, end=port + 1)
        )
        for port in sorted(set(ports))
    ]
    # A match set needs two rules or more.
    wanted = (
        rules[0]
        if len(rules) == 1
        else listener_components_pb2.ListenerFilterChainMatchPredicate(
            or_match=listener_components_pb2.ListenerFilterChainMatchPredicate.MatchSet(rules=rules)
        )
    )
    return listener_components_pb2.ListenerFilterChainMatchPredicate(not_match=wanted)


def captured_chains(
    plain: list[listener_components_pb2.FilterChain],
    mode: MtlsMode,
    trust_domain: str | None,
    refused: listener_components_pb2.FilterChain,
) -> list[listener_components_pb2.FilterChain]:
    """One inbound port's captured chains under its PeerAuthentication mode.

    The mTLS chain is the port's first (HTTP if it has one) without its
    application-protocol match: inside TLS the HTTP inspector sees nothing, so
    the connection manager's codec detects the protocol.  STRICT replaces the
    plaintext chains by `refused` (to `BlackHoleCluster`): without it, plaintext
    would fall through to the passthrough chain and reach the app.
    """
    if mode is MtlsMode.DISABLE:
        return plain
    (secure,) = secure_chains(plain[0], MtlsMode.STRICT, trust_domain, inspected=True)
    del secure.filter_chain_match.application_protocols[:]
    if mode is MtlsMode.PERMISSIVE:
        return [secure, *plain]
    return [secure, refused]
