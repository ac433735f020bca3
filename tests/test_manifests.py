"""manifests/: they build, they validate, and they say what the design says.

* `kubectl kustomize manifests/` renders them, and `kubectl apply --dry-run=client` accepts
  the result.  A client dry run still asks a server for API discovery, so it runs against
  kmock serving the discovery documents of a real cluster (with its core-group
  `groupVersion` corrected), with `--validate=false`, since no OpenAPI schema is
  available offline.  Skipped, with the reason, where kubectl is not installed.
* The schema check that kubectl would have made: every object is parsed by the official
  Python client's model for its kind, which is strict (unknown fields, wrong types and
  missing required fields raise).  This runs whether or not kubectl is installed.
* Least privilege, and the cross-references between objects (a Service selects its
  Deployment's pods, the webhook's flags name the Secret, Service and configuration that
  exist, RBAC resourceNames match them), and the properties the design asks of the
  Deployments.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kmock._internal import apps
from kubernetes.client import models as k8s

from xds_server import cli
from xds_server.inject import InjectionConfig, inject_yaml
from xds_server.inject.webhook_command import WEBHOOK_NAME
from xds_server.sources.k8s_kinds import MESH_KINDS

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
DEMO = MANIFESTS / "samples" / "demo.yaml"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
READ_ONLY = ["get", "list", "watch"]


def documents() -> list[dict[str, Any]]:
    """The kustomization's resources, in its order (no kubectl needed)."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs.extend(doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc)
    return docs


DOCS = documents()


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def model_for(doc: dict[str, Any]) -> Any:
    version = doc["apiVersion"].rpartition("/")[2]
    return getattr(k8s, f"{version.capitalize()}{doc['kind']}")


def args_of(deployment: str) -> list[str]:
    spec = one("Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["xds-server"]
    args: list[str] = container["args"]
    return args


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# -- kubectl ------------------------------------------------------------------------------


@needs_kubectl
def test_kubectl_kustomize_renders_every_resource() -> None:
    assert KUBECTL is not None
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in objects) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in DOCS
    )
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "xds-server"
        model_for(obj).model_validate(obj)


class DiscoveryEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the core group's discovery as the API server words it."""

    async def _serve_version(self, request: Any) -> Any:
        payload = await super()._serve_version(request)
        # kmock answers "/v1" for the core group; kubectl expects "v1".
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        return payload


@pytest.fixture
async def kubeconfig(tmp_path: Path) -> Any:
    async with DiscoveryEmulator() as emulator, apps.Server(emulator):
        emulator.resources.load_bundled()
        path = tmp_path / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url)}}],
                    "users": [{"name": "test", "user": {}}],
                    "contexts": [
                        {"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}
                    ],
                    "current-context": "kmock",
                }
            )
        )
        yield path


async def _kubectl(*argv: str) -> tuple[int, str]:
    assert KUBECTL is not None
    process = await asyncio.create_subprocess_exec(
        KUBECTL, *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, output.decode()


# kmock reads its bundled discovery documents with a deprecated importlib call.
quiet_kmock = pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")


@needs_kubectl
@quiet_kmock
async def test_kubectl_apply_dry_run_accepts_the_manifests(kubeconfig: Path) -> None:
    code, output = await _kubectl(
        "--kubeconfig", str(kubeconfig), "apply", "--dry-run=client", "--validate=false",
        "-k", str(MANIFESTS),
    )  # fmt: skip
    assert code == 0, output
    assert output.count("created (dry run)") == len(DOCS), output


@needs_kubectl
@quiet_kmock
async def test_kubectl_apply_dry_run_accepts_the_injected_demo(
    kubeconfig: Path, tmp_path: Path
) -> None:
    injected, _ = inject_yaml(DEMO.read_text(), InjectionConfig())
    path = tmp_path / "demo.yaml"
    path.write_text(injected)
    code, output = await _kubectl(
        "--kubeconfig", str(kubeconfig), "apply", "--dry-run=client", "--validate=false",
        "-n", "mesh-demo", "-f", str(path),
    )  # fmt: skip
    assert code == 0, output


# -- schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in DOCS])
def test_every_object_is_valid_for_its_kind(doc: dict[str, Any]) -> None:
    model_for(doc).model_validate(doc)


def test_the_demo_apps_are_valid_before_and_after_injection() -> None:
    injected, outcomes = inject_yaml(DEMO.read_text(), InjectionConfig())
    assert [outcome.decision.inject for outcome in outcomes] == [True, True]
    for text in (DEMO.read_text(), injected):
        for doc in yaml.safe_load_all(text):
            model_for(doc).model_validate(doc)


def test_the_schema_check_catches_what_kubectl_would() -> None:
    broken = one("Deployment", "xds-server") | {"spec": {"replicas": "two"}}
    with pytest.raises(ValueError, match="replicas"):
        model_for(broken).model_validate(broken)
    typo = yaml.safe_load(yaml.safe_dump(one("Service", "xds-server")))
    typo["spec"]["prots"] = typo["spec"].pop("ports")
    with pytest.raises(ValueError, match="prots"):
        model_for(typo).model_validate(typo)


# -- least privilege -----------------------------------------------------------------------


def grants(service_account: str) -> list[tuple[str, str, str, tuple[str, ...], tuple[str, ...]]]:
    """Every (scope, apiGroup, resource, verbs, resourceNames) granted to the account."""
    found = []
    for binding in (d for d in DOCS if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        subjects = binding["subjects"]
        if not any(
            s["kind"] == "ServiceAccount" and s["name"] == service_account for s in subjects
        ):
            continue
        role = one(binding["roleRef"]["kind"], binding["roleRef"]["name"])
        scope = role["metadata"].get("namespace", "cluster")
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    found.append(
                        (
                            scope,
                            group,
                            resource,
                            tuple(rule["verbs"]),
                            tuple(rule.get("resourceNames", ())),
                        )
                    )
    return sorted(found)


def test_the_control_plane_may_only_read_what_it_watches_write_status_and_publish_roots() -> None:
    status = ("get", "update", "patch")
    assert grants("xds-server") == [
        ("cluster", "", "configmaps", ("create",), ()),
        ("cluster", "", "configmaps", ("get", "update"), ("xds-server-root-cert",)),
        ("cluster", "", "pods", tuple(READ_ONLY), ()),
        ("cluster", "", "services", tuple(READ_ONLY), ()),
        ("cluster", "authentication.k8s.io", "tokenreviews", ("create",), ()),
        ("cluster", "discovery.k8s.io", "endpointslices", tuple(READ_ONLY), ()),
        ("cluster", "gateway.networking.k8s.io", "grpcroutes", tuple(READ_ONLY), ()),
        ("cluster", "gateway.networking.k8s.io", "grpcroutes/status", status, ()),
        ("cluster", "gateway.networking.k8s.io", "httproutes", tuple(READ_ONLY), ()),
        ("cluster", "gateway.networking.k8s.io", "httproutes/status", status, ()),
        ("cluster", "policy.xds-server.dev", "authorizationpolicies", tuple(READ_ONLY), ()),
        ("cluster", "policy.xds-server.dev", "authorizationpolicies/status", status, ()),
        ("cluster", "policy.xds-server.dev", "backendpolicies", tuple(READ_ONLY), ()),
        ("cluster", "policy.xds-server.dev", "backendpolicies/status", status, ()),
        ("cluster", "policy.xds-server.dev", "peerauthentications", tuple(READ_ONLY), ()),
        ("cluster", "policy.xds-server.dev", "peerauthentications/status", status, ()),
        ("cluster", "policy.xds-server.dev", "telemetries", tuple(READ_ONLY), ()),
        ("cluster", "policy.xds-server.dev", "telemetries/status", status, ()),
        ("mesh-system", "", "secrets", ("create",), ()),
        ("mesh-system", "", "secrets", ("get", "update"), ("xds-server-ca",)),
        ("mesh-system", "coordination.k8s.io", "leases", ("create",), ()),
        ("mesh-system", "coordination.k8s.io", "leases", ("get", "update"), ("xds-server-status",)),
    ]


def test_the_control_plane_may_read_every_kind_it_watches() -> None:
    readable = {
        (group, resource)
        for scope, group, resource, verbs, names in grants("xds-server")
        if scope == "cluster" and set(READ_ONLY) <= set(verbs) and not names
    }
    for kind in MESH_KINDS:
        group = kind.api_version.rpartition("/")[0]
        assert (group, kind.plural) in readable, kind.describe(None)


def test_the_injector_may_only_touch_its_own_secret_and_webhook_configuration() -> None:
    assert grants("mesh-injector") == [
        (
            "cluster",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            ("patch",),
            ("mesh-sidecar-injector",),
        ),
        ("mesh-system", "", "secrets", ("get", "update"), ("mesh-injector-tls",)),
    ]


def test_no_rule_uses_a_wildcard() -> None:
    for role in (d for d in DOCS if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"]["name"], rule)


# -- the Deployments -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xds-server", "mesh-injector"])
def test_each_deployment_runs_two_hardened_replicas_spread_over_nodes(name: str) -> None:
    deployment = one("Deployment", name)
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == name
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert container["readinessProbe"] and container["livenessProbe"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    # Never injected itself, even if its namespace were labelled.
    assert pod["metadata"]["labels"]["sidecar.mesh.io/inject"] == "false"
    budget = one("PodDisruptionBudget", name)
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["minAvailable"] == 1


def test_the_control_plane_serves_the_kubernetes_source_with_probes_on_the_admin_port() -> None:
    args = args_of("xds-server")
    assert args == [
        "serve", "--source", "kubernetes",
        "--xds-listen", "0.0.0.0:15010", "--admin-listen", "0.0.0.0:15014",
        "--admin-token-file", "/tmp/xds-server/admin-token",
    ]  # fmt: skip
    cli._parser().parse_args(args)
    (container,) = one("Deployment", "xds-server")["spec"]["template"]["spec"]["containers"]
    # Beyond loopback, so the admin token: one for every replica, from a Secret, else a file
    # on the writable emptyDir (the root filesystem is read-only).
    (token,) = (env for env in container["env"] if env["name"] == "XDS_SERVER_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "xds-server-admin-token", "key": "token", "optional": True
    }  # fmt: skip
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc-xds": 15010, "http-admin": 15014}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}


def test_the_webhook_flags_name_objects_that_exist() -> None:
    args = args_of("mesh-injector")
    cli._parser().parse_args(args)
    assert args[0] == "webhook"
    namespace, _, secret = flag(args, "--tls-secret").partition("/")
    assert one("Secret", secret)["metadata"]["namespace"] == namespace
    configuration = one("MutatingWebhookConfiguration", flag(args, "--webhook-configuration"))
    (webhook,) = configuration["webhooks"]
    assert webhook["name"] == flag(args, "--webhook-name") == WEBHOOK_NAME
    service_ref = webhook["clientConfig"]["service"]
    assert flag(args, "--dns-name") == f"{service_ref['name']}.{service_ref['namespace']}.svc"
    service = one("Service", service_ref["name"])
    (port,) = service["spec"]["ports"]
    assert port["port"] == service_ref["port"]
    (container,) = one("Deployment", "mesh-injector")["spec"]["template"]["spec"]["containers"]
    (container_port,) = container["ports"]
    assert port["targetPort"] == container_port["name"]
    assert flag(args, "--listen") == f"0.0.0.0:{container_port['containerPort']}"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # What it injects: the image it runs itself, and the xDS Service that exists.
    assert flag(args, "--control-plane-image") == container["image"]
    assert flag(args, "--control-plane-image") == InjectionConfig().control_plane_image
    assert flag(args, "--proxy-image") == InjectionConfig().proxy_image
    xds = one("Service", "xds-server")
    xds_port = next(p["port"] for p in xds["spec"]["ports"] if p["name"] == "grpc-xds")
    expected = f"{xds['metadata']['name']}.{xds['metadata']['namespace']}.svc:{xds_port}"
    assert flag(args, "--xds-address") == expected == InjectionConfig().xds_address


@pytest.mark.parametrize("name", ["xds-server", "mesh-injector"])
def test_each_service_selects_its_deployments_pods(name: str) -> None:
    service = one("Service", name)
    pod_labels = one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_rbac_resource_names_match_the_objects() -> None:
    secret_rule = one("Role", "mesh-injector")["rules"][0]
    assert one("Secret", secret_rule["resourceNames"][0])
    webhook_rule = one("ClusterRole", "mesh-injector")["rules"][0]
    assert one("MutatingWebhookConfiguration", webhook_rule["resourceNames"][0])


# -- the webhook configuration ---------------------------------------------------------------


def test_the_webhook_injects_pods_of_labelled_namespaces_only_and_fails_closed() -> None:
    (webhook,) = one("MutatingWebhookConfiguration", "mesh-sidecar-injector")["webhooks"]
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["reinvocationPolicy"] == "Never"
    assert webhook["clientConfig"]["service"]["path"] == "/inject"
    assert "caBundle" not in webhook["clientConfig"], "patched in by the injector"
    (rule,) = webhook["rules"]
    assert rule["operations"] == ["CREATE"] and rule["resources"] == ["pods"]
    selector = webhook["namespaceSelector"]["matchExpressions"]
    assert {"key": "mesh-injection", "operator": "In", "values": ["enabled"]} in selector
    excluded = next(e for e in selector if e["key"] == "kubernetes.io/metadata.name")
    assert excluded["operator"] == "NotIn" and "mesh-system" in excluded["values"]
    assert webhook["objectSelector"]["matchExpressions"] == [
        {"key": "sidecar.mesh.io/inject", "operator": "NotIn", "values": ["false"]}
    ]


def test_the_control_plane_namespace_enforces_the_restricted_pod_security_standard() -> None:
    labels = one("Namespace", "mesh-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "mesh-injection" not in labels


# -- image and cluster files -------------------------------------------------------------------


def test_the_dockerfile_builds_a_non_root_image_with_iptables() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "iptables" in dockerfile
    assert "USER 10001:10001" in dockerfile
    assert 'ENTRYPOINT ["xds-server"]' in dockerfile
    for deployment in ("xds-server", "mesh-injector"):
        spec = one("Deployment", deployment)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001


def test_the_kind_cluster_has_one_control_plane_and_two_workers() -> None:
    cluster = yaml.safe_load((REPO / "kind-cluster.yaml").read_text())
    assert [node["role"] for node in cluster["nodes"]] == ["control-plane", "worker", "worker"]


def _walk(directory: Path) -> Iterator[Path]:
    yield from (path for path in directory.rglob("*.yaml") if path.is_file())


def test_every_manifest_file_is_used() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    files = {
        os.fspath(path.relative_to(MANIFESTS))
        for path in _walk(MANIFESTS)
        if path.name != "kustomization.yaml"
        and (path.parent == MANIFESTS or path.parent == MANIFESTS / "crds")
    }
    assert files == listed
