"""Issue 4's end-to-end check: real Binance.US candles replayed by the simulator, stored with rows
removed; the gap scan and the gap backfill tasks (Celery, eager here) repair them. Every removed
candle ends up either fetched from the simulator's REST (when it has it) or imputed and flagged
(when it does not), and every derived candle is recomputed. Compared row by row with an expected
set built here independently: plain Decimal arithmetic over the simulator's own rows."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from marketdata.backfill import backfill_range
from marketdata.core.timeframes import Timeframe
from marketdata.models import Candle, Gap, Symbol
from marketdata.resampling import derived_candles_refresh
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tasks import gaps_scan_task
from marketdata.tests.ingest_harness import sim_faults, sim_in_use, truth_rows
from marketdata.tests.shared_data import REAL_CANDLES_CSV

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("celery_inline")]

M = 60_000
START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
FIRST = START - 1440 * M  # the simulator's first candle: one day of history
LAST = START - 2 * M  # the newest closed minute used here (the simulator's clock runs on)
REPLAY_CSV = REAL_CANDLES_CSV
DERIVED = (Timeframe.M3, Timeframe.M5, Timeframe.M10, Timeframe.M15, Timeframe.H1, Timeframe.H4)
# Minutes removed from the store (offsets from FIRST), and those of them the exchange lacks too.
REMOVED = [*range(7, 12), 100, 101, *range(300, 361), 719, 1000, *range(1200, 1203)]
LACKING = [*range(7, 10), 330, 331, 719, 1201]


@pytest.fixture(scope="module")
def running_sim():
    if not REPLAY_CSV.exists():
        pytest.skip(f"the real candles are not here: {REPLAY_CSV}")
    config = SimConfig(
        port=0, symbols=("BTCUSDT",), start_ms=START, history_minutes=1440, replay_path=REPLAY_CSV, speed=1.0
    )
    with SimExchangeThread(config) as running:
        yield running


@pytest.fixture
def sim(running_sim, settings):
    settings.OASIS_DERIVATIONS = (
        (Timeframe.M1, Timeframe.M3),
        (Timeframe.M1, Timeframe.M5),
        (Timeframe.M1, Timeframe.M10),
        (Timeframe.M5, Timeframe.M10),
        (Timeframe.M1, Timeframe.M15),
        (Timeframe.M1, Timeframe.H1),
        (Timeframe.H1, Timeframe.H4),
    )
    with sim_in_use(running_sim, settings):
        yield running_sim


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def expected_minutes(sim: SimExchangeThread) -> dict[int, dict[str, Any]]:
    """The simulator's 1m rows, with the minutes it lacks imputed from the previous close."""
    truth = {row[0]: row for row in truth_rows(sim, "BTCUSDT", "1m", FIRST, LAST)}
    rows: dict[int, dict[str, Any]] = {}
    previous = None
    for n in range((LAST - FIRST) // M + 1):
        t = FIRST + n * M
        if n in LACKING:
            assert previous is not None
            price = previous["close"]
            rows[t] = {
                "open": price, "high": price, "low": price, "close": price,
                "volume": Decimal(0), "imputed": 1, "source": "imputed",
            }  # fmt: skip
        else:
            _, o, h, low, c, v, _q, _n = truth[t]
            rows[t] = {
                "open": Decimal(o), "high": Decimal(h), "low": Decimal(low), "close": Decimal(c),
                "volume": Decimal(v), "imputed": 0, "source": "rest",
            }  # fmt: skip
        previous = rows[t]
    return rows


def expected_buckets(minutes: dict[int, dict[str, Any]], timeframe: Timeframe) -> dict[int, tuple[Any, ...]]:
    """Every complete bucket of `timeframe`, straight from the minutes (no resampling code)."""
    buckets: dict[int, list[int]] = {}
    for t in sorted(minutes):
        buckets.setdefault(t - t % timeframe.ms, []).append(t)
    per_bucket = timeframe.ms // M
    result = {}
    for start, times in buckets.items():
        if len(times) != per_bucket:
            continue
        rows = [minutes[t] for t in times]
        result[start] = (
            rows[0]["open"],
            max(r["high"] for r in rows),
            min(r["low"] for r in rows),
            rows[-1]["close"],
            sum((r["volume"] for r in rows), Decimal(0)),
            sum(r["imputed"] for r in rows),
        )
    return result


def stored(timeframe: Timeframe) -> dict[int, Candle]:
    return {
        int(c.open_time.timestamp() * 1000): c
        for c in Candle.objects.filter(timeframe=timeframe.value, open_time__lte=utc(LAST)).order_by(
            "open_time"
        )
    }


def test_removed_candles_are_backfilled_or_imputed_and_derived_ones_recomputed(sim):
    # The store as a replay with rows removed: everything, then the removed minutes taken out,
    # then derived candles computed from what is left (buckets with a hole are not derived).
    backfill_range(exchange="sim", symbol="BTCUSDT", timeframe="1m", since=utc(FIRST), until=utc(LAST))
    symbol = Symbol.objects.get(exchange="sim", symbol="BTCUSDT")
    Candle.objects.filter(timeframe="1m", open_time__in=[utc(FIRST + n * M) for n in REMOVED]).delete()
    Candle.objects.exclude(timeframe="1m").delete()
    derived_candles_refresh(symbol_id=symbol.pk, timeframe=Timeframe.M1, first_ms=FIRST, last_ms=LAST)
    assert Candle.objects.filter(timeframe="1m").count() == (LAST - FIRST) // M + 1 - len(REMOVED)

    # The exchange lacks some of the removed minutes. The scan finds the holes; its tasks repair them.
    windows = [
        {"symbol": "BTCUSDT", "interval": "1m", "start": FIRST + n * M, "end": FIRST + n * M} for n in LACKING
    ]
    sim_faults(sim, {"missing_klines": windows})
    outcome = gaps_scan_task.delay(now=utc(LAST + 2 * M).isoformat()).get()
    assert (outcome["recorded"], outcome["started"]) == (6, 6), outcome
    # 100-101 and 1000 come back whole; the other four gaps hold minutes the exchange lacks.
    statuses = sorted(Gap.objects.values_list("status", flat=True))
    assert statuses == ["backfilled"] * 2 + ["imputed"] * 4, statuses

    minutes = expected_minutes(sim)
    got = stored(Timeframe.M1)
    assert sorted(got) == sorted(minutes)
    for t, want in minutes.items():
        candle = got[t]
        row = (candle.open, candle.high, candle.low, candle.close, candle.volume, candle.imputed_inputs)
        assert row == (
            want["open"],
            want["high"],
            want["low"],
            want["close"],
            want["volume"],
            want["imputed"],
        ), t
        assert candle.is_imputed == bool(want["imputed"]), t
        if (t - FIRST) // M in REMOVED:
            assert candle.source == want["source"], t

    for timeframe in DERIVED:
        want_buckets = expected_buckets(minutes, timeframe)
        have = stored(timeframe)
        assert sorted(have) == sorted(want_buckets), timeframe
        for start, want_row in want_buckets.items():
            c = have[start]
            assert (c.open, c.high, c.low, c.close, c.volume, c.imputed_inputs) == want_row, (
                timeframe,
                start,
            )
            assert c.is_imputed == (want_row[-1] > 0)
            assert c.source == "resampled"
    assert len(expected_buckets(minutes, Timeframe.H4)) == 5
    assert Candle.objects.filter(is_imputed=True, timeframe="1m").count() == len(LACKING)
