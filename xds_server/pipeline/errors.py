"""The errors the pipeline keeps: bounded in number and in length, whatever the churn.

Every error is about one thing (an object a source sent, a node, a
translation unit such as one Service's clusters), so it is kept in an
`ErrorTable` keyed by that thing: a new error for the same key replaces the
old one, and fixing or deleting the thing clears it.  Nothing is appended per
event.  Keys that never come back to be cleared (nodes that connect once with
bad metadata, say) are still bounded: past `MAX_KEPT_ERRORS` the oldest is
evicted, and the table counts how many were.

Texts go through `bounded`: cut to `MAX_ERROR_CHARS` with an ellipsis (a
5 MB name must not make a 10 MB error), and with lone surrogates escaped.
Those are exactly the values that make translation raise, and an error that
quotes one could not itself be logged, sent as JSON bytes or as HTML.

The pipeline may not import `sources`, so the limit is restated here; it
equals `xds_server.sources.limits.MAX_ERROR_CHARS` (a test holds them equal).
"""

from __future__ import annotations

import logging
import traceback
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 1000
"""No error message the pipeline keeps or logs is longer than this."""
MAX_KEPT_ERRORS = 10_000
"""Errors one table holds at most; past it the oldest goes."""
MAX_TRACEBACK_CHARS = 4000
"""The frames of an unexpected exception, as logged (its message is logged bounded)."""

K = TypeVar("K", bound=Hashable)


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` with lone surrogates escaped, cut to `limit` characters with an ellipsis."""
    cut = len(text) > limit
    # Escape only what can be shown: never copy a multi-megabyte value whole.
    safe = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return safe[: limit - 1] + "…" if cut or len(safe) > limit else safe


def describe(error: BaseException) -> str:
    """`ExceptionType: message`, bounded, even when `str(error)` itself fails."""
    try:
        message = str(error)
    except Exception:  # an exception whose __str__ raises still deserves a name
        message = "(unprintable)"
    return bounded(f"{type(error).__name__}: {message}" if message else type(error).__name__)


def frames(error: BaseException) -> str:
    """Where `error` was raised (its traceback frames, without its unbounded message)."""
    return bounded("".join(traceback.format_tb(error.__traceback__)), MAX_TRACEBACK_CHARS)


class ErrorTable(Generic[K]):
    """Errors keyed by what they are about; replaced, never appended; at most `cap` kept."""

    def __init__(self, cap: int = MAX_KEPT_ERRORS) -> None:
        self._cap = cap
        self._errors: OrderedDict[K, str] = OrderedDict()
        self.evicted = 0
        """How many errors were dropped to stay within `cap` (oldest first)."""

    def set(self, key: K, message: str) -> None:
        self._errors.pop(key, None)
        self._errors[key] = bounded(message)
        while len(self._errors) > self._cap:
            self._errors.popitem(last=False)
            self.evicted += 1

    def clear(self, key: K) -> None:
        self._errors.pop(key, None)

    def get(self, key: K) -> str | None:
        return self._errors.get(key)

    def items(self) -> list[tuple[K, str]]:
        """Every error, oldest first."""
        return list(self._errors.items())

    def __contains__(self, key: object) -> bool:
        return key in self._errors

    def __len__(self) -> int:
        return len(self._errors)
