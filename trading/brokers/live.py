"""The live broker: orders on an exchange (or the simulator) through ccxt's synchronous client.

Binance-family exchanges (profiles `sim`, `binance`, `binanceus`) are driven through ccxt's raw
Spot endpoints (`privatePostOrder`, `privateGetOrder`, …) and Coinbase through its Advanced Trade
v3 endpoints, never through ccxt's unified order methods: those turn every number into a float,
while quantities and prices must travel as exact decimal strings both ways. ccxt still signs,
throttles and maps errors, and its loaded markets map our symbols to the exchange's.

Failures and what is done about them:

- 429 (`rate_limited`), 418 (`banned`): the exchange refused the request before looking at it.
  Wait (its Retry-After when given, else exponential backoff with jitter) and try again.
- 5xx (`server_error`), timeouts (`timeout`) and connection errors (`network`): for a submit, the
  exchange may or may not hold the order. Before anything is resent, the order is looked up by our
  client order id: found, it is the answer (nothing is resent); definitely absent, it is resent
  with the same client order id; the lookup itself failing every time raises `OutcomeUnknown`.
- Any other 4xx: the exchange answered and refused; never retried (`OrderRefused` for a submit).

Every failed attempt is reported through `on_error(kind, detail)` before anything else happens,
and `gate()` is asked before every submit attempt (the kill switch: False raises `Halted` without
sending). Only submits are gated: lookups, cancels and reads must keep working while the switch
is engaged. Every message that leaves this module, raised or logged, has been through the
credentials' `Redactor`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn, TypeVar

import ccxt
import structlog

from marketdata.exchanges import exchange_profile
from marketdata.ingest.rest import ccxt_client
from trading.brokers.base import BrokerError, BrokerUnavailable, Halted, OrderRefused, OutcomeUnknown
from trading.brokers.venues import Binance, Coinbase, Venue
from trading.brokers.venues.base import OrderAbsent, PlaceRefused, now_ms
from trading.core.types import BalanceLine, ExecutedFill, OrderIntent, OrderReport
from trading.credentials import ExchangeCredentials, Redactor

logger = structlog.get_logger(__name__)
# ccxt logs every request and response at DEBUG, API key header and signed URL included: its
# clients here log through this logger, which never passes DEBUG on, whatever the root level.
_CCXT_LOGGER = logging.getLogger(f"{__name__}.ccxt")
_CCXT_LOGGER.setLevel(logging.INFO)

T = TypeVar("T")

BINANCE_FAMILY = ("sim", "binance", "binanceus")
# Binance's default; a lost order request can land at most this long after it was signed.
RECV_WINDOW_MS = 5_000
# Our clock may be this far behind the exchange's.
CLOCK_MARGIN_MS = 1_000
EXCHANGES = (*BINANCE_FAMILY, "coinbase")

# Failure kinds reported to on_error; the first five are worth another attempt.
SERVER_ERROR, RATE_LIMITED, BANNED, TIMEOUT, NETWORK = (
    "server_error",
    "rate_limited",
    "banned",
    "timeout",
    "network",
)
_TRANSIENT = frozenset({SERVER_ERROR, RATE_LIMITED, BANNED, TIMEOUT, NETWORK})
_MAYBE_DONE = frozenset({SERVER_ERROR, TIMEOUT, NETWORK})  # the request may have been carried out
_NOT_FOUND, _AUTH, _REFUSED = "not_found", "auth", "refused"


@dataclass(frozen=True)
class _Failure:
    kind: str
    message: str  # redacted
    status: int | None
    retry_after_s: float | None = None

    @property
    def transient(self) -> bool:
        return self.kind in _TRANSIENT

    @property
    def maybe_done(self) -> bool:
        return self.kind in _MAYBE_DONE


class LiveBroker:
    """The `Broker` for real money. Construct with the exchange name (`sim`, `binance`,
    `binanceus`, `coinbase`) and its credentials; `rest_url` overrides the exchange's REST base
    (for the Binance family the environment's OASIS_<EXCHANGE>_REST_URL, or a simulator in tests).
    One caller at a time: the client and what the last response said are not shared safely.

    After every response `used_weight` (X-MBX-USED-WEIGHT-1M) and `orders_10s`
    (X-MBX-ORDER-COUNT-10S) hold the exchange's last counts, when it sends them."""

    mode = "live"

    def __init__(
        self,
        *,
        exchange: str,
        credentials: ExchangeCredentials,
        rest_url: str | None = None,
        gate: Callable[[], bool] | None = None,
        on_error: Callable[[str, str], None] | None = None,
        max_attempts: int = 4,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        ban_delay_s: float = 120.0,
        max_wait_s: float = 60.0,
        timeout_ms: int = 10_000,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`max_attempts` bounds every call (and, for a submit, the lookups after each unknown
        outcome). Waits grow from `base_delay_s`, doubling to at most `max_delay_s`, with jitter;
        a ban without Retry-After waits `ban_delay_s`; a wait longer than `max_wait_s` is not
        waited for: the call fails at once (BrokerUnavailable, or OutcomeUnknown when a submit's
        fate is open). `timeout_ms` is ccxt's per-request timeout."""
        if exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {exchange!r}; valid: {', '.join(EXCHANGES)}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts} must be >= 1")
        self.exchange = exchange
        self._redact = Redactor(credentials)
        self._gate = gate or (lambda: True)
        self._on_error = on_error or (lambda kind, detail: None)
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._ban_delay_s = ban_delay_s
        self._max_wait_s = max_wait_s
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.used_weight: int | None = None
        self.orders_10s: int | None = None
        # What the last response of the call under way said (None: no response).
        self._status: int | None = None
        self._headers: Mapping[str, str] = {}
        self._body: str = ""
        self._client = self._build_client(exchange, credentials, rest_url, timeout_ms)
        self._venue: Venue = Coinbase(self._client) if exchange == "coinbase" else Binance(self._client)
        self._markets: dict[str, str] | None = None  # our symbol → exchange market id

    def _build_client(
        self, exchange: str, credentials: ExchangeCredentials, rest_url: str | None, timeout_ms: int
    ) -> Any:
        config: dict[str, Any] = {
            "apiKey": credentials.api_key,
            "secret": credentials.secret,
            "timeout": timeout_ms,
            "logger": _CCXT_LOGGER,
        }
        if credentials.password:
            config["password"] = credentials.password
        if exchange == "coinbase":
            client = ccxt.coinbase({"enableRateLimit": True, **config})
            if rest_url:
                client.urls["api"]["rest"] = rest_url
        else:
            profile = exchange_profile(
                exchange, overrides={exchange: {"rest": rest_url}} if rest_url else None
            )
            client = ccxt_client(profile, async_client=False, **config)
            # The window in which Binance still accepts a signed request: after it, a request
            # that was delayed on the way is refused on arrival (-1021). See `submit`.
            client.options["recvWindow"] = RECV_WINDOW_MS
        original = client.on_rest_response

        def observe(
            code: Any,
            reason: Any,
            url: Any,
            method: Any,
            response_headers: Any,
            response_body: Any,
            request_headers: Any,
            request_body: Any,
        ) -> Any:
            self._observe(code, response_headers, response_body)
            return original(
                code, reason, url, method, response_headers, response_body, request_headers, request_body
            )

        # ccxt hands every HTTP answer to on_rest_response before judging it: the one place to
        # see the status (418 and 429 both raise DDoSProtection) and the limit headers.
        client.on_rest_response = observe
        return client

    def _observe(self, status: Any, headers: Any, body: Any) -> None:
        self._status = int(status) if status is not None else None
        self._headers = headers or {}
        self._body = body if isinstance(body, str) else ""
        weight = _header_int(self._headers, "X-MBX-USED-WEIGHT-1M")
        if weight is not None:
            self.used_weight = weight
        orders = _header_int(self._headers, "X-MBX-ORDER-COUNT-10S")
        if orders is not None:
            self.orders_10s = orders

    # Broker --------------------------------------------------------------------------------

    def submit(self, intent: OrderIntent) -> OrderReport:
        cid = intent.client_order_id
        where = f"submit {intent.symbol} {cid}"
        try:
            # Loading the markets is part of sending this order: gated like the order itself.
            market_id = self._market_id(intent.symbol, gated=True)
        except BrokerError as error:
            if error.reason == "unknown_symbol":
                raise OrderRefused(str(error), reason="unknown_symbol") from None
            raise
        failure: _Failure | None = None
        for attempt in range(1, self._max_attempts + 1):
            if not self._gate():
                logger.warning("broker_halted", exchange=self.exchange, call=where, attempt=attempt)
                raise Halted(f"{where}: the kill switch closed the gate; nothing sent (attempt {attempt})")
            signed_ms = now_ms()
            try:
                raw = self._once(lambda: self._venue.place(intent, market_id))
                return self._venue.placed(raw, intent)
            except PlaceRefused as refusal:
                raise OrderRefused(f"{where}: the exchange refused: {self._redact(refusal)}") from None
            except (ccxt.BaseError, OrderAbsent) as error:
                failure = self._failure(error)
            if failure.kind == _REFUSED and attempt > 1 and self._venue.is_duplicate(self._body):
                # A resend met the order we had looked for in vain (it arrived late): it is ours.
                found = self._lookup(intent, market_id, where)
                if found is not None:
                    return found
            if not failure.transient:
                reason = "exchange_auth_failed" if failure.kind == _AUTH else "exchange_rejected"
                logger.warning("broker_refused", exchange=self.exchange, call=where, detail=failure.message)
                raise OrderRefused(f"{where}: the exchange refused: {failure.message}", reason=reason)
            self._reported(where, failure, attempt)
            wait = self._wait(failure, attempt)
            if failure.maybe_done:
                if wait is None:
                    raise OutcomeUnknown(
                        f"{where}: {failure.kind} ({failure.message}), and the exchange asks to wait "
                        f"longer than {self._max_wait_s:g} s before the order can be looked up"
                    )
                self._sleep(wait)
                found = self._lookup(intent, market_id, where)
                if found is not None:
                    return found
                if self.exchange in BINANCE_FAMILY:
                    # Not there yet — but a delayed request could still land until its signature's
                    # window closes. Look again after that: then "absent" is final.
                    settle_ms = signed_ms + RECV_WINDOW_MS + CLOCK_MARGIN_MS - now_ms()
                    if settle_ms > 0:
                        self._sleep(settle_ms / 1000)
                        found = self._lookup(intent, market_id, where)
                        if found is not None:
                            return found
                # Definitely absent: resending with the same client order id is safe.
            elif attempt < self._max_attempts:
                if wait is None:
                    break
                self._sleep(wait)
        assert failure is not None
        raise BrokerUnavailable(
            f"{where}: not placed after {attempt} attempt(s); last: {failure.kind}: {failure.message}"
        )

    def prepare(self) -> None:
        """Load the exchange's markets now (at start), not on the first order."""
        if self._markets is None:
            self._markets = _market_ids(self._call("load_markets", lambda: self._client.load_markets()))

    def fetch_order(self, symbol: str, client_order_id: str) -> OrderReport | None:
        market_id = self._market_id(symbol)
        try:
            raw = self._call(
                f"fetch_order {symbol} {client_order_id}",
                lambda: self._venue.query(market_id, client_order_id),
            )
        except _Absent:
            return None
        return self._venue.report(raw, symbol)

    def cancel(self, symbol: str, client_order_id: str) -> OrderReport:
        """Cancel an open order. An order that is no longer open (filled, or canceled by an
        earlier attempt whose answer was lost) is reported as it stands; one the exchange never
        had raises BrokerError(reason="order_not_found")."""
        market_id = self._market_id(symbol)
        where = f"cancel {symbol} {client_order_id}"
        try:
            raw = self._call(where, lambda: self._venue.cancel(market_id, client_order_id))
        except _Absent:
            report = self.fetch_order(symbol, client_order_id)
            if report is None:
                raise BrokerError(
                    f"{where}: the exchange has no such order", reason="order_not_found"
                ) from None
            if not report.status.is_final:
                raise BrokerError(
                    f"{where}: the exchange refused to cancel an order it reports {report.status}",
                    reason="cancel_rejected",
                ) from None
            return report
        return self._venue.report(raw, symbol)

    def open_orders(self, symbols: Iterable[str]) -> list[OrderReport]:
        """Open orders of `symbols` (an empty iterable: of every symbol, in one request)."""
        names = list(symbols)
        reports: list[OrderReport] = []
        if not names:
            raws = self._call("open_orders", lambda: self._venue.open_orders(None))
            return [self._venue.report(raw, None) for raw in raws]
        for symbol in names:
            market_id = self._market_id(symbol)
            raws = self._call(f"open_orders {symbol}", partial(self._venue.open_orders, market_id))
            reports.extend(self._venue.report(raw, symbol) for raw in raws)
        return reports

    def fills(self, symbol: str, *, since_ms: int) -> list[tuple[str, ExecutedFill]]:
        market_id = self._market_id(symbol)
        found = self._venue.trades(
            market_id, since_ms, lambda what, fn: self._call(f"fills {symbol} {what}", fn)
        )
        return sorted(found, key=lambda pair: pair[1].time_ms)  # stable: the exchange's order within a ms

    def balances(self) -> list[BalanceLine]:
        return self._venue.balances(lambda what, fn: self._call(f"balances {what}", fn))

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            close()

    # Calls, retries, classification --------------------------------------------------------

    def _market_id(self, symbol: str, *, gated: bool = False) -> str:
        if self._markets is None:
            markets = self._call("load_markets", lambda: self._client.load_markets(), gated=gated)
            self._markets = _market_ids(markets)
        try:
            return self._markets[symbol]
        except KeyError:
            raise BrokerError(
                f"{self.exchange} lists no spot market {symbol!r}", reason="unknown_symbol"
            ) from None

    def _once(self, fn: Callable[[], T]) -> T:
        self._status, self._headers, self._body = None, {}, ""
        return fn()

    def _call(self, where: str, fn: Callable[[], T], *, gated: bool = False) -> T:
        """`fn` (one request) with retries of transient failures. A refusal raises BrokerError,
        an order the exchange does not have raises _Absent, exhausted retries BrokerUnavailable.
        `gated`: the gate is asked before every attempt, and a closed gate raises Halted."""
        failure: _Failure | None = None
        for attempt in range(1, self._max_attempts + 1):
            if gated and not self._gate():
                logger.warning("broker_halted", exchange=self.exchange, call=where, attempt=attempt)
                raise Halted(f"{where}: the kill switch closed the gate; nothing sent (attempt {attempt})")
            try:
                return self._once(fn)
            except (ccxt.BaseError, OrderAbsent) as error:
                failure = self._failure(error)
            if failure.kind == _NOT_FOUND:
                raise _Absent(failure.message)
            if not failure.transient:
                self._refused(where, failure)
            self._reported(where, failure, attempt)
            if attempt == self._max_attempts:
                break
            wait = self._wait(failure, attempt)
            if wait is None:
                break
            self._sleep(wait)
        assert failure is not None
        raise BrokerUnavailable(f"{where}: failed ({failure.kind}): {failure.message}")

    def _lookup(self, intent: OrderIntent, market_id: str, where: str) -> OrderReport | None:
        """After a submit's unknown outcome: the order as the exchange holds it, None when it
        definitely holds none, OutcomeUnknown when it cannot be asked."""
        cid = intent.client_order_id
        try:
            raw = self._call(f"{where} lookup", lambda: self._venue.query(market_id, cid))
        except _Absent:
            logger.info("broker_order_absent", exchange=self.exchange, call=where)
            return None
        except BrokerError as error:
            raise OutcomeUnknown(
                f"{where}: the answer was lost and the order could not be looked up: {error}"
            ) from None
        logger.info("broker_order_found", exchange=self.exchange, call=where)
        return self._venue.report(raw, intent.symbol)

    def _failure(self, error: Exception) -> _Failure:
        status = self._status
        if isinstance(error, OrderAbsent):
            return _Failure(kind=_NOT_FOUND, message=self._redact(error), status=status)
        code = self._venue.error_code(self._body) if status is not None else None
        message = self._redact(self._venue.error_text(self._body) if status is not None else "")
        if not message:
            message = self._redact(f"{type(error).__name__}: {error}")
        retry_after = _header_float(self._headers, "Retry-After") if status is not None else None
        if status == 418:
            kind = BANNED
        elif status == 429 or code in self._venue.rate_limit_codes:
            kind = RATE_LIMITED
        elif status is not None and status >= 500:
            kind = SERVER_ERROR
        elif isinstance(error, ccxt.RequestTimeout) or code in self._venue.unknown_outcome_codes:
            kind = TIMEOUT
        elif (
            code in self._venue.not_found_codes
            or status in self._venue.not_found_statuses
            or isinstance(error, ccxt.OrderNotFound)
        ):
            kind = _NOT_FOUND
        elif status == 401 or code in self._venue.auth_codes or isinstance(error, ccxt.AuthenticationError):
            kind = _AUTH
        elif status is None and isinstance(error, ccxt.NetworkError):
            kind = NETWORK
        elif status is not None and status < 300:
            # A 2xx answer ccxt could not make sense of: whatever it was, it may have been done.
            kind = SERVER_ERROR
        else:
            kind = _REFUSED
        return _Failure(kind=kind, message=message, status=status, retry_after_s=retry_after)

    def _reported(self, where: str, failure: _Failure, attempt: int) -> None:
        detail = f"{where}: {failure.message}"
        if failure.status is not None:
            detail = f"{where}: HTTP {failure.status}: {failure.message}"
        logger.warning(
            "broker_attempt_failed", exchange=self.exchange, kind=failure.kind, attempt=attempt, detail=detail
        )
        self._on_error(failure.kind, detail)

    def _refused(self, where: str, failure: _Failure) -> NoReturn:
        reason = "exchange_auth_failed" if failure.kind == _AUTH else "exchange_rejected"
        logger.warning("broker_refused", exchange=self.exchange, call=where, detail=failure.message)
        raise BrokerError(f"{where}: the exchange refused: {failure.message}", reason=reason)

    def _wait(self, failure: _Failure, attempt: int) -> float | None:
        """Seconds to wait before the next attempt; None when that is more than max_wait_s."""
        ceiling = min(self._max_delay_s, self._base_delay_s * 2 ** (attempt - 1))
        wait = self._rng.uniform(ceiling / 2, ceiling)
        if failure.retry_after_s is not None:
            wait = max(wait, failure.retry_after_s)
        elif failure.kind == BANNED:
            wait = max(wait, self._ban_delay_s)
        if wait > self._max_wait_s:
            logger.warning(
                "broker_wait_too_long", exchange=self.exchange, kind=failure.kind, wait_s=round(wait, 3)
            )
            return None
        return wait


class _Absent(BrokerError):
    """The exchange holds no such order (internal: fetch_order answers None, cancel looks)."""

    reason = "order_not_found"


# Conversions -------------------------------------------------------------------------------


def _market_ids(markets: Mapping[str, Any]) -> dict[str, str]:
    """Every name a spot market goes by here: the exchange id (BTCUSDT, BTC-USD), the same without
    separators (BTCUSD) and ccxt's unified symbol (BTC/USDT)."""
    ids: dict[str, str] = {}
    for market in markets.values():
        if not market.get("spot", True):
            continue
        market_id = str(market["id"])
        for name in (re.sub(r"[-_/]", "", market_id), str(market["symbol"]), market_id):
            ids[name] = market_id
    return ids


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
