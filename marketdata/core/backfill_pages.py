"""Pages of REST klines for a backfill, and the candles to impute where the exchange has none.

Pure (no Django). A page is accepted whole or not at all: one malformed row, one open time out
of order, off the timeframe's grid or outside the range asked for means the exchange's answer
cannot be trusted, and since a candle left out of an accepted page would later be imputed, a
page with a bad row is never used in part.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from marketdata.core.klines import FrameError, Kline, parse_rest_row
from marketdata.core.timeframes import Timeframe

_INFINITY = Decimal("Infinity")
_ZERO = Decimal(0)


class PageRejected(ValueError):
    """A page of klines that is not used at all. `kind` is a short label for metrics."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def page_klines(
    rows: Any, *, symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int, now_ms: int
) -> list[Kline]:
    """The closed candles of one `/klines` answer asked for open times [first_ms, last_ms],
    validated as `parse_rest_row` validates a row, in time order; `PageRejected` otherwise.

    `last_ms` must not be after the newest closed candle at `now_ms` (the exchange's clock), so
    a forming candle in the answer is outside the range. A backfill parses a year of rows, so a
    well-formed row takes a straight path; any row it does not accept goes through
    `parse_rest_row`, which names what is wrong (both accept exactly the same rows).
    """
    if not isinstance(rows, list):
        raise PageRejected("malformed_page", f"expected a list of rows, got {type(rows).__name__}")
    step = timeframe.ms
    klines: list[Kline] = []
    append = klines.append
    previous = first_ms - step
    for index, row in enumerate(rows):
        kline = _fast_row(row, symbol, timeframe, step, now_ms)
        if kline is None:
            try:
                kline = parse_rest_row(row, symbol=symbol, timeframe=timeframe, now_ms=now_ms)
            except FrameError as error:
                raise PageRejected(error.kind, f"row {index}: {error.detail}") from None
        opened = kline.open_time_ms
        if opened < first_ms or opened > last_ms:
            raise PageRejected(
                "outside_range", f"row {index}: open time {opened} outside the range {first_ms}…{last_ms}"
            )
        if opened <= previous:
            raise PageRejected("non_monotonic", f"row {index}: open time {opened} does not follow {previous}")
        if not kline.closed:
            raise PageRejected("not_closed", f"row {index}: the candle opening at {opened} is not closed")
        append(kline)
        previous = opened
    return klines


def _fast_row(row: Any, symbol: str, timeframe: Timeframe, step: int, now_ms: int) -> Kline | None:
    try:
        opened, o, h, low, c, v, _close_time, q, n = row[:9]
        if not (
            type(opened) is int
            and type(o) is str
            and type(h) is str
            and type(low) is str
            and type(c) is str
            and type(v) is str
            and type(q) is str
            and type(n) is int
        ):
            return None
        kline = Kline(
            symbol, timeframe, opened, Decimal(o), Decimal(h), Decimal(low), Decimal(c), Decimal(v),
            Decimal(q), n, opened + step <= now_ms,
        )  # fmt: skip
        # Comparisons with a NaN raise (caught below); the bounds refuse infinities.
        if (
            _ZERO < kline.low <= kline.open <= kline.high < _INFINITY
            and kline.low <= kline.close <= kline.high
            and _ZERO <= kline.volume < _INFINITY
            and _ZERO <= kline.quote_volume < _INFINITY
            and n >= 0
            and opened % step == 0
        ):
            return kline
    except Exception:  # noqa: BLE001 - the careful path says what is wrong
        return None
    return None


def imputed_kline(*, symbol: str, timeframe: Timeframe, open_time_ms: int, previous_close: Decimal) -> Kline:
    """The candle of a bucket in which nothing traded: every price the previous close, no
    volume, no trades (what Binance itself reports for such a minute)."""
    return Kline(
        symbol, timeframe, open_time_ms, previous_close, previous_close, previous_close, previous_close,
        _ZERO, _ZERO, 0, True,
    )  # fmt: skip


def missing_open_times(
    klines: list[Kline], *, timeframe: Timeframe, first_ms: int, last_ms: int
) -> Iterator[tuple[int, int]]:
    """Ranges (first, last) of open times in [first_ms, last_ms] that `klines` (in time order,
    within the range) do not cover."""
    step = timeframe.ms
    expected = first_ms
    for kline in klines:
        if kline.open_time_ms > expected:
            yield expected, kline.open_time_ms - step
        expected = kline.open_time_ms + step
    if expected <= last_ms:
        yield expected, last_ms
