"""Typed models of the admin API's JSON, shared by the API and the `xds-server` CLI.

The admin renders its JSON from frozen values (see `views`, `config`,
`explain`); the CLI reads that JSON back over HTTP.  These pydantic models are
the contract between the two: the explain endpoint is produced through them,
and tests check that what `/api/proxies` and `/api/proxies/{node}/config`
render round-trips through them unchanged, so neither side can drift without
a test failing.

The module imports nothing of the project (only pydantic), so it states the
wire format and nothing else.  Unknown fields are ignored: a newer control plane may say more than
an older CLI knows.  Timestamps are ISO 8601 strings in JSON
(`datetime.isoformat()`, as the views write them) and `datetime` in Python.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
)

logger = logging.getLogger(__name__)

Timestamp = Annotated[datetime, PlainSerializer(lambda moment: moment.isoformat(), return_type=str)]
"""A moment: `datetime` in Python, `isoformat()` in JSON (as the views render it)."""

SyncState = Literal["SYNCED", "STALE", "NACKED", "NOT SENT"]
"""`views.SyncStatus` values, in `istioctl proxy-status` vocabulary."""
SYNC_STATES: tuple[str, ...] = get_args(SyncState)


class ApiModel(BaseModel):
    """Frozen, and tolerant of fields a newer control plane adds."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# -- source objects ----------------------------------------------------------------------


class SourceObject(ApiModel):
    """A source object behind a resource (`provenance.SourceRef.as_json`): its
    kind/namespace/name, and where it was read when known (a file's document in
    file mode, uid and resourceVersion in Kubernetes mode)."""

    kind: str
    namespace: str
    name: str
    file: str | None = None
    document: int | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")

    @property
    def key(self) -> str:
        """`Kind/namespace/name`, as Envoy's metadata names it."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    @property
    def where(self) -> str:
        """Where it was read: `FILE#DOCUMENT`, `uid=... resourceVersion=...`, or ''."""
        if self.file is not None:
            return self.file if self.document is None else f"{self.file}#{self.document}"
        parts = [
            f"{label}={value}"
            for label, value in (("uid", self.uid), ("resourceVersion", self.resource_version))
            if value is not None
        ]
        return " ".join(parts)

    @model_serializer(mode="wrap")
    def _without_unknowns(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the origin fields that are known, as `SourceRef.as_json` writes them."""
        shown: dict[str, Any] = handler(self)
        return {key: value for key, value in shown.items() if value is not None}


class BlamedResource(ApiModel):
    """A resource a NACK blames, and the source objects it was made from."""

    resource: str
    sources: list[SourceObject] | None
    """None when the proxy's current snapshot no longer holds the resource."""


# -- /api/proxies ---------------------------------------------------------------------


class NackInfo(ApiModel):
    """A response the proxy rejected (`views.nack_json`)."""

    node_id: str
    type: str
    type_url: str
    rejected_version: str
    kept_version: str
    nonce: str
    message: str
    at: Timestamp
    resources: list[str]
    resources_total: int
    blamed: list[BlamedResource] = []
    """The blamed resources (as many as are shown), each with its source objects."""
    sources: list[SourceObject] = []
    """Every source object behind the blamed resources, once each: the manifests to fix."""


class TypeSync(ApiModel):
    """One type on one stream: subscription, what was sent, what came back."""

    type: str
    type_url: str
    status: SyncState
    wildcard: bool
    names: list[str]
    names_total: int
    version_sent: str
    nonce: str
    acked_version: str
    last_nack: NackInfo | None
    responses: int
    bytes_sent: int
    acks: int
    nacks: int
    acked_at: Timestamp | None = None
    """When the proxy last ACKed this type on this stream (None: never, or an older
    control plane that does not say)."""


class ProxyStatus(ApiModel):
    """One row of `/api/proxies`: a stream, the workload behind it, per-type status."""

    node_id: str
    stream_id: int
    kind: str
    peer: str
    connected_at: Timestamp
    snapshot_version: str | None
    requests: int
    workload: str | None
    namespace: str | None
    service_account: str | None
    ip: str | None
    labels: dict[str, str]
    sync: dict[str, SyncState]
    """Short type name (CDS...) to status, for every type the control plane serves."""
    types: list[TypeSync]
    """The types the stream has state for (subscribed, or sent)."""
    snapshot_error: str | None
    metadata_error: str | None

    def type_sync(self, short_name: str) -> TypeSync | None:
        return next((t for t in self.types if t.type == short_name), None)


class ProxyDetail(ProxyStatus):
    """`/api/proxies/{node_id}`: the node's newest stream, and how many it has open."""

    streams_for_node: int


# -- /api/proxies/{node_id}/config ------------------------------------------------------


class ServedResource(ApiModel):
    name: str
    version: str
    resource: dict[str, Any]
    """The resource as JSON (proto field names, as in Envoy's `/config_dump`)."""


class ServedType(ApiModel):
    type: str
    type_url: str
    version: str
    total: int
    """Resources of the type served in all (this page holds `resources`)."""
    resources: list[ServedResource]


class ProxyConfig(ApiModel):
    """One page of the resources served to a proxy, per type."""

    node_id: str
    snapshot_version: str | None
    types: list[ServedType]
    offset: int
    limit: int
    total: dict[str, int]
    next_offset: int | None


# -- /api/proxies/{node_id}/explain -----------------------------------------------------


class Generator(ApiModel):
    """What made a resource built for a whole namespace or proxy, not from given objects."""

    generator: str
    namespace: str | None = None


class VirtualHostExplain(ApiModel):
    """A virtual host of a route configuration and the objects it was made from."""

    name: str
    domains: list[str]
    sources: list[SourceObject]


class ResourceExplain(ApiModel):
    """One resource a proxy is served, and the source objects that made it."""

    type: str
    type_url: str
    name: str
    version: str
    sources: list[SourceObject]
    sources_total: int
    generator: Generator | None
    """Set when Envoy's metadata names a generator rather than objects."""
    virtual_hosts: list[VirtualHostExplain]
    """Route configurations: their virtual hosts, each naming its Service."""
    virtual_hosts_total: int


class ExplainResult(ApiModel):
    """`/api/proxies/{node_id}/explain`: one page of a proxy's resources and their sources."""

    node_id: str
    snapshot_version: str | None
    resources: list[ResourceExplain]
    offset: int
    limit: int
    total: int
    next_offset: int | None
