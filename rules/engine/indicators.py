"""Technical indicators for the rules engine: one import for all of them.

Pure numeric code (no Django): inputs are float64. Prices and volumes are `Decimal` in the rest of
the app and become float64 where a `CandleSeries` is built (`CandleSeries.from_columns`) or where a
closed candle is passed to `update`; nothing here converts back.

Each indicator is a frozen dataclass of validated parameters (a bad one raises ValueError naming
it) with two forms that give bit-identical float64 values (see `rules.engine.base`):
`batch(candles)` over a whole history and `start()` / `from_history(candles)` for the incremental
state whose `update(high, low, close, volume, open_time_ms)` takes one closed candle.
`warmup` is the index of the first value. Seeding follows TA-Lib: see each module's docstring.

| indicator | module | TA-Lib |
| --- | --- | --- |
| `Sma(period=20)`, `Ema(period=20)` | averages | SMA, EMA |
| `Macd(fast=12, slow=26, signal=9)` | averages | MACD |
| `BollingerBands(period=20, up=2.0, down=2.0)` | averages | BBANDS (SMA) |
| `Rsi(period=14)`, `Atr(period=14)`, `Adx(period=14)` | wilder | RSI, ATR, ADX |
| `Stochastic(fast_k=5, slow_k=3, slow_d=3)` | stochastic | STOCH (SMA) |
| `Vwap()` (session = UTC day) | vwap | none |
"""

from __future__ import annotations

from rules.engine.averages import (
    BandsArrays,
    BandsValue,
    BollingerBands,
    Ema,
    Macd,
    MacdArrays,
    MacdValue,
    Sma,
)
from rules.engine.base import CandleSeries, Indicator, IndicatorState
from rules.engine.stochastic import Stochastic, StochasticArrays, StochasticValue
from rules.engine.vwap import Vwap
from rules.engine.wilder import Adx, Atr, Rsi

__all__ = [
    "Adx",
    "Atr",
    "BandsArrays",
    "BandsValue",
    "BollingerBands",
    "CandleSeries",
    "Ema",
    "Indicator",
    "IndicatorState",
    "Macd",
    "MacdArrays",
    "MacdValue",
    "Rsi",
    "Sma",
    "Stochastic",
    "StochasticArrays",
    "StochasticValue",
    "Vwap",
]
