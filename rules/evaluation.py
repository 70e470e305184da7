"""Post-close evaluation: every active rule version that covers a (symbol, timeframe) is run on
each of its closed candles, ingested or derived, and what it says is persisted as a `Signal`.

The rule arithmetic is `rules.engine.evaluator` (pure; the same code backtests use). This module
keeps one `RuleStates` per (version, timeframe) in the process, a row per symbol, and steps every
symbol that closed at once (numpy across symbols); a pair whose row is missing or does not end
right before the new candle (a restart, a gap, a version activated just now) is rebuilt from the
stored candles before it — `REBUILD_CANDLES` of them at least, far more than any indicator's
warm-up, so values converge to what a state fed from the start would hold. Signals are written
idempotently (one per pair, candle and version), broadcast after commit, and the close →
persisted latency is observed. A rule that raises on a pair (a candle with a price that is not a
finite number, say) is disabled for that pair (audited, logged as an error for alerting); the
other pairs and rules go on.

Embedded default: called in the ingest process after each commit (`marketdata.events`). With
Redis: the listener queues `rules.evaluate_closes` tasks, routed by symbol to shard queues, and
the workers evaluate.
"""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np
import psycopg
import structlog
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram
from waffle.models import Flag

from audit.services import audit_record
from marketdata.core.timeframes import Timeframe, utc_from_ms
from marketdata.events import ClosedCandle
from marketdata.models import Candle
from oasis_site.broadcast import broadcast_after_commit
from rules.engine.evaluator import ENTER, EXIT, RuleProgram, RuleStates
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


@dataclass
class _Block:
    """One rule version on one timeframe: the states of its symbols, a row each."""

    states: RuleStates
    rows: dict[int, int] = field(default_factory=dict)  # symbol id → row


# One close to evaluate: (its place in the batch's time order, it).
_Work = tuple[int, ClosedCandle]


class SignalEvaluator:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: dict[tuple[int, Timeframe], _Block] = {}
        self._disabled: set[tuple[int, int, Timeframe]] = set()
        self._active: list[_Active] = []
        self._runnables: dict[tuple[int, int | None, bool | None, Any], frozenset[str]] = {}
        self._loaded_at = -math.inf

    def on_closes(self, candles: Sequence[ClosedCandle]) -> list[dict[str, Any]]:
        """Evaluate every covering rule on `candles` (in time order per pair); persist signals and
        return them (as broadcast: `signals.new` events)."""
        with self._lock:
            return self._on_closes(candles)

    def _on_closes(self, candles: Sequence[ClosedCandle]) -> list[dict[str, Any]]:
        active = self._active_versions()
        if not active:
            return []
        ordered = sorted(candles, key=lambda c: c.open_time_ms)
        by_timeframe: dict[Timeframe, list[_Work]] = defaultdict(list)
        symbols: dict[Timeframe, set[str]] = defaultdict(set)
        for place, candle in enumerate(ordered):
            by_timeframe[candle.timeframe].append((place, candle))
            symbols[candle.timeframe].add(candle.symbol)
        evaluated: dict[Timeframe, int] = defaultdict(int)
        groups: dict[tuple[int, Timeframe], list[_Work]] = {}
        for index, entry in enumerate(active):
            runnable = self._runnable(entry, Flag.get(entry.config.flag_name))  # the flag once a batch
            for timeframe in entry.timeframes & by_timeframe.keys():
                work = by_timeframe[timeframe]  # (shared by the rules: never changed in place)
                if not runnable.issuperset(symbols[timeframe]):
                    work = [(place, candle) for place, candle in work if candle.symbol in runnable]
                groups[(index, timeframe)] = work
        if self._disabled:
            for (index, timeframe), work in groups.items():
                version_id = active[index].version_id
                groups[(index, timeframe)] = [
                    w for w in work if (version_id, w[1].symbol_id, timeframe) not in self._disabled
                ]
        for (_, timeframe), work in groups.items():
            evaluated[timeframe] += len(work)
        rounds = {key: _rounds(work) for key, work in groups.items() if work}
        if not rounds:
            return []
        self._rebuild_missing(active, rounds)
        columns = _candle_columns(ordered)  # once a batch, shared by the rules
        drafts: list[_Draft] = []
        for (index, timeframe), steps in rounds.items():
            entry = active[index]
            block = self._blocks[(entry.version_id, timeframe)]
            for step in steps:
                drafts += self._step(index, entry, block, step, columns)
        for timeframe, count in evaluated.items():
            EVALUATIONS.labels(timeframe.value).inc(count)
        drafts.sort(key=lambda draft: (draft.place, draft.rule))  # the batch's time order, then rules'
        return self._persist(drafts, timezone.now())

    def _step(
        self, rule: int, entry: _Active, block: _Block, work: list[_Work], batch: list[Any]
    ) -> list[_Draft]:
        """Evaluate one close per symbol (distinct symbols) of one rule and timeframe at once;
        `batch` is the batch's candle columns (`_candle_columns`), in its time order."""
        states = block.states
        if self._disabled:  # (some may have been disabled since the batch was sorted)
            work = [
                w for w in work if (entry.version_id, w[1].symbol_id, w[1].timeframe) not in self._disabled
            ]
            if not work:
                return []
        rows = np.array(list(map(block.rows.__getitem__, [w[1].symbol_id for w in work])), dtype=np.intp)
        places = np.array([w[0] for w in work], dtype=np.intp)
        columns = [column[places] for column in batch]
        # A repeated close (already evaluated: its signal is stored) is skipped, a bad one disables
        # its pair; the others are stepped together.
        fresh = ~states.seen[rows] | (columns[0] > states.last_open_ms[rows])
        bad = fresh & ~_sound(columns)
        for at in np.flatnonzero(bad).tolist():
            error = ValueError("a price or volume that is not a finite number (or a negative volume)")
            self._disable(entry, work[at][1], error)
        keep = np.flatnonzero(fresh & ~bad)
        if not keep.size:
            return []
        if keep.size < len(work):
            rows, columns, work = rows[keep], [column[keep] for column in columns], [work[i] for i in keep]
        try:
            result = states.step(rows, *columns)
        except Exception as exc:  # noqa: BLE001 - a failing rule is disabled for the pairs, audited
            for _, candle in work:
                self._disable(entry, candle, exc)
            return []
        said = np.flatnonzero(result.exit | result.enter)
        if not said.size:
            return []
        exits = result.exit[said].tolist()
        names = list(result.values)
        seen = []  # per name, the values at the signals: floats, None for NaN (JSON has no NaN)
        for column in result.values.values():
            picked = column[said]
            boxed = picked.astype(object)
            boxed[np.isnan(picked)] = None
            seen.append(boxed.tolist())
        drafts = []
        timeframe = work[0][1].timeframe
        text, length = timeframe.value, timeframe.ms  # (an Enum's attributes are slow to read)
        for n, (at, values) in enumerate(zip(said.tolist(), zip(*seen, strict=True), strict=True)):
            place, candle = work[at]
            action = EXIT if exits[n] else ENTER
            indicators = dict(zip(names, values, strict=True))
            closed_at = (candle.open_time_ms + length) / 1000
            drafts.append(_Draft(place, rule, candle, text, closed_at, entry.version_id, action, indicators))
        return drafts

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
        self._blocks = {key: block for key, block in self._blocks.items() if key[0] in current}
        self._active, self._loaded_at = loaded, time.monotonic()
        return loaded

    def _runnable(self, entry: _Active, flag: Flag) -> frozenset[str]:
        """The version's symbols its rule's flag lets it run for (kept while the flag reads the same)."""
        key = (entry.version_id, flag.pk, flag.everyone, flag.percent)
        runnable = self._runnables.get(key)
        if runnable is None:
            runnable = frozenset(
                symbol
                for symbol in entry.symbols
                if rule_flag_allows(flag, config_id=entry.config_id, symbol=symbol)
            )
            self._runnables = (
                {**self._runnables, key: runnable} if len(self._runnables) < 256 else {key: runnable}
            )
        return runnable

    def _block(self, entry: _Active, timeframe: Timeframe) -> _Block:
        key = (entry.version_id, timeframe)
        block = self._blocks.get(key)
        if block is None:
            block = self._blocks[key] = _Block(RuleStates(RuleProgram.from_spec(entry.spec, timeframe)))
        return block

    def _rebuild_missing(
        self, active: list[_Active], rounds: dict[tuple[int, Timeframe], list[list[_Work]]]
    ) -> None:
        """Rows that cannot take their next candle as it is, rebuilt from stored history: one
        query per timeframe for all the symbols that need one, then every such row of a rule fed
        its history together."""
        stale: dict[tuple[int, Timeframe], dict[int, ClosedCandle]] = {}
        for (index, timeframe), steps in rounds.items():
            block = self._block(active[index], timeframe)
            states = block.states
            first = steps[0]  # the first close of each symbol
            known = block.rows
            placed = np.array([known.get(w[1].symbol_id, -1) for w in first], dtype=np.intp)
            ready = placed >= 0
            if states.size:
                at = np.where(ready, placed, 0)
                first_opens = np.array([w[1].open_time_ms for w in first], dtype=np.int64)
                last = states.last_open_ms[at]
                ready &= states.seen[at] & ((last == first_opens - timeframe.ms) | (last >= first_opens))
            for n in np.flatnonzero(~ready).tolist():
                candle = first[n][1]
                stale.setdefault((index, timeframe), {})[candle.symbol_id] = candle
        if not stale:
            return
        by_timeframe: dict[Timeframe, dict[int, int]] = defaultdict(
            dict
        )  # symbol → open time of the new candle
        for (_, timeframe), symbols in stale.items():
            for symbol_id, candle in symbols.items():
                current = by_timeframe[timeframe].get(symbol_id)
                by_timeframe[timeframe][symbol_id] = min(candle.open_time_ms, current or candle.open_time_ms)
        history: dict[tuple[int, Timeframe], list[tuple[float, float, float, float, float, float]]] = {}
        for timeframe, opens in by_timeframe.items():
            newest = max(opens.values())
            oldest = min(opens.values()) - REBUILD_CANDLES * timeframe.ms
            rows = (
                Candle.objects.filter(
                    timeframe=timeframe.value,
                    symbol_id__in=list(opens),
                    open_time__gte=utc_from_ms(oldest),
                    open_time__lt=utc_from_ms(newest),
                )
                .order_by("symbol_id", "open_time")
                .values_list("symbol_id", "open_time", "open", "high", "low", "close", "volume")
            )
            for symbol_id, opened, o, h, low, c, v in rows:
                opened_ms = int(opened.timestamp() * 1000)
                before = opens[symbol_id]
                if before - REBUILD_CANDLES * timeframe.ms <= opened_ms < before:
                    # Decimal → float here, at the edge of the numeric code.
                    history.setdefault((symbol_id, timeframe), []).append(
                        (opened_ms, float(o), float(h), float(low), float(c), float(v))
                    )
        for (index, timeframe), symbols in stale.items():
            entry = active[index]
            block = self._blocks[(entry.version_id, timeframe)]
            fresh = [symbol_id for symbol_id in symbols if symbol_id not in block.rows]
            for symbol_id, row in zip(fresh, block.states.add_rows(len(fresh)).tolist(), strict=True):
                block.rows[symbol_id] = row
            block.states.reset(np.array([block.rows[symbol_id] for symbol_id in symbols], dtype=np.intp))
            self._replay(
                entry, block, symbols, [history.get((symbol_id, timeframe), []) for symbol_id in symbols]
            )

    def _replay(
        self,
        entry: _Active,
        block: _Block,
        symbols: dict[int, ClosedCandle],
        histories: list[list[tuple[float, float, float, float, float, float]]],
    ) -> None:
        """Feed each symbol's history to its (fresh) row, the k-th candles of all of them at once."""
        length = max((len(rows) for rows in histories), default=0)
        if not length:
            return
        table = np.zeros((len(histories), length, 6))
        for n, rows in enumerate(histories):
            if rows:
                table[n, : len(rows)] = rows
        lengths = np.array([len(rows) for rows in histories])
        block_rows = np.array([block.rows[symbol_id] for symbol_id in symbols], dtype=np.intp)
        candles = list(symbols.values())
        failed = np.zeros(len(histories), dtype=bool)
        for k in range(length):
            at = np.flatnonzero((lengths > k) & ~failed)
            if not at.size:
                break
            step = table[at, k]
            try:
                block.states.step(
                    block_rows[at], step[:, 0].astype(np.int64), *(step[:, j] for j in range(1, 6))
                )
            except Exception as exc:  # noqa: BLE001 - a failing rule is disabled for the pairs, audited
                failed[at] = True
                for n in at.tolist():
                    self._disable(entry, candles[n], exc)

    def _disable(self, entry: _Active, candle: ClosedCandle, exc: Exception) -> None:
        self._disabled.add((entry.version_id, candle.symbol_id, candle.timeframe))
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

    def _persist(self, drafts: list[_Draft], computed_at: datetime) -> list[dict[str, Any]]:
        """Write the signals (a repeated one is left as stored), broadcast them after commit as
        one event, observe their latency; return them as broadcast."""
        if not drafts:
            return []
        with transaction.atomic():
            if connection.vendor == "postgresql":
                _insert_json(drafts, computed_at)
            else:
                Signal.objects.bulk_create(
                    [
                        Signal(
                            symbol_id=d.candle.symbol_id,
                            timeframe=d.timeframe,
                            open_time=utc_from_ms(d.candle.open_time_ms),
                            rule_version_id=d.version_id,
                            action=d.action,
                            indicators=d.indicators,
                            computed_at=computed_at,
                        )
                        for d in drafts
                    ],
                    ignore_conflicts=True,
                )
            # One event per batch: a boundary can give hundreds of signals at once.
            payloads = _payloads(drafts, computed_at)
            broadcast_after_commit(SIGNALS_GROUP, {"type": "signals.new", "signals": payloads})
        committed = time.time()
        by_timeframe: dict[str, list[float]] = defaultdict(list)
        for draft in drafts:
            by_timeframe[draft.timeframe].append(draft.closed_at)
        for timeframe, closes in by_timeframe.items():
            histogram = SIGNAL_LATENCY.labels(timeframe)
            for closed_at in closes:
                histogram.observe(max(0.0, committed - closed_at))
        return payloads


class _Draft(NamedTuple):
    """A signal to write: the candle it is at, the rule version, what it says and saw."""

    place: int  # in the batch's time order
    rule: int  # the rule's place among the active ones
    candle: ClosedCandle
    timeframe: str
    closed_at: float  # the candle's close, seconds since the epoch
    version_id: int
    action: str
    indicators: dict[str, float | None]


# One statement for the whole batch, as the candle writer does (`marketdata.services`), with the
# signals bound as one JSON array: Django's bulk_create renders every value in Python, and binding
# arrays adapts every element in Python, where json.dumps does the whole batch in C.
_INSERT_SIGNALS = (
    "INSERT INTO rules_signal (symbol_id, timeframe, open_time, rule_version_id, action, indicators, "
    "computed_at) SELECT (s->>0)::int8, s->>1, "
    "'epoch'::timestamptz + (s->>2)::int8 * interval '1 millisecond', (s->>3)::int8, s->>4, s->5, "
    "%(computed_at)s FROM jsonb_array_elements(%(signals)s::jsonb) AS s ON CONFLICT DO NOTHING"
)


def _insert_json(drafts: list[_Draft], computed_at: datetime) -> None:
    # The indicator snapshots as the JSONField writes them (json.dumps; NaN was made None).
    signals = json.dumps(
        [
            (
                d.candle.symbol_id,
                d.timeframe,
                d.candle.open_time_ms,
                d.version_id,
                d.action,
                d.indicators,
            )
            for d in drafts
        ]
    )
    with connection.wrap_database_errors:
        connection.ensure_connection()
        raw = connection.connection
        assert raw is not None
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(_INSERT_SIGNALS, {"computed_at": computed_at, "signals": signals})


def _payloads(drafts: list[_Draft], computed_at: datetime) -> list[dict[str, Any]]:
    """The signals as JSON-able data, for WebSocket clients."""
    computed = computed_at.isoformat()
    opened: dict[int, str] = {}  # the signals of a batch share a few open times
    payloads = []
    for draft in drafts:
        candle = draft.candle
        if candle.open_time_ms not in opened:
            opened[candle.open_time_ms] = utc_from_ms(candle.open_time_ms).isoformat()
        payloads.append(
            {
                "symbol_id": candle.symbol_id,
                "timeframe": draft.timeframe,
                "open_time": opened[candle.open_time_ms],
                "rule_version_id": draft.version_id,
                "action": draft.action,
                "indicators": draft.indicators,
                "computed_at": computed,
            }
        )
    return payloads


def _rounds(work: list[_Work]) -> list[list[_Work]]:
    """`work` (in time order) as steps of distinct symbols: each symbol's first close, then its
    second, and so on (a batch may bring several closes of a pair, after a gap)."""
    if len({item[1].symbol_id for item in work}) == len(work):
        return [work]  # one close per symbol, the usual case
    rounds: list[list[_Work]] = []
    count: dict[int, int] = defaultdict(int)
    for item in work:
        symbol_id = item[1].symbol_id
        if count[symbol_id] == len(rounds):
            rounds.append([])
        rounds[count[symbol_id]].append(item)
        count[symbol_id] += 1
    return rounds


def _candle_columns(candles: list[ClosedCandle]) -> list[Any]:
    """Open time (int64), open, high, low, close, volume (float64) of `candles`, one column each."""
    size = len(candles)
    return [
        np.fromiter(map(attrgetter(name), candles), dtype, size)
        for name, dtype in (
            ("open_time_ms", np.int64),
            ("open", np.float64),
            ("high", np.float64),
            ("low", np.float64),
            ("close", np.float64),
            ("volume", np.float64),
        )
    ]


def _sound(columns: list[Any]) -> Any:
    """Where a candle's prices and volume are finite numbers and its volume is not negative."""
    prices = np.isfinite(np.stack(columns[1:]))
    return prices.all(axis=0) & (columns[5] >= 0)


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
