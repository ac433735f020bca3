"""Render an injected sidecar's Envoy bootstrap inside its pod (the `mesh-bootstrap` step).

The pod's identity comes from the downward API through environment variables
(flags override them): POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT,
and its labels from a downward API `metadata.labels` file.  See
`xds_server.inject.pod_bootstrap` for what is rendered.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from xds_server.inject.pod_bootstrap import (
    ADMIN_PORT,
    HEALTH_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    parse_downward_labels,
    render_pod_bootstrap,
)

logger = logging.getLogger(__name__)

HELP = "render an injected sidecar's bootstrap from the downward API (init container)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pod-name", default=os.environ.get("POD_NAME", ""))
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", ""))
    parser.add_argument("--pod-ip", default=os.environ.get("INSTANCE_IP", ""))
    parser.add_argument("--service-account", default=os.environ.get("SERVICE_ACCOUNT", "default"))
    parser.add_argument("--labels-file", type=Path, help="downward API metadata.labels file")
    parser.add_argument("--xds-address", required=True, help="HOST:PORT of the control plane")
    parser.add_argument("--admin-port", type=int, default=ADMIN_PORT)
    parser.add_argument("--health-port", type=int, default=HEALTH_PORT)
    parser.add_argument("--outbound-port", type=int, default=OUTBOUND_PORT, help="capture port")
    parser.add_argument("--inbound-port", type=int, default=INBOUND_PORT, help="capture port")
    parser.add_argument("--delta", action="store_true", help="incremental (Delta) xDS")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")


def run(args: argparse.Namespace) -> int:
    try:
        labels = (
            parse_downward_labels(args.labels_file.read_text("utf-8")) if args.labels_file else {}
        )
        text = render_pod_bootstrap(
            pod_name=args.pod_name,
            namespace=args.namespace,
            pod_ip=args.pod_ip,
            service_account=args.service_account,
            xds_address=args.xds_address,
            labels=labels,
            admin_port=args.admin_port,
            health_port=args.health_port,
            outbound_port=args.outbound_port,
            inbound_port=args.inbound_port,
            delta=args.delta,
        )
    except (OSError, ValueError) as error:
        print(f"xds-server sidecar-bootstrap: {error}", file=sys.stderr)
        return 1
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output} for node {args.pod_name}.{args.namespace}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
