"""Render an injected sidecar's Envoy bootstrap inside its pod (the `mesh-bootstrap` step).

The pod's identity comes from the downward API through environment variables
(flags override them): POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT,
and its labels from a downward API `metadata.labels` file.  See
`xds_server.inject.pod_bootstrap` for what is rendered.

The sidecar authenticates to the control plane with the projected token in
`--token-file` and checks it against the roots in `--roots-file` (the
injector mounts both); `--insecure-xds` renders plaintext xDS instead.  With
`--output`, the file-based SDS that reads the roots is written beside it.
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
    ROOTS_PATH,
    TOKEN_PATH,
    parse_downward_labels,
    render_pod_bootstrap,
    token_client_tls,
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
    xds = parser.add_argument_group("xDS authentication")
    xds.add_argument(
        "--token-file",
        type=Path,
        default=Path(TOKEN_PATH),
        help=f"the projected ServiceAccount token (default {TOKEN_PATH})",
    )
    xds.add_argument(
        "--roots-file",
        default=ROOTS_PATH,
        help=f"the mesh's trust bundle, PEM (default {ROOTS_PATH})",
    )
    xds.add_argument("--trust-domain", default="cluster.local")
    xds.add_argument(
        "--control-plane-namespace",
        default="mesh-system",
        help="the control plane's namespace (its SPIFFE ID, which the sidecar checks)",
    )
    xds.add_argument(
        "--insecure-xds",
        action="store_true",
        help="plaintext xDS, no credential (a control plane started with --insecure-xds)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        labels = (
            parse_downward_labels(args.labels_file.read_text("utf-8")) if args.labels_file else {}
        )
        tls = None
        if not args.insecure_xds:
            tls = token_client_tls(
                token=args.token_file.read_text("utf-8"),
                roots_file=os.path.abspath(args.roots_file),  # not resolved: a ConfigMap links
                trust_domain=args.trust_domain,
                control_plane_namespace=args.control_plane_namespace,
                sds_directory=os.path.abspath(args.output.parent) if args.output else None,
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
            xds_tls=tls,
        )
        if args.output:
            for path, sds in (tls.sds_files() if tls else {}).items():
                Path(path).write_text(sds, encoding="utf-8")
            args.output.write_text(text, encoding="utf-8")
    except (OSError, ValueError) as error:
        print(f"xds-server sidecar-bootstrap: {error}", file=sys.stderr)
        return 1
    if args.output:
        print(f"wrote {args.output} for node {args.pod_name}.{args.namespace}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
