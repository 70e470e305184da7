"""Orders, fills, positions, balances, equity and the kill switch.

Every row belongs to one mode: dry-run (the fill model, a paper account) or live (an exchange
account). The two books never mix: switching modes starts from that mode's own positions."""

from __future__ import annotations

from django.db import models

from marketdata.fields import AsNumber, ExactDecimalField, NullableExactDecimalField
from marketdata.models import Symbol
from rules.models import RuleConfigVersion, Signal
from trading.core.types import KillSwitchState, OrderStatus, OrderType, Side


class Mode(models.TextChoices):
    DRY_RUN = "dry_run", "dry-run"
    LIVE = "live", "live"


def _choices(
    enum: type[OrderStatus] | type[Side] | type[OrderType] | type[KillSwitchState],
) -> list[tuple[str, str]]:
    return [(member.value, member.value.replace("_", " ")) for member in enum]


class Order(models.Model):
    """One order, from the intent (status `new`, written before anything leaves the process)
    to its end. `client_order_id` is derived from the signal: one signal, one order, ever."""

    id = models.BigAutoField(primary_key=True)
    client_order_id = models.CharField(max_length=36, unique=True)
    exchange_order_id = models.CharField(max_length=64, blank=True)
    mode = models.CharField(max_length=8, choices=Mode.choices)
    exchange = models.CharField(max_length=32)
    symbol = models.ForeignKey(Symbol, on_delete=models.PROTECT, related_name="orders")
    side = models.CharField(max_length=4, choices=_choices(Side))
    type = models.CharField(max_length=6, choices=_choices(OrderType))
    status = models.CharField(max_length=16, choices=_choices(OrderStatus), default=OrderStatus.NEW)
    quantity = ExactDecimalField(help_text="As sent: rounded down to the step size.")
    requested_quantity = ExactDecimalField(help_text="What sizing asked for, before the filters.")
    price = NullableExactDecimalField(
        null=True, blank=True, help_text="Limit price; empty for market orders."
    )
    reference_price = ExactDecimalField(help_text="Last close when the order was decided.")
    filled_quantity = ExactDecimalField(default=0)
    average_price = NullableExactDecimalField(null=True, blank=True)
    reject_reason = models.CharField(
        max_length=48, blank=True, help_text="Stable code, e.g. below_min_notional."
    )
    reject_detail = models.TextField(blank=True)
    signal = models.OneToOneField(
        Signal, on_delete=models.PROTECT, null=True, blank=True, related_name="order"
    )
    rule_version = models.ForeignKey(
        RuleConfigVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="orders"
    )
    created_at = models.DateTimeField()
    submitted_at = models.DateTimeField(null=True, blank=True, help_text="When the request left.")
    acknowledged_at = models.DateTimeField(null=True, blank=True, help_text="When the exchange answered.")
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=[s.value for s in OrderStatus]),
                name="trading_order_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(mode__in=[m.value for m in Mode]), name="trading_order_mode_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(side__in=[s.value for s in Side]), name="trading_order_side_valid"
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(type=OrderType.MARKET, price__isnull=True)
                    | models.Q(type=OrderType.LIMIT, price__isnull=False)
                ),
                name="trading_order_limit_has_price",
            ),
            models.CheckConstraint(
                condition=~models.Q(status=OrderStatus.REJECTED) | ~models.Q(reject_reason=""),
                name="trading_order_rejection_has_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["mode", "status"], name="trading_order_mode_status"),
            models.Index(fields=["-created_at"], name="trading_order_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.quantity} {self.symbol_id} ({self.status})"


class Fill(models.Model):
    """One execution of an order, as the exchange (or the fill model) reported it."""

    id = models.BigAutoField(primary_key=True)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="fills")
    trade_id = models.CharField(max_length=64, help_text="The exchange's trade id.")
    price = ExactDecimalField()
    quantity = ExactDecimalField()
    fee = ExactDecimalField()
    fee_asset = models.CharField(max_length=16)
    is_maker = models.BooleanField(default=False)
    executed_at = models.DateTimeField()
    recorded_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "trade_id"], name="trading_fill_unique"),
            models.CheckConstraint(
                condition=models.lookups.GreaterThan(AsNumber("quantity"), 0),
                name="trading_fill_quantity_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} @ {self.price} ({self.trade_id})"


class Position(models.Model):
    """What one mode's book holds of a symbol. Realized PnL is gross of fees (kept in `fees`);
    unrealized is marked at the last close by the equity snapshot."""

    id = models.BigAutoField(primary_key=True)
    mode = models.CharField(max_length=8, choices=Mode.choices)
    symbol = models.ForeignKey(Symbol, on_delete=models.PROTECT, related_name="positions")
    quantity = ExactDecimalField(default=0)
    cost = ExactDecimalField(default=0, help_text="What the quantity held cost (buy notionals, fees apart).")
    average_price = ExactDecimalField(default=0, help_text="cost / quantity, to 18 decimals.")
    realized_pnl = ExactDecimalField(default=0)
    fees = ExactDecimalField(default=0)
    mark_price = NullableExactDecimalField(null=True, blank=True)
    unrealized_pnl = ExactDecimalField(default=0)
    last_trade_at = models.DateTimeField(null=True, blank=True)
    last_loss_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mode", "symbol"], name="trading_position_unique"),
            models.CheckConstraint(
                condition=models.lookups.GreaterThanOrEqual(AsNumber("quantity"), 0),
                name="trading_position_long_only",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mode} {self.symbol_id}: {self.quantity}"


class Balance(models.Model):
    """One asset of the account: the paper account in dry-run, the exchange's in live (where
    reconciliation makes it agree with the exchange)."""

    id = models.BigAutoField(primary_key=True)
    mode = models.CharField(max_length=8, choices=Mode.choices)
    asset = models.CharField(max_length=16)
    free = ExactDecimalField(default=0)
    locked = ExactDecimalField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["mode", "asset"], name="trading_balance_unique")]

    def __str__(self) -> str:
        return f"{self.mode} {self.asset}: {self.free} free, {self.locked} locked"


class EquitySnapshot(models.Model):
    """The account's value at a moment, in the quote asset: the series drawdown is measured on."""

    id = models.BigAutoField(primary_key=True)
    mode = models.CharField(max_length=8, choices=Mode.choices)
    taken_at = models.DateTimeField()
    quote_asset = models.CharField(max_length=16)
    cash = ExactDecimalField()
    positions_value = ExactDecimalField()
    equity = ExactDecimalField()
    realized_pnl = ExactDecimalField()
    unrealized_pnl = ExactDecimalField()
    fees = ExactDecimalField()
    peak_equity = ExactDecimalField()
    drawdown_pct = ExactDecimalField()

    class Meta:
        indexes = [models.Index(fields=["mode", "-taken_at"], name="trading_equity_recent")]

    def __str__(self) -> str:
        return f"{self.mode} equity {self.equity} {self.quote_asset} at {self.taken_at:%Y-%m-%d %H:%M:%S}"


class KillSwitch(models.Model):
    """The one kill switch (row id 1). Its history is the audit log."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    state = models.CharField(max_length=8, choices=_choices(KillSwitchState), default=KillSwitchState.ACTIVE)
    reason = models.TextField(blank=True)
    tripwire = models.CharField(max_length=16, blank=True, help_text="Set when it tripped by itself.")
    since = models.DateTimeField()
    changed_by = models.CharField(max_length=150, help_text="A user, or 'system' when it tripped.")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(id=1), name="trading_killswitch_single_row"),
            models.CheckConstraint(
                condition=models.Q(state__in=[s.value for s in KillSwitchState]),
                name="trading_killswitch_state_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"kill switch {self.state.upper()}"


class SignalDecision(models.Model):
    """What the execution loop did with a signal: placed an order (its row says the rest) or
    skipped it (an exit with nothing held, an entry while already in). One per signal, so a
    signal is handled once, across restarts."""

    class Outcome(models.TextChoices):
        ORDERED = "ordered"
        SKIPPED = "skipped"

    id = models.BigAutoField(primary_key=True)
    signal = models.OneToOneField(Signal, on_delete=models.PROTECT, related_name="decision")
    mode = models.CharField(max_length=8, choices=Mode.choices)
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    reason = models.CharField(max_length=48, blank=True)
    decided_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"signal {self.signal_id}: {self.outcome}"


class BacktestRun(models.Model):
    """One backtest: what was asked (rule version and its checksum, symbols, timeframes, range,
    fee and slippage), what data it used (candles, imputed candles), and what came out. A run
    that failed says why and holds no results."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.BigAutoField(primary_key=True)
    rule_version = models.ForeignKey(RuleConfigVersion, on_delete=models.PROTECT, related_name="backtests")
    rule_checksum = models.CharField(max_length=64)
    parameters = models.JSONField(help_text="Symbols, timeframes, range, fee, slippage, opening balance.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    error = models.TextField(blank=True)
    candles = models.PositiveIntegerField(default=0, help_text="1m candles replayed.")
    imputed_candles = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=dict, blank=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-created_at"], name="trading_backtest_recent")]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(status="failed") | ~models.Q(error=""),
                name="trading_backtest_failure_says_why",
            )
        ]

    def __str__(self) -> str:
        return f"backtest {self.pk} of {self.rule_version} ({self.status})"
