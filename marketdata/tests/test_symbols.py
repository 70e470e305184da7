"""Symbols and their filter history."""

import dataclasses
from decimal import Decimal

import pytest

from audit.models import AuditEvent
from marketdata.models import Symbol, SymbolFilterSnapshot
from marketdata.services import SymbolSpec, symbol_sync

pytestmark = pytest.mark.django_db

SPEC = SymbolSpec(
    exchange="sim",
    symbol="BTCUSDT",
    base="BTC",
    quote="USDT",
    status="TRADING",
    tick_size=Decimal("0.01000000"),
    step_size=Decimal("0.00001000"),
    min_qty=Decimal("0.00001000"),
    max_qty=Decimal("9000.00000000"),
    min_notional=Decimal("5.00000000"),
    filters=[{"filterType": "PRICE_FILTER", "tickSize": "0.01000000"}],
)


def test_new_symbol_gets_a_snapshot_and_an_audit_event():
    symbol, changed = symbol_sync(spec=SPEC, actor="system:test")
    assert changed is True
    assert str(symbol.tick_size) == "0.01000000"
    [snapshot] = SymbolFilterSnapshot.objects.filter(symbol=symbol)
    assert snapshot.min_notional == Decimal("5")
    event = AuditEvent.objects.get(action="marketdata.symbol_added")
    assert event.payload["changes"]["tick_size"] == [None, "0.01000000"]


def test_unchanged_filters_record_nothing():
    symbol_sync(spec=SPEC, actor="system:test")
    _, changed = symbol_sync(spec=dataclasses.replace(SPEC, tick_size=Decimal("0.01")), actor="system:test")
    assert changed is False
    assert SymbolFilterSnapshot.objects.count() == 1
    assert AuditEvent.objects.count() == 1


def test_a_filter_change_is_kept_never_overwritten():
    symbol_sync(spec=SPEC, actor="system:test")
    newer = dataclasses.replace(SPEC, step_size=Decimal("0.00010000"), status="HALT")
    symbol, changed = symbol_sync(spec=newer, actor="system:test")
    assert changed is True
    assert symbol.step_size == Decimal("0.0001")
    assert Symbol.objects.get().status == "HALT"
    old, new = SymbolFilterSnapshot.objects.order_by("valid_from")
    assert (old.step_size, new.step_size) == (Decimal("0.00001"), Decimal("0.0001"))
    assert old.valid_from < new.valid_from
    event = AuditEvent.objects.get(action="marketdata.symbol_changed")
    assert event.payload["changes"] == {
        "status": ["TRADING", "HALT"],
        "step_size": ["0.00001000", "0.00010000"],
    }
