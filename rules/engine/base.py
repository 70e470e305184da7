"""What every indicator shares: the candle arrays it reads, its two forms, parameter checks.

An indicator is a frozen dataclass of its parameters (checked on construction) with:
- `warmup`: how many candles come before its first value. The batch form returns NaN at indexes
  0…warmup-1, the incremental form returns None for the first `warmup` candles, and both give a
  value from index `warmup` on (TA-Lib calls this number the lookback);
- `batch(candles)`: the whole history at once, as float64 arrays the length of the input;
- `start()`: a fresh incremental state whose `update(high, low, close, volume, open_time_ms)`
  takes one closed candle and returns the value at that candle (or None while warming up);
- `from_history(candles)`: a state that has seen the given candles, to rebuild on start-up.
The two forms perform the same float64 operations in the same order, so they agree bit for bit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]

Value = TypeVar("Value", covariant=True)
Value_ = TypeVar("Value_")
Batch = TypeVar("Batch")

MAX_PERIOD = 100_000  # TA-Lib's bound for every period parameter


@dataclass(frozen=True, eq=False)
class CandleSeries:
    """Closed candles as float64 columns, oldest first, with their open times (ms since epoch, UTC).

    Prices and volumes are `Decimal` in the rest of the app; they become float64 here, at the edge
    of the numeric code (`from_columns` accepts anything numpy turns into float64).
    """

    open_time_ms: IntArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __post_init__(self) -> None:
        size = self.open_time_ms.shape
        for name in ("high", "low", "close", "volume"):
            column: FloatArray = getattr(self, name)
            if column.dtype != np.float64 or column.ndim != 1 or column.shape != size:
                raise ValueError(f"{name} must be a 1-D float64 array as long as open_time_ms")
            if not np.isfinite(column).all():
                raise ValueError(f"{name} must hold finite numbers only")
        if self.open_time_ms.dtype != np.int64 or self.open_time_ms.ndim != 1:
            raise ValueError("open_time_ms must be a 1-D int64 array")
        if (self.volume < 0).any():
            raise ValueError("volume must not be negative")
        if (np.diff(self.open_time_ms) <= 0).any():
            raise ValueError("open_time_ms must be strictly increasing")

    @classmethod
    def from_columns(
        cls,
        *,
        open_time_ms: npt.ArrayLike,
        high: npt.ArrayLike,
        low: npt.ArrayLike,
        close: npt.ArrayLike,
        volume: npt.ArrayLike,
    ) -> CandleSeries:
        return cls(
            open_time_ms=np.asarray(open_time_ms, dtype=np.int64),
            high=np.asarray(high, dtype=np.float64),
            low=np.asarray(low, dtype=np.float64),
            close=np.asarray(close, dtype=np.float64),
            volume=np.asarray(volume, dtype=np.float64),
        )

    def __len__(self) -> int:
        return int(self.open_time_ms.size)


class IndicatorState(Protocol[Value]):
    """One indicator's incremental form: fed one closed candle at a time, in order."""

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> Value | None:
        """The value at this candle, None while warming up. Only VWAP needs `open_time_ms`."""
        ...


class Indicator(ABC, Generic[Value_, Batch]):
    """Parameters plus both forms of one indicator (see the module docstring)."""

    @property
    @abstractmethod
    def warmup(self) -> int:
        """Candles before the first value (the index of the first value)."""

    @abstractmethod
    def batch(self, candles: CandleSeries) -> Batch:
        """The indicator over the whole history: NaN before `warmup`."""

    @abstractmethod
    def start(self) -> IndicatorState[Value_]:
        """A fresh incremental state."""

    def from_history(self, candles: CandleSeries) -> IndicatorState[Value_]:
        """A state that has been fed `candles`: the next `update` continues the history."""
        state = self.start()
        columns = (candles.high, candles.low, candles.close, candles.volume, candles.open_time_ms)
        for row in zip(*(column.tolist() for column in columns), strict=True):
            state.update(*row)
        return state


def check_period(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not minimum <= value <= MAX_PERIOD:
        raise ValueError(f"{name} must be between {minimum} and {MAX_PERIOD}, got {value}")


def check_multiplier(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and not negative, got {value}")


def nan_array(size: int) -> FloatArray:
    return np.full(size, np.nan, dtype=np.float64)
