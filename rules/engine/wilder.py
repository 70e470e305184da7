"""Wilder-smoothed indicators: RSI, ATR and ADX, seeded as TA-Lib seeds them.

Wilder's smoothing is y = ((n-1)·y + v)/n, computed here as a·y + v/n with a = (n-1)/n (TA-Lib
rounds differently, ≈ 1e-16 relative a step). Seeds, as TA-Lib (unstable period 0):
- RSI(n): the first value is at index n: plain averages of the first n gains and losses
  (close-to-close changes from index 1). RSI = 100·G/(G+L), and 0 when G+L is 0 (TA-Lib's
  convention for a flat series).
- ATR(n): the true range starts at index 1 (it needs the previous close); the first ATR, at
  index n, is the plain average of the first n true ranges.
- ADX(n): +DM, -DM and TR are smoothed as running sums, S = S - S/n + v (here a·S + v). The seed
  at index n-1 is the sum of the first n-1 values, as TA-Lib does (not n). DX is defined from
  index n; the first ADX, at index 2n-1, is the sum of the n DX values divided by n. Where DX is
  undefined (smoothed TR is 0, or +DI + -DI is 0) it adds nothing to that sum and leaves the ADX
  unchanged afterwards, as in TA-Lib.
TA-Lib's "unstable period" only delays where its output starts; the values it returns after it
are the ones computed from index 0, which these are. TA-Lib takes |x| < 1e-8 as zero in those
tests; here only an exact 0 is, because 1e-8 is not small for an asset priced at 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rules.engine.base import CandleSeries, FloatArray, Indicator, IndicatorState, check_period, nan_array
from rules.engine.recurrence import LinearRecurrence, linear_recurrence, sum_in_order


def _true_range(candles: CandleSeries) -> FloatArray:
    """TR at indexes 1…: max(high - low, |prev close - high|, |prev close - low|)."""
    high, low, previous = candles.high[1:], candles.low[1:], candles.close[:-1]
    widest: FloatArray = np.maximum(np.maximum(high - low, np.abs(previous - high)), np.abs(previous - low))
    return widest


def _true_range_step(high: float, low: float, previous_close: float) -> float:
    return max(high - low, abs(previous_close - high), abs(previous_close - low))


@dataclass(frozen=True)
class Rsi(Indicator[float, FloatArray]):
    """Wilder's relative strength index of the close, 0…100."""

    period: int = 14

    def __post_init__(self) -> None:
        check_period("period", self.period, 2)

    @property
    def warmup(self) -> int:
        return self.period

    def batch(self, candles: CandleSeries) -> FloatArray:
        n, close = self.period, candles.close
        out = nan_array(close.size)
        if close.size <= n:
            return out
        change = close[1:] - close[:-1]
        gains = np.where(change < 0, 0.0, change)
        losses = np.where(change < 0, -change, 0.0)
        a = (n - 1) / n
        gain, loss = np.empty(close.size - n), np.empty(close.size - n)
        gain[0] = sum_in_order(gains[:n]) / n
        loss[0] = sum_in_order(losses[:n]) / n
        gain[1:] = linear_recurrence(a, gains[n:] / n, float(gain[0]))
        loss[1:] = linear_recurrence(a, losses[n:] / n, float(loss[0]))
        total = gain + loss
        with np.errstate(divide="ignore", invalid="ignore"):
            out[n:] = np.where(total != 0, 100.0 * (gain / total), 0.0)
        return out

    def start(self) -> RsiState:
        return RsiState(self.period)


class RsiState(IndicatorState[float]):
    __slots__ = ("_a", "_count", "_gain", "_loss", "_period", "_previous", "_smoothed")

    def __init__(self, period: int) -> None:
        self._period = period
        self._a = (period - 1) / period
        self._previous = 0.0
        self._count = 0
        self._gain = 0.0
        self._loss = 0.0
        self._smoothed: tuple[LinearRecurrence, LinearRecurrence] | None = None

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> float | None:
        n = self._period
        change = close - self._previous
        self._previous = close
        self._count += 1
        if self._count == 1:
            return None
        up, down = (0.0, -change) if change < 0 else (change, 0.0)
        if self._smoothed is None:
            self._gain = self._gain + up
            self._loss = self._loss + down
            if self._count <= n:
                return None
            gain, loss = self._gain / n, self._loss / n
            self._smoothed = (LinearRecurrence(gain), LinearRecurrence(loss))
        else:
            gain = self._smoothed[0].step(self._a, up / n)
            loss = self._smoothed[1].step(self._a, down / n)
        total = gain + loss
        return 100.0 * (gain / total) if total != 0 else 0.0


@dataclass(frozen=True)
class Atr(Indicator[float, FloatArray]):
    """Wilder's average true range."""

    period: int = 14

    def __post_init__(self) -> None:
        check_period("period", self.period, 1)

    @property
    def warmup(self) -> int:
        return self.period

    def batch(self, candles: CandleSeries) -> FloatArray:
        n = self.period
        out = nan_array(len(candles))
        if len(candles) <= n:
            return out
        true_range = _true_range(candles)
        seed = sum_in_order(true_range[:n]) / n
        out[n] = seed
        out[n + 1 :] = linear_recurrence((n - 1) / n, true_range[n:] / n, seed)
        return out

    def start(self) -> AtrState:
        return AtrState(self.period)


class AtrState(IndicatorState[float]):
    __slots__ = ("_a", "_count", "_period", "_previous_close", "_smoothed", "_total")

    def __init__(self, period: int) -> None:
        self._period = period
        self._a = (period - 1) / period
        self._previous_close = 0.0
        self._count = 0
        self._total = 0.0
        self._smoothed: LinearRecurrence | None = None

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> float | None:
        n = self._period
        true_range = _true_range_step(high, low, self._previous_close)
        self._previous_close = close
        self._count += 1
        if self._count == 1:
            return None
        if self._smoothed is not None:
            return self._smoothed.step(self._a, true_range / n)
        self._total = self._total + true_range
        if self._count <= n:
            return None
        seed = self._total / n
        self._smoothed = LinearRecurrence(seed)
        return seed


def _directional_movement(high_change: FloatArray, low_change: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(+DM, -DM) from high - previous high and previous low - low, TA-Lib's case analysis."""
    plus_wins = (high_change > 0) & (high_change > low_change)
    minus_wins = (low_change > 0) & (high_change < low_change)
    return np.where(plus_wins, high_change, 0.0), np.where(minus_wins, low_change, 0.0)


def _directional_movement_step(high_change: float, low_change: float) -> tuple[float, float]:
    if low_change > 0 and high_change < low_change:
        return 0.0, low_change
    if high_change > 0 and high_change > low_change:
        return high_change, 0.0
    return 0.0, 0.0


@dataclass(frozen=True)
class Adx(Indicator[float, FloatArray]):
    """Wilder's average directional movement index, 0…100."""

    period: int = 14

    def __post_init__(self) -> None:
        check_period("period", self.period, 2)

    @property
    def warmup(self) -> int:
        return 2 * self.period - 1

    def batch(self, candles: CandleSeries) -> FloatArray:
        n = self.period
        out = nan_array(len(candles))
        if len(candles) <= self.warmup:
            return out
        plus, minus = _directional_movement(
            candles.high[1:] - candles.high[:-1], candles.low[:-1] - candles.low[1:]
        )
        true_range = _true_range(candles)
        a = (n - 1) / n
        # Smoothed sums at indexes n… (the arrays above start at index 1).
        smoothed = [
            linear_recurrence(a, values[n - 1 :], sum_in_order(values[: n - 1]))
            for values in (plus, minus, true_range)
        ]
        with np.errstate(divide="ignore", invalid="ignore"):
            plus_di = 100.0 * (smoothed[0] / smoothed[2])
            minus_di = 100.0 * (smoothed[1] / smoothed[2])
            di_total = minus_di + plus_di
            dx = 100.0 * (np.abs(minus_di - plus_di) / di_total)
        defined = (smoothed[2] != 0) & (di_total != 0)
        seed = sum_in_order(np.where(defined[:n], dx[:n], 0.0)) / n
        out[2 * n - 1] = seed
        out[2 * n :] = linear_recurrence(
            np.where(defined[n:], a, 1.0), np.where(defined[n:], dx[n:] / n, 0.0), seed
        )
        return out

    def start(self) -> AdxState:
        return AdxState(self.period)


class AdxState(IndicatorState[float]):
    __slots__ = ("_a", "_adx", "_count", "_dx_total", "_period", "_previous", "_seeds", "_smoothed")

    def __init__(self, period: int) -> None:
        self._period = period
        self._a = (period - 1) / period
        self._previous = (0.0, 0.0, 0.0)
        self._count = 0
        self._seeds = [0.0, 0.0, 0.0]
        self._smoothed: list[LinearRecurrence] = []
        self._dx_total = 0.0
        self._adx: LinearRecurrence | None = None

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> float | None:
        n, a = self._period, self._a
        previous_high, previous_low, previous_close = self._previous
        self._previous = (high, low, close)
        index = self._count
        self._count += 1
        if index == 0:
            return None
        plus, minus = _directional_movement_step(high - previous_high, previous_low - low)
        values = (plus, minus, _true_range_step(high, low, previous_close))
        if index < n:
            self._seeds = [total + value for total, value in zip(self._seeds, values, strict=True)]
            if index == n - 1:
                self._smoothed = [LinearRecurrence(total) for total in self._seeds]
            return None
        plus_sum, minus_sum, range_sum = (
            smoothed.step(a, value) for smoothed, value in zip(self._smoothed, values, strict=True)
        )
        dx = None
        if range_sum != 0:
            plus_di = 100.0 * (plus_sum / range_sum)
            minus_di = 100.0 * (minus_sum / range_sum)
            di_total = minus_di + plus_di
            if di_total != 0:
                dx = 100.0 * (abs(minus_di - plus_di) / di_total)
        if self._adx is not None:
            return self._adx.step(a, dx / n) if dx is not None else self._adx.step(1.0, 0.0)
        self._dx_total = self._dx_total + (dx if dx is not None else 0.0)
        if index < 2 * n - 1:
            return None
        seed = self._dx_total / n
        self._adx = LinearRecurrence(seed)
        return seed
