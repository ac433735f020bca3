"""The root in a Kubernetes Secret, through the official client against kmock's emulator:
created on first start, shared by every replica (a lost create race reads the winner's),
and a rotation kept in it."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from kube_fixtures import ApiServerEmulator, api_server, kube_configuration  # noqa: F401
from kubernetes import client

from xds_server.ca import CertificateAuthority
from xds_server.security.ca_store import CERT_KEY, KEY_KEY, PREVIOUS_KEY, KubernetesRootStore
from xds_server.security.roots import certificate_pem

SECRETS = ("", "v1", "secrets")
NAMESPACE, NAME = "mesh-system", "xds-server-ca"


def store_on(configuration: client.Configuration) -> KubernetesRootStore:
    return KubernetesRootStore(
        client.ApiClient(configuration),
        namespace=NAMESPACE,
        secret_name=NAME,
        trust_domain="cluster.local",
    )


def secret_data(api: ApiServerEmulator) -> dict[str, bytes]:
    secret = api.objects_of(SECRETS)[(NAMESPACE, NAME)]
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


async def test_replicas_share_the_root_created_by_the_first(
    api_server: ApiServerEmulator,  # noqa: F811
    kube_configuration: client.Configuration,  # noqa: F811
) -> None:
    api_server.install_crd(SECRETS)  # the emulator serves Secrets from now on
    first = await asyncio.to_thread(store_on(kube_configuration).load)
    second = await asyncio.to_thread(store_on(kube_configuration).load)
    assert second.authority.certificate == first.authority.certificate
    data = secret_data(api_server)
    assert data[CERT_KEY] == certificate_pem(first.authority.certificate)
    assert b"PRIVATE KEY" in data[KEY_KEY]
    assert first.previous is None


async def test_a_replica_losing_the_create_race_uses_the_winners_root(
    api_server: ApiServerEmulator,  # noqa: F811
    kube_configuration: client.Configuration,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api_server.install_crd(SECRETS)
    winner = CertificateAuthority.generate_root("cluster.local")
    store = store_on(kube_configuration)
    real_create = store._create

    def create_after_the_winner(authority: CertificateAuthority, *, exists: bool) -> bool:
        cert_pem, key_pem = winner.root_pem_for_storage()
        api_server.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"namespace": NAMESPACE, "name": NAME},
                "data": {
                    CERT_KEY: base64.b64encode(cert_pem).decode(),
                    KEY_KEY: base64.b64encode(key_pem).decode(),
                },
            }
        )
        return real_create(authority, exists=exists)  # 409: the other replica was first

    monkeypatch.setattr(store, "_create", create_after_the_winner)
    loaded = await asyncio.to_thread(store.load)
    assert loaded.authority.certificate == winner.certificate


async def test_a_rotation_is_kept_in_the_secret_until_it_ends(
    api_server: ApiServerEmulator,  # noqa: F811
    kube_configuration: client.Configuration,  # noqa: F811
) -> None:
    api_server.install_crd(SECRETS)
    store = store_on(kube_configuration)
    old = (await asyncio.to_thread(store.load)).authority
    new = CertificateAuthority.generate_root("cluster.local")
    until = time.time() + 60
    await asyncio.to_thread(store.begin_rotation, new, old.certificate, until)
    during = await asyncio.to_thread(store_on(kube_configuration).load)  # another replica
    assert during.authority.certificate == new.certificate
    assert during.previous == old.certificate
    assert during.previous_until == pytest.approx(until, abs=0.01)
    await asyncio.to_thread(store.end_rotation)
    after = await asyncio.to_thread(store_on(kube_configuration).load)
    assert after.authority.certificate == new.certificate and after.previous is None
    assert PREVIOUS_KEY not in secret_data(api_server)


async def test_a_secret_with_a_certificate_but_no_key_is_refused(
    api_server: ApiServerEmulator,  # noqa: F811
    kube_configuration: client.Configuration,  # noqa: F811
) -> None:
    api_server.install_crd(SECRETS)
    root = CertificateAuthority.generate_root("cluster.local")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": NAMESPACE, "name": NAME},
        "data": {CERT_KEY: base64.b64encode(certificate_pem(root.certificate)).decode()},
    }
    api_server.create(body)
    with pytest.raises(ValueError, match=f"Secret {NAMESPACE}/{NAME} has {CERT_KEY} but no"):
        await asyncio.to_thread(store_on(kube_configuration).load)
