"""State-of-the-world ADS: full sets for listeners and clusters, changes for the rest.

The xDS spec makes LDS and CDS responses carry every resource the proxy
subscribes to (a missing one is a deletion), while RDS, EDS and SDS responses
may carry just the resources that changed ("Grouping Resources into
Responses"); Envoy hands each EDS/RDS watch only the resources named in the
response.  So one endpoint change costs one ClusterLoadAssignment on the wire,
and only to the streams that subscribe to it.

Every response carries `version_info` = the snapshot's version of that type,
so a version names a whole set of contents.  That lets a reconnecting Envoy
that already holds the current listeners or clusters (its first request's
`version_info` equals ours) be spared the full set again; the same shortcut
would be wrong for EDS and RDS, where Envoy may hold only some of the names
that version covers.

Requests with a stale nonce still change the subscription (and newly named
resources are sent): Envoy repeats its full list of names on the ACK of the
response in flight, so the change would otherwise be seen as already made and
never answered.  Only ACK/NACK accounting ignores them.
"""

from __future__ import annotations

import logging

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from xds_server.cache import ResourceMap
from xds_server.resources import SHORT_NAMES, Resource
from xds_server.server.state import TypeState
from xds_server.server.stream import AdsStream, Push, present

logger = logging.getLogger(__name__)


class SotwStream(AdsStream[DiscoveryRequest]):
    kind = "sotw"
    _request_type = "DiscoveryRequest"

    async def _on_request(self, request: DiscoveryRequest) -> int:
        names = len(request.resource_names)
        found = self._accept(request, request.version_info, names, request.resource_names)
        if found is None:
            return names
        state, first = found
        change = state.update_sotw(request.resource_names)
        self._check_subscription(change)
        if first:
            # What the proxy says it holds (from an earlier stream), before we send anything.
            state.acked_version = request.version_info
            if state.wildcard and state.full_state:
                state.version_sent = request.version_info
        if self.snapshot is None:
            return change.names_read  # the first snapshot brings every type up to date
        push = Push()
        if first:
            self._catch_up(push, state)
        elif change.became_wildcard or (change and state.full_state):
            push.everything.add(state.type_url)
        elif change.added:
            push.add(state.type_url, change.added)
        await self._push(push)
        return change.names_read

    def _catch_up(self, push: Push, state: TypeState) -> None:
        assert self.snapshot is not None
        if (
            state.full_state
            and state.wildcard
            and state.version_sent == self.snapshot.type_version(state.type_url)
        ):
            logger.debug(
                "node %s already holds %s version %s",
                self.node_id,
                SHORT_NAMES[state.type_url],
                state.version_sent,
            )
            return
        push.everything.add(state.type_url)

    async def _send_type(self, state: TypeState, push: Push) -> list[Resource]:
        assert self.snapshot is not None
        type_url = state.type_url
        resources = self.snapshot.get(type_url)
        everything = type_url in push.everything
        candidates = push.candidates.get(type_url, set())
        if everything:
            changed = _subscribed(state, resources)
        else:
            changed = [
                resources[name] for name in present(candidates, resources) if state.wants(name)
            ]
        version = ""
        removed: list[str] = []
        if state.full_state:
            version = self.snapshot.type_version(type_url)
            if not everything and version == state.version_sent:
                return []  # changed and changed back before this stream caught up
            chosen = changed if everything else _subscribed(state, resources)
            if not everything:  # what the change took away (the response omits it)
                removed = sorted(
                    name for name in candidates if name not in resources and state.wants(name)
                )
        elif changed:
            chosen = changed
        else:
            return []  # nothing subscribed exists (yet): Envoy waits
        version = version or self.snapshot.type_version(type_url)
        response = DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=self._next_nonce()
        )
        for resource in chosen:
            resource.add_to(response.resources)
        await self._send(state, response, version, (r.name for r in changed), removed)
        return changed


def _subscribed(state: TypeState, resources: ResourceMap) -> list[Resource]:
    """Every resource the subscription covers that exists, by name."""
    if state.wildcard:
        return list(resources.values())
    return [resources[name] for name in sorted(present(state.names, resources))]
