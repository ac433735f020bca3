"""Bounded admin responses: every list the admin returns is one page of it.

A mesh can have thousands of proxies, a proxy thousands of resources, and a
bad deploy thousands of errors; one request must not render them all (the
JSON of 10,000 clusters is tens of megabytes, built on a worker thread but
still held in memory at once).  Every list endpoint therefore takes
`?offset=&limit=`, with a default page of `DEFAULT_LIMIT` and at most
`MAX_LIMIT`; a larger limit is a 422 naming the parameter, not a silent cap.
Responses say how many there are in all and where the next page starts.

Text is bounded too: `shown` cuts any message to the limit the sources use
and escapes what could not be encoded, so one huge or odd error cannot make
a huge or failing response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query

from xds_server.sources.limits import MAX_ERROR_CHARS, clip

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
"""Items in a page when the request does not say."""
MAX_LIMIT = 1000
"""Items a page may hold at most."""
MAX_OFFSET = 2**31 - 1
MAX_NAMES_SHOWN = 100
"""Names listed inline (a subscription, the resources a NACK blames); the count is given."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page:
    """Which slice of a list to return: `limit` items from `offset`."""

    offset: int = 0
    limit: int = DEFAULT_LIMIT

    def of(self, items: Sequence[T]) -> list[T]:
        return list(items[self.offset : self.offset + self.limit])

    def next_offset(self, total: int) -> int | None:
        """Where the next page starts, or None if this one reaches the end."""
        end = self.offset + self.limit
        return end if end < total else None

    def json(self, total: int | dict[str, int]) -> dict[str, object]:
        """The paging fields of a JSON response; `total` per list when there are several."""
        largest = max(total.values(), default=0) if isinstance(total, dict) else total
        return {
            "offset": self.offset,
            "limit": self.limit,
            "total": total,
            "next_offset": self.next_offset(largest),
        }


FIRST_PAGE = Page()


def page_query(
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="How many items to skip")] = 0,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (at most {MAX_LIMIT})")
    ] = DEFAULT_LIMIT,
) -> Page:
    return Page(offset, limit)


PageQuery = Annotated[Page, Depends(page_query)]


def shown(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to `limit` characters (with an ellipsis), lone surrogates escaped."""
    cut = clip(text, limit)
    return clip(cut.encode("utf-8", "backslashreplace").decode("utf-8"), limit)


def shown_names(names: Sequence[str]) -> list[str]:
    """At most `MAX_NAMES_SHOWN` names, each bounded."""
    return [shown(name) for name in names[:MAX_NAMES_SHOWN]]
