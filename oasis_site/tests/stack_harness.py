"""The whole `make run` stack for end-to-end tests: `manage.py devstack` (simulator, ingestion,
trade loop, web server as separate processes) on free ports and a fresh SQLite file, the
simulator at 30x (a 1m candle closes every 2 s)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_gracefully(process: subprocess.Popen[str], log: Path, *, what: str, timeout: float = 60) -> float:
    """SIGTERM `process` and wait for it to leave with exit status 0; returns the seconds that
    took. Still running after `timeout`: killed, and the test fails with its log's tail."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{what} did not stop on SIGTERM:\n{log.read_text()[-4000:]}") from None
    assert process.returncode == 0, log.read_text()[-4000:]
    return time.monotonic() - started


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def stack_env(folder: Path, *, web: int, sim: int) -> dict[str, str]:
    drop = {"DATABASE_URL", "REDIS_URL", "OASIS_ENV", "DJANGO_SETTINGS_MODULE", "OASIS_BROADCAST_RELAY_URL"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env.update(
        OASIS_ENV="dev",
        OASIS_PORT=str(web),
        OASIS_LOG_FORMAT="json",
        DATABASE_URL=f"sqlite:///{folder}/stack.sqlite3",
        OASIS_SIM_REST_URL=f"http://127.0.0.1:{sim}",
        OASIS_SIM_WS_URL=f"ws://127.0.0.1:{sim}",
    )
    return env


def children_of(pid: int) -> dict[int, str]:
    """Child process ids of `pid` with their command lines (from /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return found


@contextmanager
def running_stack(
    folder: Path, *, symbols: str = "BTCUSDT,ETHUSDT", speed: int = 30
) -> Iterator[dict[str, Any]]:
    web, sim = free_port(), free_port()
    env = stack_env(folder, web=web, sim=sim)
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=180,
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    log_path = folder / "stack.log"
    arguments = ["--symbols", symbols, "--timeframes", "1m", "--sim-speed", str(speed)]
    arguments += ["--ingest-metrics-port", str(free_port()), "--trade-metrics-port", str(free_port())]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "devstack", *arguments],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()[-4000:]
            try:
                if get_json(f"{base}/symbols/{symbols.split(',')[0]}/chart.json?tf=1m")["candles"]:
                    break
            except (urllib.error.URLError, ConnectionError, ValueError):
                pass
            assert time.monotonic() < deadline, "no candles within 120 s:\n" + log_path.read_text()[-4000:]
            time.sleep(0.5)
        yield {"base": base, "log": log_path, "env": env, "process": process, "folder": folder}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
