"""Candle close → browser chart updated, on loopback, through the whole stack.

`manage.py devstack` (what `make run` runs: simulator, ingestion, trade loop, web server as
separate processes) with the simulator at `--speed` (60: a 1m candle closes every second), and
a headless chromium (Debian's, driven by Playwright) with one symbol page per symbol open. For
every candle that closes after the pages are up, the latency is

    drawn (the page's Plotly.react promise resolved, browser wall clock)
    - close (the simulator's close time, mapped to the wall clock from its /_sim/status,
             which reports its simulated and wall clocks together)

and it is split at the moment ingestion committed the candle (`committed_at_ms` in the event):
close → committed (the exchange's frame, ingestion's buffer and write) and committed → drawn
(relay or channel layer, WebSocket, the page). Both clocks are this machine's.

Modes: the `make run` default (SQLite, no Redis: broadcasts go over the loopback relay), or
`--database-url postgres://... --redis-url redis://...` (the production wiring: the Redis
channel layer carries them).

    .venv/bin/python bench/live_chart.py --runs 3
    .venv/bin/python bench/live_chart.py --runs 3 \\
        --database-url postgres://postgres@127.0.0.1:5432/oasis_bench_live --redis-url redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# Every page is a desk's screen: none is throttled as a background tab would be.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
SYMBOLS = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT,ADAUSDT,DOGEUSDT,DOTUSDT,LTCUSDT,LINKUSDT"
MINUTE_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Stack:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.web, self.sim = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.web}"
        self.sim_base = f"http://127.0.0.1:{self.sim}"
        drop = {
            "DATABASE_URL",
            "REDIS_URL",
            "OASIS_ENV",
            "DJANGO_SETTINGS_MODULE",
            "OASIS_BROADCAST_RELAY_URL",
        }
        env = {key: value for key, value in os.environ.items() if key not in drop}
        env.update(
            OASIS_ENV="dev",
            OASIS_PORT=str(self.web),
            OASIS_LOG_LEVEL="WARNING",
            DATABASE_URL=args.database_url or f"sqlite:///{folder}/bench.sqlite3",
            OASIS_SIM_REST_URL=self.sim_base,
            OASIS_SIM_WS_URL=f"ws://127.0.0.1:{self.sim}",
        )
        if args.redis_url:
            env["REDIS_URL"] = args.redis_url
        self.env = env
        if args.database_url:
            self._reset_postgres(args.database_url)
        subprocess.run([sys.executable, "manage.py", "migrate", "--no-input"], cwd=ROOT, env=env, check=True)
        self.log = (folder / "stack.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "devstack",
                "--symbols",
                args.symbols,
                "--timeframes",
                "1m",
                "--sim-speed",
                str(args.speed),
                "--ingest-metrics-port",
                str(free_port()),
                "--trade-metrics-port",
                str(free_port()),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def _reset_postgres(url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        admin = url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')

    def wait_for_candles(self, symbols: list[str]) -> None:
        deadline = time.monotonic() + 180
        for symbol in symbols:
            while True:
                if self.process.poll() is not None:
                    raise SystemExit(
                        f"the stack stopped (exit {self.process.returncode}); see {self.log.name}"
                    )
                try:
                    if get_json(f"{self.base}/symbols/{symbol}/chart.json?tf=1m")["candles"]:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"no candles for {symbol} within 180 s; see {self.log.name}")
                time.sleep(0.5)

    def sim_wall_of(self, sim_ms: int, mapping: tuple[float, int, float]) -> float:
        wall_ms, server_ms, speed = mapping
        return wall_ms + (sim_ms - server_ms) / speed

    def clock_mapping(self) -> tuple[float, int, float]:
        """(wall ms, simulated ms, speed) read together: wall = the middle of the request."""
        sent = time.time() * 1000
        status = get_json(f"{self.sim_base}/_sim/status")
        received = time.time() * 1000
        assert abs(status["wallTime"] - (sent + received) / 2) < 1000, "clocks disagree"
        return ((sent + received) / 2, int(status["serverTime"]), float(status["speed"]))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    symbols = [name for name in args.symbols.split(",") if name][: args.pages]
    with tempfile.TemporaryDirectory() as folder:
        stack = Stack(args, Path(folder))
        try:
            stack.wait_for_candles(symbols)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM,
                    args=[*CHROMIUM_ARGS],
                )
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                pages = []
                for symbol in symbols:
                    page = context.new_page()
                    page.goto(f"{stack.base}/symbols/{symbol}/?tf=1m")
                    page.wait_for_selector('body[data-live="connected"]', timeout=30_000)
                    pages.append(page)
                mapping = stack.clock_mapping()
                opened_sim = mapping[1]
                deadline = (
                    time.monotonic() + args.closes / len(pages) * MINUTE_MS / 1000 / args.speed * 3 + 60
                )
                samples: list[dict[str, float]] = []
                while True:
                    samples = []
                    for page in pages:
                        for update in page.evaluate("window.oasisChart.updates"):
                            if update["t"] + MINUTE_MS <= opened_sim:
                                continue  # closed before the pages were watching
                            closed = stack.sim_wall_of(update["t"] + MINUTE_MS, mapping)
                            samples.append(
                                {
                                    "total": update["drawn_ms"] - closed,
                                    "ingest": update["committed_at_ms"] - closed,
                                    "dashboard": update["drawn_ms"] - update["committed_at_ms"],
                                    "delivery": update["received_ms"] - update["committed_at_ms"],
                                    "draw": update["drawn_ms"] - update["received_ms"],
                                }
                            )
                    if len(samples) >= args.closes or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                browser.close()
        finally:
            stack.stop()
    if len(samples) < args.closes:
        raise SystemExit(f"only {len(samples)} closes reached the pages in time")
    samples = samples[: args.closes]
    return {
        part: {
            "p50": statistics.median(sample[part] for sample in samples),
            "p95": percentile([sample[part] for sample in samples], 95),
            "max": max(sample[part] for sample in samples),
        }
        for part in ("total", "ingest", "dashboard", "delivery", "draw")
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--closes", type=int, default=100, help="closes measured per run")
    parser.add_argument("--pages", type=int, default=1, help="symbol pages open (one symbol each)")
    parser.add_argument(
        "--speed", type=float, default=60.0, help="simulator speed (60: a 1m close per second)"
    )
    parser.add_argument("--symbols", default=SYMBOLS)
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL URL (dropped and created); default SQLite"
    )
    parser.add_argument("--redis-url", default="", help="Redis URL (channel layer, Celery); default none")
    args = parser.parse_args()
    mode = (
        "PostgreSQL + Redis channel layer" if args.redis_url else "make run default: SQLite, loopback relay"
    )
    print(f"close → browser chart: {args.closes} closes, {args.pages} pages, speed {args.speed:g}, {mode}")
    runs = []
    for run in range(args.runs):
        result = one_run(args)
        runs.append(result)
        print(
            f"run {run + 1}: total p50 {result['total']['p50']:.1f} ms p95 {result['total']['p95']:.1f} ms "
            f"(max {result['total']['max']:.1f}) · close→committed p95 {result['ingest']['p95']:.1f} ms · "
            f"committed→drawn p95 {result['dashboard']['p95']:.1f} ms "
            f"(committed→received {result['delivery']['p95']:.1f}, "
            f"received→drawn {result['draw']['p95']:.1f})"
        )
    print(
        "median of runs: "
        + " · ".join(
            f"{part} p50 {statistics.median(r[part]['p50'] for r in runs):.1f} ms "
            f"p95 {statistics.median(r[part]['p95'] for r in runs):.1f} ms"
            for part in ("total", "ingest", "dashboard")
        )
        + " (target: total p95 < 100 ms)"
    )


if __name__ == "__main__":
    main()
