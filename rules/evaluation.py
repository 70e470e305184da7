"""Post-close evaluation: every active rule version that covers a (symbol, timeframe) is run on
each of its closed candles, ingested or derived, and what it says is persisted as a `Signal`.

The rule arithmetic is `rules.engine.evaluator` (pure; the same code backtests use). This module
keeps one `PairState` per (version, symbol, timeframe) in the process; a state that is missing
or does not end right before the new candle (a restart, a gap, a version activated just now) is
rebuilt from the stored candles before it — `REBUILD_CANDLES` of them at least, far more than any
indicator's warm-up, so values converge to what a state fed from the start would hold. Signals
are written idempotently (one per pair, candle and version), broadcast after commit, and the
close → persisted latency is observed. A rule that raises on a pair is disabled for that pair
(audited, logged as an error for alerting); the other rules go on.

Embedded default: called in the ingest process after each commit (`marketdata.events`). With
Redis: the listener queues `rules.evaluate_closes` tasks, routed by symbol to shard queues, and
the workers evaluate.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram
from waffle.models import Flag

from audit.services import audit_record
from marketdata.core.timeframes import Timeframe, utc_from_ms
from marketdata.events import ClosedCandle
from marketdata.models import Candle
from oasis_site.broadcast import broadcast_after_commit
from rules.engine.evaluator import PairState, RuleProgram
from rules.engine.spec import RuleSpec, parse_spec
from rules.models import RuleConfig, RuleConfigVersion, Signal
from rules.selectors import active_versions, rule_flag_allows

logger = structlog.get_logger(__name__)

SIGNAL_LATENCY = Histogram(
    "oasis_signal_latency_seconds",
    "From a candle's close to the signal it produced being committed.",
    ["timeframe"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVALUATIONS = Counter("oasis_rule_evaluations_total", "Rule evaluations on closed candles.", ["timeframe"])
RULE_ERRORS = Counter("oasis_rule_errors_total", "Rule evaluations that raised (pair disabled).")

REBUILD_CANDLES = 500
SIGNALS_GROUP = "signals"
_VERSIONS_TTL_S = 2.0


@dataclass(frozen=True)
class _Active:
    version: RuleConfigVersion
    config: RuleConfig
    spec: RuleSpec
    symbols: frozenset[str]
    timeframes: frozenset[Timeframe]
    version_id: int  # (model pk lookups are slow in a loop of thousands)
    config_id: int


class SignalEvaluator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[int, int, Timeframe], PairState] = {}
        self._programs: dict[tuple[int, Timeframe], RuleProgram] = {}
        self._disabled: set[tuple[int, int, Timeframe]] = set()
        self._active: list[_Active] = []
        self._loaded_at = -math.inf

    def on_closes(self, candles: Sequence[ClosedCandle]) -> list[Signal]:
        """Evaluate every covering rule on `candles` (in time order per pair); persist signals."""
        with self._lock:
            return self._on_closes(candles)

    def _on_closes(self, candles: Sequence[ClosedCandle]) -> list[Signal]:
        active = self._active_versions()
        if not active:
            return []
        work: list[tuple[_Active, ClosedCandle]] = []
        for candle in sorted(candles, key=lambda c: c.open_time_ms):
            for entry in active:
                if candle.timeframe in entry.timeframes and candle.symbol in entry.symbols:
                    work.append((entry, candle))
        if not work:
            return []
        self._rebuild_missing(work)
        drafts: list[tuple[Signal, ClosedCandle]] = []
        now = timezone.now()
        flags = {entry.config_id: Flag.get(entry.config.flag_name) for entry in active}  # once a batch
        allowed: dict[tuple[int, str], bool] = {}
        evaluated: dict[Timeframe, int] = defaultdict(int)
        for entry, candle in work:
            key = (entry.version_id, candle.symbol_id, candle.timeframe)
            if key in self._disabled:
                continue
            gate = (entry.config_id, candle.symbol)
            if gate not in allowed:
                allowed[gate] = rule_flag_allows(flags[gate[0]], config_id=gate[0], symbol=candle.symbol)
            if not allowed[gate]:
                continue
            evaluated[candle.timeframe] += 1
            try:
                state = self._states[key]
                if state.last_open_ms is not None and candle.open_time_ms <= state.last_open_ms:
                    continue  # already evaluated (a repeated close): its signal is stored
                action, values = state.step(
                    candle.open_time_ms, candle.open, candle.high, candle.low, candle.close, candle.volume
                )
            except Exception as exc:  # noqa: BLE001 - a failing rule is disabled for the pair, audited
                self._disable(key, entry, candle, exc)
                continue
            if action is not None:
                signal = Signal(
                    symbol_id=candle.symbol_id,
                    timeframe=candle.timeframe.value,
                    open_time=utc_from_ms(candle.open_time_ms),
                    rule_version=entry.version,
                    action=action,
                    indicators={
                        name: (None if math.isnan(value) else value) for name, value in values.items()
                    },
                    computed_at=now,
                )
                drafts.append((signal, candle))
        for timeframe, count in evaluated.items():
            EVALUATIONS.labels(timeframe.value).inc(count)
        return self._persist(drafts)

    # -- rule versions and states ------------------------------------------------------------

    def _active_versions(self) -> list[_Active]:
        if time.monotonic() - self._loaded_at < _VERSIONS_TTL_S:
            return self._active
        loaded = []
        for version in active_versions():
            spec = parse_spec(version.spec)
            loaded.append(
                _Active(
                    version,
                    version.config,
                    spec,
                    frozenset(version.symbols),
                    frozenset(spec.timeframes),
                    version.pk,
                    version.config_id,
                )
            )
        current = {entry.version_id for entry in loaded}
        self._states = {key: state for key, state in self._states.items() if key[0] in current}
        self._active, self._loaded_at = loaded, time.monotonic()
        return loaded

    def _program(self, entry: _Active, timeframe: Timeframe) -> RuleProgram:
        key = (entry.version_id, timeframe)
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = RuleProgram.from_spec(entry.spec, timeframe)
        return program

    def _rebuild_missing(self, work: list[tuple[_Active, ClosedCandle]]) -> None:
        """States that cannot take their next candle as it is, rebuilt from stored history: one
        query per timeframe for all the symbols that need one."""
        first_seen: dict[tuple[int, int, Timeframe], tuple[_Active, ClosedCandle]] = {}
        for entry, candle in work:
            first_seen.setdefault((entry.version_id, candle.symbol_id, candle.timeframe), (entry, candle))
        stale = {
            key: pair
            for key, pair in first_seen.items()
            if key not in self._disabled
            and (
                key not in self._states
                or (
                    self._states[key].last_open_ms != pair[1].open_time_ms - key[2].ms
                    and (self._states[key].last_open_ms or 0) < pair[1].open_time_ms
                )
            )
        }
        if not stale:
            return
        by_timeframe: dict[Timeframe, dict[int, int]] = defaultdict(
            dict
        )  # symbol → open time of the new candle
        for (_, symbol_id, timeframe), (_, candle) in stale.items():
            current = by_timeframe[timeframe].get(symbol_id)
            by_timeframe[timeframe][symbol_id] = min(candle.open_time_ms, current or candle.open_time_ms)
        history: dict[tuple[int, Timeframe], list[tuple[int, float, float, float, float, float]]] = {}
        for timeframe, symbols in by_timeframe.items():
            newest = max(symbols.values())
            oldest = min(symbols.values()) - REBUILD_CANDLES * timeframe.ms
            rows = (
                Candle.objects.filter(
                    timeframe=timeframe.value,
                    symbol_id__in=list(symbols),
                    open_time__gte=utc_from_ms(oldest),
                    open_time__lt=utc_from_ms(newest),
                )
                .order_by("symbol_id", "open_time")
                .values_list("symbol_id", "open_time", "open", "high", "low", "close", "volume")
            )
            for symbol_id, opened, o, h, low, c, v in rows:
                opened_ms = int(opened.timestamp() * 1000)
                before = symbols[symbol_id]
                if before - REBUILD_CANDLES * timeframe.ms <= opened_ms < before:
                    # Decimal → float here, at the edge of the numeric code.
                    history.setdefault((symbol_id, timeframe), []).append(
                        (opened_ms, float(o), float(h), float(low), float(c), float(v))
                    )
        for key, (entry, _) in stale.items():
            _, symbol_id, timeframe = key
            state = self._program(entry, timeframe).start()
            try:
                for row in history.get((symbol_id, timeframe), []):
                    state.step(*row)
            except Exception as exc:  # noqa: BLE001 - a failing rule is disabled for the pair, audited
                self._disable(key, entry, stale[key][1], exc)
                continue
            self._states[key] = state

    def _disable(
        self, key: tuple[int, int, Timeframe], entry: _Active, candle: ClosedCandle, exc: Exception
    ) -> None:
        self._disabled.add(key)
        self._states.pop(key, None)
        RULE_ERRORS.inc()
        detail = f"{type(exc).__name__}: {exc}"[:500]
        logger.error(
            "rule_disabled_for_pair",
            rule=entry.config.name,
            version=entry.version.number,
            symbol=candle.symbol,
            timeframe=candle.timeframe.value,
            error=detail,
        )
        audit_record(
            actor="system:rules",
            action="rules.pair.disabled",
            obj=entry.version,
            payload={
                "rule": entry.config.name,
                "version": entry.version.number,
                "symbol": candle.symbol,
                "timeframe": candle.timeframe.value,
                "error": detail,
            },
        )

    # -- persistence ------------------------------------------------------------------------

    def _persist(self, drafts: list[tuple[Signal, ClosedCandle]]) -> list[Signal]:
        if not drafts:
            return []
        with transaction.atomic():
            created = Signal.objects.bulk_create([signal for signal, _ in drafts], ignore_conflicts=True)
            # One event per batch: a boundary can give hundreds of signals at once.
            payloads = [signal_payload(signal) for signal, _ in drafts]
            broadcast_after_commit(SIGNALS_GROUP, {"type": "signals.new", "signals": payloads})
        committed = time.time()
        for _, candle in drafts:
            closed_at = (candle.open_time_ms + candle.timeframe.ms) / 1000
            SIGNAL_LATENCY.labels(candle.timeframe.value).observe(max(0.0, committed - closed_at))
        return created


def signal_payload(signal: Signal) -> dict[str, Any]:
    """A signal as JSON-able data, for WebSocket clients and the API."""
    return {
        "symbol_id": signal.symbol_id,
        "timeframe": signal.timeframe,
        "open_time": signal.open_time.isoformat(),
        "rule_version_id": signal.rule_version_id,
        "action": signal.action,
        "indicators": signal.indicators,
        "computed_at": signal.computed_at.isoformat(),
    }


def shard_queue(symbol_id: int) -> str:
    return f"rules.{zlib.crc32(str(symbol_id).encode()) % settings.OASIS_MARKETDATA_SHARDS}"


_evaluator: SignalEvaluator | None = None
_evaluator_lock = threading.Lock()


def evaluator() -> SignalEvaluator:
    """This process's evaluator (its states are this process's cache)."""
    global _evaluator
    with _evaluator_lock:
        if _evaluator is None:
            _evaluator = SignalEvaluator()
        return _evaluator


def on_candles_closed(candles: Sequence[ClosedCandle]) -> None:
    """`marketdata.events` listener: evaluate here (embedded default), or queue by symbol shard."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        evaluator().on_closes(candles)
        return
    from rules.tasks import evaluate_closes

    by_symbol: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for candle in candles:
        by_symbol[candle.symbol_id].append(candle_payload(candle))
    for symbol_id, payloads in by_symbol.items():
        evaluate_closes.apply_async(args=(payloads,), queue=shard_queue(symbol_id))


def candle_payload(candle: ClosedCandle) -> dict[str, Any]:
    payload = asdict(candle)
    payload["timeframe"] = candle.timeframe.value
    return payload


def candle_from_payload(payload: dict[str, Any]) -> ClosedCandle:
    return ClosedCandle(**{**payload, "timeframe": Timeframe.parse(payload["timeframe"])})
