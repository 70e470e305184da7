"""REST API: the candles endpoint returning 1,000 rows, served by the real server (`manage.py
serve`: daphne, one process) on loopback, against PostgreSQL seeded with candles.

Figures: latency of one client alone (p50/p95), then p50/p95 latency and requests/s with
`--clients` concurrent clients (threads, one keep-alive http.client connection each), every
request `GET /api/v1/candles/?symbol=BTCUSDT&timeframe=1m&limit=1000&start=…` (a random 1,000-row
window of the stored candles, so no two clients read the same rows in step). Each response is
checked (200, 1,000 rows on the first of each client). The server runs with the settings an
operator would use, throttling included (its rate raised so that the benchmark is not refused);
its access log goes to /dev/null. `--runs` runs, each a fresh server; the median run is printed
last.

The database (its name must start with oasis_h2_, default oasis_h2_bench_api) is created,
migrated and seeded if needed, and dropped at the end unless --keep.

    .venv/bin/python bench/api.py --runs 3
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/oasis_h2_bench_api REDIS_URL=redis://127.0.0.1:6379/7 \\
        .venv/bin/python bench/api.py --runs 3 --clients 50 --requests 20
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/oasis_h2_bench_api"
os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "oasis_site.settings")
os.environ.setdefault("OASIS_ENV", "test")
os.environ.setdefault("OASIS_LOG_LEVEL", "WARNING")

ROWS = 1000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
MINUTE_MS = 60_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_database(url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    if not name.startswith("oasis_h2_"):
        raise SystemExit(
            f"bench/api.py creates and drops its database: its name must start with oasis_h2_ ({name})"
        )
    admin = urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    admin = urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True)


def seed(candles: int) -> None:
    """BTCUSDT on the simulator's exchange with `candles` 1m candles (a seeded random walk),
    written by the candle writer; nothing is written when they are there already."""
    import django

    django.setup()
    from django.utils import timezone

    from marketdata.core.klines import Kline
    from marketdata.core.timeframes import Timeframe
    from marketdata.models import Candle, Symbol
    from marketdata.services import CandleWrite, candles_upsert_closed

    symbol, _ = Symbol.objects.get_or_create(
        exchange="sim",
        symbol="BTCUSDT",
        defaults={
            "base": "BTC",
            "quote": "USDT",
            "tick_size": Decimal("0.01"),
            "step_size": Decimal("0.00001"),
            "min_qty": Decimal("0.00001"),
            "max_qty": Decimal("9000"),
            "min_notional": Decimal("5"),
            "updated_at": timezone.now(),
        },
    )
    if Candle.objects.filter(symbol=symbol, timeframe="1m").count() >= candles:
        return
    rng = random.Random(7)
    price = 40_000.0
    writes = []
    for index in range(candles):
        close = max(1.0, price * (1 + rng.gauss(0, 0.001)))
        high, low = max(price, close) * 1.0004, min(price, close) * 0.9996
        writes.append(
            CandleWrite(
                symbol.pk,
                Kline(
                    symbol="BTCUSDT",
                    timeframe=Timeframe.M1,
                    open_time_ms=START_MS + index * MINUTE_MS,
                    open=Decimal(f"{price:.2f}"),
                    high=Decimal(f"{high:.2f}"),
                    low=Decimal(f"{low:.2f}"),
                    close=Decimal(f"{close:.2f}"),
                    volume=Decimal(f"{rng.uniform(1, 50):.8f}"),
                    quote_volume=Decimal(f"{rng.uniform(4e4, 2e6):.8f}"),
                    trades=rng.randint(10, 900),
                    closed=True,
                ),
                "rest",
            )
        )
        price = close
    for first in range(0, len(writes), 10_000):
        candles_upsert_closed(writes=writes[first : first + 10_000])


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        env={**env, "OASIS_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not answer /healthz within 60 s")


def client(
    port: int, requests: int, candles: int, seed_value: int, out: list[float], errors: list[str]
) -> None:
    rng = random.Random(seed_value)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for index in range(requests):
        first = rng.randrange(0, candles - ROWS)
        path = (
            f"/api/v1/candles/?symbol=BTCUSDT&timeframe=1m&limit={ROWS}&start={START_MS + first * MINUTE_MS}"
        )
        began = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        out.append(time.perf_counter() - began)
        if response.status != 200:
            errors.append(f"{response.status}: {body[:200]!r}")
        elif index == 0 and len(json.loads(body)["results"]) != ROWS:
            errors.append("a page without 1,000 rows")
    conn.close()


def load(port: int, clients: int, requests: int, candles: int) -> tuple[list[float], float, list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=client, args=(port, requests, candles, index, latencies, errors))
        for index in range(clients)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - began, errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="per client, per run")
    parser.add_argument("--candles", type=int, default=20_000, help="stored 1m candles")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    url = os.environ["DATABASE_URL"]
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("bench/api.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    ensure_database(url)
    env = {
        **os.environ,
        "OASIS_ENV": "test",
        "OASIS_LOG_LEVEL": "WARNING",
        "OASIS_API_READ_RATE": "1000000/min",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    try:
        manage(env, "migrate", "--no-input")
        seed(args.candles)
        cache = "Redis" if os.environ.get("REDIS_URL") else "the embedded cache"
        print(
            f"candles endpoint, {ROWS:,} rows a response; {args.candles:,} stored 1m candles; one daphne "
            f"process (manage.py serve); throttle counts in {cache}; cpus: {os.cpu_count()}, "
            f"load: {os.getloadavg()[0]:.1f}"
        )
        runs = []
        for run in range(1, args.runs + 1):
            port = free_port()
            server = start_server(env, port)
            try:
                load(port, 4, 5, args.candles)  # warm-up: imports, connections, caches
                alone, _, errors = load(port, 1, 40, args.candles)
                latencies, wall, more = load(port, args.clients, args.requests, args.candles)
                errors += more
            finally:
                server.terminate()
                server.wait(timeout=30)
            if errors:
                raise SystemExit(f"run {run}: {len(errors)} bad responses, e.g. {errors[0]}")
            figures = {
                "alone_p50": percentile(alone, 50) * 1000,
                "alone_p95": percentile(alone, 95) * 1000,
                "p50": percentile(latencies, 50) * 1000,
                "p95": percentile(latencies, 95) * 1000,
                "rps": len(latencies) / wall,
                "requests": len(latencies),
            }
            runs.append(figures)
            print(
                f"run {run}: one client p50 {figures['alone_p50']:.1f} ms, "
                f"p95 {figures['alone_p95']:.1f} ms; "
                f"{args.clients} clients p50 {figures['p50']:.1f} ms, p95 {figures['p95']:.1f} ms, "
                f"{figures['rps']:.1f} requests/s ({figures['requests']} requests in {wall:.1f} s)"
            )
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(
            f"median of {len(runs)}: one client p50 {median['alone_p50']:.1f} ms, "
            f"p95 {median['alone_p95']:.1f} ms; "
            f"{args.clients} clients p50 {median['p50']:.1f} ms, p95 {median['p95']:.1f} ms, "
            f"{median['rps']:.1f} requests/s"
        )
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            drop_database(url)


if __name__ == "__main__":
    main()
