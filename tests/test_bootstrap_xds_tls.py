"""How a rendered bootstrap speaks to the secured xDS port (`XdsClientTls`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from xds_server.bootstrap import XdsClientTls, file_source, inline_source, render_bootstrap

SERVER = "spiffe://cluster.local/ns/mesh-system/sa/xds-server"


def rendered(tls: XdsClientTls | None) -> dict[str, Any]:
    text = render_bootstrap(
        node_id="web-0.shop", namespace="shop", xds_address="127.0.0.1:15010", admin_port=0,
        xds_tls=tls,
    )  # fmt: skip
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def xds_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == "xds_cluster"
    return dict(cluster)


def test_without_a_credential_the_xds_cluster_is_plaintext() -> None:
    assert "transport_socket" not in xds_cluster(rendered(None))


def test_a_client_certificate_and_a_pinned_server_identity() -> None:
    tls = XdsClientTls(
        SERVER, inline_source("ROOTS"), inline_source("CHAIN"), inline_source(b"KEY")
    )

    socket = xds_cluster(rendered(tls))["transport_socket"]["typed_config"]
    common = socket["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"]["trusted_ca"] == {"inline_string": "ROOTS"}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": SERVER}}
    ]
    assert common["tls_certificates"] == [
        {"certificate_chain": {"inline_string": "CHAIN"}, "private_key": {"inline_string": "KEY"}}
    ]


def test_a_token_goes_as_authorization_metadata_on_the_ads_stream() -> None:
    bootstrap = rendered(XdsClientTls(SERVER, file_source("/roots/root-cert.pem"), token="tok"))

    (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    assert service["initial_metadata"] == [{"key": "authorization", "value": "Bearer tok"}]
    common = xds_cluster(bootstrap)["transport_socket"]["typed_config"]["common_tls_context"]
    assert "tls_certificates" not in common


def test_a_watched_credential_is_read_through_file_based_sds(tmp_path: Path) -> None:
    tls = XdsClientTls(
        SERVER,
        file_source(tmp_path / "roots.pem"),
        file_source(tmp_path / "cert.pem"),
        file_source(tmp_path / "key.pem"),
        watched_directory=str(tmp_path),
    )

    common = xds_cluster(rendered(tls))["transport_socket"]["typed_config"]["common_tls_context"]
    combined = common["combined_validation_context"]
    assert combined["default_validation_context"]["match_typed_subject_alt_names"][0][
        "matcher"
    ] == {"exact": SERVER}
    roots_source = combined["validation_context_sds_secret_config"]["sds_config"]
    assert roots_source["path_config_source"]["watched_directory"] == {"path": str(tmp_path)}
    files = {Path(path).name: yaml.safe_load(text) for path, text in tls.sds_files().items()}
    (certificate,) = files["xds-client-certificate.yaml"]["resources"]
    assert certificate["tls_certificate"]["private_key"] == {"filename": str(tmp_path / "key.pem")}
    (roots,) = files["xds-server-roots.yaml"]["resources"]
    assert roots["validation_context"]["trusted_ca"] == {"filename": str(tmp_path / "roots.pem")}


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"certificate": inline_source("C")}, "goes with its private key"),
        ({}, "needs a client certificate or a token"),
        ({"token": "t", "watched_directory": "/d"}, "read from files"),
    ],
)
def test_an_incomplete_credential_is_refused(arguments: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        XdsClientTls(SERVER, inline_source("R"), **arguments)
