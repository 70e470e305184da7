"""`manage.py smoke` against the whole `make run` stack: it passes while every part runs, and
fails naming the link when one part is stopped (ingestion frozen: no market data arrives)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from oasis_site.tests.stack_harness import ROOT, children_of, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_stack(tmp_path_factory.mktemp("smoke")) as running:
        yield running


def smoke(stack: dict[str, Any], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack["env"]}
    return subprocess.run(
        [sys.executable, "manage.py", "smoke", "--url", stack["base"], "--timeout", str(timeout)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


# The demo rule (EMA 9/21 cross) can stay quiet for an hour of the random walk, longer than the
# check waits at 30x: a rule that speaks on most candles makes the signal link deterministic.
EVERY_CANDLE = """
from rules.services import rule_config_create, rule_version_activate
from waffle.models import Flag
spec = {
    "timeframes": ["1m"],
    "indicators": {"fast": {"kind": "ema", "period": 2}},
    "entry": "close > open",
    "exit": "close < open",
    "sizing": {"quote_amount": "20"},
    "limits": {"max_position_per_symbol": "100", "max_position_total": "200"},
}
symbols = ["BTCUSDT", "ETHUSDT"]
name = "smoke: every candle"
config = rule_config_create(name=name, description="", symbols=symbols, spec=spec, author="system:test")
rule_version_activate(version=config.versions.get(), actor="system:test")
Flag.objects.filter(name=config.flag_name).update(everyone=True)
"""


def test_smoke_passes_against_the_running_stack(stack):
    env = {**os.environ, **stack["env"]}
    seeded = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", EVERY_CANDLE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert seeded.returncode == 0, seeded.stderr
    result = smoke(stack, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr + stack["log"].read_text()[-3000:]
    assert "web → market data → resampling → signals → orders → audit → websocket" in result.stdout


def test_smoke_names_the_broken_link_when_ingestion_stops(stack):
    children = children_of(stack["process"].pid)
    [ingest] = [pid for pid, command in children.items() if "manage.py ingest" in command]
    os.kill(ingest, signal.SIGSTOP)
    try:
        result = smoke(stack, timeout=8)
    finally:
        os.kill(ingest, signal.SIGCONT)
    assert result.returncode != 0
    assert "smoke check failed at market data: no new closed 1m candle of BTCUSDT stored" in result.stderr
    assert "(passed: web)" in result.stderr
