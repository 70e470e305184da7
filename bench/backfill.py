"""Backfill of one year of 1m candles (525,600) for one symbol from the simulator.

The simulator runs in its own process (`manage.py simexchange`, replaying the real Binance.US
CSV tiled over a year); this process runs `backfill_range` into an empty range of a throw-away
PostgreSQL database. Printed per run: the rate including the wait on the simulator's REST, the
rate excluding it (our parsing, imputation walk and writes), with `--derive` the time of
`derived_candles_refresh` over the year into every derived timeframe (then once more, with
everything stored), and the rate of writing the same candles again through the bulk writer
(every row exists: the upsert path).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis .venv/bin/python bench/backfill.py --runs 3 --derive
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
from marketdata.core.backfill_pages import KlineRows  # noqa: E402
from marketdata.core.resample import DEFAULT_DERIVATIONS  # noqa: E402
from marketdata.core.timeframes import Timeframe  # noqa: E402
from marketdata.exchanges import exchange_profile  # noqa: E402
from marketdata.models import Candle, Symbol  # noqa: E402
from marketdata.resampling import derived_candles_refresh  # noqa: E402
from marketdata.services import CandleRows, candles_upsert_rows  # noqa: E402

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


def one_run(base: str, history_start: int, *, derive: bool) -> dict[str, float]:
    host_port = base.removeprefix("http://")
    settings.OASIS_EXCHANGE_URLS = {"sim": {"rest": base, "ws": f"ws://{host_port}"}}
    call_command("sync_symbols", exchange="sim", verbosity=0)
    first_ms, last_ms = history_start, history_start + (YEAR - 1) * MINUTE
    since = datetime.fromtimestamp(first_ms / 1000, tz=UTC)
    until = datetime.fromtimestamp(last_ms / 1000, tz=UTC)
    real_refresh = derived_candles_refresh
    setattr(backfill, "derived_candles_refresh", lambda **kwargs: 0)  # noqa: B010 - timed apart below
    try:
        started = time.monotonic()
        result = backfill.backfill_range(
            exchange="sim", symbol="BTCUSDT", timeframe="1m", since=since, until=until
        )
        elapsed = time.monotonic() - started
    finally:
        setattr(backfill, "derived_candles_refresh", real_refresh)  # noqa: B010
    assert result.backfilled == YEAR, result
    stored = Candle.objects.filter(timeframe="1m").count()
    assert stored == YEAR, stored
    ours = elapsed - result.rest_seconds
    symbol_id = Symbol.objects.get(exchange="sim", symbol="BTCUSDT").pk
    figures = {
        "candles/s incl. REST": YEAR / elapsed,
        "candles/s excl. REST": YEAR / ours,
        "REST s": result.rest_seconds,
        "ours s": ours,
        "write s": result.write_seconds,
        "requests": result.requests,
    }

    if derive:
        # Every derived timeframe of the default map (5m, 15m and 1h included, which the
        # simulator would otherwise stream itself): into an empty range, then again (nothing
        # to write: every bucket is stored as computed).
        settings.OASIS_DERIVATIONS = DEFAULT_DERIVATIONS
        try:
            for label in ("derive s", "derive again s"):
                started = time.monotonic()
                written = derived_candles_refresh(
                    symbol_id=symbol_id, timeframe=Timeframe.M1, first_ms=first_ms, last_ms=last_ms
                )
                figures[label] = time.monotonic() - started
                figures[label.replace(" s", " rows")] = written
        finally:
            settings.OASIS_DERIVATIONS = None

    # Existing rows: the same candles again through the bulk writer, every row already stored
    # (the staging-table upsert), as a backfill would write a span that filled meanwhile.
    pager = backfill.KlinePager(exchange_profile("sim", overrides=settings.OASIS_EXCHANGE_URLS))
    now_ms = pager.server_time_ms()
    rows = KlineRows(Timeframe.M1)
    for _first, _last, page in pager.pages("BTCUSDT", Timeframe.M1, first_ms, last_ms, now_ms):
        rows.extend(page)
    pager.close()
    upsert_started = time.monotonic()
    rewritten = 0
    for i in range(0, YEAR, backfill.BATCH_ROWS):
        part = slice(i, i + backfill.BATCH_ROWS)
        rewritten += candles_upsert_rows(
            rows=CandleRows(
                symbol_id, Timeframe.M1, "rest", rows.open_time_ms[part], rows.open[part],
                rows.high[part], rows.low[part], rows.close[part], rows.volume[part],
                rows.quote_volume[part], rows.trades[part],
            )
        )  # fmt: skip
    assert rewritten == 0, rewritten
    figures["existing rows candles/s"] = YEAR / (time.monotonic() - upsert_started)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is quoted")
    parser.add_argument(
        "--derive",
        action="store_true",
        help="also time derived_candles_refresh of the year into every derived timeframe, and again",
    )
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/backfill.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    sim, base, history_start = start_simulator()
    try:
        runs = []
        for n in range(args.runs):
            old = setup_databases(verbosity=0, interactive=False)
            try:
                figures = one_run(base, history_start, derive=args.derive)
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
