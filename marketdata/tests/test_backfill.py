"""Backfill against the simulator over real sockets, replaying real Binance.US candles: pages of
1,000 with the exchange's exact strings, resumability, imputation, rejected pages and the gap's
retry, 429 + Retry-After, bad input, dry runs."""

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import ccxt
import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from audit.models import AuditEvent
from marketdata import backfill
from marketdata.backfill import (
    BackfillFailed,
    BackfillInputError,
    BackfillLimits,
    backfill_range,
    gap_backfill,
)
from marketdata.ingest.rest import ccxt_client
from marketdata.models import Candle, Gap, Symbol
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tests.ingest_harness import sim_faults, sim_in_use, stored_rows, truth_rows
from marketdata.tests.shared_data import REAL_CANDLES_CSV

pytestmark = pytest.mark.django_db

MINUTE = 60_000
START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
FIRST = START - 3 * 1440 * MINUTE  # the simulator's first candle (history 3 days, 4h-aligned)
REPLAY_CSV = REAL_CANDLES_CSV


def at(minutes: int) -> datetime:
    return datetime.fromtimestamp((FIRST + minutes * MINUTE) / 1000, tz=UTC)


@pytest.fixture(scope="module")
def running_sim():
    config = SimConfig(
        port=0,
        symbols=("BTCUSDT", "ETHUSDT"),
        start_ms=START,
        history_minutes=3 * 1440,
        replay_path=REPLAY_CSV,
        speed=1.0,
    )
    with SimExchangeThread(config) as running:
        yield running


@pytest.fixture
def sim(running_sim, settings):
    with sim_in_use(running_sim, settings):
        yield running_sim


def missing(first: int, last: int) -> dict[str, Any]:
    """The fault: the exchange has no BTCUSDT 1m candles from minute `first` to `last`."""
    start, end = FIRST + first * MINUTE, FIRST + last * MINUTE
    return {"missing_klines": {"symbol": "BTCUSDT", "interval": "1m", "start": start, "end": end}}


def btc() -> Symbol:
    return Symbol.objects.get(exchange="sim", symbol="BTCUSDT")


def run(**overrides):
    arguments = {"exchange": "sim", "symbol": "BTCUSDT", "timeframe": "1m", "since": at(0), "until": at(9)}
    return backfill_range(**{**arguments, **overrides})


def count_1m() -> int:
    return Candle.objects.filter(timeframe="1m").count()


def rejected(kind: str) -> float:
    return REGISTRY.get_sample_value("oasis_backfill_pages_rejected_total", {"kind": kind}) or 0.0


def test_pages_of_a_thousand_with_the_exchanges_exact_strings(sim):
    result = run(until=at(2499))
    assert (result.missing, result.backfilled, result.imputed, result.unimputable) == (2500, 2500, 0, 0)
    assert result.requests == 2 + 3  # server time, first candle, then 1000 + 1000 + 500
    assert stored_rows(btc().pk, "1m", FIRST, FIRST + 2499 * MINUTE) == truth_rows(
        sim, "BTCUSDT", "1m", FIRST, FIRST + 2499 * MINUTE
    )
    # The replayed file's own strings, trailing zeros included, and the source.
    first = Candle.objects.get(timeframe="1m", open_time=at(0))
    assert (format(first.open, "f"), format(first.close, "f")) == ("23140.48000000", "23142.31000000")
    assert set(Candle.objects.filter(timeframe="1m").values_list("source", flat=True)) == {"rest"}
    # Derived candles were refreshed over the range: 2500 minutes hold 250 whole 10m buckets
    # (the simulator streams 5m itself, so 5m is not derived for it).
    assert result.derived > 0
    assert Candle.objects.filter(timeframe="10m", source="resampled").count() == 250
    event = AuditEvent.objects.get(action="marketdata.backfill")
    assert event.actor == "system:backfill"
    assert event.payload["exchange"] == "sim"
    assert event.payload["symbol"] == "BTCUSDT"
    assert event.payload["timeframe"] == "1m"
    assert (event.payload["since"], event.payload["until"]) == (
        "2024-02-27T12:00:00Z",
        "2024-02-29T05:39:00Z",
    )
    assert (event.payload["backfilled"], event.payload["imputed"]) == (2500, 0)


def test_a_second_run_writes_nothing_and_a_partial_range_resumes(sim):
    run(until=at(1199))
    again = run(until=at(1199))
    assert (again.missing, again.backfilled, again.imputed, again.requests) == (0, 0, 0, 2)
    assert count_1m() == 1200
    Candle.objects.filter(timeframe="1m", open_time__gte=at(300), open_time__lte=at(349)).delete()
    Candle.objects.filter(timeframe="1m", open_time=at(1000)).delete()
    resumed = run(until=at(1199))
    assert resumed.ranges == [(FIRST + 300 * MINUTE, FIRST + 349 * MINUTE), (FIRST + 1000 * MINUTE,) * 2]
    assert (resumed.missing, resumed.backfilled, resumed.requests) == (51, 51, 4)
    assert stored_rows(btc().pk, "1m", FIRST, FIRST + 1199 * MINUTE) == truth_rows(
        sim, "BTCUSDT", "1m", FIRST, FIRST + 1199 * MINUTE
    )


def test_candles_the_exchange_lacks_are_imputed_from_the_previous_close(sim):
    window = {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "start": FIRST + 100 * MINUTE,
        "end": FIRST + 104 * MINUTE,
    }
    tail = {"symbol": "BTCUSDT", "interval": "1m", "start": FIRST + 198 * MINUTE, "end": FIRST + 199 * MINUTE}
    sim_faults(sim, {"missing_klines": [window, tail]})
    result = run(until=at(199), actor="user:alice")
    assert (result.backfilled, result.imputed, result.unimputable) == (193, 7, 0)
    before = Candle.objects.get(timeframe="1m", open_time=at(99))
    imputed = list(Candle.objects.filter(timeframe="1m", is_imputed=True).order_by("open_time"))
    assert [c.open_time for c in imputed] == [at(m) for m in (100, 101, 102, 103, 104, 198, 199)]
    for candle in imputed[:5]:
        assert (candle.open, candle.high, candle.low, candle.close) == (before.close,) * 4
        assert format(candle.open, "f") == format(before.close, "f")
        assert (candle.volume, candle.quote_volume, candle.trade_count) == (Decimal(0), Decimal(0), 0)
        assert (candle.source, candle.imputed_inputs) == ("imputed", 1)
    assert imputed[-1].close == Candle.objects.get(timeframe="1m", open_time=at(197)).close
    # A derived bucket over imputed minutes says how many of its inputs were imputed.
    assert Candle.objects.get(timeframe="10m", open_time=at(100)).imputed_inputs == 5
    batch = AuditEvent.objects.get(action="marketdata.candles_imputed")
    assert batch.actor == "user:alice"
    assert batch.payload["count"] == 7
    assert batch.payload["first"] == at(100).isoformat().replace("+00:00", "Z")
    assert AuditEvent.objects.get(action="marketdata.backfill").payload["imputed"] == 7


def test_imputing_at_the_start_of_a_range_uses_the_exchanges_previous_candle(sim):
    sim_faults(sim, missing(10, 12))
    result = run(since=at(10), until=at(20))
    assert (result.backfilled, result.imputed) == (8, 3)
    truth = truth_rows(sim, "BTCUSDT", "1m", FIRST + 9 * MINUTE, FIRST + 9 * MINUTE)[0]
    assert Candle.objects.filter(timeframe="1m", open_time__lt=at(10)).count() == 0  # used, not stored
    assert format(Candle.objects.get(timeframe="1m", open_time=at(12)).close, "f") == truth[4]


def test_nothing_before_a_hole_at_the_start_of_history_leaves_it_missing_and_says_why(sim):
    sim_faults(sim, missing(0, 2))
    # The first candle of the exchange's history is now the one at minute 3.
    result = run(since=at(3), until=at(9))
    assert (result.backfilled, result.imputed, result.unimputable) == (7, 0, 0)
    with pytest.raises(BackfillInputError, match="before sim's history of BTCUSDT 1m, which starts at"):
        run(since=at(0), until=at(9))
    gap = Gap.objects.create(symbol=btc(), timeframe="1m", start=at(3), end=at(4), detected_at=timezone.now())
    Candle.objects.all().delete()
    sim_faults(sim, missing(0, 4))
    gap = gap_backfill(gap_id=gap.pk)
    assert gap.status == Gap.Status.FAILED
    assert "before sim's history" in gap.reason


def test_unimputable_leading_candles_are_reported(sim, monkeypatch):
    sim_faults(sim, missing(3, 5))
    monkeypatch.setattr(backfill.KlinePager, "close_before", lambda *args: None)
    result = run(since=at(3), until=at(9))
    assert (result.backfilled, result.imputed, result.unimputable) == (4, 0, 3)
    assert "3 candle(s) from 2024-02-27T12:03:00Z cannot be imputed" in result.reason


def corrupt_first_page(monkeypatch, how):
    """The real ccxt client over the real socket, with the first klines page altered."""
    real_client = ccxt_client
    state = {"pages": 0}

    def client(profile, **kwargs):
        exchange = real_client(profile, **kwargs)
        fetch = exchange.publicGetKlines

        def klines(params):
            rows = fetch(params)
            if "startTime" in params and params["startTime"] > 0 and rows and len(rows) > 1:
                state["pages"] += 1
                if how is not None and state["pages"] == 1:
                    how(rows)
            return rows

        exchange.publicGetKlines = klines
        return exchange

    monkeypatch.setattr(backfill, "ccxt_client", client)


def misalign(rows):
    rows[3][0] += 30_000


def swap(rows):
    rows[3], rows[4] = rows[4], rows[3]


def bad_price(rows):
    rows[2][2] = "not a number"


@pytest.mark.parametrize(
    ("how", "kind"), [(misalign, "misaligned_open_time"), (swap, "non_monotonic"), (bad_price, "bad_number")]
)
def test_a_rejected_page_writes_nothing_fails_the_gap_and_a_later_retry_succeeds(sim, monkeypatch, how, kind):
    gap = Gap.objects.create(
        symbol=btc(), timeframe="1m", start=at(0), end=at(49), detected_at=timezone.now()
    )
    corrupt_first_page(monkeypatch, how)
    counted = rejected(kind)
    before = timezone.now()
    gap = gap_backfill(gap_id=gap.pk)
    assert gap.status == Gap.Status.FAILED
    assert kind in gap.reason
    assert "page from 2024-02-27T12:00:00Z rejected" in gap.reason
    assert gap.attempts == 1
    assert gap.next_attempt_at is not None
    assert before + timedelta(seconds=59) < gap.next_attempt_at < timezone.now() + timedelta(seconds=61)
    assert count_1m() == 0
    assert rejected(kind) == counted + 1
    failed_run = AuditEvent.objects.get(action="marketdata.backfill")
    assert kind in failed_run.payload["reason"]

    corrupt_first_page(monkeypatch, how)  # a fresh client: its first page is bad again
    before = timezone.now()
    gap = gap_backfill(gap_id=gap.pk)
    assert (gap.status, gap.attempts) == (Gap.Status.FAILED, 2)
    assert gap.next_attempt_at is not None
    assert gap.next_attempt_at > before + timedelta(seconds=119)  # 60 s doubled

    corrupt_first_page(monkeypatch, None)
    gap = gap_backfill(gap_id=gap.pk)
    assert (gap.status, gap.attempts, gap.candles_backfilled, gap.candles_imputed) == (
        Gap.Status.BACKFILLED,
        3,
        50,
        0,
    )
    assert (gap.reason, gap.next_attempt_at) == ("", None)
    assert gap.resolved_at is not None
    assert stored_rows(btc().pk, "1m", FIRST, FIRST + 49 * MINUTE) == truth_rows(
        sim, "BTCUSDT", "1m", FIRST, FIRST + 49 * MINUTE
    )
    # Resolved: running it again does nothing.
    resolved = (gap.status, gap.attempts, gap.resolved_at)
    gap = gap_backfill(gap_id=gap.pk)
    assert (gap.status, gap.attempts, gap.resolved_at) == resolved
    assert AuditEvent.objects.filter(action="marketdata.backfill").count() == 3


def test_a_gap_the_exchange_partly_lacks_is_resolved_as_imputed(sim):
    sim_faults(sim, missing(5, 6))
    Candle.objects.all().delete()
    run(until=at(2))
    gap = Gap.objects.create(symbol=btc(), timeframe="1m", start=at(3), end=at(9), detected_at=timezone.now())
    gap = gap_backfill(gap_id=gap.pk)
    assert (gap.status, gap.candles_backfilled, gap.candles_imputed) == (Gap.Status.IMPUTED, 5, 2)


def test_retry_after_on_429_is_honoured(sim):
    sim_faults(sim, {"rest_error": {"status": 429, "count": 2, "retry_after": 1}})
    started = time.monotonic()
    result = run(until=at(99))
    assert time.monotonic() - started >= 2.0
    assert result.backfilled == 100
    assert result.requests == 2 + 2 + 1  # two answered 429, then time, first candle, one page


def test_a_ban_longer_than_allowed_fails_without_waiting(sim):
    sim_faults(sim, {"rest_error": {"status": 418, "count": 1, "retry_after": 600}})
    started = time.monotonic()
    with pytest.raises(BackfillFailed, match="asks to wait 600 s"):
        run(limits=BackfillLimits(max_retry_after_s=60))
    assert time.monotonic() - started < 5
    assert count_1m() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"since": at(20), "until": at(10)}, "is after until"),
        ({"since": at(-1)}, "before sim's history of BTCUSDT 1m, which starts at 2024-02-27T12:00:00Z"),
        ({"symbol": "NOPEUSDT"}, "unknown sim symbol 'NOPEUSDT'; known: BTCUSDT, ETHUSDT"),
        ({"timeframe": "10m"}, "does not serve 10m candles .* it serves 1m, 3m, 5m, 15m, 1h, 4h"),
        ({"timeframe": "2m"}, "unknown timeframe '2m'; valid: 1m"),
        ({"exchange": "kraken"}, "unknown exchange 'kraken'; valid: sim"),
        ({"since": datetime(2030, 1, 1, tzinfo=UTC), "until": None}, "no closed 1m candle opens"),
        ({"since": datetime(2024, 2, 28)}, "timezone-aware"),  # naive: refused
    ],
)
def test_bad_input_is_refused_before_anything_is_written(sim, overrides, message):
    with pytest.raises(BackfillInputError, match=message):
        run(**overrides)
    assert Candle.objects.count() == 0
    assert not AuditEvent.objects.filter(action__startswith="marketdata.backfill").exists()


def test_dry_run_reports_and_writes_nothing(sim):
    sim_faults(sim, missing(5, 6))
    result = run(until=at(1499), dry_run=True)
    assert (result.dry_run, result.missing, result.backfilled, result.imputed) == (True, 1500, 1498, 2)
    assert Candle.objects.count() == 0
    assert (
        not AuditEvent.objects.filter(action__startswith="marketdata.")
        .exclude(action__startswith="marketdata.symbol")
        .exists()
    )


class FakeClient:
    """Answers klines at once with the headers given, so the weight budget can be watched."""

    def __init__(self, used_weight=None):
        self.used_weight = used_weight
        self.last_response_headers = {}
        self.calls = 0

    def publicGetTime(self, params):  # ccxt's name
        self.calls += 1
        self.last_response_headers = (
            {} if self.used_weight is None else {"X-MBX-USED-WEIGHT-1M": str(self.used_weight)}
        )
        return {"serverTime": 0}


class FakeTime:
    def __init__(self, start=1_000.0):
        self.now = start
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def pager(client, fake, limits):
    from marketdata.exchanges import exchange_profile

    return backfill.KlinePager(
        exchange_profile("sim"),
        limits,
        client=client,
        sleep=fake.sleep,
        monotonic=fake.clock,
        wall_clock=fake.clock,
    )


def test_weight_budget_by_our_own_count():
    fake = FakeTime()
    paged = pager(FakeClient(), fake, BackfillLimits(weight_per_request=2, weight_budget_per_minute=6))
    for _ in range(3):
        paged.server_time_ms()
        fake.now += 1
    assert fake.sleeps == []
    paged.server_time_ms()  # a fourth would make 8 > 6: wait until the first leaves the minute
    assert fake.sleeps == [pytest.approx(57.0)]


def test_weight_budget_by_the_exchanges_header():
    fake = FakeTime(start=6_000.0 + 20)  # 20 s into a wall-clock minute
    paged = pager(
        FakeClient(used_weight=4799),
        fake,
        BackfillLimits(weight_per_request=2, weight_budget_per_minute=4800),
    )
    paged.server_time_ms()
    assert fake.sleeps == []
    paged.server_time_ms()  # the exchange says 4799 used: wait for its next minute
    assert fake.sleeps == [pytest.approx(40.0)]


def test_network_errors_are_retried_then_fail_with_the_reason():
    class Down(FakeClient):
        def publicGetTime(self, params):
            self.calls += 1
            raise ccxt.ExchangeNotAvailable("503 Service Unavailable")

    fake = FakeTime()
    client = Down()
    with pytest.raises(BackfillFailed, match="failed after 3 attempts: 503 Service Unavailable"):
        pager(client, fake, BackfillLimits(max_attempts=3)).server_time_ms()
    assert client.calls == 3
    assert fake.sleeps == [0.5, 1.0]
