"""`manage.py ingest --processes N`: the symbols dealt among N real ingest processes under one
supervisor, over real sockets against the simulator, on PostgreSQL. Together they store exactly
the simulator's candles; a stop drains every one; a process that dies stops the others and the
supervisor fails naming it; a restart backfills what was missed."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from django.core.management import CommandError, call_command

from marketdata.ingest.shards import partition, shard_instance
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tests.ingest_harness import (
    newest_closed_open_ms,
    sim_in_use,
    start_ingest,
    stop_ingest,
    wait_until_stored,
)
from marketdata.tests.test_ingest_e2e import (
    TIMEFRAMES,
    assert_exactly_the_simulators_candles,
    streams,
    wait_caught_up,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
ARGS = ("--symbols", "all", "--timeframes", "1m,3m", "--lookback", "5", "--processes", "2")
SUPERVISING = re.compile(r"supervising 2 ingest processes \(pids \[(\d+), (\d+)\]\)")
CHILD_STOPPED = re.compile(r"stopped: \d+ frames, (\d+) closes")


@pytest.fixture
def sim(settings):
    config = SimConfig(
        port=0, symbols=SYMBOLS, seed=11, speed=120, history_minutes=120, update_interval_s=0.05
    )
    with SimExchangeThread(config) as running, sim_in_use(running, settings):
        yield running


def test_partition_deals_sorted_names_round_robin():
    assert partition(["SOL", "BTC", "ETH", "ADA", "XRP"], 2) == [["ADA", "ETH", "XRP"], ["BTC", "SOL"]]
    assert partition(["B", "A"], 1) == [["A", "B"]]
    # The same names make the same shards whatever their order: a restart ingests the same streams.
    assert partition(["C", "A", "B"], 3) == partition(["B", "C", "A"], 3) == [["A"], ["B"], ["C"]]
    with pytest.raises(ValueError, match="3 shards for 2 symbols"):
        partition(["A", "B"], 3)
    with pytest.raises(ValueError, match="at least 1"):
        partition(["A"], 0)
    assert [shard_instance("", 0), shard_instance("eu", 1)] == ["p1", "eu.p2"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_more_processes_than_symbols_or_a_bad_instance_is_refused(sim):
    with pytest.raises(CommandError, match="--processes: 4 shards for 3 symbols"):
        call_command("ingest", exchange="sim", symbols="all", processes=4, metrics_port=0)
    with pytest.raises(CommandError, match="--instance takes letters"):
        call_command("ingest", exchange="sim", symbols="all", instance="a b", metrics_port=0)


def _pids(log) -> tuple[int, int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = SUPERVISING.search(log.read_text())
        if found:
            return int(found[1]), int(found[2])
        time.sleep(0.1)
    raise AssertionError(log.read_text()[-3000:])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_processes_store_exactly_the_simulators_candles_and_both_drain_on_sigterm(sim, tmp_path):
    log = tmp_path / "ingest.log"
    process = start_ingest(sim, *ARGS, log=log)
    try:
        _pids(log)
        time.sleep(5)  # 10 simulated minutes: live closes on every stream, after the lookbacks
        until = wait_caught_up(sim, log)
    finally:
        stop_ingest(process, log)  # exit status 0 required
    text = log.read_text()
    for line in ("process 1 (p1): 2 symbols", "process 2 (p2): 1 symbols", "ingesting 2 symbols"):
        assert line in text, text[-3000:]
    assert "ingesting 1 symbols" in text, text[-3000:]
    assert len(CHILD_STOPPED.findall(text)) == 2, text[-3000:]  # each process drained and reported
    assert all(int(closes) > 0 for closes in CHILD_STOPPED.findall(text)), text[-3000:]
    assert "stopped: all 2 ingest processes drained" in text
    assert_exactly_the_simulators_candles(sim, until)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_process_that_dies_stops_the_other_and_a_restart_backfills_the_gap(sim, tmp_path):
    log = tmp_path / "ingest.log"
    supervisor = start_ingest(sim, *ARGS, log=log)
    try:
        first, second = _pids(log)
        wait_until_stored(streams(), newest_closed_open_ms(sim, 180_000), timeout=60, log=log)
        os.kill(first, signal.SIGKILL)
        code = supervisor.wait(timeout=60)
    except BaseException:
        supervisor.kill()
        raise
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "ingest process 1 (p1) exited with code -9; the other processes were stopped" in text, text[-3000:]
    assert len(CHILD_STOPPED.findall(text)) == 1, text[-3000:]  # the other one drained
    with pytest.raises(ProcessLookupError):  # the supervisor waited for it: nothing left behind
        os.kill(second, 0)
    killed_at = {tf: newest_closed_open_ms(sim, ms) for tf, ms in TIMEFRAMES.items()}
    time.sleep(3)  # about 6 simulated minutes pass with nobody listening
    again = start_ingest(sim, *ARGS, log=log)
    try:
        until = wait_caught_up(sim, log)
        assert until["1m"] >= killed_at["1m"] + 4 * 60_000
    finally:
        stop_ingest(again, log)
    assert_exactly_the_simulators_candles(sim, until)
