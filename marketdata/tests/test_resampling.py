"""Derived candles kept in step with stored ones: complete buckets only, recomputed when a
backfill replaces imputed inputs, the same whichever way they are derived; the gap scan; tasks."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from marketdata import resampling
from marketdata.core.resample import CandleArrays, ClosedCandle, resample_history
from marketdata.core.timeframes import Timeframe
from marketdata.gaps import gaps_due, gaps_scan
from marketdata.models import Candle, Gap
from marketdata.resampling import derived_candles_refresh, refresh_requests
from marketdata.services import CandleWrite, candles_upsert_closed
from marketdata.tasks import gaps_scan_task, resample_refresh, route_by_stream, stream_queue
from marketdata.tests.factories import SymbolFactory, kline

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_inline")]
T0 = 1_677_628_800_000  # 2023-03-01 00:00 UTC
M = 60_000


def minute(
    symbol_id: int, n: int, *, close: str = "100.0", imputed: bool = False, source: str = "rest"
) -> CandleWrite:
    price = Decimal(close)
    return CandleWrite(
        symbol_id,
        kline(
            open_time_ms=T0 + n * M,
            o=str(price),
            h=str(price + 2),
            low=str(price - 1),
            c=str(price),
            v="0" if imputed else f"{n + 1}.5",
            q="0" if imputed else "10.25",
            n=0 if imputed else n + 1,
        ),
        "imputed" if imputed else source,
        imputed=imputed,
    )


def derived(symbol_id: int, timeframe: Timeframe) -> list[Candle]:
    return list(Candle.objects.filter(symbol_id=symbol_id, timeframe=timeframe.value).order_by("open_time"))


@pytest.fixture(autouse=True)
def desk_map(settings):
    settings.OASIS_DERIVATIONS = (
        (Timeframe.M1, Timeframe.M3),
        (Timeframe.M1, Timeframe.M5),
        (Timeframe.M1, Timeframe.M10),
        (Timeframe.M5, Timeframe.M10),
        (Timeframe.M1, Timeframe.H1),
        (Timeframe.H1, Timeframe.H4),
    )


def test_complete_buckets_only_with_exact_sums():
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[minute(symbol.pk, n, close=f"{100 + n}.0") for n in range(7)])
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 6 * M)
    three = derived(symbol.pk, Timeframe.M3)
    assert [int(c.open_time.timestamp() * 1000) for c in three] == [T0, T0 + 3 * M]  # 6…8 incomplete
    first = three[0]
    assert (str(first.open), str(first.high), str(first.low), str(first.close)) == (
        "100.0",
        "104.0",
        "99.0",
        "102.0",
    )
    assert str(first.volume) == "7.5"  # 1.5 + 2.5 + 3.5
    assert (first.source, first.is_imputed, first.imputed_inputs, first.trade_count) == (
        "resampled",
        False,
        0,
        6,
    )
    assert derived(symbol.pk, Timeframe.M10) == []  # never from partial data


def test_imputed_inputs_are_counted_and_a_backfill_replaces_them():
    symbol = SymbolFactory.create()
    writes = [minute(symbol.pk, n) for n in range(10)]
    writes[4] = minute(symbol.pk, 4, imputed=True)
    candles_upsert_closed(writes=writes)
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 9 * M)
    ten = derived(symbol.pk, Timeframe.M10)[0]
    assert (ten.is_imputed, ten.imputed_inputs) == (True, 1)
    assert [(c.is_imputed, c.imputed_inputs) for c in derived(symbol.pk, Timeframe.M3)] == [
        (False, 0),
        (True, 1),
        (False, 0),
    ]

    candles_upsert_closed(writes=[minute(symbol.pk, 4)])  # the real candle arrives (backfill)
    derived_candles_refresh(
        symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0 + 4 * M, last_ms=T0 + 4 * M
    )
    ten = derived(symbol.pk, Timeframe.M10)[0]
    assert (ten.is_imputed, ten.imputed_inputs, str(ten.volume)) == (False, 0, "60.0")
    assert all(not c.is_imputed for c in derived(symbol.pk, Timeframe.M3))


def test_ten_minutes_from_one_minute_equal_ten_from_five_and_refreshes_repeat():
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[minute(symbol.pk, n, close=f"{100 + n % 7}.5") for n in range(20)])
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 19 * M)
    first = [
        (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trade_count)
        for c in derived(symbol.pk, Timeframe.M10)
    ]
    Candle.objects.filter(timeframe="10m").delete()
    # Only through 5m this time: the 5m candles are stored, derive 10m from them.
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M5, first_ms=T0, last_ms=T0 + 15 * M)
    second = [
        (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trade_count)
        for c in derived(symbol.pk, Timeframe.M10)
    ]
    assert first == second
    assert len(first) == 2
    assert (
        derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 19 * M)
        == 0
    )


def test_four_hours_cascade_from_minutes():
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[minute(symbol.pk, n) for n in range(240)])
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 239 * M)
    assert len(derived(symbol.pk, Timeframe.H1)) == 4
    (four,) = derived(symbol.pk, Timeframe.H4)
    assert four.trade_count == sum(n + 1 for n in range(240))


def test_which_closes_ask_for_a_refresh():
    writes = [minute(1, n, source="ws") for n in (0, 1, 2, 3, 4)] + [minute(2, 7, source="rest")]
    requests = {(r.symbol_id, r.timeframe, r.first_ms, r.last_ms) for r in refresh_requests(writes)}
    # Live: minute 2 closes a 3m bucket, minute 4 a 5m one; 0, 1 and 3 close nothing. REST: always.
    assert requests == {(1, Timeframe.M1, T0 + 2 * M, T0 + 4 * M), (2, Timeframe.M1, T0 + 7 * M, T0 + 7 * M)}
    assert refresh_requests([minute(1, 0, source="ws")]) == []


def test_the_resample_task_and_its_route():
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[minute(symbol.pk, n) for n in range(3)])
    assert resample_refresh.delay(symbol.pk, "1m", T0, T0 + 2 * M).get() == 1
    assert route_by_stream("marketdata.resample_refresh", (symbol.pk, "1m", T0, T0), {}, {}) == {
        "queue": stream_queue(symbol.pk, "1m")
    }
    assert route_by_stream("audit.something", (), {}, {}) is None


def test_the_gap_scan_records_each_missing_range_once():
    symbol = SymbolFactory.create()
    now = datetime.fromtimestamp((T0 + 30 * M) / 1000, tz=UTC)
    candles_upsert_closed(
        writes=[minute(symbol.pk, n, source="ws") for n in range(30) if n not in (5, 6, 20)]
    )
    result = gaps_scan(now=now, grace=timedelta(0))
    assert (result.found, result.recorded) == (2, 2)  # 5-6 and 20
    ranges = sorted((g.start, g.end) for g in Gap.objects.all())
    assert ranges[0] == (
        datetime.fromtimestamp((T0 + 5 * M) / 1000, tz=UTC),
        datetime.fromtimestamp((T0 + 6 * M) / 1000, tz=UTC),
    )
    assert gaps_scan(now=now, grace=timedelta(0)).recorded == 0  # known already
    assert sorted(gaps_due(now=now)) == sorted(Gap.objects.values_list("id", flat=True))
    # Derived timeframes are not scanned: they are recomputed, not backfilled.
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 29 * M)
    assert gaps_scan(now=now, grace=timedelta(0)).streams == 1


def test_the_scan_task_with_nothing_missing():
    symbol = SymbolFactory.create()
    newest = Timeframe.M1.bucket_start(int(timezone.now().timestamp() * 1000) - 30_000) - M
    candles_upsert_closed(
        # From one minute past the newest due: the clock may turn a minute during the test.
        writes=[CandleWrite(symbol.pk, kline(open_time_ms=newest - n * M), "ws") for n in range(-1, 3)]
    )
    assert gaps_scan_task.delay().get() == {"streams": 1, "found": 0, "recorded": 0, "started": 0}


def test_the_default_map_leaves_out_what_the_exchange_serves(settings):
    from marketdata.resampling import derivations

    settings.OASIS_DERIVATIONS = None
    desk = {(Timeframe.M1, Timeframe.M3), (Timeframe.M1, Timeframe.M10), (Timeframe.M5, Timeframe.M10)}
    assert set(derivations("binance")) == desk | {(Timeframe.H1, Timeframe.H4)}  # it streams 5m, 15m, 1h
    assert len(derivations()) == 7  # no exchange named: everything any exchange may need


def stored_values(symbol_id: int, timeframe: Timeframe) -> list[tuple[object, ...]]:
    """Every stored column that a refresh sets, decimals as their exact digits."""
    return [
        (
            int(c.open_time.timestamp() * 1000),
            *(format(getattr(c, f), "f") for f in DECIMALS),
            c.trade_count,
            c.is_imputed,
            c.imputed_inputs,
            c.source,
        )
        for c in derived(symbol_id, timeframe)
    ]


DECIMALS = ("open", "high", "low", "close", "volume", "quote_volume")


def reference_values(
    symbol_id: int, history: list[ClosedCandle], derivation_map: Any
) -> dict[Timeframe, list[tuple[object, ...]]]:
    """What the one aggregation gives over the whole history, in the stored form."""
    arrays = resample_history(CandleArrays.from_candles(Timeframe.M1, history), derivation_map)
    by_target: dict[Timeframe, list[tuple[object, ...]]] = {}
    for (_, target), result in arrays.items():
        by_target.setdefault(
            target,
            [
                (
                    c.open_time_ms,
                    *(format(getattr(c, f), "f") for f in DECIMALS),
                    c.trades,
                    c.imputed_inputs > 0,
                    c.imputed_inputs,
                    "resampled",
                )
                for c in result.to_candles()
            ],
        )
    return by_target


@pytest.mark.parametrize("query_max_rows", [2000, 0])  # read by COPY or by query on PostgreSQL
def test_a_long_refresh_equals_the_aggregation_of_the_whole_history(settings, monkeypatch, query_max_rows):
    monkeypatch.setattr(resampling, "_QUERY_MAX_ROWS", query_max_rows)
    symbol = SymbolFactory.create()
    writes = [
        minute(symbol.pk, n, close=f"{100 + (n * 7919) % 97}.{n % 10}{'0' * (n % 3)}", imputed=n % 37 == 5)
        for n in range(3 * 240 + 17)
    ]
    candles_upsert_closed(writes=writes)
    history = [ClosedCandle.from_kline(w.kline, imputed=w.imputed) for w in writes]
    written = derived_candles_refresh(
        symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + (len(writes) - 1) * M
    )
    expected = reference_values(symbol.pk, history, settings.OASIS_DERIVATIONS)
    for target, rows in expected.items():
        assert stored_values(symbol.pk, target) == rows, target
    assert written == sum(len(rows) for rows in expected.values())
    # Again: nothing to write, the same rows.
    assert (
        derived_candles_refresh(
            symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + (len(writes) - 1) * M
        )
        == 0
    )
    for target, rows in expected.items():
        assert stored_values(symbol.pk, target) == rows, target


def test_a_cascade_reads_the_stored_candles_at_its_ends_and_what_it_did_not_write(settings):
    settings.OASIS_DERIVATIONS = ((Timeframe.M1, Timeframe.M5), (Timeframe.M5, Timeframe.M10))
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[minute(symbol.pk, n, close=f"{100 + n}.0") for n in range(20)])
    # A 5m candle from the exchange itself where the refresh would derive one: it stays, and the
    # 10m candle is derived from it, as from anything stored.
    own = kline(
        open_time_ms=T0,
        o="100.0",
        h="150.0",
        low="99.0",
        c="104.0",
        v="1",
        q="2",
        n=1,
        timeframe=Timeframe.M5,
    )
    candles_upsert_closed(writes=[CandleWrite(symbol.pk, own, "rest")])
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0, last_ms=T0 + 19 * M)
    assert format(derived(symbol.pk, Timeframe.M5)[0].high, "f") == "150.0"
    assert [format(c.high, "f") for c in derived(symbol.pk, Timeframe.M10)] == ["150.0", "121.0"]
    assert derived(symbol.pk, Timeframe.M5)[0].source == "rest"
    # A refresh of minutes 15…19 only: its 5m bucket is [15, 20), the 10m one [10, 20) also needs
    # the 5m candle at 10, stored before and read back.
    Candle.objects.filter(timeframe__in=["5m", "10m"], source="resampled").delete()
    derived_candles_refresh(
        symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0 + 15 * M, last_ms=T0 + 19 * M
    )
    assert [c.open_time.minute for c in derived(symbol.pk, Timeframe.M10)] == []  # 5m at 10 is missing
    derived_candles_refresh(
        symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=T0 + 10 * M, last_ms=T0 + 14 * M
    )
    assert [c.open_time.minute for c in derived(symbol.pk, Timeframe.M10)] == [10]
    assert format(derived(symbol.pk, Timeframe.M10)[0].volume, "f") == "160.0"  # 11.5 + … + 20.5


def test_one_bucket_after_a_live_close_reads_and_writes_a_handful_of_rows():
    symbol = SymbolFactory.create()
    candles_upsert_closed(writes=[minute(symbol.pk, n, source="ws") for n in range(10)])
    collected: list[CandleWrite] = []
    written = derived_candles_refresh(
        symbol_id=symbol.pk,
        timeframe=Timeframe.M1,
        first_ms=T0 + 9 * M,
        last_ms=T0 + 9 * M,
        collect=collected,
    )
    # 5m at minute 5 and 10m at 0 (3m at minute 9 is incomplete).
    assert written == 2
    assert [(w.kline.timeframe, w.kline.open_time_ms) for w in collected] == [
        (Timeframe.M5, T0 + 5 * M),
        (Timeframe.M10, T0),  # from 5m it needs the 5m candle at 0, never derived here
    ]
    assert all(w.source == "resampled" and w.kline.closed for w in collected)
