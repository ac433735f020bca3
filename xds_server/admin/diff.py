"""`POST /api/diff`: what applying proposed manifests would change, proxy by proxy.

The dry run behind `xds-server diff -f`.  The body names files and their
text; the control plane (`DryRunView.preview`) turns them into the ChangeSet
its source would emit (`sources.proposal`) and has the builder translate it
on a copy of the state (`SnapshotBuilder.preview`), committing nothing: no
proxy, snapshot or cache entry changes.  This module owns the HTTP side and
the rendering: the body's bounds (a body over `MAX_BODY_BYTES` is a 413 that
says the limit), the response models shared with the CLI, and the JSON diff
of each changed resource.

A diff is a JSON Patch (RFC 6902) from the resource's JSON before to its JSON
after (`json_format` with proto field names, as `/config_dump` shows it),
each op also carrying the value it replaces or removes as `old` (a member RFC
6902 tells appliers to ignore).  Keys are walked in sorted order and lists
are matched with `difflib` on their elements, so one inserted virtual host is
one `add`, not a cascade of `replace`s, and the same inputs always give the
same ops.  Resources that are the same change for many proxies (a shared
cluster) are diffed once, in `diffs`, and referenced from each proxy's rows.

Bounded like every admin response: one page of proxies (`?offset=&limit=`),
at most `MAX_OPS_SHOWN` ops a resource (with their total), and at most
`MAX_LIMIT` errors and objects (with their totals).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError
from pydantic import model_serializer as _model_serializer

from xds_server.admin.config import resource_body
from xds_server.admin.models import ApiModel
from xds_server.admin.paging import MAX_LIMIT, Page, shown
from xds_server.model import ChangeSet, ObjectKey
from xds_server.pipeline.records import Preview, ResourceChange
from xds_server.resources import SHORT_NAMES, Resource
from xds_server.sources.file_state import SourceError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest proposal accepted (its JSON encoding); larger is a 413."""
MAX_FILES = 1000
MAX_OPS_SHOWN = 500
"""JSON Patch ops shown per resource; `ops_total` says how many there are."""

ChangeName = Literal["added", "changed", "removed"]


# -- what the view gives ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DryRun:
    """A proposal and what it would do: the source's view and the builder's."""

    changes: ChangeSet
    """What the source would emit for the proposed files."""
    source_errors: tuple[SourceError, ...]
    """What the source would report about them (file, line, object, field)."""
    preview: Preview
    proxies: int
    """How many proxies the control plane serves now."""


@runtime_checkable
class DryRunView(Protocol):
    """What a view offers for `/api/diff` (`ControlPlane` implements it)."""

    async def preview(self, files: Mapping[str, bytes]) -> DryRun:
        """Translate the proposed files on a copy of the state; ValueError for a bad name."""
        ...


# -- the models shared with the CLI --------------------------------------------------------


class ProposedFiles(BaseModel):
    """The request body: relative path -> the file's text."""

    model_config = ConfigDict(extra="forbid")
    files: dict[str, str]


class PatchOp(ApiModel):
    """One RFC 6902 operation; `value` for add and replace, `old` for replace and remove."""

    op: Literal["add", "remove", "replace"]
    path: str
    value: Any = None
    old: Any = None

    @_model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {key: value for key, value in dumped.items() if key in self.model_fields_set}


class ResourceDiff(ApiModel):
    type: str
    name: str
    change: ChangeName
    before_version: str | None
    after_version: str | None
    ops: list[PatchOp]
    ops_total: int


class ResourceChangeRow(ApiModel):
    type: str
    type_url: str
    name: str
    change: ChangeName
    before_version: str | None
    after_version: str | None
    diff: str | None
    """The key of this change's JSON Patch in `diffs` (None for a removal)."""


class ProxyDiff(ApiModel):
    node_id: str
    changes: list[ResourceChangeRow]


class ManifestProblem(ApiModel):
    file: str
    line: int | None
    object: str | None
    field: str | None
    message: str
    severity: Literal["error", "warning"]
    text: str
    """As the source logs it: `file:line: object: field: message`."""


class ObjectProblem(ApiModel):
    object: str
    error: str


class ProposedObject(ApiModel):
    kind: str
    namespace: str
    name: str
    change: Literal["upserted", "deleted"]


class DiffResponse(ApiModel):
    proxies: list[ProxyDiff]
    """One page of the proxies that would change, by node id."""
    proxies_changed: int
    proxies_unaffected: int
    diffs: dict[str, ResourceDiff]
    """Per distinct resource change on this page: its JSON Patch."""
    objects: list[ProposedObject]
    objects_total: int
    source_errors: list[ManifestProblem]
    source_errors_total: int
    translation_errors: list[ObjectProblem]
    offset: int
    limit: int
    next_offset: int | None

    @property
    def has_errors(self) -> bool:
        return bool(self.translation_errors) or any(
            problem.severity == "error" for problem in self.source_errors
        )


# -- JSON Patch ---------------------------------------------------------------------------


def json_patch(before: Any, after: Any) -> list[PatchOp]:
    """The RFC 6902 ops that turn `before` into `after` (JSON values), deterministically."""
    ops: list[PatchOp] = []
    _diff(before, after, "", ops)
    return ops


def _pointer(path: str, step: str | int) -> str:
    return f"{path}/{str(step).replace('~', '~0').replace('/', '~1')}"


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _diff(before: Any, after: Any, path: str, ops: list[PatchOp]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(before.keys() | after.keys()):
            at = _pointer(path, key)
            if key not in after:
                ops.append(PatchOp(op="remove", path=at, old=before[key]))
            elif key not in before:
                ops.append(PatchOp(op="add", path=at, value=after[key]))
            else:
                _diff(before[key], after[key], at, ops)
    elif isinstance(before, list) and isinstance(after, list):
        _diff_lists(before, after, path, ops)
    elif not _same(before, after):
        ops.append(PatchOp(op="replace", path=path, value=after, old=before))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _diff_lists(before: list[Any], after: list[Any], path: str, ops: list[PatchOp]) -> None:
    """Element-matched list ops, in ascending order: when an opcode is reached, the list
    holds `after[:j1] + before[i1:]`, so its first element `before[i1]` sits at `j1`."""
    matcher = difflib.SequenceMatcher(
        None, [_canonical(v) for v in before], [_canonical(v) for v in after], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag == "replace" and i2 - i1 == j2 - j1:
            for k in range(i2 - i1):
                _diff(before[i1 + k], after[j1 + k], _pointer(path, j1 + k), ops)
            continue
        for i in range(i1, i2):
            ops.append(PatchOp(op="remove", path=_pointer(path, j1), old=before[i]))
        for k, j in enumerate(range(j1, j2)):
            ops.append(PatchOp(op="add", path=_pointer(path, j1 + k), value=after[j]))


# -- the response -------------------------------------------------------------------------

Body = Callable[[Resource], dict[str, Any]]


def diff_key(change: ResourceChange) -> str:
    """Names one resource change, the same for every proxy that would get it."""
    before = change.before.version if change.before else ""
    after = change.after.version if change.after else ""
    return f"{SHORT_NAMES.get(change.type_url, change.type_url)}:{before}..{after}"


def resource_diff(change: ResourceChange, body: Body = resource_body) -> ResourceDiff:
    """The JSON Patch of one change (an added resource: from `{}`)."""
    before = body(change.before) if change.before is not None else {}
    after = body(change.after) if change.after is not None else {}
    ops = json_patch(before, after)
    return ResourceDiff(
        type=SHORT_NAMES.get(change.type_url, change.type_url),
        name=shown(change.name),
        change=change.change,
        before_version=change.before.version if change.before else None,
        after_version=change.after.version if change.after else None,
        ops=ops[:MAX_OPS_SHOWN],
        ops_total=len(ops),
    )


def _row(change: ResourceChange) -> ResourceChangeRow:
    return ResourceChangeRow(
        type=SHORT_NAMES.get(change.type_url, change.type_url),
        type_url=change.type_url,
        name=shown(change.name),
        change=change.change,
        before_version=change.before.version if change.before else None,
        after_version=change.after.version if change.after else None,
        diff=None if change.change == "removed" else diff_key(change),
    )


def _problem(error: SourceError) -> ManifestProblem:
    return ManifestProblem(
        file=shown(str(error.path)),
        line=error.line,
        object=error.object_ref,
        field=error.field,
        message=error.message,
        severity=error.severity,
        text=str(error),
    )


def _objects(changes: ChangeSet) -> list[ProposedObject]:
    def proposed(key: ObjectKey, change: Literal["upserted", "deleted"]) -> ProposedObject:
        return ProposedObject(
            kind=key.kind.value, namespace=key.namespace, name=key.name, change=change
        )

    objects = [proposed(key, "upserted") for key in changes.upserts]
    objects.extend(proposed(key, "deleted") for key in changes.deletes)
    return sorted(objects, key=lambda o: (o.kind, o.namespace, o.name, o.change))


def diff_response(run: DryRun, page: Page, body: Body = resource_body) -> DiffResponse:
    """The response for one page of the proxies `run` would change."""
    changed = sorted(node_id for node_id, changes in run.preview.proxies.items() if changes)
    proxies: list[ProxyDiff] = []
    diffs: dict[str, ResourceDiff] = {}
    for node_id in page.of(changed):
        ordered = sorted(run.preview.proxies[node_id], key=_order)
        proxies.append(ProxyDiff(node_id=shown(node_id), changes=[_row(c) for c in ordered]))
        for change in ordered:
            key = diff_key(change)
            if change.change != "removed" and key not in diffs:
                diffs[key] = resource_diff(change, body)
    objects = _objects(run.changes)
    return DiffResponse(
        proxies=proxies,
        proxies_changed=len(changed),
        proxies_unaffected=max(0, run.proxies - len(changed)),
        diffs=diffs,
        objects=objects[:MAX_LIMIT],
        objects_total=len(objects),
        source_errors=[_problem(error) for error in run.source_errors[:MAX_LIMIT]],
        source_errors_total=len(run.source_errors),
        translation_errors=[
            ObjectProblem(object=shown(what), error=shown(error))
            for what, error in run.preview.errors[:MAX_LIMIT]
        ],
        offset=page.offset,
        limit=page.limit,
        next_offset=page.next_offset(len(changed)),
    )


_TYPE_ORDER = {type_url: i for i, type_url in enumerate(SHORT_NAMES)}


def _order(change: ResourceChange) -> tuple[int, str, str]:
    return _TYPE_ORDER.get(change.type_url, len(_TYPE_ORDER)), change.name, change.change


# -- the request --------------------------------------------------------------------------


async def read_proposal(request: Request) -> dict[str, bytes]:
    """The proposed files of a `/api/diff` body; 413 over `MAX_BODY_BYTES`, 400 if malformed."""
    too_large = HTTPException(
        413,
        f"the proposal is larger than {MAX_BODY_BYTES:,} bytes ({MAX_BODY_BYTES // 2**20} MiB); "
        "diff fewer files at a time",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > MAX_BODY_BYTES:
            raise too_large
    try:
        proposal = ProposedFiles.model_validate_json(bytes(data))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(step) for step in problem['loc']) or 'body'}: {problem['msg']}"
            for problem in error.errors()[:5]
        )
        raise HTTPException(
            400, shown(f'expected {{"files": {{"path.yaml": "text", ...}}}}: {problems}')
        ) from None
    if len(proposal.files) > MAX_FILES:
        raise HTTPException(413, f"{len(proposal.files):,} files: at most {MAX_FILES:,} at a time")
    return {name: text.encode("utf-8", "surrogatepass") for name, text in proposal.files.items()}


async def dry_run(view: DryRunView, request: Request) -> DryRun:
    """Read the body and run the preview (400 for a file name that cannot be one)."""
    files = await read_proposal(request)
    try:
        return await view.preview(files)
    except ValueError as error:
        raise HTTPException(400, shown(str(error))) from None


def render(run: DryRun, page: Page, body: Body = resource_body) -> bytes:
    """The response body, compact JSON (runs in a worker thread)."""
    return diff_response(run, page, body).model_dump_json().encode()
