"""The COPY path of large batches on PostgreSQL: straight into the table when the span holds
nothing, and the staging-table upsert when a row turns up after the check (the COPY fails on
the unique index, the savepoint undoes it): the upsert's outcome either way."""

from typing import Any

import pytest
from django.db import connection

from marketdata import services
from marketdata.core.backfill_pages import page_rows
from marketdata.core.klines import parse_rest_row
from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle
from marketdata.services import CandleRows, CandleWrite, candles_upsert_closed, candles_upsert_rows
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]
MINUTE = 60_000
T0 = 1_677_628_800_000


@pytest.fixture(autouse=True)
def copy_path(monkeypatch):
    monkeypatch.setattr(services, "_ARRAYS_MAX_ROWS", 0)
    monkeypatch.setattr(services, "_COPY_CHUNK_ROWS", 3)  # several chunks in one COPY


def statements(monkeypatch):
    seen = []
    real = services._any_stored_in_spans

    def spy(cursor, writes):
        answer = real(cursor, writes)
        seen.append(answer)
        return answer

    monkeypatch.setattr(services, "_any_stored_in_spans", spy)
    return seen


def test_an_empty_span_is_copied_straight_in_with_exact_values(monkeypatch):
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    seen = statements(monkeypatch)
    writes = [
        CandleWrite(symbol.pk, kline(open_time_ms=T0 + i * MINUTE, v="0.00000001", q="0E-8"), "rest")
        for i in range(10)
    ]
    odd = kline(open_time_ms=T0 + 20 * MINUTE + 500, v="0.00000001", q="0E-8")  # not a whole minute
    writes.append(CandleWrite(symbol.pk, odd, "rest"))
    assert candles_upsert_closed(writes=writes) == 11
    assert seen == [False]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (extract(epoch FROM open_time) * 1000)::bigint, volume::text, quote_volume::text, "
            "open::text, is_imputed, imputed_inputs FROM marketdata_candle ORDER BY open_time"
        )
        rows = cursor.fetchall()
    assert [row[0] for row in rows] == [T0 + i * MINUTE for i in range(10)] + [T0 + 20 * MINUTE + 500]
    assert {row[1:] for row in rows} == {("0.00000001", "0.00000000", "23141.57000000", False, 0)}


def test_a_row_stored_after_the_check_falls_back_to_the_upsert(monkeypatch):
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    flat: dict[str, Any] = {"o": "1.00000000", "h": "1.00000000", "low": "1.00000000", "c": "1.00000000"}
    flat |= {"v": "0", "q": "0", "n": 0}
    candles_upsert_closed(
        writes=[
            CandleWrite(symbol.pk, kline(open_time_ms=T0 + 2 * MINUTE), "ws"),
            CandleWrite(symbol.pk, kline(open_time_ms=T0 + 4 * MINUTE, **flat), "imputed", imputed=True),
        ]
    )
    # As if the live ingest wrote them between the check and the COPY.
    monkeypatch.setattr(services, "_any_stored_in_spans", lambda cursor, writes: False)
    late = kline(c="23150.00000000")
    writes = [CandleWrite(symbol.pk, kline(open_time_ms=T0 + i * MINUTE), "rest") for i in range(8)]
    writes[2] = CandleWrite(symbol.pk, kline(open_time_ms=T0 + 2 * MINUTE, c=str(late.close)), "rest")
    assert candles_upsert_closed(writes=writes) == 7  # 6 new, the imputed one replaced, the real one kept
    assert Candle.objects.count() == 8
    kept = Candle.objects.get(open_time__minute=2)
    assert (kept.source, format(kept.close, "f")) == ("ws", "23160.47000000")
    replaced = Candle.objects.get(open_time__minute=4)
    assert (replaced.source, replaced.is_imputed, replaced.imputed_inputs) == ("rest", False, 0)
    # The transaction is usable after the failed COPY.
    assert Candle.objects.filter(source="rest").count() == 7


def test_a_span_that_holds_a_candle_goes_through_the_staging_table(monkeypatch):
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, kline(open_time_ms=T0 + 5 * MINUTE), "ws")])
    seen = statements(monkeypatch)
    writes = [CandleWrite(symbol.pk, kline(open_time_ms=T0 + i * MINUTE), "rest") for i in range(10)]
    assert candles_upsert_closed(writes=writes) == 9
    assert seen == [True]
    assert Candle.objects.count() == 10


STORED_TEXT = (
    "SELECT (extract(epoch FROM open_time) * 1000)::bigint, open::text, high::text, low::text, close::text, "
    "volume::text, quote_volume::text, trade_count, is_imputed, imputed_inputs, source "
    "FROM marketdata_candle WHERE symbol_id = %s ORDER BY open_time"
)


def stored_text(symbol_id: int) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(STORED_TEXT, [symbol_id])
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


@pytest.mark.parametrize("arrays_max_rows", [0, 2000])  # the COPY path and the arrays path
def test_rows_from_a_page_are_stored_as_the_kline_path_stores_them(monkeypatch, arrays_max_rows):
    monkeypatch.setattr(services, "_ARRAYS_MAX_ROWS", arrays_max_rows)
    by_rows, by_klines = SymbolFactory.create(symbol="BTCUSDT"), SymbolFactory.create(symbol="ETHUSDT")
    strings = [
        ("27450.12000000", "27450.12000000", "27450.12000000", "27450.12000000", "0.00000001", "0E-8"),
        ("5.", "5.5", ".5", "5", "0", "0.0"),
        ("000123.40", "124", "123.4", "123.40000", " 1e-8", "1_000"),
        ("1E+2", "100.5", "1.0E+2", "100", "-0", "0.00000000"),
    ]
    rows = [
        [T0 + i * MINUTE, o, h, low, c, v, T0 + (i + 1) * MINUTE - 1, q, i, "0", "0", "0"]
        for i, (o, h, low, c, v, q) in enumerate(strings)
    ]
    page = page_rows(
        rows,
        symbol="BTCUSDT",
        timeframe=Timeframe.M1,
        first_ms=T0,
        last_ms=T0 + 9 * MINUTE,
        now_ms=T0 + 10**9,
    )
    written = candles_upsert_rows(
        rows=CandleRows(
            by_rows.pk, Timeframe.M1, "rest", page.open_time_ms, page.open, page.high, page.low, page.close,
            page.volume, page.quote_volume, page.trades,
        )
    )  # fmt: skip
    klines = [parse_rest_row(r, symbol="ETHUSDT", timeframe=Timeframe.M1, now_ms=T0 + 10**9) for r in rows]
    assert (
        written == candles_upsert_closed(writes=[CandleWrite(by_klines.pk, k, "rest") for k in klines]) == 4
    )
    assert stored_text(by_rows.pk) == stored_text(by_klines.pk)
    assert stored_text(by_rows.pk)[0][1:7] == ("27450.12000000",) * 4 + ("0.00000001", "0.00000000")


def test_rows_keep_the_upsert_rule(monkeypatch):
    """Rows written in bulk over stored candles: real replaces imputed, nothing else changes."""
    monkeypatch.setattr(services, "_ARRAYS_MAX_ROWS", 0)
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    flat: dict[str, Any] = {"o": "1.00000000", "h": "1.00000000", "low": "1.00000000", "c": "1.00000000"}
    flat |= {"v": "0", "q": "0", "n": 0}
    candles_upsert_closed(
        writes=[
            CandleWrite(symbol.pk, kline(open_time_ms=T0 + 2 * MINUTE), "ws"),
            CandleWrite(symbol.pk, kline(open_time_ms=T0 + 4 * MINUTE, **flat), "imputed", imputed=True),
        ]
    )
    count = 8
    rows = CandleRows(
        symbol.pk, Timeframe.M1, "rest", [T0 + i * MINUTE for i in range(count)],
        ["23150.00"] * count, ["23151.00"] * count, ["23149.00"] * count, ["23150.50"] * count,
        ["1.5"] * count, ["34725.75"] * count, [3] * count,
    )  # fmt: skip
    assert candles_upsert_rows(rows=rows) == 7
    assert candles_upsert_rows(rows=rows) == 0
    kept = Candle.objects.get(open_time__minute=2)
    assert (kept.source, format(kept.close, "f")) == ("ws", "23160.47000000")
    replaced = Candle.objects.get(open_time__minute=4)
    assert (replaced.source, replaced.is_imputed, format(replaced.close, "f")) == ("rest", False, "23150.50")
    twice = ["1", "1"]
    with pytest.raises(ValueError, match="strictly increasing"):
        candles_upsert_rows(
            rows=CandleRows(
                symbol.pk, Timeframe.M1, "rest", [T0, T0], twice, twice, twice, twice, twice, twice, [0, 0]
            )
        )
