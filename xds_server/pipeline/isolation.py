"""Finding the one change that makes translation raise, so only it is dropped.

Sources validate what they send, but translation is code and values can
still surprise it (a lone surrogate in a zone, a bug).  When translating a
batch raises, the pipeline must not give up the batch, nor the process: it
finds which upserted object is to blame, leaves that one out (the mesh keeps
its last good version, or goes without it if it never had one) and applies
everything else.

The search is a bisection over the batch's upserts in a fixed order:
`first_culprit` keeps a prefix that translates and a longer one that raises,
and halves the gap until one object separates them.  That object is the
culprit in a precise sense (adding it to what translated made it raise), so
the answer is sound even when an object only fails in combination with
another.  It costs O(log n) translations of the failing unit, and only when
something failed; the common path pays nothing.

A Service's clusters and load assignments depend on that Service and its
EndpointSlices alone, so `service_culprit` searches a mesh of just those
(cheap however large the batch): the Service first, then its slices, so a
slice that only fails once its Service arrives is blamed, not the Service.
Route tables and a proxy's resources depend on the whole mesh, so
`mesh_culprit` bisects the batch's upserts (Services, then slices, then
Pods) on the real one.  If translation raises even without any candidate,
nothing is to blame and they return None: the caller then keeps the unit's
last good resources instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from xds_server.model import ChangeSet, Kind, MeshSnapshot, ObjectKey, Proxy
from xds_server.model.changes import MeshObject
from xds_server.model.mesh import NamespacedName
from xds_server.pipeline.errors import bounded, describe
from xds_server.pipeline.generators import translate_service
from xds_server.pipeline.provenance import Provenance
from xds_server.pipeline.workloads import workload_of
from xds_server.resources import Resource

logger = logging.getLogger(__name__)

T = TypeVar("T")
Culprit = tuple[ObjectKey, BaseException]
"""The upsert to blame, and what translating it raised."""

_KIND_ORDER = {
    Kind.SERVICE: 0,
    Kind.ENDPOINT_SLICE: 1,
    Kind.WORKLOAD: 2,
    Kind.BACKEND_POLICY: 3,
    Kind.HTTP_ROUTE: 4,
    Kind.GRPC_ROUTE: 5,
}
"""Candidates are tried Services first: a slice, a policy or a route is blamed before
the Service it needs."""

MAX_SHOWN_KEY_CHARS = 300
"""An object's kind, namespace and name as an error quotes them."""


def first_culprit(
    candidates: Sequence[T], attempt: Callable[[int], BaseException | None]
) -> tuple[T, BaseException] | None:
    """The candidate whose addition makes `attempt` raise, by bisection.

    `attempt(n)` runs the translation with the first `n` candidates applied
    and returns what it raised (None if it succeeded); the caller has seen it
    raise with all of them.  None if it raises with none of them as well.
    """
    if not candidates or attempt(0) is not None:
        return None
    good, bad = 0, len(candidates)
    error = attempt(bad)
    if error is None:  # it failed for the caller, not now: nothing here to blame
        return None
    while bad - good > 1:
        middle = (good + bad) // 2
        found = attempt(middle)
        if found is None:
            good = middle
        else:
            bad, error = middle, found
    return candidates[bad - 1], error


def changes_of(deletes: Iterable[ObjectKey], upserts: Iterable[MeshObject]) -> ChangeSet:
    changes = ChangeSet()
    for key in deletes:
        changes.delete(key)
    for obj in upserts:
        changes.upsert(obj)
    return changes


def without(
    changes: ChangeSet, dropped: Iterable[ObjectKey], taken_out: Iterable[ObjectKey] = ()
) -> ChangeSet:
    """`changes` less the upserts of `dropped` (the mesh keeps their current version),
    and deleting `taken_out` (objects whose current version is what raises)."""
    removed = {*dropped, *taken_out}
    return changes_of(
        {*changes.deletes, *taken_out},
        (obj for key, obj in changes.upserts.items() if key not in removed),
    )


def holds(mesh: MeshSnapshot, key: ObjectKey) -> bool:
    """Whether `mesh` has a version of the object `key`."""
    return (key.namespace, key.name) in mesh.table(key.kind)


def _raised(run: Callable[[], object]) -> BaseException | None:
    try:
        run()
    except Exception as error:  # what the search is looking for
        return error
    return None


# -- one Service's mesh-wide resources ------------------------------------------------


def service_resources(
    mesh: MeshSnapshot, key: NamespacedName
) -> tuple[list[Resource], list[Resource]]:
    """A Service's outbound clusters and load assignments on `mesh` (none if it is gone)."""
    service = mesh.services.get(key)
    if service is None:
        return [], []
    return translate_service(
        service, mesh.slices_of(service), Provenance(mesh), mesh.backend_policy_for(service)
    )


def service_culprit(mesh: MeshSnapshot, key: NamespacedName) -> Culprit | None:
    """The object that makes Service `key`'s resources raise in `mesh`, searched on it alone.

    The Service comes first, then the BackendPolicy governing it, then its
    slices by name: a Service is blamed only if it raises alone, the policy
    only if adding it to the Service does, and a slice only if adding it to
    those (and the slices before it) does, whichever of them changed.
    """
    service = mesh.services.get(key)
    if service is None:
        return None
    attached = mesh.backend_policy_for(service)
    policy: list[MeshObject] = [attached.policy] if attached is not None else []
    candidates: list[MeshObject] = [service, *policy, *mesh.slices_of(service)]

    def attempt(count: int) -> BaseException | None:
        alone, _ = MeshSnapshot().apply(changes_of((), candidates[:count]))
        return _raised(lambda: service_resources(alone, key))

    found = first_culprit(candidates, attempt)
    return None if found is None else (ObjectKey.of(found[0]), found[1])


# -- whatever depends on the whole mesh: route tables, one proxy ---------------------


def mesh_culprit(
    base: MeshSnapshot,
    changes: ChangeSet,
    run: Callable[[MeshSnapshot], object],
    kinds: frozenset[Kind] | None = None,
    meshes: dict[int, MeshSnapshot] | None = None,
) -> Culprit | None:
    """The upsert (of `kinds`, else any) that makes `run(mesh)` raise.

    The batch's deletes and its upserts of other kinds are applied in every
    attempt: only the candidates come and go.  `meshes` keeps the mesh of each
    attempt for the next search over the same batch and kinds (every proxy
    that fails in one batch starts with the same one).
    """
    candidates = sorted(
        (k for k in changes.upserts if kinds is None or k.kind in kinds),
        key=lambda k: _KIND_ORDER[k.kind],
    )
    chosen = set(candidates)
    given = [obj for k, obj in changes.upserts.items() if k not in chosen]

    known = {} if meshes is None else meshes

    def attempt(count: int) -> BaseException | None:
        mesh = known.get(count)
        if mesh is None:
            upserts = [*given, *(changes.upserts[k] for k in candidates[:count])]
            mesh = known[count] = base.apply(changes_of(changes.deletes, upserts))[0]
        return _raised(lambda: run(mesh))

    return first_culprit(candidates, attempt)


def own_workload_culprit(
    mesh: MeshSnapshot, declared: Proxy, run: Callable[[MeshSnapshot], object]
) -> Culprit | None:
    """The Pod a proxy takes its identity from, if `run` raises with it and not without.

    A batch can expose a Pod it did not change: deleting the Pod a proxy
    matched leaves it with another Pod at its address, already in the mesh,
    that no translation had read yet.  No upsert is to blame then; that Pod
    is, and it is taken out of the mesh.
    """
    workload = workload_of(declared, mesh)
    if workload is None:
        return None
    key = ObjectKey.of(workload)
    error = _raised(lambda: run(mesh))
    if error is None:
        return None
    without, _ = mesh.apply(changes_of((key,), ()))
    if _raised(lambda: run(without)) is not None:
        return None
    return key, error


# -- what the errors say -----------------------------------------------------------------


def shown_key(key: object) -> str:
    return bounded(str(key), MAX_SHOWN_KEY_CHARS)


def dropped_message(key: ObjectKey, error: BaseException, *, kept: bool) -> str:
    """Why `key` is not applied; `kept`: the mesh keeps an earlier version of it."""
    outcome = (
        "its last good version stays in force" if kept else "it stays out of the mesh until fixed"
    )
    return f"{shown_key(key)}: not applied: translating it raised {describe(error)}; {outcome}"
