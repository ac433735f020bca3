"""Redaction: no view of the control plane shows private key material.

Real protos hold a fake PEM key in every place key material can sit: an SDS
`Secret` (private key, password, PKCS#12, generic secret, session ticket
keys) and the TLS contexts inlined in a cluster's and a listener's transport
socket.  The admin's config JSON, its page and its errors never carry the key
(in any encoding JSON may use: the string, or base64 of bytes); public parts
(the certificate chain) stay visible.  `redact` itself is checked on
messages and on their JSON form, and `redact_text` on Envoy's messages and
log lines.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from test_admin import FakeControlPlane, get, nack, proxy_view, synced, typed

from xds_server.admin.config import resource_body
from xds_server.admin.redact import REDACTED, RedactingFilter, redact, redact_text
from xds_server.cache import ResourceSet, Snapshot
from xds_server.resources import CLUSTER, LISTENER, SECRET, TYPES, make_resource

NODE = "client-0.default"
KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDfakefakefake0K3y"
FAKE_KEY = f"-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBpublicpublicpublic\n-----END CERTIFICATE-----\n"


def inline(text: str = FAKE_KEY, *, as_bytes: bool = False) -> base_pb2.DataSource:
    if as_bytes:
        return base_pb2.DataSource(inline_bytes=text.encode())
    return base_pb2.DataSource(inline_string=text)


def certificate(*, as_bytes: bool = False) -> common_pb2.TlsCertificate:
    return common_pb2.TlsCertificate(
        certificate_chain=inline(CERT), private_key=inline(as_bytes=as_bytes)
    )


def tls_secret(as_bytes: bool = False) -> secret_pb2.Secret:
    return secret_pb2.Secret(name="workload-cert", tls_certificate=certificate(as_bytes=as_bytes))


def secret_with_password() -> secret_pb2.Secret:
    secret = tls_secret()
    secret.tls_certificate.password.CopyFrom(inline(KEY_BODY))
    return secret


def pkcs12_secret() -> secret_pb2.Secret:
    tls = common_pb2.TlsCertificate(pkcs12=inline(as_bytes=True))
    return secret_pb2.Secret(name="workload-cert", tls_certificate=tls)


def generic_secret() -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name="hmac")
    secret.generic_secret.secret.CopyFrom(inline(KEY_BODY))
    secret.generic_secret.secrets["extra"].CopyFrom(inline(KEY_BODY, as_bytes=True))
    return secret


def ticket_keys() -> secret_pb2.Secret:
    secret = secret_pb2.Secret(name="tickets")
    secret.session_ticket_keys.keys.add().CopyFrom(inline(KEY_BODY * 2, as_bytes=True))
    return secret


def tls_cluster() -> cluster_pb2.Cluster:
    context = tls_pb2.UpstreamTlsContext(sni="backend")
    context.common_tls_context.tls_certificates.add().CopyFrom(certificate())
    cluster = cluster_pb2.Cluster(name="outbound|443||backend", type=cluster_pb2.Cluster.STATIC)
    cluster.transport_socket.name = "envoy.transport_sockets.tls"
    cluster.transport_socket.typed_config.Pack(context)
    return cluster


def tls_listener() -> listener_pb2.Listener:
    context = tls_pb2.DownstreamTlsContext()
    context.common_tls_context.tls_certificates.add().CopyFrom(certificate(as_bytes=True))
    listener = listener_pb2.Listener(name="inbound_8443")
    chain = listener.filter_chains.add()
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.Pack(context)
    return listener


HOLDERS: dict[str, Callable[[], Message]] = {
    "secret-private-key": tls_secret,
    "secret-private-key-bytes": lambda: tls_secret(as_bytes=True),
    "secret-password": secret_with_password,
    "secret-pkcs12": pkcs12_secret,
    "generic-secret": generic_secret,
    "session-ticket-keys": ticket_keys,
    "cluster-upstream-tls": tls_cluster,
    "listener-downstream-tls": tls_listener,
}


def leaks(text: str) -> list[str]:
    """Every encoding of the key material found in `text` (JSON may show bytes as base64)."""
    secrets = [KEY_BODY, FAKE_KEY, KEY_BODY * 2]
    encodings = {s for secret in secrets for s in (secret, _b64(secret))}
    encodings |= {_b64(KEY_BODY)[:40], KEY_BODY[:40]}
    return sorted(e for e in encodings if e in text)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plane_serving(message: Message) -> FakeControlPlane:
    resource = make_resource(message)
    snapshot = Snapshot(resources={resource.type_url: ResourceSet([resource])}, version="3")
    return FakeControlPlane(
        views=[proxy_view(NODE, synced(resource.type_url))], snapshots={NODE: snapshot}
    )


def test_the_registry_marks_sds_secret() -> None:
    assert [url for url, t in TYPES.items() if t.secret] == [SECRET]


def test_unredacted_the_fixtures_would_leak() -> None:
    """The check below can fail: every fixture's JSON, unredacted, carries the key."""
    for make in HOLDERS.values():
        assert leaks(str(json_format.MessageToDict(make()))), make


@pytest.mark.parametrize("make", HOLDERS.values(), ids=HOLDERS.keys())
@pytest.mark.parametrize(
    "path",
    [
        f"/api/proxies/{NODE}/config",
        f"/api/proxies/{NODE}/config?type=SDS",
        f"/api/proxies/{NODE}/config?type=CDS",
        f"/api/proxies/{NODE}/config?type=LDS",
        f"/proxies/{NODE}",
    ],
    ids=["config", "config-sds", "config-cds", "config-lds", "page"],
)
async def test_no_admin_view_of_the_config_shows_the_key(
    make: Callable[[], Message], path: str
) -> None:
    response = await get(plane_serving(make()), path)

    assert response.status_code == 200
    assert leaks(response.text) == []


@pytest.mark.parametrize("make", HOLDERS.values(), ids=HOLDERS.keys())
async def test_the_key_shows_as_redacted_and_the_rest_as_it_is(make: Callable[[], Message]) -> None:
    message = make()
    resource = make_resource(message)
    short = TYPES[resource.type_url].short_name

    config = (await get(plane_serving(message), f"/api/proxies/{NODE}/config?type={short}")).json()

    [served] = config["types"][0]["resources"]
    assert served["name"] == resource.name
    assert served["version"] == resource.version  # what is pushed is untouched
    assert f'"{REDACTED}"' in str(served["resource"]).replace("'", '"')
    if resource.type_url in (CLUSTER, LISTENER) or "certificate_chain" in str(message):
        assert "MIIBpublicpublicpublic" in str(served["resource"])


def test_tls_certificate_private_key_is_redacted_in_json_form() -> None:
    shown = redact(json_format.MessageToDict(tls_secret(), preserving_proto_field_name=True))

    assert shown == {
        "name": "workload-cert",
        "tls_certificate": {
            "certificate_chain": {"inline_string": CERT},
            "private_key": REDACTED,
        },
    }


@pytest.mark.parametrize("make", HOLDERS.values(), ids=HOLDERS.keys())
def test_redacting_a_message_returns_a_redacted_copy_of_the_same_type(
    make: Callable[[], Message],
) -> None:
    original = make()
    before = original.SerializeToString(deterministic=True)

    redacted = redact(original)

    assert type(redacted) is type(original)
    assert original.SerializeToString(deterministic=True) == before
    assert leaks(str(json_format.MessageToDict(redacted))) == []
    assert REDACTED in str(json_format.MessageToDict(redacted))


def test_camel_case_json_is_redacted_too() -> None:
    shown = redact(json_format.MessageToDict(tls_cluster()))

    assert leaks(str(shown)) == []
    [certificate] = shown["transportSocket"]["typedConfig"]["commonTlsContext"]["tlsCertificates"]
    assert certificate["privateKey"] == REDACTED


def test_a_secret_whose_json_fails_is_not_shown_as_text() -> None:
    """An Any nobody can read inside a secret stays opaque: the text fallback is withheld."""
    secret = tls_secret()
    secret.tls_certificate.private_key_provider.provider_name = "vault"
    secret.tls_certificate.private_key_provider.typed_config.CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/example.Unknown", value=KEY_BODY.encode())
    )

    body = resource_body(make_resource(secret))

    assert "@error" in body
    assert body["text"] == REDACTED


async def test_an_envoy_message_quoting_a_key_is_redacted_in_errors_and_pages() -> None:
    quoted = nack("2", type_url=SECRET, message=f"Failed to load private key {FAKE_KEY[:-30]}")
    plane = FakeControlPlane(
        views=[proxy_view(NODE, typed(SECRET, nonce="2", sent="v2", acked="v1", last_nack=quoted))]
    )

    for path in ("/api/errors", f"/api/proxies/{NODE}", "/", f"/proxies/{NODE}"):
        response = await get(plane, path)
        assert "Failed to load private key [redacted]" in response.text, path
        assert leaks(response.text) == [], path


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("no key here", "no key here"),
        (f"bad: {FAKE_KEY}tail", f"bad: {REDACTED}\ntail"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nabc\n-----END RSA PRIVATE KEY----- and "
            "-----BEGIN EC PRIVATE KEY-----\ndef\n-----END EC PRIVATE KEY-----",
            f"{REDACTED} and {REDACTED}",
        ),
        (f"cut short: {FAKE_KEY[:40]}", f"cut short: {REDACTED}"),
        (CERT, CERT),
    ],
    ids=["plain", "pkcs8", "rsa-and-ec", "truncated", "certificate-is-public"],
)
def test_redact_text_removes_pem_private_keys(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_the_log_filter_removes_keys_from_formatted_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("xds_server.test_redaction")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("NACK from %s: %s", NODE, f"cannot parse {FAKE_KEY}")
        logger.info("nothing secret: %d", 7)

    assert [r.getMessage() for r in caplog.records] == [
        f"NACK from {NODE}: cannot parse {REDACTED}\n",
        "nothing secret: 7",
    ]
    assert leaks(caplog.text) == []
