"""Audit log write and verify speed, on the database DATABASE_URL names.

Every trading state change writes one audit event inside its own transaction, behind one
chain-wide lock, so this bounds how many state changes a second Oasis can record. Runs on a
throw-away test database (created and dropped here), never on the real audit log.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis .venv/bin/python bench/audit_record.py
    .venv/bin/python bench/audit_record.py            # SQLite default
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection, connections  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from audit.selectors import audit_chain_verify  # noqa: E402
from audit.services import audit_record  # noqa: E402

PAYLOAD = {
    "order": "oasis-7f3a",
    "symbol": "BTCUSDT",
    "side": "buy",
    "qty": "0.00150000",
    "price": "27450.12",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def single_writer(count: int) -> tuple[float, float, float]:
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        audit_record(actor="system:bench", action="bench.single", payload={**PAYLOAD, "i": i})
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    return count / elapsed, statistics.median(latencies), percentile(latencies, 0.95)


def concurrent_writers(writers: int, each: int) -> float:
    def work(label: str) -> None:
        try:
            for i in range(each):
                audit_record(actor=f"system:{label}", action="bench.concurrent", payload={**PAYLOAD, "i": i})
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return writers * each / (time.perf_counter() - started)


def one_run(events: int, writers: int) -> dict[str, float]:
    if connection.vendor == "sqlite":
        # A file, as `make run` uses, not the in-memory test database: its shared-cache
        # locking fails concurrent writers instead of making them wait.
        scratch = Path(tempfile.mkdtemp(prefix="oasis-bench-")) / "bench.sqlite3"
        connection.settings_dict["TEST"]["NAME"] = str(scratch)
    old_config = setup_databases(verbosity=0, interactive=False)
    try:
        rate, p50, p95 = single_writer(events)
        concurrent = concurrent_writers(writers, events // writers)
        started = time.perf_counter()
        result = audit_chain_verify()
        elapsed = time.perf_counter() - started
        assert result.intact, result.problem
        return {
            "single writer events/s": rate,
            "single writer p50 ms": p50,
            "single writer p95 ms": p95,
            f"{writers} writers events/s": concurrent,
            "audit_verify events/s": result.checked / elapsed,
        }
    finally:
        teardown_databases(old_config, verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events for the single-writer run")
    parser.add_argument("--writers", type=int, default=4, help="threads for the concurrent run")
    parser.add_argument("--runs", type=int, default=5, help="runs, each on a fresh database")
    args = parser.parse_args()

    print(f"database: {connection.vendor}, {args.events} events per run, {args.runs} runs")
    runs = []
    for n in range(args.runs):
        figures = one_run(args.events, args.writers)
        runs.append(figures)
        print(f"run {n + 1}: " + ", ".join(f"{name} {value:,.2f}" for name, value in figures.items()))
    print(
        "median: " + ", ".join(f"{name} {statistics.median(r[name] for r in runs):,.2f}" for name in runs[0])
    )


if __name__ == "__main__":
    main()
