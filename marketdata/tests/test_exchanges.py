import pytest

from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import PROFILES, exchange_profile


def test_overrides_replace_only_the_named_exchange_urls():
    overrides = {"binance": {"rest": "https://testnet.binance.vision"}, "sim": {"ws": "ws://127.0.0.1:1"}}
    binance = exchange_profile("binance", overrides=overrides)
    assert binance.rest_url == "https://testnet.binance.vision"
    assert binance.ws_url == PROFILES["binance"].ws_url
    assert exchange_profile("sim", overrides=overrides).ws_url == "ws://127.0.0.1:1"
    assert exchange_profile("binanceus").rest_url == "https://api.binance.us"


def test_unknown_exchange_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown exchange 'kraken'; valid: sim, binance, binanceus"):
        exchange_profile("kraken")


def test_binance_family_streams_no_10m():
    assert Timeframe.M10 not in PROFILES["binance"].streamed_timeframes
    assert Timeframe.M1 in PROFILES["sim"].streamed_timeframes
