"""Copy a whole installation between storage backends (`coffer operator migrate`), sealed data as it is.

Rows go through the backend-neutral form of `Storage.export_table`; the copy is then verified table by table: the
same row count and the same SHA-256 over the rows in a canonical order (so a different row order in the two
databases does not matter, but any lost or altered byte does)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from coffer.storage.base import TABLES, Storage


class CopyError(Exception):
    """The destination is not empty, or the copy does not verify."""


@dataclass(frozen=True)
class TableSummary:
    table: str
    rows: int
    sha256: str


def _canonical(row: dict[str, Any]) -> bytes:
    """One row as bytes that are the same whichever backend it came from (bytes as hex, keys sorted)."""
    return orjson.dumps(
        {k: ("hex:" + v.hex()) if isinstance(v, bytes) else v for k, v in row.items()}, option=orjson.OPT_SORT_KEYS
    )


def summarize(storage: Storage, table: str) -> TableSummary:
    lines = sorted(_canonical(row) for row in storage.export_table(table))
    digest = hashlib.sha256()
    for line in lines:
        digest.update(hashlib.sha256(line).digest())
    return TableSummary(table, len(lines), digest.hexdigest())


def copy_installation(
    source: Storage, destination: Storage, progress: Callable[[str, int], None] | None = None
) -> list[TableSummary]:
    """Copy every table; refuse a destination that holds anything. Returns the verified summary per table."""
    occupied = [t for t in TABLES if next(iter(destination.export_table(t)), None) is not None]
    if occupied:
        raise CopyError(f"The destination is not empty (tables {', '.join(occupied)}); refusing to overwrite it.")

    def counted(table: str) -> Iterator[dict[str, Any]]:
        for row in source.export_table(table):
            yield row
            if progress is not None:
                progress(table, 1)

    for table in TABLES:
        destination.import_table(table, counted(table))
    summaries = []
    for table in TABLES:
        want, got = summarize(source, table), summarize(destination, table)
        if want != got:
            raise CopyError(
                f"Table {table} does not verify: {want.rows} rows (sha256 {want.sha256[:16]}…) in the source, "
                f"{got.rows} rows (sha256 {got.sha256[:16]}…) in the destination."
            )
        summaries.append(want)
    return summaries


def row_counts(storage: Storage) -> dict[str, int]:
    return {table: sum(1 for _ in storage.export_table(table)) for table in TABLES}
