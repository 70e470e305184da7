from __future__ import annotations

from django.db import models
from django.db.models.functions import Greatest, Least
from django.db.models.lookups import GreaterThanOrEqual, LessThanOrEqual

from marketdata.core.timeframes import Timeframe
from marketdata.fields import AsNumber, ExactDecimalField

TIMEFRAME_CHOICES = [(tf.value, tf.value) for tf in Timeframe]


class Symbol(models.Model):
    """A tradable market on one exchange, with the filters that orders must satisfy.

    The filter fields hold the current values; every change is also kept as a
    `SymbolFilterSnapshot`, so an order can be checked against the filters of its day.
    """

    class Status(models.TextChoices):
        TRADING = "TRADING"
        HALT = "HALT"
        BREAK = "BREAK"
        DELISTED = "DELISTED"

    exchange = models.CharField(max_length=32)
    symbol = models.CharField(max_length=32, help_text="As the exchange names it, e.g. BTCUSDT.")
    base = models.CharField(max_length=16)
    quote = models.CharField(max_length=16)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRADING)
    tick_size = ExactDecimalField()
    step_size = ExactDecimalField()
    min_qty = ExactDecimalField()
    max_qty = ExactDecimalField()
    min_notional = ExactDecimalField()
    filters = models.JSONField(default=dict, help_text="The exchange's raw filter list, as received.")
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["exchange", "symbol"], name="marketdata_symbol_unique"),
        ]
        ordering = ["exchange", "symbol"]

    def __str__(self) -> str:
        return f"{self.exchange}:{self.symbol}"


class SymbolFilterSnapshot(models.Model):
    """The filters of a symbol from `valid_from` until the next snapshot. Never changed."""

    symbol = models.ForeignKey(Symbol, on_delete=models.PROTECT, related_name="filter_snapshots")
    valid_from = models.DateTimeField()
    status = models.CharField(max_length=16)
    tick_size = ExactDecimalField()
    step_size = ExactDecimalField()
    min_qty = ExactDecimalField()
    max_qty = ExactDecimalField()
    min_notional = ExactDecimalField()
    filters = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["symbol", "valid_from"], name="marketdata_filter_snapshot_unique"
            ),
        ]
        ordering = ["symbol", "-valid_from"]

    def __str__(self) -> str:
        return f"{self.symbol} filters from {self.valid_from:%Y-%m-%d %H:%M:%S}"


class Candle(models.Model):
    """One OHLCV candle. Only closed candles are persisted; a closed candle is final unless it
    was imputed, in which case real data for the same bucket replaces it."""

    class Source(models.TextChoices):
        WS = "ws"
        REST = "rest"
        RESAMPLED = "resampled"
        IMPUTED = "imputed"

    id = models.BigAutoField(primary_key=True)
    # No index of its own: the unique (symbol, timeframe, open_time) btree leads with it.
    symbol = models.ForeignKey(Symbol, on_delete=models.PROTECT, related_name="candles", db_index=False)
    timeframe = models.CharField(max_length=4, choices=TIMEFRAME_CHOICES)
    open_time = models.DateTimeField()
    open = ExactDecimalField()
    high = ExactDecimalField()
    low = ExactDecimalField()
    close = ExactDecimalField()
    volume = ExactDecimalField()
    quote_volume = ExactDecimalField()
    trade_count = models.PositiveIntegerField()
    is_closed = models.BooleanField(default=True)
    is_imputed = models.BooleanField(default=False)
    # How many of the exchange's candles behind this one were imputed: 1 for an imputed candle,
    # for a derived one the count over its inputs (in base candles, so 1m→10m and 5m→10m agree),
    # 0 for real data. A derived candle is imputed when any input was.
    imputed_inputs = models.PositiveIntegerField(default=0, db_default=0)
    source = models.CharField(max_length=10, choices=Source.choices)
    ingested_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["symbol", "timeframe", "open_time"], name="marketdata_candle_unique_bucket"
            ),
            models.CheckConstraint(
                condition=GreaterThanOrEqual(AsNumber("high"), Greatest(AsNumber("open"), AsNumber("close"))),
                name="marketdata_candle_high_is_highest",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(AsNumber("low"), Least(AsNumber("open"), AsNumber("close"))),
                name="marketdata_candle_low_is_lowest",
            ),
            models.CheckConstraint(
                condition=GreaterThanOrEqual(AsNumber("volume"), 0),
                name="marketdata_candle_volume_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(timeframe__in=[tf.value for tf in Timeframe]),
                name="marketdata_candle_known_timeframe",
            ),
            models.CheckConstraint(
                condition=models.Q(is_imputed=True, imputed_inputs__gt=0)
                | models.Q(is_imputed=False, imputed_inputs=0),
                name="marketdata_candle_imputed_is_counted",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.symbol_id} {self.timeframe} {self.open_time:%Y-%m-%d %H:%M}"


class Gap(models.Model):
    """Closed candles missing from one stream: open times `start` … `end` inclusive.

    Found by the gap scan over stored candles; closed by a backfill from the exchange's REST
    history (`backfilled`), by imputation where the exchange has nothing (`imputed`; a gap can
    be partly both, see the counts), or left `failed` with the reason and retried with backoff.
    """

    class Status(models.TextChoices):
        OPEN = "open"
        BACKFILLED = "backfilled"
        IMPUTED = "imputed"
        FAILED = "failed"

    id = models.BigAutoField(primary_key=True)
    symbol = models.ForeignKey(Symbol, on_delete=models.PROTECT, related_name="gaps")
    timeframe = models.CharField(max_length=4, choices=TIMEFRAME_CHOICES)
    start = models.DateTimeField(help_text="Open time of the first missing candle.")
    end = models.DateTimeField(help_text="Open time of the last missing candle.")
    detected_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    attempts = models.PositiveIntegerField(default=0)
    reason = models.TextField(blank=True, help_text="Why the last attempt failed.")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    candles_backfilled = models.PositiveIntegerField(default=0)
    candles_imputed = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["symbol", "timeframe", "start", "end"], name="marketdata_gap_unique_range"
            ),
            models.CheckConstraint(
                condition=models.Q(end__gte=models.F("start")), name="marketdata_gap_ordered"
            ),
            models.CheckConstraint(
                condition=models.Q(timeframe__in=[tf.value for tf in Timeframe]),
                name="marketdata_gap_known_timeframe",
            ),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="marketdata_gap_due")]

    def __str__(self) -> str:
        return f"{self.symbol_id} {self.timeframe} {self.start:%Y-%m-%d %H:%M}…{self.end:%H:%M} {self.status}"
