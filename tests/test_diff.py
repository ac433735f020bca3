"""`xds-server diff`, piece by piece: the JSON Patch, the proposal, the response, the CLI.

Specifications, each without a control plane: the patch of two JSON values
applies (with an independent RFC 6902 implementation) to give the second; a
proposal's ChangeSet and errors are what the file source would make of the
same files written into its directory (or what `kubectl apply` would upsert);
the response lists each proxy's changes with one diff per distinct change,
redacted; the endpoint is bounded and read-only; the CLI's table, JSON and
exit codes follow `kubectl diff`.  The real thing end to end is in
`test_e2e_diff.py`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
from e2e_mesh import service_yaml, slice_yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_server import cli_diff
from xds_server.admin import create_app
from xds_server.admin.auth import AdminToken
from xds_server.admin.diff import (
    MAX_BODY_BYTES,
    MAX_OPS_SHOWN,
    DiffResponse,
    DryRun,
    PatchOp,
    diff_response,
    json_patch,
)
from xds_server.admin.paging import Page
from xds_server.admin.redact import REDACTED
from xds_server.app import ControlPlane
from xds_server.model import ChangeSet, Kind, ObjectKey, Proxy
from xds_server.pipeline.records import Preview, ResourceChange
from xds_server.resources import Resource, make_resource
from xds_server.settings import Settings
from xds_server.sources.file import FileSource
from xds_server.sources.file_state import DirectoryState, parse_file
from xds_server.sources.proposal import NOT_READ, propose_apply, propose_files

TOKEN = AdminToken("test-admin-token-" + "x" * 16, "tests")
"""The admin token of the app under test."""
BEARER = {"Authorization": f"Bearer {TOKEN.value}"}

DIRECTORY = Path("/mesh")


# -- JSON Patch ---------------------------------------------------------------------------

PATCHES = [
    pytest.param({"a": 1}, {"a": 1}, [], id="equal"),
    pytest.param({"a": 1}, {"a": 2}, [("replace", "/a", 2, 1)], id="scalar-replaced"),
    pytest.param({"a": 1}, {"a": True}, [("replace", "/a", True, 1)], id="1-is-not-true"),
    pytest.param({}, {"a": {"b": 1}}, [("add", "/a", {"b": 1}, None)], id="key-added"),
    pytest.param({"a": 1, "b": 2}, {"b": 2}, [("remove", "/a", None, 1)], id="key-removed"),
    pytest.param(
        {"x": {"y": {"z": "1s"}}}, {"x": {"y": {"z": "5s"}}},
        [("replace", "/x/y/z", "5s", "1s")], id="nested",
    ),
    pytest.param(
        {"l": ["a", "c"]}, {"l": ["a", "b", "c"]}, [("add", "/l/1", "b", None)],
        id="inserted-in-a-list-is-one-add",
    ),
    pytest.param(
        {"l": ["a", "b", "c"]}, {"l": ["a", "c"]}, [("remove", "/l/1", None, "b")],
        id="removed-from-a-list-is-one-remove",
    ),
    pytest.param(
        {"l": [{"name": "a", "v": 1}, {"name": "b", "v": 1}]},
        {"l": [{"name": "a", "v": 1}, {"name": "b", "v": 2}]},
        [("replace", "/l/1/v", 2, 1)], id="an-element-edited-in-place",
    ),
    pytest.param(
        {"a/b": 1, "m~n": 1}, {"a/b": 2, "m~n": 2},
        [("replace", "/a~1b", 2, 1), ("replace", "/m~0n", 2, 1)], id="pointer-escaping",
    ),
    pytest.param([1], {"a": 1}, [("replace", "", {"a": 1}, [1])], id="the-whole-document"),
]  # fmt: skip


def op(kind: str, path: str, value: Any, old: Any) -> dict[str, Any]:
    shown: dict[str, Any] = {"op": kind, "path": path}
    if kind != "remove":
        shown["value"] = value
    if kind != "add":
        shown["old"] = old
    return shown


def dumped(ops: list[PatchOp]) -> list[dict[str, Any]]:
    return [patch.model_dump(mode="json") for patch in ops]


@pytest.mark.parametrize(("before", "after", "expected"), PATCHES)
def test_a_json_patch_names_each_change_with_the_value_it_replaces(
    before: Any, after: Any, expected: list[tuple[str, str, Any, Any]]
) -> None:
    ops = dumped(json_patch(before, after))

    assert ops == [op(*item) for item in expected]
    assert jsonpatch.apply_patch(before, ops) == after


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "a", "b", "/", "~"]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f"]), children, max_size=4)
    ),
    max_leaves=20,
)


def strictly_equal(a: Any, b: Any) -> bool:
    """Equality that tells `1` from `True` (JSON does)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(strictly_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(strictly_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=200, derandomize=True, deadline=None)
@given(json_values, json_values)
def test_any_patch_applied_by_rfc_6902_gives_the_after_value(before: Any, after: Any) -> None:
    ops = dumped(json_patch(before, after))

    assert strictly_equal(jsonpatch.apply_patch(before, ops), after)
    assert ops == dumped(json_patch(before, after))  # deterministic
    assert dumped(json_patch(after, after)) == []


# -- the proposal, file mode --------------------------------------------------------------

BACKEND = service_yaml("backend")
BACKEND_9090 = service_yaml("backend", port=9090)
SLICE = slice_yaml("backend", ["10.0.0.1"], 8080)
CART = service_yaml("cart")
BAD_PORT = BACKEND.replace("port: 8080,", "port: 99999,")


def directory_of(files: Mapping[str, str]) -> DirectoryState:
    """The file source's state for `files` (relative path -> text) under DIRECTORY."""
    parsed = {
        DIRECTORY / name: parse_file(DIRECTORY / name, text.encode())
        for name, text in files.items()
    }
    return DirectoryState().update(parsed)[0]


def keys(changes: ChangeSet) -> tuple[set[str], set[str]]:
    return {str(key) for key in changes.upserts}, {str(key) for key in changes.deletes}


EXISTING = {"backend.yaml": f"{BACKEND}---\n{SLICE}", "other/cart.yaml": CART}
PROPOSALS = [
    pytest.param({"new.yaml": service_yaml("shop")}, {"Service default/shop"}, set(),
                 id="a-new-file-adds-its-objects"),
    pytest.param({"backend.yaml": BACKEND}, set(), {"EndpointSlice default/backend-slice"},
                 id="a-replaced-file-drops-what-it-no-longer-holds"),
    pytest.param({"backend.yaml": f"{BACKEND_9090}---\n{SLICE}"}, {"Service default/backend"},
                 set(), id="only-the-edited-object-changes"),
    pytest.param({"backend.yaml": EXISTING["backend.yaml"]}, set(), set(),
                 id="the-same-bytes-change-nothing"),
    pytest.param({"./other//cart.yaml": ""}, set(), {"Service default/cart"},
                 id="paths-are-normalised-and-an-emptied-file-deletes"),
    pytest.param({"cart.yaml": CART}, set(), set(),
                 id="an-object-another-file-defines-stays-that-files"),
]  # fmt: skip


@pytest.mark.parametrize(("files", "upserted", "deleted"), PROPOSALS)
def test_a_proposal_changes_what_writing_its_files_into_the_directory_would(
    files: dict[str, str], upserted: set[str], deleted: set[str]
) -> None:
    state = directory_of(EXISTING)
    proposal = propose_files(
        state, DIRECTORY, {name: text.encode() for name, text in files.items()}
    )

    assert keys(proposal.changes) == (upserted, deleted)
    # The same as the source itself, folding in the same files:
    written = {DIRECTORY / Path(n): parse_file(DIRECTORY / Path(n), t.encode(),
                                                 state.files.get(DIRECTORY / Path(n)))
               for n, t in files.items()}  # fmt: skip
    assert keys(state.update(written)[1]) == (upserted, deleted)


def test_an_invalid_object_keeps_its_good_version_and_is_named_by_file_line_and_field() -> None:
    state = directory_of(EXISTING)

    proposal = propose_files(state, DIRECTORY, {"backend.yaml": f"{BAD_PORT}---\n{SLICE}".encode()})

    assert not proposal.changes
    [error] = proposal.errors
    assert (error.path, error.line, error.field) == (Path("backend.yaml"), 7, "spec.ports[0].port")
    assert error.object_ref == "Service default/backend"
    assert str(error).startswith("backend.yaml:7: Service default/backend: spec.ports[0].port: ")


def test_a_duplicate_is_reported_on_the_proposed_file_naming_the_one_in_force() -> None:
    proposal = propose_files(directory_of(EXISTING), DIRECTORY, {"cart.yaml": CART.encode()})

    [error] = proposal.errors
    assert (error.path, error.object_ref) == (Path("cart.yaml"), "Service default/cart")
    assert f"also defined in {DIRECTORY / 'other/cart.yaml'}" in error.message


@pytest.mark.parametrize("name", [".hidden.yaml", ".git/x.yaml", "mesh.json", "README"])
def test_a_file_the_source_would_not_read_proposes_nothing_and_says_so(name: str) -> None:
    proposal = propose_files(directory_of(EXISTING), DIRECTORY, {name: CART.encode()})

    assert not proposal.changes
    assert [(str(e.path), e.message) for e in proposal.errors] == [(name, NOT_READ)]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"/etc/mesh.yaml": b""}, "must be relative to the watched directory"),
        ({"../up.yaml": b""}, "must not leave the watched directory"),
        ({"": b""}, "expected a relative path"),
        ({".": b""}, "names no file"),
        ({"a.yaml": b"", "./a.yaml": b""}, "the same file as another name given"),
    ],
)
def test_a_path_outside_the_directory_is_a_bad_request(
    files: dict[str, bytes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        propose_files(DirectoryState(), DIRECTORY, files)


# -- the proposal, Kubernetes mode ---------------------------------------------------------


def test_against_kubernetes_every_proposed_object_is_upserted_and_nothing_deleted() -> None:
    proposal = propose_apply(
        {"a.json": json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {
            "name": "cart"}, "spec": {"ports": [{"port": 80}]}}).encode(),
         "b.yaml": f"{BACKEND}---\n{BAD_PORT.replace('backend', 'broken')}".encode()}
    )  # fmt: skip

    assert keys(proposal.changes) == ({"Service default/cart", "Service default/backend"}, set())
    [error] = proposal.errors
    assert (str(error.path), error.object_ref) == ("b.yaml", "Service default/broken")


# -- the response ---------------------------------------------------------------------------


def cluster(name: str, seconds: int = 1, key: str | None = None) -> Resource:
    message = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    message.connect_timeout.FromSeconds(seconds)
    if key is not None:
        tls = tls_pb2.UpstreamTlsContext()
        tls.common_tls_context.tls_certificates.add().private_key.inline_string = key
        message.transport_socket.name = "envoy.transport_sockets.tls"
        message.transport_socket.typed_config.Pack(tls)
    return make_resource(message)


def changed(before: Resource, after: Resource) -> ResourceChange:
    return ResourceChange(before.type_url, before.name, "changed", before, after)


def added(after: Resource) -> ResourceChange:
    return ResourceChange(after.type_url, after.name, "added", None, after)


def removed(before: Resource) -> ResourceChange:
    return ResourceChange(before.type_url, before.name, "removed", before, None)


def dry_run(proxies: dict[str, tuple[ResourceChange, ...]], *, total: int = 3) -> DryRun:
    changes = ChangeSet()
    changes.delete(ObjectKey(Kind.SERVICE, "default", "gone"))
    return DryRun(changes, (), Preview(proxies), total)


SHARED = changed(cluster("backend"), cluster("backend", 5))


def test_each_proxy_lists_its_changes_and_a_shared_change_is_diffed_once() -> None:
    run = dry_run(
        {"b.shop": (removed(cluster("old")), SHARED), "a.default": (SHARED, added(cluster("new")))}
    )

    answer = diff_response(run, Page())

    assert [
        (p.node_id, [(c.type, c.name, c.change) for c in p.changes]) for p in answer.proxies
    ] == [
        ("a.default", [("CDS", "backend", "changed"), ("CDS", "new", "added")]),
        ("b.shop", [("CDS", "backend", "changed"), ("CDS", "old", "removed")]),
    ]
    assert (answer.proxies_changed, answer.proxies_unaffected) == (2, 1)
    assert len(answer.diffs) == 2  # the shared change once, the added cluster once
    shared = answer.diffs[answer.proxies[0].changes[0].diff or ""]
    assert dumped(shared.ops) == [op("replace", "/connect_timeout", "5s", "1s")]
    assert answer.proxies[1].changes[1].diff is None  # a removal has no patch
    assert [(o.kind, o.name, o.change) for o in answer.objects] == [("Service", "gone", "deleted")]


def test_private_keys_never_appear_in_a_diff() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMIIsecret\n-----END PRIVATE KEY-----"
    run = dry_run({"a": (changed(cluster("tls", 1, key), cluster("tls", 2, key + "x")),)})

    text = diff_response(run, Page()).model_dump_json()

    assert "MIIsecret" not in text
    assert "PRIVATE KEY" not in text
    assert REDACTED in json.dumps(diff_response(dry_run({"a": (added(cluster("t", 1, key)),)}),
                                                Page()).model_dump(mode="json"))  # fmt: skip


def test_the_proxies_come_a_page_at_a_time_and_huge_patches_are_cut() -> None:
    many = {f"n{i:02}": (SHARED,) for i in range(5)}
    wide_before = {"a": [str(i) for i in range(MAX_OPS_SHOWN + 10)]}
    wide_after = {"a": [f"{i}!" for i in range(MAX_OPS_SHOWN + 10)]}

    answer = diff_response(dry_run(many, total=5), Page(offset=2, limit=2))
    patch = diff_response(
        dry_run({"a": (SHARED,)}), Page(), body=lambda r: wide_before if r.version ==
        SHARED.before.version else wide_after,  # type: ignore[union-attr]
    )  # fmt: skip

    assert [p.node_id for p in answer.proxies] == ["n02", "n03"]
    assert (answer.proxies_changed, answer.next_offset, answer.proxies_unaffected) == (5, 4, 0)
    [diff] = patch.diffs.values()
    assert (len(diff.ops), diff.ops_total) == (MAX_OPS_SHOWN, MAX_OPS_SHOWN + 10)


# -- the endpoint --------------------------------------------------------------------------


class PlaneWithoutDryRun:
    """An AdminView that predates dry runs: nothing to show, no `preview`."""

    def is_ready(self) -> bool:
        return True

    def readiness_detail(self) -> dict[str, Any]:
        return {}

    def proxies(self) -> list[Any]:
        return []

    def snapshot(self, node_id: str) -> None:
        return None

    def source_errors(self) -> list[str]:
        return []

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


@dataclass
class FakePlane(PlaneWithoutDryRun):
    """An AdminView with a dry run: records what it was asked, answers `run`."""

    run: DryRun = field(default_factory=lambda: dry_run({"a": (SHARED,)}))
    asked: list[Mapping[str, bytes]] = field(default_factory=list)

    async def preview(self, files: Mapping[str, bytes]) -> DryRun:
        self.asked.append(files)
        if any(name.startswith("/") for name in files):
            raise ValueError(f"file name {next(iter(files))!r}: must be relative")
        return self.run


async def post(plane: Any, content: bytes, **params: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        return await client.post("/api/diff", content=content, params=params, headers=BEARER)


async def test_the_endpoint_previews_the_posted_files_and_answers_the_model() -> None:
    plane = FakePlane()

    response = await post(plane, json.dumps({"files": {"a.yaml": "kind: x\n"}}).encode())

    assert response.status_code == 200, response.text
    assert plane.asked == [{"a.yaml": b"kind: x\n"}]
    assert DiffResponse.model_validate(response.json()) == diff_response(plane.run, Page())


@pytest.mark.parametrize(
    ("content", "status", "detail", "previewed"),
    [
        (b"{", 400, 'expected {"files"', False),
        (b'{"files": {"a.yaml": 1}}', 400, "files.a.yaml", False),
        (b'{"files": {}, "more": 1}', 400, "more", False),
        (b'{"files": {"/abs.yaml": ""}}', 400, "must be relative", True),
        (b'{"files": {"a": "' + b"x" * MAX_BODY_BYTES + b'"}}', 413, "larger than 4,194,304",
         False),
    ],
)  # fmt: skip
async def test_a_bad_or_oversized_body_is_refused_with_a_message(
    content: bytes, status: int, detail: str, previewed: bool
) -> None:
    plane = FakePlane()

    response = await post(plane, content)

    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert bool(plane.asked) == previewed


async def test_an_oversized_body_is_refused_before_it_is_read() -> None:
    plane = FakePlane()

    async def endless() -> Any:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536
        raise AssertionError("read past the limit")

    transport = httpx.ASGITransport(app=create_app(plane, TOKEN))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        response = await client.post("/api/diff", content=endless(), headers=BEARER)

    assert response.status_code == 413
    assert plane.asked == []


async def test_a_control_plane_without_a_dry_run_answers_501() -> None:
    response = await post(PlaneWithoutDryRun(), b'{"files": {}}')

    assert response.status_code == 501
    assert response.json()["detail"] == "this control plane offers no dry run"


# -- the control plane's preview ----------------------------------------------------------

NODE = "client-0.default"
BACKEND_CLUSTER = "outbound|8080||backend.default.svc.cluster.local"


class KubernetesLikeSource:
    """Any source that is not the file source: proposals are applied, not written."""

    errors: list[Any] = []


def plane_serving(directory: Path) -> ControlPlane:
    """A control plane (nothing bound) synced on `directory`, with one proxy connected."""
    directory.mkdir()
    (directory / "backend.yaml").write_text(f"{BACKEND}---\n{SLICE}")
    plane = ControlPlane(Settings(source=f"file:{directory}"))
    assert isinstance(plane.source, FileSource)
    plane.pipeline.initial_sync(plane.source.load())
    plane.pipeline.builder.add_proxy(Proxy(NODE))
    return plane


def planned(run: DryRun) -> set[tuple[str, str, str]]:
    return {(c.type_url.rsplit(".", 1)[1], c.name, c.change) for c in run.preview.proxies[NODE]}


@pytest.mark.parametrize(
    ("kubernetes", "files", "objects", "expected"),
    [
        pytest.param(False, {"backend.yaml": b""}, (set(), {"Service default/backend",
                     "EndpointSlice default/backend-slice"}),
                     {("Cluster", BACKEND_CLUSTER, "removed"),
                      ("ClusterLoadAssignment", BACKEND_CLUSTER, "removed"),
                      ("RouteConfiguration", "outbound|default", "changed")},
                     id="file-mode-an-emptied-file-removes"),
        pytest.param(True, {"backend.yaml": b""}, (set(), set()), set(),
                     id="kubernetes-an-empty-file-applies-nothing"),
        pytest.param(True, {"b.yaml": BACKEND_9090.encode()}, ({"Service default/backend"}, set()),
                     {("Cluster", BACKEND_CLUSTER.replace("8080", "9090"), "added"),
                      ("Cluster", BACKEND_CLUSTER, "removed"),
                      ("ClusterLoadAssignment", BACKEND_CLUSTER.replace("8080", "9090"), "added"),
                      ("ClusterLoadAssignment", BACKEND_CLUSTER, "removed"),
                      ("RouteConfiguration", "outbound|default", "changed")},
                     id="kubernetes-an-applied-object-is-upserted"),
    ],
)  # fmt: skip
async def test_the_control_plane_previews_against_its_source_and_commits_nothing(
    tmp_path: Path,
    kubernetes: bool,
    files: dict[str, bytes],
    objects: tuple[set[str], set[str]],
    expected: set[tuple[str, str, str]],
) -> None:
    plane = plane_serving(tmp_path / "mesh")
    if kubernetes:
        plane.source = KubernetesLikeSource()  # type: ignore[assignment]
    served, generation = plane.cache.get_snapshot(NODE), plane.pipeline.builder.generation

    run = await plane.preview(files)

    assert keys(run.changes) == objects
    assert (planned(run) if run.preview.proxies else set()) == expected
    assert run.proxies == 1
    assert plane.cache.get_snapshot(NODE) is served
    assert plane.pipeline.builder.generation == generation
    assert (tmp_path / "mesh" / "backend.yaml").read_text() == f"{BACKEND}---\n{SLICE}"


# -- the CLI -------------------------------------------------------------------------------


def test_a_directory_is_read_recursively_by_relative_path_and_a_file_by_its_name(
    tmp_path: Path,
) -> None:
    (tmp_path / "mesh" / "shop").mkdir(parents=True)
    (tmp_path / "mesh" / ".git").mkdir()
    for name in ["a.yaml", "shop/b.yml", "shop/c.json", "notes.txt", ".hidden.yaml", ".git/d.yaml"]:
        (tmp_path / "mesh" / name).write_text(name)
    (tmp_path / "single.yaml").write_text("single")

    files = cli_diff.read_files([tmp_path / "mesh", tmp_path / "single.yaml"])

    assert files == {n: n for n in ["a.yaml", "shop/b.yml", "shop/c.json"]} | {
        "single.yaml": "single"
    }


@pytest.mark.parametrize(
    ("layout", "arguments", "message"),
    [
        ({}, ["missing.yaml"], "no such file or directory"),
        ({"d/x.txt": ""}, ["d"], "no *.yaml, *.yml or *.json files"),
        ({"a/x.yaml": "", "b/x.yaml": ""}, ["a", "b"], "would both be 'x.yaml'"),
    ],
)
def test_files_that_cannot_be_sent_are_an_error_before_anything_is_asked(
    tmp_path: Path, layout: dict[str, str], arguments: list[str], message: str
) -> None:
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    with pytest.raises(cli_diff.DiffError, match=message.replace("*", r"\*")):
        cli_diff.read_files([tmp_path / argument for argument in arguments])


def answered(run: DryRun, source_errors: tuple[Any, ...] = ()) -> dict[str, Any]:
    return diff_response(
        DryRun(run.changes, source_errors, run.preview, run.proxies), Page()
    ).model_dump(mode="json")


@pytest.mark.parametrize(
    ("run", "errors", "code"),
    [
        pytest.param(dry_run({}), (), 0, id="no-differences"),
        pytest.param(dry_run({"a": (SHARED,)}), (), 1, id="differences"),
        pytest.param(
            dry_run({}), (parse_file(Path("x.yaml"), BAD_PORT.encode()).errors[0],), 2, id="error"
        ),
    ],
)
def test_the_exit_code_is_kubectl_diffs(
    run: DryRun,
    errors: tuple[Any, ...],
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "x.yaml").write_text(BAD_PORT)
    posted: list[dict[str, Any]] = []

    def fake_post(url: str, body: bytes, timeout: float, *_: object) -> Any:
        posted.append(json.loads(body))
        return answered(run, errors)

    monkeypatch.setattr(cli_diff, "_post", fake_post)
    args = argparse.Namespace(
        filename=[tmp_path / "x.yaml"], admin="http://admin", output="table", timeout=1.0
    )

    assert cli_diff.run(args) == code
    out, err = capsys.readouterr()
    assert posted == [{"files": {"x.yaml": BAD_PORT}}]
    if code == 0:
        assert out == "no changes: no proxy would change (3 unaffected)\n"
    if code == 1:
        assert out.splitlines()[:2] == [
            "PROXY  TYPE  NAME     CHANGE",
            "a      CDS   backend  changed",
        ]
        assert '  ~ /connect_timeout: "1s" -> "5s"' in out
    if code == 2:
        assert err.startswith("error: x.yaml:7: Service default/backend: spec.ports[0].port: ")


def test_an_unreachable_admin_is_one_line_and_exit_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "x.yaml").write_text(CART)
    args = argparse.Namespace(
        filename=[tmp_path / "x.yaml"], admin="http://127.0.0.1:9", output="json", timeout=2.0
    )

    assert cli_diff.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("xds-server diff: cannot reach the admin API at http://127.0.0.1:9/")
    assert len(err.splitlines()) == 1


def test_every_page_is_fetched_and_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    run = dry_run({f"n{i}": (SHARED,) for i in range(3)})
    asked: list[str] = []

    def fake_post(url: str, body: bytes, timeout: float, *_: object) -> Any:
        asked.append(url)
        offset = int(url.split("offset=")[1].split("&")[0])
        return diff_response(run, Page(offset=offset, limit=2)).model_dump(mode="json")

    monkeypatch.setattr(cli_diff, "_post", fake_post)

    merged = cli_diff.post_diff("http://admin", {}, 1.0)

    assert [p.node_id for p in merged.proxies] == ["n0", "n1", "n2"]
    assert [url.split("?")[1] for url in asked] == ["offset=0&limit=1000", "offset=2&limit=1000"]
