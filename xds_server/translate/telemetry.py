"""Access logs: one compact stdout line per request or connection.

Every listener logs to the sidecar's stdout so that `kubectl logs` (or a test
reading Envoy's output) shows where each request went: the direction, the
response code and flags, the upstream cluster and the upstream host.  The
formats are fixed strings, so identical listeners serialize identically.
"""

from __future__ import annotations

import logging

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2

from xds_server.translate.core import packed

logger = logging.getLogger(__name__)

STDOUT_ACCESS_LOG = "envoy.access_loggers.stdout"

HTTP_LOG_FORMAT = (
    "[%START_TIME%] {direction} "
    '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %DURATION%ms "
    "authority=%REQ(:AUTHORITY)% cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST%\n"
)

TCP_LOG_FORMAT = (
    "[%START_TIME%] {direction} tcp %RESPONSE_FLAGS% %DURATION%ms "
    "rx=%BYTES_RECEIVED% tx=%BYTES_SENT% "
    "cluster=%UPSTREAM_CLUSTER% upstream=%UPSTREAM_HOST%\n"
)


def stdout_log(text_format: str) -> accesslog_pb2.AccessLog:
    log_format = substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=text_format)
    )
    return accesslog_pb2.AccessLog(
        name=STDOUT_ACCESS_LOG,
        typed_config=packed(stream_pb2.StdoutAccessLog(log_format=log_format)),
    )


def http_access_log(direction: str) -> accesslog_pb2.AccessLog:
    """For an HTTP connection manager; `direction` is "inbound" or "outbound"."""
    return stdout_log(HTTP_LOG_FORMAT.format(direction=direction))


def tcp_access_log(direction: str) -> accesslog_pb2.AccessLog:
    """For a TCP proxy; `direction` is "inbound" or "outbound"."""
    return stdout_log(TCP_LOG_FORMAT.format(direction=direction))
