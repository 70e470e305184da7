"""`make run`'s supervisor: the simulated exchange, symbol sync, ingestion, the execution loop
(dry-run unless the live_trading flag is on) and the web server.

All run as child processes of this one; Ctrl-C (or SIGTERM) stops them all, ingestion first
draining its buffers. If any child dies, the others are stopped and the exit code says so.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketdata.exchanges import exchange_profile

DEFAULT_SYMBOLS = "BTCUSDT,ETHUSDT,BNBUSDT,SOLUSDT,XRPUSDT"
MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


class Command(BaseCommand):
    help = "Run the whole dev stack (simulator, ingestion, web) until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--symbols", default=DEFAULT_SYMBOLS, help="comma-separated symbols to ingest")
        parser.add_argument("--timeframes", default="1m,5m,15m,1h,4h", help="streamed timeframes to ingest")
        parser.add_argument("--sim-speed", type=float, default=1.0, help="simulator clock speed")
        parser.add_argument(
            "--ingest-metrics-port", type=int, default=9101, help="ingest's /metrics port (0: off)"
        )
        parser.add_argument(
            "--trade-metrics-port", type=int, default=9102, help="trade loop's /metrics port (0: off)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        profile = exchange_profile(settings.OASIS_EXCHANGE, overrides=settings.OASIS_EXCHANGE_URLS)
        children: list[tuple[str, subprocess.Popen[bytes]]] = []
        stopping = False

        def request_stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

        # Without Redis, ingestion and trading post their WebSocket broadcasts to the web
        # server's relay (OASIS_BROADCAST_RELAY_URL, set by default in dev: oasis_site/broadcast.py).
        def start(name: str, *arguments: str) -> None:
            # Our own manage.py commands with arguments we built: no untrusted input.
            children.append((name, subprocess.Popen([sys.executable, MANAGE, *arguments])))  # noqa: S603

        try:
            if profile.name == "sim":
                port = urlsplit(profile.rest_url).port or 80
                start(
                    "simulator",
                    "simexchange",
                    "--port",
                    str(port),
                    "--symbols",
                    options["symbols"],
                    "--speed",
                    str(options["sim_speed"]),
                )
                self._wait_for(f"{profile.rest_url}/api/v3/ping", children)
            sync = subprocess.run(  # noqa: S603 - our own command, arguments we built
                [
                    sys.executable,
                    MANAGE,
                    "sync_symbols",
                    "--exchange",
                    profile.name,
                    "--symbols",
                    options["symbols"],
                ],
                check=False,
            )
            if sync.returncode != 0:
                raise CommandError(f"sync_symbols failed for {profile.name} (exit {sync.returncode})")
            seed = subprocess.run(  # noqa: S603 - our own command, arguments we built
                [sys.executable, MANAGE, "seed_demo_rule", "--symbols", options["symbols"]], check=False
            )
            if seed.returncode != 0:
                raise CommandError(f"seed_demo_rule failed (exit {seed.returncode})")
            start(
                "ingest",
                "ingest",
                "--exchange",
                profile.name,
                "--symbols",
                options["symbols"],
                "--timeframes",
                options["timeframes"],
                "--lookback",
                "300",
                "--metrics-port",
                str(options["ingest_metrics_port"]),
            )
            start(
                "trade",
                "trade",
                "--exchange",
                profile.name,
                "--metrics-port",
                str(options["trade_metrics_port"]),
            )
            start("web", "serve")
            while not stopping:
                for name, child in children:
                    if child.poll() is not None:
                        raise CommandError(f"{name} exited with code {child.returncode}; stopping the stack")
                time.sleep(0.2)
        finally:
            self._stop_all(children)

    def _wait_for(self, url: str, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for name, child in children:
                if child.poll() is not None:
                    raise CommandError(f"{name} exited with code {child.returncode} while starting")
            try:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own simulator
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise CommandError(f"{url} did not answer within 60 s")

    def _stop_all(self, children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        # The web server and ingestion first, the simulator last: ingestion drains to the end.
        for _, child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, child in reversed(children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time: killed")
                child.kill()
                child.wait()
