"""Slow stochastic oscillator (%K, %D), as TA-Lib's STOCH with its SMA defaults (5, 3, 3).

fast %K = (close - lowest low) / ((highest high - lowest low) / 100) over `fast_k` candles (0 when
the range is 0, as TA-Lib); slow %K = SMA(fast %K, `slow_k`); slow %D = SMA(slow %K, `slow_d`).
Both are NaN before index fast_k + slow_k + slow_d - 3 (TA-Lib drops the slow %K values that come
before the first %D). Only the SMA smoothing is offered (TA-Lib also takes other MA types).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rules.engine.base import (
    CandleSeries,
    FloatArray,
    Indicator,
    IndicatorRows,
    IntArray,
    RowIndex,
    check_period,
    nan_prefixed,
)
from rules.engine.recurrence import (
    ExtremeRows,
    RollingSumRows,
    rolling_sum_into,
    scratch,
    window_extreme,
)


class StochasticValue(NamedTuple):
    k: float
    d: float


class StochasticArrays(NamedTuple):
    k: FloatArray
    d: FloatArray


@dataclass(frozen=True)
class Stochastic(Indicator[StochasticValue, StochasticArrays]):
    """Slow stochastic %K and %D, 0…100."""

    fast_k: int = 5
    slow_k: int = 3
    slow_d: int = 3

    def __post_init__(self) -> None:
        check_period("fast_k", self.fast_k, 1)
        check_period("slow_k", self.slow_k, 1)
        check_period("slow_d", self.slow_d, 1)

    @property
    def warmup(self) -> int:
        return self.fast_k + self.slow_k + self.slow_d - 3

    def batch(self, candles: CandleSeries) -> StochasticArrays:
        size = len(candles)
        k, d = nan_prefixed(size, min(self.warmup, size)), nan_prefixed(size, min(self.warmup, size))
        if size <= self.warmup:
            return StochasticArrays(k, d)
        first, outputs = self.fast_k - 1, size - (self.fast_k - 1)
        highest = window_extreme(candles.high, self.fast_k, scratch(3, outputs), highest=True)
        lowest = window_extreme(candles.low, self.fast_k, scratch(4, outputs), highest=False)
        scale = np.divide(np.subtract(highest, lowest, out=highest), 100.0, out=highest)
        fast = np.subtract(candles.close[first:], lowest, out=lowest)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(fast, scale, out=fast)
        np.copyto(fast, 0.0, where=scale == 0)  # TA-Lib's 0 for a flat window
        slow_k = rolling_sum_into(fast, self.slow_k, scratch(5, outputs - (self.slow_k - 1)))
        np.divide(slow_k, self.slow_k, out=slow_k)
        slow_d = rolling_sum_into(slow_k, self.slow_d, d[self.warmup :])
        np.divide(slow_d, self.slow_d, out=slow_d)
        k[self.warmup :] = slow_k[self.slow_d - 1 :]
        return StochasticArrays(k, d)

    def rows(self) -> StochasticRows:
        return StochasticRows(self.fast_k, self.slow_k, self.slow_d)

    def value_of(self, outputs: tuple[float, ...]) -> StochasticValue:
        return StochasticValue(*outputs)


class StochasticRows(IndicatorRows):
    def __init__(self, fast_k: int, slow_k: int, slow_d: int) -> None:
        super().__init__()
        self._highest = self._part(ExtremeRows(fast_k, highest=True))
        self._lowest = self._part(ExtremeRows(fast_k, highest=False))
        self._slow_k, self._slow_d = slow_k, slow_d
        self._k = self._part(RollingSumRows(slow_k))
        self._d = self._part(RollingSumRows(slow_d))

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        highest = self._highest.push(rows, high)
        lowest = self._lowest.push(rows, low)
        k, d = np.full(rows.size, np.nan), np.full(rows.size, np.nan)
        ranged = np.flatnonzero(~np.isnan(highest))
        if not ranged.size:
            return k, d
        scale = (highest[ranged] - lowest[ranged]) / 100.0
        with np.errstate(divide="ignore", invalid="ignore"):
            fast = np.where(scale != 0, (close[ranged] - lowest[ranged]) / scale, 0.0)
        k[ranged] = self._k.push(rows[ranged], fast) / self._slow_k
        smoothed = np.flatnonzero(~np.isnan(k))
        d[smoothed] = self._d.push(rows[smoothed], k[smoothed]) / self._slow_d
        k[np.isnan(d)] = np.nan
        return k, d
