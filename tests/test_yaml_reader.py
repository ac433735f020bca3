"""Specification of the manifest YAML reader: Kubernetes' YAML semantics, within bounds.

Every table runs through both parsers (libyaml's, and the pure-Python one
used where PyYAML has no libyaml), which must read alike.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from xds_server.sources import limits, yaml_reader
from xds_server.sources.yaml_reader import (
    Document,
    DocumentProblem,
    ManifestLoader,
    PurePythonLoader,
    read_documents,
)

LOADERS = pytest.mark.parametrize(
    "loader", [ManifestLoader, PurePythonLoader], ids=["default", "pure-python"]
)


def value_of(text: str, loader: type[Any]) -> Any:
    (document,) = read_documents(text, loader)
    assert isinstance(document, Document), document
    return document.value


def problem_of(text: str, loader: type[Any]) -> DocumentProblem:
    (document,) = read_documents(text, loader)
    assert isinstance(document, DocumentProblem), document
    return document


def test_the_c_parser_is_used_where_pyyaml_has_it() -> None:
    assert (ManifestLoader is not PurePythonLoader) == yaml.__with_libyaml__


@LOADERS
@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ("1:20", "1:20"),  # YAML 1.1 would read 80; Kubernetes reads a string
        ("-1:30:00", "-1:30:00"),
        ("190:20:30.15", "190:20:30.15"),
        ("2024-01-01", "2024-01-01"),  # timestamps stay strings
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
        ("80", 80),
        ("-7", -7),
        ("1_000", 1000),
        ("0x1F", 31),
        ("0o17", 15),
        ("017", 15),
        ("0b101", 5),
        ("08", "08"),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".inf", float("inf")),
        ("true", True),
        ("yes", True),
        ("Off", False),
        ("y", "y"),
        ("~", None),
        ("null", None),
        ("", None),
        ("=", "="),
        ("'80'", "80"),
        ("10.0.0.1", "10.0.0.1"),
        ("'x\\uD800y'", "x\\uD800y"),  # single quotes: no escapes
    ],
)
def test_scalars_read_as_kubernetes_reads_them(
    loader: type[Any], scalar: str, expected: Any
) -> None:
    assert value_of(f"v: {scalar}", loader) == {"v": expected}


@LOADERS
def test_aliases_and_merge_keys_read_as_yaml_defines_them(loader: type[Any]) -> None:
    text = "base: &b {a: 1, z: 0}\ncopy: *b\nmerged: {<<: *b, e: 2, a: 3}\nmany: {<<: [{a: 5}, *b]}"
    assert value_of(text, loader) == {
        "base": {"a": 1, "z": 0},
        "copy": {"a": 1, "z": 0},
        "merged": {"a": 3, "z": 0, "e": 2},  # explicit keys win over merged ones
        "many": {"a": 5, "z": 0},  # earlier merged mappings win over later ones
    }


def nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=False)
)


@LOADERS
@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("kind: Service\nkind: Deployment\n", 2, "kind", "field given more than once"),
        ("spec:\n  ports:\n  - {port: 1, port: 2}\n", 3, "spec.ports[0].port",
         "field given more than once"),
        ("metadata:\n  labels: {app.k8s.io/x: a, app.k8s.io/x: b}\n", 2,
         "metadata.labels[app.k8s.io/x]", "field given more than once"),
        ("a: 80\n'a': 81\n", 2, "a", "field given more than once"),
        ("port: " + "9" * 5000, 1, "port", "integer too large (5,000 digits)"),
        ("port: -0x" + "f" * 21, 1, "port", "integer too large (21 digits)"),
        ("port: !!int '1:20'", 1, "port", "not an integer: '1:20'"),
        ("port: !!int 0x_", 1, "port", "not an integer"),
        ("a: !!float '._'", 1, "a", "not a number: '._'"),
        ("a: !!bool maybe", 1, "a", "not true or false: 'maybe'"),
        ("a: !!python/object/apply:os.system [ls]", 1, "a", "unsupported YAML tag"),
        ("a: !!binary aGVsbG8=", 1, "a", "unsupported YAML tag 'tag:yaml.org,2002:binary'"),
        ("a: !!set {x, y}", 1, "a", "unsupported YAML tag 'tag:yaml.org,2002:set'"),
        ("a: !local x", 1, "a", "unsupported YAML tag '!local'"),
        ("? [1, 2]\n: x\n", 1, None, "field names must be strings, got a list"),
        ("a: {<<: 5}", 1, "a", "a merge key (<<) takes a mapping"),
        ("a: &x [*x]", 1, "a[0]", "an alias refers to a node that contains it"),
        ("a: &x\n  b: *x\n", 2, "a.b", "an alias refers to a node that contains it"),
        (nested(limits.MAX_YAML_DEPTH + 1), 1, "a" + "[0]" * (limits.MAX_YAML_DEPTH - 1),
         "nested too deeply"),
        ("deep: &d " + "[" * 40 + "]" * 40 + "\nuse: " + "[" * 30 + "*d" + "]" * 30, 2,
         "use" + "[0]" * 30, "nested too deeply"),
        (BILLION_LAUGHS, 6, "f", "aliases expand this to more than 250,000 values"),
    ],
)  # fmt: skip
def test_documents_breaking_a_bound_are_refused_naming_the_field(
    loader: type[Any], text: str, line: int, field: str | None, message: str
) -> None:
    if loader is PurePythonLoader and message == "nested too deeply" and "deep:" not in text:
        pytest.skip("the pure-Python composer refuses deep nesting as it composes (a YAML error)")
    problem = problem_of(text, loader)
    assert (problem.line, problem.field) == (line, field)
    assert message in problem.message


def test_the_pure_python_composer_refuses_deep_nesting_without_recursion() -> None:
    with pytest.raises(yaml.YAMLError, match="nested too deeply"):
        read_documents(nested(100_000), PurePythonLoader)


def test_libyaml_refuses_runaway_nesting_as_invalid_yaml() -> None:
    if not yaml_reader.NATIVE_COMPOSE:
        pytest.skip("libyaml 0.2.6 or later is not installed")
    with pytest.raises(yaml.YAMLError, match="nesting depth"):
        read_documents(nested(100_000))


@LOADERS
def test_an_alias_bomb_is_refused_in_time_linear_in_its_text(loader: type[Any]) -> None:
    bomb = BILLION_LAUGHS + "j: &j [" + ", ".join(["*i"] * 10) + "]\n"  # 10^10 values expanded
    started = time.perf_counter()
    problem = problem_of(bomb, loader)
    assert time.perf_counter() - started < 2.0
    assert "alias" in problem.message


@LOADERS
def test_one_refused_document_leaves_the_others_readable(loader: type[Any]) -> None:
    text = "a: 1\n---\nb: 2\nb: 3\n---\n# only a comment\n---\nc: 4\n"
    found = read_documents(text, loader)
    assert [(type(d).__name__, getattr(d, "value", None)) for d in found] == [
        ("Document", {"a": 1}),
        ("DocumentProblem", None),
        ("Document", {"c": 4}),
    ]


@LOADERS
def test_a_refused_document_is_named_from_its_nodes(loader: type[Any]) -> None:
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {a: 1, a: 2}"
    )
    problem = problem_of(text, loader)
    assert problem.manifest == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
    }


def test_an_oversized_document_is_refused_unread_and_later_lines_still_hold() -> None:
    big = "kind: EndpointSlice\nmetadata:\n  name: big\nendpoints:\n" + "- x: y\n" * 300_000
    text = "a: 1\n---\n" + big + "---\nlast: [1, 2]\nbad: {x: 1, x: 2}\n"
    assert len(big.encode()) > limits.MAX_DOCUMENT_BYTES
    found = read_documents(text)
    assert [type(d).__name__ for d in found] == ["Document", "DocumentProblem", "DocumentProblem"]
    oversized, duplicate = found[1], found[2]
    assert isinstance(oversized, DocumentProblem) and isinstance(duplicate, DocumentProblem)
    assert oversized.line == 2  # its `---`
    assert oversized.manifest == {"kind": "EndpointSlice", "metadata": {"name": "big"}}
    assert f"over the limit of {limits.MAX_DOCUMENT_BYTES:,}" in oversized.message
    assert duplicate.line == text.count("\n") and duplicate.field == "bad.x"


def test_documents_beyond_the_per_file_limit_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DOCUMENTS_PER_FILE", 3)
    found = read_documents("---\n".join(f"n: {i}\n" for i in range(10)))
    assert [d.value for d in found if isinstance(d, Document)] == [{"n": 0}, {"n": 1}, {"n": 2}]
    (problem,) = [d for d in found if isinstance(d, DocumentProblem)]
    assert problem.line == 7 and "more than 3 documents" in problem.message


@pytest.mark.parametrize(
    "text",
    ["a: [1, 2", "a: b: c", "\tkey: v", 'a: "x\\uD800y"', "*undefined", "a: &x 1\nb: &x 2\n"],
)
def test_text_that_is_not_yaml_is_a_yaml_error(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        read_documents(text)


def slice_text(endpoints: int) -> str:
    head = (
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: big, labels: {kubernetes.io/service-name: big}}\n"
        "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n"
    )
    return head + "".join(
        f"- addresses: [10.0.{i // 250}.{i % 250 + 1}]\n"
        f"  conditions: {{ready: true, serving: true, terminating: false}}\n"
        f"  nodeName: node-{i % 50}\n  zone: zone-a\n"
        f"  targetRef: {{kind: Pod, name: big-{i}, namespace: default}}\n"
        for i in range(endpoints)
    )


def test_the_default_reader_parses_in_libyaml_and_reads_what_the_pure_python_one_reads() -> None:
    """libyaml does the parsing (its speed is a benchmark's to show, not a timed unit
    test's: one fails on a busy machine); both readers agree on a large slice."""
    if ManifestLoader is PurePythonLoader:
        pytest.skip("PyYAML has no libyaml here")
    from yaml.cyaml import CParser  # type: ignore[attr-defined]

    assert issubclass(ManifestLoader, CParser)
    text = slice_text(limits.MAX_ENDPOINTS_PER_SLICE)
    values = []
    for loader in (ManifestLoader, PurePythonLoader):
        (document,) = read_documents(text, loader)
        assert isinstance(document, Document)
        values.append(document.value)
    assert values[0] == values[1] == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text",
    [
        slice_text(20),
        "base: &b {a: 1}\nm: {<<: *b, c: [1, 2, *b]}\nt: 2024-01-01\np: 1:20\n---\nx: ~\n",
        "kind: A\nkind: B\n",
        nested(limits.MAX_YAML_DEPTH - 2),
        BILLION_LAUGHS,
    ],
    ids=["slice", "aliases", "duplicate", "nested", "bomb"],
)
def test_an_old_libyaml_composes_through_the_iterative_composer_alike(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libyaml before 0.2.6 has no nesting limit, so its events are composed here instead."""
    if ManifestLoader is PurePythonLoader:
        pytest.skip("PyYAML has no libyaml here")
    native = read_documents(text)
    monkeypatch.setattr(yaml_reader, "NATIVE_COMPOSE", False)
    composed_here = read_documents(text)
    assert [getattr(d, "value", d) for d in composed_here] == [
        getattr(d, "value", d) for d in native
    ]
    with pytest.raises(yaml.YAMLError, match="nested too deeply"):
        read_documents(nested(500))
