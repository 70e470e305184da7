"""Ingestion latency with N symbols whose 1m candles all close at the same instant.

The simulator runs in its own process (`manage.py simexchange`, accelerated clock); this
process is the ingest process: the same IngestEngine, CandleWriter and commit hook
(DerivedRefresher: broadcasts, derived candles, rule evaluation) as `manage.py ingest`, on a
throw-away PostgreSQL database. With REDIS_URL set, as deployed: derived refreshes go to Celery
queues (purged after each run: no worker runs here) and broadcasts to Redis; without it, the
embedded mode (derived candles computed in the process's worker thread). With `--processes N`
the symbols are split as `manage.py ingest --processes N` splits them, each shard ingested by a
forked process of its own (CPU is then their sum, RSS the largest). Latency is the exchange's
event time E of each closing frame → the commit of its candle. Lost and duplicate counts compare
the stored candles with the simulator's truth endpoint, row by row.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis REDIS_URL=redis://127.0.0.1:6379/5 \
        .venv/bin/python bench/ingest.py
    ... bench/ingest.py --symbols 100,1000 --closes 12 --runs 3 --processes 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django  # noqa: E402
import orjson  # noqa: E402

django.setup()

from django.db import connection, connections  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from marketdata.core.timeframes import Timeframe  # noqa: E402
from marketdata.exchanges import ExchangeProfile, exchange_profile  # noqa: E402
from marketdata.ingest.derived import DerivedRefresher  # noqa: E402
from marketdata.ingest.engine import IngestEngine  # noqa: E402
from marketdata.ingest.shards import partition  # noqa: E402
from marketdata.ingest.writer import CandleWriter  # noqa: E402
from marketdata.models import Candle, Symbol  # noqa: E402
from marketdata.services import CandleWrite, SymbolSpec, symbol_sync  # noqa: E402
from marketdata.symbol_sync import spec_from_exchange_info  # noqa: E402

MINUTE = 60_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def start_simulator(symbols: int, speed: float) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "manage.py"),
            "simexchange",
            "--port",
            "0",
            "--symbols",
            str(symbols),
            "--speed",
            str(speed),
            "--history",
            "30m",
            "--update-interval-ms",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OASIS_LOG_LEVEL": "WARNING"},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"REST (http://[^/\s]+)/api/v3", line)
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the simulator did not start")


@dataclass
class ShardResult:
    """What one ingest process measured."""

    samples: list[tuple[int, float]] = field(default_factory=list)  # (open time, E → committed s)
    received: list[tuple[int, float]] = field(default_factory=list)  # (open time, E → on_frame s)
    write_seconds: list[float] = field(default_factory=list)
    written: int = 0
    batches: int = 0
    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0


def ingest_shard(
    profile: ExchangeProfile, symbol_ids: dict[str, int], bursts: int, writers: int
) -> ShardResult:
    """Ingest `symbol_ids` as one `manage.py ingest` process does (the same IngestEngine and
    CandleWriter) until `bursts` closes of all of them are committed."""
    result = ShardResult()
    burst_sizes: dict[int, int] = {}  # live closes committed per open time, counted as they come

    # The command's commit hook too: dashboards' broadcasts, derived candles, rule evaluation.
    refresher = DerivedRefresher()

    def committed(batch: list[CandleWrite], at: float, took: float) -> None:
        result.write_seconds.append(took)
        for write in batch:
            if write.source == "ws" and write.kline.event_time_ms is not None:
                result.samples.append((write.kline.open_time_ms, at - write.kline.event_time_ms / 1000))
                burst_sizes[write.kline.open_time_ms] = burst_sizes.get(write.kline.open_time_ms, 0) + 1
        refresher.after_commit(batch, at, took)

    def complete() -> int:
        return sum(1 for size in burst_sizes.values() if size == len(symbol_ids))

    # Final frames as they reach the engine (receipt wall time, frame), parsed after the run
    # so the measuring does not slow the burst: receipt - E is the simulator's and the
    # network's share of the latency, plus any wait for this process's loop.
    finals: list[tuple[float, str | bytes]] = []

    class TimedEngine(IngestEngine):
        def on_frame(self, raw: str | bytes) -> None:
            if (b'"x":true' if isinstance(raw, bytes) else '"x":true') in raw:  # type: ignore[operator]
                finals.append((time.time(), raw))
            super().on_frame(raw)

    writer = CandleWriter(connections=writers, on_committed=committed)
    refresher.hold_while_busy(writer)
    engine = TimedEngine(
        profile=profile, symbol_ids=symbol_ids, timeframes=[Timeframe.M1], writer=writer, lookback_candles=0
    )

    async def run() -> None:
        stop = asyncio.Event()
        async with writer.running(on_failure=stop):
            task = asyncio.create_task(engine.run(stop))
            while complete() < bursts:
                if task.done():
                    task.result()
                await asyncio.sleep(0.1)
            stop.set()
            await task

    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    gc.collect()
    gc.freeze()  # as `manage.py ingest` does after start-up
    try:
        asyncio.run(run())
    finally:
        refresher.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_s = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    result.peak_rss_mib = usage.ru_maxrss / 1024
    result.written, result.batches = writer.stats.written, writer.stats.batches
    for at, raw in finals:
        message = orjson.loads(raw)
        event = message.get("data", message)
        result.received.append((event["k"]["t"], at - event["E"] / 1000))
    return result


def _shard_process(
    queue: Any, profile: ExchangeProfile, symbol_ids: dict[str, int], bursts: int, writers: int
) -> None:
    try:
        queue.put(ingest_shard(profile, symbol_ids, bursts, writers))
    finally:
        connections.close_all()


def one_run(
    symbols: int, closes: int, speed: float, writer_connections: int, processes: int
) -> dict[str, float]:
    sim, base = start_simulator(symbols, speed)
    try:
        host_port = base.removeprefix("http://")
        profile = exchange_profile("sim", overrides={"sim": {"rest": base, "ws": f"ws://{host_port}"}})
        info = get_json(f"{base}/api/v3/exchangeInfo")
        assert isinstance(info, dict)
        specs: list[SymbolSpec] = [spec_from_exchange_info("sim", entry) for entry in info["symbols"]]
        for spec in specs:
            symbol_sync(spec=spec, actor="system:bench")
        symbol_ids = dict(Symbol.objects.filter(exchange="sim").values_list("symbol", "id"))

        # Each process stops after `closes + 2` complete bursts of its own symbols; the first
        # burst complete everywhere is skipped (it may race the subscriptions), the next
        # `closes` judged.
        wall_before = time.perf_counter()
        if processes == 1:
            shards = [ingest_shard(profile, symbol_ids, closes + 2, writer_connections)]
        else:
            # `manage.py ingest --processes N`'s split, one forked process per shard.
            connections.close_all()
            context = multiprocessing.get_context("fork")
            queue = context.Queue()
            children = [
                context.Process(
                    target=_shard_process,
                    args=(queue, profile, {n: symbol_ids[n] for n in names}, closes + 2, writer_connections),
                )
                for names in partition(list(symbol_ids), processes)
            ]
            for child in children:
                child.start()
            shards = [queue.get(timeout=600) for _ in children]
            for child in children:
                child.join()
        wall = time.perf_counter() - wall_before

        sizes: dict[int, int] = {}
        for shard in shards:
            for open_time, _ in shard.samples:
                sizes[open_time] = sizes.get(open_time, 0) + 1
        bursts = sorted(open_time for open_time, size in sizes.items() if size == len(symbol_ids))[
            1 : closes + 1
        ]
        if len(bursts) < closes:
            print(f"warning: {len(bursts)} complete bursts judged, not {closes}")
        judged_times = set(bursts)
        samples = [sample for shard in shards for sample in shard.samples]
        judged = [latency for open_time, latency in samples if open_time in judged_times]
        received = [
            latency for shard in shards for open_time, latency in shard.received if open_time in judged_times
        ]
        worst = dict.fromkeys(bursts, 0.0)
        for open_time, latency in samples:
            if open_time in worst:
                worst[open_time] = max(worst[open_time], latency)
        lost = duplicates = 0
        for name, symbol_id in symbol_ids.items():
            truth = get_json(
                f"{base}/_sim/closed?symbol={name}&interval=1m&startTime={bursts[0]}&endTime={bursts[-1]}"
            )
            assert isinstance(truth, list)
            stored = Candle.objects.filter(
                symbol_id=symbol_id,
                timeframe="1m",
                open_time__gte=_dt(bursts[0]),
                open_time__lte=_dt(bursts[-1]),
            ).count()
            lost += max(0, len(truth) - stored)
            duplicates += max(0, stored - len(truth))
        return {
            "receive p95 ms": percentile(received, 0.95) * 1000,
            "p50 ms": percentile(judged, 0.50) * 1000,
            "p95 ms": percentile(judged, 0.95) * 1000,
            "p99 ms": percentile(judged, 0.99) * 1000,
            "slowest-of-burst p95 ms": percentile(list(worst.values()), 0.95) * 1000,
            "write p50 ms": statistics.median(t for shard in shards for t in shard.write_seconds) * 1000,
            "candles/s": sum(shard.written for shard in shards) / wall,
            "cpu %": 100 * sum(shard.cpu_s for shard in shards) / wall,
            "peak rss MiB": max(shard.peak_rss_mib for shard in shards),
            "lost": float(lost),
            "duplicates": float(duplicates),
            "batches": float(sum(shard.batches for shard in shards)),
        }
    finally:
        sim.terminate()
        sim.wait(timeout=30)
        if os.environ.get("REDIS_URL"):
            # The derived refreshes and rule evaluations queued (Redis lists named after their
            # queues) for workers that do not run here.
            import redis

            from oasis_site.metrics_collectors import celery_queue_names

            redis.Redis.from_url(os.environ["REDIS_URL"]).delete(*celery_queue_names())


def _dt(ms: int) -> object:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default="100,1000", help="comma-separated symbol counts")
    parser.add_argument("--closes", type=int, default=10, help="simultaneous closes measured per run")
    parser.add_argument("--speed", type=float, default=30.0, help="simulator clock speed")
    parser.add_argument("--runs", type=int, default=3, help="runs per symbol count; the median is quoted")
    parser.add_argument("--writer-connections", type=int, default=2, help="CandleWriter connections")
    parser.add_argument(
        "--processes",
        default="1",
        help="comma-separated ingest process counts (`manage.py ingest --processes N`), each measured",
    )
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/ingest.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    for processes in (int(part) for part in args.processes.split(",")):
        for count in (int(part) for part in args.symbols.split(",")):
            label = f"{count} symbols, {processes} process{'es' if processes > 1 else ''}"
            runs = []
            for n in range(args.runs):
                old = setup_databases(verbosity=0, interactive=False)
                try:
                    figures = one_run(count, args.closes, args.speed, args.writer_connections, processes)
                finally:
                    teardown_databases(old, verbosity=0)
                runs.append(figures)
                print(f"{label}, run {n + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()))
            print(
                f"{label}, median of {args.runs}: "
                + ", ".join(f"{k} {statistics.median(r[k] for r in runs):,.1f}" for k in runs[0])
            )


if __name__ == "__main__":
    main()
