"""Moving averages on the close: SMA, EMA, MACD and Bollinger Bands, following TA-Lib's seeding.

- SMA(n): first value at index n-1. The window's sum is carried (add the newest, drop the oldest)
  and recomputed exactly every `recurrence.CHUNK` outputs (summed in order at every output for
  n ≤ `recurrence.SUMMED_IN_ORDER`).
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

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from rules.engine import recurrence
from rules.engine.base import (
    CandleSeries,
    FloatArray,
    Indicator,
    IndicatorRows,
    IntArray,
    RowIndex,
    RowState,
    check_multiplier,
    check_period,
    nan_prefixed,
)
from rules.engine.recurrence import (
    RecurrenceRows,
    RollingSumRows,
    chunk_windows,
    from_lanes,
    lanes_after_first,
    lanes_of,
    recur_lanes,
    rolling_sum_into,
    scratch,
    sum_in_order,
)


def ema_batch(values: FloatArray, period: int) -> FloatArray:
    """EMA of `values` seeded with the SMA of the first `period` of them (NaN before)."""
    out = nan_prefixed(values.size, period - 1)
    if values.size < period:
        return out
    k = 2.0 / (period + 1)
    seed = sum_in_order(values[:period]) / period
    out[period - 1] = seed
    if values.size > period:
        lanes = lanes_of(np.multiply, (values[period:], k), values.size - period, 0)
        recur_lanes(lanes, 1.0 - k, seed)
        from_lanes(lanes, out[period:])
    return out


class EmaRows(RowState):
    """The step form of `ema_batch`, one EMA per row: `push(rows, x)` returns NaN until a row has
    seen `period` values."""

    total: FloatArray
    count: npt.NDArray[np.int64]

    def __init__(self, period: int) -> None:
        super().__init__()
        self._period = period
        self._k = 2.0 / (period + 1)
        self._a = 1.0 - self._k
        self._array("total", np.float64, 0.0)
        self._array("count", np.int64, 0)
        self._recurrence = self._part(RecurrenceRows())

    def push(self, rows: RowIndex, values: FloatArray) -> FloatArray:
        out = np.full(rows.size, np.nan)
        count = self.count[rows]
        started = count >= self._period
        if started.all():
            return self._recurrence.step(rows, self._a, self._k * values)
        if started.any():
            out[started] = self._recurrence.step(rows[started], self._a, self._k * values[started])
        filling = np.flatnonzero(~started)
        at = rows[filling]
        total = self.total[at] + values[filling]
        count = count[filling] + 1
        self.total[at], self.count[at] = total, count
        seeded = count == self._period
        if seeded.any():
            seed = total[seeded] / self._period
            self._recurrence.start(at[seeded], seed)
            out[filling[seeded]] = seed
        return out


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
        n, close = self.period, candles.close
        out = nan_prefixed(close.size, min(n - 1, close.size))
        if close.size >= n:
            sums = rolling_sum_into(close, n, out[n - 1 :])
            np.divide(sums, n, out=sums)
        return out

    def rows(self) -> SmaRows:
        return SmaRows(self.period)

    def value_of(self, outputs: tuple[float, ...]) -> float:
        return outputs[0]


class SmaRows(IndicatorRows):
    def __init__(self, period: int) -> None:
        super().__init__()
        self._period = period
        self._sum = self._part(RollingSumRows(period))

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        return (self._sum.push(rows, close) / self._period,)


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

    def rows(self) -> EmaIndicatorRows:
        return EmaIndicatorRows(self.period)

    def value_of(self, outputs: tuple[float, ...]) -> float:
        return outputs[0]


class EmaIndicatorRows(IndicatorRows):
    def __init__(self, period: int) -> None:
        super().__init__()
        self._ema = self._part(EmaRows(period))

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        return (self._ema.push(rows, close),)


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
        close, fast, slow, period = candles.close, self.fast, self.slow, self.signal
        size, start = close.size, self.warmup
        macd, signal, histogram = (nan_prefixed(size, min(start, size)) for _ in range(3))
        if size <= start:
            return MacdArrays(macd, signal, histogram)
        # Both EMAs step from close[slow] on: the fast one is seeded on the `fast` closes that end
        # where the slow one's seed ends. The line is written into `macd` from index slow - 1.
        line = macd[slow - 1 :]
        fast_seed = sum_in_order(close[slow - fast : slow]) / fast
        slow_seed = sum_in_order(close[:slow]) / slow
        line[0] = fast_seed - slow_seed
        if size > slow:
            both = []
            for slot, period_, seed in ((1, fast, fast_seed), (0, slow, slow_seed)):
                k = 2.0 / (period_ + 1)
                both.append(lanes_of(np.multiply, (close[slow:], k), size - slow, slot))
                recur_lanes(both[-1], 1.0 - k, seed)
            fast_lanes, slow_lanes = both
            from_lanes(np.subtract(fast_lanes, slow_lanes, out=fast_lanes), line[1:])
        if period == 1:  # k = 1: the signal is the line itself
            signal[start:] = macd[start:]
        else:
            k = 2.0 / (period + 1)
            seed = sum_in_order(line[:period]) / period
            signal[start] = seed
            if size > start + 1:
                lanes = lanes_of(np.multiply, (line[period:], k), line.size - period, 0)
                recur_lanes(lanes, 1.0 - k, seed)
                from_lanes(lanes, signal[start + 1 :])
        macd[slow - 1 : start] = np.nan
        np.subtract(macd[start:], signal[start:], out=histogram[start:])
        return MacdArrays(macd, signal, histogram)

    def rows(self) -> MacdRows:
        return MacdRows(self.fast, self.slow, self.signal)

    def value_of(self, outputs: tuple[float, ...]) -> MacdValue:
        return MacdValue(*outputs)


class MacdRows(IndicatorRows):
    """Per row: the slow EMA from the first close, the fast one from close `slow - fast` on, and
    the signal EMA of the line once both have a value."""

    count: npt.NDArray[np.int64]

    def __init__(self, fast: int, slow: int, signal: int) -> None:
        super().__init__()
        self._offset = slow - fast
        self._fast = self._part(EmaRows(fast))
        self._slow = self._part(EmaRows(slow))
        self._signal = None if signal == 1 else self._part(EmaRows(signal))
        self._array("count", np.int64, 0)

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        slow = self._slow.push(rows, close)
        count = self.count[rows]
        fast = np.full(rows.size, np.nan)
        fed = count >= self._offset
        fast[fed] = self._fast.push(rows[fed], close[fed])
        self.count[rows] = count + 1
        line = fast - slow
        signal = np.full(rows.size, np.nan)
        known = ~np.isnan(line)
        if self._signal is None:
            signal[known] = line[known]
        elif known.any():
            signal[known] = self._signal.push(rows[known], line[known])
        line[np.isnan(signal)] = np.nan
        return line, signal, line - signal


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
        middle, upper, lower = (nan_prefixed(size, n - 1) for _ in range(3))
        if size < n:
            return BandsArrays(middle, upper, lower)
        mean = rolling_sum_into(x, n, middle[n - 1 :])
        np.divide(mean, n, out=mean)
        # Welford's sliding update of the sum of squared deviations, in the step form's order.
        newest, oldest = x[n:], x[:-n]
        deviations = np.subtract(newest, mean[1:], out=scratch(1, oldest.size))
        spread = np.subtract(oldest, mean[:-1], out=scratch(2, oldest.size))
        np.add(deviations, spread, out=deviations)
        np.subtract(newest, oldest, out=spread)
        # spread · deviations is laid out into lanes by the same call; row 0 is the exact sums.
        squares = lanes_after_first(np.multiply, (spread, deviations), mean.size, 0)
        rows, chunks = squares.shape
        starts = mean[::rows][:chunks]
        exact = np.zeros(chunks)
        for column in chunk_windows(x, n, rows, chunks).T:
            deviation = column - starts
            np.add(exact, deviation * deviation, out=exact)
        squares[0] = exact
        for t in range(1, rows):
            np.add(squares[t - 1], squares[t], out=squares[t])
        sigma = squares  # sqrt(max(squares, 0) / n), in place: where(squares > 0, squares, 0.0)
        np.copyto(sigma, 0.0, where=sigma <= 0)
        np.divide(sigma, n, out=sigma)
        np.sqrt(sigma, out=sigma)
        width = upper[n - 1 :]
        from_lanes(sigma, width)
        np.multiply(self.down, width, out=lower[n - 1 :])
        np.subtract(mean, lower[n - 1 :], out=lower[n - 1 :])
        np.multiply(self.up, width, out=width)
        np.add(mean, width, out=width)
        return BandsArrays(middle, upper, lower)

    def rows(self) -> BollingerBandsRows:
        return BollingerBandsRows(self.period, self.up, self.down)

    def value_of(self, outputs: tuple[float, ...]) -> BandsValue:
        return BandsValue(*outputs)


class BollingerBandsRows(IndicatorRows):
    mean: FloatArray
    squares: FloatArray
    outputs: npt.NDArray[np.int64]

    def __init__(self, period: int, up: float, down: float) -> None:
        super().__init__()
        self._period, self._up, self._down = period, up, down
        self._total = self._part(RollingSumRows(period))
        self._array("mean", np.float64, 0.0)
        self._array("squares", np.float64, 0.0)
        self._array("outputs", np.int64, 0)

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        n = self._period
        total, leaving = self._total.push_leaving(rows, close)
        mean = total / n
        outputs = self.outputs[rows]
        squares = self.squares[rows] + (close - leaving) * ((close - mean) + (leaving - self.mean[rows]))
        full = ~np.isnan(total)
        exact = np.flatnonzero(full & (outputs % recurrence.CHUNK == 0))
        if exact.size:
            at = rows[exact]
            recomputed = np.zeros(exact.size)
            for column in self._total.window.ordered(at).T:
                deviation = column - mean[exact]
                recomputed = recomputed + deviation * deviation
            squares[exact] = recomputed
        self.mean[rows] = np.where(full, mean, self.mean[rows])
        self.squares[rows] = np.where(full, squares, self.squares[rows])
        self.outputs[rows] = outputs + full
        sigma = np.sqrt(np.where(squares > 0, squares, 0.0) / n)
        return mean, mean + self._up * sigma, mean - self._down * sigma
