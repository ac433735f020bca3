"""What an authenticated proxy may claim and ask for (the mesh's `NodeAuthorizer`).

A proxy's identity is the SPIFFE ID of its Proxy's namespace and service
account after the Pod lookup (`pipeline.workloads.with_workload`: the Pod
wins over what the node metadata says), so a node may only be claimed by the
identity its workload runs as: a stream proving A and naming B's node is
refused, and so never receives B's config or certificate.  Every proxy's
Secrets carry the same names (`translate.secrets.SECRET_NAMES`), so asking
for any other Secret name is asking for someone else's and is refused too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.core.v3.base_pb2 import Node

from xds_server.ca import spiffe_id
from xds_server.model import MeshSnapshot
from xds_server.node_metadata import NodeMetadataError, proxy_from_node
from xds_server.pipeline.workloads import with_workload
from xds_server.resources import SECRET
from xds_server.server.auth import PeerIdentity
from xds_server.translate.secrets import SECRET_NAMES


class MeshNodeGuard:
    """Checks a node against the identity its workload runs as in the current mesh."""

    def __init__(self, trust_domain: str, mesh: Callable[[], MeshSnapshot]) -> None:
        self.trust_domain = trust_domain
        self._mesh = mesh

    def identity_of(self, node: Node) -> str:
        """The SPIFFE ID the proxy of `node` runs as (ValueError for bad metadata)."""
        proxy = with_workload(proxy_from_node(node), self._mesh())
        return spiffe_id(self.trust_domain, proxy.namespace, proxy.service_account)

    def authorize_node(self, identity: PeerIdentity, node: Node) -> str | None:
        try:
            expected = self.identity_of(node)
        except (NodeMetadataError, ValueError) as error:
            return f"node {node.id}: {error}"
        if identity.pod is not None and _pod_of(node) != identity.pod:
            return f"{identity.principal} is bound to Pod {identity.pod}, not node {node.id}"
        if identity.principal != expected:
            return (
                f"{identity.principal} may not claim node {node.id}, "
                f"whose workload runs as {expected}"
            )
        return None

    def authorize_names(
        self, identity: PeerIdentity, node: Node, type_url: str, names: Sequence[str]
    ) -> str | None:
        if type_url != SECRET:
            return None
        foreign = sorted(set(names) - SECRET_NAMES)
        if foreign:
            return (
                f"{identity.principal} may only ask for the Secrets "
                f"{sorted(SECRET_NAMES)}, not {foreign}"
            )
        return None


def _pod_of(node: Node) -> str:
    """`namespace/name` of the Pod a node id (`POD.NAMESPACE`) names."""
    name, _, namespace = node.id.rpartition(".")
    return f"{namespace}/{name}"
