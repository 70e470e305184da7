"""Rule versions reach the MongoDB mirror (audit.mirror) with their spec, through the outbox."""

from __future__ import annotations

import pytest

from audit.mirror import mirror_ship
from audit.tests.test_mirror import mirrored
from marketdata.tests.factories import SymbolFactory
from rules.services import rule_config_create

pytestmark = pytest.mark.django_db


def test_rule_versions_are_mirrored(mongo):
    SymbolFactory.create(symbol="BTCUSDT", base="BTC")
    spec = {
        "timeframes": ["1m"],
        "indicators": {"fast": {"kind": "ema", "period": 9}, "slow": {"kind": "ema", "period": 21}},
        "entry": "fast crosses_above slow",
        "exit": "fast crosses_below slow",
        "sizing": {"quote_amount": "100"},
        "limits": {"max_position_per_symbol": "500", "max_position_total": "1000"},
    }
    config = rule_config_create(name="ema", description="", symbols=["BTCUSDT"], spec=spec, author="cli:ops")
    mirror_ship()
    [version] = mirrored(mongo, "rule_versions")
    assert (version["_id"], version["rule"], version["number"]) == (f"{config.pk}:1", "ema", 1)
    assert version["spec"]["entry"] == "fast crosses_above slow"
