"""What a BackendPolicy change re-runs: only the generators that read what it changed.

A policy that shapes clusters (load balancing, limits, health checks) re-runs the
units of the Services it governs and no route table; one that sets default
retries or timeouts also re-runs the route tables, whose default routes carry them.
"""

from __future__ import annotations

from google.protobuf import json_format

from xds_server.cache import SnapshotCache
from xds_server.model import ChangeSet, Proxy, Service, ServicePort
from xds_server.model.policy import BackendPolicy
from xds_server.pipeline import SnapshotBuilder
from xds_server.pipeline.records import GenerationRecord
from xds_server.policy_api import backend_policy_pb2 as api
from xds_server.resources import CLUSTER, ROUTE

SHOP_WEB = Service("shop", "web", ports=(ServicePort(80, name="http"),), cluster_ip="10.0.0.1")
SHOP_API = Service("shop", "api", ports=(ServicePort(80, name="http"),), cluster_ip="10.0.0.2")
BILLING = Service("billing", "ledger", ports=(ServicePort(80, name="http"),), cluster_ip="10.0.0.3")
PROXIES = (Proxy("a.shop", namespace="shop"), Proxy("b.billing", namespace="billing"))


def policy(name: str, spec: dict[str, object]) -> BackendPolicy:
    message = json_format.ParseDict(
        {"targetRefs": [{"kind": "Service", "name": "web"}], **spec}, api.BackendPolicySpec()
    )
    return BackendPolicy.of("shop", name, message)


def builder() -> tuple[SnapshotBuilder, list[GenerationRecord]]:
    built = SnapshotBuilder(SnapshotCache())
    changes = ChangeSet()
    for service in (SHOP_WEB, SHOP_API, BILLING):
        changes.upsert(service)
    built.apply(changes)
    for proxy in PROXIES:
        built.add_proxy(proxy)
    built.mark_synced()
    records: list[GenerationRecord] = []
    built.on_generation = records.append
    return built, records


def applied(built: SnapshotBuilder, obj: BackendPolicy) -> None:
    changes = ChangeSet()
    changes.upsert(obj)
    built.apply(changes)


def sent(record: GenerationRecord) -> set[tuple[str, str]]:
    """(type URL, name) of every resource some proxy was given anew."""
    return {(t, n) for p in record.proxies for t, names in p.changed.items() for n in names}


def route_units(record: GenerationRecord) -> list[str]:
    return sorted(unit for unit in record.units if unit.startswith("routes"))


CLUSTER_ONLY = {"loadBalancer": {"algorithm": "LeastRequest"}}
WITH_RETRY = {"retry": {"attempts": 3, "codes": [503]}}


def test_a_policy_shaping_clusters_only_rebuilds_the_service_s_unit_and_no_route_table() -> None:
    built, records = builder()
    applied(built, policy("lb", CLUSTER_ONLY))
    (record,) = records
    # Every Service of the policy's namespace is re-translated (any of its policies may
    # attach to them), none of another namespace, and no route table.
    assert sorted(u for u in record.units if u.startswith("service")) == [
        "service:shop/api",
        "service:shop/web",
    ]
    assert route_units(record) == []
    changed = sent(record)
    assert changed == {(CLUSTER, "outbound|80||web.shop.svc.cluster.local")}


def test_a_policy_with_default_retries_rebuilds_the_route_tables_too() -> None:
    built, records = builder()
    applied(built, policy("retry", WITH_RETRY))
    (record,) = records
    assert route_units(record) == ["routes:billing", "routes:shop"]
    changed = sent(record)
    assert (ROUTE, "outbound|shop") in changed and (ROUTE, "outbound|billing") in changed


def test_a_cluster_only_edit_of_a_policy_that_also_sets_retries_leaves_the_tables_alone() -> None:
    built, records = builder()
    applied(built, policy("both", WITH_RETRY))
    applied(built, policy("both", {**WITH_RETRY, **CLUSTER_ONLY}))
    first, second = records
    assert route_units(first) == ["routes:billing", "routes:shop"]
    # The policy's value changed, so the tables are rebuilt, but to the same bytes.
    changed = sent(second)
    assert changed == {(CLUSTER, "outbound|80||web.shop.svc.cluster.local")}
