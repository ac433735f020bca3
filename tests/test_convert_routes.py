"""Specification of HTTPRoute and GRPCRoute conversion: the upstream CRDs' defaults and checks.

Manifests are read as the file source reads them; each good manifest shows
what the API server's defaulting would fill in, each bad one the field its
error names (the CRD schema's, and its CEL rules').
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from convert_checks import manifest, refusal

from xds_server.model import Kind, ObjectKey
from xds_server.model.routes import (
    BackendObjectRef,
    BackendRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatch,
    HeaderModifier,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    ParentRef,
    PathMatch,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifierFilter,
    RequestMirrorFilter,
    RequestRedirectFilter,
    ResponseHeaderModifierFilter,
    RouteRetry,
    RouteTimeouts,
    URLRewriteFilter,
    service_parents,
)
from xds_server.sources.convert import ManifestError, convert
from xds_server.sources.convert_routes import GATEWAY_API_VERSION, parse_duration, regex_problem

WEB = ParentRef(name="web", group="", kind="Service")


def http_route(spec: str, metadata: str = "{name: web-route, namespace: shop}") -> Any:
    return manifest(
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {metadata}\n"
        f"spec: {spec}"
    )


def grpc_route(spec: str) -> Any:
    return manifest(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n"
        f"metadata: {{name: echo-route, namespace: shop}}\nspec: {spec}"
    )


PARENT = '[{group: "", kind: Service, name: web}]'


def rule_of(route: Any) -> Any:
    assert isinstance(route, HTTPRoute | GRPCRoute)
    return route.rules[0]


# -- defaults, as the API server applies the CRD's ---------------------------------------

DEFAULTS = [
    pytest.param(
        f"{{parentRefs: {PARENT}}}",
        HTTPRouteRule(matches=(HTTPRouteMatch(path=PathMatch(MatchType.PATH_PREFIX, "/")),)),
        id="no rules: one rule matching prefix /",
    ),
    pytest.param(
        f"{{parentRefs: {PARENT}, rules: [{{backendRefs: [{{name: web, port: 80}}]}}]}}",
        HTTPRouteRule(
            matches=(HTTPRouteMatch(path=PathMatch(MatchType.PATH_PREFIX, "/")),),
            backend_refs=(BackendRef(BackendObjectRef("web", port=80), weight=1),),
        ),
        id="rule without matches, backendRef without weight, group or kind",
    ),
    pytest.param(
        f"{{parentRefs: {PARENT}, rules: [{{matches: [{{path: {{value: /api}}}}, "
        "{headers: [{name: x-v, value: '2'}], queryParams: [{name: q, value: a}]}]}]}",
        HTTPRouteRule(
            matches=(
                HTTPRouteMatch(path=PathMatch(MatchType.PATH_PREFIX, "/api")),
                HTTPRouteMatch(
                    path=PathMatch(MatchType.PATH_PREFIX, "/"),
                    headers=(HeaderMatch("x-v", "2", MatchType.EXACT),),
                    query_params=(QueryParamMatch("q", "a", MatchType.EXACT),),
                ),
            ),
        ),
        id="path type PathPrefix, path /, header and query Exact",
    ),
    pytest.param(
        f"{{parentRefs: {PARENT}, rules: [{{matches: [{{path: {{type: Exact}}, method: GET}}]}}]}}",
        HTTPRouteRule(
            matches=(HTTPRouteMatch(path=PathMatch(MatchType.EXACT, "/"), method="GET"),)
        ),
        id="path value defaults to /",
    ),
    pytest.param(
        f"{{parentRefs: {PARENT}, rules: [{{filters: [{{type: RequestRedirect, "
        "requestRedirect: {scheme: https}}]}]}",
        HTTPRouteRule(filters=(RequestRedirectFilter(scheme="https", status_code=302),)),
        id="redirect status 302",
    ),
    pytest.param(
        f"{{parentRefs: {PARENT}, rules: [{{filters: [{{type: RequestMirror, requestMirror: "
        "{backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 4}}}, "
        "{type: RequestMirror, requestMirror: {backendRef: {name: copy, port: 80}, "
        "fraction: {numerator: 5}}}]}]}",
        HTTPRouteRule(
            filters=(
                RequestMirrorFilter(BackendObjectRef("shadow", port=80), percent=25.0),
                RequestMirrorFilter(BackendObjectRef("copy", port=80), percent=5.0),
            )
        ),
        id="mirror fraction as percent, denominator 100",
    ),
    pytest.param(
        f"{{parentRefs: {PARENT}, rules: [{{filters: [{{type: RequestMirror, requestMirror: "
        "{backendRef: {name: shadow, port: 80}}}]}]}",
        HTTPRouteRule(filters=(RequestMirrorFilter(BackendObjectRef("shadow", port=80)),)),
        id="mirror without percent mirrors all",
    ),
]


@pytest.mark.parametrize(("spec", "rule"), DEFAULTS)
def test_http_route_defaults_are_applied(spec: str, rule: HTTPRouteRule) -> None:
    route = convert(http_route(spec))
    assert isinstance(route, HTTPRoute)
    assert route.rules == (rule,)


def test_references_to_one_service_may_differ_by_port_as_the_experimental_channel_allows() -> None:
    route = convert(
        http_route(
            '{parentRefs: [{group: "", kind: Service, name: web, port: 80}, '
            '{group: "", kind: Service, name: web, port: 8080}]}'
        )
    )
    assert isinstance(route, HTTPRoute)
    assert [ref.port for ref in route.parent_refs] == [80, 8080]


def test_a_parent_ref_without_group_and_kind_is_a_gateway_not_a_service() -> None:
    route = convert(http_route("{parentRefs: [{name: web}]}"))
    assert isinstance(route, HTTPRoute)
    assert route.parent_refs == (
        ParentRef(name="web", group="gateway.networking.k8s.io", kind="Gateway"),
    )
    assert service_parents(route) == ()


def test_a_full_http_route_converts() -> None:
    route = convert(
        http_route(
            """
            parentRefs:
            - {group: "", kind: Service, name: web, port: 80}
            - {group: "", kind: Service, name: web, namespace: other, sectionName: http}
            hostnames: [web.shop.svc.cluster.local, "*.example.com"]
            rules:
            - name: canary
              matches:
              - path: {type: RegularExpression, value: "/v[0-9]+/.*"}
                headers: [{name: x-user, type: RegularExpression, value: "^a.*"}]
                method: POST
              filters:
              - type: RequestHeaderModifier
                requestHeaderModifier:
                  set: [{name: x-a, value: "1"}]
                  add: [{name: x-b, value: "2"}]
                  remove: [x-c]
              - type: ResponseHeaderModifier
                responseHeaderModifier: {set: [{name: x-r, value: "3"}]}
              - type: URLRewrite
                urlRewrite:
                  hostname: new.example.com
                  path: {type: ReplaceFullPath, replaceFullPath: /x}
              backendRefs:
              - {name: web-v2, port: 8080, weight: 20, namespace: canary}
              - name: web
                port: 80
                weight: 80
                filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [x-d]}}]
              timeouts: {request: 1m30s, backendRequest: 1500ms}
              retry: {codes: [502, 503], attempts: 3, backoff: 100ms}
            """,
            metadata="{name: web-route, namespace: shop, generation: 4, "
            "creationTimestamp: '2024-05-01T14:00:00.5+02:00'}",
        )
    )
    assert route == HTTPRoute(
        namespace="shop",
        name="web-route",
        parent_refs=(
            ParentRef("web", group="", kind="Service", port=80),
            ParentRef("web", namespace="other", group="", kind="Service", section_name="http"),
        ),
        hostnames=("web.shop.svc.cluster.local", "*.example.com"),
        rules=(
            HTTPRouteRule(
                name="canary",
                matches=(
                    HTTPRouteMatch(
                        path=PathMatch(MatchType.REGULAR_EXPRESSION, "/v[0-9]+/.*"),
                        headers=(HeaderMatch("x-user", "^a.*", MatchType.REGULAR_EXPRESSION),),
                        method="POST",
                    ),
                ),
                filters=(
                    RequestHeaderModifierFilter(
                        HeaderModifier(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",))
                    ),
                    ResponseHeaderModifierFilter(HeaderModifier(set=(("x-r", "3"),))),
                    URLRewriteFilter(
                        hostname="new.example.com",
                        path=PathModifier(PathModifierType.REPLACE_FULL_PATH, "/x"),
                    ),
                ),
                backend_refs=(
                    BackendRef(BackendObjectRef("web-v2", "canary", 8080), weight=20),
                    BackendRef(
                        BackendObjectRef("web", port=80),
                        weight=80,
                        filters=(RequestHeaderModifierFilter(HeaderModifier(remove=("x-d",))),),
                    ),
                ),
                timeouts=RouteTimeouts(request=90.0, backend_request=1.5),
                retry=RouteRetry(codes=(502, 503), attempts=3, backoff=0.1),
            ),
        ),
        creation_timestamp="2024-05-01T12:00:00Z",
        generation=4,
    )
    assert service_parents(route)[0].namespace == "shop"


def test_a_grpc_route_converts_with_defaults() -> None:
    route = convert(
        grpc_route(
            f"""
            parentRefs: {PARENT}
            rules:
            - matches:
              - method: {{service: echo.v1.Echo, method: Say}}
                headers: [{{name: x-tenant, value: a}}]
              - method: {{type: RegularExpression, service: "echo\\\\..*"}}
              backendRefs: [{{name: echo, port: 9000}}]
            - backendRefs: [{{name: fallback, port: 9000, weight: 0}}]
              filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: s, port: 1}},
                          percent: 10}}}}]
            """
        )
    )
    assert route == GRPCRoute(
        namespace="shop",
        name="echo-route",
        parent_refs=(WEB,),
        rules=(
            GRPCRouteRule(
                matches=(
                    GRPCRouteMatch(
                        method=GRPCMethodMatch("echo.v1.Echo", "Say", MatchType.EXACT),
                        headers=(HeaderMatch("x-tenant", "a"),),
                    ),
                    GRPCRouteMatch(
                        method=GRPCMethodMatch("echo\\..*", None, MatchType.REGULAR_EXPRESSION)
                    ),
                ),
                backend_refs=(BackendRef(BackendObjectRef("echo", port=9000)),),
            ),
            GRPCRouteRule(
                matches=(GRPCRouteMatch(),),
                filters=(RequestMirrorFilter(BackendObjectRef("s", port=1), percent=10.0),),
                backend_refs=(BackendRef(BackendObjectRef("fallback", port=9000), weight=0),),
            ),
        ),
    )


def test_redirect_and_rewrite_with_prefix_replacement_and_one_prefix_match() -> None:
    route = convert(
        http_route(
            f"{{parentRefs: {PARENT}, rules: [{{matches: [{{path: {{value: /old}}}}], filters: "
            "[{type: RequestRedirect, requestRedirect: {statusCode: 301, port: 8443, hostname: "
            "a.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]}]}"
        )
    )
    assert rule_of(route).filters == (
        RequestRedirectFilter(
            hostname="a.example",
            port=8443,
            status_code=301,
            path=PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, "/new"),
        ),
    )


# -- every error names the object and the field -------------------------------------------


def _rule(body: str) -> str:
    return f"{{parentRefs: {PARENT}, rules: [{body}]}}"


def _filter(body: str) -> str:
    return _rule(f"{{filters: [{body}]}}")


def _backend(body: str) -> str:
    return _rule(f"{{backendRefs: [{body}]}}")


HTTP_BAD = [
    ("null", "spec", "required"),
    ("{parentRefs: [{kind: Service}]}", "spec.parentRefs[0].name", "required"),
    ("{parentRefs: [{name: web, port: 0}]}", "spec.parentRefs[0].port", "1-65535"),
    ("{parentRefs: [{name: web, group: 'Bad_Group'}]}", "spec.parentRefs[0].group", "API group"),
    ("{parentRefs: [{name: web, kind: '9'}]}", "spec.parentRefs[0].kind", "kind name"),
    ("{parentRefs: [{name: web, namespace: Shop}]}", "spec.parentRefs[0].namespace", "DNS label"),
    (
        "{parentRefs: [{name: a, kind: Service, group: ''}, {name: a, kind: Service, group: '', "
        "sectionName: x}]}",
        "spec.parentRefs[1].sectionName",
        "must be specified",
    ),
    (
        "{parentRefs: [{name: a, sectionName: x}, {name: a, sectionName: x}]}",
        "spec.parentRefs[1].sectionName",
        "must be unique",
    ),
    ("{parentRefs: " + str([{"name": f"p{i}"} for i in range(33)]) + "}", "spec.parentRefs", "32"),
    ("{hostnames: [Web.Example]}", "spec.hostnames[0]", "hostname"),
    ("{hostnames: " + str([f"h{i}.x" for i in range(17)]) + "}", "spec.hostnames", "16"),
    ("{rules: []}", "spec.rules", "at least 1"),
    ("{rules: " + str([{}] * 17) + "}", "spec.rules", "at most 16"),
    (
        "{rules: " + str([{"matches": [{}] * 64}, {"matches": [{}] * 64}, {}]) + "}",
        "spec.rules",
        "at most 128",
    ),
    (_rule("{matches: " + str([{}] * 65) + "}"), "spec.rules[0].matches", "at most 64"),
    (_rule("{matchs: []}"), "spec.rules[0].matchs", "unknown field"),
    (_rule("{sessionPersistence: {}}"), "spec.rules[0].sessionPersistence", "unknown field"),
    (_rule("{matches: [{path: {value: api}}]}"), "spec.rules[0].matches[0].path.value", "'/'"),
    (_rule("{matches: [{path: {value: /a//b}}]}"), "spec.rules[0].matches[0].path.value", "//"),
    (_rule("{matches: [{path: {value: /a/..}}]}"), "spec.rules[0].matches[0].path.value", "/.."),
    (_rule("{matches: [{path: {value: '/a b'}}]}"), "spec.rules[0].matches[0].path.value", "valid"),
    (_rule("{matches: [{path: {value: /a%2Fb}}]}"), "spec.rules[0].matches[0].path.value", "%2F"),
    (_rule("{matches: [{path: {type: Prefix}}]}"), "spec.rules[0].matches[0].path.type", "one of"),
    (
        _rule("{matches: [{path: {type: RegularExpression, value: '/(a'}}]}"),
        "spec.rules[0].matches[0].path.value",
        "RE2",
    ),
    (
        _rule("{matches: [{path: {type: RegularExpression, value: '/(a)\\1'}}]}"),
        "spec.rules[0].matches[0].path.value",
        "backreferences",
    ),
    (
        _rule("{matches: [{path: {type: RegularExpression, value: '/(?=a)'}}]}"),
        "spec.rules[0].matches[0].path.value",
        "lookahead",
    ),
    (_rule("{matches: [{method: get}]}"), "spec.rules[0].matches[0].method", "one of"),
    (
        _rule("{matches: [{headers: [{name: x}]}]}"),
        "spec.rules[0].matches[0].headers[0].value",
        "required",
    ),
    (
        _rule("{matches: [{headers: [{name: 'x y', value: a}]}]}"),
        "spec.rules[0].matches[0].headers[0].name",
        "header name",
    ),
    (
        _rule("{matches: [{headers: [{name: x, value: a}, {name: x, value: b}]}]}"),
        "spec.rules[0].matches[0].headers[1].name",
        "duplicate",
    ),
    (
        _rule("{matches: [{headers: [{name: x, value: a, type: Prefix}]}]}"),
        "spec.rules[0].matches[0].headers[0].type",
        "Exact, RegularExpression",
    ),
    (
        _rule("{matches: [{queryParams: [{name: q, value: '[', type: RegularExpression}]}]}"),
        "spec.rules[0].matches[0].queryParams[0].value",
        "RE2",
    ),
    (_backend("{port: 80}"), "spec.rules[0].backendRefs[0].name", "required"),
    (_backend("{name: web}"), "spec.rules[0].backendRefs[0].port", "port for Service"),
    (
        _backend("{name: web, port: 80, weight: -1}"),
        "spec.rules[0].backendRefs[0].weight",
        "0-1000000",
    ),
    (
        _backend("{name: web, port: 80, weight: 1000001}"),
        "spec.rules[0].backendRefs[0].weight",
        "0-1000000",
    ),
    (_backend("{name: web, port: 65536}"), "spec.rules[0].backendRefs[0].port", "1-65535"),
    (
        _rule("{backendRefs: " + str([{"name": "w", "port": 1}] * 17) + "}"),
        "spec.rules[0].backendRefs",
        "16",
    ),
    (_filter("{requestHeaderModifier: {}}"), "spec.rules[0].filters[0].type", "required"),
    (_filter("{type: Bogus}"), "spec.rules[0].filters[0].type", "one of"),
    (
        _filter("{type: RequestHeaderModifier}"),
        "spec.rules[0].filters[0].requestHeaderModifier",
        "must be specified",
    ),
    (
        _filter("{type: RequestHeaderModifier, requestHeaderModifier: {}, urlRewrite: {}}"),
        "spec.rules[0].filters[0].urlRewrite",
        "must be nil",
    ),
    (
        _filter("{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a}]}}"),
        "spec.rules[0].filters[0].requestHeaderModifier.set[0].value",
        "required",
    ),
    (
        _filter("{type: RequestHeaderModifier, requestHeaderModifier: {remove: [a, a]}}"),
        "spec.rules[0].filters[0].requestHeaderModifier.remove[1]",
        "duplicate",
    ),
    (
        _rule(
            "{filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {}}, "
            "{type: ResponseHeaderModifier, responseHeaderModifier: {}}]}"
        ),
        "spec.rules[0].filters[1].type",
        "cannot be repeated",
    ),
    (
        _rule(
            "{filters: [{type: URLRewrite, urlRewrite: {}}, "
            "{type: RequestRedirect, requestRedirect: {}}]}"
        ),
        "spec.rules[0].filters",
        "not both",
    ),
    (
        _rule(
            "{filters: [{type: RequestRedirect, requestRedirect: {}}], "
            "backendRefs: [{name: a, port: 1}]}"
        ),
        "spec.rules[0].filters",
        "backendRefs",
    ),
    (
        _filter("{type: RequestRedirect, requestRedirect: {statusCode: 300}}"),
        "spec.rules[0].filters[0].requestRedirect.statusCode",
        "301, 302, 303, 307, 308",
    ),
    (
        _filter("{type: RequestRedirect, requestRedirect: {scheme: ftp}}"),
        "spec.rules[0].filters[0].requestRedirect.scheme",
        "http, https",
    ),
    (
        _filter("{type: URLRewrite, urlRewrite: {path: {replaceFullPath: /x}}}"),
        "spec.rules[0].filters[0].urlRewrite.path.type",
        "required",
    ),
    (
        _filter("{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}"),
        "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
        "required",
    ),
    (
        _filter(
            "{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /, "
            "replacePrefixMatch: /}}}"
        ),
        "spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch",
        "type must be 'ReplacePrefixMatch'",
    ),
    (
        _filter(
            "{type: URLRewrite, urlRewrite: "
            "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}"
        ).replace("filters", "matches: [{path: {type: Exact, value: /a}}], filters"),
        "spec.rules[0].matches",
        "exactly one PathPrefix match",
    ),
    (
        _filter("{type: RequestMirror, requestMirror: {backendRef: {name: m}}}"),
        "spec.rules[0].filters[0].requestMirror.backendRef.port",
        "port for Service",
    ),
    (
        _filter("{type: RequestMirror, requestMirror: {percent: 5}}"),
        "spec.rules[0].filters[0].requestMirror.backendRef",
        "required",
    ),
    (
        _filter(
            "{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 1}, percent: 101}}"
        ),
        "spec.rules[0].filters[0].requestMirror.percent",
        "0-100",
    ),
    (
        _filter(
            "{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 1}, percent: 1, "
            "fraction: {numerator: 1}}}"
        ),
        "spec.rules[0].filters[0].requestMirror",
        "only one of percent or fraction",
    ),
    (
        _filter(
            "{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 1}, "
            "fraction: {numerator: 3, denominator: 2}}}"
        ),
        "spec.rules[0].filters[0].requestMirror.fraction",
        "numerator must be less than or equal",
    ),
    (
        _filter("{type: CORS, cors: {allowOrigins: ['*']}}"),
        "spec.rules[0].filters[0].type",
        "not implemented",
    ),
    (
        _filter("{type: ExtensionRef, extensionRef: {group: a, kind: B, name: c}}"),
        "spec.rules[0].filters[0].type",
        "not implemented",
    ),
    (
        _rule("{backendRefs: [{name: a, port: 1, filters: [{type: Bogus}]}]}"),
        "spec.rules[0].backendRefs[0].filters[0].type",
        "one of",
    ),
    (_rule("{timeouts: {request: 10}}"), "spec.rules[0].timeouts.request", "must be a string"),
    (
        _rule("{timeouts: {request: 1.5s}}"),
        "spec.rules[0].timeouts.request",
        "Gateway API duration",
    ),
    (_rule("{timeouts: {request: 1d}}"), "spec.rules[0].timeouts.request", "duration"),
    (
        _rule("{timeouts: {backendRequest: '-1s'}}"),
        "spec.rules[0].timeouts.backendRequest",
        "duration",
    ),
    (
        _rule("{timeouts: {request: 1s, backendRequest: 2s}}"),
        "spec.rules[0].timeouts.backendRequest",
        "cannot be longer",
    ),
    (_rule("{retry: {codes: [399]}}"), "spec.rules[0].retry.codes[0]", "400-599"),
    (_rule("{retry: {codes: [503, 503]}}"), "spec.rules[0].retry.codes[1]", "duplicate"),
    (_rule("{retry: {attempts: 0}}"), "spec.rules[0].retry.attempts", "integer 1-"),
    (_rule("{retry: {backoff: 100}}"), "spec.rules[0].retry.backoff", "string"),
    (_rule("{retry: {backoff: 1h1m1s1ms1h}}"), "spec.rules[0].retry.backoff", "duration"),
    (_rule("{name: Canary}"), "spec.rules[0].name", "hostname"),
    ("{parentRefs: [], hostnames: 'a.b'}", "spec.hostnames", "list of strings"),
    ("{parentRef: []}", "spec.parentRef", "unknown field"),
]


@pytest.mark.parametrize(("spec", "field", "message"), HTTP_BAD)
def test_bad_http_routes_name_the_object_and_the_field(spec: str, field: str, message: str) -> None:
    key = ObjectKey(Kind.HTTP_ROUTE, "shop", "web-route")
    error = refusal(http_route(spec), key, field, message)
    assert str(error).startswith(f"HTTPRoute shop/web-route: {field}: ")


GRPC_BAD = [
    (
        "{rules: [{matches: [{method: {type: Exact}}]}]}",
        "spec.rules[0].matches[0].method",
        "'service' or 'method'",
    ),
    ("{rules: [{matches: [{method: {}}]}]}", "spec.rules[0].matches[0].method", "'service' or"),
    (
        "{rules: [{matches: [{method: {service: 'echo/Echo'}}]}]}",
        "spec.rules[0].matches[0].method.service",
        "valid characters",
    ),
    (
        "{rules: [{matches: [{method: {method: 'Say-Hi'}}]}]}",
        "spec.rules[0].matches[0].method.method",
        "valid characters",
    ),
    (
        "{rules: [{matches: [{method: {method: '(', type: RegularExpression}}]}]}",
        "spec.rules[0].matches[0].method.method",
        "RE2",
    ),
    (
        "{rules: [{matches: [{path: {value: /}}]}]}",
        "spec.rules[0].matches[0].path",
        "unknown field",
    ),
    (
        "{rules: [{filters: [{type: URLRewrite}]}]}",
        "spec.rules[0].filters[0].type",
        "one of ExtensionRef, RequestHeaderModifier, RequestMirror, ResponseHeaderModifier",
    ),
    ("{rules: [{timeouts: {request: 1s}}]}", "spec.rules[0].timeouts", "unknown field"),
    (
        "{rules: [{backendRefs: [{name: echo, port: 9000, weight: 2000000}]}]}",
        "spec.rules[0].backendRefs[0].weight",
        "0-1000000",
    ),
    (
        "{rules: " + str([{"matches": [{"method": {"service": "a"}}] * 64}] * 3) + "}",
        "spec.rules",
        "at most 128",
    ),
]


@pytest.mark.parametrize(("spec", "field", "message"), GRPC_BAD)
def test_bad_grpc_routes_name_the_object_and_the_field(spec: str, field: str, message: str) -> None:
    refusal(grpc_route(spec), ObjectKey(Kind.GRPC_ROUTE, "shop", "echo-route"), field, message)


@pytest.mark.parametrize(
    ("metadata", "field", "message"),
    [
        ("{namespace: shop}", "metadata.name", "required"),
        ("{name: Web, namespace: shop}", "metadata.name", "DNS subdomain"),
        (
            "{name: web-route, namespace: shop, creationTimestamp: yesterday}",
            "metadata.creationTimestamp",
            "RFC 3339",
        ),
        (
            "{name: web-route, namespace: shop, creationTimestamp: '2024-13-01T00:00:00Z'}",
            "metadata.creationTimestamp",
            "RFC 3339",
        ),
        ("{name: web-route, namespace: shop, generation: -1}", "metadata.generation", "integer"),
        ("{name: web-route, namespace: shop, uid: 1}", "metadata.uid", "string"),
    ],
)
def test_bad_route_metadata_is_named(metadata: str, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        convert(http_route(f"{{parentRefs: {PARENT}}}", metadata))
    assert caught.value.field == field
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z"),
        ("2024-05-01t12:00:00.999z", "2024-05-01T12:00:00Z"),
        ("2024-05-01T08:30:00-03:30", "2024-05-01T12:00:00Z"),
    ],
)
def test_creation_timestamps_are_kept_in_utc_seconds(written: str, kept: str) -> None:
    route = convert(
        http_route(f"{{parentRefs: {PARENT}}}", f"{{name: r, creationTimestamp: '{written}'}}")
    )
    assert isinstance(route, HTTPRoute)
    assert route.creation_timestamp == kept


def test_unknown_fields_are_ignored_from_the_api_server() -> None:
    raw = http_route(_rule("{sessionPersistence: {sessionName: s}, matches: [{path: {value: /}}]}"))
    with pytest.raises(ManifestError):
        convert(raw)
    lenient = copy.deepcopy(raw)
    lenient["status"] = {"parents": []}
    route = convert(lenient, strict=False)
    assert isinstance(route, HTTPRoute)
    assert rule_of(route).matches == (HTTPRouteMatch(),)


@pytest.mark.parametrize(
    ("kind", "api_version", "meant"),
    [
        ("HTTPRoutes", "gateway.networking.k8s.io/v1", "HTTPRoute"),
        ("GrpcRoute", "gateway.networking.k8s.io/v1", "GRPCRoute"),
        ("BackendPolicys", "policy.xds-server.dev/v1alpha1", "BackendPolicy"),
    ],
)
def test_near_miss_route_kinds_are_warnings(kind: str, api_version: str, meant: str) -> None:
    with pytest.raises(ManifestError) as caught:
        convert({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}})
    assert caught.value.severity == "warning"
    assert meant in caught.value.message


@pytest.mark.parametrize("kind", ["TCPRoute", "TLSRoute", "UDPRoute", "BackendLBPolicy", "Gateway"])
def test_other_gateway_api_kinds_are_ignored(kind: str) -> None:
    assert convert({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": kind}) is None


def test_another_version_of_http_route_is_an_error() -> None:
    with pytest.raises(ManifestError) as caught:
        convert(
            {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "HTTPRoute", "metadata": {}}
        )
    assert caught.value.severity == "error"
    assert "gateway.networking.k8s.io/v1" in caught.value.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0), ("10s", 10.0), ("500ms", 0.5), ("1h30m", 5400.0), ("1h30m10s500ms", 5410.5),
        ("100ms200ms300ms", 0.6), ("00060m", 3600.0),
        ("1", None), ("1m1", None), ("1d", None), ("1h30m10s20ms50h", None), ("999999h", None),
        ("1.5h", None), ("-15m", None), ("", None),
    ],
)  # fmt: skip
def test_gep_2257_durations(text: str, seconds: float | None) -> None:
    """The GEP's own test vectors."""
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("pattern", "ok"),
    [
        ("/v[0-9]+/.*", True), (r"\pL+", True), (r"\p{Greek}", True), (r"a\z", True),
        (r"\Q.*\E", True), ("(?<name>a)", True), ("(?P<name>a)", True), ("a+?", True),
        (r"\*+", True), ("[+]+", True),
        ("(a", False), (r"(a)\1", False), ("(?=a)", False), ("(?<!a)b", False), ("(?>a)", False),
        ("a++", False), ("(?P=n)", False),
    ],
)  # fmt: skip
def test_regular_expressions_are_checked_as_re2(pattern: str, ok: bool) -> None:
    assert (regex_problem(pattern) is None) == ok, regex_problem(pattern)


def test_the_readme_names_and_the_kind_script_installs_the_pinned_version() -> None:
    root = Path(__file__).resolve().parent.parent
    assert re.fullmatch(r"v1\.\d+\.\d+", GATEWAY_API_VERSION)
    readme = (root / "README.md").read_text()
    assert f"Gateway API {GATEWAY_API_VERSION}" in readme
    assert f"download/{GATEWAY_API_VERSION}/standard-install.yaml" in readme
    script = (root / "scripts" / "kind-e2e.sh").read_text()
    assert "xds_server/sources/convert_routes.py" in script  # the version is read from there
    assert "releases/download/${GATEWAY_API_VERSION}/${GATEWAY_API_CHANNEL}-install.yaml" in script
