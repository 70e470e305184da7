"""Closed candles persisted exactly and idempotently, on whichever database the suite runs on."""

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction

from marketdata import services
from marketdata.models import Candle
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = pytest.mark.django_db
MINUTE = 60_000


@pytest.fixture(autouse=True, params=["arrays", "copy"])
def write_path(request, monkeypatch):
    """PostgreSQL writes small batches as one statement over arrays and large ones through COPY:
    every test here runs on both paths, which must behave the same."""
    if request.param == "copy":
        if connection.vendor != "postgresql":
            pytest.skip("the COPY path is PostgreSQL's")
        monkeypatch.setattr(services, "_ARRAYS_MAX_ROWS", 0)
    return request.param


def test_exchange_strings_round_trip_exactly():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    written = candles_upsert_closed(
        writes=[
            CandleWrite(
                symbol.pk,
                kline(
                    o="0.00000001", h="0.00000003", low="0.00000001", c="0.00000002", v="0.00000000", q="0E-8"
                ),
                "ws",
            )
        ]
    )
    assert written == 1
    candle = Candle.objects.get()
    assert [format(getattr(candle, f), "f") for f in ("open", "high", "low", "close", "volume")] == [
        "0.00000001",
        "0.00000003",
        "0.00000001",
        "0.00000002",
        "0.00000000",
    ]
    assert candle.open_time == datetime(2023, 3, 1, tzinfo=UTC)
    assert (candle.is_closed, candle.is_imputed, candle.source) == (True, False, "ws")


def test_trailing_zeros_survive():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, kline(), "ws")])
    candle = Candle.objects.get()
    assert str(candle.open) == "23141.57000000"
    assert str(candle.quote_volume) == "285912.34560000"


def test_duplicates_and_late_frames_change_nothing():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    first = kline()
    assert candles_upsert_closed(writes=[CandleWrite(symbol.pk, first, "ws")]) == 1
    stored = Candle.objects.get()
    late = kline(c="1.00000000", o="1.00000000", h="1.00000000", low="1.00000000")
    written = candles_upsert_closed(
        writes=[CandleWrite(symbol.pk, first, "ws"), CandleWrite(symbol.pk, late, "rest")]
    )
    assert written == 0
    again = Candle.objects.get()
    assert (again.close, again.source, again.ingested_at) == (stored.close, "ws", stored.ingested_at)


def test_real_data_replaces_an_imputed_candle_but_not_the_reverse():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    flat = kline(
        o="23100.00000000", h="23100.00000000", low="23100.00000000", c="23100.00000000", v="0", q="0", n=0
    )
    assert candles_upsert_closed(writes=[CandleWrite(symbol.pk, flat, "imputed", imputed=True)]) == 1
    assert candles_upsert_closed(writes=[CandleWrite(symbol.pk, kline(), "rest")]) == 1
    candle = Candle.objects.get()
    assert (candle.is_imputed, candle.source, str(candle.close)) == (False, "rest", "23160.47000000")
    assert candles_upsert_closed(writes=[CandleWrite(symbol.pk, flat, "imputed", imputed=True)]) == 0
    assert Candle.objects.get().is_imputed is False


def test_a_batch_with_the_same_bucket_twice_keeps_the_real_one():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    flat = kline(o="23100.00000000", h="23100.00000000", low="23100.00000000", c="23100.00000000")
    written = candles_upsert_closed(
        writes=[CandleWrite(symbol.pk, flat, "imputed", imputed=True), CandleWrite(symbol.pk, kline(), "ws")]
    )
    assert written == 1
    assert Candle.objects.get().is_imputed is False


def test_many_symbols_in_one_batch():
    symbols = SymbolFactory.create_batch(50)
    writes = [
        CandleWrite(s.pk, kline(s.symbol, open_time_ms=1_677_628_800_000 + i * MINUTE), "ws")
        for s in symbols
        for i in range(4)
    ]
    assert candles_upsert_closed(writes=writes) == 200
    assert Candle.objects.count() == 200


def test_forming_candles_are_refused():
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    with pytest.raises(ValueError, match="is not closed"):
        candles_upsert_closed(writes=[CandleWrite(symbol.pk, kline(closed=False), "ws")])
    assert Candle.objects.count() == 0


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("high", "23000.00000000", "marketdata_candle_high_is_highest"),
        ("low", "23999.00000000", "marketdata_candle_low_is_lowest"),
        ("volume", "-1", "marketdata_candle_volume_non_negative"),
        ("timeframe", "7m", "marketdata_candle_known_timeframe"),
    ],
)
def test_database_refuses_impossible_candles(column, value, constraint):
    symbol = SymbolFactory.create(symbol="BTCUSDT")
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, kline(), "ws")])
    with pytest.raises(IntegrityError, match=constraint), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE marketdata_candle SET {column} = %s", [value])
