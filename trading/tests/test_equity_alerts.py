"""Equity snapshots: the drawdown from the peak, and the warning alert past
OASIS_ALERT_DRAWDOWN_PCT that resolves when the account recovers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from audit.models import Alert
from trading.models import Mode
from trading.services import balance_set, equity_snapshot_take

pytestmark = pytest.mark.django_db


def cash(amount: str) -> None:
    balance_set(
        mode=Mode.DRY_RUN, asset="USDT", free=Decimal(amount), locked=Decimal(0), actor="cli:test", reason="t"
    )


def test_a_deep_drawdown_warns_and_the_recovery_resolves_it(settings):
    settings.OASIS_ALERT_DRAWDOWN_PCT = 5
    cash("10000")
    assert equity_snapshot_take(mode=Mode.DRY_RUN, quote_asset="USDT").drawdown_pct == 0
    cash("9600")
    assert equity_snapshot_take(mode=Mode.DRY_RUN, quote_asset="USDT").drawdown_pct == Decimal("4.0000")
    assert not Alert.objects.exists()
    cash("9400")
    snapshot = equity_snapshot_take(mode=Mode.DRY_RUN, quote_asset="USDT")
    assert snapshot.drawdown_pct == Decimal("6.0000")
    alert = Alert.objects.get()
    assert (alert.key, alert.severity, alert.state) == ("trading.drawdown.dry_run", "warning", "firing")
    assert alert.payload == {"drawdown_pct": "6.0000", "limit_pct": "5"}
    cash("9900")
    equity_snapshot_take(mode=Mode.DRY_RUN, quote_asset="USDT")
    alert.refresh_from_db()
    assert alert.state == "resolved"
