"""`manage.py simexchange`: argument errors name the bad value; the real process prints its
URLs, answers, and stops cleanly on SIGTERM."""

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "2001"], r"--symbols 2001: must be 1-2000"),
        (["--symbols", "BTCUSDT,FOOBAR"], r"FOOBAR.*known quote asset"),
        (["--speed", "0"], r"speed 0.0 must be > 0"),
        (["--history", "2w"], r"duration '2w'"),
        (["--start", "2024-03-01T00:00:30Z"], r"not a whole minute"),
        (
            ["--ws-silence", "BTCUSDT:10m:3"],
            r"unknown interval '10m'; valid: 1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h",
        ),
        (["--ws-silence", "NOPEUSDT:1m:3"], r"'NOPEUSDT' is not a simulated symbol"),
        (["--fault-rest-status", "404", "--fault-rest-count", "1"], r"status 404 is not one of 429, 418"),
        (["--fault-rest-count", "3"], r"need --fault-rest-status"),
        (["--ws-duplicate-rate", "1.5"], r"from 0 to 1, got 1.5"),
        (["--replay", "/nonexistent.csv"], r"--replay /nonexistent.csv: no such file"),
    ],
)
def test_bad_arguments_are_command_errors(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simexchange", *args)


def test_runs_prints_urls_answers_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "manage.py", "simexchange", "--port", "0", "--symbols", "3", "--speed", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while not any(line.startswith("REST ") for line in lines):
            assert time.monotonic() < deadline, lines
            line = process.stdout.readline()
            assert line, f"exited early: {lines}"
            lines.append(line)
        match = re.search(
            r"REST (http://127\.0\.0\.1:(\d+)/api/v3), WS (ws://127\.0\.0\.1:\d+/ws)", lines[-1]
        )
        assert match, lines
        rest, port, ws = match.groups()
        assert port != "0"
        assert ws == f"ws://127.0.0.1:{port}/ws"
        with urllib.request.urlopen(f"{rest}/ping", timeout=10) as response:
            assert json.loads(response.read()) == {}
        with urllib.request.urlopen(f"{rest}/exchangeInfo", timeout=10) as response:
            assert [s["symbol"] for s in json.loads(response.read())["symbols"]] == [
                "BTCUSDT",
                "ETHUSDT",
                "BNBUSDT",
            ]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "Simulator stopped." in output
