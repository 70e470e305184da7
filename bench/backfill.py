"""Backfill of one year of 1m candles (525,600) for one symbol from the simulator.

The simulator runs in its own process (`manage.py simexchange`, replaying the real Binance.US
CSV tiled over a year); this process runs `backfill_range` into an empty range of a throw-away
PostgreSQL database. Printed per run: the rate including the wait on the simulator's REST, the
rate excluding it (our parsing, imputation walk and writes), the derived-candle refresh apart,
and the rate of writing the same candles again through `candles_upsert_closed` (every row
exists: the upsert path).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis .venv/bin/python bench/backfill.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from marketdata import backfill  # noqa: E402
from marketdata.core.timeframes import Timeframe  # noqa: E402
from marketdata.exchanges import exchange_profile  # noqa: E402
from marketdata.models import Candle, Symbol  # noqa: E402
from marketdata.services import CandleWrite, candles_upsert_closed  # noqa: E402

MINUTE = 60_000
YEAR = 525_600
CSV = Path("/work/shared/data/binanceus-BTCUSDT-1m-2023-03-01_21.csv")


def start_simulator() -> tuple[subprocess.Popen[str], str, int]:
    process = subprocess.Popen(
        [
            sys.executable, str(ROOT / "manage.py"), "simexchange", "--port", "0", "--symbols", "BTCUSDT",
            "--history", "367d", "--replay", str(CSV), "--update-interval-ms", "1000",
            "--weight-limit", "100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OASIS_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        match = re.search(r"REST (http://[^/\s]+)/api/v3", line)
        if match:
            base = match.group(1)
            import json
            import urllib.request

            with urllib.request.urlopen(f"{base}/_sim/status", timeout=10) as response:
                history_start = json.loads(response.read())["historyStart"]
            return process, base, history_start
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the simulator did not start")


def one_run(base: str, history_start: int) -> dict[str, float]:
    host_port = base.removeprefix("http://")
    settings.OASIS_EXCHANGE_URLS = {"sim": {"rest": base, "ws": f"ws://{host_port}"}}
    call_command("sync_symbols", exchange="sim", verbosity=0)
    since = datetime.fromtimestamp(history_start / 1000, tz=UTC)
    until = datetime.fromtimestamp((history_start + (YEAR - 1) * MINUTE) / 1000, tz=UTC)
    started = time.monotonic()
    result = backfill.backfill_range(
        exchange="sim", symbol="BTCUSDT", timeframe="1m", since=since, until=until
    )
    elapsed = time.monotonic() - started
    assert result.backfilled == YEAR, result
    stored = Candle.objects.filter(timeframe="1m").count()
    assert stored == YEAR, stored
    ours = elapsed - result.rest_seconds - result.derive_seconds

    # The upsert path: the same candles again, every row already stored.
    symbol_id = Symbol.objects.get(exchange="sim", symbol="BTCUSDT").pk
    pager = backfill.KlinePager(exchange_profile("sim", overrides=settings.OASIS_EXCHANGE_URLS))
    now_ms = pager.server_time_ms()
    writes = [
        CandleWrite(symbol_id, kline, "rest")
        for _first, _last, klines in pager.pages(
            "BTCUSDT", Timeframe.M1, history_start, history_start + (YEAR - 1) * MINUTE, now_ms
        )
        for kline in klines
    ]
    pager.close()
    upsert_started = time.monotonic()
    rewritten = sum(
        candles_upsert_closed(writes=writes[i : i + backfill.BATCH_ROWS])
        for i in range(0, len(writes), backfill.BATCH_ROWS)
    )
    upsert = time.monotonic() - upsert_started
    assert rewritten == 0, rewritten
    return {
        "candles/s incl. REST": YEAR / (elapsed - result.derive_seconds),
        "candles/s excl. REST": YEAR / ours,
        "upsert candles/s": YEAR / upsert,
        "REST s": result.rest_seconds,
        "ours s": ours,
        "write s": result.write_seconds,
        "derive s": result.derive_seconds,
        "requests": result.requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is quoted")
    parser.add_argument(
        "--derive",
        action="store_true",
        help="also refresh the derived candles (timed apart; slow: off by default to keep runs short)",
    )
    args = parser.parse_args()
    if not args.derive:
        setattr(backfill, "derived_candles_refresh", lambda **kwargs: 0)  # noqa: B010 - a bench-only stub
    if connection.vendor != "postgresql":
        raise SystemExit("bench/backfill.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    sim, base, history_start = start_simulator()
    try:
        runs = []
        for n in range(args.runs):
            old = setup_databases(verbosity=0, interactive=False)
            try:
                figures = one_run(base, history_start)
            finally:
                teardown_databases(old, verbosity=0)
            runs.append(figures)
            print(f"run {n + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()), flush=True)
        print(
            f"median of {args.runs}: "
            + ", ".join(f"{k} {statistics.median(r[k] for r in runs):,.1f}" for k in runs[0])
        )
    finally:
        sim.terminate()
        sim.wait(timeout=30)


if __name__ == "__main__":
    main()
