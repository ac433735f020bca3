"""Incremental (Delta) ADS: per-resource versions, additions and removals.

The stream remembers the version of every resource the proxy holds (what it
sent, or what the proxy declared in `initial_resource_versions` when it
reconnected), so it sends a resource only when that version differs and
announces a removal only for a name the proxy holds: Envoy must never be told
to delete what it was never given.

`system_version_info` carries the snapshot version, for debugging only (the
spec gives it no meaning).  Subscription changes apply whatever the nonce (the
spec says so explicitly for Delta); a stale nonce only does not count as an
ACK or NACK.  A NACKed resource still counts as delivered, so the rejected
version is not sent again; a later version is.
"""

from __future__ import annotations

import logging

from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)

from xds_server.resources import Resource
from xds_server.server.limits import shown
from xds_server.server.state import TypeState
from xds_server.server.stream import AdsStream, Push, present, too_long

logger = logging.getLogger(__name__)


class DeltaStream(AdsStream[DeltaDiscoveryRequest]):
    kind = "delta"
    _request_type = "DeltaDiscoveryRequest"

    async def _on_request(self, request: DeltaDiscoveryRequest) -> int:
        names = (
            len(request.resource_names_subscribe)
            + len(request.resource_names_unsubscribe)
            + len(request.initial_resource_versions)
        )
        # Delta requests carry no version
        found = self._accept(request, None, names, request.resource_names_subscribe)
        if found is None:
            return names
        state, first = found
        change = state.update_delta(
            request.resource_names_subscribe, request.resource_names_unsubscribe
        )
        self._check_subscription(change)
        if first:
            longest = self.limits.max_name_length
            for name, version in request.initial_resource_versions.items():
                if len(name) > longest:
                    raise too_long("initial_resource_versions key", name, longest)
                if len(version) > longest:
                    raise too_long(f"initial_resource_versions[{shown(name)}]", version, longest)
                if state.wants(name):
                    state.sent[name] = version
        else:
            # The spec: newly requested resources are sent even if sent before.
            for name in change.added:
                state.sent.pop(name, None)
        if self.snapshot is None:
            return names  # the first snapshot brings every subscribed type up to date
        push = Push()
        if first or change.became_wildcard:
            push.everything.add(state.type_url)
        elif change.added:
            push.add(state.type_url, change.added)
        await self._push(push)
        return names

    def _catch_up(self, push: Push, state: TypeState) -> None:
        push.everything.add(state.type_url)

    async def _send_type(self, state: TypeState, push: Push) -> list[Resource]:
        assert self.snapshot is not None
        type_url = state.type_url
        resources = self.snapshot.get(type_url)
        names = push.candidates.get(type_url, set())
        if type_url in push.everything:
            # Reconcile: all covered names, plus all the proxy holds (for removals).
            names = set(resources) if state.wildcard else set(state.names)
            names.update(state.sent)
        forced = push.forced.get(type_url, set())
        sent = state.sent
        updated: list[Resource] = []
        for name in present(names, resources):
            resource = resources[name]
            if state.wants(name) and (name in forced or sent.get(name) != resource.version):
                updated.append(resource)
        removed = [
            name for name in present(names, sent) if name not in resources and state.wants(name)
        ]
        if not updated and not removed:
            return []
        removed.sort()
        for name in removed:
            del sent[name]
        for resource in updated:
            sent[resource.name] = resource.version
        version = self.snapshot.version
        response = DeltaDiscoveryResponse(
            system_version_info=version,
            type_url=type_url,
            nonce=self._next_nonce(),
            resources=[resource.delta_proto() for resource in updated],
            removed_resources=removed,
        )
        await self._send(state, response, version, (r.name for r in updated), removed)
        return updated
