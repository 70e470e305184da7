"""Cost of one closed-candle write (the ingest writer's unit of work) by batch size.

Times `candles_upsert_closed`'s two PostgreSQL paths on the same batches: one INSERT … SELECT
FROM unnest(arrays bound server-side) … ON CONFLICT (batches up to 2,000 rows: live bursts) and
COPY into a staging table followed by one INSERT … SELECT … ON CONFLICT (larger batches:
backfills). Each batch is new rows for a new minute, as a burst of closes is. Runs on a
throw-away PostgreSQL database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis .venv/bin/python bench/candle_write.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from marketdata import services  # noqa: E402
from marketdata.services import CandleWrite, candles_upsert_closed  # noqa: E402
from marketdata.tests.factories import SymbolFactory, kline  # noqa: E402

T0 = 1_677_628_800_000


def arrays_path(writes: Sequence[CandleWrite]) -> int:
    return candles_upsert_closed(writes=writes)  # up to services._ARRAYS_MAX_ROWS rows


def copy_path(writes: Sequence[CandleWrite]) -> int:
    limit = services._ARRAYS_MAX_ROWS
    services._ARRAYS_MAX_ROWS = 0  # every batch through COPY, as batches above the limit go
    try:
        return candles_upsert_closed(writes=writes)
    finally:
        services._ARRAYS_MAX_ROWS = limit


def measure(
    write: Callable[[Sequence[CandleWrite]], int], symbols: list[int], size: int, repeats: int, minute: int
) -> tuple[float, float, int]:
    timings = []
    for n in range(repeats):
        batch = [
            CandleWrite(symbol_id, kline(open_time_ms=T0 + (minute + n) * 60_000), "ws")
            for symbol_id in symbols[:size]
        ]
        started = time.perf_counter()
        assert write(batch) == size
        timings.append((time.perf_counter() - started) * 1000)
    ordered = sorted(timings)
    return (
        statistics.median(timings),
        ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        minute + repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000,2000", help="batch sizes")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/candle_write.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    old = setup_databases(verbosity=0, interactive=False)
    try:
        sizes = [int(part) for part in args.sizes.split(",")]
        symbols = [symbol.pk for symbol in SymbolFactory.create_batch(max(sizes))]
        minute = 0
        for size in sizes:
            arrays_p50, arrays_p95, minute = measure(arrays_path, symbols, size, args.repeats, minute)
            copy_p50, copy_p95, minute = measure(copy_path, symbols, size, args.repeats, minute)
            print(
                f"{size:>5} rows: arrays p50 {arrays_p50:.1f} ms p95 {arrays_p95:.1f} ms | "
                f"COPY p50 {copy_p50:.1f} ms p95 {copy_p95:.1f} ms | "
                f"COPY / arrays {copy_p50 / arrays_p50:.2f}x"
            )
    finally:
        teardown_databases(old, verbosity=0)


if __name__ == "__main__":
    main()
