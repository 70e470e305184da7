"""Kill-switch tripwires (`trading.core.tripwires`): error bursts inside their window, latency
p95 by nearest rank once there are enough samples, drawdown, stale data, and the state each
tripwire asks for, at its strictest across rule versions."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.core.tripwires import (
    DRAWDOWN,
    ERROR_BURST,
    LATENCY,
    STALE_DATA,
    ErrorWindow,
    Thresholds,
    Trip,
    drawdown_pct,
    evaluate,
    is_stricter,
    p95,
    strictest_state,
)
from trading.core.types import KillSwitchState

ACTIVE, REDUCING, HALTED = KillSwitchState.ACTIVE, KillSwitchState.REDUCING, KillSwitchState.HALTED
NOW = 1_767_225_600_000
DEFAULTS = Thresholds()


def errors_at(*seconds_ago: float, kind: str = "timeout") -> ErrorWindow:
    window = ErrorWindow()
    for ago in sorted(seconds_ago, reverse=True):
        window.record(NOW - int(ago * 1000), kind)
    return window


def tripwires(trips: list[Trip]) -> list[str]:
    return [trip.tripwire for trip in trips]


# Error bursts ------------------------------------------------------------------------------------


def test_error_burst_within_the_window_trips() -> None:
    trips = evaluate(DEFAULTS, now_ms=NOW, errors=errors_at(59.999, 40, 30, 20, 1, kind="http_500"))
    assert trips == [Trip(ERROR_BURST, HALTED, trips[0].reason)]
    assert "5 execution errors in 60 s" in trips[0].reason
    assert "http_500" in trips[0].reason


def test_errors_outside_the_window_do_not_count() -> None:
    assert evaluate(DEFAULTS, now_ms=NOW, errors=errors_at(60, 40, 30, 20, 1)) == []
    assert evaluate(DEFAULTS, now_ms=NOW, errors=errors_at(30, 20, 1, 1)) == []


def test_error_window_forgets_as_time_passes() -> None:
    window = errors_at(50, 40, 30, 20, 10)
    assert window.count(NOW, 60) == 5
    assert window.count(NOW + 15_000, 60) == 4
    assert window.count(NOW + 60_000, 60) == 0
    window.record(NOW + 61_000, "rejected")
    assert (window.count(NOW + 61_000, 60), window.last_kind) == (1, "rejected")


# Latency -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], None),
        ([7.0], 7.0),
        ([float(n) for n in range(1, 21)], 19.0),  # ceil(0.95 x 20) = 19th
        ([float(n) for n in range(1, 22)], 20.0),  # ceil(19.95) = 20th
        ([float(n) for n in range(100, 0, -1)], 95.0),  # sorted first
        ([1.0, 1000.0], 1000.0),
    ],
)
def test_p95_is_the_nearest_rank(samples: list[float], expected: float | None) -> None:
    assert p95(samples) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 10_000).map(float), min_size=1, max_size=200))
def test_p95_is_the_smallest_seen_value_with_95_percent_at_or_below_it(samples: list[float]) -> None:
    value = p95(samples)
    assert value in samples
    assert sum(s <= value for s in samples) >= math.ceil(0.95 * len(samples))
    assert sum(s < value for s in samples) < math.ceil(0.95 * len(samples))


def test_latency_needs_enough_samples() -> None:
    slow = [1000.0] * 19
    assert evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), order_latencies_ms=slow) == []
    trips = evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), order_latencies_ms=[*slow, 1000.0])
    assert tripwires(trips) == [LATENCY]
    assert "order latency p95 1000 ms over 20 samples" in trips[0].reason
    few = evaluate(
        DEFAULTS, now_ms=NOW, errors=ErrorWindow(), ingest_latencies_ms=slow, min_latency_samples=5
    )
    assert tripwires(few) == [LATENCY]


def test_latency_trips_above_the_limit_only() -> None:
    at_limit = [500.0] * 19 + [10_000.0]  # p95 is the 19th value: 500
    assert evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), ingest_latencies_ms=at_limit) == []
    over = [500.0] * 18 + [501.0, 10_000.0]
    trips = evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), ingest_latencies_ms=over)
    assert tripwires(trips) == [LATENCY]
    assert trips[0].reason.startswith("ingest latency")


def test_ingest_and_order_latency_trip_separately() -> None:
    slow = [900.0] * 20
    trips = evaluate(
        DEFAULTS, now_ms=NOW, errors=ErrorWindow(), ingest_latencies_ms=slow, order_latencies_ms=slow
    )
    assert [trip.reason.split()[0] for trip in trips] == ["ingest", "order"]


# Drawdown ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("equity", "expected"),
    [
        ([], "0"),
        (["100"], "0"),
        (["100", "90"], "10"),
        (["100", "120", "90"], "25"),
        (["100", "80", "110"], "0"),  # a new high: no drawdown now
        (["0", "-5"], "0"),  # no positive peak to measure from
    ],
)
def test_drawdown_pct(equity: list[str], expected: str) -> None:
    assert drawdown_pct([Decimal(e) for e in equity]) == Decimal(expected)


def test_drawdown_trips_at_the_limit() -> None:
    at_limit = evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), equity=[Decimal(1000), Decimal(900)])
    assert [(trip.tripwire, trip.state) for trip in at_limit] == [(DRAWDOWN, REDUCING)]
    assert "drawdown 10.00 %" in at_limit[0].reason
    below = evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), equity=[Decimal(1000), Decimal("900.01")])
    assert below == []


# Stale data --------------------------------------------------------------------------------------


def test_stale_data() -> None:
    assert evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), newest_candle_close_ms=NOW - 120_000) == []
    trips = evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), newest_candle_close_ms=NOW - 120_001)
    assert [(trip.tripwire, trip.state) for trip in trips] == [(STALE_DATA, HALTED)]
    assert "limit 120 s" in trips[0].reason
    # No candle yet says nothing about staleness.
    assert evaluate(DEFAULTS, now_ms=NOW, errors=ErrorWindow(), newest_candle_close_ms=None) == []


def test_stale_data_names_the_stalest_symbol() -> None:
    trips = evaluate(
        DEFAULTS,
        now_ms=NOW,
        errors=ErrorWindow(),
        newest_candle_close_ms=NOW - 600_000,
        stale_symbol="ETHUSDT",
    )
    assert trips[0].reason == "market data of ETHUSDT is 600 s old (limit 120 s)"


# States ------------------------------------------------------------------------------------------


def test_strictest_state() -> None:
    assert strictest_state([]) is ACTIVE
    assert strictest_state([ACTIVE, REDUCING]) is REDUCING
    assert strictest_state([REDUCING, HALTED, ACTIVE]) is HALTED
    assert is_stricter(HALTED, REDUCING)
    assert is_stricter(REDUCING, ACTIVE)
    assert not is_stricter(REDUCING, REDUCING)
    assert not is_stricter(ACTIVE, HALTED)


def test_strictest_thresholds_take_each_limit_at_its_tightest() -> None:
    loose = Thresholds(
        error_count=10,
        error_window_s=30,
        latency_p95_ms=300,
        max_drawdown_pct=Decimal(20),
        stale_data_s=60,
        on_error_burst=REDUCING,
        on_latency=REDUCING,
        on_drawdown=HALTED,
        on_stale_data=ACTIVE,
    )
    tight = Thresholds(
        error_count=3,
        error_window_s=120,
        latency_p95_ms=800,
        max_drawdown_pct=Decimal("7.5"),
        stale_data_s=300,
        on_error_burst=HALTED,
        on_latency=ACTIVE,
        on_drawdown=REDUCING,
        on_stale_data=REDUCING,
    )
    assert Thresholds.strictest([loose, tight]) == Thresholds(
        error_count=3,
        error_window_s=120,  # a longer window counts more errors
        latency_p95_ms=300,
        max_drawdown_pct=Decimal("7.5"),
        stale_data_s=60,
        on_error_burst=HALTED,
        on_latency=REDUCING,
        on_drawdown=HALTED,
        on_stale_data=REDUCING,
    )
    assert Thresholds.strictest([loose]) == loose
    assert Thresholds.strictest([]) == Thresholds()


def test_evaluate_returns_the_states_the_thresholds_name() -> None:
    thresholds = Thresholds(
        on_error_burst=REDUCING, on_latency=ACTIVE, on_drawdown=HALTED, on_stale_data=REDUCING
    )
    trips = evaluate(
        thresholds,
        now_ms=NOW,
        errors=errors_at(5, 4, 3, 2, 1),
        order_latencies_ms=[2000.0] * 20,
        equity=[Decimal(100), Decimal(50)],
        newest_candle_close_ms=NOW - 3_600_000,
    )
    assert [(trip.tripwire, trip.state) for trip in trips] == [
        (ERROR_BURST, REDUCING),
        (LATENCY, ACTIVE),
        (DRAWDOWN, HALTED),
        (STALE_DATA, REDUCING),
    ]
    assert strictest_state(trip.state for trip in trips) is HALTED
    defaults = evaluate(
        DEFAULTS,
        now_ms=NOW,
        errors=errors_at(5, 4, 3, 2, 1),
        order_latencies_ms=[2000.0] * 20,
        equity=[Decimal(100), Decimal(50)],
        newest_candle_close_ms=NOW - 3_600_000,
    )
    assert [trip.state for trip in defaults] == [HALTED, HALTED, REDUCING, HALTED]


def test_a_quiet_market_trips_nothing() -> None:
    assert (
        evaluate(
            DEFAULTS,
            now_ms=NOW,
            errors=errors_at(30, 20),
            ingest_latencies_ms=[100.0] * 50,
            order_latencies_ms=[200.0] * 50,
            equity=[Decimal(1000), Decimal(1050), Decimal(1000)],
            newest_candle_close_ms=NOW - 5_000,
        )
        == []
    )
