"""What a signal asks for (`trading.core.decisions`), shared by the loop and the backtester."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from trading.core import decisions
from trading.core.decisions import ENTER, EXIT, SignalFacts, Skip, entry_order, exit_order, triage
from trading.core.risk import RiskLimits
from trading.core.types import Side

MINUTE = 60_000
FLAT = SignalFacts(
    action=ENTER,
    close_ms=10 * MINUTE,
    timeframe_ms=MINUTE,
    now_ms=10 * MINUTE + 1_000,
    reference=Decimal(100),
    position_quantity=Decimal(0),
    pending=frozenset(),
)
LIMITS = RiskLimits(max_position_per_symbol=Decimal(500), max_position_total=Decimal(1000))


def test_an_entry_when_flat_and_an_exit_when_held_go_through() -> None:
    assert triage(FLAT) is Side.BUY
    assert triage(replace(FLAT, action=EXIT, position_quantity=Decimal(2))) is Side.SELL


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"now_ms": 11 * MINUTE + 1}, decisions.SIGNAL_STALE),  # a 1m signal lives one minute
        ({"reference": None}, decisions.NO_PRICE),
        ({"reference": Decimal(0)}, decisions.NO_PRICE),
        ({"pending": frozenset({Side.BUY})}, decisions.ORDER_PENDING),
        ({"position_quantity": Decimal(1)}, decisions.POSITION_OPEN),
        ({"action": EXIT}, decisions.NO_POSITION),
    ],
)
def test_skips_name_their_reason(change: dict[str, object], reason: str) -> None:
    assert triage(replace(FLAT, **change)) == Skip(reason)  # type: ignore[arg-type]


def test_staleness_is_the_timeframe_capped_by_max_age() -> None:
    hour = replace(FLAT, timeframe_ms=60 * MINUTE, now_ms=FLAT.close_ms + 121_000)
    assert triage(hour) == Skip(decisions.SIGNAL_STALE)
    assert triage(replace(hour, max_age_s=3600)) is Side.BUY


def test_a_pending_sell_does_not_block_an_entry_check_but_a_pending_buy_blocks_an_entry() -> None:
    assert triage(replace(FLAT, pending=frozenset({Side.SELL}))) is Side.BUY


def test_an_exit_sells_everything_held() -> None:
    wanted = exit_order(Decimal("1.234"))
    assert (wanted.side, wanted.quantity, wanted.requested) == (Side.SELL, Decimal("1.234"), Decimal("1.234"))


def test_an_entry_is_sized_by_quote_or_equity_and_cut_to_the_limits() -> None:
    by_quote = entry_order(
        reference=Decimal(100),
        sizing_quote=Decimal(250),
        sizing_equity_pct=None,
        equity=Decimal(10_000),
        limits=LIMITS,
        position_value=Decimal(0),
        total_exposure=Decimal(0),
    )
    assert (by_quote.quantity, by_quote.requested) == (Decimal("2.5"), Decimal("2.5"))
    by_equity = entry_order(
        reference=Decimal(100),
        sizing_quote=None,
        sizing_equity_pct=Decimal(2),
        equity=Decimal(10_000),
        limits=LIMITS,
        position_value=Decimal(0),
        total_exposure=Decimal(900),
    )
    assert by_equity.requested == Decimal(2)  # 200 quote asked
    assert by_equity.quantity == Decimal(1)  # 100 left under the total limit
    no_room = entry_order(
        reference=Decimal(100),
        sizing_quote=Decimal(250),
        sizing_equity_pct=None,
        equity=Decimal(10_000),
        limits=LIMITS,
        position_value=Decimal(0),
        total_exposure=Decimal(1000),
    )
    assert no_room.quantity == no_room.requested == Decimal("2.5")  # checked as asked: refused by name
