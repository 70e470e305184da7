"""Input and output serializers of the rules API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from marketdata.core.timeframes import Timeframe
from oasis_site.api.fields import UtcTimeField
from oasis_site.api.pagination import PageParameters
from rules.engine.spec import INDICATOR_KINDS, MAX_PERIOD
from rules.models import RuleConfig, Signal

TIMEFRAMES = [tf.value for tf in Timeframe]


def _ordered(attrs: dict[str, Any]) -> dict[str, Any]:
    start, end = attrs.get("start"), attrs.get("end")
    if start is not None and end is not None and start > end:
        raise serializers.ValidationError({"start": ["must not be after end"]})
    return attrs


# --- Rule configs and versions ------------------------------------------------------------------


class RuleListInput(PageParameters):
    status = serializers.ChoiceField(choices=RuleConfig.Status.choices, required=False)


class RuleOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    status = serializers.CharField()
    symbols = serializers.ListField(child=serializers.CharField())
    timeframes = serializers.ListField(child=serializers.CharField())
    active_version = serializers.IntegerField(
        source="active_version.number", allow_null=True, help_text="Its number, or null."
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class RuleCreateInput(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    symbols = serializers.JSONField(help_text='Symbol names, e.g. ["BTCUSDT"].')
    spec = serializers.JSONField(help_text="The rule spec (docs/rules.md).")
    comment = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class VersionCreateInput(serializers.Serializer):  # type: ignore[type-arg]
    symbols = serializers.JSONField(help_text='Symbol names, e.g. ["BTCUSDT"].')
    spec = serializers.JSONField(help_text="The rule spec (docs/rules.md).")
    comment = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class VersionListInput(PageParameters):
    pass


class VersionOutput(serializers.Serializer):  # type: ignore[type-arg]
    number = serializers.IntegerField()
    spec = serializers.JSONField()
    symbols = serializers.ListField(child=serializers.CharField())
    checksum = serializers.CharField()
    parent = serializers.IntegerField(source="parent.number", allow_null=True)  # type: ignore[assignment]
    author = serializers.CharField(source="author.get_username", allow_null=True)
    comment = serializers.CharField()
    created_at = serializers.DateTimeField()


# --- Signals ------------------------------------------------------------------------------------


class SignalListInput(PageParameters):
    exchange = serializers.CharField(required=False, max_length=32)
    symbol = serializers.CharField(required=False, max_length=32)
    timeframe = serializers.ChoiceField(choices=TIMEFRAMES, required=False)
    rule = serializers.IntegerField(required=False, min_value=1, help_text="A rule's id.")
    action = serializers.ChoiceField(choices=Signal.Action.choices, required=False)
    start = UtcTimeField(required=False, help_text="Candle open time from: ISO 8601 or epoch ms.")
    end = UtcTimeField(required=False, help_text="Candle open time to, included.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _ordered(attrs)


class SignalOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.IntegerField()
    exchange = serializers.CharField(source="symbol.exchange")
    symbol = serializers.CharField(source="symbol.symbol")
    timeframe = serializers.CharField()
    open_time = serializers.DateTimeField()
    action = serializers.CharField()
    rule = serializers.IntegerField(source="rule_version.config_id")
    rule_name = serializers.CharField(source="rule_version.config.name")
    rule_version = serializers.IntegerField(source="rule_version.number")
    indicators = serializers.JSONField()
    computed_at = serializers.DateTimeField()


# --- Indicators ---------------------------------------------------------------------------------


def _period(help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(required=False, min_value=1, max_value=MAX_PERIOD, help_text=help_text)


class IndicatorInput(serializers.Serializer):  # type: ignore[type-arg]
    max_limit = 1000

    exchange = serializers.CharField(required=False, max_length=32)
    symbol = serializers.CharField(max_length=32)
    timeframe = serializers.ChoiceField(choices=TIMEFRAMES)
    kind = serializers.ChoiceField(choices=list(INDICATOR_KINDS), help_text="As in a rule spec.")
    period = _period("sma, ema, rsi, atr, adx (default 14; sma/ema 20), bbands (20).")
    fast = _period("macd (12).")
    slow = _period("macd (26).")
    signal = _period("macd (9).")
    stddev = serializers.FloatField(required=False, min_value=0.01, max_value=10, help_text="bbands (2).")
    k_period = _period("stoch (5).")
    k_smooth = _period("stoch (3).")
    d_period = _period("stoch (3).")
    start = UtcTimeField(required=False, help_text="First open time: ISO 8601 or epoch ms.")
    end = UtcTimeField(required=False, help_text="Last open time, included.")
    cursor = serializers.RegexField(
        r"^[A-Za-z0-9_-]*$", required=False, allow_blank=True, max_length=200, help_text="From `next`."
    )
    limit = serializers.IntegerField(
        required=False, min_value=1, help_text="Rows per page: 500 by default, at most 1000."
    )

    def validate_limit(self, value: int) -> int:
        if value > self.max_limit:
            raise serializers.ValidationError(f"must be at most {self.max_limit}")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _ordered(attrs)


class IndicatorRowOutput(serializers.Serializer):  # type: ignore[type-arg]
    open_time = serializers.DateTimeField()
    values = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="Each output (rsi; macd.line, macd.signal, macd.hist; …): float64, null during warm-up.",
    )
