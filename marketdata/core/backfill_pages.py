"""Pages of REST klines for a backfill, and the candles to impute where the exchange has none.

Pure (no Django). A page is accepted whole or not at all: one malformed row, one open time out
of order, off the timeframe's grid or outside the range asked for means the exchange's answer
cannot be trusted, and since a candle left out of an accepted page would later be imputed, a
page with a bad row is never used in part.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from operator import le
from typing import Any

import numpy as np

from marketdata.core.klines import FrameError, Kline, RestRow, rest_row
from marketdata.core.timeframes import Timeframe

_ZERO = Decimal(0)


class PageRejected(ValueError):
    """A page of klines that is not used at all. `kind` is a short label for metrics."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(slots=True)
class KlineRows:
    """Validated closed candles of one stream, in strictly increasing open-time order, as
    columns: what a backfill writes without building a `Kline` per row.

    The decimal columns are the text to store (see `RestRow`): the exchange's strings as sent.
    """

    timeframe: Timeframe
    open_time_ms: list[int] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    high: list[str] = field(default_factory=list)
    low: list[str] = field(default_factory=list)
    close: list[str] = field(default_factory=list)
    volume: list[str] = field(default_factory=list)
    quote_volume: list[str] = field(default_factory=list)
    trades: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.open_time_ms)

    def extend(self, other: KlineRows) -> None:
        """Append `other`'s rows (later open times of the same stream)."""
        self.open_time_ms.extend(other.open_time_ms)
        self.open.extend(other.open)
        self.high.extend(other.high)
        self.low.extend(other.low)
        self.close.extend(other.close)
        self.volume.extend(other.volume)
        self.quote_volume.extend(other.quote_volume)
        self.trades.extend(other.trades)

    def append(self, row: RestRow) -> None:
        self.open_time_ms.append(row.open_time_ms)
        self.open.append(row.open)
        self.high.append(row.high)
        self.low.append(row.low)
        self.close.append(row.close)
        self.volume.append(row.volume)
        self.quote_volume.append(row.quote_volume)
        self.trades.append(row.trades)

    def klines(self, symbol: str) -> list[Kline]:
        """The rows as closed `Kline`s (Decimals with the strings' exponents)."""
        return [
            Kline(symbol, self.timeframe, t, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(v),
                  Decimal(q), n, True)
            for t, o, h, low, c, v, q, n in zip(
                self.open_time_ms, self.open, self.high, self.low, self.close, self.volume,
                self.quote_volume, self.trades, strict=True,
            )
        ]  # fmt: skip


def page_rows(
    rows: Any, *, symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
) -> KlineRows:
    """The closed candles of one `/klines` answer asked for open times [first_ms, last_ms],
    every row validated as `rest_row` validates it, in time order; `PageRejected` otherwise.

    `last_ms` must not be after the newest closed candle at `now_ms` (the exchange's clock), so
    a forming candle in the answer is outside the range. A backfill reads a year of rows, so a
    page is first checked whole, column by column (`_plain_page`); a page that check does not
    accept goes row by row through `rest_row`, which names what is wrong. The column check
    accepts only pages every row of which `rest_row` accepts, with the same strings.
    """
    if not isinstance(rows, list):
        raise PageRejected("malformed_page", f"expected a list of rows, got {type(rows).__name__}")
    page = _plain_page(rows, timeframe, first_ms, last_ms, now_ms)
    if page is not None:
        return page
    return _page_row_by_row(rows, symbol, timeframe, first_ms, last_ms, now_ms)


def _page_row_by_row(
    rows: list[Any], symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
) -> KlineRows:
    page = KlineRows(timeframe)
    previous = first_ms - timeframe.ms
    for index, raw in enumerate(rows):
        try:
            row = rest_row(raw, symbol=symbol, timeframe=timeframe, now_ms=now_ms)
        except FrameError as error:
            raise PageRejected(error.kind, f"row {index}: {error.detail}") from None
        opened = row.open_time_ms
        if opened < first_ms or opened > last_ms:
            raise PageRejected(
                "outside_range", f"row {index}: open time {opened} outside the range {first_ms}…{last_ms}"
            )
        if opened <= previous:
            raise PageRejected("non_monotonic", f"row {index}: open time {opened} does not follow {previous}")
        if not row.closed:
            raise PageRejected("not_closed", f"row {index}: the candle opening at {opened} is not closed")
        page.append(row)
        previous = opened
    return page


def page_klines(
    rows: Any, *, symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
) -> list[Kline]:
    """`page_rows` as `Kline`s."""
    page = page_rows(
        rows, symbol=symbol, timeframe=timeframe, first_ms=first_ms, last_ms=last_ms, now_ms=now_ms
    )
    return page.klines(symbol)


# What `_plain_page` lets through unread: ASCII digits, points and the separator it joins with.
_PLAIN_BYTES = b"0123456789.\n"


def _plain_page(
    rows: list[Any], timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
) -> KlineRows | None:
    """The page when every row is well formed, plain (decimal strings of digits and at most one
    point, integer times and counts) and passes every rule; None when anything is otherwise, for
    `rest_row` to look at row by row. Per row this costs a fraction of `rest_row`: the strings
    are checked a column at a time, and each is read as a `Decimal` once, in C."""
    if not rows:
        return KlineRows(timeframe)
    if not set(map(type, rows)) <= {list, tuple}:
        return None
    columns = list(zip(*rows, strict=False))  # as long as the shortest row
    if len(columns) < 9:
        return None
    times, o, h, low, c, v, _close_time, q, n = columns[:9]
    if set(map(type, times)) != {int} or set(map(type, n)) != {int}:
        return None
    try:
        # Only digits and points (no sign, exponent, space, underscore, NaN, Infinity), and
        # then a string `Decimal` accepts is a finite, non-negative decimal that PostgreSQL's
        # numeric input reads with the same value and scale. join() refuses a non-string.
        text = "\n".join(o + h + low + c + v + q)
        if not text.isascii() or text.encode().translate(None, _PLAIN_BYTES):
            return None
        lows = list(map(Decimal, low))
        opens, highs, closes = list(map(Decimal, o)), list(map(Decimal, h)), list(map(Decimal, c))
        for column in (v, q):
            list(map(Decimal, column))  # only to know that every string is a decimal
        # Comparisons as `check_values` makes them: low > 0 and low <= open, close <= high
        # (so every price is positive and high >= low); volumes cannot be negative here.
        if not (
            min(lows) > _ZERO
            and all(map(le, lows, opens))
            and all(map(le, lows, closes))
            and all(map(le, opens, highs))
            and all(map(le, closes, highs))
            and min(n) >= 0
        ):
            return None
        opened = np.array(times, dtype=np.int64)
    except (InvalidOperation, TypeError, OverflowError, ValueError):
        return None
    step = timeframe.ms
    if not (
        int(opened[0]) >= first_ms
        and int(opened[-1]) <= last_ms
        and int(opened[-1]) + step <= now_ms
        and not (opened % step).any()
        and bool((np.diff(opened) > 0).all())
    ):
        return None
    return KlineRows(timeframe, list(times), list(o), list(h), list(low), list(c), list(v), list(q), list(n))


def imputed_kline(*, symbol: str, timeframe: Timeframe, open_time_ms: int, previous_close: Decimal) -> Kline:
    """The candle of a bucket in which nothing traded: every price the previous close, no
    volume, no trades (what Binance itself reports for such a minute)."""
    return Kline(
        symbol, timeframe, open_time_ms, previous_close, previous_close, previous_close, previous_close,
        _ZERO, _ZERO, 0, True,
    )  # fmt: skip


def missing_open_times(
    open_times: Sequence[int], *, timeframe: Timeframe, first_ms: int, last_ms: int
) -> Iterator[tuple[int, int]]:
    """Ranges (first, last) of open times in [first_ms, last_ms] that `open_times` (strictly
    increasing, aligned, within the range) do not cover."""
    step = timeframe.ms
    if len(open_times) == (last_ms - first_ms) // step + 1:
        return  # every open time of the range is there
    expected = first_ms
    for opened in open_times:
        if opened > expected:
            yield expected, opened - step
        expected = opened + step
    if expected <= last_ms:
        yield expected, last_ms
