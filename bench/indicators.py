"""Indicator speed: each batch form over a year of 1m candles beside TA-Lib, and the incremental cost.

The year is the 21 real days of ../shared/data tiled by shifting time (525,600 rows). For each
indicator: the median time of `batch` over the whole year, TA-Lib's median time for the same
function on the same arrays, their ratio, and the median cost of one incremental `update` (µs a
candle, measured over the first 100,000 candles of the year, Python call overhead included).
Parsing the CSV and building float64 arrays (the Decimal edge) are outside the timed region.

    .venv/bin/python bench/indicators.py [--runs 7] [--only EMA,SMA] [--batch-only]

--only keeps the indicators whose name starts with one of the given prefixes; --batch-only skips
the incremental column (most of the script's time).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import talib
from talib._ta_lib import MA_Type  # the stubs export it from here only

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rules.engine.indicators import (
    Adx,
    Atr,
    BollingerBands,
    CandleSeries,
    Ema,
    Indicator,
    Macd,
    Rsi,
    Sma,
    Stochastic,
    Vwap,
)

CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "binanceus-BTCUSDT-1m-2023-03-01_21.csv"
YEAR_ROWS = 365 * 24 * 60
INCREMENTAL_ROWS = 100_000


def read_year(path: Path) -> CandleSeries:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    open_time = np.array([int(datetime.fromisoformat(row["open_time"]).timestamp()) * 1000 for row in rows])
    columns = {
        name: np.array([float(row[name]) for row in rows]) for name in ("high", "low", "close", "volume")
    }
    span = int(open_time[-1] - open_time[0]) + 60_000
    copies = -(-YEAR_ROWS // len(rows))
    tiled_time = np.concatenate([open_time + span * i for i in range(copies)])[:YEAR_ROWS]
    return CandleSeries.from_columns(
        open_time_ms=tiled_time,
        **{name: np.tile(values, copies)[:YEAR_ROWS] for name, values in columns.items()},
    )


def median_time(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def update_cost(indicator: Indicator[Any, Any], candles: CandleSeries, runs: int) -> float:
    """Median µs per `update` over the first INCREMENTAL_ROWS candles."""
    columns = (candles.high, candles.low, candles.close, candles.volume, candles.open_time_ms)
    rows = list(zip(*(column[:INCREMENTAL_ROWS].tolist() for column in columns), strict=True))

    def feed() -> None:
        update = indicator.start().update
        for row in rows:
            update(*row)

    return median_time(feed, runs) / len(rows) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", default="", help="comma-separated name prefixes, e.g. EMA,SMA")
    parser.add_argument("--batch-only", action="store_true", help="skip the incremental column")
    args = parser.parse_args()
    candles = read_year(CSV)
    high, low, close = candles.high, candles.low, candles.close
    cases: list[tuple[str, Indicator[Any, Any], Callable[[], object] | None]] = [
        ("SMA(20)", Sma(20), lambda: talib.SMA(close, 20)),
        ("EMA(20)", Ema(20), lambda: talib.EMA(close, 20)),
        ("MACD(12,26,9)", Macd(), lambda: talib.MACD(close, 12, 26, 9)),
        ("BBANDS(20,2,2)", BollingerBands(), lambda: talib.BBANDS(close, 20, 2, 2, MA_Type.SMA)),
        ("RSI(14)", Rsi(), lambda: talib.RSI(close, 14)),
        ("ATR(14)", Atr(), lambda: talib.ATR(high, low, close, 14)),
        ("ADX(14)", Adx(), lambda: talib.ADX(high, low, close, 14)),
        (
            "STOCH(5,3,3)",
            Stochastic(),
            lambda: talib.STOCH(high, low, close, 5, 3, MA_Type.SMA, 3, MA_Type.SMA),
        ),
        ("VWAP (UTC day)", Vwap(), None),
    ]
    prefixes = tuple(prefix.strip().upper() for prefix in args.only.split(",") if prefix.strip())
    if prefixes:
        cases = [case for case in cases if case[0].upper().startswith(prefixes)]
    print(f"{len(candles):,} 1m candles, median of {args.runs} runs")
    print(f"{'indicator':<16}{'batch ms':>10}{'TA-Lib ms':>11}{'ratio':>9}{'update µs':>11}")
    for name, indicator, reference in cases:
        ours = median_time(partial(indicator.batch, candles), args.runs) * 1e3
        theirs = median_time(reference, args.runs) * 1e3 if reference else float("nan")
        ratio = f"{ours / theirs:7.2f}x" if reference else "-"
        reference_ms = f"{theirs:11.2f}" if reference else f"{'-':>11}"
        cost = float("nan") if args.batch_only else update_cost(indicator, candles, max(3, args.runs // 2))
        print(f"{name:<16}{ours:10.2f}{reference_ms}{ratio:>9}{cost:11.2f}")


if __name__ == "__main__":
    main()
