"""manifests/observability/: the Grafana dashboard and how Prometheus finds what it shows.

* The dashboard is valid Grafana JSON: unique panel ids, targets with PromQL and
  distinct refIds, panels inside the 24-column grid, templated by namespace and
  workload (every sidecar panel uses both).
* Every metric a control-plane panel queries is one a live control plane exports
  (its `/metrics`, scraped from a running plane); every one the issue names has a
  panel.  Every metric a sidecar panel queries is one real Envoy sidecars (a client
  calling a backend pod's) export on `/stats/prometheus` after serving requests,
  with the stats tags the docs give (the full cluster name as `envoy_cluster_name`),
  and the panels' inbound/outbound selectors match their connection managers.
* The ServiceMonitor, the PodMonitor and the plain scrape config select what the
  manifests deploy: the xds-server Service's admin port, injected pods' proxy
  container on 15090; the kustomize Component renders with the base manifests.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_mesh import (
    Sidecar,
    eventually,
    manifest_directory,
    service_yaml,
    sidecar_bootstrap,
    slice_yaml,
    start_apps,
)
from metrics_scrape import exported_names, metered_plane, metrics_text

from xds_server.inject.sidecar import PROXY_CONTAINER
from xds_server.model.peer_authentication import TLS_MODE_LABEL

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
OBSERVABILITY = MANIFESTS / "observability"
DASHBOARD = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
KUBECTL = shutil.which("kubectl")
SIDECAR_STATS_PORT = 15090


def docs_stats_config() -> dict[str, Any]:
    """The sidecar stats configuration docs/observability.md gives (its YAML block)."""
    blocks = (REPO / "docs" / "observability.md").read_text().split("```yaml\n")[1:]
    (block,) = [block.split("```")[0] for block in blocks if "stats_config:" in block]
    config: dict[str, Any] = yaml.safe_load(block)["stats_config"]
    return config


def panels() -> Iterator[dict[str, Any]]:
    for panel in DASHBOARD["panels"]:
        yield panel
        yield from panel.get("panels", ())


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", ())]


PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan"}
)  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in `{...}`, `by (...)`) or durations (in `[...]`)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name, rest = match.group(), text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_WORDS:
            continue
        found.add(name)
    return found


def queried(prefix: str) -> set[str]:
    return {
        name for expr in expressions() for name in metric_names(expr) if name.startswith(prefix)
    }


# -- the dashboard as Grafana reads it -------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (type) (rate(xds_pushes_total{job="x"}[5m]))', {"xds_pushes_total"}),
        (
            "histogram_quantile(0.9, sum by (le) (rate(a_bucket[$__rate_interval])))",
            {"a_bucket"},
        ),
        ('sum(rate(a{b=~"c\\\\|d"}[1m])) / sum(rate(b_total[1m]))', {"a", "b_total"}),
        ("count(up) and on (job) vector(1)", {"up"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_dashboard_is_grafana_json_with_unique_panels_on_the_grid() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets and all(target["expr"].strip() for target in targets), panel["title"]
        refs = [target["refId"] for target in targets]
        assert len(refs) == len(set(refs)), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    cells = [
        (panel["title"], (x, y))
        for panel in panels()
        for x in range(panel["gridPos"]["x"], panel["gridPos"]["x"] + panel["gridPos"]["w"])
        for y in range(panel["gridPos"]["y"], panel["gridPos"]["y"] + panel["gridPos"]["h"])
    ]
    assert len({cell for _, cell in cells}) == len(cells), "no two panels overlap"
    brackets = {"(": ")", "{": "}", "[": "]"}
    for expr in expressions():
        stack: list[str] = []
        for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
            if char in brackets:
                stack.append(brackets[char])
            elif char in brackets.values():
                assert stack and stack.pop() == char, expr
        assert not stack, expr


def test_the_dashboard_is_templated_by_namespace_and_workload() -> None:
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert {"datasource", "namespace", "workload"} <= variables.keys()
    assert "$namespace" in variables["workload"]["query"]["query"], "workloads of the namespace"
    for expr in expressions():
        if queried("envoy_") & metric_names(expr):
            assert 'namespace=~"$namespace"' in expr and 'workload=~"$workload"' in expr, expr
        else:
            assert 'job="xds-server"' in expr, expr


ISSUE_METRICS = {
    "xds_connected_streams",  # connected proxies by stream type
    "xds_pushes_total",  # pushes by type and trigger
    "xds_push_build_seconds_bucket",  # push build time
    "xds_response_bytes_total",  # bytes sent
    "xds_debounce_merges_total",
    "xds_nacks_total",
    "xds_source_events_total",
    "xds_source_watch_restarts_total",
    "xds_validation_failures_total",
    "xds_push_ack_latency_seconds_bucket",  # change to ACK
}


def test_every_control_plane_metric_of_the_issue_has_a_panel() -> None:
    assert queried("xds_") >= ISSUE_METRICS


async def test_every_control_plane_metric_queried_is_exported_by_a_live_plane(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    directory = manifest_directory(tmp_path, {"backend.yaml": [service_yaml("backend")]})
    async with metered_plane(directory, free_port) as plane:
        exported = exported_names(await metrics_text(plane))
    assert queried("xds_") <= exported, queried("xds_") - exported


POD_IP = "127.0.43.1"
"""The backend pod's IP: its sidecar's inbound listener."""
APP_IP = "127.0.43.2"
"""Where the backend app listens."""


async def sidecar_with_stats_tags(
    envoy_factory: Any, xds_port: int, outbound_port: int, node_id: str, **node: Any
) -> Sidecar:
    """A real sidecar as `e2e_mesh.start_sidecar` starts one, with docs' stats config."""
    bootstrap = yaml.safe_load(
        sidecar_bootstrap(node_id, xds_port, outbound_port, delta=False, **node)
    )
    bootstrap["stats_config"] = docs_stats_config()
    envoy = envoy_factory(yaml.safe_dump(bootstrap), name=node_id.split(".")[0], start=False)
    await envoy.start_async()
    await envoy.wait_live_async()
    return Sidecar(envoy, node_id, outbound_port)


async def prometheus_text(sidecar: Sidecar) -> str:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return (await client.get(f"{sidecar.envoy.admin_url}/stats/prometheus")).text


def stored_names(text: str) -> set[str]:
    """Sample names as Prometheus stores them (prometheus_client's parser would add
    `_total` to every counter's)."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def prefixes_answered(text: str) -> set[str]:
    """The HTTP connection managers that answered a 2xx (a positive count)."""
    found = re.finditer(
        r'^envoy_http_downstream_rq_xx\{envoy_response_code_class="2",'
        r'envoy_http_conn_manager_prefix="([^"]+)"\} ([0-9]+)$',
        text,
        re.MULTILINE,
    )
    return {match.group(1) for match in found if int(match.group(2)) > 0}


@pytest.mark.envoy
@pytest.mark.timeout(120)
async def test_every_sidecar_metric_queried_is_exported_by_real_envoys(
    tmp_path: Path, free_port: Callable[[], int], envoy_factory: Any
) -> None:
    """A client sidecar calls a backend pod's sidecar; both export what the panels query,
    and their directions match the panels' connection-manager selectors."""
    port = free_port()
    service = service_yaml("backend").replace("targetPort: 8080", f"targetPort: {port}")
    directory = manifest_directory(
        tmp_path, {"backend.yaml": [service, slice_yaml("backend", [POD_IP], port)]}
    )
    async with contextlib.AsyncExitStack() as stack:
        await start_apps(stack, port, ("backend", "v1", APP_IP))
        plane = await stack.enter_async_context(metered_plane(directory, free_port))
        backend = await sidecar_with_stats_tags(
            envoy_factory, plane.xds_port, free_port(), "backend-0.default",
            workload="backend-0", labels={"app": "backend"}, instance_ip=POD_IP,
            app_address=APP_IP,
        )  # fmt: skip
        client = await sidecar_with_stats_tags(
            envoy_factory, plane.xds_port, free_port(), "client-0.default"
        )

        async def answered() -> bool:
            return (await client.get("backend:8080")).status_code == 200

        await eventually(answered, message="the backend answers through both sidecars")
        for _ in range(3):
            assert await answered()
        texts = {"client": await prometheus_text(client), "backend": await prometheus_text(backend)}

    exported = stored_names(texts["client"]) | stored_names(texts["backend"])
    assert queried("envoy_") <= exported, queried("envoy_") - exported
    cluster = "outbound|8080||backend.default.svc.cluster.local"
    assert f'envoy_cluster_upstream_rq_total{{envoy_cluster_name="{cluster}"}}' in texts["client"]
    # The request went out of the client's outbound and into the backend's inbound
    # connection manager; the panels' selectors pick those, not Envoy's own admin.
    selected = {
        prefix: (bool(re.fullmatch("inbound_.*", prefix)), bool(re.fullmatch("outbound.*", prefix)))
        for prefix in prefixes_answered(texts["client"]) | prefixes_answered(texts["backend"])
    }
    assert selected[f"inbound_{port}"] == (True, False)
    assert selected["outbound_http"] == (False, True)
    assert selected.get("admin", (False, False)) == (False, False)
    assert f"inbound_{port}" in prefixes_answered(texts["backend"])


# -- scraping --------------------------------------------------------------------------------


def observability_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in ("servicemonitor.yaml", "podmonitor.yaml"):
        docs.extend(doc for doc in yaml.safe_load_all((OBSERVABILITY / name).read_text()) if doc)
    return docs


def control_plane_service() -> dict[str, Any]:
    for doc in yaml.safe_load_all((MANIFESTS / "xds-server.yaml").read_text()):
        if doc and doc["kind"] == "Service" and doc["metadata"]["name"] == "xds-server":
            return dict(doc)
    raise AssertionError("no xds-server Service")


def test_the_service_monitor_scrapes_the_control_plane_s_admin_port() -> None:
    (monitor,) = [doc for doc in observability_docs() if doc["kind"] == "ServiceMonitor"]
    service = control_plane_service()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["port"] == "http-admin"
    # The job is the Service's name: what the dashboard's control-plane panels select.
    assert service["metadata"]["name"] == "xds-server" and "jobLabel" not in monitor["spec"]


def test_the_pod_monitor_scrapes_every_injected_sidecar_on_15090() -> None:
    (monitor,) = [doc for doc in observability_docs() if doc["kind"] == "PodMonitor"]
    spec = monitor["spec"]
    assert spec["selector"]["matchExpressions"] == [{"key": TLS_MODE_LABEL, "operator": "Exists"}]
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["path"] == "/stats/prometheus"
    relabel = {tuple(r.get("sourceLabels", ())): r for r in endpoint["relabelings"]}
    assert relabel[("__meta_kubernetes_pod_container_name",)]["regex"] == PROXY_CONTAINER
    address = relabel[("__meta_kubernetes_pod_ip",)]
    assert (address["targetLabel"], address["replacement"]) == (
        "__address__",
        f"$1:{SIDECAR_STATS_PORT}",
    )
    targets = {r.get("targetLabel") for r in endpoint["relabelings"]}
    assert {"namespace", "workload"} <= targets, "the dashboard's variables"


def test_the_plain_scrape_config_does_the_same_without_the_operator() -> None:
    config = yaml.safe_load((OBSERVABILITY / "prometheus-scrape.yaml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs.keys() == {"xds-server", "xds-server-sidecars"}
    plane, sidecars = jobs["xds-server"], jobs["xds-server-sidecars"]
    assert plane["metrics_path"] == "/metrics"
    assert plane["relabel_configs"][0]["regex"] == "xds-server;http-admin"
    assert sidecars["metrics_path"] == "/stats/prometheus"
    label = re.sub(r"[^A-Za-z0-9_]", "_", TLS_MODE_LABEL)
    relabel = {tuple(r["source_labels"]): r for r in sidecars["relabel_configs"]}
    assert relabel[(f"__meta_kubernetes_pod_labelpresent_{label}",)]["action"] == "keep"
    assert relabel[("__meta_kubernetes_pod_container_name",)]["regex"] == PROXY_CONTAINER
    assert relabel[("__meta_kubernetes_pod_ip",)]["replacement"] == f"$1:{SIDECAR_STATS_PORT}"
    assert {"namespace", "workload"} <= {r.get("target_label") for r in sidecars["relabel_configs"]}


def test_the_component_lists_its_files_and_is_not_in_the_default_kustomization() -> None:
    component = yaml.safe_load((OBSERVABILITY / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    for name in component["resources"]:
        assert (OBSERVABILITY / name).is_file(), name
    (generator,) = component["configMapGenerator"]
    assert generator["files"] == ["grafana-dashboard.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    base = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert not any("observability" in entry for entry in base["resources"]), (
        "optional: ServiceMonitor and PodMonitor need the Prometheus Operator's CRDs"
    )


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
def test_an_overlay_with_the_component_renders_monitors_and_dashboard(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../manifests]\ncomponents: [../manifests/observability]\n"
    )
    assert KUBECTL is not None
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert {
        ("ServiceMonitor", "xds-server"),
        ("PodMonitor", "xds-server-sidecars"),
        ("ConfigMap", "xds-server-grafana-dashboard"),
        ("Deployment", "xds-server"),
    } <= kinds
    (config_map,) = [
        doc for doc in docs if doc["metadata"]["name"] == "xds-server-grafana-dashboard"
    ]
    assert json.loads(config_map["data"]["grafana-dashboard.json"]) == DASHBOARD
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
