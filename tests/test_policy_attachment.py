"""Which BackendPolicy governs a Service: the narrowest wins, the oldest breaks ties."""

from __future__ import annotations

from xds_server.model import ChangeSet, MeshSnapshot, Service
from xds_server.model.policy import BackendPolicy, attached_policy
from xds_server.policy_api import backend_policy_pb2 as api

SHOP_BACKEND = Service(namespace="shop", name="backend")


def policy(
    namespace: str,
    name: str,
    *targets: tuple[str, str],
    created: str | None = None,
    target_namespace: str = "",
) -> BackendPolicy:
    spec = api.BackendPolicySpec(
        target_refs=[
            api.PolicyTargetReference(kind=kind, name=target, namespace=target_namespace)
            for kind, target in targets
        ]
    )
    spec.connect_timeout.FromSeconds(len(name))
    return BackendPolicy.of(namespace, name, spec, creation_timestamp=created)


def winner(*policies: BackendPolicy) -> tuple[str, str, tuple[str, ...]] | None:
    found = attached_policy(SHOP_BACKEND, policies)
    if found is None:
        return None
    return found.policy.name, found.level, tuple(p.name for p in found.conflicted)


def test_no_policy_governs_nothing() -> None:
    assert winner() is None


def test_the_service_s_own_policy_beats_its_namespace_s_and_the_mesh_s() -> None:
    assert winner(
        policy("mesh-system", "mesh-default"),
        policy("shop", "shop-default"),
        policy("shop", "mine", ("Service", "backend")),
    ) == ("mine", "service", ())


def test_a_namespace_default_beats_the_mesh_default() -> None:
    assert winner(policy("mesh-system", "mesh-default"), policy("shop", "shop-default")) == (
        "shop-default",
        "namespace",
        (),
    )
    assert winner(policy("shop", "by-kind", ("Namespace", "shop"))) == ("by-kind", "namespace", ())


def test_the_mesh_default_applies_where_nothing_narrower_does() -> None:
    assert winner(policy("mesh-system", "mesh-default")) == ("mesh-default", "mesh", ())


def test_policies_of_other_namespaces_or_for_other_services_do_not_attach() -> None:
    assert winner(policy("other", "theirs"), policy("shop", "x", ("Service", "frontend"))) is None
    assert winner(policy("other", "reach", ("Service", "backend"), target_namespace="shop")) is None


def test_the_oldest_of_two_policies_at_one_level_wins_and_the_other_is_conflicted() -> None:
    older = policy("shop", "zeta", ("Service", "backend"), created="2026-01-01T00:00:00Z")
    newer = policy("shop", "alpha", ("Service", "backend"), created="2026-02-01T00:00:00Z")
    assert winner(newer, older) == ("zeta", "service", ("alpha",))


def test_without_timestamps_the_first_by_name_wins() -> None:
    assert winner(
        policy("shop", "b", ("Service", "backend")), policy("shop", "a", ("Service", "backend"))
    ) == ("a", "service", ("b",))


def test_the_snapshot_resolves_policies_it_holds() -> None:
    changes = ChangeSet()
    changes.upsert(SHOP_BACKEND)
    changes.upsert(policy("shop", "mine", ("Service", "backend")))
    changes.upsert(policy("mesh-system", "mesh-default"))
    mesh, _ = MeshSnapshot().apply(changes)
    found = mesh.backend_policy_for(SHOP_BACKEND)
    assert found is not None and found.policy.name == "mine"
    assert found.policy.spec().connect_timeout.seconds == len("mine")
