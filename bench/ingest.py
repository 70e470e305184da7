"""Ingestion latency with N symbols whose 1m candles all close at the same instant.

The simulator runs in its own process (`manage.py simexchange`, accelerated clock); this
process is the ingest process: the same IngestEngine and CandleWriter as `manage.py ingest`,
on a throw-away PostgreSQL database. Latency is the exchange's event time E of each closing
frame → the commit of its candle. Lost and duplicate counts compare the stored candles with
the simulator's truth endpoint, row by row.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis .venv/bin/python bench/ingest.py
    ... bench/ingest.py --symbols 100,1000 --closes 12 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django  # noqa: E402
import orjson  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from marketdata.core.timeframes import Timeframe  # noqa: E402
from marketdata.exchanges import exchange_profile  # noqa: E402
from marketdata.ingest.engine import IngestEngine  # noqa: E402
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


def one_run(symbols: int, closes: int, speed: float, writer_connections: int) -> dict[str, float]:
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

        samples: list[tuple[int, float]] = []  # (open time, latency s) of live closes
        write_seconds: list[float] = []
        burst_sizes: dict[int, int] = {}  # live closes committed per open time, counted as they come

        def committed(batch: list[CandleWrite], at: float, took: float) -> None:
            write_seconds.append(took)
            for write in batch:
                if write.source == "ws" and write.kline.event_time_ms is not None:
                    samples.append((write.kline.open_time_ms, at - write.kline.event_time_ms / 1000))
                    burst_sizes[write.kline.open_time_ms] = burst_sizes.get(write.kline.open_time_ms, 0) + 1

        def complete_bursts() -> list[int]:
            return sorted(open_time for open_time, size in burst_sizes.items() if size == len(symbol_ids))

        # Final frames as they reach the engine (receipt wall time, frame), parsed after the run
        # so the measuring does not slow the burst: receipt - E is the simulator's and the
        # network's share of the latency, plus any wait for this process's loop.
        finals: list[tuple[float, str | bytes]] = []

        class TimedEngine(IngestEngine):
            def on_frame(self, raw: str | bytes) -> None:
                if (b'"x":true' if isinstance(raw, bytes) else '"x":true') in raw:  # type: ignore[operator]
                    finals.append((time.time(), raw))
                super().on_frame(raw)

        writer = CandleWriter(connections=writer_connections, on_committed=committed)
        engine = TimedEngine(
            profile=profile,
            symbol_ids=symbol_ids,
            timeframes=[Timeframe.M1],
            writer=writer,
            lookback_candles=0,
        )

        async def run() -> None:
            stop = asyncio.Event()
            async with writer.running(on_failure=stop):
                task = asyncio.create_task(engine.run(stop))
                # Wait for `closes` complete bursts after the first one (connect and subscribe).
                while len(complete_bursts()) < closes + 1:
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.1)
                stop.set()
                await task

        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        wall_before = time.perf_counter()
        gc.collect()
        gc.freeze()  # as `manage.py ingest` does after start-up
        asyncio.run(run())
        wall = time.perf_counter() - wall_before
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)

        # Skip the first complete burst (it may race the subscription); judge the next ones.
        bursts = complete_bursts()[1 : closes + 1]
        judged = [latency for open_time, latency in samples if open_time in set(bursts)]
        received = []
        for at, raw in finals:
            message = orjson.loads(raw)
            event = message.get("data", message)
            if event["k"]["t"] in set(bursts):
                received.append(at - event["E"] / 1000)
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
            "write p50 ms": statistics.median(write_seconds) * 1000,
            "candles/s": writer.stats.written / wall,
            "cpu %": 100 * cpu / wall,
            "peak rss MiB": usage.ru_maxrss / 1024,
            "lost": float(lost),
            "duplicates": float(duplicates),
            "batches": float(writer.stats.batches),
        }
    finally:
        sim.terminate()
        sim.wait(timeout=30)


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
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/ingest.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    for count in (int(part) for part in args.symbols.split(",")):
        runs = []
        for n in range(args.runs):
            old = setup_databases(verbosity=0, interactive=False)
            try:
                figures = one_run(count, args.closes, args.speed, args.writer_connections)
            finally:
                teardown_databases(old, verbosity=0)
            runs.append(figures)
            print(f"{count} symbols, run {n + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()))
        print(
            f"{count} symbols, median of {args.runs}: "
            + ", ".join(f"{k} {statistics.median(r[k] for r in runs):,.1f}" for k in runs[0])
        )


if __name__ == "__main__":
    main()
