"""AuthorizationPolicies as Envoy RBAC filters on a proxy's inbound chains.

Istio's semantics, one filter per action, in this order on every inbound
chain of a governed workload:

1. DENY (`action: DENY`): a request matching any DENY rule is refused (403,
   or the connection closed for TCP) before anything else looks at it;
2. ALLOW: present as soon as any ALLOW policy applies, so a request must
   match one of their rules (an ALLOW policy with no rules allows nothing);
3. AUDIT: Envoy's LOG action, which allows everything and marks the matches
   (`access_log_hint` dynamic metadata, which the `rbac-audit` access log
   filters on; per-rule `audit.policy.<name>.allowed` counts the matches).

No policy: no filter, everything is allowed.

Each RBAC policy entry is one rule of one AuthorizationPolicy, named
`<namespace>/<name>[rule-<i>]`, so Envoy's response details
(`rbac_access_denied_matched_policy[default/deny-admin[rule-0]]`), its per-rule
stats (`track_per_rule_stats`) and the denied-request log name the policy
that denied (an ALLOW filter's denial matched no policy: Envoy says `none`,
and the log line lists the chain's ALLOW policies).  The network filter has no
per-rule stats; it puts the same details in the connection's termination
details, which the TCP proxy's denied-connection log writes out (a CEL filter
keeps that log to the connections an RBAC filter closed).
Filters are counted under their own prefix (`deny.`, `allow.`, `audit.`):
`http.<chain>.rbac.deny.denied`, `http.<chain>.rbac.deny.policy.<name>.denied`,
`<chain>.deny.rbac.denied` for TCP.

Destination ports are known per chain, so `ports`/`notPorts` and
`destination.port` conditions are decided here: an operation for another
port is dropped, and a rule left with no operation matches nothing.  The
inbound passthrough chain (capture mode: ports no Service declares) serves
any port, so there Envoy matches them (`destination_port`).

TCP chains cannot see paths, methods or headers.  As in Istio, an ALLOW (or
AUDIT) rule that uses any of them is left out on TCP (it matches nothing,
failing closed), and a DENY rule is kept without them (it denies more
connections, never fewer).

Source principals and namespaces match the peer certificate's URI SAN
(`authenticated.principal_name`), so they only match callers over mutual TLS.
Principals are SPIFFE IDs; Istio's form without `spiffe://` is accepted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from xds_server.model import Kind
from xds_server.model.authorization import Action, GoverningPolicy, WorkloadAuthorization
from xds_server.policy_api import authorization_policy_pb2 as authz_pb2
from xds_server.translate.authorization_matchers import (
    header_of,
    namespace_id,
    path_permission,
    port_permission,
    principal_id,
)
from xds_server.translate.core import packed
from xds_server.translate.telemetry import stdout_log

logger = logging.getLogger(__name__)

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
HEADER_KEY = re.compile(r"request\.headers\[(.+)\]")

DENIED_LOG_FORMAT = (
    "[%START_TIME%] inbound rbac-denied "
    '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" %RESPONSE_CODE% '
    "details=%RESPONSE_CODE_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% allow={allow}\n"
)
"""One stdout line per request an RBAC filter refused, naming the policy that did: a DENY
rule in the details; when no ALLOW rule matched (details `[none]`), the chain's ALLOW
policies, listed in `allow` (fixed per chain, so written into the format)."""
DENIED_TCP_LOG_FORMAT = (
    "[%START_TIME%] inbound rbac-denied tcp "
    "details=%CONNECTION_TERMINATION_DETAILS% peer=%DOWNSTREAM_PEER_URI_SAN% allow={allow}\n"
)
"""One stdout line per connection a network RBAC filter closed, as `DENIED_LOG_FORMAT`."""
RBAC_DENIED_DETAILS = "rbac_access_denied_matched_policy"
"""How Envoy's RBAC filters begin the details of a denial (HTTP and network alike)."""
CEL_LOG_FILTER = "envoy.access_loggers.extension_filters.cel"
AUDIT_LOG_FORMAT = (
    "[%START_TIME%] inbound rbac-audit "
    '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" %RESPONSE_CODE% '
    "peer=%DOWNSTREAM_PEER_URI_SAN%\n"
)
"""One stdout line per request an AUDIT rule matched (Envoy's `access_log_hint`)."""

_ENVOY_ACTIONS: dict[int, int] = {
    Action.DENY: rbac_pb2.RBAC.DENY,
    Action.ALLOW: rbac_pb2.RBAC.ALLOW,
}
_PREFIXES: dict[int, str] = {Action.DENY: "deny.", Action.ALLOW: "allow.", Action.AUDIT: "audit."}


def http_rbac_filters(authorization: WorkloadAuthorization, port: int) -> list[hcm_pb2.HttpFilter]:
    """The RBAC HTTP filters for one inbound HTTP chain (module doc), DENY first."""
    filters = []
    for action, rules in _rule_sets(authorization, port, http=True):
        config = http_rbac_pb2.RBAC(
            rules=rules, rules_stat_prefix=_PREFIXES[action], track_per_rule_stats=True
        )
        filters.append(hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=packed(config)))
    return filters


def network_rbac_filters(
    authorization: WorkloadAuthorization, port: int | None, stat_prefix: str
) -> list[listener_components_pb2.Filter]:
    """The network RBAC filters for one inbound TCP chain (module doc), DENY first.

    `port` None: a chain for any port (the inbound passthrough), where Envoy
    matches ports and `destination.port` on the connection's destination."""
    filters = []
    for action, rules in _rule_sets(authorization, port, http=False):
        config = network_rbac_pb2.RBAC(
            rules=rules, stat_prefix=f"{stat_prefix}.{_PREFIXES[action]}"
        )
        filters.append(
            listener_components_pb2.Filter(name=NETWORK_RBAC, typed_config=packed(config))
        )
    return filters


def denied_access_log(authorization: WorkloadAuthorization) -> accesslog_pb2.AccessLog:
    """The inbound HCM's log of requests refused with 403 (RBAC's details name the policy)."""
    allow = ",".join(governing.label for governing in authorization.allow) or "-"
    log = stdout_log(DENIED_LOG_FORMAT.format(allow=allow))
    log.filter.status_code_filter.comparison.op = accesslog_pb2.ComparisonFilter.EQ
    log.filter.status_code_filter.comparison.value.default_value = 403
    log.filter.status_code_filter.comparison.value.runtime_key = "rbac_denied_log_status"
    return log


def denied_tcp_access_logs(
    authorization: WorkloadAuthorization, port: int | None
) -> list[accesslog_pb2.AccessLog]:
    """The inbound TCP proxy's log of connections its RBAC filters closed on `port`
    (none when no filter there can close one): the termination details name the DENY
    rule, or say `[none]` when no ALLOW rule matched."""
    if all(action == Action.AUDIT for action, _ in _rule_sets(authorization, port, http=False)):
        return []  # no filter that closes connections (AUDIT only logs)
    allow = ",".join(governing.label for governing in authorization.allow) or "-"
    log = stdout_log(DENIED_TCP_LOG_FORMAT.format(allow=allow))
    expression = cel_pb2.ExpressionFilter(
        expression=f"connection.termination_details.startsWith('{RBAC_DENIED_DETAILS}')"
    )
    log.filter.extension_filter.name = CEL_LOG_FILTER
    log.filter.extension_filter.typed_config.CopyFrom(packed(expression))
    return [log]


def audit_access_log() -> accesslog_pb2.AccessLog:
    """The inbound HCM's log of requests an AUDIT policy matched: the LOG action sets
    `envoy.common`'s `access_log_hint` to true on them."""
    log = stdout_log(AUDIT_LOG_FORMAT)
    matcher = log.filter.metadata_filter.matcher
    matcher.filter = "envoy.common"
    matcher.path.add().key = "access_log_hint"
    matcher.value.bool_match = True
    return log


def _rule_sets(
    authorization: WorkloadAuthorization, port: int | None, *, http: bool
) -> list[tuple[int, rbac_pb2.RBAC]]:
    sets: list[tuple[int, rbac_pb2.RBAC]] = []
    for action, policies in (
        (Action.DENY, authorization.deny),
        (Action.ALLOW, authorization.allow),
        (Action.AUDIT, authorization.audit),
    ):
        if not policies:
            continue
        entries = dict(_entries(policies, port, http=http, deny=action == Action.DENY))
        if not entries and action != Action.ALLOW:
            continue  # nothing to deny or audit here; an empty ALLOW set denies everything
        envoy_action = _ENVOY_ACTIONS.get(action, rbac_pb2.RBAC.LOG)
        sets.append((action, rbac_pb2.RBAC(action=envoy_action, policies=entries)))
    return sets


def _entries(
    policies: Iterable[GoverningPolicy], port: int | None, *, http: bool, deny: bool
) -> Iterable[tuple[str, rbac_pb2.Policy]]:
    for governing in policies:
        for index, rule in enumerate(governing.spec.rules):
            built = _policy(rule, port, http=http, deny=deny)
            if built is not None:
                yield f"{governing.label}[rule-{index}]", built


def _http_only(rule: authz_pb2.AuthorizationRule) -> bool:
    operations = [to.operation for to in rule.to]
    return any(
        op.paths or op.not_paths or op.methods or op.not_methods for op in operations
    ) or any(HEADER_KEY.fullmatch(condition.key) for condition in rule.when)


def _policy(
    rule: authz_pb2.AuthorizationRule, port: int | None, *, http: bool, deny: bool
) -> rbac_pb2.Policy | None:
    """One rule as an RBAC policy on `port`, or None when it cannot match there."""
    if not http and not deny and _http_only(rule):
        return None
    permissions: list[rbac_pb2.Permission] = []
    principals: list[rbac_pb2.Principal] = []
    if rule.to:
        operations = [to.operation for to in rule.to if _port_matches(to.operation, port)]
        if not operations:
            return None
        permissions.append(
            _any_permission([_operation(op, http=http, port=port) for op in operations])
        )
    for condition in rule.when:
        key = condition.key
        if key == "destination.port" and port is None:
            permissions.extend(
                _permission_values(condition.values, condition.not_values, port_permission)
            )
        elif key == "destination.port":
            allowed = not condition.values or str(port) in condition.values
            if not allowed or str(port) in condition.not_values:
                return None
        elif key in ("source.principal", "source.namespace"):
            to_id = principal_id if key == "source.principal" else namespace_id
            principals.extend(_values(condition.values, condition.not_values, to_id))
        elif http:
            header = HEADER_KEY.fullmatch(key)
            if header is not None:
                permissions.extend(
                    _permission_values(
                        condition.values,
                        condition.not_values,
                        header_of(header.group(1)),
                    )
                )
    if rule.from_:
        principals.append(_any_principal([_source(item.source) for item in rule.from_]))
    return rbac_pb2.Policy(
        permissions=[_all_permissions(permissions)], principals=[_all_principals(principals)]
    )


def _port_matches(operation: authz_pb2.AuthorizationOperation, port: int | None) -> bool:
    if port is None:
        return True  # decided by Envoy (`_operation`)
    if operation.ports and str(port) not in operation.ports:
        return False
    return str(port) not in operation.not_ports


def _operation(
    operation: authz_pb2.AuthorizationOperation, *, http: bool, port: int | None
) -> rbac_pb2.Permission:
    parts: list[rbac_pb2.Permission] = []
    if port is None:
        parts.extend(_permission_values(operation.ports, operation.not_ports, port_permission))
    if http:
        parts.extend(_permission_values(operation.paths, operation.not_paths, path_permission))
        parts.extend(
            _permission_values(operation.methods, operation.not_methods, header_of(":method"))
        )
    return _all_permissions(parts)


def _source(source: authz_pb2.AuthorizationSource) -> rbac_pb2.Principal:
    parts = [
        *_values(source.principals, source.not_principals, principal_id),
        *_values(source.namespaces, source.not_namespaces, namespace_id),
    ]
    return _all_principals(parts)


# -- combinators -----------------------------------------------------------------------


def _permission_values(
    values: Sequence[str], not_values: Sequence[str], build: Callable[[str], rbac_pb2.Permission]
) -> list[rbac_pb2.Permission]:
    """[any of values] and [not any of not_values], each when given."""
    parts = []
    if values:
        parts.append(_any_permission([build(v) for v in values]))
    if not_values:
        parts.append(rbac_pb2.Permission(not_rule=_any_permission([build(v) for v in not_values])))
    return parts


def _values(
    values: Sequence[str], not_values: Sequence[str], build: Callable[[str], rbac_pb2.Principal]
) -> list[rbac_pb2.Principal]:
    parts = []
    if values:
        parts.append(_any_principal([build(v) for v in values]))
    if not_values:
        parts.append(rbac_pb2.Principal(not_id=_any_principal([build(v) for v in not_values])))
    return parts


def _any_permission(parts: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=parts))


def _all_permissions(parts: list[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if not parts:
        return rbac_pb2.Permission(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=parts))


def _any_principal(parts: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=parts))


def _all_principals(parts: list[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not parts:
        return rbac_pb2.Principal(any=True)
    if len(parts) == 1:
        return parts[0]
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=parts))


# -- hooks for the inbound chains (listeners, capture) ----------------------------------


def authorize_http(
    hcm: hcm_pb2.HttpConnectionManager, authorization: WorkloadAuthorization, port: int
) -> None:
    """Put the RBAC filters first in `hcm`'s chain, and log what they refuse."""
    filters = http_rbac_filters(authorization, port)
    if not filters:
        return
    existing = list(hcm.http_filters)
    del hcm.http_filters[:]
    hcm.http_filters.extend([*filters, *existing])
    hcm.access_log.append(denied_access_log(authorization))
    if authorization.audit:
        hcm.access_log.append(audit_access_log())


def policy_sources(authorization: WorkloadAuthorization) -> tuple[str, ...]:
    """`AuthorizationPolicy/namespace/name` of each governing policy, for provenance."""
    return tuple(
        sorted(
            f"{Kind.AUTHORIZATION_POLICY.value}/{p.policy.namespace}/{p.policy.name}"
            for p in authorization.policies
        )
    )
