"""Cost of one closed-candle write (the ingest writer's unit of work) by batch size.

Times `candles_upsert_closed` (COPY into a staging table, then one INSERT … SELECT … ON
CONFLICT) against the reference it was chosen over: one INSERT … SELECT FROM unnest(arrays)
… ON CONFLICT. Each batch is new rows for a new minute, as a burst of closes is. Runs on a
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
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from django.utils import timezone  # noqa: E402

from marketdata.services import _COLUMN_LIST, _ON_CONFLICT, CandleWrite, candles_upsert_closed  # noqa: E402
from marketdata.tests.factories import SymbolFactory, kline  # noqa: E402

T0 = 1_677_628_800_000
_UNNEST = (
    f"INSERT INTO marketdata_candle ({_COLUMN_LIST}) SELECT * FROM unnest("
    "%s::bigint[], %s::varchar[], %s::timestamptz[], %s::numeric[], %s::numeric[], %s::numeric[], "
    "%s::numeric[], %s::numeric[], %s::numeric[], %s::int[], %s::bool[], %s::bool[], %s::varchar[], "
    f"%s::timestamptz[]) {_ON_CONFLICT}"
)


def unnest_upsert(writes: Sequence[CandleWrite]) -> int:
    now = timezone.now()
    columns: list[list[object]] = [[] for _ in range(14)]
    for write in writes:
        k = write.kline
        values = (
            write.symbol_id,
            k.timeframe.value,
            datetime.fromtimestamp(k.open_time_ms / 1000, tz=UTC),
            *(format(getattr(k, f), "f") for f in ("open", "high", "low", "close", "volume", "quote_volume")),
            k.trades,
            True,
            write.imputed,
            write.source,
            now,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    with connection.cursor() as cursor:
        cursor.execute(_UNNEST, columns)
        return int(cursor.rowcount)


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
    parser.add_argument("--sizes", default="1,100,1000", help="batch sizes")
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
            ours_p50, ours_p95, minute = measure(
                lambda w: candles_upsert_closed(writes=w), symbols, size, args.repeats, minute
            )
            ref_p50, ref_p95, minute = measure(unnest_upsert, symbols, size, args.repeats, minute)
            print(
                f"{size:>5} rows: COPY+upsert p50 {ours_p50:.1f} ms p95 {ours_p95:.1f} ms | "
                f"unnest reference p50 {ref_p50:.1f} ms p95 {ref_p95:.1f} ms | "
                f"ratio {ref_p50 / ours_p50:.2f}x"
            )
    finally:
        teardown_databases(old, verbosity=0)


if __name__ == "__main__":
    main()
