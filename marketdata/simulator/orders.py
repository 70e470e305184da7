"""A single simulated spot account: balances, MARKET and LIMIT orders, trades.

MARKET orders fill at once at the current price (the forming 1m close). LIMIT orders that
cross the current price fill at once at that price; the others rest, locking their funds, and
fill at their limit price with the first 1m candle *after* the one they were placed in whose
low (buy) or high (sell) reaches the price. Fills are decided by candles, never by timing, and
found lazily whenever the account is read.

Commission (`commission_bps`, maker and taker alike, 0 by default) is charged on every fill in
the quote asset: a BUY pays price x quantity plus commission, a SELL receives price x quantity
less commission. Each fill's commission is rounded *up* (ROUND_UP) to 8 decimals, so the
account never pays less than the rate; a resting BUY locks its commission with its cost."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal, InvalidOperation
from typing import Any

import numpy as np

from marketdata.simulator.errors import (
    DECIMAL_RANGE,
    BinanceError,
    filter_failure,
    illegal_characters,
    integer_param,
    invalid_limit,
    invalid_symbol,
    mandatory,
)
from marketdata.simulator.intervals import MINUTE_MS, floor_to
from marketdata.simulator.market import Market
from marketdata.simulator.series import HIGH, LOW
from marketdata.simulator.symbols import SymbolSpec
from marketdata.simulator.units import units_to_decimal

_DECIMAL = re.compile(DECIMAL_RANGE)
_CLIENT_ORDER_ID_RANGE = r"^[\.A-Z\:/a-z0-9_-]{1,36}$"
_CLIENT_ORDER_ID = re.compile(_CLIENT_ORDER_ID_RANGE)
_EIGHT = Decimal("0.00000001")
MAX_OPEN_ORDERS_PER_SYMBOL = 200


def _text(amount: Decimal) -> str:
    return f"{amount.quantize(_EIGHT):f}"


@dataclass
class Order:
    order_id: int
    symbol: str
    client_order_id: str
    side: str
    type: str
    time_in_force: str
    price: Decimal
    orig_qty: Decimal
    executed_qty: Decimal
    cumulative_quote: Decimal
    status: str
    time: int
    update_time: int
    next_candle: int  # open time of the first candle not yet checked for a fill
    locked: Decimal = Decimal(0)  # what a resting order holds (BUY: quote incl. commission)

    @property
    def is_open(self) -> bool:
        return self.status == "NEW"

    def result(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "transactTime": self.time,
            "price": _text(self.price),
            "origQty": _text(self.orig_qty),
            "executedQty": _text(self.executed_qty),
            "origQuoteOrderQty": _text(Decimal(0)),
            "cummulativeQuoteQty": _text(self.cumulative_quote),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "workingTime": self.time,
            "selfTradePreventionMode": "NONE",
        }

    def query(self) -> dict[str, Any]:
        """As `GET /api/v3/order` answers it."""
        result = self.result()
        del result["transactTime"]
        return {
            **result,
            "stopPrice": _text(Decimal(0)),
            "icebergQty": _text(Decimal(0)),
            "time": self.time,
            "updateTime": self.update_time,
            "isWorking": True,
        }


@dataclass
class Trade:
    trade_id: int
    order_id: int
    symbol: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool

    def as_binance(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "id": self.trade_id,
            "orderId": self.order_id,
            "orderListId": -1,
            "price": _text(self.price),
            "qty": _text(self.qty),
            "quoteQty": _text(self.quote_qty),
            "commission": _text(self.commission),
            "commissionAsset": self.commission_asset,
            "time": self.time,
            "isBuyer": self.is_buyer,
            "isMaker": self.is_maker,
            "isBestMatch": True,
        }

    def fill(self) -> dict[str, Any]:
        return {
            "price": _text(self.price),
            "qty": _text(self.qty),
            "commission": _text(self.commission),
            "commissionAsset": self.commission_asset,
            "tradeId": self.trade_id,
        }


class Account:
    def __init__(
        self,
        market: Market,
        quote_balance: Decimal,
        *,
        commission_bps: int = 0,
        on_first_fill: Callable[[], None] | None = None,
    ) -> None:
        """`on_first_fill` is called when an order fills (the order-count limiter's decrement)."""
        self._market = market
        self.commission_bps = commission_bps
        self._commission_rate = Decimal(commission_bps) / 10_000
        self._on_first_fill = on_first_fill
        self._free: dict[str, Decimal] = {}
        self._locked: dict[str, Decimal] = {}
        for spec in market.symbols:
            self._free.setdefault(spec.base, Decimal(0))
            self._free[spec.quote] = quote_balance
        self._orders: dict[int, Order] = {}
        self._trades: list[Trade] = []
        self._next_order_id = 1
        self._next_trade_id = 1

    # Requests -----------------------------------------------------------------------------

    def place(self, params: Mapping[str, str], now_ms: int) -> dict[str, Any]:
        self.match(now_ms)
        spec = self._symbol(params)
        side = _required(params, "side")
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1117, "Invalid side.")
        order_type = _required(params, "type")
        if order_type not in ("LIMIT", "MARKET"):
            raise BinanceError(-1116, "Invalid orderType.")
        time_in_force = params.get("timeInForce") or ""
        response_type = params.get("newOrderRespType") or "FULL"
        if response_type not in ("ACK", "RESULT", "FULL"):
            raise illegal_characters("newOrderRespType", "ACK, RESULT, FULL")
        client_order_id = params.get("newClientOrderId") or f"sim-{self._next_order_id}"
        if not _CLIENT_ORDER_ID.match(client_order_id):
            raise illegal_characters("newClientOrderId", _CLIENT_ORDER_ID_RANGE)
        current = units_to_decimal(self._market.last_price(spec, now_ms))
        if order_type == "LIMIT":
            if not time_in_force:
                raise mandatory("timeInForce")
            if time_in_force not in ("GTC", "IOC", "FOK"):
                raise BinanceError(-1115, "Invalid timeInForce.")
            price = _required_decimal(params, "price")
            quantity = _required_decimal(params, "quantity")
        else:
            for name in ("price", "timeInForce"):
                if params.get(name):
                    raise BinanceError(-1106, f"Parameter '{name}' sent when not required.")
            price = current
            quantity = self._market_quantity(spec, params, current)
        if any(order.is_open and order.client_order_id == client_order_id for order in self._orders.values()):
            raise BinanceError(-2010, "Duplicate order sent.")
        self._check_filters(spec, order_type, price, quantity)

        crosses = current <= price if side == "BUY" else current >= price
        fill_now = order_type == "MARKET" or crosses
        status = "EXPIRED" if not fill_now and time_in_force in ("IOC", "FOK") else "NEW"
        fill_price = current if fill_now else price
        if side == "BUY":
            cost = quantity * fill_price
            spend_asset, spend = spec.quote, cost + self._commission(cost)
        else:
            spend_asset, spend = spec.base, quantity
        if status == "NEW" and self._free[spend_asset] < spend:
            raise BinanceError(-2010, "Account has insufficient balance for requested action.")

        order = Order(
            order_id=self._next_order_id,
            symbol=spec.name,
            client_order_id=client_order_id,
            side=side,
            type=order_type,
            time_in_force=time_in_force or "GTC",
            price=Decimal(0) if order_type == "MARKET" else price,
            orig_qty=quantity,
            executed_qty=Decimal(0),
            cumulative_quote=Decimal(0),
            status=status,
            time=now_ms,
            update_time=now_ms,
            next_candle=floor_to(now_ms, MINUTE_MS) + MINUTE_MS,
        )
        self._next_order_id += 1
        self._orders[order.order_id] = order
        fills = []
        if status == "NEW":
            if fill_now:
                fills.append(self._fill(order, spec, fill_price, now_ms, is_maker=False, locked=False))
            else:
                order.locked = spend
                self._free[spend_asset] -= spend
                self._locked[spend_asset] = self._locked.get(spend_asset, Decimal(0)) + spend
        if response_type == "ACK":
            return {
                "symbol": order.symbol,
                "orderId": order.order_id,
                "orderListId": -1,
                "clientOrderId": order.client_order_id,
                "transactTime": now_ms,
            }
        result = order.result()
        if response_type == "FULL":
            result["fills"] = [trade.fill() for trade in fills]
        return result

    def query(self, params: Mapping[str, str], now_ms: int) -> dict[str, Any]:
        self.match(now_ms)
        order = self._find(self._symbol(params), params)
        if order is None:
            raise BinanceError(-2013, "Order does not exist.")
        return order.query()

    def cancel(self, params: Mapping[str, str], now_ms: int) -> dict[str, Any]:
        self.match(now_ms)
        spec = self._symbol(params)
        order = self._find(spec, params)
        if order is None or not order.is_open:
            raise BinanceError(-2011, "Unknown order sent.")
        order.status = "CANCELED"
        order.update_time = now_ms
        asset = spec.quote if order.side == "BUY" else spec.base
        self._locked[asset] -= order.locked
        self._free[asset] += order.locked
        order.locked = Decimal(0)
        result = order.result()
        result["transactTime"] = now_ms
        result["origClientOrderId"] = order.client_order_id
        result["clientOrderId"] = params.get("newClientOrderId") or f"sim-cancel-{order.order_id}"
        return result

    def open_orders(self, params: Mapping[str, str], now_ms: int) -> list[dict[str, Any]]:
        self.match(now_ms)
        name = params.get("symbol")
        if name and self._market.symbol(name) is None:
            raise invalid_symbol()
        return [
            order.query()
            for order in self._orders.values()
            if order.is_open and (not name or order.symbol == name)
        ]

    def account(self, params: Mapping[str, str], now_ms: int) -> dict[str, Any]:
        self.match(now_ms)
        omit_zero = params.get("omitZeroBalances") == "true"
        balances = []
        for asset in sorted(self._free):
            free, locked = self._free[asset], self._locked.get(asset, Decimal(0))
            if omit_zero and not free and not locked:
                continue
            balances.append({"asset": asset, "free": _text(free), "locked": _text(locked)})
        zero, rate = _text(Decimal(0)), _text(self._commission_rate)
        return {
            "makerCommission": self.commission_bps,
            "takerCommission": self.commission_bps,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": rate, "taker": rate, "buyer": zero, "seller": zero},
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": now_ms,
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
            "uid": 1,
        }

    def my_trades(self, params: Mapping[str, str], now_ms: int) -> list[dict[str, Any]]:
        self.match(now_ms)
        spec = self._symbol(params)
        limit = integer_param(params, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise invalid_limit()
        order_id = integer_param(params, "orderId")
        start = integer_param(params, "startTime")
        end = integer_param(params, "endTime")
        from_id = integer_param(params, "fromId")
        selected = [
            trade
            for trade in self._trades
            if trade.symbol == spec.name
            and (order_id is None or trade.order_id == order_id)
            and (start is None or trade.time >= start)
            and (end is None or trade.time <= end)
            and (from_id is None or trade.trade_id >= from_id)
        ]
        selected = selected[:limit] if from_id is not None or start is not None else selected[-limit:]
        return [trade.as_binance() for trade in selected]

    def orders(self, symbol: str | None, now_ms: int) -> list[dict[str, Any]]:
        """Every order ever accepted (of `symbol`, or all), by order id, as `GET /api/v3/order`
        answers it: the simulator's truth, for `GET /_sim/orders`."""
        self.match(now_ms)
        return [order.query() for order in self._orders.values() if symbol is None or order.symbol == symbol]

    # Matching -----------------------------------------------------------------------------

    def match(self, now_ms: int) -> None:
        """Fill resting LIMIT orders whose price a closed candle after their own has reached."""
        end = floor_to(now_ms, MINUTE_MS)  # candles opening before this are closed
        for order in self._orders.values():
            if not order.is_open or order.next_candle >= end:
                continue
            spec = self._market.symbol(order.symbol)
            assert spec is not None
            candles = self._market.minutes(spec, order.next_candle, end)
            price_units = int(order.price * 100_000_000)
            reached = candles[LOW] <= price_units if order.side == "BUY" else candles[HIGH] >= price_units
            hits = np.flatnonzero(reached)
            if hits.size:
                fill_time = order.next_candle + (int(hits[0]) + 1) * MINUTE_MS - 1
                self._fill(order, spec, order.price, fill_time, is_maker=True, locked=True)
            else:
                order.next_candle = end

    def _fill(
        self, order: Order, spec: SymbolSpec, price: Decimal, time_ms: int, *, is_maker: bool, locked: bool
    ) -> Trade:
        quantity = order.orig_qty
        cost = quantity * price
        commission = self._commission(cost)
        if order.side == "BUY":
            self._take(spec.quote, cost + commission, locked=locked)
            self._free[spec.base] += quantity
        else:
            self._take(spec.base, quantity, locked=locked)
            self._free[spec.quote] += cost - commission
        order.locked = Decimal(0)
        order.executed_qty = quantity
        order.cumulative_quote = cost
        order.status = "FILLED"
        order.update_time = time_ms
        trade = Trade(
            trade_id=self._next_trade_id,
            order_id=order.order_id,
            symbol=spec.name,
            price=price,
            qty=quantity,
            quote_qty=cost,
            commission=commission,
            commission_asset=spec.quote,
            time=time_ms,
            is_buyer=order.side == "BUY",
            is_maker=is_maker,
        )
        self._next_trade_id += 1
        self._trades.append(trade)
        if self._on_first_fill is not None:  # orders fill whole, once: every fill is a first
            self._on_first_fill()
        return trade

    def _commission(self, quote_amount: Decimal) -> Decimal:
        return (quote_amount * self._commission_rate).quantize(_EIGHT, rounding=ROUND_UP)

    def _take(self, asset: str, amount: Decimal, *, locked: bool) -> None:
        if locked:
            self._locked[asset] -= amount
        else:
            self._free[asset] -= amount

    # Validation ---------------------------------------------------------------------------

    def _symbol(self, params: Mapping[str, str]) -> SymbolSpec:
        spec = self._market.symbol(_required(params, "symbol"))
        if spec is None:
            raise invalid_symbol()
        return spec

    def _find(self, spec: SymbolSpec, params: Mapping[str, str]) -> Order | None:
        order_id = integer_param(params, "orderId")
        client_order_id = params.get("origClientOrderId")
        if order_id is None and not client_order_id:
            raise BinanceError(
                -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            )
        for order in reversed(self._orders.values()):
            if order.symbol != spec.name:
                continue
            if order_id is not None and order.order_id != order_id:
                continue
            if client_order_id and order.client_order_id != client_order_id:
                continue
            return order
        return None

    def _market_quantity(self, spec: SymbolSpec, params: Mapping[str, str], price: Decimal) -> Decimal:
        quantity = _optional_decimal(params, "quantity")
        quote_quantity = _optional_decimal(params, "quoteOrderQty")
        if quantity is not None and quote_quantity is not None:
            raise BinanceError(-1106, "Parameter 'quoteOrderQty' sent when not required.")
        if quantity is not None:
            return quantity
        if quote_quantity is None:
            raise BinanceError(
                -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!"
            )
        step = units_to_decimal(spec.step)
        return (quote_quantity / price / step).to_integral_value(rounding=ROUND_DOWN) * step

    def _check_filters(self, spec: SymbolSpec, order_type: str, price: Decimal, quantity: Decimal) -> None:
        if order_type == "LIMIT":
            tick, low, high = (units_to_decimal(v) for v in (spec.tick, spec.min_price, spec.max_price))
            if not low <= price <= high or (price - low) % tick:
                raise filter_failure("PRICE_FILTER")
        step, low, high = (units_to_decimal(v) for v in (spec.step, spec.min_qty, spec.max_qty))
        if not low <= quantity <= high or (quantity - low) % step:
            raise filter_failure("LOT_SIZE")
        notional = price * quantity
        if notional < units_to_decimal(spec.min_notional):
            raise filter_failure("NOTIONAL")
        if order_type == "LIMIT" and notional > units_to_decimal(spec.max_notional):
            raise filter_failure("NOTIONAL")
        open_here = sum(1 for order in self._orders.values() if order.is_open and order.symbol == spec.name)
        if order_type == "LIMIT" and open_here >= MAX_OPEN_ORDERS_PER_SYMBOL:
            raise filter_failure("MAX_NUM_ORDERS")


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise mandatory(name)
    return value


def _required_decimal(params: Mapping[str, str], name: str) -> Decimal:
    value = _optional_decimal(params, name)
    if value is None:
        raise mandatory(name)
    return value


def _optional_decimal(params: Mapping[str, str], name: str) -> Decimal | None:
    value = params.get(name)
    if not value:
        return None
    if not _DECIMAL.match(value):
        raise illegal_characters(name, DECIMAL_RANGE)
    try:
        return Decimal(value)
    except InvalidOperation:
        raise illegal_characters(name, DECIMAL_RANGE) from None
