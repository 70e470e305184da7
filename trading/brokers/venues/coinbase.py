"""Coinbase Advanced Trade v3 through ccxt's raw endpoints."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from trading.brokers.base import BrokerError
from trading.brokers.venues.base import (
    DAY_MS,
    Call,
    OrderAbsent,
    PlaceRefused,
    Venue,
    decimal_text,
    exact_decimal,
    now_ms,
    parsed_json,
    shortened,
    unified_status,
)
from trading.core.types import (
    BalanceLine,
    ExecutedFill,
    OrderIntent,
    OrderReport,
    OrderStatus,
    OrderType,
    Side,
)

_COINBASE_STATUS = {
    "PENDING": OrderStatus.SUBMITTED,
    "QUEUED": OrderStatus.SUBMITTED,
    "OPEN": OrderStatus.SUBMITTED,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELED,
    "CANCEL_QUEUED": OrderStatus.CANCELED,
    "EXPIRED": OrderStatus.EXPIRED,
    "FAILED": OrderStatus.REJECTED,
}
_COINBASE_CONFIGS = (
    "market_market_ioc", "limit_limit_gtc", "limit_limit_gtd", "limit_limit_fok", "sor_limit_ioc",
    "stop_limit_stop_limit_gtc", "stop_limit_stop_limit_gtd",
)  # fmt: skip


class Coinbase(Venue):
    """Coinbase Advanced Trade (v3). It has no request for an order by client order id: the
    exchange order id is remembered from our own answers, and otherwise recent orders of the
    product are listed and matched. (Coinbase also answers a create with a client order id it
    already holds with that order instead of a new one.)"""

    not_found_statuses = frozenset({404})  # GET orders/historical/{order_id} of an unknown id
    PAGE = 250
    MAX_PAGES = 8  # a lookup by client order id reads at most this many pages of recent orders
    LOOKBACK_MS = 2 * DAY_MS

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self._order_ids: dict[str, str] = {}  # client order id → exchange order id
        self._quotes: dict[str, str] = {}  # product id → quote currency (the fee asset)

    def place(self, intent: OrderIntent, market_id: str) -> Any:
        size = decimal_text(intent.quantity)
        if intent.type is OrderType.LIMIT:
            if intent.price is None:
                raise ValueError(f"limit order {intent.client_order_id} has no price")
            configuration: dict[str, Any] = {
                "limit_limit_gtc": {
                    "base_size": size,
                    "limit_price": decimal_text(intent.price),
                    "post_only": False,
                }
            }
        else:
            configuration = {"market_market_ioc": {"base_size": size}}
        return self.client.v3PrivatePostBrokerageOrders(
            {
                "client_order_id": intent.client_order_id,
                "product_id": market_id,
                "side": intent.side.value.upper(),
                "order_configuration": configuration,
            }
        )

    def placed(self, raw: Any, intent: OrderIntent) -> OrderReport:
        if not raw.get("success"):
            failure = raw.get("error_response") or {}
            reason = (
                failure.get("new_order_failure_reason") or failure.get("error") or raw.get("failure_reason")
            )
            raise PlaceRefused(f"{reason}: {failure.get('message') or failure.get('error_details') or ''}")
        answer = raw.get("success_response") or {}
        order_id = str(answer.get("order_id") or raw.get("order_id") or "")
        if order_id:
            self._order_ids[intent.client_order_id] = order_id
        return OrderReport(
            client_order_id=intent.client_order_id,
            exchange_order_id=order_id or None,
            symbol=intent.symbol,
            side=intent.side,
            type=intent.type,
            status=OrderStatus.SUBMITTED,
            quantity=intent.quantity,
            price=intent.price if intent.type is OrderType.LIMIT else None,
            filled_quantity=Decimal(0),
            average_price=None,
            updated_ms=now_ms(),
        )

    def query(self, market_id: str, client_order_id: str) -> Any:
        order_id = self._order_ids.get(client_order_id)
        if order_id is not None:
            return self.client.v3PrivateGetBrokerageOrdersHistoricalOrderId({"order_id": order_id})["order"]
        request: dict[str, Any] = {
            "product_ids": [market_id],
            "start_date": _iso(now_ms() - self.LOOKBACK_MS),
            "limit": self.PAGE,
        }
        for _page in range(self.MAX_PAGES):
            answer = self.client.v3PrivateGetBrokerageOrdersHistoricalBatch(request)
            for order in answer.get("orders") or ():
                if order.get("client_order_id") == client_order_id:
                    self._order_ids[client_order_id] = str(order["order_id"])
                    return order
            if not answer.get("has_next") or not answer.get("cursor"):
                raise OrderAbsent(f"no order {client_order_id} among the recent orders of {market_id}")
            request["cursor"] = answer["cursor"]
        # Too many orders to read them all: that is no proof of absence.
        raise BrokerError(
            f"order {client_order_id} is not among the {self.MAX_PAGES * self.PAGE} newest orders of "
            f"{market_id}; older ones were not read",
            reason="lookup_incomplete",
        )

    def cancel(self, market_id: str, client_order_id: str) -> Any:
        order = self.query(market_id, client_order_id)
        answer = self.client.v3PrivatePostBrokerageOrdersBatchCancel({"order_ids": [order["order_id"]]})
        results = answer.get("results") or [{}]
        if not results[0].get("success"):
            raise OrderAbsent(f"cancel refused: {results[0].get('failure_reason')}")
        return self.client.v3PrivateGetBrokerageOrdersHistoricalOrderId({"order_id": order["order_id"]})[
            "order"
        ]

    def open_orders(self, market_id: str | None) -> list[Any]:
        request: dict[str, Any] = {"order_status": ["OPEN"], "limit": self.PAGE}
        if market_id:
            request["product_ids"] = [market_id]
        orders: list[Any] = []
        for _page in range(self.MAX_PAGES):
            answer = self.client.v3PrivateGetBrokerageOrdersHistoricalBatch(request)
            orders.extend(answer.get("orders") or ())
            if not answer.get("has_next") or not answer.get("cursor"):
                break
            request["cursor"] = answer["cursor"]
        return orders

    def trades(self, market_id: str, since_ms: int, call: Call) -> list[tuple[str, ExecutedFill]]:
        quote = self._quote(market_id)
        request: dict[str, Any] = {
            "product_ids": [market_id],
            "start_sequence_timestamp": _iso(since_ms),
            "limit": self.PAGE,
        }
        found: list[tuple[str, ExecutedFill]] = []
        while True:
            answer = call(
                "page", partial(self.client.v3PrivateGetBrokerageOrdersHistoricalFills, dict(request))
            )
            for row in answer.get("fills") or ():
                price = exact_decimal(row["price"])
                size = exact_decimal(row["size"])
                fill = ExecutedFill(
                    trade_id=str(row["trade_id"]),
                    price=price,
                    quantity=size / price if row.get("size_in_quote") else size,
                    fee=exact_decimal(row.get("commission") or "0"),
                    fee_asset=quote,
                    time_ms=_iso_ms(str(row["trade_time"])),
                    is_maker=row.get("liquidity_indicator") == "MAKER",
                )
                if fill.time_ms >= since_ms:
                    found.append((str(row["order_id"]), fill))
            if not answer.get("cursor"):
                return found
            request["cursor"] = answer["cursor"]

    def balances(self, call: Call) -> list[BalanceLine]:
        request: dict[str, Any] = {"limit": self.PAGE}
        lines: list[BalanceLine] = []
        while True:
            answer = call("page", partial(self.client.v3PrivateGetBrokerageAccounts, dict(request)))
            for account in answer.get("accounts") or ():
                free = exact_decimal((account.get("available_balance") or {}).get("value") or "0")
                locked = exact_decimal((account.get("hold") or {}).get("value") or "0")
                if free or locked:
                    lines.append(BalanceLine(asset=str(account["currency"]), free=free, locked=locked))
            if not answer.get("has_next") or not answer.get("cursor"):
                return lines
            request["cursor"] = answer["cursor"]

    def report(self, raw: Any, symbol: str | None) -> OrderReport:
        configuration = raw.get("order_configuration") or {}
        settings: Mapping[str, Any] = next(
            (configuration[name] for name in _COINBASE_CONFIGS if configuration.get(name)), {}
        )
        filled = exact_decimal(raw.get("filled_size") or "0")
        status = str(raw.get("status") or "")
        mapped = _COINBASE_STATUS.get(status) or unified_status(self.client, status)
        if mapped is OrderStatus.SUBMITTED and filled:
            mapped = OrderStatus.PARTIALLY_FILLED
        order_type = str(raw.get("order_type") or "")
        limit_price = settings.get("limit_price")
        base_size = settings.get("base_size")
        average = exact_decimal(raw.get("average_filled_price") or "0")
        when = raw.get("last_fill_time") or raw.get("created_time")
        client_order_id = str(raw.get("client_order_id") or "")
        if client_order_id and raw.get("order_id"):
            self._order_ids[client_order_id] = str(raw["order_id"])
        return OrderReport(
            client_order_id=client_order_id,
            exchange_order_id=str(raw["order_id"]) if raw.get("order_id") else None,
            symbol=symbol or str(raw.get("product_id") or "").replace("-", ""),
            side=Side(str(raw.get("side", "")).lower()),
            type=OrderType.MARKET if order_type == "MARKET" else OrderType.LIMIT,
            status=mapped,
            quantity=exact_decimal(base_size) if base_size else filled,
            price=exact_decimal(limit_price) if limit_price else None,
            filled_quantity=filled,
            average_price=average if filled and average else None,
            updated_ms=_iso_ms(str(when)) if when else now_ms(),
            reject_reason=str(raw.get("reject_message") or raw.get("reject_reason") or "")
            if mapped is OrderStatus.REJECTED
            else "",
        )

    def error_text(self, body: str) -> str:
        document = parsed_json(body)
        if isinstance(document, dict) and ("message" in document or "error" in document):
            return f"{document.get('error', '')} {document.get('message', '')}".strip()
        return shortened(body)

    def _quote(self, market_id: str) -> str:
        if market_id not in self._quotes:
            market = self.client.markets_by_id.get(market_id) if self.client.markets_by_id else None
            entry = market[0] if isinstance(market, list) and market else market or {}
            self._quotes[market_id] = str(entry.get("quote") or market_id.rsplit("-", 1)[-1])
        return self._quotes[market_id]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_ISO_FRACTION = re.compile(r"\.(\d+)")


def _iso_ms(text: str) -> int:
    """Coinbase's RFC 3339 times, with up to nanoseconds, → ms."""
    text = _ISO_FRACTION.sub(
        lambda match: "." + match.group(1)[:6].ljust(6, "0"), text.replace("Z", "+00:00")
    )
    return int(datetime.fromisoformat(text).timestamp() * 1000)
