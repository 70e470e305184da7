"""Reconciliation: the exchange's truth against our rows, at start and periodically.

- Every order we think is open (new with a request sent, submitted, partially filled) is looked
  up by its client order id. Found: its status and fills are taken from the exchange (an order
  filled while we were down gets its fills, position and balances). Not found, and sent long
  enough ago that it cannot still be in flight: expired ("not on the exchange"). A row written
  but never sent (the process stopped in between) is rejected as "not sent": a stale signal is
  not acted on after a restart.
- Balances are set to the exchange's.
- A position larger than what the account holds of its base asset is cut to the holding.
Every correction is audited (the services do it) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

import structlog
from django.utils import timezone

from marketdata.core.timeframes import ms_from_datetime
from trading import metrics, selectors, services
from trading.brokers.base import Broker
from trading.core.types import ExecutedFill, OrderReport, OrderStatus
from trading.models import Mode, Order, Position

logger = structlog.get_logger(__name__)

# A request sent less than this long ago may still be on its way: not yet "missing".
IN_FLIGHT = timedelta(seconds=30)
ACTOR = "system:reconciliation"


@dataclass
class ReconcileReport:
    orders_checked: int = 0
    orders_updated: list[str] = field(default_factory=list)
    orders_missing: list[str] = field(default_factory=list)
    balances_corrected: list[str] = field(default_factory=list)
    positions_corrected: list[str] = field(default_factory=list)


def reconcile(
    *,
    broker: Broker,
    mode: str,
    exchange: str,
    now: datetime | None = None,
    in_flight: timedelta = IN_FLIGHT,
) -> ReconcileReport:
    report = ReconcileReport()
    now = now or timezone.now()
    for order in selectors.open_orders(mode):
        if order.exchange != exchange:
            continue
        report.orders_checked += 1
        if order.status == OrderStatus.NEW and order.submitted_at is None:
            services.order_reject(
                order=order,
                reason="not_sent",
                detail="the process stopped after writing the order and before sending it; not sent later",
                actor=ACTOR,
            )
            report.orders_missing.append(order.client_order_id)
            continue
        answer = broker.fetch_order(order.symbol.symbol, order.client_order_id)
        if answer is None:
            sent = order.submitted_at or order.created_at
            if now - sent >= in_flight:
                services.order_apply_report(
                    order=order,
                    report=_missing(order),
                    actor=ACTOR,
                    correction=True,
                )
                report.orders_missing.append(order.client_order_id)
                metrics.RECONCILE_CORRECTIONS.labels(kind="order_missing").inc()
            continue
        answer = with_fills(broker, order, answer)
        before = (order.status, order.filled_quantity)
        updated = services.order_apply_report(order=order, report=answer, acknowledged=True, actor=ACTOR)
        if (updated.status, updated.filled_quantity) != before:
            report.orders_updated.append(order.client_order_id)
            metrics.RECONCILE_CORRECTIONS.labels(kind="order").inc()

    _reconcile_balances(broker, mode, report)
    if mode == Mode.LIVE:
        _reconcile_positions(mode, report)
    if (
        report.orders_updated
        or report.orders_missing
        or report.balances_corrected
        or report.positions_corrected
    ):
        logger.info(
            "reconciled",
            mode=mode,
            orders_updated=report.orders_updated,
            orders_missing=report.orders_missing,
            balances=report.balances_corrected,
            positions=report.positions_corrected,
        )
    return report


def _missing(order: Order) -> OrderReport:
    return replace(
        selectors.order_as_report(order), status=OrderStatus.EXPIRED, reject_reason="not on the exchange"
    )


def with_fills(broker: Broker, order: Order, answer: OrderReport) -> OrderReport:
    """`answer` with its fills: an order looked up (rather than answered when placed) comes
    without them, so they are fetched from the account's trades."""
    if answer.filled_quantity <= sum((f.quantity for f in answer.fills), Decimal(0)):
        return answer
    return replace(answer, fills=tuple(_fills_of(broker, order, answer.exchange_order_id)))


def _fills_of(broker: Broker, order: Order, exchange_order_id: str | None) -> list[ExecutedFill]:
    since = ms_from_datetime(order.created_at) - 60_000
    return [
        fill
        for order_id, fill in broker.fills(order.symbol.symbol, since_ms=since)
        if exchange_order_id is not None and str(order_id) == str(exchange_order_id)
    ]


def _reconcile_balances(broker: Broker, mode: str, report: ReconcileReport) -> None:
    lines = {line.asset: line for line in broker.balances()}
    ours = selectors.balances(mode)
    for asset in sorted(set(lines) | set(ours)):
        line = lines.get(asset)
        free, locked = (line.free, line.locked) if line else (Decimal(0), Decimal(0))
        if asset not in ours and not free and not locked:
            continue
        changed = services.balance_set(
            mode=mode, asset=asset, free=free, locked=locked, actor=ACTOR, reason="the exchange's balance"
        )
        if changed is not None:
            report.balances_corrected.append(asset)
            metrics.RECONCILE_CORRECTIONS.labels(kind="balance").inc()


def _reconcile_positions(mode: str, report: ReconcileReport) -> None:
    holdings = selectors.balances(mode)
    for position in Position.objects.filter(mode=mode).select_related("symbol"):
        if position.quantity <= 0:
            continue
        held = holdings.get(position.symbol.base)
        total = held.free + held.locked if held else Decimal(0)
        if total < position.quantity:
            services.position_correct(
                mode=mode,
                symbol=position.symbol,
                quantity=total,
                reason=f"the account holds {total} {position.symbol.base}, the book said {position.quantity}",
            )
            report.positions_corrected.append(position.symbol.symbol)
            metrics.RECONCILE_CORRECTIONS.labels(kind="position").inc()
