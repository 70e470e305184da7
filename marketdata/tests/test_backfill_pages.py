"""Validation of REST pages for a backfill: the column-at-a-time check accepts exactly the pages
that `rest_row`, row by row, accepts, with the same strings; every other page gets the row by
row verdict (the same `PageRejected` kind and message)."""

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.core import backfill_pages
from marketdata.core.backfill_pages import (
    KlineRows,
    PageRejected,
    _page_row_by_row,
    _plain_page,
    missing_open_times,
    page_klines,
    page_rows,
)
from marketdata.core.klines import decimal_text, parse_rest_row, rest_row
from marketdata.core.timeframes import Timeframe

MINUTE = 60_000
T0 = 1_677_628_800_000
NOW = T0 + 10_000 * MINUTE
M1 = Timeframe.M1


def row(
    minute: int,
    o: Any = "23140.48000000",
    h: Any = "23150.77000000",
    low: Any = "23128.52000000",
    c: Any = "23142.31000000",
    v: Any = "2.13177700",
    q: Any = "49330.12345678",
    n: Any = 7,
) -> list[Any]:
    opened = T0 + minute * MINUTE
    return [opened, o, h, low, c, v, opened + MINUTE - 1, q, n, "0", "0", "0"]


def verdict(rows: Any, *, first: int = 0, last: int = 999) -> KlineRows | tuple[str, str]:
    try:
        return page_rows(
            rows, symbol="BTCUSDT", timeframe=M1, first_ms=T0 + first * MINUTE, last_ms=T0 + last * MINUTE,
            now_ms=NOW,
        )  # fmt: skip
    except PageRejected as error:
        return (error.kind, error.detail)


def reference(rows: Any, *, first: int = 0, last: int = 999) -> KlineRows | tuple[str, str]:
    try:
        return _page_row_by_row(rows, "BTCUSDT", M1, T0 + first * MINUTE, T0 + last * MINUTE, NOW)
    except PageRejected as error:
        return (error.kind, error.detail)


def test_a_plain_page_is_taken_whole_with_the_exchanges_strings():
    rows = [row(m) for m in range(5)]
    assert _plain_page(rows, M1, T0, T0 + 999 * MINUTE, NOW) is not None
    page = verdict(rows)
    assert isinstance(page, KlineRows)
    assert page == reference(rows)
    assert page.open_time_ms == [T0 + m * MINUTE for m in range(5)]
    assert (page.open[0], page.quote_volume[0], page.trades[0]) == ("23140.48000000", "49330.12345678", 7)
    assert page.klines("BTCUSDT") == [
        parse_rest_row(r, symbol="BTCUSDT", timeframe=M1, now_ms=NOW) for r in rows
    ]


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"o": "abc"}, "bad_number"),
        ({"o": "NaN"}, "bad_number"),
        ({"h": "Infinity"}, "bad_number"),
        ({"v": 1.5}, "bad_number"),
        ({"n": "7"}, "bad_number"),
        ({"n": True}, "bad_number"),
        ({"low": "0", "o": "0", "c": "0"}, "non_positive_price"),
        ({"low": "23160.00"}, "high_below_low"),
        ({"o": "23150.78"}, "ohlc_inconsistent"),
        ({"c": "23128.51"}, "ohlc_inconsistent"),
        ({"v": "-1"}, "negative_volume"),
        ({"n": -1}, "negative_volume"),
    ],
)
def test_one_bad_row_rejects_the_page_as_row_by_row_does(change, kind):
    rows = [row(m) for m in range(5)]
    rows[3] = row(3, **change)
    got = verdict(rows)
    assert got == reference(rows)
    assert isinstance(got, tuple)
    assert got[0] == kind
    assert got[1].startswith("row 3: ")


@pytest.mark.parametrize(
    ("rows", "kind"),
    [
        ([row(0), row(2), row(1)], "non_monotonic"),
        ([row(0), row(0)], "non_monotonic"),
        ([row(0), [T0 + 30_000, *row(1)[1:]]], "misaligned_open_time"),
        ([row(0), row(1000)], "outside_range"),
        ([row(9_999), row(10_000)], "not_closed"),
        ([row(0), row(1)[:8]], "malformed_row"),
        ([row(0), {"t": T0}], "malformed_row"),
        ("not a list", "malformed_page"),
    ],
)
def test_order_range_and_shape_are_checked_as_row_by_row_does(rows, kind):
    last = 10_000 if kind == "not_closed" else 999
    got = verdict(rows, last=last)
    assert isinstance(got, tuple)
    assert got[0] == kind
    if isinstance(rows, list):
        assert got == reference(rows, last=last)


def test_unusual_but_valid_strings_are_accepted_row_by_row_with_their_decimal_text():
    # Python's Decimal reads these, so `rest_row` accepts them; they are not plain, so the text
    # stored is the Decimal's str(), exactly as the Kline path stores them.
    rows = [row(0, v=" 2.5", q="1e-8"), row(1, q="1_000")]
    assert _plain_page(rows, M1, T0, T0 + 999 * MINUTE, NOW) is None
    page = verdict(rows)
    assert isinstance(page, KlineRows)
    assert (page.volume[0], page.quote_volume[0], page.quote_volume[1]) == ("2.5", "1E-8", "1000")


def test_an_empty_page_is_empty():
    assert verdict([]) == KlineRows(M1)


def test_missing_open_times_between_rows():
    times = [T0 + m * MINUTE for m in (0, 1, 4, 5)]
    assert list(missing_open_times(times, timeframe=M1, first_ms=T0, last_ms=T0 + 7 * MINUTE)) == [
        (T0 + 2 * MINUTE, T0 + 3 * MINUTE),
        (T0 + 6 * MINUTE, T0 + 7 * MINUTE),
    ]
    assert list(missing_open_times(times[:2], timeframe=M1, first_ms=T0, last_ms=T0 + MINUTE)) == []
    assert list(missing_open_times([], timeframe=M1, first_ms=T0, last_ms=T0)) == [(T0, T0)]


def test_page_klines_are_the_rows_as_klines():
    rows = [row(0), row(1, q="0.00000001")]
    klines = page_klines(rows, symbol="BTCUSDT", timeframe=M1, first_ms=T0, last_ms=T0 + MINUTE, now_ms=NOW)
    assert [k.quote_volume.as_tuple() for k in klines] == [
        Decimal("49330.12345678").as_tuple(),
        Decimal("0.00000001").as_tuple(),
    ]


# Strings of every sort a page might hold: plain ones (the common case, including zeros, lone
# points and leading zeros), and ones only the row-by-row path reads or refuses.
plain = st.from_regex(r"[0-9]{1,6}(\.[0-9]{0,8})?|\.[0-9]{1,4}", fullmatch=True)
odd = st.sampled_from(
    ["", ".", "1.2.3", "-1", "+2", " 3", "1e2", "1E-8", "NaN", "-0", "Infinity", "1_0", "٣"]
)
decimal_string = st.one_of(plain, plain, plain, odd)
field = st.one_of(decimal_string, decimal_string, decimal_string, st.integers(-1, 5), st.none())
trades = st.one_of(
    st.integers(0, 10_000), st.integers(0, 10_000), st.integers(-2, 0), st.just(True), st.just("1")
)


@st.composite
def candle_row(draw: st.DrawFn, minute: int) -> list[Any]:
    low: Any
    o: Any
    c: Any
    h: Any
    if draw(st.integers(0, 9)):  # mostly consistent prices, so that pages often pass
        prices = sorted(draw(st.lists(plain, min_size=4, max_size=4)), key=lambda s: Decimal(s or "0"))
        low, o, c, h = prices[0], prices[1], prices[2], prices[3]
        if draw(st.booleans()):
            o, c = c, o
    else:
        low, o, c, h = (draw(field) for _ in range(4))
    values = row(
        minute, o=o, h=h, low=low, c=c, v=draw(decimal_string), q=draw(decimal_string), n=draw(trades)
    )
    if not draw(st.integers(0, 20)):
        values[0] += draw(st.sampled_from([1, 30_000, -MINUTE]))
    return values


@st.composite
def page(draw: st.DrawFn) -> list[Any]:
    minutes = sorted(draw(st.sets(st.integers(0, 30), max_size=8)))
    if draw(st.integers(0, 9)) == 0 and minutes:
        minutes.append(minutes[0])  # out of order
    return [draw(candle_row(minute)) for minute in minutes]


@settings(max_examples=400, deadline=None)
@given(page())
def test_the_column_check_gives_the_row_by_row_verdict(rows):
    got = verdict(rows, last=30)
    assert got == reference(rows, last=30)
    if isinstance(got, KlineRows):
        assert got.klines("BTCUSDT") == [
            parse_rest_row(r, symbol="BTCUSDT", timeframe=M1, now_ms=NOW) for r in rows
        ]


@settings(max_examples=200, deadline=None)
@given(st.lists(plain, min_size=1, max_size=5))
def test_plain_strings_are_stored_as_sent(strings):
    for text in strings:
        if text.strip("."):
            assert decimal_text(text, Decimal(text)) == text


def test_the_page_check_is_used_for_plain_pages(monkeypatch):
    calls = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return rest_row(*args, **kwargs)

    monkeypatch.setattr(backfill_pages, "rest_row", counted)
    verdict([row(m) for m in range(3)])
    assert calls == []
    verdict([row(0, v="1e-8")])
    assert calls == [1]
