"""The benchmarks run end to end in a small, bounded mode and report what they promise.

Each benchmark runs as people run it (`python bench/NAME.py ...` in a
subprocess) with tiny sizes; its last line of output is the JSON result.
The full-size runs and the goals they check are described in bench/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xds_server.envoy_process import envoy_binary

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(name: str, *args: str, timeout: float = 100.0) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=BENCH.parent,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.strip().splitlines()
    assert lines, completed.stderr
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def test_push_sends_one_small_assignment_to_subscribers_and_nothing_to_others() -> None:
    result = run_bench("push", "--services", "30", "--proxies", "2", "--changes", "2")

    assert result["benchmark"] == "push"
    assert set(result["variants"]) == {"sotw", "delta"}
    for variant, summary in result["variants"].items():
        assert summary["proxies"] == 4, variant
        assert summary["unsubscribed_bytes"] == 0, variant
        assert summary["server_unsubscribed_bytes"] == 0, variant
        assert 0 < summary["subscribed_bytes"] < 2048, variant
        assert set(summary["subscribed_bytes_by_type"]) == {"EDS"}, variant
        assert summary["server_subscribed_bytes"] == summary["subscribed_bytes"], variant
        assert 0 < summary["extra_bytes"] < 2048, variant
        for key in (
            "apply_ms",
            "apply_cpu_ms",
            "push_cpu_ms",
            "push_cpu_per_proxy_ms",
            "sync_cpu_per_proxy_ms",
        ):
            assert summary[key] > 0, (variant, key)
        assert summary["proxies_added_for_memory"] == 4, variant
        assert summary["rss_per_proxy_bytes"] >= 0, variant
    assert result["goal_met"] == {"sotw": True, "delta": True}


SERVICE_CHANGE_ARGS = ("--services", "300", "--proxies", "3", "--spread", "3", "--changes", "2")
"""300 Services in 3 namespaces; proxy k in bench-(k % 3), selected by its first Service."""


@pytest.fixture(scope="module")
def service_change() -> dict[str, Any]:
    return run_bench("service_change", *SERVICE_CHANGE_ARGS)


def test_service_change_serves_one_route_table_per_namespace_with_proxies(
    service_change: dict[str, Any],
) -> None:
    assert service_change["benchmark"] == "service_change"
    layouts = {layout["namespaces_with_proxies"]: layout for layout in service_change["layouts"]}
    assert set(layouts) == {1, 3}
    for namespaces, layout in layouts.items():
        assert layout["route_configs"] == namespaces
        assert layout["route_config_bytes"] > 0
        assert layout["memory_per_proxy"]["traced_bytes"] > 0
        live = layout["memory_per_proxy"]["live_bytes"]
        assert live is None or live > 0  # None: not glibc
        assert layout["mesh_cpu_ms"] > 0
        for name, scenario in layout["scenarios"].items():
            assert scenario["apply_ms"] > 0, name
            assert scenario["apply_cpu_per_proxy_ms"] > 0, name


@pytest.mark.parametrize(
    ("scenario", "namespaces", "proxies_sent", "types_sent"),
    [
        ("port", 1, 3, ["CDS", "EDS", "RDS"]),
        ("port", 3, 3, ["CDS", "EDS", "RDS"]),
        ("target-port", 1, 3, ["CDS", "LDS"]),
        ("target-port", 3, 1, ["CDS", "LDS"]),
        ("selector", 1, 3, ["CDS", "LDS"]),
        ("selector", 3, 1, ["CDS", "LDS"]),
    ],
)
def test_service_change_reaches_the_proxies_whose_config_it_changes(
    service_change: dict[str, Any],
    scenario: str,
    namespaces: int,
    proxies_sent: int,
    types_sent: list[str],
) -> None:
    layout = next(
        x for x in service_change["layouts"] if x["namespaces_with_proxies"] == namespaces
    )
    measured = layout["scenarios"][scenario]

    assert measured["proxies_sent"] == [proxies_sent, proxies_sent]
    assert measured["types_sent"] == types_sent
    assert all(0 <= count <= 3 for count in measured["retranslated"])
    if layout["retranslated_counted_by"] == "GenerationRecord.units":
        assert measured["pushed_by_records"] == [proxies_sent, proxies_sent]


@pytest.mark.envoy
def test_startup_times_envoy_over_xds_and_from_static_files() -> None:
    if envoy_binary() is None:
        pytest.skip("envoy is not on PATH")
    result = run_bench("startup", "--services", "20", "--endpoints", "2", "--repeat", "1")

    assert result["benchmark"] == "startup"
    assert set(result["variants"]) == {"static-json", "static-pb", "xds-sotw", "xds-delta"}
    for name, summary in result["variants"].items():
        assert summary["clusters"] == 20, name
        assert summary["endpoints"] == 40, name
        assert 0 < summary["loaded_median_s"] < 60, name
    for mode in ("sotw", "delta"):
        assert result["variants"][f"xds-{mode}"]["bytes_by_type"]["EDS"] > 0
        assert result["ratios"][f"{mode}_vs_json"] > 0
        assert result["ratios"][f"{mode}_vs_pb"] > 0
    assert result["control_plane"]["translate_serialize_ms"] > 0
    assert result["control_plane"]["first_push_bytes"] > 0


def test_policy_change_sends_only_the_changed_clusters_and_nothing_to_others() -> None:
    result = run_bench("policy_change", "--services", "200", "--proxies", "2", "--changes", "2")

    assert result["benchmark"] == "policy_change"
    assert result["goal_met"] == {
        "delta_only_changed_clusters": True,
        "unchanged_proxies_sent_nothing": True,
    }
    for variant, summary in result["variants"].items():
        scenarios = summary["scenarios"]
        assert scenarios["service"]["clusters_changed"] == 1, variant
        assert scenarios["namespace"]["clusters_changed"] == 100, variant
        assert scenarios["inbound-only"]["clusters_changed"] == 0, variant
        assert scenarios["inbound-only"]["most_bytes_per_proxy"] == 0, variant
        for name in ("service", "namespace"):
            measured = scenarios[name]
            assert set(measured["types_sent"]) <= {"CDS", "EDS"}, (variant, name)
            assert measured["least_bytes_per_proxy"] > 0, (variant, name)
            assert measured["server_most_bytes_per_proxy"] == measured["most_bytes_per_proxy"]
            assert measured["apply_cpu_ms"] > 0 and measured["push_cpu_ms"] > 0
    delta = result["variants"]["delta"]["scenarios"]["service"]
    assert delta["most_bytes_per_proxy"] < 2048  # one cluster and its endpoints


def test_validation_measures_envoy_rule_checks_per_resource_and_per_push() -> None:
    result = run_bench(
        "validation",
        *("--services", "200", "--proxies", "2", "--spread", "2"),
        *("--changes", "2", "--repeat", "20"),
    )

    assert result["benchmark"] == "validation"
    resources = {r["resource"]: r for r in result["resources"]}
    assert any(name.startswith("route table") for name in resources)
    for name, measured in resources.items():
        assert measured["cold_us"] > 0, name
        if measured["cached_us"] is not None:
            assert 0 < measured["cached_us"] < measured["cold_us"], name
    endpoint, service = result["pushes"]["endpoint"], result["pushes"]["service"]
    assert endpoint["with_checked"] == 1  # the one new load assignment
    assert service["with_checked"] >= 3  # its new cluster, load assignment and host at least
    assert endpoint["without_checked"] == service["without_checked"] == 0
    for push in (endpoint, service):
        assert push["with_ms"] > 0 and push["without_ms"] > 0
    assert result["initial_sync"]["with_checked"] > 400


def test_certificates_measures_issuance_and_a_rotation_wave_of_secrets_only() -> None:
    result = run_bench("certificates", "--issue", "20", "--runs", "2", "--proxies", "20")
    assert result["benchmark"] == "certificates"
    assert result["issuance_per_second"] > 0
    rotation = result["rotation"]
    assert rotation["certificates_reissued"] == rotation["proxies_pushed"] == 20
    assert rotation["proxies_with_other_changes"] == 0
    assert 500 < rotation["sds_bytes_per_proxy"] < 5000  # one Secret each: a chain and a key
