"""Moving averages on the close: SMA, EMA, MACD and Bollinger Bands, following TA-Lib's seeding.

- SMA(n): first value at index n-1. The window's sum is carried (add the newest, drop the oldest)
  and recomputed exactly every `recurrence.CHUNK` outputs.
- EMA(n): k = 2/(n+1); seeded, as TA-Lib does, with the SMA of the first n closes at index n-1,
  then y = (1-k)·y + k·x. TA-Lib writes y + k·(x-y): the rounding differs, not the value
  (≈ 1e-16 relative).
- MACD(fast, slow, signal): line = EMA(fast) - EMA(slow). As in TA-Lib the fast EMA is seeded on
  the `fast` closes that end where the slow EMA's seed ends (index slow-1), not on the first
  `fast` closes, so both start together. The signal is an EMA of the line, seeded with the SMA
  of its first `signal` values. Line, signal and histogram are all NaN before index
  slow + signal - 2, as TA-Lib returns them.
- Bollinger Bands(n, up, down): middle = SMA(n); upper/lower = middle ± multiplier · sd, sd the
  population standard deviation (divide by n), as TA-Lib's BBANDS with its default SMA. The sum
  of squared deviations is carried with Welford's sliding update and recomputed exactly (two
  passes over the window) every `recurrence.CHUNK` outputs. TA-Lib computes sd² = mean(x²) - mean(x)², which
  cancels badly at BTC prices (sd good to ≈ 1e-7 relative); the bands agree to ≈ 1e-11.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rules.engine import recurrence
from rules.engine.base import (
    CandleSeries,
    FloatArray,
    Indicator,
    IndicatorState,
    check_multiplier,
    check_period,
    nan_array,
)
from rules.engine.recurrence import (
    LinearRecurrence,
    RollingSum,
    chunk_starts,
    linear_recurrence,
    restarted_total,
    rolling_sum,
    sum_in_order,
)


def ema_batch(values: FloatArray, period: int) -> FloatArray:
    """EMA of `values` seeded with the SMA of the first `period` of them (NaN before)."""
    out = nan_array(values.size)
    if values.size < period:
        return out
    k = 2.0 / (period + 1)
    seed = sum_in_order(values[:period]) / period
    out[period - 1] = seed
    out[period:] = linear_recurrence(1.0 - k, k * values[period:], seed)
    return out


class EmaStep:
    """The step form of `ema_batch`."""

    __slots__ = ("_a", "_count", "_k", "_period", "_recurrence", "_total")

    def __init__(self, period: int) -> None:
        self._period = period
        self._k = 2.0 / (period + 1)
        self._a = 1.0 - self._k
        self._total = 0.0
        self._count = 0
        self._recurrence: LinearRecurrence | None = None

    def push(self, value: float) -> float | None:
        if self._recurrence is not None:
            return self._recurrence.step(self._a, self._k * value)
        self._total = self._total + value
        self._count += 1
        if self._count < self._period:
            return None
        seed = self._total / self._period
        self._recurrence = LinearRecurrence(seed)
        return seed


@dataclass(frozen=True)
class Sma(Indicator[float, FloatArray]):
    """Simple moving average of the close over `period` candles."""

    period: int = 20

    def __post_init__(self) -> None:
        check_period("period", self.period, 2)

    @property
    def warmup(self) -> int:
        return self.period - 1

    def batch(self, candles: CandleSeries) -> FloatArray:
        return rolling_sum(candles.close, self.period) / self.period

    def start(self) -> SmaState:
        return SmaState(self.period)


class SmaState(IndicatorState[float]):
    __slots__ = ("_period", "_sum")

    def __init__(self, period: int) -> None:
        self._period = period
        self._sum = RollingSum(period)

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> float | None:
        total = self._sum.push(close)
        return None if total is None else total / self._period


@dataclass(frozen=True)
class Ema(Indicator[float, FloatArray]):
    """Exponential moving average of the close, k = 2/(period+1), seeded with an SMA."""

    period: int = 20

    def __post_init__(self) -> None:
        check_period("period", self.period, 2)

    @property
    def warmup(self) -> int:
        return self.period - 1

    def batch(self, candles: CandleSeries) -> FloatArray:
        return ema_batch(candles.close, self.period)

    def start(self) -> EmaState:
        return EmaState(self.period)


class EmaState(IndicatorState[float]):
    __slots__ = ("_ema",)

    def __init__(self, period: int) -> None:
        self._ema = EmaStep(period)

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> float | None:
        return self._ema.push(close)


class MacdValue(NamedTuple):
    macd: float
    signal: float
    histogram: float


class MacdArrays(NamedTuple):
    macd: FloatArray
    signal: FloatArray
    histogram: FloatArray


@dataclass(frozen=True)
class Macd(Indicator[MacdValue, MacdArrays]):
    """MACD line, signal and histogram (TA-Lib's MACD with EMAs of the close)."""

    fast: int = 12
    slow: int = 26
    signal: int = 9

    def __post_init__(self) -> None:
        check_period("fast", self.fast, 2)
        check_period("slow", self.slow, 2)
        check_period("signal", self.signal, 1)
        if self.fast >= self.slow:
            raise ValueError(f"fast must be shorter than slow, got fast={self.fast}, slow={self.slow}")

    @property
    def warmup(self) -> int:
        return self.slow + self.signal - 2

    def batch(self, candles: CandleSeries) -> MacdArrays:
        close = candles.close
        size = close.size
        macd, signal, histogram = nan_array(size), nan_array(size), nan_array(size)
        if size > self.warmup:
            offset = self.slow - self.fast
            line = (
                ema_batch(close[offset:], self.fast)[self.fast - 1 :]
                - ema_batch(close, self.slow)[self.slow - 1 :]
            )
            smoothed = _signal_batch(line, self.signal)
            start = self.warmup
            macd[start:] = line[self.signal - 1 :]
            signal[start:] = smoothed[self.signal - 1 :]
            histogram[start:] = macd[start:] - signal[start:]
        return MacdArrays(macd, signal, histogram)

    def start(self) -> MacdState:
        return MacdState(self.fast, self.slow, self.signal)


def _signal_batch(line: FloatArray, period: int) -> FloatArray:
    """The signal EMA; with period 1, k = 1 and the signal is the line itself."""
    return line.copy() if period == 1 else ema_batch(line, period)


class _SignalStep:
    __slots__ = ("_ema",)

    def __init__(self, period: int) -> None:
        self._ema = None if period == 1 else EmaStep(period)

    def push(self, value: float) -> float | None:
        return value if self._ema is None else self._ema.push(value)


class MacdState(IndicatorState[MacdValue]):
    __slots__ = ("_count", "_fast", "_offset", "_signal", "_slow")

    def __init__(self, fast: int, slow: int, signal: int) -> None:
        self._offset = slow - fast
        self._fast = EmaStep(fast)
        self._slow = EmaStep(slow)
        self._signal = _SignalStep(signal)
        self._count = 0

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> MacdValue | None:
        slow = self._slow.push(close)
        fast = self._fast.push(close) if self._count >= self._offset else None
        self._count += 1
        if slow is None or fast is None:
            return None
        line = fast - slow
        signal = self._signal.push(line)
        return None if signal is None else MacdValue(line, signal, line - signal)


class BandsValue(NamedTuple):
    middle: float
    upper: float
    lower: float


class BandsArrays(NamedTuple):
    middle: FloatArray
    upper: FloatArray
    lower: FloatArray


@dataclass(frozen=True)
class BollingerBands(Indicator[BandsValue, BandsArrays]):
    """SMA of the close ± multiples of the population standard deviation over `period`."""

    period: int = 20
    up: float = 2.0
    down: float = 2.0

    def __post_init__(self) -> None:
        check_period("period", self.period, 2)
        check_multiplier("up", self.up)
        check_multiplier("down", self.down)

    @property
    def warmup(self) -> int:
        return self.period - 1

    def batch(self, candles: CandleSeries) -> BandsArrays:
        x, n = candles.close, self.period
        size = x.size
        middle, upper, lower = nan_array(size), nan_array(size), nan_array(size)
        if size < n:
            return BandsArrays(middle, upper, lower)
        mean = rolling_sum(x, n) / n
        starts = chunk_starts(n - 1, size)
        exact = np.zeros(starts.size)
        for k in range(n):
            deviation = x[starts - (n - 1) + k] - mean[starts]
            exact = exact + deviation * deviation
        steps = np.zeros(size - (n - 1))
        steps[1:] = (x[n:] - x[:-n]) * ((x[n:] - mean[n:]) + (x[:-n] - mean[n - 1 : -1]))
        squares = restarted_total(exact, steps)
        sigma = np.sqrt(np.where(squares > 0, squares, 0.0) / n)
        middle[n - 1 :] = mean[n - 1 :]
        upper[n - 1 :] = middle[n - 1 :] + self.up * sigma
        lower[n - 1 :] = middle[n - 1 :] - self.down * sigma
        return BandsArrays(middle, upper, lower)

    def start(self) -> BollingerBandsState:
        return BollingerBandsState(self.period, self.up, self.down)


class BollingerBandsState(IndicatorState[BandsValue]):
    __slots__ = ("_down", "_mean", "_outputs", "_period", "_squares", "_total", "_up", "_window")

    def __init__(self, period: int, up: float, down: float) -> None:
        self._period, self._up, self._down = period, up, down
        self._window: deque[float] = deque(maxlen=period)
        self._total = RollingSum(period)
        self._mean = 0.0
        self._squares = 0.0
        self._outputs = 0

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> BandsValue | None:
        n = self._period
        leaving = self._window[0] if len(self._window) == n else 0.0
        self._window.append(close)
        total = self._total.push(close)
        if total is None:
            return None
        mean = total / n
        if self._outputs % recurrence.CHUNK == 0:
            squares = 0.0
            for kept in self._window:
                deviation = kept - mean
                squares = squares + deviation * deviation
        else:
            squares = self._squares + (close - leaving) * ((close - mean) + (leaving - self._mean))
        self._mean, self._squares = mean, squares
        self._outputs += 1
        sigma = math.sqrt((squares if squares > 0 else 0.0) / n)
        return BandsValue(mean, mean + self._up * sigma, mean - self._down * sigma)
