"""Specification of `parse_file` on hostile input: every problem named, bounded, and contained.

(`test_file_source.py` holds the directory-level rules and the common errors;
this file holds what the reliability work added: bounds, near-miss kinds,
severities, bounded text, and one bad object costing only that object.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xds_server.model import Kind, ObjectKey, Service, ServicePort
from xds_server.sources import file_state, limits
from xds_server.sources.file_state import SourceError, parse_file

PATH = Path("dir/a.yaml")


def svc(name: str = "x", port: Any = 80, kind: str = "Service", api: str = "v1") -> str:
    return (
        f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: {name}}}\n"
        f"spec: {{ports: [{{name: http, port: {port}}}]}}\n"
    )


def good(name: str = "x", port: int = 80) -> Service:
    return Service("default", name, (ServicePort(port, name="http", target_port=port),))


SLICE = (
    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
    "metadata: {name: x-1, labels: {kubernetes.io/service-name: x}}\naddressType: IPv4\n"
)


def nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth


LAUGHS = "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=False)
)


@pytest.mark.parametrize(
    ("text", "line", "object_ref", "field", "message", "severity"),
    [
        pytest.param(nested(600), 1, "object", "a" + "[0]" * 63, "nested too deeply", "error",
                     id="deep-nesting-names-the-field"),
        (svc(kind="Services"), 2, "Services default/x", "kind", "did you mean 'Service'",
         "warning"),
        (svc(kind="endpointslice", api="discovery.k8s.io/v1"), 2, "endpointslice default/x",
         "kind", "did you mean 'EndpointSlice'", "warning"),
        (svc(api="apps/v1"), 1, "Service default/x", "apiVersion", "did you mean 'v1'?",
         "warning"),
        (svc() + "kind: Deployment\n", 5, "Deployment default/x", "kind",
         "field given more than once", "error"),
        (svc(port="9" * 5000), 4, "Service default/x", "spec.ports[0].port",
         "integer too large (5,000 digits)", "error"),
        (svc(port="1:20"), 4, "Service default/x", "spec.ports[0].port",
         "must be an integer 1-65535, got '1:20'", "error"),
        (svc(port="!!python/name:os.system ''"), 4, "Service default/x", "spec.ports[0].port",
         "unsupported YAML tag", "error"),
        ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + LAUGHS, 6, "object", "f",
         "aliases expand this", "error"),
        ("null\n", 1, None, None, "document is null", "warning"),
        ("hello\n", 1, None, None, "a manifest must be a mapping", "error"),
        ("- " + svc().replace("\n", "\n  "), 1, None, None,
         "got a list; separate objects with '---', or use kind: List", "error"),
        ("apiVersion: v1\nkind: List\nitems: {a: 1}\n", 3, "List", "items",
         "must be a list of objects, got a mapping", "error"),
        ("apiVersion: v1\nkind: List\nitems:\n- 5\n", 4, "List", "items[0]",
         "a manifest must be a mapping", "error"),
        (SLICE + 'endpoints: [{addresses: [10.0.0.1], zone: "x\\uD800y"}]\n', 5, None, None,
         "invalid YAML", "error"),
        (SLICE + 'endpoints: [{addresses: [10.0.0.1], zone: "x\\0y"}]\n', 5,
         "EndpointSlice default/x-1", "endpoints[0].zone", "must not contain NUL", "error"),
        (SLICE + 'endpoints: [{addresses: [10.0.0.1], zone: "x\\ty"}]\n', 5,
         "EndpointSlice default/x-1", "endpoints[0].zone", "control characters", "error"),
        (SLICE + "endpoints: [{addresses: ['fd00::1']}]\n", 5, "EndpointSlice default/x-1",
         "endpoints[0].addresses[0]", "must be an IPv4 address", "error"),
    ],
)  # fmt: skip
def test_hostile_documents_are_named_by_file_line_object_and_field(
    text: str, line: int, object_ref: str | None, field: str | None, message: str, severity: str
) -> None:
    (error,) = parse_file(PATH, text.encode()).errors
    assert (error.path, error.line, error.object_ref, error.field, error.severity) == (
        PATH, line, object_ref, field, severity,
    )  # fmt: skip
    assert message in error.message
    assert str(error).startswith(
        f"{PATH}:{line}: " + ("warning: " if severity == "warning" else "")
    )


def test_text_that_is_not_utf8_says_where() -> None:
    (error,) = parse_file(PATH, b"a: 1\nb: \xff\n").errors
    assert error.message == "not UTF-8 text: invalid start byte (line 2, byte 8)"


def test_an_oversized_document_is_refused_by_name_and_its_last_good_version_kept() -> None:
    previous = parse_file(PATH, svc("big").encode() + b"---\n" + svc("small").encode())
    huge = svc("big").replace(
        "spec:", "status: {x: '" + "z" * limits.MAX_DOCUMENT_BYTES + "'}\nspec:"
    )
    state = parse_file(PATH, (huge + "---\n" + svc("small", 81)).encode(), previous)
    (error,) = state.errors
    assert error.line == 1 and error.object_ref == "Service default/big"
    assert "over the limit" in error.message
    assert state.objects == {
        ObjectKey(Kind.SERVICE, "default", "big"): good("big"),
        ObjectKey(Kind.SERVICE, "default", "small"): good("small", 81),
    }


@pytest.mark.parametrize(
    "edit",
    [
        svc(kind="Services"),  # a near-miss kind: probably still meant as the Service
        svc(api="V1"),
        svc() + "spec: {}\n",  # refused before construction: named from its nodes
        svc(port="9" * 5000),
    ],
)
def test_a_refused_edit_keeps_the_objects_last_good_version(edit: str) -> None:
    previous = parse_file(PATH, svc().encode())
    state = parse_file(PATH, edit.encode(), previous)
    assert len(state.errors) == 1
    assert state.objects == {ObjectKey(Kind.SERVICE, "default", "x"): good()}


def test_kinds_the_mesh_does_not_read_are_ignored_quietly() -> None:
    text = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 2}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n---\n" + svc()
    )
    state = parse_file(PATH, text.encode())
    assert state.errors == ()
    assert list(state.objects.values()) == [good()]


def test_a_conversion_bug_costs_only_that_object(monkeypatch: pytest.MonkeyPatch) -> None:
    real = file_state.convert

    def convert(manifest: Any, **kwargs: Any) -> Any:
        if manifest["metadata"]["name"] == "x":
            raise RuntimeError("bug")
        return real(manifest, **kwargs)

    previous = parse_file(PATH, svc().encode())
    monkeypatch.setattr(file_state, "convert", convert)
    state = parse_file(PATH, (svc(port=81) + "---\n" + svc("y")).encode(), previous)
    (error,) = state.errors
    assert (error.line, error.object_ref) == (1, "Service default/x")
    assert error.message == "could not be converted: RuntimeError('bug')"
    assert set(state.objects.values()) == {good(), good("y")}


def test_objects_beyond_the_per_file_limit_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DOCUMENTS_PER_FILE", 2)
    items = "".join("- " + svc(f"s{i}").replace("\n", "\n  ") + "\n" for i in range(4))
    state = parse_file(PATH, f"apiVersion: v1\nkind: List\nitems:\n{items}".encode())
    assert sorted(key.name for key in state.objects) == ["s0", "s1"]
    (error,) = state.errors
    assert "more than 2 objects in one file" in error.message


HUGE = 1_000_000


@pytest.mark.parametrize(
    "text",
    [
        svc("a" * HUGE),
        svc().replace("name: x}", "name: x, labels: {" + "k" * HUGE + ": v}}"),
        svc().replace("spec:", "s" * HUGE + ": 1\nspec:"),
        svc().replace("port: 80", "port: '" + "\\x01" * HUGE + "'"),
        svc().replace("port: 80", 'port: "' + "\\x01" * HUGE + '"'),
        svc(kind="S" * HUGE),
        svc(api="v" * HUGE),
        "a: *" + "x" * HUGE,
        "&" + "x" * HUGE + " a: b\n&" + "x" * HUGE + " c: d\n",
        "a: !" + "t" * HUGE + " b",
        "\n" * HUGE + "a: [",
        SLICE + "endpoints: [{addresses: [10.0.0.1], zone: '" + "\u00e9" * HUGE + "'}]\n",
    ],
    ids=[
        "name", "label-key", "field-name", "quoted-port", "escaped-port", "kind", "api-version",
        "undefined-alias", "duplicate-anchor", "tag", "far-yaml-error", "zone",
    ],
)  # fmt: skip
def test_error_text_is_bounded_whatever_the_input(text: str) -> None:
    state = parse_file(PATH, text.encode())
    assert state.errors
    for error in state.errors:
        assert len(str(error)) <= limits.MAX_ERROR_CHARS
        assert len(error.message) <= limits.MAX_ERROR_CHARS
        assert len(error.field or "") <= limits.MAX_FIELD_CHARS
        str(error).encode("utf-8")  # loggable as it is


def test_source_errors_bound_their_parts_and_show_any_path() -> None:
    error = SourceError(Path("dir/fz-\udcff.yaml"), "o" * 10_000, "f" * 10_000, "m" * 10_000, 3)
    assert len(error.object_ref or "") <= 2 * limits.MAX_SHOWN_VALUE_CHARS
    assert len(error.field or "") <= limits.MAX_FIELD_CHARS
    assert len(error.message) <= limits.MAX_ERROR_CHARS
    text = str(error)
    assert text.startswith("dir/fz-\\xff.yaml:3: ooo")
    assert len(text) <= limits.MAX_ERROR_CHARS


def test_a_warning_says_so() -> None:
    warning = SourceError(PATH, "Services default/x", "kind", "did you mean 'Service'?", 2,
                          "warning")  # fmt: skip
    assert (
        str(warning) == "dir/a.yaml:2: warning: Services default/x: kind: did you mean 'Service'?"
    )
    assert str(SourceError(PATH, None, None, "bad", 2)) == "dir/a.yaml:2: bad"


def test_good_files_parse_as_before() -> None:
    state = parse_file(PATH, (svc() + "---\n" + SLICE + "endpoints: []\n").encode())
    assert state.errors == ()
    assert state.lines == {
        ObjectKey(Kind.SERVICE, "default", "x"): 1,
        ObjectKey(Kind.ENDPOINT_SLICE, "default", "x-1"): 6,
    }
    assert state.objects[ObjectKey(Kind.SERVICE, "default", "x")] == good()
