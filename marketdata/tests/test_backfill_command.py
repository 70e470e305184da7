"""`manage.py backfill`: argument errors that list the valid values, the summary line, the
progress bar on a terminal, dry runs."""

import io
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper

from audit.models import AuditEvent
from marketdata.management.commands.backfill import _ProgressBar
from marketdata.models import Candle
from marketdata.simulator import SimConfig, SimExchangeThread
from marketdata.tests.ingest_harness import sim_faults, sim_in_use
from marketdata.tests.shared_data import REAL_CANDLES_CSV

pytestmark = pytest.mark.django_db

MINUTE = 60_000
START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
REPLAY_CSV = REAL_CANDLES_CSV


@pytest.fixture(scope="module")
def running_sim():
    config = SimConfig(
        port=0,
        symbols=("BTCUSDT", "ETHUSDT"),
        start_ms=START,
        history_minutes=1440,
        replay_path=REPLAY_CSV,
        speed=1.0,
    )
    with SimExchangeThread(config) as running:
        yield running


@pytest.fixture
def sim(running_sim, settings):
    with sim_in_use(running_sim, settings):
        yield running_sim


def backfill(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("backfill", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_backfills_each_symbol_and_timeframe_with_a_summary_line(sim):
    out, err = backfill(
        "--exchange", "sim", "--symbols", "btcusdt,ETHUSDT", "--timeframes", "5m,1m",
        "--since", "2024-02-29T12:00", "--until", "2024-02-29T13:59:59Z",
    )  # fmt: skip
    lines = out.splitlines()
    assert len(lines) == 4
    # 5m first: a 1m backfill refreshes the 5m candles derived from it, which are then held.
    assert lines[0].startswith(
        "sim BTCUSDT 5m 2024-02-29T12:00Z … 2024-02-29T13:55Z: 24 missing in 1 range(s); "
        "wrote 24 fetched + 0 imputed; "
    )
    assert lines[1].startswith(
        "sim BTCUSDT 1m 2024-02-29T12:00Z … 2024-02-29T13:59Z: 120 missing in 1 range(s); "
        "wrote 120 fetched + 0 imputed; "
    )
    assert lines[1].endswith(" derived (3 requests)")
    assert lines[3].startswith("sim ETHUSDT 1m")
    assert err == ""  # not a terminal: no progress bar
    assert Candle.objects.filter(timeframe="1m", source="rest").count() == 240
    event = AuditEvent.objects.filter(action="marketdata.backfill").first()
    assert event is not None
    assert event.actor.startswith("user:")


def test_dry_run_says_what_it_would_write(sim):
    sim_faults(
        sim,
        {
            "missing_klines": {
                "symbol": "BTCUSDT",
                "interval": "1m",
                "start": START - 600_000,
                "end": START - 540_001,
            }
        },
    )
    out, _ = backfill("--exchange", "sim", "--symbols", "BTCUSDT", "--since", "2024-03-01T11:00", "--dry-run")
    assert "would write" in out
    assert "+ 1 imputed" in out
    assert Candle.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--exchange", "kraken"), "unknown exchange 'kraken'; valid: sim, binance, binanceus"),
        (("--symbols", "BTCUSDT,NOPEUSDT"), r"unknown sim symbol\(s\): NOPEUSDT; known: BTCUSDT, ETHUSDT"),
        (("--timeframes", "10m"), "sim does not serve 10m candles .*valid: 1m, 3m, 5m, 15m, 1h, 4h"),
        (("--timeframes", "2m"), "unknown timeframe '2m'; valid: 1m, 3m, 5m, 10m, 15m, 1h, 4h"),
        (("--since", "yesterday"), "--since 'yesterday' is not an ISO date or time"),
        (("--until", "2024-02-29T11:00"), "--since 2024-02-29T12:00:00\\+00:00 is after --until"),
        (("--since", "2024-02-01"), "before sim's history of BTCUSDT 1m"),
    ],
)
def test_bad_arguments_are_command_errors_that_list_the_valid_values(sim, args, message):
    base = {"--exchange": "sim", "--symbols": "BTCUSDT", "--since": "2024-02-29T12:00"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    with pytest.raises(CommandError, match=message):
        backfill(*[part for pair in base.items() for part in pair])
    assert Candle.objects.count() == 0


def test_a_failed_run_is_a_command_error_with_the_reason(sim):
    sim_faults(sim, {"rest_error": {"status": 418, "count": 1, "retry_after": 3600}})
    with pytest.raises(CommandError, match="asks to wait 3600 s"):
        backfill("--exchange", "sim", "--symbols", "BTCUSDT", "--since", "2024-02-29T12:00")


def test_progress_bar_draws_done_total_and_rate():
    stream = io.StringIO()
    bar = _ProgressBar(OutputWrapper(stream), "BTCUSDT 1m")
    bar(500, 1000)
    bar(1000, 1000)
    bar.end()
    text = stream.getvalue()
    assert "\rBTCUSDT 1m [###############...............] 500/1,000 candles" in text
    assert "1,000/1,000 candles" in text
    assert text.endswith("/s\n")
