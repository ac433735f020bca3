"""Two replicas on one root Secret (kmock's emulator, the official client): a rotation one
begins is adopted by the other at the same instants, a replica started during the overlap
comes up in it, and both ending the overlap leave the Secret with the new root only."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from cryptography import x509
from kube_fixtures import ApiServerEmulator, api_server, kube_configuration  # noqa: F401
from kubernetes import client

from xds_server.security import CertificateIssuer
from xds_server.security.ca_store import (
    CERT_KEY,
    PREVIOUS_KEY,
    PREVIOUS_UNTIL_KEY,
    REISSUE_AT_KEY,
    KubernetesRootStore,
)
from xds_server.security.roots import certificate_pem

SECRETS = ("", "v1", "secrets")
NAMESPACE, NAME = "mesh-system", "xds-server-ca"
WEB = ("default", "web")


def store_on(configuration: client.Configuration) -> KubernetesRootStore:
    return KubernetesRootStore(
        client.ApiClient(configuration),
        namespace=NAMESPACE,
        secret_name=NAME,
        trust_domain="cluster.local",
    )


async def replica(configuration: client.Configuration, poll: float = 0.2) -> CertificateIssuer:
    """An issuer as `xds-server serve` builds one in Kubernetes mode (the load in a thread)."""
    store = store_on(configuration)
    stored = await asyncio.to_thread(store.load)
    return CertificateIssuer(
        stored.authority,
        store=store,
        trusted=() if stored.previous is None else (stored.previous,),
        trusted_until=stored.previous_until,
        root_poll_seconds=poll,
    )


def secret_data(api: ApiServerEmulator) -> dict[str, bytes]:
    secret = api.objects_of(SECRETS)[(NAMESPACE, NAME)]
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


async def test_a_rotation_in_the_secret_reaches_the_other_replica(
    api_server: ApiServerEmulator,  # noqa: F811
    kube_configuration: client.Configuration,  # noqa: F811
) -> None:
    api_server.install_crd(SECRETS)
    first, second = await replica(kube_configuration), await replica(kube_configuration)
    assert first.ca.certificate == second.ca.certificate
    second.identities_changed({WEB})
    task = asyncio.create_task(second.run(lambda changes: None))  # polls every 0.2 s
    try:
        started = await first.rotate_root(overlap_seconds=3.0)
        data = secret_data(api_server)
        assert data[CERT_KEY] != data[PREVIOUS_KEY]
        assert float(data[REISSUE_AT_KEY]) == pytest.approx(started.reissue_at, abs=0.001)
        assert float(data[PREVIOUS_UNTIL_KEY]) == pytest.approx(started.overlap_ends_at, abs=0.001)
        deadline = time.monotonic() + 2.0
        while second.rotation is None:
            assert time.monotonic() < deadline, "the second replica never saw the rotation"
            await asyncio.sleep(0.02)
        adopted = second.rotation
        assert adopted.new_serial == started.new_serial
        assert adopted.reissue_at == pytest.approx(started.reissue_at, abs=0.001)
        assert adopted.overlap_ends_at == pytest.approx(started.overlap_ends_at, abs=0.001)
        assert second.bundle == first.bundle and len(second.bundle.roots) == 2

        # A third replica starting now comes up in the overlap.
        late = await replica(kube_configuration)
        late_rotation = late.rotation
        assert late_rotation is not None and late_rotation.new_serial == started.new_serial
        assert late.bundle == first.bundle

        await asyncio.sleep(max(0.0, started.reissue_at - time.time()) + 0.3)
        (certificate,) = second.certificates()
        new_root = data[CERT_KEY]
        assert certificate_pem(second.ca.trust_anchor) == new_root
        leaf = x509.load_pem_x509_certificate(certificate.certificate_chain)
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(new_root))

        await asyncio.sleep(max(0.0, started.overlap_ends_at - time.time()) + 0.3)
        assert second.rotation is None and len(second.bundle.roots) == 1
        # The second replica ended the stored overlap (first has no loop running); the
        # first one's end finds it done rather than failing on a changed Secret.
        assert PREVIOUS_KEY not in secret_data(api_server)
        first.reconcile()
        await asyncio.to_thread(first.end_stored_rotation)
        after = secret_data(api_server)
        assert after[CERT_KEY] == new_root and REISSUE_AT_KEY not in after
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_replica_refuses_to_rotate_during_another_replicas_rotation(
    api_server: ApiServerEmulator,  # noqa: F811
    kube_configuration: client.Configuration,  # noqa: F811
) -> None:
    api_server.install_crd(SECRETS)
    first, second = await replica(kube_configuration), await replica(kube_configuration)
    await first.rotate_root(overlap_seconds=30.0)
    with pytest.raises(ValueError, match="under way"):
        await second.rotate_root(overlap_seconds=30.0)
