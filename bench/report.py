"""How the benchmarks print their figures: a plain text table, then one JSON line.

The table is for people; the last line of output is a single JSON object for
scripts (and the smoke tests), so a figure is never scraped from prose.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import statistics
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned first column and right-aligned figures, separated by two spaces."""
    cells = [[str(h) for h in header]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    rule = "-" * len(line(cells[0]))
    return "\n".join([title, rule, line(cells[0]), rule, *(line(row) for row in cells[1:]), rule])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def emit(tables: Sequence[str], result: dict[str, Any], out: TextIO | None = None) -> None:
    """Print the tables, then `result` as the final line of compact JSON."""
    stream = out if out is not None else sys.stdout
    for text in tables:
        print(text, file=stream)
        print(file=stream)
    print(json.dumps(result, sort_keys=True, separators=(",", ":")), file=stream)
    stream.flush()


def main(
    argv: Sequence[str] | None,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any] | Awaitable[dict[str, Any]]],
    tables: Callable[[dict[str, Any]], list[str]],
) -> int:
    """A benchmark's command line: parse `argv`, log warnings only, `run` (a coroutine
    function runs in its own event loop), then `emit` its tables and its result."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    measured = run(args)
    result = asyncio.run(measured) if inspect.isawaitable(measured) else measured
    emit(tables(result), result)
    return 0
