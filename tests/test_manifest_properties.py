"""Properties of manifest reading under mutation: no input escapes as an exception.

Valid Service, EndpointSlice and Pod manifests are mutated by hypothesis
(wrong types, missing and unknown fields, huge and negative numbers, unicode,
lone surrogates, NUL and control characters, long strings, wrong and
near-miss kinds, null documents, deep nesting, aliases, broken YAML, invalid
UTF-8) and read both ways the mesh reads them: as file bytes through
`parse_file`, and as API objects through `convert`.  Whatever the input:

- reading never raises;
- every rejection names the file, and the object and field unless the YAML
  itself is broken or the document is not an object at all;
- every message is bounded (`limits.MAX_ERROR_CHARS`) and encodable;
- every accepted object translates with the translate functions the
  pipeline uses and serializes with protobuf.

The run is derandomized (a fixed seed) and bounded; `XDS_FUZZ_BUDGET` raises
the number of examples.  The counts are printed with `-s`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_server import translate
from xds_server.model import ChangeSet, MeshSnapshot, Proxy, Workload
from xds_server.model.changes import MeshObject
from xds_server.resources import make_resource
from xds_server.sources import limits
from xds_server.sources.convert import ManifestError, convert
from xds_server.sources.file_state import SourceError, parse_file

pytestmark = pytest.mark.fuzz

BUDGET = int(os.environ.get("XDS_FUZZ_BUDGET", "250"))
PATH = Path("fuzz/manifests.yaml")
STATS: Counter[str] = Counter()
UNNAMED: Counter[str] = Counter()

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {
        "selector": {"app": "web"},
        "clusterIP": "10.96.0.10",
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
            {"name": "grpc", "port": 9090, "targetPort": "grpc-api", "protocol": "TCP"},
        ],
    },
}
SLICE: dict[str, Any] = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {"name": "web-1", "namespace": "shop",
                 "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9000}],
    "endpoints": [
        {"addresses": ["10.1.0.1"], "conditions": {"ready": True}, "zone": "zone-a",
         "nodeName": "node-a", "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop"}},
        {"addresses": ["10.1.0.2"], "conditions": {"ready": False}, "hostname": "web-1"},
    ],
}  # fmt: skip
POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"serviceAccountName": "web", "nodeName": "node-a",
             "containers": [{"name": "app", "image": "nginx"}]},
    "status": {"podIP": "10.1.0.1", "phase": "Running"},
}  # fmt: skip
BASES = (SERVICE, SLICE, POD)

SPECIAL_STRINGS = [
    "", " ", "None", "1:20", "0", "-1", "80", "http", "grpc", "TCP", "IPv6", "FQDN", "Pod",
    "10.1.0.9", "fd00::9", "::ffff:10.0.0.1", "0.0.0.0", "224.0.0.1", "fe80::1%eth0",
    "10.0.0.256", "web", "Web", "-web", "web-", "a.b", "kubernetes.io/h2c", "x/y/z",
    "x\ud800y", "\udfff", "a\x00b", "\x00", "tab\there", "line\nbreak", "\x7f", "\u2028",
    "\x1b[31mred", "é", "雪", "🙂", "\ufeff", "'", '"', "{}", "[]", "*a", "&a", "!tag", "%",
    "a" * 64, "a" * 254, "z" * 5000, "y" * 70_000,
]  # fmt: skip
SPECIAL_NUMBERS = [0, -1, 1, 65535, 65536, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]

scalars = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.sampled_from(SPECIAL_NUMBERS),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["name", "port", "x", "", "a b", "\x00k"]), inner, max_size=3
        )
    ),
    max_leaves=6,
)
KINDS = [
    "Service", "Services", "Service ", "service", "EndpointSlice", "endpointslice", "Pod",
    "Pods", "Deployment", "ConfigMap", "List", "", "Servic", "S" * 100, "Pod\x00",
]  # fmt: skip
LONG_DNS_NAME = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
VALID_EXTREMES = [
    (("metadata", "name"), "w" + "x" * 62),
    (("metadata", "namespace"), "n" * 63),
    (("metadata", "labels"), {"example.com/" + "k" * 63: "v" * 63, "e": ""}),
    (("metadata", "annotations"), {"note": "any text\n\twith ✓ and \u2028"}),
    (("spec", "ports", 0, "name"), "p" * 63),
    (("spec", "ports", 0, "appProtocol"), "example.com/h2c"),
    (("spec", "selector"), {"app": "web", "x.io/tier": "a-b_c.d"}),
    (("spec", "clusterIP"), "None"),
    (("endpoints", 0, "zone"), "🙂 zone é " * 400),
    (("endpoints", 0, "nodeName"), LONG_DNS_NAME),
    (("endpoints", 0, "addresses"), [f"10.2.0.{i}" for i in range(1, 101)]),
    (("endpoints", 0, "targetRef", "name"), "web-0" + "z" * 200),
    (("addressType",), "IPv6"),
    (("ports", 0, "appProtocol"), "kubernetes.io/h2c"),
    (("status", "podIP"), "fd00::7"),
    (("spec", "serviceAccountName"), LONG_DNS_NAME),
]
"""Values at Kubernetes' limits, which must be accepted and must translate."""
API_VERSIONS = ["v1", "V1", "apps/v1", "discovery.k8s.io/v1", "discovery.k8s.io/v1beta1",
                "serving.knative.dev/v1", "", "v2", " v1"]  # fmt: skip


def locations(value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside a manifest, the manifest itself included."""
    yield where
    if isinstance(value, dict):
        for key, item in value.items():
            yield from locations(item, (*where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from locations(item, (*where, i))


def at(manifest: Any, where: tuple[Any, ...]) -> Any:
    for step in where:
        manifest = manifest[step]
    return manifest


@st.composite
def mutated_manifests(draw: st.DrawFn) -> Any:
    """A valid manifest with one to three mutations applied."""
    manifest: Any = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        places = list(locations(manifest))[1:]
        if not isinstance(manifest, dict) or not places:
            break
        where = draw(st.sampled_from(places))
        operation = draw(st.sampled_from(["set", "set", "delete", "add", "kind", "api", "grow",
                                          "valid", "valid", "root"]))  # fmt: skip
        if operation == "valid":
            path, value = draw(st.sampled_from(VALID_EXTREMES))
            with contextlib.suppress(KeyError, IndexError, TypeError):  # not a field of this kind
                at(manifest, path[:-1])[path[-1]] = copy.deepcopy(value)
        elif operation == "kind":
            manifest["kind"] = draw(st.sampled_from(KINDS) | scalars)
        elif operation == "api":
            manifest["apiVersion"] = draw(st.sampled_from(API_VERSIONS) | scalars)
        elif operation == "root":
            manifest = draw(values)
        elif operation == "set":
            at(manifest, where[:-1])[where[-1]] = draw(values)
        elif operation == "delete":
            del at(manifest, where[:-1])[where[-1]]
        elif operation == "grow":
            parent = at(manifest, where[:-1])
            item = parent[where[-1]]
            count = draw(st.sampled_from([2, 101, 1001]))
            parent[where[-1]] = [copy.deepcopy(item) for _ in range(count)]
        else:
            target = at(manifest, where)
            key = draw(st.sampled_from(["extra", "name", "port", "zone", "ports", "labels"]))
            if isinstance(target, dict):
                target[key] = draw(values)
            elif isinstance(target, list):
                target.append(draw(values))
    return manifest


def dump(manifest: Any, style: str) -> str:
    """The manifest as YAML (block or flow style, by libyaml's emitter) or as JSON."""
    try:
        if style == "json":
            return json.dumps(manifest) + "\n"
        return yaml.dump(
            manifest, Dumper=yaml.CSafeDumper, sort_keys=False, allow_unicode=False,
            width=10**6, default_flow_style=style == "flow",
        )  # fmt: skip
    except (ValueError, TypeError, yaml.YAMLError):  # an int Python will not print, a key JSON
        return "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 1}]}\n"


def deep(depth: int) -> str:
    return (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: d}\nstatus: {x: "
        + "[" * depth
        + "]" * depth
        + "}\n"
    )


BOMB = "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nstatus:\n  a: &a [x, x, x, x, x, x]\n"
BOMB += "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 8)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True)
)


@st.composite
def manifest_files(draw: st.DrawFn) -> bytes:
    """A file of one to three documents, each mutated, some then damaged as text."""
    styles = st.sampled_from(["block", "block", "flow", "json"])
    documents = [
        dump(draw(mutated_manifests()), draw(styles)) for _ in range(draw(st.integers(1, 3)))
    ]
    extra = draw(st.sampled_from([None, None, None, "null\n", "~\n", "- a\n- b\n", "hello\n",
                                  deep(70), deep(1200), BOMB, "a: &x [*x]\n",
                                  "apiVersion: v1\nkind: List\nitems: 5\n",
                                  "apiVersion: v1\nkind: Service\nkind: Pod\n",
                                  "apiVersion: v1\nkind: Service\nmetadata: {name: big}\n"
                                  "spec: {ports: [{port: " + "9" * 5000 + "}]}\n"]))  # fmt: skip
    if extra:
        documents.insert(draw(st.integers(0, len(documents))), extra)
    text = "---\n".join(documents)
    damage = draw(st.sampled_from([None, None, None, "truncate", "bytes", "duplicate-line", "tab"]))
    data = text.encode("utf-8")
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "bytes":
        spot = draw(st.integers(0, len(data)))
        data = (
            data[:spot]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"]))
            + data[spot:]
        )
    elif damage == "duplicate-line":
        lines = data.split(b"\n")
        i = draw(st.integers(0, len(lines) - 1))
        data = b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    elif damage == "tab":
        data = data.replace(b"\n  ", b"\n\t", 1)
    return data


# -- the properties -------------------------------------------------------------------------------

DOCUMENT_LEVEL = (
    "invalid YAML", "not UTF-8 text", "a manifest must be a mapping", "document is null",
    "document is ", "more than ",
)  # fmt: skip
"""Messages about the file or a document as a whole: no object or field to name."""


def translates(objects: list[MeshObject]) -> int:
    """Translate `objects` as the pipeline does; serialize every resource; return the count."""
    changes = ChangeSet()
    for obj in objects:
        changes.upsert(obj)
    mesh, _ = MeshSnapshot().apply(changes)
    messages: list[Any] = []
    namespaces = {"default", *(ns for ns, _ in mesh.services), *(ns for ns, _ in mesh.workloads)}
    for service in mesh.sorted_services():
        messages += translate.clusters_for_service(service)
        messages += translate.load_assignments_for_service(service, mesh.slices_of(service))
    proxies = [Proxy(node_id=f"client.{ns}", namespace=ns) for ns in sorted(namespaces)]
    proxies += [proxy_of(workload) for workload in mesh.workloads.values()]
    proxies += [Proxy(node_id="captured.shop", namespace="shop", labels=(("app", "web"),),
                      ip="10.1.0.1", interception="redirect")]  # fmt: skip
    for proxy in proxies:
        messages.append(translate.outbound_route_config(mesh, proxy.namespace))
        messages += translate.proxy_listeners(mesh, proxy)
        messages += translate.proxy_clusters(mesh, proxy)
    for message in messages:
        message.SerializeToString(deterministic=True)
        make_resource(message)
    return len(messages)


def proxy_of(workload: Workload) -> Proxy:
    return Proxy(
        node_id=f"{workload.name}.{workload.namespace}",
        namespace=workload.namespace,
        workload=workload.name,
        service_account=workload.service_account,
        labels=workload.labels,
        ip=workload.ip,
    )


def check_bounded(text: str) -> None:
    assert len(text) <= limits.MAX_ERROR_CHARS, text[:200]
    text.encode("utf-8")


def check_named(error: SourceError) -> None:
    assert error.path == PATH
    check_bounded(str(error))
    STATS["rejections"] += 1
    if error.field:
        STATS["naming a field"] += 1
    else:
        UNNAMED[error.message[:30]] += 1
    if error.message.startswith("defined again"):
        STATS["duplicate objects"] += 1
    if error.object_ref is None and error.field is None:
        assert error.message.startswith(DOCUMENT_LEVEL), str(error)
        STATS["file or document level"] += 1
    else:
        assert error.object_ref, str(error)
        if error.field is None:
            assert error.message.startswith((*DOCUMENT_LEVEL, "defined again")), str(error)


FUZZ = settings(
    max_examples=BUDGET,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(manifest_files())
def test_reading_a_mutated_file_never_raises_and_names_every_rejection(data: bytes) -> None:
    STATS["files"] += 1
    state = parse_file(PATH, data)
    for error in state.errors:
        check_named(error)
        if error.severity == "warning":
            STATS["warnings"] += 1
    STATS["accepted objects"] += len(state.objects)
    STATS["resources"] += translates(list(state.objects.values()))


@FUZZ
@given(mutated_manifests())
def test_converting_a_mutated_api_object_never_raises_and_accepted_ones_translate(
    manifest: Any,
) -> None:
    STATS["api objects"] += 1
    try:
        obj = convert(manifest, strict=False)
    except ManifestError as error:
        check_bounded(str(error))
        STATS["api rejections"] += 1
        STATS["api rejections naming a field"] += bool(error.field)
        assert error.field or error.message.startswith("must be a mapping"), str(error)
        return
    if obj is not None:
        STATS["api accepted"] += 1
        translates([obj])


def test_the_fuzz_run_rejected_and_accepted_enough_to_mean_something() -> None:
    if not STATS["files"]:
        pytest.skip("the property tests did not run in this session")
    share = STATS["naming a field"] / max(STATS["rejections"], 1)
    print(  # the figures for the closing note (pytest -s)
        f"\nmanifest fuzz: {STATS['files']} files, {STATS['rejections']} rejections "
        f"({STATS['warnings']} warnings), {share:.0%} naming a field, "
        f"{STATS['file or document level']} at file or document level, "
        f"{STATS['accepted objects']} objects accepted, {STATS['resources']} resources "
        f"translated; API objects: {STATS['api objects']}, {STATS['api rejections']} rejected "
        f"({STATS['api rejections naming a field']} naming a field), "
        f"{STATS['api accepted']} accepted"
    )
    print("rejections naming no field:", UNNAMED.most_common(8))
    named = STATS["rejections"] - STATS["file or document level"] - STATS["duplicate objects"]
    object_share = STATS["naming a field"] / max(named, 1)
    print(f"{object_share:.0%} of the rejections of an object's content name a field")
    assert STATS["rejections"] > STATS["files"] / 4
    assert STATS["accepted objects"] > STATS["files"] / 4 and STATS["api accepted"] > 0
    assert object_share > 0.95
