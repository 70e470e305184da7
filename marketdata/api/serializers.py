"""Input and output serializers of the market-data API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

from marketdata.core.timeframes import Timeframe
from marketdata.models import Gap, Symbol
from oasis_site.api.fields import ExactDecimalField, UtcTimeField, iso_utc
from oasis_site.api.pagination import PageParameters

TIMEFRAMES = [tf.value for tf in Timeframe]


def _ordered(attrs: dict[str, Any]) -> dict[str, Any]:
    start, end = attrs.get("start"), attrs.get("end")
    if start is not None and end is not None and start > end:
        raise serializers.ValidationError({"start": ["must not be after end"]})
    return attrs


# --- Symbols ----------------------------------------------------------------------------------


class SymbolListInput(PageParameters):
    exchange = serializers.CharField(required=False, max_length=32)
    status = serializers.ChoiceField(choices=Symbol.Status.choices, required=False)


class SymbolOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    exchange = serializers.CharField()
    symbol = serializers.CharField()
    base = serializers.CharField()
    quote = serializers.CharField()
    status = serializers.CharField()
    tick_size = ExactDecimalField()
    step_size = ExactDecimalField()
    min_qty = ExactDecimalField()
    max_qty = ExactDecimalField()
    min_notional = ExactDecimalField()
    updated_at = UtcTimeField()


# --- Candles ----------------------------------------------------------------------------------


class CandleListInput(PageParameters):
    default_limit = 500
    max_limit = 1000

    exchange = serializers.CharField(
        required=False, max_length=32, help_text="Default: the exchange Oasis ingests (OASIS_EXCHANGE)."
    )
    symbol = serializers.CharField(max_length=32, help_text="As the exchange names it, e.g. BTCUSDT.")
    timeframe = serializers.ChoiceField(choices=TIMEFRAMES)
    start = UtcTimeField(required=False, help_text="First open time: ISO 8601 (UTC offset) or epoch ms.")
    end = UtcTimeField(required=False, help_text="Last open time, included: ISO 8601 or epoch ms.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _ordered(attrs)


class CandleOutput(serializers.Serializer):  # type: ignore[type-arg]
    """One candle, from a row of `marketdata.selectors.candle_rows_as_text`. The fields below are
    its schema; `to_representation` writes them directly (the values the fields give, held equal
    by a test): a page is up to 1,000 rows, and DRF's field-by-field walk over Decimals made
    from the database's text, printed back to text, was most of the endpoint's time
    (docs/benchmarks.md)."""

    open_time = UtcTimeField()
    open = ExactDecimalField()
    high = ExactDecimalField()
    low = ExactDecimalField()
    close = ExactDecimalField()
    volume = ExactDecimalField()
    quote_volume = ExactDecimalField()
    trade_count = serializers.IntegerField()
    is_imputed = serializers.BooleanField()
    source = serializers.CharField()  # type: ignore[assignment]  # a field, not Field.source

    def to_representation(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "open_time": iso_utc(row["open_time"]),
            "open": row["open_text"],
            "high": row["high_text"],
            "low": row["low_text"],
            "close": row["close_text"],
            "volume": row["volume_text"],
            "quote_volume": row["quote_volume_text"],
            "trade_count": row["trade_count"],
            "is_imputed": row["is_imputed"],
            "source": row["source"],
        }


# --- Gaps and backfill requests ----------------------------------------------------------------


class GapListInput(PageParameters):
    exchange = serializers.CharField(required=False, max_length=32)
    symbol = serializers.CharField(required=False, max_length=32)
    timeframe = serializers.ChoiceField(choices=TIMEFRAMES, required=False)
    status = serializers.ChoiceField(choices=Gap.Status.choices, required=False)


class GapOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    exchange = serializers.CharField(source="symbol.exchange")
    symbol = serializers.CharField(source="symbol.symbol")
    timeframe = serializers.CharField()
    start = UtcTimeField()
    end = UtcTimeField()
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    reason = serializers.CharField()
    detected_at = UtcTimeField()
    next_attempt_at = UtcTimeField(allow_null=True)
    resolved_at = UtcTimeField(allow_null=True)
    candles_backfilled = serializers.IntegerField()
    candles_imputed = serializers.IntegerField()


class BackfillInput(serializers.Serializer):  # type: ignore[type-arg]
    exchange = serializers.CharField(
        required=False, max_length=32, help_text="Default: the exchange Oasis ingests (OASIS_EXCHANGE)."
    )
    symbol = serializers.CharField(max_length=32)
    timeframe = serializers.ChoiceField(choices=TIMEFRAMES)
    start = UtcTimeField(help_text="First open time: ISO 8601 (UTC offset) or epoch ms.")
    end = UtcTimeField(help_text="Last open time, included.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _ordered(attrs)
