"""`xds-server bootstrap`: an Envoy sidecar's bootstrap, with its xDS credential.

The control plane's xDS port serves TLS and accepts only proxies that prove
who they are.  So besides rendering the bootstrap, the command makes the
sidecar's key, has the control plane sign it (through the admin API, which
needs the admin token) for the sidecar's namespace and service account, and
writes key, certificate and trust roots to `--cert-dir`, referenced from the
bootstrap by file name.  `--insecure-xds` renders a plaintext bootstrap for a
control plane started with `--insecure-xds`.  Exit codes: 0 written, 1 the
control plane refused or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xds_server.cli_client import (
    DEFAULT_ADMIN_URL,
    AdminError,
    add_token_argument,
    admin_url,
    client_of,
)

if TYPE_CHECKING:
    from xds_server.bootstrap import XdsClientTls

HELP = "render an Envoy sidecar bootstrap (with its xDS client certificate)"
DEFAULT_CERT_TTL = 30 * 24 * 3600.0


def add_arguments(boot: argparse.ArgumentParser) -> None:
    boot.add_argument("--node-id", required=True)
    boot.add_argument("--namespace", default="default")
    boot.add_argument(
        "--xds-address",
        action="append",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the control plane; repeat (or separate by commas) for replicas to fail over "
        "between (default 127.0.0.1:15010)",
    )
    boot.add_argument("--admin-port", type=int, required=True)
    boot.add_argument("--outbound-port", type=int, default=15001)
    boot.add_argument("--outbound-address", default="127.0.0.1")
    boot.add_argument("--workload", default="")
    boot.add_argument("--service-account", default="default")
    boot.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    boot.add_argument("--instance-ip", help="where the sidecar accepts inbound traffic")
    boot.add_argument("--app-address", default="127.0.0.1")
    boot.add_argument("--delta", action="store_true", help="incremental (Delta) xDS")
    boot.add_argument(
        "--interception",
        choices=["none", "redirect"],
        default="none",
        help="redirect: the pod's traffic is captured by iptables (xds-server capture-init)",
    )
    boot.add_argument("--inbound-capture-port", type=int, default=15006)
    boot.add_argument(
        "--zone", help="the sidecar's zone (node.locality.zone), for locality-aware routing"
    )
    boot.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    security = boot.add_argument_group("xDS credential")
    security.add_argument(
        "--admin",
        type=admin_url,
        default=DEFAULT_ADMIN_URL,
        metavar="URL",
        help="the control plane's admin API, which signs the credential (default %(default)s)",
    )
    add_token_argument(security)
    security.add_argument(
        "--cert-dir",
        type=Path,
        help="where the sidecar's xDS key, certificate and roots are written "
        "(default: .xds-server/sidecars/NODE_ID)",
    )
    security.add_argument(
        "--cert-ttl",
        type=float,
        default=DEFAULT_CERT_TTL,
        metavar="SECONDS",
        help="the xDS credential's lifetime (default 30 days; run the command again "
        "before it ends, or after a root rotation)",
    )
    security.add_argument(
        "--insecure-xds",
        action="store_true",
        help="no credential: plaintext xDS, for a control plane started with --insecure-xds",
    )
    security.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from xds_server.bootstrap import parse_xds_addresses, render_bootstrap

    labels: dict[str, str] = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"xds-server: --label expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        labels[key] = value
    try:  # a bad address is said before anything is asked of the control plane
        parse_xds_addresses(args.xds_address or ["127.0.0.1:15010"])
    except ValueError as error:
        print(f"xds-server bootstrap: {error}", file=sys.stderr)
        return 2
    xds_tls: XdsClientTls | None = None
    if not args.insecure_xds:
        try:
            xds_tls = obtain_credential(args)
        except AdminError as error:
            print(f"xds-server bootstrap: cannot get the xDS credential: {error}", file=sys.stderr)
            return 1
    try:
        text = render_bootstrap(
            node_id=args.node_id,
            namespace=args.namespace,
            xds_address=args.xds_address or ["127.0.0.1:15010"],
            admin_port=args.admin_port,
            delta=args.delta,
            workload=args.workload,
            service_account=args.service_account,
            labels=labels,
            instance_ip=args.instance_ip,
            app_address=args.app_address,
            outbound_address=args.outbound_address,
            outbound_port=args.outbound_port,
            interception=args.interception,
            inbound_capture_port=args.inbound_capture_port,
            zone=args.zone,
            xds_tls=xds_tls,
        )
    except ValueError as error:
        print(f"xds-server bootstrap: {error}", file=sys.stderr)
        return 2
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def obtain_credential(args: argparse.Namespace) -> XdsClientTls:
    """The sidecar's key made here, signed by the control plane, written to `--cert-dir`."""
    from xds_server.admin.xds_certificates import ClientCertificate
    from xds_server.security.xds_client import new_key_and_csr, write_client_tls

    key_pem, csr_pem = new_key_and_csr()
    signed = client_of(args).post(
        ClientCertificate,
        "/api/xds/client-certificate",
        {
            "namespace": args.namespace,
            "service_account": args.service_account,
            "csr_pem": csr_pem.decode(),
            "ttl_seconds": args.cert_ttl,
        },
    )
    directory = args.cert_dir or Path(".xds-server") / "sidecars" / args.node_id
    return write_client_tls(signed, key_pem, directory)
