"""Resampling speed: one year of 1m candles into every derived timeframe, beside pandas.

The year is the 21 real days of ../shared/data tiled by shifting time (525,600 rows). It goes
through the whole default derivation map (1m→3m, 5m, 10m, 15m, 1h; 5m→10m; 1h→4h) with
`marketdata.core.resample.resample_history`, and through the same map with pandas
`resample(closed="left", label="left")`. pandas is the reference for speed only: it works on
float64 and also emits partial and empty buckets. Parsing the CSV and building Decimals at the
edge are timed apart from the resampling.

    .venv/bin/python bench/resample.py [--runs 7]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]  # pandas ships no type information

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from marketdata.core.resample import (
    DEFAULT_DERIVATIONS,
    CandleArrays,
    FixedPointColumn,
    resample_history,
)
from marketdata.core.timeframes import Timeframe

CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "binanceus-BTCUSDT-1m-2023-03-01_21.csv"
YEAR_ROWS = 365 * 24 * 60
PANDAS_RULES = {
    Timeframe.M3: "3min",
    Timeframe.M5: "5min",
    Timeframe.M10: "10min",
    Timeframe.M15: "15min",
    Timeframe.H1: "1h",
    Timeframe.H4: "4h",
}
PANDAS_AGG = {
    "open": "first",
    "high": "max",
    "low": "min",
    "close": "last",
    "volume": "sum",
    "quote_volume": "sum",
    "trades": "sum",
}


def read_days(path: Path) -> CandleArrays:
    """The CSV as 1m arrays. It has no quote volume or trade count: those are zero."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    zero = [Decimal(0)] * len(rows)
    return CandleArrays(
        timeframe=Timeframe.M1,
        open_time_ms=np.array(
            [int(datetime.fromisoformat(row["open_time"]).timestamp()) * 1000 for row in rows], dtype=np.int64
        ),
        open=FixedPointColumn.from_decimals([Decimal(row["open"]) for row in rows]),
        high=FixedPointColumn.from_decimals([Decimal(row["high"]) for row in rows]),
        low=FixedPointColumn.from_decimals([Decimal(row["low"]) for row in rows]),
        close=FixedPointColumn.from_decimals([Decimal(row["close"]) for row in rows]),
        volume=FixedPointColumn.from_decimals([Decimal(row["volume"]) for row in rows]),
        quote_volume=FixedPointColumn.from_decimals(zero),
        trades=np.zeros(len(rows), dtype=np.int64),
        imputed_inputs=np.zeros(len(rows), dtype=np.int64),
    )


def tile(days: CandleArrays, rows: int) -> CandleArrays:
    """`days` repeated end to end, each copy shifted by the span of the ones before, cut to `rows`."""
    copies = -(-rows // len(days))
    span = int(days.open_time_ms[-1] - days.open_time_ms[0]) + days.timeframe.ms
    shifts = np.repeat(np.arange(copies, dtype=np.int64) * span, len(days))
    index = np.tile(np.arange(len(days)), copies)[:rows]
    tiled = days.take(index)
    return CandleArrays(
        timeframe=tiled.timeframe,
        open_time_ms=tiled.open_time_ms + shifts[:rows],
        open=tiled.open,
        high=tiled.high,
        low=tiled.low,
        close=tiled.close,
        volume=tiled.volume,
        quote_volume=tiled.quote_volume,
        trades=tiled.trades,
        imputed_inputs=tiled.imputed_inputs,
    )


def as_frame(candles: CandleArrays) -> pd.DataFrame:
    # Float conversion for pandas happens here, in the benchmark only: fixed point → float64.
    def floats(column: FixedPointColumn) -> npt.NDArray[np.float64]:
        return column.units.astype(np.float64) / 10.0**column.scale

    return pd.DataFrame(
        {
            "open": floats(candles.open),
            "high": floats(candles.high),
            "low": floats(candles.low),
            "close": floats(candles.close),
            "volume": floats(candles.volume),
            "quote_volume": floats(candles.quote_volume),
            "trades": candles.trades,
        },
        index=pd.to_datetime(candles.open_time_ms, unit="ms", utc=True),
    )


def pandas_history(frame: pd.DataFrame) -> dict[tuple[Timeframe, Timeframe], pd.DataFrame]:
    """The same map as `resample_history`, each source taken from an earlier target if needed."""
    available = {Timeframe.M1: frame}
    derived = {}
    for source, target in DEFAULT_DERIVATIONS:
        bins = available[source].resample(PANDAS_RULES[target], closed="left", label="left", origin="epoch")
        result = bins.agg(PANDAS_AGG)
        derived[(source, target)] = result
        available.setdefault(target, result)
    return derived


def timed_ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each; the median is quoted")
    args = parser.parse_args()

    started = time.perf_counter()
    days = read_days(CSV)
    parse_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    year = tile(days, YEAR_ROWS)
    tile_ms = (time.perf_counter() - started) * 1000
    frame = as_frame(year)
    print(f"parse {len(days):,} CSV rows to fixed point: {parse_ms:.0f} ms")
    print(f"tile to {len(year):,} rows: {tile_ms:.0f} ms")

    derived = resample_history(year)
    by_1m = derived[(Timeframe.M1, Timeframe.M10)]
    by_5m = derived[(Timeframe.M5, Timeframe.M10)]
    if by_1m.to_candles() != by_5m.to_candles():
        raise SystemExit("1m→10m and 5m→10m differ")
    print("derived: " + ", ".join(f"{s}→{t} {len(c):,}" for (s, t), c in derived.items()))
    edge_ms = timed_ms(lambda: [candles.to_candles() for candles in derived.values()])
    print(f"edge, every derived row back to Decimal candles (not in the timed region): {edge_ms:.0f} ms")

    ours: list[float] = []
    theirs: list[float] = []
    for run in range(1, args.runs + 1):
        ours.append(timed_ms(lambda: resample_history(year)))
        theirs.append(timed_ms(lambda: pandas_history(frame)))
        print(f"run {run}: resample_history {ours[-1]:.1f} ms, pandas {theirs[-1]:.1f} ms")
    mine, reference = statistics.median(ours), statistics.median(theirs)
    print(
        f"median of {args.runs}: resample_history {mine:.1f} ms, pandas {reference:.1f} ms,"
        f" pandas / ours = {reference / mine:.2f}x (target: ours ≤ 150 ms)"
    )


if __name__ == "__main__":
    main()
