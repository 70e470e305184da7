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
  undefined (0/0 = NaN: smoothed TR is 0, or +DI + -DI is 0) it adds nothing to that sum and
  leaves the ADX unchanged afterwards, as in TA-Lib: such a candle is not a step of the ADX's
  smoothing (the batch form smooths the defined DX values only and holds the last value).
TA-Lib's "unstable period" only delays where its output starts; the values it returns after it
are the ones computed from index 0, which these are. TA-Lib takes |x| < 1e-8 as zero in those
tests; here only an exact 0 is, because 1e-8 is not small for an asset priced at 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
    RecurrenceRows,
    fill_lanes,
    from_lanes,
    lane_groups,
    lanes_of,
    linear_recurrence,
    recur_lane_groups,
    recur_lanes,
    scratch,
    sum_in_order,
)


def _true_range(candles: CandleSeries, slot: int) -> FloatArray:
    """TR at indexes 1…, in scratch `slot` (and `slot` + 1 on the way): see `_true_range_rows`."""
    high, low, previous = candles.high[1:], candles.low[1:], candles.close[:-1]
    top = np.maximum(high, previous, out=scratch(slot, high.size))
    bottom = np.minimum(low, previous, out=scratch(slot + 1, high.size))
    return np.subtract(top, bottom, out=top)


def _true_range_rows(high: FloatArray, low: FloatArray, previous_close: FloatArray) -> FloatArray:
    """max(high, previous close) - min(low, previous close): three operations where TA-Lib's
    max(high - low, |previous close - high|, |previous close - low|) takes seven, and the same
    float. Both subtract the same pair: high - low when the close is inside the range; else the
    close minus the low or the high minus the close, which TA-Lib's |previous close - high| also
    is (negation is exact), and which its max picks since rounding keeps order (for high ≥ low,
    as candles have it)."""
    true_range: FloatArray = np.subtract(np.maximum(high, previous_close), np.minimum(low, previous_close))
    return true_range


class _WilderRows(IndicatorRows):
    """What RSI and ATR share per row: the previous close, how many candles were seen, and the
    plain sums of the first `period` inputs that seed the smoothing."""

    previous: FloatArray
    count: npt.NDArray[np.int64]

    def __init__(self, period: int, sums: int) -> None:
        super().__init__()
        self._period = period
        self._a = (period - 1) / period
        self._array("previous", np.float64, 0.0)
        self._array("count", np.int64, 0)
        self._sums = [f"sum{i}" for i in range(sums)]
        for name in self._sums:
            self._array(name, np.float64, 0.0)
        self._smoothed = [self._part(RecurrenceRows()) for _ in range(sums)]

    def _smooth(self, rows: RowIndex, close: FloatArray, inputs: tuple[FloatArray, ...]) -> list[FloatArray]:
        """Each input's Wilder average at this candle (NaN before candle `period` + 1); the first
        candle's inputs are ignored (they need a previous close)."""
        n = self._period
        self.previous[rows] = close
        count = self.count[rows] + 1
        self.count[rows] = np.minimum(count, n + 2)
        outs = [np.full(rows.size, np.nan) for _ in inputs]
        smoothing = np.flatnonzero(count > n + 1)
        if smoothing.size:
            at = rows[smoothing]
            for out, smoothed, values in zip(outs, self._smoothed, inputs, strict=True):
                out[smoothing] = smoothed.step(at, self._a, values[smoothing] / n)
        seeding = np.flatnonzero((count > 1) & (count <= n + 1))
        if seeding.size:
            at = rows[seeding]
            seeded = count[seeding] == n + 1
            for out, name, smoothed, values in zip(outs, self._sums, self._smoothed, inputs, strict=True):
                column = getattr(self, name)
                total = column[at] + values[seeding]
                column[at] = total
                if seeded.any():
                    seed = total[seeded] / n
                    smoothed.start(at[seeded], seed)
                    out[seeding[seeded]] = seed
        return outs


def _split_change(change: FloatArray, gains: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(gains, losses) of close-to-close changes: gains = max(change, 0) into `gains`, and
    losses = gains - change (exact: 0 - change where it fell, 0 elsewhere) over `change`."""
    np.maximum(change, 0.0, out=gains)
    return gains, np.subtract(gains, change, out=change)


def _rsi(gain: FloatArray, loss: FloatArray) -> FloatArray:
    """100·(G/(G+L)), and 0 where G+L is 0 (NaN stays NaN). Overwrites both arguments."""
    total = np.add(gain, loss, out=loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.divide(gain, total, out=gain)
    np.multiply(100.0, share, out=share)
    np.copyto(share, 0.0, where=total == 0)
    return share


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
        out = nan_prefixed(close.size, n)
        if close.size <= n:
            return out
        gains, losses = _split_change(np.subtract(close[1 : n + 1], close[:n]), np.empty(n))
        gain = sum_in_order(gains) / n
        loss = sum_in_order(losses) / n
        out[n] = _rsi(np.array([gain]), np.array([loss]))[0]
        if close.size > n + 1:
            changes = lanes_of(np.subtract, (close[n + 1 :], close[n:-1]), close.size - n - 1, 0)
            gains, losses = _split_change(changes, scratch(1, changes.size).reshape(changes.shape))
            a = (n - 1) / n
            for lanes, seed in ((gains, gain), (losses, loss)):
                np.divide(lanes, n, out=lanes)
                recur_lanes(lanes, a, seed)
            from_lanes(_rsi(gains, losses), out[n + 1 :])
        return out

    def rows(self) -> RsiRows:
        return RsiRows(self.period)

    def value_of(self, outputs: tuple[float, ...]) -> float:
        return outputs[0]


class RsiRows(_WilderRows):
    def __init__(self, period: int) -> None:
        super().__init__(period, 2)

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        change = close - self.previous[rows]
        gain, loss = self._smooth(rows, close, _split_change(change, np.empty(rows.size)))
        return (_rsi(gain, loss),)


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
        out = nan_prefixed(len(candles), n)
        if len(candles) <= n:
            return out
        true_range = _true_range(candles, 1)
        seed = sum_in_order(true_range[:n]) / n
        out[n] = seed
        if len(candles) > n + 1:
            lanes = lanes_of(np.divide, (true_range[n:], float(n)), true_range.size - n, 0)
            recur_lanes(lanes, (n - 1) / n, seed)
            from_lanes(lanes, out[n + 1 :])
        return out

    def rows(self) -> AtrRows:
        return AtrRows(self.period)

    def value_of(self, outputs: tuple[float, ...]) -> float:
        return outputs[0]


class AtrRows(_WilderRows):
    def __init__(self, period: int) -> None:
        super().__init__(period, 1)

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        true_range = _true_range_rows(high, low, self.previous[rows])
        return (self._smooth(rows, close, (true_range,))[0],)


def _directional_movement(high_change: FloatArray, low_change: FloatArray) -> tuple[FloatArray, FloatArray]:
    """In place: (+DM, -DM) from high - previous high and previous low - low, TA-Lib's case
    analysis. A change that does not count is multiplied by False (a masked np.where costs ten
    times more on a random mask); its -0.0 adds nothing to the sums, as 0.0 would."""
    plus_wins = (high_change > 0) & (high_change > low_change)
    minus_wins = (low_change > 0) & (high_change < low_change)
    return np.multiply(high_change, plus_wins, out=high_change), np.multiply(
        low_change, minus_wins, out=low_change
    )


def _dx(plus_sum: FloatArray, minus_sum: FloatArray, range_sum: FloatArray) -> FloatArray:
    """In place: DX from the smoothed sums, NaN where it is undefined (0/0: no range, or no
    directional movement). Overwrites all three arguments; returns `minus_sum`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        plus_di = np.multiply(100.0, np.divide(plus_sum, range_sum, out=plus_sum), out=plus_sum)
        minus_di = np.multiply(100.0, np.divide(minus_sum, range_sum, out=minus_sum), out=minus_sum)
        di_total = np.add(minus_di, plus_di, out=range_sum)
        spread = np.abs(np.subtract(minus_di, plus_di, out=minus_di), out=minus_di)
        return np.multiply(100.0, np.divide(spread, di_total, out=spread), out=spread)


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
        out = nan_prefixed(len(candles), self.warmup)
        if len(candles) <= self.warmup:
            return out
        high, low, close, size = candles.high, candles.low, candles.close, len(candles)
        a = (n - 1) / n
        # The seeds: plain sums of +DM, -DM and TR at indexes 1…n-1.
        seeding = _directional_movement(high[1:n] - high[: n - 1], low[: n - 1] - low[1:n])
        seeds = [*seeding, _true_range_rows(high[1:n], low[1:n], close[: n - 1])]
        # From index n on, the three are computed in lanes side by side (the changes are laid
        # out by the calls that compute them) and smoothed together; then DX, in lanes.
        lanes = lane_groups(size - n, 3, 0)
        plus, minus, true_range = lanes
        fill_lanes(np.subtract, (high[n:], high[n - 1 : -1]), size - n, plus)
        fill_lanes(np.subtract, (low[n - 1 : -1], low[n:]), size - n, minus)
        _directional_movement(plus, minus)
        top = np.maximum(high[n:], close[n - 1 : -1], out=scratch(1, size - n))
        bottom = np.minimum(low[n:], close[n - 1 : -1], out=scratch(2, size - n))
        fill_lanes(np.subtract, (top, bottom), size - n, true_range)
        recur_lane_groups(lanes, (a, a, a), tuple(sum_in_order(values) for values in seeds))
        dx = scratch(3, size - n)
        from_lanes(_dx(plus, minus, true_range), dx)
        seed = sum_in_order(np.nan_to_num(dx[:n], nan=0.0)) / n
        out[2 * n - 1] = seed
        if size == 2 * n:
            return out
        # Where DX is undefined the ADX is held: those candles are not steps of its smoothing.
        held = np.isnan(dx[n:])
        if not held.any():
            lanes = lanes_of(np.divide, (dx[n:], float(n)), dx.size - n, 0)
            recur_lanes(lanes, a, seed)
            from_lanes(lanes, out[2 * n :])
        else:
            stepped = np.empty(dx.size - n - int(held.sum()) + 1)
            stepped[0] = seed
            stepped[1:] = linear_recurrence(a, dx[n:][~held] / n, seed)
            out[2 * n :] = stepped[np.cumsum(~held)]
        return out

    def rows(self) -> AdxRows:
        return AdxRows(self.period)

    def value_of(self, outputs: tuple[float, ...]) -> float:
        return outputs[0]


class AdxRows(IndicatorRows):
    """Per row: the previous candle, the seeds of the three smoothed sums (indexes 1…n-1), the
    sums, the DX total that seeds the ADX (indexes n…2n-1), and the ADX's smoothing."""

    previous: FloatArray
    count: npt.NDArray[np.int64]
    seeds: FloatArray
    dx_total: FloatArray
    adx: FloatArray

    def __init__(self, period: int) -> None:
        super().__init__()
        self._period = period
        self._a = (period - 1) / period
        self._array("previous", np.float64, 0.0, width=3)
        self._array("count", np.int64, 0)
        self._array("seeds", np.float64, 0.0, width=3)
        self._array("dx_total", np.float64, 0.0)
        self._array("adx", np.float64, 0.0)
        self._smoothed = [self._part(RecurrenceRows()) for _ in range(3)]
        self._adx = self._part(RecurrenceRows())

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        n, a = self._period, self._a
        previous = self.previous[rows]
        self.previous[rows] = np.stack([high, low, close], axis=1)
        index = self.count[rows]
        self.count[rows] = np.minimum(index + 1, 2 * n + 1)
        plus, minus = _directional_movement(high - previous[:, 0], previous[:, 1] - low)
        values = (plus, minus, _true_range_rows(high, low, previous[:, 2]))
        out = np.full(rows.size, np.nan)
        seeding = np.flatnonzero((index > 0) & (index < n))
        if seeding.size:
            at = rows[seeding]
            seeds = self.seeds[at]
            for j in range(3):
                seeds[:, j] = seeds[:, j] + values[j][seeding]
            self.seeds[at] = seeds
            started = index[seeding] == n - 1
            for j in range(3):
                self._smoothed[j].start(at[started], seeds[started, j])
        summing = np.flatnonzero(index >= n)
        if not summing.size:
            return (out,)
        at = rows[summing]
        plus_sum, minus_sum, range_sum = (
            smoothed.step(at, a, column[summing])
            for smoothed, column in zip(self._smoothed, values, strict=True)
        )
        dx = _dx(plus_sum, minus_sum, range_sum)
        defined = ~np.isnan(dx)
        index = index[summing]
        adding = index <= 2 * n - 1
        if adding.any():
            total = self.dx_total[at[adding]] + np.where(defined[adding], dx[adding], 0.0)
            self.dx_total[at[adding]] = total
            seeded = index[adding] == 2 * n - 1
            seed = total[seeded] / n
            self._adx.start(at[adding][seeded], seed)
            self.adx[at[adding][seeded]] = seed
            out[summing[adding][seeded]] = seed
        stepping = np.flatnonzero(~adding & defined)
        if stepping.size:
            self.adx[at[stepping]] = self._adx.step(at[stepping], a, dx[stepping] / n)
        smoothing = ~adding
        out[summing[smoothing]] = self.adx[at[smoothing]]  # held where DX is undefined
        return (out,)
