"""Ingestion end to end, over real sockets, on PostgreSQL: the real `manage.py ingest` process
against the simulator, through faults and through a SIGKILL, ends with exactly the
simulator's closed candles stored, compared row by row."""

import re
import signal
import time
from urllib.parse import urlsplit

import pytest
from django.db import connection

from marketdata.models import Candle, Symbol
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tests.ingest_harness import (
    ingest_env,
    newest_closed_open_ms,
    sim_faults,
    sim_in_use,
    start_ingest,
    stop_ingest,
    stored_rows,
    truth_rows,
    wait_until_stored,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
TIMEFRAMES = {"1m": 60_000, "3m": 180_000}
SPEED = 120  # a 1m candle closes every half second of wall time


@pytest.fixture
def sim(settings):
    config = SimConfig(
        port=0, symbols=SYMBOLS, seed=7, speed=SPEED, history_minutes=120, update_interval_s=0.05
    )
    with SimExchangeThread(config) as running, sim_in_use(running, settings):
        yield running


def streams() -> list[tuple[int, str, int]]:
    return [
        (symbol.pk, tf, ms)
        for symbol in Symbol.objects.filter(exchange="sim")
        for tf, ms in TIMEFRAMES.items()
    ]


def wait_caught_up(sim, log, *, timeout: float = 60) -> dict[str, int]:
    """Wait until every stream has stored the simulator's newest closed candle of its timeframe
    as of now; return those open times by timeframe."""
    until = {tf: newest_closed_open_ms(sim, ms) for tf, ms in TIMEFRAMES.items()}
    for tf in TIMEFRAMES:
        wait_until_stored([s for s in streams() if s[1] == tf], until[tf], timeout=timeout, log=log)
    return until


def assert_exactly_the_simulators_candles(sim, until: dict[str, int]) -> None:
    names = dict(Symbol.objects.filter(exchange="sim").values_list("pk", "symbol"))
    for symbol_id, tf, _ in streams():
        first = Candle.objects.filter(symbol_id=symbol_id, timeframe=tf).order_by("open_time").first()
        assert first is not None, f"{names[symbol_id]} {tf}: nothing stored"
        first_ms = int(first.open_time.timestamp() * 1000)
        stored = stored_rows(symbol_id, tf, first_ms, until[tf])
        truth = truth_rows(sim, names[symbol_id], tf, first_ms, until[tf])
        assert len(truth) >= 6, (names[symbol_id], tf, len(truth))  # lookback 5, then live
        assert stored == truth, f"{names[symbol_id]} {tf} differs from the simulator"
    assert Candle.objects.filter(is_imputed=True).count() == 0
    assert_derived_candles_match_the_simulators(sim)


def assert_derived_candles_match_the_simulators(sim) -> None:
    """5m is not ingested here: it is resampled from the 1m candles as they close. The
    simulator builds its own 5m candles, so each derived one must equal it, digits included."""
    names = dict(Symbol.objects.filter(exchange="sim").values_list("pk", "symbol"))
    for symbol_id, name in names.items():
        derived = Candle.objects.filter(symbol_id=symbol_id, timeframe="5m").order_by("open_time")
        assert derived.exists(), f"{name}: no 5m candle was derived"
        assert set(derived.values_list("source", flat=True)) == {"resampled"}
        first_ms = int(derived.first().open_time.timestamp() * 1000)  # type: ignore[union-attr]
        last_ms = int(derived.last().open_time.timestamp() * 1000)  # type: ignore[union-attr]
        assert stored_rows(symbol_id, "5m", first_ms, last_ms) == truth_rows(
            sim, name, "5m", first_ms, last_ms
        )


def test_ingest_through_faults_stores_exactly_the_simulators_candles(sim, tmp_path):
    log = tmp_path / "ingest.log"
    sim_faults(
        sim,
        {
            "ws_drop_every_s": 2.5,
            "ws_silence": [{"symbol": "ETHUSDT", "interval": "1m", "candles": 6}],
            "ws_duplicate_rate": 0.3,
            "ws_out_of_order_rate": 0.3,
            "ws_malformed_rate": 0.05,
            "rest_error": {"status": 429, "count": 3, "retry_after": 1},
        },
    )
    process = start_ingest(sim, "--symbols", "all", "--timeframes", "1m,3m", "--lookback", "5", log=log)
    try:
        time.sleep(8)  # about 16 simulated minutes under every fault at once
        sim_faults(sim, None)
        until = wait_caught_up(sim, log)
    finally:
        stop_ingest(process, log)
    assert_exactly_the_simulators_candles(sim, until)
    summary = re.search(
        r"stopped: (\d+) frames, (\d+) closes, (\d+) backfilled, (\d+) rejected, (\d+) ignored",
        log.read_text(),
    )
    assert summary, log.read_text()[-2000:]
    _frames, _closes, backfilled, rejected, ignored = map(int, summary.groups())
    assert rejected > 0, "no malformed frame reached the ingest: the fault did not run"
    assert ignored > 0, "no duplicate or out-of-order frame reached the ingest"
    assert backfilled > 0, "nothing was backfilled although connections dropped and a stream was silenced"
    assert "rest_rate_limited" in log.read_text(), "the 429 burst never reached the backfill"


def test_sigkill_then_restart_backfills_the_gap(sim, tmp_path):
    log = tmp_path / "ingest.log"
    args = ("--symbols", "all", "--timeframes", "1m,3m", "--lookback", "5")
    first = start_ingest(sim, *args, log=log)
    try:
        wait_until_stored(streams(), newest_closed_open_ms(sim, 180_000), timeout=60, log=log)
        time.sleep(1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    killed_at = {tf: newest_closed_open_ms(sim, ms) for tf, ms in TIMEFRAMES.items()}
    time.sleep(4)  # about 8 simulated minutes pass with nobody listening
    second = start_ingest(sim, *args, log=log)
    try:
        until = wait_caught_up(sim, log)
        assert until["1m"] >= killed_at["1m"] + 5 * 60_000
    finally:
        stop_ingest(second, log)
    assert_exactly_the_simulators_candles(sim, until)


def test_the_harness_env_points_at_the_test_database(sim):
    env = ingest_env(sim)
    assert urlsplit(env["DATABASE_URL"]).path == "/" + connection.settings_dict["NAME"]
    assert connection.settings_dict["NAME"].startswith("test_")
    assert env["OASIS_SIM_WS_URL"].startswith("ws://127.0.0.1:")
