"""A rolling restart of the ingestor under load loses no candle.

The real `manage.py ingest` process, 150 symbols x (1m, 3m) against the simulator at 120 times
speed (150 candles close together every half second of wall time), with silenced streams being
backfilled over a slow REST API, is stopped with SIGTERM just after a close: it must leave
with everything it had received committed (the backfills in flight included), and the next
instance must pick up from there, so that in the end the stored candles are exactly the
simulator's, row by row. A hole behind the newest stored candle (a backfill cut short by a
kill) is found and backfilled by the next instance.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from django.db.models import Count

from marketdata.core.timeframes import Timeframe, utc_from_ms
from marketdata.models import Candle, Symbol
from marketdata.selectors import candle_recent_holes
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.simulator.symbols import generated_names
from marketdata.tests.ingest_harness import (
    sim_faults,
    sim_get,
    sim_in_use,
    start_ingest,
    stop_ingest,
    stored_rows,
    truth_rows,
)
from marketdata.tests.test_ingest_e2e import TIMEFRAMES, streams, wait_caught_up
from oasis_site.tests.stack_harness import stop_gracefully

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SYMBOLS = tuple(generated_names(150))
SPEED = 120  # a 1m candle of every symbol closes every half second of wall time
ARGS = ("--symbols", "all", "--timeframes", "1m,3m", "--lookback", "5")
STOPPED = re.compile(
    r"stopped: (?P<frames>\d+) frames, (?P<closes>\d+) closes, (?P<backfilled>\d+) backfilled, "
    r"\d+ rejected, \d+ ignored; (?P<committed>\d+) candles committed"
)


@pytest.fixture
def sim(settings):
    config = SimConfig(
        port=0, symbols=SYMBOLS, seed=11, speed=SPEED, history_minutes=120, update_interval_s=0.1
    )
    with SimExchangeThread(config) as running, sim_in_use(running, settings):
        yield running


def wait_lookbacks_done(log: Path) -> None:
    """Every stream has its lookback (5) and a live candle stored."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        counts = list(
            Candle.objects.filter(symbol__exchange="sim", timeframe__in=list(TIMEFRAMES))
            .order_by()
            .values("symbol_id", "timeframe")
            .annotate(n=Count("id"))
        )
        short = [row for row in counts if row["n"] < 6]
        if len(counts) == len(streams()) and not short:
            return
        time.sleep(0.25)
    raise AssertionError(f"lookbacks not done: {short[:5]}\n{log.read_text()[-3000:]}")


def sigterm_just_after_a_close(sim: SimExchangeThread, process: subprocess.Popen[str], log: Path) -> float:
    """SIGTERM a few ms after the simulator's next 1m boundary, while that close's burst of
    frames is on its way; wait for the process to leave. Returns the seconds it took."""
    server_ms = int(sim_get(sim, "/_sim/status")["serverTime"])
    boundary = server_ms - server_ms % 60_000 + 60_000
    time.sleep((boundary - server_ms) / SPEED / 1000 + 0.005)
    return stop_gracefully(process, log, what="ingest")


def holes_now(sim: SimExchangeThread) -> dict[tuple[str, Timeframe], list[tuple[int, int]]]:
    symbol_ids = dict(Symbol.objects.filter(exchange="sim").values_list("symbol", "id"))
    return candle_recent_holes(
        symbol_ids=symbol_ids,
        timeframes=[Timeframe(tf) for tf in TIMEFRAMES],
        window_ms=24 * 3_600_000,
        now_ms=int(sim_get(sim, "/_sim/status")["serverTime"]),  # the simulator's clock runs fast
    )


def assert_exactly_the_simulators_candles(sim: SimExchangeThread, until: dict[str, int]) -> None:
    names = dict(Symbol.objects.filter(exchange="sim").values_list("pk", "symbol"))
    differing = []
    for symbol_id, tf, _ in streams():
        first = Candle.objects.filter(symbol_id=symbol_id, timeframe=tf).order_by("open_time").first()
        assert first is not None, f"{names[symbol_id]} {tf}: nothing stored"
        first_ms = int(first.open_time.timestamp() * 1000)
        truth = truth_rows(sim, names[symbol_id], tf, first_ms, until[tf])
        assert len(truth) >= 6, (names[symbol_id], tf, len(truth))
        if stored_rows(symbol_id, tf, first_ms, until[tf]) != truth:
            differing.append(f"{names[symbol_id]} {tf}")
    assert not differing, f"{len(differing)} streams differ from the simulator: {differing[:10]}"
    assert not Candle.objects.filter(is_imputed=True).exists()


def test_sigterm_under_load_commits_everything_and_the_next_instance_continues(sim, tmp_path):
    log = tmp_path / "ingest.log"
    first = start_ingest(sim, *ARGS, log=log)
    try:
        wait_caught_up(sim, log, timeout=90)
        wait_lookbacks_done(log)
        # Load on top of the closes: 20 streams silenced for 4 candles, their backfills slowed
        # to 0.8 s a request (4 at a time), so backfills are in flight when the stop comes.
        sim_faults(
            sim,
            {
                "ws_silence": [{"symbol": name, "interval": "1m", "candles": 4} for name in SYMBOLS[:20]],
                "rest_latency_ms": 800,
            },
        )
        time.sleep(3.5)
    except BaseException:
        first.kill()
        raise
    took = sigterm_just_after_a_close(sim, first, log)
    sim_faults(sim, None)
    text = log.read_text()
    summary = STOPPED.search(text)
    assert summary, text[-3000:]
    closes, backfilled, committed = (int(summary[k]) for k in ("closes", "backfilled", "committed"))
    assert backfilled > 0, "nothing was backfilled: the silenced streams did not load the REST path"
    assert closes > 8 * len(SYMBOLS), f"too few closes to be under load: {summary[0]}"
    # Every candle the engine handed to the writer (live closes and backfilled ones) was
    # committed before the process left: nothing was dropped from the buffers or the queue.
    assert committed == closes + backfilled, summary[0]
    assert "backfill_cut_short" not in text, text[-3000:]
    assert took < 30, f"the stop took {took:.1f} s"
    # What it committed has no hole: the backfills in flight finished before the writer drained.
    assert holes_now(sim) == {}

    # The next instance (a rolling restart) resumes where the first stopped.
    second = start_ingest(sim, *ARGS, log=log)
    try:
        time.sleep(2)
        until = wait_caught_up(sim, log, timeout=90)
    finally:
        stop_ingest(second, log)
    assert_exactly_the_simulators_candles(sim, until)


def test_a_hole_behind_the_newest_candle_is_backfilled_at_start(sim, tmp_path):
    log = tmp_path / "ingest.log"
    first = start_ingest(sim, *ARGS, log=log)
    try:
        wait_caught_up(sim, log, timeout=90)
        time.sleep(2)
    finally:
        stop_ingest(first, log)
    # As if a kill had cut a backfill short while live candles went on being written: three
    # 1m candles and one 3m candle gone from the middle of two streams.
    btc, eth = (Symbol.objects.get(exchange="sim", symbol=name) for name in SYMBOLS[:2])
    newest = Candle.objects.filter(symbol=btc, timeframe="1m").order_by("-open_time")[0].open_time
    newest_ms = int(newest.timestamp() * 1000)
    removed_1m = [newest_ms - k * 60_000 for k in (3, 4, 5)]
    deleted, _ = Candle.objects.filter(
        symbol=btc, timeframe="1m", open_time__in=[utc_from_ms(ms) for ms in removed_1m]
    ).delete()
    assert deleted == 3
    newest_3m = Candle.objects.filter(symbol=eth, timeframe="3m").order_by("-open_time")[0].open_time
    removed_3m = int(newest_3m.timestamp() * 1000) - 180_000
    gone = Candle.objects.filter(symbol=eth, timeframe="3m", open_time=utc_from_ms(removed_3m)).delete()
    assert gone[0] == 1
    assert holes_now(sim) == {
        (btc.symbol, Timeframe("1m")): [(removed_1m[-1], removed_1m[0])],
        (eth.symbol, Timeframe("3m")): [(removed_3m, removed_3m)],
    }

    second = start_ingest(sim, *ARGS, log=log)
    try:
        until = wait_caught_up(sim, log, timeout=90)
        deadline = time.monotonic() + 30
        while holes_now(sim) and time.monotonic() < deadline:
            time.sleep(0.25)
    finally:
        stop_ingest(second, log)
    assert "2 holes behind them to backfill" in log.read_text()
    assert holes_now(sim) == {}
    assert_exactly_the_simulators_candles(sim, until)
