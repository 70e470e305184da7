"""Input and output serializers of the trading API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from oasis_site.api.fields import ExactDecimalField, UtcTimeField
from oasis_site.api.pagination import PageParameters
from trading.core.types import KillSwitchState, OrderStatus
from trading.models import BacktestRun, Mode


def _ordered(attrs: dict[str, Any], first: str = "start", last: str = "end") -> dict[str, Any]:
    start, end = attrs.get(first), attrs.get(last)
    if start is not None and end is not None and start > end:
        raise serializers.ValidationError({first: [f"must not be after {last}"]})
    return attrs


# --- Orders and positions ------------------------------------------------------------------------


class OrderListInput(PageParameters):
    mode = serializers.ChoiceField(choices=Mode.choices, required=False)
    status = serializers.ChoiceField(choices=[s.value for s in OrderStatus], required=False)
    exchange = serializers.CharField(required=False, max_length=32)
    symbol = serializers.CharField(required=False, max_length=32)
    start = UtcTimeField(required=False, help_text="Created from: ISO 8601 or epoch ms.")
    end = UtcTimeField(required=False, help_text="Created until, included.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _ordered(attrs)


class FillOutput(serializers.Serializer):  # type: ignore[type-arg]
    trade_id = serializers.CharField()
    price = ExactDecimalField()
    quantity = ExactDecimalField()
    fee = ExactDecimalField()
    fee_asset = serializers.CharField()
    is_maker = serializers.BooleanField()
    executed_at = serializers.DateTimeField()


class OrderOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    client_order_id = serializers.CharField()
    exchange_order_id = serializers.CharField()
    mode = serializers.CharField()
    exchange = serializers.CharField()
    symbol = serializers.CharField(source="symbol.symbol")
    side = serializers.CharField()
    type = serializers.CharField()
    status = serializers.CharField()
    quantity = ExactDecimalField()
    requested_quantity = ExactDecimalField()
    price = ExactDecimalField(allow_null=True)
    reference_price = ExactDecimalField()
    filled_quantity = ExactDecimalField()
    average_price = ExactDecimalField(allow_null=True)
    reject_reason = serializers.CharField()
    reject_detail = serializers.CharField()
    signal = serializers.IntegerField(source="signal_id", allow_null=True)
    rule = serializers.CharField(source="rule_version.config.name", allow_null=True)
    rule_version = serializers.IntegerField(source="rule_version.number", allow_null=True)
    created_at = serializers.DateTimeField()
    submitted_at = serializers.DateTimeField(allow_null=True)
    acknowledged_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


class OrderDetailOutput(OrderOutput):
    fills = FillOutput(many=True)


class PositionListInput(PageParameters):
    mode = serializers.ChoiceField(choices=Mode.choices, required=False)
    open = serializers.BooleanField(
        required=False, default=False, help_text="Only positions holding a quantity."
    )


class PositionOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    mode = serializers.CharField()
    exchange = serializers.CharField(source="symbol.exchange")
    symbol = serializers.CharField(source="symbol.symbol")
    quantity = ExactDecimalField()
    cost = ExactDecimalField()
    average_price = ExactDecimalField()
    realized_pnl = ExactDecimalField()
    fees = ExactDecimalField()
    mark_price = ExactDecimalField(allow_null=True)
    unrealized_pnl = ExactDecimalField()
    last_trade_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField()


# --- Kill switch -------------------------------------------------------------------------------


class KillSwitchOutput(serializers.Serializer):  # type: ignore[type-arg]
    state = serializers.ChoiceField(choices=[s.value for s in KillSwitchState])
    reason = serializers.CharField()
    tripwire = serializers.CharField(help_text="Set when it tripped by itself.")
    since = serializers.DateTimeField(allow_null=True)
    changed_by = serializers.CharField()


class KillSwitchEngageInput(serializers.Serializer):  # type: ignore[type-arg]
    state = serializers.ChoiceField(
        choices=[KillSwitchState.HALTED.value, KillSwitchState.REDUCING.value],
        help_text="halted: nothing new; reducing: only orders that reduce a position.",
    )
    reason = serializers.CharField(max_length=1000, help_text="Goes into the audit log.")


class KillSwitchReleaseInput(serializers.Serializer):  # type: ignore[type-arg]
    reason = serializers.CharField(max_length=1000, help_text="Goes into the audit log.")


# --- Backtests --------------------------------------------------------------------------------


class BacktestListInput(PageParameters):
    status = serializers.ChoiceField(choices=BacktestRun.Status.choices, required=False)
    rule = serializers.IntegerField(required=False, min_value=1, help_text="A rule's id.")


class BacktestOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    rule = serializers.CharField(source="rule_version.config.name")
    rule_version = serializers.IntegerField(source="rule_version.number")
    rule_checksum = serializers.CharField()
    parameters = serializers.JSONField()
    status = serializers.CharField()
    error = serializers.CharField()
    candles = serializers.IntegerField()
    imputed_candles = serializers.IntegerField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    report = serializers.SerializerMethodField(help_text="The HTML report (staff only).")

    def get_report(self, run: BacktestRun) -> str:
        return f"/trading/backtests/{run.pk}/report/"


class BacktestDetailOutput(BacktestOutput):
    results = serializers.JSONField(help_text="Performance figures, fills and the equity curve.")


class BacktestCreateInput(serializers.Serializer):  # type: ignore[type-arg]
    rule = serializers.CharField(max_length=100, help_text="The rule's name.")
    version = serializers.IntegerField(required=False, min_value=1, help_text="Default: the active version.")
    start = UtcTimeField(help_text="ISO 8601 (UTC offset) or epoch ms.")
    end = UtcTimeField()
    symbols = serializers.ListField(
        child=serializers.CharField(max_length=32),
        required=False,
        min_length=1,
        help_text="Default: the version's.",
    )
    timeframes = serializers.ListField(
        child=serializers.CharField(max_length=4),
        required=False,
        min_length=1,
        help_text="Default: the spec's.",
    )
    fee_bps = ExactDecimalField(required=False, help_text="Default: OASIS_FEE_BPS.")
    slippage_bps = ExactDecimalField(required=False, help_text="Default: OASIS_SLIPPAGE_BPS.")
    opening_balance = ExactDecimalField(required=False, help_text="Quote asset (default 10000).")
    exchange = serializers.CharField(required=False, max_length=32, help_text="Default: OASIS_EXCHANGE.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _ordered(attrs)

    def validate_opening_balance(self, value: Decimal) -> Decimal:
        if value <= 0:
            raise serializers.ValidationError("must be more than 0")
        return value


class DecisionListInput(PageParameters):
    mode = serializers.ChoiceField(choices=Mode.choices, required=False)
    outcome = serializers.ChoiceField(choices=["ordered", "skipped"], required=False)


class DecisionOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    signal = serializers.IntegerField(source="signal_id")
    symbol = serializers.CharField(source="signal.symbol.symbol")
    timeframe = serializers.CharField(source="signal.timeframe")
    action = serializers.CharField(source="signal.action")
    mode = serializers.CharField()
    outcome = serializers.CharField()
    reason = serializers.CharField()
    order = serializers.SerializerMethodField()
    decided_at = serializers.DateTimeField()

    def get_order(self, decision: Any) -> int | None:
        order = getattr(decision.signal, "order", None)
        return None if order is None else int(order.pk)
