"""What every indicator shares: the candle arrays it reads, its two forms, parameter checks.

An indicator is a frozen dataclass of its parameters (checked on construction) with:
- `warmup`: how many candles come before its first value. The batch form returns NaN at indexes
  0…warmup-1, the incremental form returns None for the first `warmup` candles, and both give a
  value from index `warmup` on (TA-Lib calls this number the lookback);
- `batch(candles)`: the whole history at once, as float64 arrays the length of the input;
- `rows()`: the incremental form for many series at once (`RowState`, one row per series, each
  row at its own point of its own history): `update(rows, high, low, close, volume,
  open_time_ms)` takes one closed candle for each of the given rows (numpy arrays, one element
  per row) and returns the value columns at those candles, NaN while a row is warming up. The
  live evaluator steps every symbol of a timeframe with one call;
- `start()`: the incremental form of one series, a one-row `rows()`, whose
  `update(high, low, close, volume, open_time_ms)` takes one closed candle and returns the value
  at that candle (or None while warming up);
- `from_history(candles)`: a state that has seen the given candles, to rebuild on start-up.
The forms perform the same float64 operations in the same order (numpy's element-wise IEEE
operations are Python's float ones), so they agree bit for bit. The incremental forms expect
finite prices and volumes, as `CandleSeries` checks them: NaN stands for "no value yet".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
RowIndex: TypeAlias = npt.NDArray[np.intp]

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


class RowState:
    """State of one computation for many series at once: every array has one row per series.

    Subclasses declare their arrays with `_array` (and the states they are built from with
    `_part`), so that growing to more rows and resetting rows to a fresh state are done here.
    A call takes `rows`, distinct row indexes, and one input element per row.
    """

    def __init__(self) -> None:
        self._arrays: list[tuple[str, Any, float | int]] = []
        self._parts: list[RowState] = []
        self.size = 0

    def _array(self, name: str, dtype: Any, fill: float | int, width: int | None = None) -> None:
        shape = (0,) if width is None else (0, width)
        setattr(self, name, np.full(shape, fill, dtype=dtype))
        self._arrays.append((name, dtype, fill))

    def _part(self, part: RowStateT) -> RowStateT:
        self._parts.append(part)
        return part

    def resize(self, size: int) -> None:
        """Hold `size` rows: rows added are fresh (as if no candle had been seen)."""
        for name, dtype, fill in self._arrays:
            old = getattr(self, name)
            new = np.full((size, *old.shape[1:]), fill, dtype=dtype)
            kept = min(size, old.shape[0])
            new[:kept] = old[:kept]
            setattr(self, name, new)
        for part in self._parts:
            part.resize(size)
        self.size = size

    def reset(self, rows: RowIndex) -> None:
        """Make `rows` fresh again."""
        for name, _, fill in self._arrays:
            getattr(self, name)[rows] = fill
        for part in self._parts:
            part.reset(rows)


RowStateT = TypeVar("RowStateT", bound=RowState)


class IndicatorRows(RowState, ABC):
    """One indicator's incremental form for many series (see the module docstring)."""

    @abstractmethod
    def update(
        self,
        rows: RowIndex,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
        open_time_ms: IntArray | None = None,
    ) -> tuple[FloatArray, ...]:
        """The value columns at these candles (one element per row), NaN while warming up."""


_ONE_ROW = np.zeros(1, dtype=np.intp)


class SeriesState(IndicatorState[Value_]):
    """The incremental form of one series: row 0 of a one-row `IndicatorRows`."""

    __slots__ = ("_indicator", "_rows")

    def __init__(self, indicator: Indicator[Value_, Any]) -> None:
        self._indicator = indicator
        self._rows = indicator.rows()
        self._rows.resize(1)

    def update(
        self, high: float, low: float, close: float, volume: float, open_time_ms: int | None = None
    ) -> Value_ | None:
        columns = self._rows.update(
            _ONE_ROW,
            np.array([high], dtype=np.float64),
            np.array([low], dtype=np.float64),
            np.array([close], dtype=np.float64),
            np.array([volume], dtype=np.float64),
            None if open_time_ms is None else np.array([open_time_ms], dtype=np.int64),
        )
        outputs = tuple(float(column[0]) for column in columns)
        if any(math.isnan(value) for value in outputs):
            return None
        return self._indicator.value_of(outputs)


class Indicator(ABC, Generic[Value_, Batch]):
    """Parameters plus the forms of one indicator (see the module docstring)."""

    @property
    @abstractmethod
    def warmup(self) -> int:
        """Candles before the first value (the index of the first value)."""

    @abstractmethod
    def batch(self, candles: CandleSeries) -> Batch:
        """The indicator over the whole history: NaN before `warmup`."""

    @abstractmethod
    def rows(self) -> IndicatorRows:
        """A fresh incremental state for many series (no rows yet: `resize` it)."""

    @abstractmethod
    def value_of(self, outputs: tuple[float, ...]) -> Value_:
        """One series' value from its output columns' elements (in `rows().update`'s order)."""

    def start(self) -> IndicatorState[Value_]:
        """A fresh incremental state for one series."""
        return SeriesState(self)

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


def nan_prefixed(size: int, prefix: int) -> FloatArray:
    """An array to fill from index `prefix` on, NaN before it (no second pass over the rest)."""
    out = np.empty(size, dtype=np.float64)
    out[:prefix] = np.nan
    return out
