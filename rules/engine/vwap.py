"""Volume-weighted average price, anchored to the UTC day.

Each session is one UTC calendar day: it starts with the first candle whose open time falls on a
new day (open_time_ms // 86_400_000 changes), whatever the hour of the previous candle.
VWAP = Σ typical·volume / Σ volume over the session so far, typical = (high + low + close) / 3,
both sums taken in candle order. While the session has traded no volume the VWAP is undefined:
NaN in the batch form, None from `update`. There is no warm-up otherwise (`warmup` is 0).
`update` needs `open_time_ms` to know where a session starts.
"""

from __future__ import annotations

import itertools
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
)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Vwap(Indicator[float, FloatArray]):
    """Session VWAP, sessions being UTC days."""

    @property
    def warmup(self) -> int:
        return 0

    def batch(self, candles: CandleSeries) -> FloatArray:
        typical = (candles.high + candles.low + candles.close) / 3.0
        weighted = typical * candles.volume
        day = candles.open_time_ms // DAY_MS
        bounds = [0, *(np.flatnonzero(day[1:] != day[:-1]) + 1).tolist(), len(candles)]
        value_total, volume_total = np.empty(len(candles)), np.empty(len(candles))
        for start, stop in itertools.pairwise(bounds):
            np.cumsum(weighted[start:stop], out=value_total[start:stop])
            np.cumsum(candles.volume[start:stop], out=volume_total[start:stop])
        with np.errstate(divide="ignore", invalid="ignore"):
            out: FloatArray = np.divide(value_total, volume_total, out=value_total)
        np.copyto(out, np.nan, where=volume_total == 0)  # no volume yet this session (volumes are ≥ 0)
        return out

    def rows(self) -> VwapRows:
        return VwapRows()

    def value_of(self, outputs: tuple[float, ...]) -> float:
        return outputs[0]


_NO_DAY = np.iinfo(np.int64).min  # before any candle: the first one starts a session


class VwapRows(IndicatorRows):
    day: npt.NDArray[np.int64]
    value_total: FloatArray
    volume_total: FloatArray

    def __init__(self) -> None:
        super().__init__()
        self._array("day", np.int64, _NO_DAY)
        self._array("value_total", np.float64, 0.0)
        self._array("volume_total", np.float64, 0.0)

    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        if open_time_ms is None:
            raise ValueError("open_time_ms is required by VWAP: it anchors the session to the UTC day")
        weighted = (high + low + close) / 3.0 * volume
        day = open_time_ms // DAY_MS
        new = day != self.day[rows]
        value_total = np.where(new, weighted, self.value_total[rows] + weighted)
        volume_total = np.where(new, volume, self.volume_total[rows] + volume)
        self.day[rows], self.value_total[rows], self.volume_total[rows] = day, value_total, volume_total
        traded = volume_total > 0
        vwap = np.full(rows.size, np.nan)
        vwap[traded] = value_total[traded] / volume_total[traded]
        return (vwap,)
