"""AuthorizationPolicy manifests in, Envoy RBAC filters out (`translate.authorization`).

Which policies govern a workload (selector, namespace, root namespace), the
filter order on inbound chains (DENY, ALLOW, AUDIT, before the policy filters
and the router), each rule as one RBAC policy named after it, Istio's TCP
reading of HTTP-only rules, destination ports decided per chain, principals
and namespaces as URI SAN matchers, the facts a policy read records, the
converter's refusals (naming object and field), and that Envoy accepts all of
it (`envoy --mode validate`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from translate_builders import (
    http,
    mesh,
    plaintext_chain,
    proxy,
    representative_objects,
    service,
    tcp,
)

from xds_server.model import Kind, MeshSnapshot
from xds_server.model.authorization import workload_authorization
from xds_server.model.policy import ROOT_NAMESPACE
from xds_server.model.security import AuthorizationPolicy
from xds_server.pipeline.reads import TrackedMesh
from xds_server.sources.convert import ManifestError, convert
from xds_server.translate import proxy_listeners
from xds_server.translate.authorization import (
    HTTP_RBAC,
    NETWORK_RBAC,
    http_rbac_filters,
    network_rbac_filters,
)
from xds_server.translate.authorization_matchers import namespace_regex


def policy(name: str, spec: dict[str, Any], namespace: str = "default") -> AuthorizationPolicy:
    manifest = {
        "apiVersion": "policy.xds-server.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    converted = convert(manifest)
    assert isinstance(converted, AuthorizationPolicy)
    return converted


WEB = proxy("web-1", labels={"app": "web"}, ip="127.0.0.2")


def governing(snapshot: MeshSnapshot, namespace: str = "default", app: str = "web") -> list[str]:
    found = workload_authorization(snapshot, namespace, (("app", app),))
    return [g.label for g in found.policies]


def test_which_policies_govern_a_workload() -> None:
    snapshot = mesh(
        policy("mine", {"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]}),
        policy("other-app", {"selector": {"matchLabels": {"app": "db"}}, "rules": [{}]}),
        policy("namespace-wide", {"action": "DENY", "rules": [{}]}),
        policy("elsewhere", {"rules": [{}]}, namespace="shop"),
        policy("mesh-wide", {"action": "AUDIT", "rules": [{}]}, namespace=ROOT_NAMESPACE),
        policy(
            "root-selector",
            {"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]},
            namespace=ROOT_NAMESPACE,
        ),
    )
    # DENY, then ALLOW, then AUDIT; a root-namespace selector selects only root workloads.
    assert governing(snapshot) == [
        "default/namespace-wide",
        "default/mine",
        f"{ROOT_NAMESPACE}/mesh-wide",
    ]
    assert governing(snapshot, app="db") == [
        "default/namespace-wide",
        "default/other-app",
        f"{ROOT_NAMESPACE}/mesh-wide",
    ]
    assert governing(snapshot, namespace="shop") == [
        "shop/elsewhere",
        f"{ROOT_NAMESPACE}/mesh-wide",
    ]


def test_reading_a_workloads_policies_records_its_namespace_and_the_root() -> None:
    reads: set[tuple[Any, ...]] = set()
    workload_authorization(TrackedMesh(mesh(), reads), "default", ())
    assert reads == {
        ("ns", Kind.AUTHORIZATION_POLICY, "default"),
        ("ns", Kind.AUTHORIZATION_POLICY, ROOT_NAMESPACE),
    }


def rbac_of(filter_: hcm_pb2.HttpFilter) -> http_rbac_pb2.RBAC:
    config = http_rbac_pb2.RBAC()
    assert filter_.typed_config.Unpack(config)
    return config


def inbound_filters(snapshot: MeshSnapshot, port: int) -> list[str]:
    for listener in proxy_listeners(snapshot, WEB):
        if listener.name == f"inbound_{port}":
            chain = plaintext_chain(listener)
            return _chain_filters(chain)
    raise AssertionError(f"no inbound_{port}")


def _chain_filters(chain: listener_pb2.FilterChain) -> list[str]:
    names = [f.name for f in chain.filters]
    if names[-1] == "envoy.filters.network.http_connection_manager":
        hcm = hcm_pb2.HttpConnectionManager()
        chain.filters[-1].typed_config.Unpack(hcm)
        return [*names[:-1], *(f.name for f in hcm.http_filters)]
    return names


WEB_SERVICE = service("web", http(8080), tcp(5432), selector={"app": "web"})
DENY_ADMIN = {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}
ALLOW_GET = {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}


def test_no_policy_no_rbac_filter() -> None:
    snapshot = mesh(WEB_SERVICE)
    assert inbound_filters(snapshot, 8080) == ["envoy.filters.http.router"]
    assert inbound_filters(snapshot, 5432) == ["envoy.filters.network.tcp_proxy"]


def test_deny_then_allow_then_audit_before_the_router_and_the_tcp_proxy() -> None:
    audit = {"action": "AUDIT", "rules": [{}]}
    snapshot = mesh(
        WEB_SERVICE, policy("a", ALLOW_GET), policy("d", DENY_ADMIN), policy("l", audit)
    )
    assert inbound_filters(snapshot, 8080) == [HTTP_RBAC] * 3 + ["envoy.filters.http.router"]
    # On TCP the ALLOW rule (a method) matches nothing, but the filter stays: nothing is
    # allowed. The DENY rule's path is ignored: it denies every connection.
    assert inbound_filters(snapshot, 5432) == [NETWORK_RBAC] * 3 + [
        "envoy.filters.network.tcp_proxy"
    ]
    found = workload_authorization(snapshot, "default", (("app", "web"),))
    actions = [rbac_of(f).rules.action for f in http_rbac_filters(found, 8080)]
    assert actions == [rbac_pb2.RBAC.DENY, rbac_pb2.RBAC.ALLOW, rbac_pb2.RBAC.LOG]
    prefixes = [rbac_of(f).rules_stat_prefix for f in http_rbac_filters(found, 8080)]
    assert prefixes == ["deny.", "allow.", "audit."]
    tcp_rules = []
    for f in network_rbac_filters(found, 5432, "inbound_5432"):
        config = network_rbac_pb2.RBAC()
        f.typed_config.Unpack(config)
        tcp_rules.append((config.stat_prefix, dict(config.rules.policies)))
    assert [prefix for prefix, _ in tcp_rules] == [
        "inbound_5432.deny.",
        "inbound_5432.allow.",
        "inbound_5432.audit.",
    ]
    deny, allow, audit_rules = (policies for _, policies in tcp_rules)
    assert list(deny) == ["default/d[rule-0]"]
    assert deny["default/d[rule-0]"].permissions[0] == rbac_pb2.Permission(any=True)
    assert allow == {}
    assert list(audit_rules) == ["default/l[rule-0]"]


def test_each_rule_is_one_named_policy_and_ports_are_decided_per_chain() -> None:
    spec = {
        "rules": [
            {"to": [{"operation": {"ports": ["8080"], "paths": ["/a"]}}]},
            {"to": [{"operation": {"notPorts": ["8080"]}}]},
            {"when": [{"key": "destination.port", "values": ["5432"]}]},
            {"to": [{"operation": {"paths": ["*/b", "/c*", "*"]}}]},
        ]
    }
    found = workload_authorization(mesh(policy("p", spec)), "default", ())
    (allow,) = http_rbac_filters(found, 8080)
    policies = rbac_of(allow).rules.policies
    assert sorted(policies) == ["default/p[rule-0]", "default/p[rule-3]"]
    (permission,) = policies["default/p[rule-3]"].permissions
    matchers = [rule.url_path.path for rule in permission.or_rules.rules]
    assert [m.WhichOneof("match_pattern") for m in matchers] == ["suffix", "prefix", "prefix"]
    assert [m.suffix or m.prefix for m in matchers] == ["/b", "/c", "/"]
    (tcp_allow,) = network_rbac_filters(found, 5432, "inbound_5432")
    config = network_rbac_pb2.RBAC()
    tcp_allow.typed_config.Unpack(config)
    assert sorted(config.rules.policies) == ["default/p[rule-1]", "default/p[rule-2]"]


def principal_of(spec: dict[str, Any]) -> rbac_pb2.Principal:
    found = workload_authorization(mesh(policy("p", spec)), "default", ())
    (allow,) = http_rbac_filters(found, 8080)
    (principal,) = rbac_of(allow).rules.policies["default/p[rule-0]"].principals
    return principal


@pytest.mark.parametrize(
    ("principal", "field", "value"),
    [
        ("cluster.local/ns/x/sa/y", "exact", "spiffe://cluster.local/ns/x/sa/y"),
        ("spiffe://cluster.local/ns/x/sa/y", "exact", "spiffe://cluster.local/ns/x/sa/y"),
        ("cluster.local/ns/x/*", "prefix", "spiffe://cluster.local/ns/x/"),
        ("*/sa/y", "suffix", "/sa/y"),
    ],
)
def test_principals_match_the_peers_uri_san(principal: str, field: str, value: str) -> None:
    got = principal_of({"rules": [{"from": [{"source": {"principals": [principal]}}]}]})
    matcher = got.authenticated.principal_name
    assert matcher.WhichOneof("match_pattern") == field
    assert getattr(matcher, field) == value


def test_any_principal_means_any_authenticated_caller() -> None:
    got = principal_of({"rules": [{"from": [{"source": {"principals": ["*"]}}]}]})
    assert got.HasField("authenticated")
    assert not got.authenticated.HasField("principal_name")


def test_sources_and_source_conditions_combine() -> None:
    spec = {
        "rules": [
            {
                "from": [{"source": {"namespaces": ["shop"], "notPrincipals": ["*/sa/bad"]}}],
                "when": [{"key": "source.namespace", "notValues": ["test-*"]}],
            }
        ]
    }
    got = principal_of(spec)
    condition, source = got.and_ids.ids
    assert condition.not_id.authenticated.principal_name.safe_regex.regex == namespace_regex(
        "test-*"
    )
    not_principal, namespace = source.and_ids.ids
    assert namespace.authenticated.principal_name.safe_regex.regex == namespace_regex("shop")
    assert not_principal.not_id.authenticated.principal_name.suffix == "/sa/bad"


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("shop", ["spiffe://td/ns/shop/sa/web"], ["spiffe://td/ns/shopping/sa/web"]),
        ("shop-*", ["spiffe://td/ns/shop-eu/sa/a"], ["spiffe://td/ns/shop/sa/a"]),
        ("*-prod", ["spiffe://td/ns/eu-prod/sa/a"], ["spiffe://td/ns/prod/sa/a"]),
        ("*", ["spiffe://td/ns/any/sa/a"], ["spiffe://td/other/any"]),
    ],
)
def test_namespace_patterns(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = re.compile(namespace_regex(pattern))
    assert all(regex.fullmatch(m) for m in matches)
    assert not any(regex.fullmatch(m) for m in misses)


def test_header_conditions_and_methods_are_header_matchers() -> None:
    spec = {
        "rules": [
            {
                "to": [{"operation": {"methods": ["GET", "HEAD"], "notPaths": ["/private*"]}}],
                "when": [{"key": "request.headers[x-user]", "values": ["*"]}],
            }
        ]
    }
    found = workload_authorization(mesh(policy("p", spec)), "default", ())
    (allow,) = http_rbac_filters(found, 8080)
    (permission,) = rbac_of(allow).rules.policies["default/p[rule-0]"].permissions
    operation, header = permission.and_rules.rules
    assert header.header.name == "x-user" and header.header.present_match
    not_path, methods = operation.and_rules.rules
    assert not_path.not_rule.url_path.path.prefix == "/private"
    assert [m.header.string_match.exact for m in methods.or_rules.rules] == ["GET", "HEAD"]


def operation(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"to": [{"operation": fields}]}]}


def when(**condition: Any) -> dict[str, Any]:
    return {"rules": [{"when": [condition]}]}


OPERATION = "spec.rules[0].to[0].operation"
HEADER_KEY_HELP = "request.headers[<lowercase name>]"
REFUSALS = [
    ({"action": "deny"}, "spec.action", "must be one of ALLOW, AUDIT, DENY"),
    (operation(paths=["admin"]), f"{OPERATION}.paths[0]", 'must start with "/"'),
    (operation(paths=["/a*b*"]), f"{OPERATION}.paths[0]", "may hold one"),
    (operation(methods=["GE T"]), f"{OPERATION}.methods[0]", "HTTP method"),
    (operation(ports=["0"]), f"{OPERATION}.ports[0]", "port number"),
    (operation(path=["/a"]), f"{OPERATION}.path", "unknown field"),
    (
        {"rules": [{"from": [{"source": {"principals": ["a*b"]}}]}]},
        "spec.rules[0].from[0].source.principals[0]",
        "may hold one",
    ),
    ({"rules": [{"from": [{}]}]}, "spec.rules[0].from[0].source", "required"),
    (
        when(key="request.headers[X-User]", values=["a"]),
        "spec.rules[0].when[0].key",
        HEADER_KEY_HELP,
    ),
    (when(key="source.ip", values=["a"]), "spec.rules[0].when[0].key", HEADER_KEY_HELP),
    (when(key="source.principal"), "spec.rules[0].when[0]", "needs values or notValues"),
    (when(values=["a"]), "spec.rules[0].when[0].key", "required"),
    ({"selector": {"matchLabels": {"app": 3}}}, "spec.selector.matchLabels.app", "string"),
]


@pytest.mark.parametrize(("spec", "field", "message"), REFUSALS)
def test_invalid_policies_are_refused_naming_object_and_field(
    spec: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ManifestError) as refused:
        policy("bad", spec)
    text = str(refused.value)
    assert text.startswith(f"AuthorizationPolicy default/bad: {field}: "), text
    assert message in text, text


def test_an_istio_manifest_reads_unchanged_apart_from_its_api_version() -> None:
    istio = yaml.safe_load(
        """
        spec:
          selector: {matchLabels: {app: web}}
          action: ALLOW
          rules:
          - from:
            - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
            - source: {namespaces: ["test"]}
            to:
            - operation: {methods: ["GET"], paths: ["/info*"]}
            - operation: {methods: ["POST"], paths: ["/data"]}
            when:
            - key: request.headers[version]
              values: ["v1", "v2"]
        """
    )
    read = policy("httpbin", istio["spec"])
    assert read.selector == (("app", "web"),)
    assert governing(mesh(read)) == ["default/httpbin"]


def test_envoy_accepts_every_matcher(tmp_path: Path) -> None:
    from test_translate_envoy_validate import as_served, validate

    spec = {
        "rules": [
            {
                "from": [
                    {"source": {"principals": ["cluster.local/ns/a/sa/*", "*"]}},
                    {"source": {"namespaces": ["shop-*"], "notNamespaces": ["*-test"]}},
                ],
                "to": [{"operation": {"paths": ["/x", "*/y"], "notMethods": ["DELETE"]}}],
                "when": [
                    {"key": "request.headers[x-a]", "values": ["b*"], "notValues": ["*"]},
                    {"key": "source.principal", "values": ["*"]},
                ],
            },
            {},
        ]
    }
    objects = [
        *representative_objects(),
        policy("allow", spec),
        policy("deny", {**spec, "action": "DENY"}),
        policy("audit", {**spec, "action": "AUDIT"}),
        policy("none", {}),
    ]
    sidecar = proxy("web-1", labels={"app": "web"}, ip="127.0.0.2", workload="web-1")
    validate(as_served(mesh(*objects), sidecar), tmp_path)
    captured = dataclasses.replace(sidecar, interception="redirect")
    validate(as_served(mesh(*objects), captured), tmp_path)


def test_captured_traffic_is_governed_on_every_inbound_chain_and_the_passthrough() -> None:
    snapshot = mesh(WEB_SERVICE, policy("d", DENY_ADMIN), policy("a", ALLOW_GET))
    captured = dataclasses.replace(WEB, interception="redirect")
    [virtual_inbound] = [
        listener
        for listener in proxy_listeners(snapshot, captured)
        if listener.name == "virtual_inbound"
    ]
    chains = {chain.name: _chain_filters(chain) for chain in virtual_inbound.filter_chains}
    assert chains["inbound|8080|||http"][:2] == [HTTP_RBAC, HTTP_RBAC]
    assert chains["inbound|8080|||tcp"][:2] == [NETWORK_RBAC, NETWORK_RBAC]
    assert chains["inbound|5432|||tcp"][:2] == [NETWORK_RBAC, NETWORK_RBAC]
    passthrough = virtual_inbound.default_filter_chain
    assert [f.name for f in passthrough.filters][:2] == [NETWORK_RBAC, NETWORK_RBAC]


def test_the_passthrough_matches_ports_in_envoy() -> None:
    spec = {
        "rules": [
            {"to": [{"operation": {"ports": ["9000", "9001"], "notPorts": ["9001"]}}]},
            {"when": [{"key": "destination.port", "values": ["7000"]}]},
        ]
    }
    found = workload_authorization(mesh(policy("p", spec)), "default", ())
    (allow,) = network_rbac_filters(found, None, "inbound_passthrough")
    config = network_rbac_pb2.RBAC()
    allow.typed_config.Unpack(config)
    (ports,) = config.rules.policies["default/p[rule-0]"].permissions
    listed, excluded = ports.and_rules.rules
    assert [r.destination_port for r in listed.or_rules.rules] == [9000, 9001]
    assert excluded.not_rule.destination_port == 9001
    (condition,) = config.rules.policies["default/p[rule-1]"].permissions
    assert condition.destination_port == 7000


def tcp_proxy_logs(snapshot: MeshSnapshot, port: int) -> list[tuple[str, str]]:
    """(format, CEL filter expression or "") of each access log of `inbound_<port>`'s
    TCP proxy."""
    for listener in proxy_listeners(snapshot, WEB):
        if listener.name == f"inbound_{port}":
            tcp_proxy = tcp_proxy_pb2.TcpProxy()
            assert plaintext_chain(listener).filters[-1].typed_config.Unpack(tcp_proxy)
            logs = []
            for log in tcp_proxy.access_log:
                stdout = stream_pb2.StdoutAccessLog()
                log.typed_config.Unpack(stdout)
                cel = cel_pb2.ExpressionFilter()
                log.filter.extension_filter.typed_config.Unpack(cel)
                logs.append((stdout.log_format.text_format_source.inline_string, cel.expression))
            return logs
    raise AssertionError(f"no inbound_{port}")


def test_a_governed_tcp_chain_logs_the_connections_its_rbac_filters_close() -> None:
    (plain,) = tcp_proxy_logs(mesh(WEB_SERVICE), 5432)
    assert "rbac-denied" not in plain[0] and plain[1] == ""
    audited = mesh(WEB_SERVICE, policy("l", {"action": "AUDIT", "rules": [{}]}))
    assert len(tcp_proxy_logs(audited, 5432)) == 1  # AUDIT closes no connection
    governed = mesh(WEB_SERVICE, policy("d", DENY_ADMIN), policy("a", ALLOW_GET))
    _, (denied, expression) = tcp_proxy_logs(governed, 5432)
    assert denied == (
        "[%START_TIME%] inbound rbac-denied tcp details=%CONNECTION_TERMINATION_DETAILS% "
        "peer=%DOWNSTREAM_PEER_URI_SAN% allow=default/a\n"
    )
    assert expression == (
        "connection.termination_details.startsWith('rbac_access_denied_matched_policy')"
    )
