"""Backtest of one year of 1m candles (525,600) for one symbol and one rule with three
indicators, end to end through `trading.backtests.backtest_run`, on PostgreSQL; then 10 symbols,
one after another in this process and over N worker processes.

The year is the real Binance.US BTCUSDT series (`/work/shared/data`, 21 days) repeated by
shifting time, as the simulator's `--replay` does: minute i of the year is row (i + offset) mod
30,240 of the file, so every candle is a real one (OHLC consistent as the exchange gave it,
decimal strings as received) and there is a price jump at each seam. The 10 symbols are copies
shifted by 3,024 minutes each (BTCUSDT has offset 0), so they do not move together. Candles go
in through the project's bulk writer (`marketdata.services.candles_upsert_rows`, COPY) into a
scratch database, then `VACUUM ANALYZE` (what autovacuum does to a backfilled table soon after)
and a `CHECKPOINT` (the server's own, which would otherwise write the fresh rows out during the
first timed runs).

The rule is 1m only: EMA 9/21 cross with an RSI 14 filter, 250 USDT an entry, the settings' fill
model. Each run backtests the whole year ([first candle, last candle + 1 minute)), so
`run.candles` is 525,600. The breakdown times the stages of `backtest_run` by wrapping them:
validation (`_plan`: the rule, the symbols, the candle counts), candle load, signals
(`signal_events`), engine (`trading.core.backtest.run`), performance (`summary`) and the rest
(storing the run row, twice). Figures are medians over `--runs` runs.

Scaling: 10 single-symbol backtests one after another in this process, then the same 10 over a
pool of `--workers` processes (forked after set-up, each with its own database connection; the
pool is started and warmed before timing), and one 10-symbol backtest (one book over all ten).

The peer: Jesse's (about 21,000 candles/s) and freqtrade's (about 12,500 candles/s here, issue 7)
published figures are printed as quoted. With `--freqtrade PATH` (freqtrade from PyPI in a
throwaway venv), the same year and rule also run in freqtrade, timed end to end as a command.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis_bench_bt .venv/bin/python bench/backtest.py \
        --runs 5 [--freqtrade /tmp/ftvenv/bin/freqtrade]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection, connections  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from marketdata.core.timeframes import Timeframe  # noqa: E402
from marketdata.models import Symbol  # noqa: E402
from marketdata.services import CandleRows, candles_upsert_rows  # noqa: E402
from rules.services import rule_config_create, rule_version_activate  # noqa: E402
from trading import backtests  # noqa: E402
from trading.core import backtest as engine  # noqa: E402

CSV = Path("/work/shared/data/binanceus-BTCUSDT-1m-2023-03-01_21.csv")
YEAR = 525_600
MINUTE_MS = 60_000
START = datetime(2024, 1, 1, tzinfo=UTC)
SHIFT = 3_024  # minutes between one symbol's copy and the next's
JESSE = 21_000  # candles/s, published by Jesse (quoted, not rerun)
FREQTRADE = 12_500  # candles/s: ~49 s for the same year and an EMA-cross rule here (issue 7)
SPEC: dict[str, Any] = {
    "timeframes": ["1m"],
    "indicators": {
        "fast": {"kind": "ema", "period": 9},
        "slow": {"kind": "ema", "period": 21},
        "rsi": {"kind": "rsi", "period": 14},
    },
    "entry": "fast crosses_above slow and rsi < 70",
    "exit": "fast crosses_below slow or rsi > 80",
    "sizing": {"quote_amount": "250"},
    "limits": {"max_position_per_symbol": "1000", "max_position_total": "5000"},
}
FILTERS = [
    {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000.00", "tickSize": "0.01"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001", "maxQty": "9000", "stepSize": "0.00001"},
    {"filterType": "NOTIONAL", "minNotional": "5.00", "maxNotional": "9000000.00"},
]
STAGES = ("validation", "candle load", "signals", "engine", "performance", "store")


def names(count: int) -> list[str]:
    return ["BTCUSDT"] + [f"X{n:02d}USDT" for n in range(1, count)]


def write_year(symbol: Symbol, offset: int, columns: list[list[str]]) -> None:
    size = len(columns[0])
    pick = [(i + offset) % size for i in range(YEAR)]
    first_ms = int(START.timestamp() * 1000)
    times = [first_ms + i * MINUTE_MS for i in range(YEAR)]
    o, h, low, c, v = ([column[i] for i in pick] for column in columns)
    for start in range(0, YEAR, 100_000):
        part = slice(start, start + 100_000)
        count = len(times[part])
        rows = CandleRows(
            symbol.pk, Timeframe.M1, "rest", times[part], o[part], h[part], low[part], c[part],
            v[part], ["0"] * count, [0] * count,
        )  # fmt: skip
        candles_upsert_rows(rows=rows)


def prepare(symbol_count: int) -> None:
    with CSV.open() as handle:
        rows = list(csv.DictReader(handle))
    columns = [[row[key] for row in rows] for key in ("open", "high", "low", "close", "volume")]
    for index, name in enumerate(names(symbol_count)):
        symbol = Symbol.objects.create(
            exchange="sim", symbol=name, base=name.removesuffix("USDT"), quote="USDT",
            tick_size="0.01", step_size="0.00001", min_qty="0.00001", max_qty="9000",
            min_notional="5.00", filters=FILTERS, updated_at=START,
        )  # fmt: skip
        write_year(symbol, index * SHIFT, columns)
    config = rule_config_create(
        name="ema-rsi", description="", symbols=["BTCUSDT"], spec=SPEC, author="system:bench"
    )
    rule_version_activate(version=config.versions.get(), actor="system:bench")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE marketdata_candle")
        # And the checkpoint the server would have run long before a year of candles is
        # backtested: otherwise it writes the fresh gigabyte out during the first timed runs.
        cursor.execute("CHECKPOINT")


def request(symbols: list[str]) -> backtests.BacktestRequest:
    return backtests.BacktestRequest(
        rule="ema-rsi",
        since=START,
        until=START + timedelta(minutes=YEAR),
        symbols=symbols,
        exchange="sim",
    )


@contextmanager
def stage_timers() -> Iterator[dict[str, float]]:
    """Wrap the stages of `backtest_run` (module attributes) to add up their own time: a stage
    called inside another (the candle load inside validation) is not counted twice."""
    spent = dict.fromkeys(STAGES, 0.0)
    inside: list[float] = []  # per open stage: time spent in stages called from it
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attribute: str, stage: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            inside.append(0.0)
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                spent[stage] += elapsed - inside.pop()
                if inside:
                    inside[-1] += elapsed

        patched.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    wrap(backtests, "_plan", "validation")
    wrap(backtests, "_replay", "candle load")  # besides what it calls: the candles, as MarketSymbols
    wrap(backtests, "signal_events", "signals")
    wrap(engine, "run", "engine")
    wrap(backtests, "summary", "performance")
    if hasattr(backtests, "_load_minutes"):
        wrap(backtests, "_load_minutes", "candle load")
    try:
        yield spent
    finally:
        for owner, attribute, original in reversed(patched):
            setattr(owner, attribute, original)


def timed_run(symbols: list[str]) -> dict[str, float]:
    with stage_timers() as spent:
        started = time.perf_counter()
        run, result = backtests.backtest_run(request=request(symbols), actor="system:bench")
        total = time.perf_counter() - started
    assert result is not None
    assert run.candles == YEAR * len(symbols), run.candles
    spent["store"] = total - sum(spent[s] for s in STAGES if s != "store")  # the run row, twice
    return {
        "total s": total,
        **{f"{s} s": spent[s] for s in STAGES},
        "candles/s": YEAR * len(symbols) / total,
        "orders": float(run.results["orders"]),
        "trades": float(run.results["trade_count"]),
    }


def _worker_ready() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM marketdata_symbol")
        return int(cursor.fetchone()[0])


def _worker_run(name: str) -> float:
    started = time.perf_counter()
    run, _ = backtests.backtest_run(request=request([name]), actor="system:bench")
    assert run.candles == YEAR
    return time.perf_counter() - started


def show(label: str, figures: dict[str, float]) -> None:
    print(f"{label}: " + ", ".join(f"{k} {v:,.3f}" for k, v in figures.items()), flush=True)


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# The same year and rule in freqtrade (`--freqtrade PATH`: a freqtrade installed from PyPI in a
# throwaway venv). Its candles are written as its feather file; it loads the exchange's markets
# at start, which this process's simulator answers (no network), then backtests offline.
FREQTRADE_STRATEGY = """
import talib.abstract as ta
from freqtrade.strategy import IStrategy


class EmaRsi(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "1m"
    minimal_roi = {"0": 100}
    stoploss = -0.99
    startup_candle_count = 500

    def populate_indicators(self, frame, metadata):
        frame["fast"] = ta.EMA(frame, timeperiod=9)
        frame["slow"] = ta.EMA(frame, timeperiod=21)
        frame["rsi"] = ta.RSI(frame, timeperiod=14)
        return frame

    def populate_entry_trend(self, frame, metadata):
        up = (frame["fast"] > frame["slow"]) & (frame["fast"].shift(1) <= frame["slow"].shift(1))
        frame.loc[up & (frame["rsi"] < 70), "enter_long"] = 1
        return frame

    def populate_exit_trend(self, frame, metadata):
        down = (frame["fast"] < frame["slow"]) & (frame["fast"].shift(1) >= frame["slow"].shift(1))
        frame.loc[down | (frame["rsi"] > 80), "exit_long"] = 1
        return frame
"""
FREQTRADE_DATA = """
import sys
import numpy as np
import pandas as pd
rows = pd.read_csv(sys.argv[1])
pick = np.arange(int(sys.argv[3])) % len(rows)
frame = pd.DataFrame({"date": pd.date_range(sys.argv[4], periods=pick.size, freq="1min", tz="UTC")})
for column in ("open", "high", "low", "close", "volume"):
    frame[column] = rows[column].to_numpy()[pick]
frame.to_feather(sys.argv[2])
"""


def freqtrade_runs(freqtrade: Path, runs: int) -> list[float]:
    simulator = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "simexchange", "--port", "0", "--symbols", "BTCUSDT"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert simulator.stdout is not None
    try:
        base = ""
        while not base and simulator.poll() is None:
            match = re.search(r"REST (http://\S+/api/v3)", simulator.stdout.readline())
            base = match.group(1) if match else ""
        if not base:
            raise RuntimeError("the simulator did not start")
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            subprocess.run([str(freqtrade), "create-userdir", "--userdir", str(work / "user")], check=True,
                           capture_output=True)  # fmt: skip
            data = work / "user" / "data" / "binance"
            data.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [str(freqtrade.parent / "python"), "-c", FREQTRADE_DATA, str(CSV),
                 str(data / "BTC_USDT-1m.feather"), str(YEAR), START.strftime("%Y-%m-%d")],
                check=True,
            )  # fmt: skip
            (work / "user" / "strategies" / "EmaRsi.py").write_text(FREQTRADE_STRATEGY)
            api = {"public": base, "private": base, "v1": base, "v3": base}
            ccxt = {
                "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
                "urls": {"api": api},
            }
            config = {
                "max_open_trades": 1, "stake_currency": "USDT", "stake_amount": 250, "dry_run": True,
                "dry_run_wallet": 10_000, "trading_mode": "spot", "timeframe": "1m", "fee": 0.001,
                "dataformat_ohlcv": "feather", "pairlists": [{"method": "StaticPairList"}],
                "exchange": {"name": "binance", "pair_whitelist": ["BTC/USDT"], "ccxt_config": ccxt,
                             "ccxt_async_config": ccxt},
                "entry_pricing": {"price_side": "same", "use_order_book": False},
                "exit_pricing": {"price_side": "same", "use_order_book": False},
            }  # fmt: skip
            (work / "config.json").write_text(json.dumps(config))
            end = START + timedelta(minutes=YEAR)
            timings = []
            for n in range(runs):
                started = time.perf_counter()
                done = subprocess.run(
                    [str(freqtrade), "backtesting", "--config", str(work / "config.json"), "--userdir",
                     str(work / "user"), "--strategy", "EmaRsi", "--cache", "none",
                     "--timerange", f"{START:%Y%m%d}-{end:%Y%m%d}"],
                    capture_output=True, text=True,
                )  # fmt: skip
                elapsed = time.perf_counter() - started
                if done.returncode:
                    raise RuntimeError(f"freqtrade failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
                timings.append(elapsed)
                found = re.search(r"EmaRsi\s*│\s*(\d+)", done.stdout)
                trades = found.group(1) if found else "?"
                print(
                    f"freqtrade, run {n + 1}: {elapsed:.2f} s end to end (its start-up included), "
                    f"{YEAR / elapsed:,.0f} candles/s, trades {trades}",
                    flush=True,
                )
            return timings
    finally:
        simulator.terminate()
        simulator.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case; the median is quoted")
    parser.add_argument("--symbols", type=int, default=10, help="symbols for the scaling cases")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 4], help="worker pool sizes for the scaling case"
    )
    parser.add_argument("--only-one", action="store_true", help="the one-symbol year only")
    parser.add_argument("--freqtrade", type=Path, help="a freqtrade executable: run the same year in it too")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/backtest.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    old = setup_databases(verbosity=0, interactive=False)
    try:
        started = time.perf_counter()
        prepare(1 if args.only_one else args.symbols)
        print(f"wrote {YEAR:,} candles x {1 if args.only_one else args.symbols} symbols in "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        timed_run(["BTCUSDT"])  # warm: imports, first queries, the server's caches
        runs = []
        for n in range(args.runs):
            runs.append(timed_run(["BTCUSDT"]))
            show(f"1 symbol, run {n + 1}", runs[-1])
        one = median(runs)
        show(f"1 symbol, median of {args.runs}", one)
        rate = one["candles/s"]
        print(
            f"1 symbol: {rate:,.0f} candles/s = {rate / JESSE:.1f}x Jesse's published {JESSE:,}, "
            f"{rate / FREQTRADE:.1f}x freqtrade's {FREQTRADE:,} (both quoted, not rerun)",
            flush=True,
        )
        if args.freqtrade:
            peer = statistics.median(freqtrade_runs(args.freqtrade, args.runs))
            print(
                f"freqtrade, median of {args.runs}: {peer:.2f} s, {YEAR / peer:,.0f} candles/s; "
                f"ours is {peer / one['total s']:.1f}x faster end to end",
                flush=True,
            )
        if args.only_one:
            return
        every = names(args.symbols)
        sequential = []
        for n in range(args.runs):
            started = time.perf_counter()
            for name in every:
                _worker_run(name)
            elapsed = time.perf_counter() - started
            sequential.append({"s": elapsed, "candles/s": YEAR * len(every) / elapsed})
            show(f"{len(every)} symbols one after another, run {n + 1}", sequential[-1])
        base = median(sequential)
        show(f"{len(every)} symbols one after another, median of {args.runs}", base)

        portfolio = []
        for n in range(args.runs):
            figures = timed_run(every)
            portfolio.append(figures)
            show(f"one {len(every)}-symbol backtest, run {n + 1}", figures)
        show(f"one {len(every)}-symbol backtest, median of {args.runs}", median(portfolio))

        for workers in args.workers:
            connections.close_all()  # each child opens its own
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                pool.starmap(_worker_ready, [()] * workers)
                pool.map(_worker_run, every[:workers])  # warm each worker
                pooled = []
                for n in range(args.runs):
                    started = time.perf_counter()
                    pool.map(_worker_run, every, chunksize=1)
                    elapsed = time.perf_counter() - started
                    pooled.append(
                        {
                            "s": elapsed,
                            "candles/s": YEAR * len(every) / elapsed,
                            "speed-up": base["s"] / elapsed,
                        }
                    )
                    show(f"{len(every)} symbols over {workers} workers, run {n + 1}", pooled[-1])
                show(f"{len(every)} symbols over {workers} workers, median of {args.runs}", median(pooled))
    finally:
        connections.close_all()
        teardown_databases(old, verbosity=0)


if __name__ == "__main__":
    main()
