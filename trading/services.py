"""Writes of execution: orders and their transitions, fills, positions, balances, equity.

Each function is one transaction that also records the audit event; metrics and broadcasts
happen after commit. Fills are idempotent (unique per order and trade id), so applying the same
exchange report twice — after a retry, a restart or a reconciliation — changes nothing."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.alerting import alert_raise, alert_resolve
from audit.models import AlertSeverity
from audit.services import Actor, audit_record
from marketdata.core.timeframes import utc_from_ms
from marketdata.fields import AsNumber
from marketdata.models import Symbol
from oasis_site.broadcast import broadcast_after_commit
from rules.models import RuleConfigVersion, Signal
from trading import metrics
from trading.core.positions import PositionState, apply_fill
from trading.core.types import ExecutedFill, OrderIntent, OrderReport, OrderStatus, Refusal, Side
from trading.models import Balance, EquitySnapshot, Fill, Order, Position, SignalDecision
from trading.selectors import last_prices, latest_equity, position_state

logger = structlog.get_logger(__name__)

BROADCAST_GROUP = "orders"
_ZERO = Decimal(0)
# Transitions an exchange report may make. A final status only changes when the exchange's
# truth contradicts what we concluded without it (reconciliation), which is audited as such.
_RANK = {
    OrderStatus.NEW: 0,
    OrderStatus.SUBMITTED: 1,
    OrderStatus.PARTIALLY_FILLED: 2,
    OrderStatus.FILLED: 3,
    OrderStatus.CANCELED: 3,
    OrderStatus.REJECTED: 3,
    OrderStatus.EXPIRED: 3,
}


def _order_payload(order: Order) -> dict[str, object]:
    return {
        "client_order_id": order.client_order_id,
        "exchange_order_id": order.exchange_order_id,
        "mode": order.mode,
        "symbol": order.symbol.symbol,
        "side": order.side,
        "type": order.type,
        "status": order.status,
        "quantity": f"{order.quantity:f}",
        "price": None if order.price is None else f"{order.price:f}",
        "filled_quantity": f"{order.filled_quantity:f}",
        "reject_reason": order.reject_reason,
        "reject_detail": order.reject_detail,
        "signal": order.signal_id,
        "rule_version": order.rule_version_id,
    }


def _broadcast_order(order: Order) -> None:
    broadcast_after_commit(BROADCAST_GROUP, {"type": "order.update", "order": _order_payload(order)})


def order_create(
    *,
    intent: OrderIntent,
    symbol: Symbol,
    mode: str,
    exchange: str,
    requested_quantity: Decimal,
    refusal: Refusal | None = None,
    signal: Signal | None = None,
    rule_version: RuleConfigVersion | None = None,
    actor: Actor = "system:execution",
    now: datetime | None = None,
) -> Order:
    """The order row for an intent: `new` (about to be sent) or `rejected` with the refusal's
    reason — written, audited and counted either way. Marks the signal as decided. `now` is
    the execution loop's clock (a replay runs on the candles' time)."""
    now = now or timezone.now()
    with transaction.atomic():
        order = Order.objects.create(
            client_order_id=intent.client_order_id,
            mode=mode,
            exchange=exchange,
            symbol=symbol,
            side=intent.side.value,
            type=intent.type.value,
            status=OrderStatus.REJECTED if refusal else OrderStatus.NEW,
            quantity=intent.quantity,
            requested_quantity=requested_quantity,
            price=intent.price,
            reference_price=intent.reference_price,
            reject_reason=refusal.reason if refusal else "",
            reject_detail=refusal.detail if refusal else "",
            signal=signal,
            rule_version=rule_version,
            created_at=now,
            updated_at=now,
        )
        if signal is not None:
            SignalDecision.objects.create(
                signal=signal,
                mode=mode,
                outcome=SignalDecision.Outcome.ORDERED,
                reason=refusal.reason if refusal else "",
                decided_at=now,
            )
        audit_record(
            actor=actor,
            action="trading.order.rejected" if refusal else "trading.order.created",
            obj=order,
            payload=_order_payload(order),
        )
        _broadcast_order(order)
        status = order.status

        def count() -> None:
            metrics.ORDERS.labels(mode=mode, status=status).inc()
            if refusal:
                metrics.REJECTIONS.labels(mode=mode, reason=refusal.reason).inc()

        transaction.on_commit(count)
    if refusal:
        logger.info("order_refused", symbol=symbol.symbol, reason=refusal.reason, detail=refusal.detail)
    return order


def signal_skip(*, signal: Signal, mode: str, reason: str, now: datetime | None = None) -> SignalDecision:
    """A signal that asks for nothing to do (an exit with nothing held, an entry while in)."""
    decision = SignalDecision.objects.create(
        signal=signal,
        mode=mode,
        outcome=SignalDecision.Outcome.SKIPPED,
        reason=reason,
        decided_at=now or timezone.now(),
    )
    metrics.SIGNALS_DECIDED.labels(outcome="skipped", reason=reason).inc()
    return decision


def order_mark_sent(*, order: Order, now: datetime | None = None) -> None:
    """The moment the request leaves: written before the call, so a crash during it leaves a
    row that reconciliation knows to ask the exchange about."""
    order.submitted_at = now or timezone.now()
    order.updated_at = order.submitted_at
    Order.objects.filter(pk=order.pk).update(submitted_at=order.submitted_at, updated_at=order.updated_at)


def order_outcome_unknown(*, order: Order, detail: str, now: datetime | None = None) -> Order:
    """The request left but its fate could not be learned: `submitted`, for reconciliation to
    settle by asking the exchange (never by resending blindly)."""
    with transaction.atomic():
        order = Order.objects.select_for_update().select_related("symbol").get(pk=order.pk)
        if order.status != OrderStatus.NEW:
            return order
        order.status = OrderStatus.SUBMITTED
        order.updated_at = now or timezone.now()
        order.save(update_fields=["status", "updated_at"])
        audit_record(
            actor="system:execution",
            action="trading.order.outcome_unknown",
            obj=order,
            payload={**_order_payload(order), "detail": detail},
        )
        _broadcast_order(order)
    return order


def order_reject(*, order: Order, reason: str, detail: str, actor: Actor = "system:execution") -> Order:
    """The order will not reach the exchange (or the exchange refused it)."""
    with transaction.atomic():
        order = Order.objects.select_for_update().select_related("symbol").get(pk=order.pk)
        if OrderStatus(order.status).is_final:
            return order
        order.status = OrderStatus.REJECTED
        order.reject_reason = reason[:48]
        order.reject_detail = detail
        order.updated_at = timezone.now()
        order.save(update_fields=["status", "reject_reason", "reject_detail", "updated_at"])
        audit_record(actor=actor, action="trading.order.rejected", obj=order, payload=_order_payload(order))
        _broadcast_order(order)
        mode = order.mode

        def count() -> None:
            metrics.ORDERS.labels(mode=mode, status="rejected").inc()
            metrics.REJECTIONS.labels(mode=mode, reason=reason).inc()

        transaction.on_commit(count)
    return order


def order_apply_report(
    *,
    order: Order,
    report: OrderReport,
    acknowledged: bool = False,
    actor: Actor = "system:execution",
    correction: bool = False,
    now: datetime | None = None,
) -> Order:
    """Bring the order row in line with what the exchange reports: status, exchange id, filled
    quantity and fills (each recorded once, moving the position and the balances)."""
    with transaction.atomic():
        order = Order.objects.select_for_update().select_related("symbol").get(pk=order.pk)
        before = OrderStatus(order.status)
        after = report.status
        changed: list[str] = []
        now = now or timezone.now()
        if before.is_final and after != before and not correction:
            # Only reconciliation (the exchange's truth) may change a final status.
            after = before
        elif _RANK[after] < _RANK[before] and not correction:
            after = before
        if after != before:
            order.status = after.value
            changed.append("status")
            if after is OrderStatus.REJECTED and not order.reject_reason:
                order.reject_reason = "exchange_rejected"
                order.reject_detail = report.reject_reason or "refused by the exchange"
                changed += ["reject_reason", "reject_detail"]
            elif after is OrderStatus.EXPIRED and report.reject_reason and not order.reject_detail:
                order.reject_detail = report.reject_reason
                changed.append("reject_detail")
        if report.exchange_order_id and order.exchange_order_id != report.exchange_order_id:
            order.exchange_order_id = report.exchange_order_id
            changed.append("exchange_order_id")
        if acknowledged and order.acknowledged_at is None:
            order.acknowledged_at = now
            changed.append("acknowledged_at")
        recorded = [fill for fill in report.fills if _fill_record(order, fill)]
        totals = _fill_totals(order)
        if totals is not None:
            quantity, average = totals
            if quantity != order.filled_quantity or average != order.average_price:
                order.filled_quantity, order.average_price = quantity, average
                changed += ["filled_quantity", "average_price"]
        if changed or recorded:
            order.updated_at = now
            order.save(update_fields=sorted({*changed, "updated_at"}))
            audit_record(
                actor=actor,
                action="trading.order.corrected" if correction else "trading.order.updated",
                obj=order,
                payload={
                    **_order_payload(order),
                    "from_status": before.value,
                    "fills": [_fill_payload(fill) for fill in recorded],
                },
            )
            _broadcast_order(order)
            if after != before:
                mode, status = order.mode, after.value
                transaction.on_commit(lambda: metrics.ORDERS.labels(mode=mode, status=status).inc())
    return order


def _fill_payload(fill: ExecutedFill) -> dict[str, object]:
    return {
        "trade_id": fill.trade_id,
        "price": f"{fill.price:f}",
        "quantity": f"{fill.quantity:f}",
        "fee": f"{fill.fee:f}",
        "fee_asset": fill.fee_asset,
        "time_ms": fill.time_ms,
    }


def _fill_totals(order: Order) -> tuple[Decimal, Decimal | None] | None:
    fills = list(Fill.objects.filter(order=order).values_list("price", "quantity"))
    if not fills:
        return None
    quantity = sum((q for _, q in fills), _ZERO)
    notional = sum((p * q for p, q in fills), _ZERO)
    return quantity, (notional / quantity).quantize(Decimal("1e-18")).normalize() if quantity else None


def _fill_record(order: Order, fill: ExecutedFill) -> bool:
    """Record `fill` of `order` once; move the position and the balances. False when it was
    already recorded."""
    now = timezone.now()
    _, created = Fill.objects.get_or_create(
        order=order,
        trade_id=fill.trade_id,
        defaults={
            "price": fill.price,
            "quantity": fill.quantity,
            "fee": fill.fee,
            "fee_asset": fill.fee_asset,
            "is_maker": fill.is_maker,
            "executed_at": utc_from_ms(fill.time_ms),
            "recorded_at": now,
        },
    )
    if not created:
        return False
    symbol = order.symbol
    side = Side(order.side)
    position, _ = Position.objects.select_for_update().get_or_create(
        mode=order.mode, symbol=symbol, defaults={"updated_at": now}
    )
    state = position_state(position)
    if side is Side.SELL and fill.quantity > state.quantity:
        # The exchange sold more than our book holds (a manual trade, or a book that missed a
        # buy): the exchange is right; the book sells what it has and says so.
        logger.warning(
            "fill_exceeds_position", symbol=symbol.symbol, fill=str(fill.quantity), held=str(state.quantity)
        )
        audit_record(
            actor="system:execution",
            action="trading.position.oversold",
            obj=position,
            payload={"symbol": symbol.symbol, "fill": f"{fill.quantity:f}", "held": f"{state.quantity:f}"},
        )
        clipped = ExecutedFill(
            trade_id=fill.trade_id,
            price=fill.price,
            quantity=state.quantity,
            fee=fill.fee,
            fee_asset=fill.fee_asset,
            time_ms=fill.time_ms,
            is_maker=fill.is_maker,
        )
        new_state = apply_fill(state, side, clipped, quote_asset=symbol.quote) if state.quantity else state
    else:
        new_state = apply_fill(state, side, fill, quote_asset=symbol.quote)
    _position_store(
        position, new_state, when=utc_from_ms(fill.time_ms), loss=new_state.realized_pnl < state.realized_pnl
    )
    _balances_move(order.mode, symbol, side, fill)
    return True


def _position_store(position: Position, state: PositionState, *, when: datetime, loss: bool) -> None:
    position.quantity = state.quantity
    position.cost = state.cost
    position.average_price = state.average_price
    position.realized_pnl = state.realized_pnl
    position.fees = state.fees
    position.last_trade_at = when
    if loss:
        position.last_loss_at = when
    if position.mark_price is not None:
        position.unrealized_pnl = state.unrealized(position.mark_price)
    position.updated_at = timezone.now()
    position.save()


def _balances_move(mode: str, symbol: Symbol, side: Side, fill: ExecutedFill) -> None:
    quote_delta = fill.price * fill.quantity * (-1 if side is Side.BUY else 1)
    base_delta = fill.quantity * (1 if side is Side.BUY else -1)
    deltas = {symbol.quote: quote_delta, symbol.base: base_delta}
    deltas[fill.fee_asset] = deltas.get(fill.fee_asset, _ZERO) - fill.fee
    now = timezone.now()
    for asset, delta in deltas.items():
        balance, _ = Balance.objects.select_for_update().get_or_create(
            mode=mode, asset=asset, defaults={"updated_at": now}
        )
        balance.free += delta
        balance.updated_at = now
        balance.save(update_fields=["free", "updated_at"])


def balance_set(
    *, mode: str, asset: str, free: Decimal, locked: Decimal, actor: Actor, reason: str
) -> Balance | None:
    """Set a balance to what the exchange (or an operator) says; audited when it changed.
    Returns the row when it changed, else None."""
    with transaction.atomic():
        now = timezone.now()
        balance, created = Balance.objects.select_for_update().get_or_create(
            mode=mode, asset=asset, defaults={"free": free, "locked": locked, "updated_at": now}
        )
        if not created and balance.free == free and balance.locked == locked:
            return None
        before = (None, None) if created else (balance.free, balance.locked)
        balance.free, balance.locked, balance.updated_at = free, locked, now
        balance.save()
        audit_record(
            actor=actor,
            action="trading.balance.set",
            obj=balance,
            payload={
                "mode": mode,
                "asset": asset,
                "free": f"{free:f}",
                "locked": f"{locked:f}",
                "previous_free": None if before[0] is None else f"{before[0]:f}",
                "previous_locked": None if before[1] is None else f"{before[1]:f}",
                "reason": reason,
            },
        )
    return balance


def position_correct(*, mode: str, symbol: Symbol, quantity: Decimal, reason: str) -> Position:
    """Set a position's quantity to the exchange's truth (reconciliation), keeping its average
    price; audited."""
    with transaction.atomic():
        now = timezone.now()
        position, _ = Position.objects.select_for_update().get_or_create(
            mode=mode, symbol=symbol, defaults={"updated_at": now}
        )
        before = position.quantity
        # The cost follows the quantity pro rata: the average price stays what it was.
        position.cost = (position.cost * quantity / before).quantize(Decimal("1e-18")) if before else _ZERO
        position.quantity = quantity
        if quantity == 0:
            position.cost = position.average_price = _ZERO
        position.updated_at = now
        position.save()
        audit_record(
            actor="system:reconciliation",
            action="trading.position.corrected",
            obj=position,
            payload={
                "mode": mode,
                "symbol": symbol.symbol,
                "from": f"{before:f}",
                "to": f"{quantity:f}",
                "reason": reason,
            },
        )
    return position


def _flat_totals(mode: str) -> tuple[Decimal, Decimal]:
    rows = (
        Position.objects.filter(mode=mode)
        .alias(held=AsNumber("quantity"))
        .filter(held__lte=0)
        .values_list("realized_pnl", "fees")
    )
    realized = sum((r for r, _ in rows), _ZERO)
    fees = sum((f for _, f in rows), _ZERO)
    return realized, fees


def equity_snapshot_take(*, mode: str, quote_asset: str, now: datetime | None = None) -> EquitySnapshot:
    """Mark every position at its last close and record the account's equity and drawdown."""
    now = now or timezone.now()
    with transaction.atomic():
        held = list(
            Position.objects.select_for_update()
            .filter(mode=mode)
            .alias(held=AsNumber("quantity"))
            .filter(held__gt=0)
            .select_related("symbol")
        )
        # Realized PnL and fees of positions now flat count too (one aggregate over them).
        flat_realized, flat_fees = _flat_totals(mode)
        marked: list[Position] = []
        prices = last_prices((p.symbol_id for p in held), as_of=now)
        positions_value, unrealized = _ZERO, _ZERO
        realized, fees = flat_realized, flat_fees
        for position in held:
            state = position_state(position)
            realized += state.realized_pnl
            fees += state.fees
            last = prices.get(position.symbol_id)
            if last is None:
                continue
            if position.symbol.quote != quote_asset:
                continue  # valued in another currency: not part of this account's equity
            position.mark_price = last.price
            position.unrealized_pnl = state.unrealized(last.price)
            marked.append(position)
            positions_value += state.value(last.price)
            unrealized += position.unrealized_pnl
        Position.objects.bulk_update(marked, ["mark_price", "unrealized_pnl"])
        cash_row = Balance.objects.filter(mode=mode, asset=quote_asset).first()
        cash = (cash_row.free + cash_row.locked) if cash_row else _ZERO
        equity = cash + positions_value
        previous = latest_equity(mode)
        peak = max(equity, previous.peak_equity) if previous else equity
        drawdown = ((peak - equity) / peak * 100).quantize(Decimal("0.0001")) if peak > 0 else _ZERO
        snapshot = EquitySnapshot.objects.create(
            mode=mode,
            taken_at=now,
            quote_asset=quote_asset,
            cash=cash,
            positions_value=positions_value,
            equity=equity,
            realized_pnl=realized - fees,
            unrealized_pnl=unrealized,
            fees=fees,
            peak_equity=peak,
            drawdown_pct=max(drawdown, _ZERO),
        )

        def publish() -> None:
            metrics.EQUITY.labels(mode=mode).set(float(equity))  # float only at the metrics edge
            metrics.REALIZED_PNL.labels(mode=mode).set(float(realized - fees))
            metrics.UNREALIZED_PNL.labels(mode=mode).set(float(unrealized))
            metrics.DRAWDOWN.labels(mode=mode).set(float(snapshot.drawdown_pct))

        transaction.on_commit(publish)
        _drawdown_alert(mode, snapshot.drawdown_pct)
    return snapshot


def _drawdown_alert(mode: str, drawdown_pct: Decimal) -> None:
    """A warning while the account is deeper below its peak than OASIS_ALERT_DRAWDOWN_PCT (the
    kill switch's drawdown tripwire, set per rule, is the hard stop; this is the early word)."""
    key = f"trading.drawdown.{mode}"
    limit = Decimal(str(settings.OASIS_ALERT_DRAWDOWN_PCT))
    if drawdown_pct >= limit:
        alert_raise(
            key=key,
            severity=AlertSeverity.WARNING,
            title=f"{mode} drawdown {drawdown_pct:f} % (alert at {limit:f} %)",
            detail="equity below its peak; see the trading page",
            payload={"drawdown_pct": f"{drawdown_pct:f}", "limit_pct": f"{limit:f}"},
            actor="system:execution",
        )
    else:
        alert_resolve(key=key, actor="system:execution")
