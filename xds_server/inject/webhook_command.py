"""Serve sidecar injection as a mutating admission webhook over HTTPS.

The webhook is its own process (and Deployment), not part of `serve`: it needs
different API rights (its Secret and its webhook configuration, none of the
watches), it holds no mesh state, and keeping it apart means an xDS server in
trouble never blocks pod creation, nor a webhook problem the xDS stream.

TLS, one of:
  --cert FILE --key FILE     serve mounted files (e.g. from cert-manager, whose CA
                             injector fills the caBundle); reloaded when they change
  --tls-secret NS/NAME       self-managed: a CA and certificate shared by all replicas
                             through that Secret, created or renewed as needed, with
                             the CA patched into --webhook-configuration's caBundle
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xds_server.inject.options import add_injection_arguments, config_from_args
from xds_server.settings import split_host_port

if TYPE_CHECKING:
    from xds_server.inject.webhook_server import TlsSource

logger = logging.getLogger(__name__)

HELP = "serve sidecar injection as a mutating admission webhook (HTTPS)"
WEBHOOK_CONFIGURATION = "mesh-sidecar-injector"
WEBHOOK_NAME = "sidecar-injector.mesh.io"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--listen", default="0.0.0.0:15017", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--cert", type=Path, help="PEM certificate (chain) file")
    parser.add_argument("--key", type=Path, help="PEM private key file")
    parser.add_argument("--tls-secret", metavar="NAMESPACE/NAME", help="self-managed TLS Secret")
    parser.add_argument(
        "--dns-name",
        action="append",
        default=[],
        help="name the API server calls the webhook by (repeat; with --tls-secret)",
    )
    parser.add_argument("--webhook-configuration", default=WEBHOOK_CONFIGURATION)
    parser.add_argument(
        "--webhook-name",
        action="append",
        default=[],
        help=f"webhook in the configuration whose caBundle to set (default {WEBHOOK_NAME})",
    )
    parser.add_argument("--kubeconfig", help="default: in-cluster config, else ~/.kube/config")
    parser.add_argument(
        "--tls-refresh-seconds",
        type=float,
        default=300.0,
        help="how often to look for new TLS material (default %(default)s)",
    )
    add_injection_arguments(parser)


def _tls_source(args: argparse.Namespace) -> TlsSource:
    # Imported here: every `xds-server` invocation loads each command module.
    from xds_server.inject.tls_store import KubernetesTlsStore
    from xds_server.inject.webhook_server import FileTls, SecretTls

    if args.cert or args.key:
        if not (args.cert and args.key) or args.tls_secret:
            raise ValueError("give --cert and --key together, or --tls-secret alone")
        return FileTls(args.cert, args.key)
    if not args.tls_secret:
        raise ValueError("TLS is required: give --cert and --key, or --tls-secret NAMESPACE/NAME")
    namespace, sep, name = args.tls_secret.partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"--tls-secret expects NAMESPACE/NAME, got {args.tls_secret!r}")
    if not args.dns_name:
        raise ValueError("--tls-secret needs --dns-name (e.g. mesh-injector.mesh-system.svc)")
    return SecretTls(
        KubernetesTlsStore(
            _api_client(args.kubeconfig),
            namespace=namespace,
            secret_name=name,
            webhook_configuration=args.webhook_configuration,
            webhook_names=args.webhook_name or [WEBHOOK_NAME],
        ),
        tuple(args.dns_name),
    )


def _api_client(kubeconfig: str | None) -> object:
    """In-cluster credentials, else `kubeconfig` or the default kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config

    loader: Any = kube_config  # its loaders are untyped
    if kubeconfig:
        return loader.new_client_from_config(config_file=kubeconfig)
    try:
        loader.load_incluster_config()
    except kube_config.ConfigException:
        return loader.new_client_from_config()
    return client.ApiClient()


def run(args: argparse.Namespace) -> int:
    from xds_server.inject.webhook_server import WebhookServer

    try:
        host, port = split_host_port(args.listen)
        server = WebhookServer(
            config_from_args(args),
            host=host,
            port=port,
            tls=_tls_source(args),
            refresh_seconds=args.tls_refresh_seconds,
        )
    except ValueError as error:
        print(f"xds-server webhook: {error}", file=sys.stderr)
        return 2

    async def main() -> int:
        task = asyncio.ensure_future(server.run())
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except OSError as error:
            print(f"xds-server webhook: {error}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())
