"""PeerAuthentication manifests in, effective mTLS modes and statuses out.

The converter's checks (naming object and field), Istio's precedence in
`model.peer_authentication` (workload > namespace > mesh, port-level
overrides, UNSET inherits, oldest wins, PERMISSIVE by default), the facts a
read records through the `TrackedMesh`, and the Accepted status.
"""

from __future__ import annotations

from typing import Any

import pytest
from translate_builders import mesh

from xds_server.model import Kind
from xds_server.model.changes import ObjectKey
from xds_server.model.peer_authentication import MtlsMode, workload_mtls
from xds_server.model.policy import ROOT_NAMESPACE
from xds_server.model.security import PeerAuthentication
from xds_server.model.status import policy_conditions
from xds_server.pipeline.reads import TrackedMesh
from xds_server.sources.convert import ManifestError, convert

WEB = (("app", "web"),)


def policy(
    name: str,
    spec: dict[str, Any] | None,
    namespace: str = "default",
    created: str | None = None,
) -> PeerAuthentication:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created:
        metadata["creationTimestamp"] = created
    manifest: dict[str, Any] = {
        "apiVersion": "policy.xds-server.dev/v1alpha1",
        "kind": "PeerAuthentication",
        "metadata": metadata,
    }
    if spec is not None:
        manifest["spec"] = spec
    converted = convert(manifest)
    assert isinstance(converted, PeerAuthentication)
    return converted


def mode(*policies: PeerAuthentication, port: int = 8080, ns: str = "default") -> MtlsMode:
    return workload_mtls(mesh(*policies), ns, WEB).mode(port)


def test_default_is_permissive() -> None:
    assert mode() is MtlsMode.PERMISSIVE
    assert mode(policy("empty", None)) is MtlsMode.PERMISSIVE


def test_mesh_namespace_workload_precedence() -> None:
    mesh_wide = policy("mesh", {"mtls": {"mode": "STRICT"}}, namespace=ROOT_NAMESPACE)
    assert mode(mesh_wide) is MtlsMode.STRICT
    namespace = policy("ns", {"mtls": {"mode": "DISABLE"}})
    assert mode(mesh_wide, namespace) is MtlsMode.DISABLE
    workload = policy(
        "web", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "PERMISSIVE"}}
    )
    assert mode(mesh_wide, namespace, workload) is MtlsMode.PERMISSIVE
    other = policy("db", {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}})
    assert mode(namespace, other) is MtlsMode.DISABLE
    # Another namespace's namespace-wide policy does not apply.
    assert mode(policy("ns", {"mtls": {"mode": "DISABLE"}}, namespace="other")) is (
        MtlsMode.PERMISSIVE
    )


def test_root_namespace_selector_only_selects_root_workloads() -> None:
    rooted = policy(
        "web", {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}},
        namespace=ROOT_NAMESPACE,
    )  # fmt: skip
    assert mode(rooted) is MtlsMode.PERMISSIVE
    assert mode(rooted, ns=ROOT_NAMESPACE) is MtlsMode.STRICT


def test_port_level_overrides_and_unset_inherits() -> None:
    namespace = policy("ns", {"mtls": {"mode": "STRICT"}})
    workload = policy(
        "web",
        {
            "selector": {"matchLabels": {"app": "web"}},
            "portLevelMtls": {"9090": {"mode": "DISABLE"}, "7070": {"mode": "UNSET"}},
        },
    )
    assert mode(namespace, workload, port=9090) is MtlsMode.DISABLE
    assert mode(namespace, workload, port=8080) is MtlsMode.STRICT  # mtls unset: inherited
    assert mode(namespace, workload, port=7070) is MtlsMode.STRICT


def test_oldest_wins_on_conflict() -> None:
    newer = policy("a-new", {"mtls": {"mode": "DISABLE"}}, created="2026-02-01T00:00:00Z")
    older = policy("z-old", {"mtls": {"mode": "STRICT"}}, created="2026-01-01T00:00:00Z")
    assert mode(newer, older) is MtlsMode.STRICT


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"mtls": {"mode": "MAYBE"}}, "spec.mtls.mode"),
        ({"mtls": {"mode": "STRICT", "extra": 1}}, "spec.mtls.extra: unknown field"),
        ({"bogus": True}, "spec.bogus: unknown field"),
        (
            {
                "selector": {"matchLabels": {"app": "web"}},
                "portLevelMtls": {"70000": {"mode": "STRICT"}},
            },
            "spec.portLevelMtls.70000: must be a port number 1-65535",
        ),
        (
            {
                "selector": {"matchLabels": {"app": "web"}},
                "portLevelMtls": {"80": {"mode": "NOPE"}},
            },
            "spec.portLevelMtls.80.mode",
        ),
        ({"portLevelMtls": {"80": {"mode": "STRICT"}}}, "spec.portLevelMtls: needs spec.selector"),
    ],
)
def test_invalid_policies_name_object_and_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as error:
        policy("bad", spec)
    assert "PeerAuthentication default/bad" in str(error.value)
    assert message in str(error.value)


def test_reads_record_the_namespaces_consulted() -> None:
    tracked = TrackedMesh(mesh(policy("ns", {"mtls": {"mode": "STRICT"}})), set())
    assert workload_mtls(tracked, "default", WEB).mode(80) is MtlsMode.STRICT
    assert ("ns", Kind.PEER_AUTHENTICATION, "default") in tracked.reads
    assert ("ns", Kind.PEER_AUTHENTICATION, ROOT_NAMESPACE) in tracked.reads


def test_status_is_accepted_or_rejected_naming_the_field() -> None:
    key = ObjectKey(Kind.PEER_AUTHENTICATION, "default", "bad")
    statuses = policy_conditions(mesh(), {key: "spec.mtls.mode: unknown"})
    (condition,) = statuses[key].conditions
    assert (condition.status, condition.message) == ("False", "spec.mtls.mode: unknown")


def test_status_is_accepted_with_mode_and_scope() -> None:
    workload = policy(
        "web",
        {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"},
         "portLevelMtls": {"9090": {"mode": "DISABLE"}}},
    )  # fmt: skip
    statuses = policy_conditions(mesh(workload))
    status = statuses[ObjectKey(Kind.PEER_AUTHENTICATION, "default", "web")]
    (condition,) = status.conditions
    assert condition.status == "True"
    assert condition.message == (
        "STRICT, port 9090: DISABLE: governs the workloads of default labelled app=web"
    )
