"""The iptables rules that send a pod's TCP through its sidecar, as data (no I/O).

They follow Istio's `istio-iptables` in REDIRECT mode, in the nat table, with
four chains of our own:

* `MESH_REDIRECT`: REDIRECT to the sidecar's outbound port (15001);
* `MESH_IN_REDIRECT`: REDIRECT to its inbound capture port (15006);
* `MESH_INBOUND`, jumped to from PREROUTING: connections arriving at the pod
  go to `MESH_IN_REDIRECT`, except the excluded inbound ports (health and
  metrics ports that must answer even when the sidecar is not ready) and the
  sidecar's own two ports;
* `MESH_OUTPUT`, jumped to from OUTPUT: connections the pod opens, in order
  (the first match decides):

  1. excluded outbound ports (the control plane's xDS and admin ports) RETURN;
  2. loopback traffic from 127.0.0.6 RETURNs: that source is the sidecar's
     inbound passthrough forwarding to the pod IP (see
     `translate.clusters`), which rule 3 would otherwise send back in;
  3. the sidecar's own traffic over loopback to an address other than
     127.0.0.1 (that is, to its own pod IP: a Service whose endpoint is this
     very pod) goes to `MESH_IN_REDIRECT`, so the inbound side still applies;
  4. other processes' loopback traffic RETURNs: the app calling itself, or
     the sidecar's admin port, is none of the mesh's business;
  5. everything else the sidecar (UID, then GID, of the proxy) sends RETURNs:
     this is what keeps the sidecar's upstream connections from looping;
  6. rules 3-5 again matched by GID, for a sidecar run under another UID;
  7. traffic to 127.0.0.1 RETURNs, and so do the excluded outbound CIDRs;
  8. the rest goes to `MESH_REDIRECT` (or only traffic to the included CIDRs).

The rules are produced as argument lists (`rules`) and as the input of
`iptables-restore --noflush` (`restore_text`).  Declaring a chain in that input
creates it or empties it, so re-applying replaces our chains' contents; the
jumps from PREROUTING and OUTPUT live in built-in chains the restore does not
flush, so `remove_jump_commands` deletes them first (see `apply`).  IPv6 uses
the same rules with `::1` and `::6`; CIDR lists are split by family.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

NAT = "nat"
INBOUND_CHAIN = "MESH_INBOUND"
REDIRECT_CHAIN = "MESH_REDIRECT"
IN_REDIRECT_CHAIN = "MESH_IN_REDIRECT"
OUTPUT_CHAIN = "MESH_OUTPUT"
CHAINS = (INBOUND_CHAIN, IN_REDIRECT_CHAIN, OUTPUT_CHAIN, REDIRECT_CHAIN)
"""Our chains, in the order they are declared."""

JUMPS: tuple[tuple[str, str], ...] = (("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN))
"""(built-in chain, our chain) pairs: each built-in chain jumps to ours for TCP."""

DEFAULT_OUTBOUND_PORT = 15001
DEFAULT_INBOUND_PORT = 15006
DEFAULT_PROXY_UID = 1337


class IPFamily(enum.Enum):
    """Which table set: `iptables` for IPv4, `ip6tables` for IPv6."""

    IPV4 = 4
    IPV6 = 6

    @property
    def iptables(self) -> str:
        return "iptables" if self is IPFamily.IPV4 else "ip6tables"

    @property
    def iptables_restore(self) -> str:
        return f"{self.iptables}-restore"

    @property
    def loopback(self) -> str:
        """The address the sidecar forwards inbound traffic to (never captured)."""
        return "127.0.0.1/32" if self is IPFamily.IPV4 else "::1/128"

    @property
    def inbound_passthrough_source(self) -> str:
        """The source the sidecar's inbound passthrough binds (`translate.clusters`)."""
        return "127.0.0.6/32" if self is IPFamily.IPV4 else "::6/128"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What to capture and where to send it.

    `include_inbound_ports` None means every port (`*`); a tuple means only
    those.  `include_outbound_cidrs` likewise: None captures every destination.
    `proxy_gid` None means the same number as `proxy_uid`.
    """

    outbound_port: int = DEFAULT_OUTBOUND_PORT
    inbound_port: int = DEFAULT_INBOUND_PORT
    proxy_uid: int = DEFAULT_PROXY_UID
    proxy_gid: int | None = None
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    include_inbound_ports: tuple[int, ...] | None = None
    exclude_outbound_cidrs: tuple[str, ...] = ()
    include_outbound_cidrs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        ports = [
            self.outbound_port,
            self.inbound_port,
            *self.exclude_outbound_ports,
            *self.exclude_inbound_ports,
            *(self.include_inbound_ports or ()),
        ]
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"{port} is not a port number (1-65535)")
        if self.outbound_port == self.inbound_port:
            raise ValueError(f"the outbound and inbound ports are both {self.outbound_port}")
        for identity in (self.proxy_uid, self.proxy_gid):
            if identity is not None and identity < 0:
                raise ValueError(f"{identity} is not a UID or GID")
        for cidr in (*self.exclude_outbound_cidrs, *(self.include_outbound_cidrs or ())):
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError naming it

    @property
    def gid(self) -> int:
        return self.proxy_uid if self.proxy_gid is None else self.proxy_gid


Rule = list[str]
"""One rule as iptables arguments after `-t nat`: `["-A", "MESH_OUTPUT", ...]`."""


def rules(config: CaptureConfig, family: IPFamily = IPFamily.IPV4) -> list[Rule]:
    """Every rule to append, in order (our chains must exist: see `restore_text`)."""
    tcp = ["-p", "tcp"]
    out: list[Rule] = [
        ["-A", REDIRECT_CHAIN, *tcp, "-j", "REDIRECT", "--to-ports", str(config.outbound_port)],
        ["-A", IN_REDIRECT_CHAIN, *tcp, "-j", "REDIRECT", "--to-ports", str(config.inbound_port)],
    ]
    out.extend(_inbound(config, tcp))
    out.extend(_outbound(config, family, tcp))
    return out


def _inbound(config: CaptureConfig, tcp: list[str]) -> list[Rule]:
    if config.include_inbound_ports is not None and not config.include_inbound_ports:
        return []
    out: list[Rule] = [["-A", "PREROUTING", *tcp, "-j", INBOUND_CHAIN]]
    if config.include_inbound_ports is None:
        excluded = _unique(
            [config.outbound_port, config.inbound_port, *config.exclude_inbound_ports]
        )
        out += [["-A", INBOUND_CHAIN, *tcp, "--dport", str(p), "-j", "RETURN"] for p in excluded]
        out.append(["-A", INBOUND_CHAIN, *tcp, "-j", IN_REDIRECT_CHAIN])
    else:
        own = {config.outbound_port, config.inbound_port}
        included = [p for p in _unique(config.include_inbound_ports) if p not in own]
        out += [
            ["-A", INBOUND_CHAIN, *tcp, "--dport", str(p), "-j", IN_REDIRECT_CHAIN]
            for p in included
        ]
    return out


def _outbound(config: CaptureConfig, family: IPFamily, tcp: list[str]) -> list[Rule]:
    chain = ["-A", OUTPUT_CHAIN]
    out: list[Rule] = [["-A", "OUTPUT", *tcp, "-j", OUTPUT_CHAIN]]
    out += [
        [*chain, *tcp, "--dport", str(p), "-j", "RETURN"]
        for p in _unique(config.exclude_outbound_ports)
    ]
    out.append([*chain, "-o", "lo", "-s", family.inbound_passthrough_source, "-j", "RETURN"])
    for match in ("--uid-owner", "--gid-owner"):
        owner = str(config.proxy_uid if match == "--uid-owner" else config.gid)
        out += [
            [*chain, "-o", "lo", "!", "-d", family.loopback, "-m", "owner", match, owner,
             "-j", IN_REDIRECT_CHAIN],
            [*chain, "-o", "lo", "-m", "owner", "!", match, owner, "-j", "RETURN"],
            [*chain, "-m", "owner", match, owner, "-j", "RETURN"],
        ]  # fmt: skip
    out.append([*chain, "-d", family.loopback, "-j", "RETURN"])
    out += [
        [*chain, "-d", cidr, "-j", "RETURN"]
        for cidr in _of_family(config.exclude_outbound_cidrs, family)
    ]
    if config.include_outbound_cidrs is None:
        out.append([*chain, "-j", REDIRECT_CHAIN])
    else:
        out += [
            [*chain, "-d", cidr, "-j", REDIRECT_CHAIN]
            for cidr in _of_family(config.include_outbound_cidrs, family)
        ]
    return out


def restore_text(config: CaptureConfig, family: IPFamily = IPFamily.IPV4) -> str:
    """The input of `iptables-restore --noflush`: declare (create or empty) our chains, append."""
    lines = [f"*{NAT}"]
    lines += [f":{chain} - [0:0]" for chain in CHAINS]
    lines += [" ".join(rule) for rule in rules(config, family)]  # numbers, CIDRs, names
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def iptables_commands(config: CaptureConfig, family: IPFamily = IPFamily.IPV4) -> list[list[str]]:
    """The same rules as separate `iptables` commands (for reading, or without restore)."""
    table = [family.iptables, "-t", NAT]
    return [[*table, "-N", chain] for chain in CHAINS] + [
        [*table, *rule] for rule in rules(config, family)
    ]


def remove_jump_commands(family: IPFamily = IPFamily.IPV4) -> list[list[str]]:
    """Delete one copy of each jump into our chains; run each until it fails."""
    return [
        [family.iptables, "-t", NAT, "-D", builtin, "-p", "tcp", "-j", chain]
        for builtin, chain in JUMPS
    ]


def remove_chain_commands(family: IPFamily = IPFamily.IPV4) -> list[list[str]]:
    """Empty, then delete, our chains (after `remove_jump_commands`); failures are fine."""
    table = [family.iptables, "-t", NAT]
    return [[*table, "-F", chain] for chain in CHAINS] + [[*table, "-X", chain] for chain in CHAINS]


def loopback_address_commands(family: IPFamily) -> list[list[str]]:
    """IPv6 has no `::6` on loopback by default; the inbound passthrough binds it."""
    if family is IPFamily.IPV4:
        return []  # all of 127.0.0.0/8 is local already
    return [["ip", "-6", "addr", "replace", family.inbound_passthrough_source, "dev", "lo"]]


def _of_family(cidrs: Iterable[str], family: IPFamily) -> list[str]:
    """The CIDRs of one family, normalized (`10.0.0.1/8` -> `10.0.0.0/8`), each once."""
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
    return _unique(str(n) for n in networks if n.version == family.value)


def _unique(items: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(items))
