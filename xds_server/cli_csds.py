"""`xds-server status --csds`: the proxies' sync status as the xDS port's CSDS tells it.

The same question as `xds-server status`, asked the way standard xDS tools
ask (`envoy.service.status.v3.ClientStatusDiscoveryService` on the xDS port,
not the admin API), so it shows what such a tool would see: a row per proxy
and resource with its config status, the proxy's answer, the version sent and
Envoy's error for a NACK.  `-o json` prints the `ClientStatusResponse` as JSON.

The call presents the client certificate `xds-server bootstrap --cert-dir`
wrote (`--cert-dir`; plaintext without it, for `--insecure-xds`) and the
admin token (`$XDS_SERVER_ADMIN_TOKEN` or `--admin-token-file`) as
`authorization: Bearer`.  grpc is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from envoy.service.status.v3 import csds_pb2

DEFAULT_XDS_ADDRESS = "127.0.0.1:15010"
HEADERS = ("PROXY", "TYPE", "NAME", "STATUS", "CLIENT", "VERSION", "ERROR")
MAX_ERROR_SHOWN = 100
"""Characters of Envoy's error a table cell shows (`-o json` has it whole)."""


class CsdsError(Exception):
    """The call could not be made or was refused; the message says which and why."""


def add_csds_arguments(parser: argparse.ArgumentParser) -> None:
    """`--csds` and what it needs, on `xds-server status`."""
    group = parser.add_argument_group("CSDS (instead of the admin API)")
    group.add_argument(
        "--csds", action="store_true", help="ask the xDS port's Client Status Discovery Service"
    )
    group.add_argument(
        "--xds-address",
        default=DEFAULT_XDS_ADDRESS,
        metavar="HOST:PORT",
        help="the xDS port (default %(default)s)",
    )
    group.add_argument(
        "--cert-dir",
        type=Path,
        metavar="DIR",
        help="a client credential written by `xds-server bootstrap --cert-dir` "
        "(without it: plaintext, for --insecure-xds)",
    )
    group.add_argument("--node", metavar="PREFIX", help="only nodes whose id starts with PREFIX")


def _read(directory: Path, name: str) -> bytes:
    try:
        return (directory / name).read_bytes()
    except OSError as error:
        raise CsdsError(f"cannot read {directory / name}: {error.strerror or error}") from None


def fetch_client_status(
    address: str,
    cert_dir: Path | None,
    token: str | None,
    node_prefix: str | None = None,
    timeout: float = 5.0,
) -> csds_pb2.ClientStatusResponse:
    """One FetchClientStatus on `address`; CsdsError naming the status when it fails."""
    import grpc
    from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
    from envoy.type.matcher.v3 import node_pb2, string_pb2

    from xds_server.security.xds_client import CERTIFICATE_FILE, KEY_FILE, ROOTS_FILE

    request = csds_pb2.ClientStatusRequest()
    if node_prefix:
        request.node_matchers.append(
            node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(prefix=node_prefix))
        )
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    if cert_dir is None:
        channel = grpc.insecure_channel(address)
    else:
        credentials = grpc.ssl_channel_credentials(
            _read(cert_dir, ROOTS_FILE),
            _read(cert_dir, KEY_FILE),
            _read(cert_dir, CERTIFICATE_FILE),
        )
        # The server's certificate names localhost and its listen address besides its SPIFFE ID.
        options = [("grpc.ssl_target_name_override", "localhost")]
        channel = grpc.secure_channel(address, credentials, options)
    try:
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        response: csds_pb2.ClientStatusResponse = stub.FetchClientStatus(
            request, metadata=metadata, timeout=timeout
        )
    except grpc.RpcError as error:
        code: Any = error.code()
        details = error.details()
        raise CsdsError(f"CSDS on {address}: {code.name}: {details}") from None
    finally:
        channel.close()
    return response


def csds_text(response: csds_pb2.ClientStatusResponse, output: str) -> str:
    """A row per proxy and resource, or the response as JSON."""
    from envoy.admin.v3.config_dump_shared_pb2 import ClientResourceStatus
    from envoy.service.status.v3 import csds_pb2
    from google.protobuf import json_format

    from xds_server.resources import TYPES

    if output == "json":
        shown: str = json_format.MessageToJson(response, preserving_proto_field_name=True)
        return shown + "\n"
    if not response.config:
        return "no proxies connected\n"
    from xds_server.cli_admin import table

    rows = []
    for config in response.config:
        for entry in config.generic_xds_configs:
            known = TYPES.get(entry.type_url)
            error = " ".join(entry.error_state.details.split())
            if len(error) > MAX_ERROR_SHOWN:
                error = error[: MAX_ERROR_SHOWN - 1] + "…"
            rows.append(
                (
                    config.node.id,
                    known.short_name if known is not None else entry.type_url,
                    entry.name,
                    csds_pb2.ConfigStatus.Name(entry.config_status),
                    ClientResourceStatus.Name(entry.client_status),
                    entry.version_info or "-",
                    error or "-",
                )
            )
    return table(HEADERS, rows)


def run_csds(args: argparse.Namespace) -> int:
    """`xds-server status --csds`: 0 done, 1 the call failed or was refused."""
    from xds_server.admin.auth import client_token

    try:
        response = fetch_client_status(
            args.xds_address,
            args.cert_dir,
            client_token(getattr(args, "admin_token_file", None)),
            args.node,
            args.timeout,
        )
    except CsdsError as error:
        print(f"xds-server status --csds: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(csds_text(response, args.output))
    return 0
