"""`/api/policies` and the index page's "Routes and policies": each one's status conditions.

In file mode nobody writes a route's or a policy's `status`, so the admin is
where its conditions are read: every HTTPRoute, GRPCRoute and BackendPolicy
the mesh holds or the source and pipeline rejected, with `Accepted` and
`ResolvedRefs` (reason and message, per Service parent for routes), and where
it was read (file and document, or uid and resourceVersion).  The values come
from `model.status` through the optional `PolicyStatusView` (a view without it
lists nothing); this module owns the response models (pydantic, shared with
`xds-server status`), the JSON and the HTML section.

Bounded like every admin response: one page of objects (`?offset=&limit=`,
`?kind=` to keep one kind), messages cut by `shown`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import Field

from xds_server.admin.models import ApiModel, SourceObject
from xds_server.admin.paging import Page, shown
from xds_server.model.changes import Kind
from xds_server.model.routes import ParentRef
from xds_server.model.status import (
    ACCEPTED,
    CONTROLLER_NAME,
    RESOLVED_REFS,
    Condition,
    ObjectStatus,
)
from xds_server.provenance import SourceRef

logger = logging.getLogger(__name__)

ON_PAGE = 50
"""Rows the index page shows; the rest are in `/api/policies`."""


@runtime_checkable
class PolicyStatusView(Protocol):
    """What a view offers for `/api/policies` (`ControlPlane` implements it)."""

    def policy_statuses(self) -> Sequence[ObjectStatus]:
        """Every route and policy with its conditions, by kind, namespace and name."""
        ...


def statuses_of(view: object) -> Sequence[ObjectStatus]:
    return view.policy_statuses() if isinstance(view, PolicyStatusView) else ()


POLICY_KIND_NAMES: dict[str, Kind] = {
    name: kind
    for kind, plural in (
        (Kind.HTTP_ROUTE, "httproutes"),
        (Kind.GRPC_ROUTE, "grpcroutes"),
        (Kind.BACKEND_POLICY, "backendpolicies"),
        (Kind.AUTHORIZATION_POLICY, "authorizationpolicies"),
        (Kind.TELEMETRY, "telemetries"),
    )
    for name in (kind.value.lower(), plural)
}


def parse_kind(text: str | None) -> Kind | None:
    """`?kind=`: a route or policy kind (any case, or plural); ValueError."""
    if text is None:
        return None
    kind = POLICY_KIND_NAMES.get(text.strip().lower())
    if kind is None:
        names = ", ".join(known.value for known in dict.fromkeys(POLICY_KIND_NAMES.values()))
        raise ValueError(f"unknown kind {text!r}: expected one of {names}")
    return kind


# -- the models -----------------------------------------------------------------------------


class ConditionModel(ApiModel):
    """A condition as `metav1.Condition` words it (no transition time: file mode keeps none)."""

    type: str
    status: str
    reason: str
    message: str
    observed_generation: int = Field(alias="observedGeneration")


class ParentRefModel(ApiModel):
    """A route's parentRef, as the route wrote it."""

    group: str
    kind: str
    name: str
    namespace: str | None = None
    port: int | None = None
    section_name: str | None = Field(default=None, alias="sectionName")


class ParentStatusModel(ApiModel):
    """`status.parents[]` of a route: its conditions for one Service parent."""

    parent_ref: ParentRefModel = Field(alias="parentRef")
    controller_name: str = Field(alias="controllerName")
    conditions: list[ConditionModel]


class PolicyStatusModel(ApiModel):
    """One route or policy: where it was read, and what the control plane says of it."""

    key: str
    """`Kind/namespace/name`."""
    object: SourceObject
    generation: int
    accepted: bool
    """Every Accepted condition it carries holds."""
    rejected: bool
    """The source or translation rejected its latest version (`Accepted` says why)."""
    in_mesh: bool
    """A version of it is in force (False: rejected, and never accepted)."""
    conditions: list[ConditionModel]
    """A BackendPolicy's conditions; a route's only when it was rejected as a whole."""
    parents: list[ParentStatusModel]
    """A route's conditions per Service parent."""

    def condition(self, kind: str, parent: int | None = None) -> ConditionModel | None:
        found = self.parents[parent].conditions if parent is not None else self.conditions
        return next((c for c in found if c.type == kind), None)


class PolicyList(ApiModel):
    policies: list[PolicyStatusModel]
    offset: int
    limit: int
    total: int
    next_offset: int | None


# -- JSON -------------------------------------------------------------------------------------


def condition_model(condition: Condition) -> ConditionModel:
    return ConditionModel(
        type=condition.type,
        status=condition.status,
        reason=condition.reason,
        message=shown(condition.message),
        observedGeneration=condition.observed_generation,
    )


def parent_ref_model(ref: ParentRef) -> ParentRefModel:
    return ParentRefModel(
        group=ref.group,
        kind=ref.kind,
        name=shown(ref.name),
        namespace=ref.namespace,
        port=ref.port,
        sectionName=ref.section_name,
    )


def status_model(status: ObjectStatus) -> PolicyStatusModel:
    key = status.key
    source = SourceRef(key.kind.value, key.namespace, key.name, status.origin)
    return PolicyStatusModel(
        key=shown(source.key),
        object=SourceObject.model_validate(source.as_json()),
        generation=status.generation,
        accepted=status.accepted,
        rejected=status.rejected,
        in_mesh=status.in_mesh,
        conditions=[condition_model(c) for c in status.conditions],
        parents=[
            ParentStatusModel(
                parentRef=parent_ref_model(parent.parent_ref),
                controllerName=CONTROLLER_NAME,
                conditions=[condition_model(c) for c in parent.conditions],
            )
            for parent in status.parents
        ],
    )


def render(statuses: Sequence[ObjectStatus], page: Page) -> bytes:
    """The JSON body of one page (run in a worker thread)."""
    body = PolicyList(
        policies=[status_model(status) for status in page.of(statuses)],
        offset=page.offset,
        limit=page.limit,
        total=len(statuses),
        next_offset=page.next_offset(len(statuses)),
    ).model_dump(mode="json", by_alias=True)
    return json.dumps(body, separators=(",", ":")).encode()


# -- the index page's section -----------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def parent_text(ref: ParentRef) -> str:
    """`Service shop/web:8080` (namespace omitted when it is the route's own)."""
    name = f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name
    where = f":{ref.port}" if ref.port is not None else ""
    section = f" ({ref.section_name})" if ref.section_name else ""
    return f"{ref.kind} {name}{where}{section}"


def _cell(condition: Condition | None) -> str:
    if condition is None:
        return '<td class="muted">-</td>'
    css = "sync-synced" if condition.holds else "sync-nacked"
    return (
        f'<td><span class="sync {css}" title="{_esc(shown(condition.message))}">'
        f"{_esc(condition.status)}</span> {_esc(condition.reason)}</td>"
    )


def _rows(status: ObjectStatus) -> list[str]:
    key = status.key
    source = SourceRef(key.kind.value, key.namespace, key.name, status.origin)
    where = SourceObject.model_validate(source.as_json()).where
    name = f"<code>{_esc(shown(source.key))}</code>" + (
        f'<div class="muted small">{_esc(shown(where))}</div>' if where else ""
    )
    entries: list[tuple[str, Condition | None, Condition | None]] = [
        (parent_text(p.parent_ref), p.condition(ACCEPTED), p.condition(RESOLVED_REFS))
        for p in status.parents
    ]
    if status.conditions or not entries:
        entries.insert(0, ("-", status.condition(ACCEPTED), status.condition(RESOLVED_REFS)))
    rows = []
    for parent, accepted, resolved in entries:
        problem = next((c for c in (accepted, resolved) if c is not None and not c.holds), None)
        message = problem.message if problem is not None else (accepted.message if accepted else "")
        rows.append(
            f"<tr><td>{name}</td><td>{_esc(parent)}</td>{_cell(accepted)}{_cell(resolved)}"
            f'<td class="small">{_esc(shown(message))}</td></tr>'
        )
    return rows


def policies_html(statuses: Sequence[ObjectStatus]) -> str:
    """The index page's "Routes and policies": the first `ON_PAGE` objects, problems first."""
    if not statuses:
        return ""
    ordered = sorted(statuses, key=lambda s: s.accepted)  # stable: not accepted first
    rows = "".join(row for status in ordered[:ON_PAGE] for row in _rows(status))
    more = len(statuses) - ON_PAGE
    note = f"{more} more in " if more > 0 else ""
    refused = sum(1 for status in statuses if not status.accepted)
    return (
        f"<h2>Routes and policies ({len(statuses)}, {refused} not accepted)</h2>"
        "<table><thead><tr><th>Object</th><th>Parent</th><th>Accepted</th>"
        "<th>ResolvedRefs</th><th>Message</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f'<p class="muted small">{note}<a href="api/policies">api/policies</a>; '
        "conditions as the Gateway API words them.</p>"
    )
