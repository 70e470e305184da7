"""Command-line errors name what is wrong and list what is valid."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from marketdata.tests.factories import SymbolFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"exchange": "kraken"}, r"unknown exchange 'kraken'; valid: sim, binance, binanceus"),
        ({"timeframes": "2m"}, r"unknown timeframe '2m'; valid: 1m, 3m, 5m, 10m, 15m, 1h, 4h"),
        (
            {"timeframes": "10m"},
            r"sim does not stream 10m \(it is derived by resampling\); streamable: 1m, 3m, 5m, 15m, 1h, 4h",
        ),
        ({"timeframes": " , "}, r"--timeframes names no timeframe"),
        ({"symbols": "BTCUSDT,NOPEUSDT"}, r"unknown sim symbol\(s\): NOPEUSDT; known: BTCUSDT, ETHUSDT"),
        ({"symbols": " , "}, r"unknown sim symbol\(s\): \(none given\); known: BTCUSDT, ETHUSDT"),
        ({"lookback": -1}, r"--lookback must be 0 or more"),
        ({"hole_window": -1}, r"--hole-window must be 0 or more \(hours\)"),
    ],
)
def test_ingest_refuses_bad_arguments(options, message):
    SymbolFactory.create(symbol="BTCUSDT")
    SymbolFactory.create(symbol="ETHUSDT")
    with pytest.raises(CommandError, match=message):
        call_command("ingest", metrics_port=0, **options)


def test_ingest_without_symbols_says_how_to_get_them():
    with pytest.raises(
        CommandError, match=r"no sim symbols are known: run `manage.py sync_symbols --exchange sim`"
    ):
        call_command("ingest", metrics_port=0)


def test_sync_symbols_refuses_unknown_exchange():
    with pytest.raises(CommandError, match=r"unknown exchange 'ftx'"):
        call_command("sync_symbols", exchange="ftx")
