"""The `xds-server` command: serve, bootstrap, demo.

Exit codes: 0 after a deliberate stop (SIGTERM, SIGINT), 1 when the control
plane cannot start (a port in use, a missing or unreadable source directory),
2 for a usage error (a bad flag or value).  Each failure is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn

from xds_server.settings import (
    SOURCE_KUBERNETES,
    XDS_CLIENT_AUTH,
    KubernetesSettings,
    SecuritySettings,
    Settings,
    split_host_port,
)

logger = logging.getLogger(__name__)


def _host_port(value: str) -> str:
    try:
        split_host_port(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _positive_int(value: str) -> int:
    """A whole number of at least 1, for counts and sizes on the command line."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _namespaces(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of namespaces")
    return names


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(value: str) -> float:
    """Seconds, or a number with s, m, h or d (`90`, `10m`, `24h`), for --svid-ttl."""
    text = value.strip().lower()
    scale = _DURATION_UNITS.get(text[-1:], 0.0)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds or a duration like 10m or 24h, got {value!r}"
        ) from None
    if seconds < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 seconds, got {value!r}")
    return seconds


def _grace(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0 to 3600 seconds, got {value!r}")
    return seconds


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xds-server", description=__doc__)
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the control plane")
    serve.add_argument(
        "--source",
        default="file:examples",
        help="file:DIR (the embedded default), or kubernetes (watch the API server)",
    )
    serve.add_argument(
        "--kubeconfig",
        type=Path,
        help="with --source kubernetes: this kubeconfig (default: in-cluster, else ~/.kube/config)",
    )
    serve.add_argument(
        "--namespaces",
        type=_namespaces,
        default=(),
        metavar="NS[,NS...]",
        help="with --source kubernetes: watch only these namespaces (default: all)",
    )
    serve.add_argument("--xds-listen", type=_host_port, default="127.0.0.1:15010")
    serve.add_argument(
        "--admin-listen",
        type=_host_port,
        default=Settings.admin_listen,
        help="the admin API (default %(default)s: this host only; its state-changing "
        "endpoints need the admin token wherever it listens)",
    )
    serve.add_argument(
        "--admin-token-file",
        type=Path,
        default=SecuritySettings.admin_token_file,
        help="the admin API's bearer token, generated there (mode 0600) when missing; "
        "$XDS_SERVER_ADMIN_TOKEN wins (default %(default)s)",
    )
    serve.add_argument(
        "--grace-seconds",
        type=_grace,
        default=Settings.grace_seconds,
        help="on SIGTERM: proxies are told to reconnect elsewhere at once, and what is "
        "still running after this long is cut (default %(default)s)",
    )

    serve.add_argument(
        "--xds-max-request-bytes",
        type=_positive_int,
        default=Settings.xds_max_request_bytes,
        help="largest DiscoveryRequest accepted (default %(default)s)",
    )
    serve.add_argument(
        "--xds-max-streams-per-peer",
        type=_positive_int,
        default=Settings.xds_max_streams_per_peer,
        help="concurrent xDS streams from one peer address (default %(default)s)",
    )
    serve.add_argument(
        "--xds-stuck-stream-seconds",
        type=_grace,
        default=Settings.xds_stuck_stream_seconds,
        help="a proxy that takes no response for this long is disconnected (default %(default)s)",
    )
    serve.add_argument(
        "--no-envoy-validation",
        dest="envoy_validation",
        action="store_false",
        help="serve generated resources without checking Envoy's validation rules first "
        "(for benchmarks; by default a resource breaking one is withheld and reported)",
    )

    defaults = SecuritySettings()
    serve.add_argument(
        "--trust-domain",
        default=defaults.trust_domain,
        help="the SPIFFE trust domain of every workload identity (default %(default)s)",
    )
    serve.add_argument(
        "--ca-dir",
        type=Path,
        default=defaults.ca_dir,
        help="file mode: the root CA's directory, generated there on first start "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--ca-cert",
        type=Path,
        help="a root or intermediate CA certificate to issue with (PEM, its chain after it)",
    )
    serve.add_argument("--ca-key", type=Path, help="the key of --ca-cert (PEM)")
    serve.add_argument(
        "--svid-ttl",
        type=_duration,
        default=defaults.svid_ttl_seconds,
        help="workload certificate lifetime, re-issued at half of it: seconds, or 10m, "
        "24h (default 24h)",
    )
    serve.add_argument(
        "--ca-namespace",
        default=defaults.ca_namespace,
        help="the control plane's namespace: where its CA Secret is kept (Kubernetes) and "
        "the namespace of the xDS server's own SPIFFE ID (default %(default)s)",
    )
    serve.add_argument(
        "--token-audience",
        default=defaults.token_audience,
        help="Kubernetes: the audience of the ServiceAccount tokens sidecars present "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--xds-client-auth",
        choices=XDS_CLIENT_AUTH,
        help="how proxies prove who they are on the xDS port: a client certificate of the "
        "mesh CA (xds-server bootstrap; the default in file mode) or a projected "
        "ServiceAccount token (injected sidecars; the default with --source kubernetes)",
    )
    serve.add_argument(
        "--insecure-xds",
        action="store_true",
        help="DEVELOPMENT ONLY: serve xDS in plaintext and authenticate no proxy "
        "(anyone reaching the port can read any proxy's config and certificates)",
    )

    demo = commands.add_parser("demo", help="run a mesh with sample services and real Envoys")
    demo.add_argument("--once", action="store_true", help="exit after the traffic check")
    demo.add_argument("--delta", action="store_true", help="sidecars use Delta xDS")
    demo.add_argument("--manifests", type=Path, help="directory of manifests (default: bundled)")

    for name, module_name in PLUGIN_COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
    _add_admin_commands(commands)
    return parser


def _add_admin_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """`status`, `config`, `explain`: clients of a running control plane's admin API."""
    from xds_server import cli_admin

    cli_admin.add_commands(commands)


ADMIN_COMMANDS = ("status", "config", "explain")
"""Commands of `cli_admin`, run against the admin API of a running control plane."""

# Commands that live in their own modules: each exposes HELP, add_arguments(parser)
# and run(args) -> int, so features add a command without growing this file.
PLUGIN_COMMANDS: dict[str, str] = {
    "affected": "xds_server.cli_affected",
    "bootstrap": "xds_server.cli_bootstrap",
    "ca": "xds_server.cli_security",
    "capture-init": "xds_server.capture.command",
    "diff": "xds_server.cli_diff",
    "inject": "xds_server.inject.command",
    "sidecar-bootstrap": "xds_server.inject.bootstrap_command",
    "webhook": "xds_server.inject.webhook_command",
}


def _run_cancellable(main: Coroutine[Any, Any, int | None]) -> int:
    """Run a coroutine; SIGINT/SIGTERM cancel it so every `finally` runs."""

    async def runner() -> int:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            result = await task
        except asyncio.CancelledError:
            return 0
        return result if result is not None else 0

    return asyncio.run(runner())


def _serve(settings: Settings) -> int:
    """Run the control plane: the first SIGTERM/SIGINT drains it, a second cuts it short."""
    from xds_server.app import ControlPlane, StartupError
    from xds_server.pipeline import validation

    validation.configure(enabled=settings.envoy_validation)

    async def runner() -> int:
        plane = ControlPlane(settings)
        task = asyncio.current_task()
        assert task is not None
        signals: list[str] = []

        def on_signal(signum: signal.Signals) -> None:
            signals.append(signum.name)
            if len(signals) == 1:
                logger.info("%s: shutting down (grace %.1f s)", signum.name, settings.grace_seconds)
                plane.shutdown()
            else:
                logger.warning("%s again: stopping now", signum.name)
                task.cancel()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await plane.run()
        except StartupError as error:
            print(f"xds-server: {error}", file=sys.stderr)
            return 1
        except asyncio.CancelledError:
            return 0
        return 0

    return asyncio.run(runner())


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        logging.shutdown()  # flush every handler before the process exits


def _redact_logs() -> None:
    """No private key reaches the log, whoever logs it (an Envoy NACK quoting a Secret)."""
    from xds_server.admin.redact import RedactingFilter  # the admin app loads FastAPI

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    default_level = "WARNING" if args.command == "demo" else "INFO"
    logging.basicConfig(
        level=(args.log_level or default_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in ("serve", "demo"):
        _redact_logs()
    if args.command == "serve":
        settings = Settings(
            source=args.source,
            xds_listen=args.xds_listen,
            admin_listen=args.admin_listen,
            grace_seconds=args.grace_seconds,
            xds_max_request_bytes=args.xds_max_request_bytes,
            xds_max_streams_per_peer=args.xds_max_streams_per_peer,
            xds_stuck_stream_seconds=args.xds_stuck_stream_seconds,
            envoy_validation=args.envoy_validation,
            kubernetes=KubernetesSettings(kubeconfig=args.kubeconfig, namespaces=args.namespaces),
            security=SecuritySettings(
                trust_domain=args.trust_domain,
                ca_dir=args.ca_dir,
                ca_cert_file=args.ca_cert,
                ca_key_file=args.ca_key,
                svid_ttl_seconds=args.svid_ttl,
                admin_token_file=args.admin_token_file,
                ca_namespace=args.ca_namespace,
                token_audience=args.token_audience,
                insecure_xds=args.insecure_xds,
                xds_client_auth=args.xds_client_auth,
            ),
        )
        if (args.ca_cert is None) != (args.ca_key is None):
            print("xds-server: --ca-cert and --ca-key go together", file=sys.stderr)
            return 2
        try:  # validate early, with a clear message
            if settings.source_kind == SOURCE_KUBERNETES:
                from xds_server.sources.kubernetes import load_configuration

                load_configuration(settings.kubernetes.kubeconfig)
        except Exception as error:  # ValueError, the client's ConfigException, OSError
            print(f"xds-server: {error}", file=sys.stderr)
            return 2
        return _serve(settings)
    if args.command == "demo":
        from xds_server.demo import run_demo

        return _run_cancellable(
            run_demo(once=args.once, delta=args.delta, manifests=args.manifests)
        )
    if args.command in ADMIN_COMMANDS:
        from xds_server import cli_admin

        return cli_admin.run(args)
    if args.command in PLUGIN_COMMANDS:
        result: int = importlib.import_module(PLUGIN_COMMANDS[args.command]).run(args)
        return result
    return 2


if __name__ == "__main__":
    sys.exit(main())
