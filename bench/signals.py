"""Post-close evaluation: close → signals persisted, with 2 active rules of 4 indicators each on
1,000 symbols, on PostgreSQL.

Two boundaries: a 1m-only one (1,000 closes, 2 rules = 2,000 evaluations) and the worst one,
where all seven timeframes close together (7,000 closes, 14,000 evaluations). Each boundary is
one call of the evaluator the ingest process uses (`rules.evaluation.SignalEvaluator.on_closes`)
with every close of that instant; latency = from handing the closes over to the commit of the
signals they produced (the rule conditions are ordinary ones — EMA cross, MACD/Bollinger — so a
few percent of evaluations give a signal, as in real use). States are warmed first (indicators
need history); then `--boundaries` boundaries are timed, and p50/p95/p99 are over them. Candles
are a seeded random walk per symbol (no database reads on the hot path: states are warm). The
long-lived heap is frozen out of the garbage collector before the warm-up, as `manage.py ingest`
does after start-up.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis_h3_bench .venv/bin/python bench/signals.py
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from waffle.models import Flag  # noqa: E402

from marketdata.core.timeframes import Timeframe  # noqa: E402
from marketdata.events import ClosedCandle  # noqa: E402
from marketdata.models import Symbol  # noqa: E402
from rules.evaluation import SignalEvaluator  # noqa: E402
from rules.models import Signal  # noqa: E402
from rules.services import rule_config_create, rule_version_activate  # noqa: E402

ALL = ["1m", "3m", "5m", "10m", "15m", "1h", "4h"]
BASE = {
    "timeframes": ALL,
    "sizing": {"quote_amount": "100"},
    "limits": {"max_position_per_symbol": "500", "max_position_total": "5000"},
}
RULES = {
    "trend": {
        **BASE,
        "indicators": {
            "fast": {"kind": "ema", "period": 9},
            "slow": {"kind": "ema", "period": 21},
            "rsi": {"kind": "rsi", "period": 14},
            "atr": {"kind": "atr", "period": 14},
        },
        "entry": "fast crosses_above slow and rsi < 70 and atr > 0",
        "exit": "fast crosses_below slow or rsi > 80",
    },
    "reversion": {
        **BASE,
        "indicators": {
            "m": {"kind": "macd", "fast": 12, "slow": 26, "signal": 9},
            "bb": {"kind": "bbands", "period": 20, "stddev": 2},
            "st": {"kind": "stoch", "k_period": 14, "k_smooth": 3, "d_period": 3},
            "adx": {"kind": "adx", "period": 14},
        },
        "entry": "close < bb.lower and st.k < 20 and adx > 15",
        "exit": "close > bb.upper or m.line crosses_below m.signal",
    },
}
T0 = 1_700_006_400_000  # a 4h boundary


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Walk:
    """One seeded random walk of prices per symbol."""

    def __init__(self, symbols: int, seed: int = 7) -> None:
        self._rng = np.random.default_rng(seed)
        self.price = np.full(symbols, 100.0)

    def step(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        opened = self.price.copy()
        self.price = self.price * np.exp(self._rng.normal(0, 0.002, self.price.size))
        spread = np.abs(self._rng.normal(0, 0.001, self.price.size)) * self.price
        high = np.maximum(opened, self.price) + spread
        low = np.minimum(opened, self.price) - spread
        volume = self._rng.uniform(1, 10, self.price.size)
        return opened, high, low, self.price.copy(), volume


def closes(
    symbols: list[tuple[int, str]], timeframes: list[Timeframe], index: int, walks: dict[Timeframe, Walk]
) -> list[ClosedCandle]:
    batch = []
    for timeframe in timeframes:
        o, h, low, c, v = walks[timeframe].step()
        opened = T0 + index * timeframe.ms
        for n, (symbol_id, name) in enumerate(symbols):
            batch.append(
                ClosedCandle(
                    symbol_id,
                    name,
                    timeframe,
                    opened,
                    float(o[n]),
                    float(h[n]),
                    float(low[n]),
                    float(c[n]),
                    float(v[n]),
                    False,
                    0.0,
                )
            )
    return batch


def run(symbol_count: int, timeframes: list[Timeframe], warm: int, boundaries: int) -> dict[str, float]:
    names = [f"S{n:04d}USDT" for n in range(symbol_count)]
    Symbol.objects.bulk_create(
        [
            Symbol(
                exchange="sim",
                symbol=name,
                base=name[:-4],
                quote="USDT",
                tick_size="0.01",
                step_size="0.001",
                min_qty="0.001",
                max_qty="1000",
                min_notional="5",
                filters=[],
                updated_at="2024-01-01T00:00Z",
            )
            for name in names
        ]
    )
    symbols = list(Symbol.objects.filter(exchange="sim").order_by("symbol").values_list("pk", "symbol"))
    for name, spec in RULES.items():
        config = rule_config_create(
            name=name, description="", symbols=names, spec=spec, author="system:bench"
        )
        rule_version_activate(version=config.versions.get(), actor="system:bench")
        flag = Flag.objects.get(name=config.flag_name)
        flag.everyone = True
        flag.save()
        flag.flush()
    # As `manage.py ingest` does after start-up (the evaluator runs in that process): the
    # long-lived heap (Django, the app) frozen out of the collector's full passes.
    gc.collect()
    gc.freeze()
    evaluator = SignalEvaluator()
    walks = {tf: Walk(symbol_count, seed=tf.ms) for tf in timeframes}
    for index in range(warm):
        evaluator.on_closes(closes(symbols, timeframes, index, walks))
    latencies, evaluated, signals_before = [], 0, Signal.objects.count()
    for index in range(warm, warm + boundaries):
        batch = closes(symbols, timeframes, index, walks)
        started = time.perf_counter()
        evaluator.on_closes(batch)
        latencies.append(time.perf_counter() - started)
        evaluated += len(batch) * len(RULES)
    signals = Signal.objects.count() - signals_before
    gc.unfreeze()
    return {
        "evaluations per boundary": evaluated / boundaries,
        "signals per boundary": signals / boundaries,
        "p50 ms": percentile(latencies, 0.5) * 1000,
        "p95 ms": percentile(latencies, 0.95) * 1000,
        "p99 ms": percentile(latencies, 0.99) * 1000,
        "µs per evaluation (p50)": percentile(latencies, 0.5) * 1e6 / (evaluated / boundaries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=60, help="boundaries fed before timing (warm-up)")
    parser.add_argument("--boundaries", type=int, default=30, help="boundaries timed")
    parser.add_argument("--runs", type=int, default=3, help="runs per case; the median is quoted")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/signals.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    cases = {"1m only": [Timeframe.M1], "all seven": [Timeframe(tf) for tf in ALL]}
    for case, timeframes in cases.items():
        runs = []
        for n in range(args.runs):
            old = setup_databases(verbosity=0, interactive=False)
            try:
                figures = run(args.symbols, timeframes, args.warm, args.boundaries)
            finally:
                teardown_databases(old, verbosity=0)
            runs.append(figures)
            print(
                f"{case}, run {n + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in figures.items()), flush=True
            )
        print(
            f"{case}, median of {args.runs}: "
            + ", ".join(f"{k} {statistics.median(r[k] for r in runs):,.1f}" for k in runs[0]),
            flush=True,
        )


if __name__ == "__main__":
    main()
