"""Resampling closed candles into longer timeframes (3m, 10m, 4h, …): exact and deterministic.

One aggregation, two forms: `resample` derives a whole history held as fixed-point arrays
(backfills, backtests), and `resample_stream.Resampler` takes closed candles one at a time, in any
order and with duplicates, and returns the derived candles they complete, computed by `resample`.

Rules, the same in both forms:
- Buckets are UTC and epoch-aligned: a bucket opens at a whole multiple of its length since
  1970-01-01T00:00Z, so 1m→10m and 5m→10m cut history at the same instants.
- A bucket is derived only when every source candle in it is present (real or imputed) and
  closed. Partial buckets are never emitted, not even at the ends of a history.
- open = the first open, high = the highest high, low = the lowest low, close = the last close;
  volume, quote volume, trades and `imputed_inputs` are summed.
- Exact decimals, exponent included. The output's digits depend only on the input's digits,
  never on arrival order, batch size or how much history came with it:
  - open and close are the first and last candles' own values, unchanged;
  - high is `Decimal.max` and low is `Decimal.min` of the constituents. When values are equal,
    the high keeps the one written with the fewest decimal places and the low the one with the
    most: the decimal module's total order for positive numbers. So "1.0" and "1.00" give high
    "1.0" and low "1.00";
  - sums are exact (never rounded, whatever the decimal context) and written with the most
    decimal places of any term, as `Decimal` addition writes them: "1.5" + "0.25" = "1.75",
    "0E-8" + "0" = "0E-8".
- Values must not be negative (prices are positive, volumes at least zero) and are refused
  otherwise. That keeps the tie rule above a plain "fewest/most places".

How: each decimal column becomes integers in units of 10**-scale, with `scale` the smallest that
holds every value of the column exactly (trailing zeros do not count). Each value's own number of
decimal places is kept beside it, so the strings can be rebuilt. numpy's reduceat does the
arithmetic on int64, or on Python integers (object arrays: exact, slower) when a sum could pass
2**63. Decimals are built again only at the edge (`FixedPointColumn.decimals`). No floats are
used anywhere in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe

Derivation = tuple[Timeframe, Timeframe]

DEFAULT_DERIVATIONS: tuple[Derivation, ...] = (
    (Timeframe.M1, Timeframe.M3),
    (Timeframe.M1, Timeframe.M5),
    (Timeframe.M1, Timeframe.M10),
    (Timeframe.M5, Timeframe.M10),
    (Timeframe.M1, Timeframe.M15),
    (Timeframe.M1, Timeframe.H1),
    (Timeframe.H1, Timeframe.H4),
)
"""(source, target) pairs. 3m, 10m and 4h are the desk's own. 5m, 15m and 1h are for exchanges
that do not serve them. 1m→10m and 5m→10m give the same candles."""

_INT64_MAX = int(np.iinfo(np.int64).max)
# Decimal places are held as int16: more than 32,000 digits after the point is no price.
_PLACES_MIN = int(np.iinfo(np.int16).min)
_PLACES_MAX = int(np.iinfo(np.int16).max)


def derivation_ratio(source: Timeframe, target: Timeframe) -> int:
    """How many `source` candles make one `target` candle. ValueError if `target` is not a
    longer whole multiple of `source`."""
    if target.ms <= source.ms:
        raise ValueError(f"target {target} is not longer than source {source}")
    if target.ms % source.ms:
        raise ValueError(f"target {target} is not a whole multiple of source {source}")
    return target.ms // source.ms


def validate_derivations(entries: Iterable[Sequence[str]]) -> tuple[Derivation, ...]:
    """A derivation map from settings, as `Timeframe` pairs in the given order.

    Each entry is a (source, target) pair of timeframe names ("1m", "4h") or `Timeframe`s. The
    target must be longer than the source and a whole multiple of it. ValueError names the first
    bad entry.
    """
    checked: list[Derivation] = []
    for number, entry in enumerate(entries, start=1):
        if isinstance(entry, str) or len(entry) != 2:
            raise ValueError(f"derivation #{number} {entry!r} is not a (source, target) pair")
        source_name, target_name = entry
        try:
            pair = (Timeframe.parse(source_name), Timeframe.parse(target_name))
            derivation_ratio(*pair)
        except ValueError as error:
            raise ValueError(f"derivation #{number} ({source_name!r}, {target_name!r}): {error}") from None
        if pair in checked:
            raise ValueError(f"derivation #{number} ({source_name!r}, {target_name!r}) is listed twice")
        checked.append(pair)
    return tuple(checked)


@dataclass(frozen=True, slots=True)
class ClosedCandle:
    """A closed candle of one symbol, used both as a resampling input and as its output.

    `imputed_inputs` counts the candles in it that were imputed, in the timeframe they were
    received in. An imputed candle stands for a missing one (volume 0, open = high = low = close =
    the previous close) and counts itself: 1. A derived candle carries the sum over its
    constituents, so 1m→5m→10m and 1m→10m give the same count.
    """

    timeframe: Timeframe
    open_time_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    quote_volume: Decimal
    trades: int
    imputed_inputs: int = 0

    @property
    def imputed(self) -> bool:
        return self.imputed_inputs > 0

    @classmethod
    def from_kline(cls, kline: Kline, *, imputed: bool = False) -> ClosedCandle:
        """The closed `kline` as a candle to resample. ValueError if it is still forming."""
        if not kline.closed:
            raise ValueError(
                f"{kline.symbol} {kline.timeframe} candle at {kline.open_time_ms} is not closed yet"
            )
        return cls(
            timeframe=kline.timeframe,
            open_time_ms=kline.open_time_ms,
            open=kline.open,
            high=kline.high,
            low=kline.low,
            close=kline.close,
            volume=kline.volume,
            quote_volume=kline.quote_volume,
            trades=kline.trades,
            imputed_inputs=1 if imputed else 0,
        )

    def same_as(self, other: ClosedCandle) -> bool:
        """Identical, digits included: "1.0" and "1.00" are equal values but not the same candle."""
        return (
            self.timeframe == other.timeframe
            and self.open_time_ms == other.open_time_ms
            and self.trades == other.trades
            and self.imputed_inputs == other.imputed_inputs
            and all(
                mine.as_tuple() == theirs.as_tuple()
                for mine, theirs in zip(self.decimal_values(), other.decimal_values(), strict=True)
            )
        )

    def decimal_values(self) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal, Decimal]:
        return (self.open, self.high, self.low, self.close, self.volume, self.quote_volume)


@dataclass(frozen=True, slots=True)
class FixedPointColumn:
    """Non-negative decimals as integers: value i is ``units[i] / 10**scale``, written with
    ``places[i]`` digits after the point (negative for exponents above zero, as in "5E+2").

    `units` is int64, or object (Python int) when a value does not fit in int64.
    """

    units: npt.NDArray[Any]
    scale: int
    places: npt.NDArray[np.int16]

    def __len__(self) -> int:
        return len(self.units)

    @classmethod
    def from_decimals(cls, values: Sequence[Decimal]) -> FixedPointColumn:
        """Exact conversion. ValueError for a negative, infinite or NaN value."""
        coefficients: list[int] = []
        places: list[int] = []
        scale = 0
        for value in values:
            sign, digits, exponent = value.as_tuple()
            if not isinstance(exponent, int):
                raise ValueError(f"not a finite decimal: {value}")
            if sign:
                raise ValueError(f"negative value {value}: prices and volumes are never below zero")
            if not _PLACES_MIN <= -exponent <= _PLACES_MAX:
                raise ValueError(f"{value} has an exponent beyond ±{_PLACES_MAX}")
            coefficient = int("".join(map(str, digits)))
            places.append(-exponent)
            coefficients.append(coefficient)
            # The places this value needs: its own, less its trailing zeros.
            significant = -exponent
            while coefficient and coefficient % 10 == 0:
                coefficient //= 10
                significant -= 1
            if coefficient and significant > scale:
                scale = significant
        units = [
            c * 10 ** (scale - p) if p <= scale else c // 10 ** (p - scale)
            for c, p in zip(coefficients, places, strict=True)
        ]
        fits = max(units, default=0) <= _INT64_MAX
        return cls(
            units=np.array(units, dtype=np.int64 if fits else object),
            scale=scale,
            places=np.array(places, dtype=np.int16),
        )

    @classmethod
    def from_strings(cls, values: Sequence[str]) -> FixedPointColumn:
        """`from_decimals` of the `Decimal`s of `values`, the same column, read without building
        them when every value is plain ASCII digits with at most one point and at most 18 digits
        (what PostgreSQL prints for a numeric, what exchanges send); otherwise through
        `from_decimals`. The arithmetic is numpy's on the strings' code points, by chunks."""
        count = len(values)
        if count == 0:
            return cls.from_decimals([])
        parts = [
            _plain_coefficients(values[start : start + _STRING_CHUNK])
            for start in range(0, count, _STRING_CHUNK)
        ]
        if any(part is None for part in parts):
            return cls.from_decimals([Decimal(value) for value in values])
        coefficients = np.concatenate([part[0] for part in parts if part is not None])
        places = np.concatenate([part[1] for part in parts if part is not None])
        # The places a value needs: its own, less its coefficient's trailing zeros.
        significant = places.astype(np.int64)
        rest = coefficients.copy()
        for _ in range(_INT64_DIGITS):
            trailing = (rest != 0) & (rest % 10 == 0)
            if not trailing.any():
                break
            rest[trailing] //= 10
            significant[trailing] -= 1
        nonzero = coefficients != 0
        scale = max(0, int(significant[nonzero].max())) if nonzero.any() else 0
        shift = scale - places.astype(np.int64)  # units = coefficient * 10**shift
        if int(shift.max()) > _INT64_DIGITS - 1:
            return cls.from_decimals([Decimal(value) for value in values])
        up = shift >= 0
        factor = 10 ** np.abs(shift)
        if bool((coefficients[up] > _INT64_MAX // factor[up]).any()):
            return cls.from_decimals([Decimal(value) for value in values])  # needs Python integers
        units = np.where(up, coefficients * np.where(up, factor, 1), coefficients // np.where(up, 1, factor))
        return cls(units=units.astype(np.int64), scale=scale, places=places.astype(np.int16))

    def strings(self) -> list[str]:
        """``format(d, "f")`` of every `Decimal` of `decimals()` (fixed point, no exponent, the
        value's own places), built without them where numpy can: the text a bulk writer sends,
        which PostgreSQL reads as the same numeric as ``str(d)``."""
        count = len(self)
        if count == 0:
            return []
        if self.units.dtype == object:
            return [format(value, "f") for value in self.decimals()]
        result: npt.NDArray[Any] = np.empty(count, dtype=object)
        distinct = np.unique(self.places)
        for places in distinct.tolist():
            at = slice(None) if len(distinct) == 1 else np.flatnonzero(self.places == places)
            units = self.units[at]
            shift = places - self.scale
            if places < 0 or places > _INT64_DIGITS - 1 or abs(shift) > _INT64_DIGITS - 1:
                texts = [format(value, "f") for value in self.take(at).decimals()]
            else:
                if shift >= 0:
                    if bool((units > _INT64_MAX // 10**shift).any()):
                        result[at] = [format(value, "f") for value in self.take(at).decimals()]
                        continue
                    coefficients = units * 10**shift
                else:
                    coefficients = units // 10**-shift
                if places == 0:
                    texts = list(map(str, coefficients.tolist()))
                else:
                    whole, fraction = np.divmod(coefficients, 10**places)
                    texts = list(map(f"{{}}.{{:0{places}d}}".format, whole.tolist(), fraction.tolist()))
            if len(distinct) == 1:
                return texts
            result[at] = texts
        strings: list[str] = result.tolist()
        return strings

    def decimals(self) -> list[Decimal]:
        """The values as `Decimal`s, each with its own exponent: the edge back from fixed point."""
        scale = self.scale
        result: list[Decimal] = []
        for units, places in zip(self.units.tolist(), self.places.tolist(), strict=True):
            shift = places - scale
            coefficient = units * 10**shift if shift >= 0 else units // 10**-shift
            # Built from a string, a Decimal is exact whatever the context's precision.
            result.append(Decimal(f"{coefficient}E{-places}"))
        return result

    def take(self, index: npt.NDArray[np.intp] | slice) -> FixedPointColumn:
        return FixedPointColumn(units=self.units[index], scale=self.scale, places=self.places[index])


@dataclass(frozen=True, slots=True)
class CandleArrays:
    """Candles of one symbol and timeframe as columns, open times strictly increasing."""

    timeframe: Timeframe
    open_time_ms: npt.NDArray[np.int64]
    open: FixedPointColumn
    high: FixedPointColumn
    low: FixedPointColumn
    close: FixedPointColumn
    volume: FixedPointColumn
    quote_volume: FixedPointColumn
    trades: npt.NDArray[Any]
    imputed_inputs: npt.NDArray[Any]

    def __post_init__(self) -> None:
        lengths = {
            len(self.open_time_ms),
            len(self.open),
            len(self.high),
            len(self.low),
            len(self.close),
            len(self.volume),
            len(self.quote_volume),
            len(self.trades),
            len(self.imputed_inputs),
        }
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.open_time_ms)

    @classmethod
    def from_candles(cls, timeframe: Timeframe, candles: Sequence[ClosedCandle]) -> CandleArrays:
        """Columns of `candles`, which must all be of `timeframe`, in the order given."""
        for candle in candles:
            if candle.timeframe != timeframe:
                raise ValueError(
                    f"a {candle.timeframe} candle at {candle.open_time_ms} among {timeframe} candles"
                )
        return cls(
            timeframe=timeframe,
            open_time_ms=np.array([c.open_time_ms for c in candles], dtype=np.int64),
            open=FixedPointColumn.from_decimals([c.open for c in candles]),
            high=FixedPointColumn.from_decimals([c.high for c in candles]),
            low=FixedPointColumn.from_decimals([c.low for c in candles]),
            close=FixedPointColumn.from_decimals([c.close for c in candles]),
            volume=FixedPointColumn.from_decimals([c.volume for c in candles]),
            quote_volume=FixedPointColumn.from_decimals([c.quote_volume for c in candles]),
            trades=_integer_array([c.trades for c in candles]),
            imputed_inputs=_integer_array([c.imputed_inputs for c in candles]),
        )

    def take(self, index: npt.NDArray[np.intp] | slice) -> CandleArrays:
        """The rows at `index` (positions or a slice), in that order."""
        return CandleArrays(
            timeframe=self.timeframe,
            open_time_ms=self.open_time_ms[index],
            open=self.open.take(index),
            high=self.high.take(index),
            low=self.low.take(index),
            close=self.close.take(index),
            volume=self.volume.take(index),
            quote_volume=self.quote_volume.take(index),
            trades=self.trades[index],
            imputed_inputs=self.imputed_inputs[index],
        )

    def to_candles(self) -> list[ClosedCandle]:
        columns = zip(
            self.open_time_ms.tolist(),
            self.open.decimals(),
            self.high.decimals(),
            self.low.decimals(),
            self.close.decimals(),
            self.volume.decimals(),
            self.quote_volume.decimals(),
            self.trades.tolist(),
            self.imputed_inputs.tolist(),
            strict=True,
        )
        return [
            ClosedCandle(self.timeframe, int(t), o, h, low, c, v, q, int(n), int(i))
            for t, o, h, low, c, v, q, n, i in columns
        ]


def resample(candles: CandleArrays, target: Timeframe) -> CandleArrays:
    """The `target` candles of every complete bucket in `candles`, in time order.

    `candles` must have strictly increasing open times on `candles.timeframe` boundaries
    (ValueError otherwise, naming the first offender). Resolve duplicates first: the streaming
    `Resampler.add_many` does, by the rule documented there.
    """
    source = candles.timeframe
    ratio = derivation_ratio(source, target)
    times = candles.open_time_ms
    if len(times) == 0:
        return replace(candles, timeframe=target)
    step = source.ms
    if times[0] % step == 0 and bool((np.diff(times) == step).all()):
        # No gap (the usual history): the complete buckets are one slice, from the first bucket
        # boundary to the last whole bucket.
        head = (ratio - (times[0] % target.ms) // step) % ratio
        whole = (len(times) - head) // ratio * ratio if len(times) > head else 0
        candles = candles.take(slice(head, head + whole))
    else:
        misaligned = np.flatnonzero(times % step)
        if len(misaligned):
            raise ValueError(
                f"{source} candle at open time {int(times[misaligned[0]])} ms is not on a {source} boundary"
            )
        unordered = np.flatnonzero(times[1:] <= times[:-1])
        if len(unordered):
            at = int(unordered[0])
            raise ValueError(
                f"open times must be strictly increasing: {int(times[at])} is followed by"
                f" {int(times[at + 1])} (row {at + 1}); sort them and resolve duplicates first"
            )
        # Open times are distinct and aligned, so a bucket of `ratio` candles holds all of them.
        buckets = times - times % target.ms
        changes = np.flatnonzero(buckets[1:] != buckets[:-1]) + 1
        counts = np.diff(changes, prepend=0, append=len(times))
        complete = counts == ratio
        if not complete.all():
            candles = candles.take(np.flatnonzero(np.repeat(complete, counts)))
    # From here every bucket is `ratio` consecutive rows.
    first = np.arange(0, len(candles), ratio)
    return CandleArrays(
        timeframe=target,
        open_time_ms=candles.open_time_ms[first],
        open=candles.open.take(first),
        high=_extreme(candles.high, ratio, highest=True),
        low=_extreme(candles.low, ratio, highest=False),
        close=candles.close.take(first + (ratio - 1)),
        volume=_sum(candles.volume, ratio),
        quote_volume=_sum(candles.quote_volume, ratio),
        trades=_sum_units(candles.trades, ratio),
        imputed_inputs=_sum_units(candles.imputed_inputs, ratio),
    )


def resample_history(
    history: CandleArrays, derivations: Iterable[Derivation] = DEFAULT_DERIVATIONS
) -> dict[Derivation, CandleArrays]:
    """Every derivation in the map that `history` can feed, directly or through an earlier one.

    An entry whose source is neither `history`'s timeframe nor the target of an earlier entry is
    left out. Where two entries derive the same timeframe (1m→10m, 5m→10m), the first one's
    output is the one later entries derive from.
    """
    available: dict[Timeframe, CandleArrays] = {history.timeframe: history}
    derived: dict[Derivation, CandleArrays] = {}
    for source, target in derivations:
        if source in available:
            derived[(source, target)] = result = resample(available[source], target)
            available.setdefault(target, result)
    return derived


def _extreme(column: FixedPointColumn, ratio: int, *, highest: bool) -> FixedPointColumn:
    best = _runs(np.maximum if highest else np.minimum, column.units, ratio)
    tied = (column.units.reshape(-1, ratio) == best[:, np.newaxis]).ravel()
    # Among equal values, Decimal.max keeps the fewest places and Decimal.min the most.
    if highest:
        places = _runs(np.minimum, np.where(tied, column.places, _PLACES_MAX), ratio)
    else:
        places = _runs(np.maximum, np.where(tied, column.places, _PLACES_MIN), ratio)
    return FixedPointColumn(units=best, scale=column.scale, places=places)


def _sum(column: FixedPointColumn, ratio: int) -> FixedPointColumn:
    return FixedPointColumn(
        units=_sum_units(column.units, ratio),
        scale=column.scale,
        places=_runs(np.maximum, column.places, ratio),
    )


def _sum_units(units: npt.NDArray[Any], ratio: int) -> npt.NDArray[Any]:
    # Overflow guard: a bucket holds `ratio` non-negative terms, so its sum stays within int64
    # if the largest term times `ratio` does. Otherwise add Python integers (object array).
    if units.dtype != object and len(units) and int(units.max()) * ratio > _INT64_MAX:
        units = units.astype(object)
    return _runs(np.add, units, ratio)


# Up to this many candles a bucket, combining the runs' columns one at a time is faster than
# reduceat, whose cost per run dominates when runs are short (measured with bench/resample.py).
_COLUMN_BY_COLUMN_MAX_RATIO = 16


def _runs(operation: np.ufunc, values: npt.NDArray[Any], ratio: int) -> npt.NDArray[Any]:
    """`operation` folded over each run of `ratio` consecutive values (len(values) % ratio == 0)."""
    if len(values) == 0:
        return values[:0].copy()
    if ratio > _COLUMN_BY_COLUMN_MAX_RATIO:
        folded: npt.NDArray[Any] = operation.reduceat(values, np.arange(0, len(values), ratio))
        return folded
    runs = values.reshape(-1, ratio)
    folded = runs[:, 0].copy()
    for offset in range(1, ratio):
        operation(folded, runs[:, offset], out=folded)
    return folded


_INT64_DIGITS = 18  # every integer of up to 18 digits fits in int64
_STRING_CHUNK = 65_536  # rows of code points at a time: bounded temporary arrays
_CODE_ZERO, _CODE_NINE, _CODE_POINT, _CODE_NEWLINE = ord("0"), ord("9"), ord("."), ord("\n")


def _plain_coefficients(
    values: Sequence[str],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
    """(coefficient, places) of each plain decimal string, or None if any is not plain (ASCII
    digits, at most one point, at least one digit, at most 18 digits) or is not a `str`.

    Worked on the bytes of the strings joined by newlines, so nothing is done per string in
    Python: each digit's power of ten is the count of digits after it in its own string.
    """
    try:
        joined = np.frombuffer("\n".join(values).encode("ascii"), dtype=np.uint8)
    except (TypeError, UnicodeEncodeError):
        return None
    is_newline = joined == _CODE_NEWLINE
    is_point = joined == _CODE_POINT
    is_digit = (joined >= _CODE_ZERO) & (joined <= _CODE_NINE)
    if not bool((is_newline | is_point | is_digit).all()):
        return None
    count = len(values)
    if int(is_newline.sum()) != count - 1:
        return None  # a newline inside a string
    owner = np.cumsum(is_newline)  # the string each byte belongs to (a newline: the next one)
    ends = np.append(np.flatnonzero(is_newline), len(joined))  # exclusive
    points = np.bincount(owner[is_point], minlength=count)
    digits = np.bincount(owner[is_digit], minlength=count)
    if bool((points > 1).any()) or bool((digits < 1).any()) or int(digits.max()) > _INT64_DIGITS:
        return None
    places = np.zeros(count, dtype=np.int64)
    at_point = np.flatnonzero(is_point)
    places[owner[at_point]] = ends[owner[at_point]] - at_point - 1
    where = np.flatnonzero(is_digit)
    first_digit = np.concatenate(([0], np.cumsum(digits)[:-1]))  # ordinal of each string's first digit
    after = (first_digit + digits - 1)[owner[where]] - np.arange(len(where))  # digits after this one
    terms = (joined[where].astype(np.int64) - _CODE_ZERO) * _POWERS_OF_TEN[after]
    return np.add.reduceat(terms, first_digit), places


_POWERS_OF_TEN = np.array([10**power for power in range(_INT64_DIGITS)], dtype=np.int64)


def _integer_array(values: list[int]) -> npt.NDArray[Any]:
    if any(value < 0 for value in values):
        raise ValueError("trades and imputed counts are never below zero")
    fits = max(values, default=0) <= _INT64_MAX
    return np.array(values, dtype=np.int64 if fits else object)
