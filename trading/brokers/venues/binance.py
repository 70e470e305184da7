"""Binance Spot REST v3 through ccxt's raw endpoints: profiles `sim`, `binance`, `binanceus`."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from trading.brokers.venues.base import (
    DAY_MS,
    Call,
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

_BINANCE_STATUS = {
    "NEW": OrderStatus.SUBMITTED,
    "PENDING_NEW": OrderStatus.SUBMITTED,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELED,
    "PENDING_CANCEL": OrderStatus.CANCELED,
    "REJECTED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
    "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,
}


class Binance(Venue):
    """Binance Spot REST v3 (and what copies it: Binance.US, the simulator)."""

    not_found_codes = frozenset({-2013, -2011})  # order does not exist; cancel: unknown order
    auth_codes = frozenset({-2014, -2015, -1022})
    rate_limit_codes = frozenset({-1003, -1015})  # request weight; too many new orders
    unknown_outcome_codes = frozenset({-1006, -1007})  # "send status unknown; execution status unknown"
    MY_TRADES_LIMIT = 1000

    def place(self, intent: OrderIntent, market_id: str) -> Any:
        params: dict[str, Any] = {
            "symbol": market_id,
            "side": intent.side.value.upper(),
            "type": "LIMIT" if intent.type is OrderType.LIMIT else "MARKET",
            "quantity": decimal_text(intent.quantity),
            "newClientOrderId": intent.client_order_id,
            "newOrderRespType": "FULL",
        }
        if intent.type is OrderType.LIMIT:
            if intent.price is None:
                raise ValueError(f"limit order {intent.client_order_id} has no price")
            params["price"] = decimal_text(intent.price)
            params["timeInForce"] = "GTC"
        return self.client.privatePostOrder(params)

    def placed(self, raw: Any, intent: OrderIntent) -> OrderReport:
        return self.report(raw, intent.symbol)

    def query(self, market_id: str, client_order_id: str) -> Any:
        return self.client.privateGetOrder({"symbol": market_id, "origClientOrderId": client_order_id})

    def cancel(self, market_id: str, client_order_id: str) -> Any:
        return self.client.privateDeleteOrder({"symbol": market_id, "origClientOrderId": client_order_id})

    def open_orders(self, market_id: str | None) -> list[Any]:
        return list(self.client.privateGetOpenOrders({"symbol": market_id} if market_id else {}))

    def trades(self, market_id: str, since_ms: int, call: Call) -> list[tuple[str, ExecutedFill]]:
        # The newest page first: usually it reaches back past since_ms and is all there is.
        # Otherwise walk forward from since_ms: startTime/endTime may span 24 hours at most,
        # so day by day until the first trade, then on by trade id (fromId), which has no
        # such limit, until the newest page is reached.
        limit = self.MY_TRADES_LIMIT
        newest = list(
            call("newest", lambda: self.client.privateGetMyTrades({"symbol": market_id, "limit": limit}))
        )
        rows = {int(row["id"]): row for row in newest}
        if len(newest) == limit and min(int(row["time"]) for row in newest) > since_ms:
            reached = min(rows)
            start, page = since_ms, list[Any]()
            while not page and start < rows[reached]["time"]:
                window = {
                    "symbol": market_id,
                    "startTime": start,
                    "endTime": start + DAY_MS - 1,
                    "limit": limit,
                }
                page = list(call(f"from {start}", partial(self.client.privateGetMyTrades, window)))
                start += DAY_MS
            while page:
                rows.update((int(row["id"]), row) for row in page)
                after = max(int(row["id"]) for row in page) + 1
                if len(page) < limit or after >= reached:
                    break
                request = {"symbol": market_id, "fromId": after, "limit": limit}
                page = list(call(f"from id {after}", partial(self.client.privateGetMyTrades, request)))
        return [
            (str(row["orderId"]), self._fill(row))
            for _, row in sorted(rows.items())
            if int(row["time"]) >= since_ms
        ]

    def balances(self, call: Call) -> list[BalanceLine]:
        account = call("account", lambda: self.client.privateGetAccount({"omitZeroBalances": "true"}))
        return [
            BalanceLine(
                asset=str(line["asset"]),
                free=exact_decimal(line["free"]),
                locked=exact_decimal(line["locked"]),
            )
            for line in account.get("balances", [])
            if exact_decimal(line["free"]) or exact_decimal(line["locked"])
        ]

    def report(self, raw: Any, symbol: str | None) -> OrderReport:
        order_type = str(raw.get("type") or "")
        status = str(raw.get("status") or "")
        filled = exact_decimal(raw.get("executedQty", "0"))
        quote = exact_decimal(raw.get("cummulativeQuoteQty", "0"))
        price = exact_decimal(raw.get("price", "0"))
        is_limit = order_type.startswith("LIMIT") or order_type.endswith("_LIMIT")
        time_ms = int(raw.get("updateTime") or raw.get("transactTime") or raw.get("time") or now_ms())
        fills = tuple(
            ExecutedFill(
                trade_id=str(fill["tradeId"]),
                price=exact_decimal(fill["price"]),
                quantity=exact_decimal(fill["qty"]),
                fee=exact_decimal(fill.get("commission", "0")),
                fee_asset=str(fill.get("commissionAsset") or ""),
                time_ms=time_ms,
                is_maker=False,  # filled as it was placed: it took liquidity
            )
            for fill in raw.get("fills") or ()
        )
        return OrderReport(
            # A cancel's answer names the cancel request clientOrderId, and ours origClientOrderId.
            client_order_id=str(raw.get("origClientOrderId") or raw.get("clientOrderId") or ""),
            exchange_order_id=str(raw["orderId"]) if raw.get("orderId") is not None else None,
            symbol=symbol or str(raw.get("symbol") or ""),
            side=Side(str(raw.get("side", "")).lower()),
            type=OrderType.LIMIT if is_limit else OrderType.MARKET,
            status=_BINANCE_STATUS.get(status) or unified_status(self.client, status),
            quantity=exact_decimal(raw.get("origQty", "0")),
            price=price if is_limit and price else None,
            filled_quantity=filled,
            average_price=quote / filled if filled else None,
            updated_ms=time_ms,
            fills=fills,
        )

    def is_duplicate(self, body: str) -> bool:
        return "Duplicate order" in self.error_text(body)

    def error_code(self, body: str) -> int | None:
        document = parsed_json(body)
        code = document.get("code") if isinstance(document, dict) else None
        return code if isinstance(code, int) else None

    def error_text(self, body: str) -> str:
        document = parsed_json(body)
        if isinstance(document, dict) and "msg" in document:
            return f"{document.get('code')} {document['msg']}"
        return shortened(body)

    @staticmethod
    def _fill(row: Mapping[str, Any]) -> ExecutedFill:
        return ExecutedFill(
            trade_id=str(row["id"]),
            price=exact_decimal(row["price"]),
            quantity=exact_decimal(row["qty"]),
            fee=exact_decimal(row.get("commission", "0")),
            fee_asset=str(row.get("commissionAsset") or ""),
            time_ms=int(row["time"]),
            is_maker=bool(row.get("isMaker", False)),
        )
