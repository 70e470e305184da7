"""Indicators against TA-Lib on real Binance.US 1m candles (and VWAP against pandas).

Tolerance: |ours - TA-Lib| ≤ 1e-9·|TA-Lib| + 1e-9, the absolute term for values near zero (MACD
crosses zero; oscillators touch 0). The first-value index must equal TA-Lib's lookback (its
NaN prefix) exactly. Our seeds are TA-Lib's, so values are compared from the very first one,
which is stricter than skipping TA-Lib's unstable period; `test_unstable_period_only_delays`
shows why that is sound. The Bollinger width itself is not compared: TA-Lib computes it as
sqrt(mean(x²) - mean(x)²) and loses ≈ 7 digits at BTC prices (see rules.engine.averages).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]  # pandas ships no type information
import pytest
import talib
from talib._ta_lib import MA_Type  # the stubs export it from here only

from marketdata.tests.shared_data import SHARED_DATA
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

DATA = SHARED_DATA
CSV = DATA / "binanceus-BTCUSDT-1m-2023-03-01_21.csv"

pytestmark = pytest.mark.skipif(
    not CSV.exists(), reason=f"reference candles not found at {CSV} (shared/data beside the repository)"
)

RTOL = ATOL = 1e-9


@pytest.fixture(scope="module")
def candles() -> CandleSeries:
    with CSV.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 30_240
    return CandleSeries.from_columns(
        open_time_ms=[int(datetime.fromisoformat(row["open_time"]).timestamp()) * 1000 for row in rows],
        high=[float(row["high"]) for row in rows],
        low=[float(row["low"]) for row in rows],
        close=[float(row["close"]) for row in rows],
        volume=[float(row["volume"]) for row in rows],
    )


def reference(candles: CandleSeries, indicator: Indicator[Any, Any]) -> list[np.ndarray]:
    """TA-Lib's outputs in the order our batch form returns them."""
    high, low, close = candles.high, candles.low, candles.close
    match indicator:
        case Sma(period=period):
            return [talib.SMA(close, period)]
        case Ema(period=period):
            return [talib.EMA(close, period)]
        case Macd(fast=fast, slow=slow, signal=signal):
            return list(talib.MACD(close, fast, slow, signal))
        case BollingerBands(period=period, up=up, down=down):
            upper, middle, lower = talib.BBANDS(close, period, up, down, MA_Type.SMA)
            return [middle, upper, lower]
        case Rsi(period=period):
            return [talib.RSI(close, period)]
        case Atr(period=period):
            return [talib.ATR(high, low, close, period)]
        case Adx(period=period):
            return [talib.ADX(high, low, close, period)]
        case Stochastic(fast_k=fast_k, slow_k=slow_k, slow_d=slow_d):
            return list(talib.STOCH(high, low, close, fast_k, slow_k, MA_Type.SMA, slow_d, MA_Type.SMA))
    raise AssertionError(f"no TA-Lib reference for {indicator}")


INDICATORS = [
    Sma(20),
    Sma(200),
    Ema(9),
    Ema(200),
    Macd(),
    Macd(5, 35, 5),
    BollingerBands(),
    BollingerBands(50, 2.5, 1.5),
    Rsi(),
    Rsi(6),
    Atr(),
    Atr(30),
    Adx(),
    Adx(7),
    Stochastic(),
    Stochastic(14, 5, 4),
]


@pytest.mark.parametrize("indicator", INDICATORS, ids=repr)
def test_matches_ta_lib(candles: CandleSeries, indicator: Indicator[Any, Any]) -> None:
    ours = indicator.batch(candles)
    columns = list(ours) if isinstance(ours, tuple) else [ours]
    for mine, theirs in zip(columns, reference(candles, indicator), strict=True):
        lookback = int(np.argmin(np.isnan(theirs)))
        assert lookback == indicator.warmup
        assert np.isnan(mine[:lookback]).all()
        np.testing.assert_allclose(mine[lookback:], theirs[lookback:], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("indicator", INDICATORS, ids=repr)
def test_incremental_matches_batch_on_real_candles(
    candles: CandleSeries, indicator: Indicator[Any, Any]
) -> None:
    state = indicator.start()
    columns = (candles.high, candles.low, candles.close, candles.volume, candles.open_time_ms)
    outputs = [state.update(*row) for row in zip(*(c.tolist() for c in columns), strict=True)]
    batch = indicator.batch(candles)
    for j, column in enumerate(batch if isinstance(batch, tuple) else (batch,)):
        picked = [np.nan if out is None else (out[j] if isinstance(out, tuple) else out) for out in outputs]
        np.testing.assert_array_equal(np.array(picked), column)


UNSTABLE: dict[str, tuple[Callable[[CandleSeries], np.ndarray], Indicator[Any, Any]]] = {
    "RSI": (lambda c: talib.RSI(c.close, 14), Rsi(14)),
    "ATR": (lambda c: talib.ATR(c.high, c.low, c.close, 14), Atr(14)),
    "ADX": (lambda c: talib.ADX(c.high, c.low, c.close, 14), Adx(14)),
    "EMA": (lambda c: talib.EMA(c.close, 30), Ema(30)),
}


@pytest.mark.parametrize("function", UNSTABLE)
def test_unstable_period_only_delays(candles: CandleSeries, function: str) -> None:
    """With TA-Lib's unstable period set, its values are ours from a later index on (as its docs advise)."""
    compute, indicator = UNSTABLE[function]
    talib.set_unstable_period(function, 100)  # type: ignore[attr-defined]  # missing from its stubs
    try:
        theirs = compute(candles)
    finally:
        talib.set_unstable_period(function, 0)  # type: ignore[attr-defined]
    assert int(np.argmin(np.isnan(theirs))) == indicator.warmup + 100
    ours = indicator.batch(candles)
    np.testing.assert_allclose(ours[indicator.warmup + 100 :], theirs[indicator.warmup + 100 :], rtol=RTOL)


def test_vwap_matches_pandas_by_utc_day(candles: CandleSeries) -> None:
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime(candles.open_time_ms, unit="ms", utc=True),
            "typical": (candles.high + candles.low + candles.close) / 3,
            "volume": candles.volume,
        }
    )
    frame["weighted"] = frame["typical"] * frame["volume"]
    by_day = frame.groupby(frame["time"].dt.date)
    expected = (by_day["weighted"].cumsum() / by_day["volume"].cumsum()).to_numpy()
    ours = Vwap().batch(candles)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))
    assert not np.isnan(ours[-1])
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert frame["time"].dt.date.nunique() == 21
