"""The market-data API: symbols, candles (JSON and CSV, keyset pages, bad input named), gaps
and backfill requests."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.models import AuditEvent
from marketdata.models import Candle, Gap, Symbol
from marketdata.tests.api_seed import MINUTE_MS, START, START_MS, seed_market

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()  # throttle counts and waffle's flags live there


@dataclass(frozen=True)
class Market:
    symbol: Symbol
    gap: Gap
    candles: int


@pytest.fixture
def seeded():
    symbol, gap = seed_market(candles=400)
    return Market(symbol, gap, 400)


@pytest.fixture
def api():
    return APIClient()


def candles(api, **params):
    return api.get("/api/v1/candles/", {"symbol": "BTCUSDT", "timeframe": "1m", **params})


def test_candles_come_oldest_first_with_exact_decimal_strings_and_utc_times(api, seeded):
    response = candles(api, limit=3)
    assert response.status_code == 200
    body = response.json()
    assert [row["open_time"] for row in body["results"]] == [
        "2026-03-01T00:00:00Z",
        "2026-03-01T00:01:00Z",
        "2026-03-01T00:02:00Z",
    ]
    stored = Candle.objects.get(symbol=seeded.symbol, timeframe="1m", open_time=START)
    first = body["results"][0]
    assert first["close"] == format(stored.close, "f")
    assert first["volume"] == "1.50000000"  # trailing zeros kept: the digits as stored
    assert first["quote_volume"] == "30000.00000000"
    assert first["source"] == "rest"
    assert first["is_imputed"] is False


def test_pages_follow_the_cursor_to_the_end_without_gaps_or_repeats(api, seeded):
    seen: list[str] = []
    url: str | None = "/api/v1/candles/"
    params: dict[str, object] | None = {"symbol": "btcusdt", "timeframe": "1m", "limit": 150}
    pages = 0
    while url:
        response = api.get(url, params)
        assert response.status_code == 200
        body = response.json()
        seen.extend(row["open_time"] for row in body["results"])
        if body["next"]:
            assert response["Link"] == f'<{body["next"]}>; rel="next"'
        url, params = body["next"], None
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == seeded.candles
    assert seen == sorted(seen)


def test_start_and_end_accept_iso_or_epoch_ms_and_include_both_ends(api, seeded):
    by_iso = candles(api, start="2026-03-01T01:00:00Z", end="2026-03-01T02:00:00+00:00").json()
    by_ms = candles(api, start=START_MS + 60 * MINUTE_MS, end=START_MS + 120 * MINUTE_MS).json()
    assert by_iso == by_ms
    assert len(by_iso["results"]) == 61
    assert by_iso["results"][0]["open_time"] == "2026-03-01T01:00:00Z"
    assert by_iso["results"][-1]["open_time"] == "2026-03-01T02:00:00Z"


def test_csv_has_a_header_the_same_values_and_the_next_page_in_link(api, seeded):
    json_rows = candles(api, limit=5).json()["results"]
    response = candles(api, limit=5, format="csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["close"] for row in rows] == [row["close"] for row in json_rows]
    assert list(rows[0]) == [
        "open_time", "open", "high", "low", "close", "volume", "quote_volume", "trade_count", "is_imputed",
        "source",
    ]  # fmt: skip
    assert 'rel="next"' in response["Link"]
    via_accept = api.get(
        "/api/v1/candles/", {"symbol": "BTCUSDT", "timeframe": "1m", "limit": 5}, HTTP_ACCEPT="text/csv"
    )
    assert via_accept.content == response.content


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"symbol": "NOPEUSDT"}, "symbol"),
        ({"timeframe": "2m"}, "timeframe"),
        ({"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "start"),
        ({"limit": 1001}, "limit"),
        ({"limit": 0}, "limit"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        ({"cursor": "eyJrIjoiaWQiLCJ2IjoxfQ"}, "cursor"),  # a cursor of another endpoint (by id)
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-03-01T00:00:00"}, "end"),  # no offset: ambiguous
        ({"start": "99999999999999999"}, "start"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(api, seeded, params, parameter):
    response = candles(api, **params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["detail"] == "invalid input"
    assert list(body["errors"]) == [parameter]


def test_bad_input_in_csv_is_still_a_json_400(api, seeded):
    response = candles(api, format="csv", timeframe="2m")
    assert response.status_code == 400
    assert response.json()["errors"]["timeframe"]


def test_missing_symbol_is_named(api, seeded):
    response = api.get("/api/v1/candles/", {"timeframe": "1m"})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["symbol"]


def test_symbols_and_gaps_are_listed(api, seeded):
    symbols = api.get("/api/v1/symbols/", {"exchange": "sim"}).json()["results"]
    assert [(row["symbol"], row["tick_size"]) for row in symbols] == [("BTCUSDT", "0.01000000")]
    gaps = api.get("/api/v1/gaps/", {"symbol": "BTCUSDT", "status": "open"}).json()["results"]
    assert [row["id"] for row in gaps] == [seeded.gap.pk]
    assert gaps[0]["start"] == "2026-03-01T06:45:00Z"


def test_a_backfill_request_is_recorded_as_a_gap_queued_and_audited(
    api, seeded, monkeypatch, django_capture_on_commit_callbacks
):
    from marketdata import tasks

    sent: list[tuple[tuple[int, ...], str]] = []
    # The broker is not under test here: what is sent to it, after commit, is.
    monkeypatch.setattr(
        tasks.gap_backfill_task, "apply_async", lambda args, queue: sent.append((args, queue))
    )
    body = {
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "start": "2026-02-01T00:00:30Z",
        "end": "2026-02-01T01:00:00Z",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post("/api/v1/backfills/", body, format="json")
        assert sent == []  # nothing leaves before the commit
    assert response.status_code == 202, response.content
    gap = Gap.objects.get(pk=response.json()["id"])
    first = START - timedelta(days=28)
    # start rounded up to the next open time, end kept (on a boundary)
    assert (gap.start, gap.end) == (first + timedelta(minutes=1), first + timedelta(minutes=60))
    assert gap.status == Gap.Status.OPEN
    assert sent == [((gap.pk,), tasks.stream_queue(seeded.symbol.pk, "1m"))]
    event = AuditEvent.objects.get(action="marketdata.backfill.request")
    assert event.actor == "api:anonymous"
    assert event.object_id == str(gap.pk)
    assert event.payload["created"] is True

    gap.status = Gap.Status.BACKFILLED
    gap.save()
    with django_capture_on_commit_callbacks(execute=True):
        again = api.post("/api/v1/backfills/", body, format="json")
    assert again.status_code == 202
    assert again.json()["id"] == gap.pk
    gap.refresh_from_db()
    assert gap.status == Gap.Status.OPEN  # the same range asked again reopens its gap
    assert len(sent) == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"exchange": "nasdaq"}, "exchange"),
        ({"timeframe": "10m"}, "timeframe"),  # resampled here, not served by the exchange
        ({"symbol": "NOPEUSDT"}, "symbol"),
        ({"start": "2026-02-02T00:00:00Z"}, "start"),
        ({"start": "2999-01-01T00:00:00Z", "end": "2999-01-02T00:00:00Z"}, "start"),  # nothing closed yet
        ({"end": None}, "end"),
    ],
)
def test_a_bad_backfill_request_is_refused_by_field_and_nothing_is_recorded(api, seeded, change, field):
    body = {
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "start": "2026-02-01T00:00:00Z",
        "end": "2026-02-01T01:00:00Z",
    }
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}
    response = api.post("/api/v1/backfills/", body, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == [field]
    assert Gap.objects.count() == 1  # the seeded one


def test_the_candle_rows_written_directly_equal_what_the_declared_fields_give(seeded):
    from marketdata.api.serializers import CandleOutput
    from marketdata.core.timeframes import Timeframe
    from marketdata.selectors import CANDLE_COLUMNS, candle_rows_as_text, candles_in_range

    first = Candle.objects.filter(symbol=seeded.symbol).order_by("open_time").first()
    assert first is not None
    Candle.objects.filter(pk=first.pk).update(
        is_imputed=True, imputed_inputs=1, source="imputed", volume=Decimal("0E-8"), high=Decimal("1E+5")
    )
    stream = {"symbol_id": seeded.symbol.pk, "timeframe": Timeframe.M1}
    decimals = list(candles_in_range(**stream).order_by("open_time").values(*CANDLE_COLUMNS)[:50])
    texts = list(candle_rows_as_text(**stream).order_by("open_time")[:50])
    fields = CandleOutput().fields
    for by_decimal, by_text in zip(decimals, texts, strict=True):
        expected = {name: field.to_representation(by_decimal[name]) for name, field in fields.items()}
        assert CandleOutput(by_text).data == expected
    assert CandleOutput(texts[0]).data["volume"] == "0.00000000"
    assert CandleOutput(texts[0]).data["high"] == "100000"
