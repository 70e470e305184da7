"""Reads of rules: which active rule versions cover a pair, and whether a rule's flag lets it
run for a symbol."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from django.db.models import QuerySet
from waffle.models import Flag

from marketdata.core.timeframes import Timeframe, ms_from_datetime
from marketdata.models import Candle
from rules.engine.base import CandleSeries, Indicator
from rules.engine.spec import indicator_outputs
from rules.models import RuleConfig, RuleConfigVersion, Signal


def active_versions() -> list[RuleConfigVersion]:
    """The active version of every active rule, with its rule."""
    return list(
        RuleConfigVersion.objects.filter(
            pk__in=RuleConfig.objects.filter(status=RuleConfig.Status.ACTIVE).values("active_version")
        ).select_related("config")
    )


def rule_flag_allows(flag: Flag, *, config_id: int, symbol: str) -> bool:
    """Whether a rule's flag (`Flag.get(config.flag_name)`, read once per batch) lets it run for
    `symbol`: everyone on → on; everyone off → off; unset → on for the symbols whose stable hash
    falls within the flag's percent (the same symbols every time, across processes)."""
    if flag.pk is None or flag.everyone is False:
        return False
    if flag.everyone:
        return True
    share = float(flag.percent or 0)
    return zlib.crc32(f"{config_id}:{symbol}".encode()) % 1000 < share * 10


def rule_configs_list(*, status: str | None = None) -> QuerySet[RuleConfig]:
    """Rules, optionally of one status, with their active versions (unordered: callers page)."""
    rows = RuleConfig.objects.select_related("active_version")
    return rows.filter(status=status) if status else rows


def rule_config_get(*, config_id: int) -> RuleConfig | None:
    return RuleConfig.objects.select_related("active_version").filter(pk=config_id).first()


def rule_versions_list(*, config_id: int) -> QuerySet[RuleConfigVersion]:
    return RuleConfigVersion.objects.filter(config_id=config_id).select_related("author")


def rule_version_get(*, config_id: int, number: int) -> RuleConfigVersion | None:
    return RuleConfigVersion.objects.filter(config_id=config_id, number=number).first()


def signals_list(
    *,
    symbol_id: int | None = None,
    timeframe: str | None = None,
    config_id: int | None = None,
    action: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[Signal]:
    """Signals with their symbol and rule version, filtered by any of: symbol, timeframe, rule,
    action, and the open time of the candle that produced them (start … end, included)."""
    rows = Signal.objects.select_related("symbol", "rule_version__config")
    if symbol_id is not None:
        rows = rows.filter(symbol_id=symbol_id)
    if timeframe:
        rows = rows.filter(timeframe=timeframe)
    if config_id is not None:
        rows = rows.filter(rule_version__config_id=config_id)
    if action:
        rows = rows.filter(action=action)
    if start is not None:
        rows = rows.filter(open_time__gte=start)
    if end is not None:
        rows = rows.filter(open_time__lte=end)
    return rows


# Candles read before the first one asked for, so that indicators have converged (as the live
# evaluator's rebuild, rules.evaluation.REBUILD_CANDLES, not imported: it imports this module).
INDICATOR_WARMUP_CANDLES = 500


@dataclass(frozen=True)
class IndicatorRow:
    open_time: datetime
    values: dict[str, float | None]  # output name (as rule conditions name it) → value; None in warm-up


def indicator_values(
    *,
    symbol_id: int,
    timeframe: Timeframe,
    kind: str,
    indicator: Indicator[Any, Any],
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[IndicatorRow]:
    """`indicator` (of spec kind `kind`) over the stored closed candles of one stream: the value at
    each of the first `limit` candles with open time in [start, end], oldest first, computed by
    the indicator's batch form over those candles and up to INDICATOR_WARMUP_CANDLES (plus the
    indicator's own warm-up) before them. Output names are those rule conditions use (`rsi`,
    `macd.line`, …, with the kind as the indicator's name)."""
    stream = Candle.objects.filter(symbol_id=symbol_id, timeframe=timeframe.value, is_closed=True)
    columns = ("open_time", "high", "low", "close", "volume")
    asked = stream
    if start is not None:
        asked = asked.filter(open_time__gte=start)
    if end is not None:
        asked = asked.filter(open_time__lte=end)
    rows = list(asked.order_by("open_time").values_list(*columns)[:limit])
    if not rows:
        return []
    history = INDICATOR_WARMUP_CANDLES + indicator.warmup
    before = list(
        stream.filter(open_time__lt=rows[0][0]).order_by("-open_time").values_list(*columns)[:history]
    )
    before.reverse()
    every = before + rows
    # Prices become float64 here, at the edge of the indicators' numeric code.
    series = CandleSeries.from_columns(
        open_time_ms=[ms_from_datetime(row[0]) for row in every],
        high=[float(row[1]) for row in every],
        low=[float(row[2]) for row in every],
        close=[float(row[3]) for row in every],
        volume=[float(row[4]) for row in every],
    )
    batch = indicator.batch(series)
    outputs = indicator_outputs(kind, kind)
    arrays = [batch] if isinstance(batch, np.ndarray) else list(batch)
    skip = len(before)
    return [
        IndicatorRow(
            open_time=row[0],
            values={
                name: None if math.isnan(value) else value
                for name, value in zip(outputs, (float(array[skip + index]) for array in arrays), strict=True)
            },
        )
        for index, row in enumerate(rows)
    ]
