"""Prometheus metrics of execution (served on its own port by `manage.py trade`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from trading.core.types import KillSwitchState

ORDERS = Counter(
    "oasis_orders_total",
    "Orders by the status they reached (each transition counted once).",
    ["mode", "status"],
)
REJECTIONS = Counter(
    "oasis_order_rejections_total",
    "Orders refused, by reason (risk checks and exchange).",
    ["mode", "reason"],
)
REJECTION_RATIO = Gauge(
    "oasis_order_rejection_ratio_today", "Rejected orders / all orders created since 00:00 UTC.", ["mode"]
)
ORDER_LATENCY = Histogram(
    "oasis_order_round_trip_seconds",
    "From the order request leaving to the exchange's (or fill model's) answer.",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EXECUTION_ERRORS = Counter(
    "oasis_execution_errors_total",
    "Failed exchange calls, by kind (they feed the error-burst tripwire).",
    ["kind"],
)
SIGNALS_DECIDED = Counter(
    "oasis_signals_decided_total", "Signals the execution loop handled, by outcome.", ["outcome", "reason"]
)
KILLSWITCH_STATE = Gauge(
    "oasis_killswitch_state", "1 for the kill switch's current state, 0 for the others.", ["state"]
)
KILLSWITCH_TRIPS = Counter("oasis_killswitch_trips_total", "Automatic trips, by tripwire.", ["tripwire"])
EQUITY = Gauge("oasis_equity_quote", "Account equity in the quote asset.", ["mode"])
REALIZED_PNL = Gauge("oasis_realized_pnl_quote", "Realized PnL net of fees, all symbols.", ["mode"])
UNREALIZED_PNL = Gauge("oasis_unrealized_pnl_quote", "Unrealized PnL at the last close.", ["mode"])
DRAWDOWN = Gauge("oasis_drawdown_pct", "Drawdown from the equity peak, percent.", ["mode"])
RECONCILE_CORRECTIONS = Counter(
    "oasis_reconcile_corrections_total",
    "Differences with the exchange that reconciliation corrected.",
    ["kind"],
)


def set_killswitch_state(state: KillSwitchState) -> None:
    for member in KillSwitchState:
        KILLSWITCH_STATE.labels(state=member.value).set(1 if member is state else 0)
