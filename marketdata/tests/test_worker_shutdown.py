"""Celery workers on a rolling update: a warm shutdown (SIGTERM) finishes the task it is running
before leaving, and a pool process killed mid-task (OOM killer, SIGKILL) has its task put back
on the queue and run again (acks_late + reject_on_worker_lost), so a backfill is never lost.

A real `celery worker` process on Redis and PostgreSQL runs `marketdata.gap_backfill` against
the simulator, whose REST answers are slowed so that the task is caught in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings

from marketdata.core.timeframes import utc_from_ms
from marketdata.models import Candle, Gap, Symbol
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tasks import gap_backfill_start, stream_queue
from marketdata.tests.ingest_harness import ingest_env, sim_faults, sim_in_use
from oasis_site.tests.stack_harness import children_of, stop_gracefully

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_700_000_000_000 - 1_700_000_000_000 % 86_400_000  # a UTC midnight
GAP_CANDLES = 2_500  # three REST pages of at most 1,000 candles


@pytest.fixture
def sim(settings):
    config = SimConfig(
        port=0, symbols=("BTCUSDT",), seed=5, start_ms=START_MS + 5_000 * 60_000, history_minutes=5_000
    )
    with SimExchangeThread(config) as running, sim_in_use(running, settings):
        yield running


def a_gap() -> Gap:
    symbol = Symbol.objects.get(exchange="sim", symbol="BTCUSDT")
    first = START_MS + 60 * 60_000
    return Gap.objects.create(
        symbol=symbol,
        timeframe="1m",
        start=utc_from_ms(first),
        end=utc_from_ms(first + (GAP_CANDLES - 1) * 60_000),
        detected_at=utc_from_ms(first) + timedelta(days=10),
    )


def start_worker(sim: SimExchangeThread, gap: Gap, log: Path) -> subprocess.Popen[str]:
    redis_url = settings.REDIS_URL
    assert redis_url, "the worker needs the test's Redis"
    env = {**ingest_env(sim), "REDIS_URL": redis_url, "OASIS_LOG_FORMAT": "json"}
    with log.open("a") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "oasis_site",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--queues",
                stream_queue(gap.symbol_id, gap.timeframe),
                "--hostname",
                f"shutdown-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_for(condition: Callable[[], bool], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)


def attempts(gap: Gap) -> int:
    return Gap.objects.values_list("attempts", flat=True).get(pk=gap.pk)


def stored(gap: Gap) -> int:
    return Candle.objects.filter(
        symbol_id=gap.symbol_id, timeframe="1m", open_time__gte=gap.start, open_time__lte=gap.end
    ).count()


def test_a_warm_shutdown_finishes_the_running_task(sim, tmp_path):
    log = tmp_path / "worker.log"
    gap = a_gap()
    worker = start_worker(sim, gap, log)
    try:
        wait_for(lambda: "ready." in log.read_text(), "the worker never became ready", log)
        sim_faults(sim, {"rest_latency_ms": 1200})
        gap_backfill_start(gap)
        wait_for(lambda: attempts(gap) == 1, "the worker never started the backfill", log)
        time.sleep(0.5)  # in the middle of the first slow page
        took = stop_gracefully(worker, log, what="the worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert took > 1.0, "the worker left without waiting for its task"
    gap.refresh_from_db()
    assert (gap.status, gap.attempts, gap.candles_backfilled) == (Gap.Status.BACKFILLED, 1, GAP_CANDLES)
    assert stored(gap) == GAP_CANDLES


def test_a_pool_process_killed_mid_task_has_the_task_run_again(sim, tmp_path):
    log = tmp_path / "worker.log"
    gap = a_gap()
    worker = start_worker(sim, gap, log)
    try:
        wait_for(lambda: "ready." in log.read_text(), "the worker never became ready", log)
        sim_faults(sim, {"rest_latency_ms": 1200})
        gap_backfill_start(gap)
        wait_for(lambda: attempts(gap) == 1, "the worker never started the backfill", log)
        time.sleep(0.5)
        (child,) = children_of(worker.pid)
        os.kill(child, signal.SIGKILL)  # the pool process dies mid-task
        sim_faults(sim, None)
        wait_for(lambda: attempts(gap) == 2, "the lost task was never delivered again", log, timeout=90)
        wait_for(
            lambda: Gap.objects.get(pk=gap.pk).status == Gap.Status.BACKFILLED,
            "the task delivered again never finished",
            log,
            timeout=90,
        )
    finally:
        stop_gracefully(worker, log, what="the worker")
    text = log.read_text()
    assert "WorkerLostError" in text or "exited with 'signal 9" in text, text[-4000:]
    gap.refresh_from_db()
    assert gap.candles_backfilled == GAP_CANDLES
    assert stored(gap) == GAP_CANDLES
