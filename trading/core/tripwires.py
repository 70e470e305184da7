"""Kill-switch tripwires: facts about the last minutes in, a state to trip to (with why) out.

Each tripwire maps to the state the rule version names for it (`KillSwitch.actions` in the rule
spec; by default HALTED for errors, latency and stale data, REDUCING for drawdown). When several
fire, the strictest wins (HALTED over REDUCING). Pure and clocked from outside, so tests and
backtests drive it with their own time."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from trading.core.types import KillSwitchState

ERROR_BURST = "error_burst"
LATENCY = "latency"
DRAWDOWN = "drawdown"
STALE_DATA = "stale_data"


@dataclass(frozen=True)
class Thresholds:
    error_count: int = 5
    error_window_s: int = 60
    latency_p95_ms: int = 500
    max_drawdown_pct: Decimal = Decimal(10)
    stale_data_s: int = 120
    on_error_burst: KillSwitchState = KillSwitchState.HALTED
    on_latency: KillSwitchState = KillSwitchState.HALTED
    on_drawdown: KillSwitchState = KillSwitchState.REDUCING
    on_stale_data: KillSwitchState = KillSwitchState.HALTED

    @classmethod
    def strictest(cls, all_thresholds: Iterable[Thresholds]) -> Thresholds:
        """One set from several active rule versions: each limit at its tightest, each action
        at its strictest."""
        items = list(all_thresholds)
        if not items:
            return cls()
        return cls(
            error_count=min(t.error_count for t in items),
            error_window_s=max(t.error_window_s for t in items),
            latency_p95_ms=min(t.latency_p95_ms for t in items),
            max_drawdown_pct=min(t.max_drawdown_pct for t in items),
            stale_data_s=min(t.stale_data_s for t in items),
            on_error_burst=strictest_state(t.on_error_burst for t in items),
            on_latency=strictest_state(t.on_latency for t in items),
            on_drawdown=strictest_state(t.on_drawdown for t in items),
            on_stale_data=strictest_state(t.on_stale_data for t in items),
        )


_RANK = {KillSwitchState.ACTIVE: 0, KillSwitchState.REDUCING: 1, KillSwitchState.HALTED: 2}


def strictest_state(states: Iterable[KillSwitchState]) -> KillSwitchState:
    return max(states, key=_RANK.__getitem__, default=KillSwitchState.ACTIVE)


def is_stricter(state: KillSwitchState, than: KillSwitchState) -> bool:
    return _RANK[state] > _RANK[than]


@dataclass(frozen=True)
class Trip:
    tripwire: str
    state: KillSwitchState
    reason: str


class ErrorWindow:
    """Execution errors within the last `window_s` seconds."""

    def __init__(self) -> None:
        self._times: deque[int] = deque()
        self.last_kind = ""

    def record(self, now_ms: int, kind: str) -> None:
        self._times.append(now_ms)
        self.last_kind = kind

    def count(self, now_ms: int, window_s: int) -> int:
        horizon = now_ms - window_s * 1000
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
        return len(self._times)


def p95(samples: Sequence[float]) -> float | None:
    """The 95th percentile by nearest rank (no interpolation: a value that was really seen)."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-95 * len(ordered) // 100))
    return ordered[rank - 1]


def drawdown_pct(equity: Sequence[Decimal]) -> Decimal:
    """How far the last equity value is below the highest one, in percent of that high."""
    if not equity:
        return Decimal(0)
    peak = max(equity)
    if peak <= 0:
        return Decimal(0)
    return max(Decimal(0), (peak - equity[-1]) / peak * 100)


def evaluate(
    thresholds: Thresholds,
    *,
    now_ms: int,
    errors: ErrorWindow,
    ingest_latencies_ms: Sequence[float] = (),
    order_latencies_ms: Sequence[float] = (),
    equity: Sequence[Decimal] = (),
    newest_candle_close_ms: int | None = None,
    stale_symbol: str = "",
    min_latency_samples: int = 20,
) -> list[Trip]:
    """Every tripwire that fires now. Latency needs `min_latency_samples` samples, so that one
    slow request after a quiet hour does not halt trading. `newest_candle_close_ms` is the
    freshest data of the symbol whose data is stalest (`stale_symbol`, named in the reason)."""
    trips: list[Trip] = []
    error_count = errors.count(now_ms, thresholds.error_window_s)
    if error_count >= thresholds.error_count:
        trips.append(
            Trip(
                ERROR_BURST,
                thresholds.on_error_burst,
                f"{error_count} execution errors in {thresholds.error_window_s} s "
                f"(limit {thresholds.error_count}; last: {errors.last_kind})",
            )
        )
    for what, samples in (("ingest", ingest_latencies_ms), ("order", order_latencies_ms)):
        if len(samples) >= min_latency_samples:
            value = p95(samples)
            if value is not None and value > thresholds.latency_p95_ms:
                trips.append(
                    Trip(
                        LATENCY,
                        thresholds.on_latency,
                        f"{what} latency p95 {value:.0f} ms over {len(samples)} samples "
                        f"(limit {thresholds.latency_p95_ms} ms)",
                    )
                )
    drawdown = drawdown_pct(equity)
    if drawdown >= thresholds.max_drawdown_pct:
        trips.append(
            Trip(
                DRAWDOWN,
                thresholds.on_drawdown,
                f"drawdown {drawdown.quantize(Decimal('0.01'))} % (limit {thresholds.max_drawdown_pct} %)",
            )
        )
    if newest_candle_close_ms is not None:
        age_s = (now_ms - newest_candle_close_ms) / 1000
        if age_s > thresholds.stale_data_s:
            trips.append(
                Trip(
                    STALE_DATA,
                    thresholds.on_stale_data,
                    f"market data{' of ' + stale_symbol if stale_symbol else ''} is {age_s:.0f} s old "
                    f"(limit {thresholds.stale_data_s} s)",
                )
            )
    return trips
