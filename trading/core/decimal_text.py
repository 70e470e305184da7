"""Plain decimal text (PostgreSQL's numeric_out: digits, an optional sign and point, no exponent)
read as float64, each number correctly rounded, as `float()` reads it.

numpy's own text reader (`np.fromstring(text, sep=" ")`) is correct but converts each number
through the C library's strtod, ≈ 190 ns a number here: half a second for the 2.6 million
numbers of a year of 1m candles. Here the points are taken out, the digits are read as int64
(≈ 20 ns a number) and each integer m with d decimal places becomes m / 10**d. When |m| ≤ 2**53
and d ≤ 22 both operands are exact in float64 and IEEE division rounds once, so the result is the
correctly rounded value of the decimal: the same float as `float(text)`, bit for bit. Numbers
outside that (more than 15 digits) are read one by one with `float()`; text that is not plain
decimals (NaN, an exponent, two points) falls back to numpy's reader."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

_POWERS_OF_TEN = 10.0 ** np.arange(23)  # 1e0 … 1e22: exact in float64
_EXACT = 2**53  # integers up to this are exact in float64
_INT64_DIGITS = 18  # any integer of this many digits fits in an int64
_TAB, _NEWLINE, _MINUS, _POINT, _ZERO = 9, 10, 45, 46, 48


class DecimalTable(NamedTuple):
    """A table of plain decimals as floats, and where each of its lines starts and ends in the
    text."""

    values: npt.NDArray[np.float64]  # (columns, rows): one contiguous row a column
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]


def read_table(text: bytes, columns: int) -> DecimalTable:
    """`text`: lines of `columns` tab-separated plain decimals (no trailing newline). Raises
    ValueError naming what does not fit."""
    chars = np.frombuffer(text + b"\n", dtype=np.uint8)  # a separator after the last number too
    # Every character that is not a digit, in text order: tabs, newlines, points (and signs).
    marks = np.flatnonzero(chars < _ZERO)
    kinds = chars[marks]
    if np.any(kinds == _MINUS):
        return _signed_table(text, columns)
    point = kinds == _POINT
    at_separator = np.flatnonzero(~point)  # where in `marks` each number ends
    ends = marks[at_separator]
    count = ends.size
    if count % columns:
        raise ValueError(f"read {count} numbers, not lines of {columns}")
    separators = kinds[at_separator]
    expected = np.full(count, _TAB, dtype=np.uint8)
    expected[columns - 1 :: columns] = _NEWLINE
    if not np.array_equal(separators, expected):
        raise ValueError(f"the lines do not hold {columns} tab-separated numbers each")
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    # Between two separators there is at most one other mark, the point; the decimal places are
    # the characters between it and the number's end.
    gaps = np.diff(at_separator, prepend=-1)
    if np.any(gaps > 2):
        raise ValueError("a number with two points")
    pointed = gaps == 2
    places = (ends - marks[at_separator - 1] - 1) * pointed  # (the first number's -1: pointed is False)
    digits = ends - starts - pointed
    values = _as_floats(text, count, places, digits, starts, ends)
    rows = count // columns
    return DecimalTable(
        np.ascontiguousarray(values.reshape(rows, columns).T), starts[::columns], ends[columns - 1 :: columns]
    )


def _signed_table(text: bytes, columns: int) -> DecimalTable:
    """`read_table` for text with negative numbers (never a price or volume): by numpy's reader."""
    values = _by_strtod(text, None)
    if values.size % columns:
        raise ValueError(f"read {values.size} numbers, not lines of {columns}")
    chars = np.frombuffer(text, dtype=np.uint8)
    breaks = np.flatnonzero(chars == _NEWLINE)
    starts = np.concatenate([np.zeros(1, np.int64), breaks + 1])
    ends = np.append(breaks, len(text)).astype(np.int64)
    if starts.size * columns != values.size:
        raise ValueError(f"the lines do not hold {columns} tab-separated numbers each")
    return DecimalTable(np.ascontiguousarray(values.reshape(-1, columns).T), starts, ends)


def _as_floats(
    text: bytes,
    count: int,
    places: npt.NDArray[np.int64],
    digits: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    if count and (int(digits.min()) < 1 or int(digits.max()) > _INT64_DIGITS):
        return _by_strtod(text, count)
    try:
        integers = np.fromstring(text.replace(b".", b""), dtype=np.int64, sep=" ")
    except ValueError:  # not plain digits (NaN, an exponent): numpy's float reader says what
        return _by_strtod(text, count)
    if integers.size != count:
        return _by_strtod(text, count)
    values = integers.astype(np.float64) / _POWERS_OF_TEN[places]
    for index in np.flatnonzero(np.abs(integers) > _EXACT).tolist():  # over 15 digits: rare
        values[index] = float(text[starts[index] : ends[index]])
    return values


def _by_strtod(text: bytes, count: int | None) -> npt.NDArray[np.float64]:
    try:
        values = np.fromstring(text, dtype=np.float64, sep=" ")
    except ValueError as error:
        raise ValueError(f"the text holds something that is not a decimal number ({error})") from None
    if count is not None and values.size != count:
        raise ValueError(f"read {values.size} numbers where {count} were expected")
    return values
