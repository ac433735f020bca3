"""`xds-server capture-init`: install the iptables rules that send a pod's TCP through its sidecar.

This is what the injected init container runs, in the pod's network namespace
and with CAP_NET_ADMIN, before any other container starts:

    xds-server capture-init --outbound-port 15001 --inbound-port 15006 --proxy-uid 1337 \\
        --exclude-outbound-ports 15010,15014 --exclude-inbound-ports 15020,15021

Outbound TCP from every process but the sidecar's UID/GID goes to the outbound
port, inbound TCP to the inbound port (see `xds_server.capture.rules` for the
exact rules).  Running it again replaces the rules; `--dry-run` prints them
without touching the namespace; `--cleanup` removes them.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from xds_server.capture.apply import CaptureError, install, uninstall
from xds_server.capture.rules import (
    DEFAULT_INBOUND_PORT,
    DEFAULT_OUTBOUND_PORT,
    DEFAULT_PROXY_UID,
    CaptureConfig,
    IPFamily,
    loopback_address_commands,
    remove_jump_commands,
    restore_text,
)

logger = logging.getLogger(__name__)

HELP = "install the iptables rules for transparent capture (the init container)"
ALL = "*"


def _port(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return int(value)


def _ports(value: str) -> tuple[int, ...]:
    """`15010,15014` (empty for none)."""
    return tuple(_port(item.strip()) for item in value.split(",") if item.strip())


def _ports_or_all(value: str) -> tuple[int, ...] | None:
    """`*` for every port, else a list as for `_ports`."""
    return None if value.strip() == ALL else _ports(value)


def _cidrs(value: str) -> tuple[str, ...]:
    cidrs = tuple(item.strip() for item in value.split(",") if item.strip())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{cidr!r} is not an IP address or CIDR") from None
    return cidrs


def _cidrs_or_all(value: str) -> tuple[str, ...] | None:
    return None if value.strip() == ALL else _cidrs(value)


def _identity(value: str) -> int:
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a numeric UID or GID")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--outbound-port",
        type=_port,
        default=DEFAULT_OUTBOUND_PORT,
        help=f"where outbound TCP is redirected (the sidecar's virtual_outbound listener; "
        f"default {DEFAULT_OUTBOUND_PORT})",
    )
    parser.add_argument(
        "--inbound-port",
        type=_port,
        default=DEFAULT_INBOUND_PORT,
        help=f"where inbound TCP is redirected (virtual_inbound; default {DEFAULT_INBOUND_PORT})",
    )
    parser.add_argument(
        "--proxy-uid",
        type=_identity,
        default=DEFAULT_PROXY_UID,
        help=f"the sidecar's UID, whose traffic is never redirected (default {DEFAULT_PROXY_UID})",
    )
    parser.add_argument(
        "--proxy-gid",
        type=_identity,
        default=None,
        help="the sidecar's GID, likewise exempt (default: the same number as --proxy-uid)",
    )
    parser.add_argument(
        "--exclude-outbound-ports",
        type=_ports,
        default=(),
        metavar="PORT,...",
        help="destination ports never redirected outbound (e.g. the control plane's 15010,15014)",
    )
    parser.add_argument(
        "--exclude-inbound-ports",
        type=_ports,
        default=(),
        metavar="PORT,...",
        help="pod ports never redirected inbound (e.g. health checks); the sidecar's own two "
        "ports are always excluded",
    )
    parser.add_argument(
        "--include-inbound-ports",
        type=_ports_or_all,
        default=None,
        metavar="'*'|PORT,...",
        help="redirect inbound only these ports ('*', the default: all but the excluded; "
        "empty: none)",
    )
    parser.add_argument(
        "--exclude-outbound-cidrs",
        type=_cidrs,
        default=(),
        metavar="CIDR,...",
        help="destinations never redirected outbound",
    )
    parser.add_argument(
        "--include-outbound-cidrs",
        type=_cidrs_or_all,
        default=None,
        metavar="'*'|CIDR,...",
        help="redirect outbound only to these destinations ('*', the default: all)",
    )
    parser.add_argument("--ipv6", action="store_true", help="also install the rules with ip6tables")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the rules and commands; change nothing"
    )
    parser.add_argument(
        "--cleanup", action="store_true", help="remove the rules this command installs"
    )


def config_from_args(args: argparse.Namespace) -> CaptureConfig:
    return CaptureConfig(
        outbound_port=args.outbound_port,
        inbound_port=args.inbound_port,
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        exclude_outbound_ports=args.exclude_outbound_ports,
        exclude_inbound_ports=args.exclude_inbound_ports,
        include_inbound_ports=args.include_inbound_ports,
        exclude_outbound_cidrs=args.exclude_outbound_cidrs,
        include_outbound_cidrs=args.include_outbound_cidrs,
    )


def dry_run_text(config: CaptureConfig, families: list[IPFamily]) -> str:
    """What `install` would run, as a script a reader can follow."""
    parts: list[str] = []
    for family in families:
        parts.append(f"# {family.iptables}: transparent capture (IPv{family.value})")
        parts += [" ".join(argv) for argv in loopback_address_commands(family)]
        parts += [
            f"{' '.join(argv)}  # repeated until it fails" for argv in remove_jump_commands(family)
        ]
        parts.append(f"{family.iptables_restore} --noflush <<'EOF'")
        parts.append(restore_text(config, family) + "EOF")
    return "\n".join(parts) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"xds-server capture-init: {error}", file=sys.stderr)
        return 2
    families = [IPFamily.IPV4, IPFamily.IPV6] if args.ipv6 else [IPFamily.IPV4]
    if args.dry_run:
        sys.stdout.write(dry_run_text(config, families))
        return 0
    try:
        if args.cleanup:
            uninstall(families)
            return 0
        applied = install(config, families)
    except (CaptureError, OSError) as error:
        print(f"xds-server capture-init: {error}", file=sys.stderr)
        return 1
    for family, text in applied.items():
        sys.stdout.write(f"# {family.iptables_restore} --noflush\n{text}")
    return 0
