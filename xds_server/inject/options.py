"""Command-line options shared by `xds-server inject` and `xds-server webhook`.

Both build the same `InjectionConfig` from the same flags, so a manifest
injected by hand and a pod injected in the cluster get the same sidecar.
"""

from __future__ import annotations

import argparse
import logging

from xds_server.bootstrap import parse_host_port
from xds_server.inject.sidecar import (
    CONTROL_PLANE_IMAGE,
    PROXY_IMAGE,
    TOKEN_EXPIRATION_SECONDS,
    XDS_ADDRESS,
    InjectionConfig,
)

logger = logging.getLogger(__name__)


def _xds_address(value: str) -> str:
    try:
        parse_host_port(value, what="--xds-address")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def add_injection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("injected sidecar")
    group.add_argument(
        "--xds-address",
        type=_xds_address,
        default=XDS_ADDRESS,
        help=f"HOST:PORT of the control plane's xDS Service (default {XDS_ADDRESS})",
    )
    group.add_argument(
        "--proxy-image", default=PROXY_IMAGE, help=f"Envoy image (default {PROXY_IMAGE})"
    )
    group.add_argument(
        "--control-plane-image",
        default=CONTROL_PLANE_IMAGE,
        help=f"image of the init containers (default {CONTROL_PLANE_IMAGE})",
    )
    group.add_argument(
        "--image-pull-policy",
        choices=("Always", "IfNotPresent", "Never"),
        default="IfNotPresent",
    )
    group.add_argument(
        "--proxy-log-level",
        choices=("trace", "debug", "info", "warning", "error", "critical", "off"),
        default="warning",
    )
    group.add_argument("--delta", action="store_true", help="sidecars use incremental xDS")
    xds = parser.add_argument_group("how injected sidecars authenticate to the control plane")
    xds.add_argument(
        "--insecure-xds",
        action="store_true",
        help="plaintext xDS with no token (only for a control plane with --insecure-xds)",
    )
    xds.add_argument(
        "--trust-domain", default="cluster.local", help="the mesh's (default %(default)s)"
    )
    xds.add_argument(
        "--control-plane-namespace",
        default="mesh-system",
        help="the control plane's namespace, in its SPIFFE ID (default %(default)s)",
    )
    xds.add_argument(
        "--token-audience",
        default="xds-server",
        help="of the projected token; the control plane's --token-audience (default %(default)s)",
    )
    xds.add_argument(
        "--token-expiration-seconds",
        type=int,
        default=TOKEN_EXPIRATION_SECONDS,
        help="the projected token's lifetime (default %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> InjectionConfig:
    return InjectionConfig(
        xds_address=args.xds_address,
        proxy_image=args.proxy_image,
        control_plane_image=args.control_plane_image,
        image_pull_policy=args.image_pull_policy,
        log_level=args.proxy_log_level,
        delta=args.delta,
        insecure_xds=args.insecure_xds,
        trust_domain=args.trust_domain,
        control_plane_namespace=args.control_plane_namespace,
        token_audience=args.token_audience,
        token_expiration_seconds=args.token_expiration_seconds,
    )
