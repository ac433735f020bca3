"""What injection adds so a sidecar authenticates to the secured xDS port, and what the
bootstrap step renders from it: the Pod's projected token as ADS metadata, the mesh's
roots by file name (watched), the control plane's SPIFFE ID checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from xds_server import cli
from xds_server.inject import InjectionConfig, inject_pod
from xds_server.inject.pod_bootstrap import render_pod_bootstrap, token_client_tls
from xds_server.inject.sidecar import bootstrap_container, proxy_container

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "app", "image": "web:1"}]},
}


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod["spec"]["volumes"]}


def mounts(container: dict[str, Any]) -> dict[str, str]:
    return {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}


def test_the_pod_gets_a_token_for_the_control_planes_audience_and_the_roots_configmap() -> None:
    config = InjectionConfig(token_audience="mesh-cp", token_expiration_seconds=3600)
    injected, _ = inject_pod(POD, config)
    found = volumes(injected)
    assert found["mesh-xds-token"]["projected"] == {
        "sources": [
            {
                "serviceAccountToken": {
                    "audience": "mesh-cp",
                    "expirationSeconds": 3600,
                    "path": "token",
                }
            }
        ]
    }
    assert found["mesh-xds-roots"]["configMap"] == {
        "name": "xds-server-root-cert",
        "items": [{"key": "root-cert.pem", "path": "root-cert.pem"}],
    }


def test_the_bootstrap_step_reads_both_and_envoy_only_the_roots() -> None:
    bootstrap = bootstrap_container(InjectionConfig())
    assert mounts(bootstrap) == {
        "mesh-bootstrap": "/etc/envoy",
        "mesh-podinfo": "/etc/mesh/podinfo",
        "mesh-xds-token": "/var/run/secrets/xds-server",
        "mesh-xds-roots": "/etc/mesh/xds-roots",
    }
    assert all(
        m.get("readOnly") for m in bootstrap["volumeMounts"] if m["name"] != "mesh-bootstrap"
    )
    args = bootstrap["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--token-file"] == "/var/run/secrets/xds-server/token"
    assert flags["--roots-file"] == "/etc/mesh/xds-roots/root-cert.pem"
    assert (flags["--trust-domain"], flags["--control-plane-namespace"]) == (
        "cluster.local",
        "mesh-system",
    )
    # The proxy never sees the token file (its bootstrap carries the token it sends).
    assert mounts(proxy_container(InjectionConfig())) == {
        "mesh-bootstrap": "/etc/envoy",
        "mesh-xds-roots": "/etc/mesh/xds-roots",
    }


def test_an_insecure_injection_adds_neither_and_says_so_to_the_bootstrap_step() -> None:
    config = InjectionConfig(insecure_xds=True)
    injected, _ = inject_pod(POD, config)
    assert set(volumes(injected)) == {"mesh-bootstrap", "mesh-podinfo"}
    args = bootstrap_container(config)["args"]
    assert "--insecure-xds" in args and "--token-file" not in args
    status = injected["metadata"]["annotations"]["sidecar.mesh.io/status"]
    assert '"volumes":["mesh-bootstrap","mesh-podinfo"]' in status


def test_a_token_shorter_lived_than_the_api_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="minimum of 600"):
        InjectionConfig(token_expiration_seconds=599)


def test_the_inject_command_takes_the_trust_domain_and_the_audience(tmp_path: Path) -> None:
    source = tmp_path / "pod.yaml"
    source.write_text(yaml.safe_dump(POD))
    output = tmp_path / "out.yaml"
    argv = ["inject", "-f", str(source), "-o", str(output), "--trust-domain", "prod.example"]
    assert cli.main([*argv, "--token-audience", "mesh-cp"]) == 0
    injected = yaml.safe_load(output.read_text())
    (bootstrap,) = [c for c in injected["spec"]["initContainers"] if c["name"] == "mesh-bootstrap"]
    assert "prod.example" in bootstrap["args"]
    token = volumes(injected)["mesh-xds-token"]["projected"]["sources"][0]
    assert token["serviceAccountToken"]["audience"] == "mesh-cp"


def render(**tls: Any) -> dict[str, Any]:
    text = render_pod_bootstrap(
        pod_name="web-0",
        namespace="shop",
        pod_ip="10.0.0.7",
        service_account="web",
        xds_address="xds-server.mesh-system.svc:15010",
        xds_tls=token_client_tls(roots_file="/etc/mesh/xds-roots/root-cert.pem", **tls),
    )
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def xds_tls_context(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster"
    ]
    context: dict[str, Any] = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    return context


def test_the_bootstrap_sends_the_token_and_checks_the_control_planes_spiffe_id() -> None:
    bootstrap = render(token="eyJ.token\n", trust_domain="prod.example")
    (ads,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    assert ads["initial_metadata"] == [{"key": "authorization", "value": "Bearer eyJ.token"}]
    context = xds_tls_context(bootstrap)
    assert context["alpn_protocols"] == ["h2"]
    assert context["validation_context"] == {
        "trusted_ca": {"filename": "/etc/mesh/xds-roots/root-cert.pem"},
        "match_typed_subject_alt_names": [
            {
                "san_type": "URI",
                "matcher": {"exact": "spiffe://prod.example/ns/mesh-system/sa/xds-server"},
            }
        ],
    }
    assert "tls_certificates" not in context, "a token, no client certificate"


def test_with_an_sds_directory_envoy_rereads_the_roots_when_the_configmap_changes() -> None:
    tls = token_client_tls(
        token="t", roots_file="/etc/mesh/xds-roots/root-cert.pem", sds_directory="/etc/envoy"
    )
    assert tls.watched_directory == "/etc/mesh/xds-roots"
    (path,) = tls.sds_files()
    assert path == "/etc/envoy/xds-server-roots.yaml"
    sds = yaml.safe_load(tls.sds_files()[path])["resources"][0]["validation_context"]
    assert sds == {
        "trusted_ca": {"filename": "/etc/mesh/xds-roots/root-cert.pem"},
        "watched_directory": {"path": "/etc/mesh/xds-roots"},
    }


def test_an_empty_token_is_refused_before_envoy_would_be_refused() -> None:
    with pytest.raises(ValueError, match="token is empty"):
        render(token="\n")


def test_the_bootstrap_step_fails_clearly_without_its_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "sidecar-bootstrap",
        "--pod-name", "web-0", "--namespace", "shop", "--pod-ip", "10.0.0.7",
        "--xds-address", "xds-server.mesh-system.svc:15010",
        "--token-file", str(tmp_path / "missing"),
        "--output", str(tmp_path / "bootstrap.yaml"),
    ]  # fmt: skip
    assert cli.main(argv) == 1
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "bootstrap.yaml").exists()
