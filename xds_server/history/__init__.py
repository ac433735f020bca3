"""Push history: each generation from its source change to every proxy's ACK or NACK."""

from xds_server.history.push_history import LATENCY_BUCKETS, PushHistory
from xds_server.history.views import (
    NameList,
    ProxyPushView,
    ProxyStatus,
    PushCounts,
    PushDetail,
    PushSummary,
    SentType,
)

__all__ = [
    "LATENCY_BUCKETS",
    "NameList",
    "ProxyPushView",
    "ProxyStatus",
    "PushCounts",
    "PushDetail",
    "PushHistory",
    "PushSummary",
    "SentType",
]
