"""Security inputs as model values: workload certificates, trust roots, and the two
security policies (PeerAuthentication, AuthorizationPolicy).

Certificates are model objects like any other, so that the pipeline's
generators, dependency index and provenance carry them to the proxies with no
special path: the issuer (`xds_server.security.certificates`) is a source that
emits `WorkloadCertificate` and `TrustRoots` upserts, and the proxy generator
turns the one for a proxy's identity into its SDS Secrets.  Key material is
kept out of `repr` (logs, tracebacks) and admin views redact Secrets.

A `WorkloadCertificate` is keyed by the identity it certifies: namespace and
service account (`name`), as a proxy's SPIFFE ID is.  `TrustRoots` is one
object for the whole mesh (`TRUST_ROOTS_KEY`).

The two policies keep their spec as the generated message's deterministic
bytes (like `BackendPolicy`), so they are hashable and compared by content;
their modules (`model.peer_authentication`, `model.authorization`) resolve
which apply to a workload.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xds_server.model.types import Labels
from xds_server.provenance import Origin

TRUST_ROOTS_KEY = ("", "mesh")
"""(namespace, name) of the mesh's one `TrustRoots` object."""


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """The current X.509 SVID of one identity, with its private key (both PEM)."""

    namespace: str
    name: str
    """The service account."""
    spiffe_id: str
    certificate_chain: bytes = field(default=b"", repr=False)
    """Leaf then intermediates, PEM."""
    private_key: bytes = field(default=b"", repr=False)
    """PKCS#8 PEM: goes only into this identity's SDS Secret."""
    serial: str = ""
    """The leaf's serial number, lowercase hex (as Envoy's `/certs` shows it)."""
    not_before: float = 0.0
    not_after: float = 0.0
    """Validity, in seconds since the epoch."""
    origin: Origin | None = field(default=None, compare=False, repr=False)

    @property
    def service_account(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class TrustRoots:
    """The roots every proxy trusts: one, or two during a root rotation's overlap."""

    namespace: str = TRUST_ROOTS_KEY[0]
    name: str = TRUST_ROOTS_KEY[1]
    roots_pem: bytes = b""
    """Every root, PEM, in a deterministic order (`ca.rotation.TrustBundle.pem`)."""
    fingerprints: tuple[str, ...] = ()
    """SHA-256 fingerprints (hex) of the roots, in the same order: for views and logs."""
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    """How a workload's sidecar accepts inbound connections (mTLS mode, per port)."""

    namespace: str
    name: str
    spec_bytes: bytes = b""
    """`PeerAuthenticationSpec`, serialized deterministically."""
    selector: Labels | None = None
    """`spec.selector.matchLabels`; None: every workload of the namespace."""
    creation_timestamp: str | None = None
    generation: int = 0
    origin: Origin | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    """Who may call a workload: ALLOW, DENY or AUDIT rules."""

    namespace: str
    name: str
    spec_bytes: bytes = b""
    """`AuthorizationPolicySpec`, serialized deterministically."""
    selector: Labels | None = None
    """`spec.selector.matchLabels`; None: every workload of the namespace."""
    creation_timestamp: str | None = None
    generation: int = 0
    origin: Origin | None = field(default=None, compare=False, repr=False)


def selects(selector: Labels | None, labels: Labels) -> bool:
    """A policy selector against a workload's labels: None (no selector) selects all;
    an empty matchLabels too, as Kubernetes label selectors do."""
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(key) == value for key, value in selector)


def governed_scope(policy: PeerAuthentication | AuthorizationPolicy, root_namespace: str) -> str:
    """Which workloads a security policy governs, in words (its Accepted message)."""
    if policy.selector:
        shown = ",".join(f"{key}={value}" for key, value in policy.selector)
        return f"governs the workloads of {policy.namespace} labelled {shown}"
    if policy.namespace == root_namespace:
        return "governs every workload of the mesh (root namespace, no selector)"
    return f"governs every workload of {policy.namespace}"
