"""Resampling real Binance.US 1m candles, checked exactly against pandas.

pandas reads the CSV on its own and resamples integers (each decimal times 10**8, the most places
an exchange string has), so the comparison is exact, never within a float tolerance. Only the
buckets pandas counts as full are compared: pandas also emits partial and empty ones.
"""

from __future__ import annotations

import csv
from datetime import datetime
from decimal import Decimal

import pandas as pd  # type: ignore[import-untyped]  # pandas ships no type information
import pytest

from marketdata.core.resample import CandleArrays, ClosedCandle, resample, resample_history
from marketdata.core.timeframes import Timeframe
from marketdata.tests.shared_data import SHARED_DATA

DATA = SHARED_DATA
CSV = DATA / "binanceus-BTCUSDT-1m-2023-03-01_21.csv"

pytestmark = pytest.mark.skipif(
    not CSV.exists(), reason=f"reference candles not found at {CSV} (shared/data beside the repository)"
)

M1 = Timeframe.M1
UNITS = 10**8
RULES = {
    Timeframe.M3: "3min",
    Timeframe.M5: "5min",
    Timeframe.M10: "10min",
    Timeframe.M15: "15min",
    Timeframe.H1: "1h",
    Timeframe.H4: "4h",
}
PRICES_AND_VOLUME = ("open", "high", "low", "close", "volume")

# Rows taken out for the gap cases: every 997th minute (in with_gaps), a whole hour, and the
# first minute of a 4h bucket.
GAPS = {f"2023-03-05 10:{minute:02d}:00+00:00" for minute in range(60)} | {"2023-03-10 04:00:00+00:00"}


def all_rows() -> list[dict[str, str]]:
    with CSV.open(newline="") as file:
        return list(csv.DictReader(file))


def with_gaps(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [row for i, row in enumerate(rows) if i % 997 != 500 and row["open_time"] not in GAPS]


@pytest.fixture(scope="module", params=["complete", "with gaps"])
def rows(request: pytest.FixtureRequest) -> list[dict[str, str]]:
    rows = all_rows()
    assert len(rows) == 30_240
    return rows if request.param == "complete" else with_gaps(rows)


def ours(rows: list[dict[str, str]]) -> CandleArrays:
    candles = [
        ClosedCandle(
            M1,
            open_time_ms(row["open_time"]),
            open=Decimal(row["open"]),
            high=Decimal(row["high"]),
            low=Decimal(row["low"]),
            close=Decimal(row["close"]),
            volume=Decimal(row["volume"]),
            quote_volume=Decimal(0),
            trades=0,
        )
        for row in rows
    ]
    return CandleArrays.from_candles(M1, candles)


def pandas_full_buckets(rows: list[dict[str, str]], target: Timeframe) -> pd.DataFrame:
    """pandas' resample of the same rows, as integer units of 10**-8, full buckets only."""
    frame = pd.DataFrame(
        {name: [units(row[name]) for row in rows] for name in PRICES_AND_VOLUME},
        index=pd.to_datetime([row["open_time"] for row in rows], utc=True),
        dtype="Int64",  # nullable integers: empty buckets stay integers (<NA>), never floats
    )
    bins = frame.resample(RULES[target], closed="left", label="left", origin="epoch")
    result = bins.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    full = bins["open"].count() == target.ms // M1.ms
    return result[full]


def units(text: str) -> int:
    scaled = Decimal(text).scaleb(8)
    assert scaled == scaled.to_integral_value(), f"{text} has more than 8 decimal places"
    return int(scaled)


def as_rows(derived: CandleArrays) -> list[tuple[int, ...]]:
    return [
        (c.open_time_ms, *(units(str(getattr(c, name))) for name in PRICES_AND_VOLUME))
        for c in derived.to_candles()
    ]


def pandas_rows(frame: pd.DataFrame) -> list[tuple[int, ...]]:
    assert all(str(dtype) == "Int64" for dtype in frame.dtypes)
    open_times = frame.index.as_unit("ms").asi8.tolist()
    values = zip(*(frame[name].tolist() for name in PRICES_AND_VOLUME), strict=True)
    return [(t, *v) for t, v in zip(open_times, values, strict=True)]


@pytest.mark.parametrize("target", list(RULES), ids=str)
def test_every_timeframe_equals_pandas_exactly(rows, target):
    expected = pandas_rows(pandas_full_buckets(rows, target))
    assert len(expected) > 0
    assert as_rows(resample(ours(rows), target)) == expected


def test_the_default_map_equals_pandas_and_ten_minutes_agree_by_both_routes(rows):
    derived = resample_history(ours(rows))
    assert as_rows(derived[(Timeframe.H1, Timeframe.H4)]) == pandas_rows(
        pandas_full_buckets(rows, Timeframe.H4)
    )
    by_ones = derived[(M1, Timeframe.M10)].to_candles()
    by_fives = derived[(Timeframe.M5, Timeframe.M10)].to_candles()
    assert len(by_ones) > 0
    assert [exact(c) for c in by_ones] == [exact(c) for c in by_fives]


def test_open_and_close_keep_the_exchange_strings(rows):
    by_time = {open_time_ms(row["open_time"]): row for row in rows}
    for candle in resample(ours(rows), Timeframe.M15).to_candles():
        assert format(candle.open, "f") == by_time[candle.open_time_ms]["open"]
        assert format(candle.close, "f") == by_time[candle.open_time_ms + 14 * 60_000]["close"]


def test_the_gaps_take_out_exactly_the_buckets_they_touch():
    every_row, kept = all_rows(), with_gaps(all_rows())
    removed = {row["open_time"] for row in every_row} - {row["open_time"] for row in kept}
    touched = {Timeframe.H1.bucket_start(open_time_ms(text)) for text in removed}
    full = resample(ours(every_row), Timeframe.H1).open_time_ms.tolist()
    gappy = resample(ours(kept), Timeframe.H1).open_time_ms.tolist()
    assert len(full) == 21 * 24
    assert len(touched) == 32  # 30 single minutes, the hour, the 4h bucket's first minute
    assert gappy == [t for t in full if t not in touched]


def open_time_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1000


def exact(c: ClosedCandle) -> tuple[object, ...]:
    return (c.open_time_ms, *(value.as_tuple() for value in c.decimal_values()), c.trades, c.imputed_inputs)
