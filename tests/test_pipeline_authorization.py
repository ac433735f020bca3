"""An AuthorizationPolicy change re-translates exactly the proxies it may govern.

The proxies read their namespace's and the root namespace's policies
(`("ns", AuthorizationPolicy, ns)` facts), so a policy of one namespace
re-translates that namespace's proxies only, and changes the listeners of
those it selects; a mesh-wide one (root namespace) reaches every proxy.
"""

from __future__ import annotations

from test_pipeline_dependencies import builder_with, changes_of, served

from xds_server.model import Service, ServicePort
from xds_server.model.policy import ROOT_NAMESPACE
from xds_server.model.security import AuthorizationPolicy
from xds_server.pipeline.records import GenerationRecord
from xds_server.policy_api import authorization_policy_pb2 as authz_api

BASE = [
    Service("ns-a", "web", (ServicePort(80, "http-web"),), selector=(("app", "one"),)),
    Service("ns-b", "api", (ServicePort(80, "http-web"),), selector=(("app", "one"),)),
]
DENY_ALL = authz_api.AuthorizationPolicySpec(
    action=authz_api.AuthorizationPolicySpec.DENY, rules=[authz_api.AuthorizationRule()]
).SerializeToString(deterministic=True)


def test_a_namespace_policy_reaches_only_that_namespaces_proxies() -> None:
    cache, builder = builder_with(changes_of(BASE))
    records: list[GenerationRecord] = []
    builder.on_generation = records.append
    before, retranslated = served(cache), builder.retranslated
    policy = AuthorizationPolicy("ns-a", "deny", spec_bytes=DENY_ALL, selector=(("app", "one"),))
    builder.apply(changes_of([policy]))
    assert builder.retranslated - retranslated == 2  # the two proxies of ns-a
    after = served(cache)
    assert {node for node in after if after[node] != before[node]} == {"p1.ns-a"}
    (record,) = records
    assert [trigger.source.key for trigger in record.triggers] == ["AuthorizationPolicy/ns-a/deny"]


def test_a_mesh_wide_policy_reaches_every_proxy_with_an_inbound_side() -> None:
    cache, builder = builder_with(changes_of(BASE))
    before = served(cache)
    builder.apply(changes_of([AuthorizationPolicy(ROOT_NAMESPACE, "deny", spec_bytes=DENY_ALL)]))
    after = served(cache)
    # Every proxy a Service selects (app=one) gets the RBAC filter; the others have
    # no inbound listener to govern.
    assert {node for node in after if after[node] != before[node]} == {
        "p1.ns-a",
        "p3.ns-b",
        "captured-5",
    }
