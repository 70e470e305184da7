"""History over REST through ccxt, for backfilling what the streams missed.

ccxt's unified `fetch_ohlcv` returns floats, which would lose the exchange's exact decimal
strings, so this uses ccxt's raw endpoint for klines (`publicGetKlines`): same client, same
throttling and error mapping, exact strings.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import ccxt.async_support as ccxt_async
import structlog

from marketdata.core.klines import FrameError, Kline, parse_rest_row
from marketdata.core.timeframes import Timeframe
from marketdata.exchanges import ExchangeProfile
from marketdata.ingest.metrics import FRAMES_REJECTED

logger = structlog.get_logger(__name__)


def ccxt_client(profile: ExchangeProfile, *, async_client: bool = True, **config: Any) -> Any:
    """A ccxt client for `profile`, pointed at the profile's REST base URL."""
    module: Any = ccxt_async
    if not async_client:
        import ccxt

        module = ccxt
    options: dict[str, Any] = {
        "enableRateLimit": True,
        # Spot only: otherwise load_markets also asks the futures, margin and wallet APIs,
        # which neither the simulator nor a spot-only key serves.
        "options": {"fetchMarkets": ["spot"], "fetchCurrencies": False, "fetchMargins": False},
        **config,
    }
    if profile.rest_rate_limit_ms is not None:
        options["rateLimit"] = profile.rest_rate_limit_ms
    client = getattr(module, profile.ccxt_id)(options)
    api = client.urls["api"]
    for key in ("public", "private", "v3"):
        if key in api:
            api[key] = f"{profile.rest_url}/api/v3"
    return client


class KlineHistory:
    def __init__(self, profile: ExchangeProfile, *, max_attempts: int = 8) -> None:
        self._profile = profile
        self._client = ccxt_client(profile)
        self._max_attempts = max_attempts

    async def close(self) -> None:
        await self._client.close()

    async def server_time_ms(self) -> int:
        answer = await self._call("publicGetTime", {})
        return int(answer["serverTime"])

    async def fetch_closed(
        self, *, symbol: str, timeframe: Timeframe, first_ms: int, last_ms: int
    ) -> list[Kline]:
        """Closed candles with open times in [first_ms, last_ms], in time order."""
        now_ms = await self.server_time_ms()
        klines: list[Kline] = []
        start = first_ms
        while start <= last_ms:
            rows = await self._call(
                "publicGetKlines",
                {
                    "symbol": symbol,
                    "interval": timeframe.value,
                    "startTime": start,
                    "endTime": last_ms + timeframe.ms - 1,
                    "limit": self._profile.klines_limit,
                },
            )
            if not rows:
                break
            for row in rows:
                try:
                    kline = parse_rest_row(row, symbol=symbol, timeframe=timeframe, now_ms=now_ms)
                except FrameError as exc:
                    FRAMES_REJECTED.labels(exc.kind).inc()
                    logger.warning(
                        "rest_row_rejected", symbol=symbol, timeframe=timeframe.value, error=str(exc)
                    )
                    continue
                if kline.closed and first_ms <= kline.open_time_ms <= last_ms:
                    klines.append(kline)
            next_start = int(rows[-1][0]) + timeframe.ms
            if next_start <= start or len(rows) < self._profile.klines_limit:
                break
            start = next_start
        return klines

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        """Call a raw endpoint, waiting out rate limits and retrying transient failures."""
        delay = 0.5
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await getattr(self._client, method)(params)
            except (ccxt_async.DDoSProtection, ccxt_async.RateLimitExceeded) as exc:
                # 429 (slow down) and 418 (banned for a while): the exchange says how long.
                wait = self._retry_after() or delay
                logger.warning(
                    "rest_rate_limited", method=method, wait_s=wait, attempt=attempt, error=str(exc)[:200]
                )
            except (
                ccxt_async.ExchangeNotAvailable,
                ccxt_async.RequestTimeout,
                ccxt_async.NetworkError,
            ) as exc:
                wait = random.uniform(delay / 2, delay)  # noqa: S311 - jitter
                logger.warning(
                    "rest_retry", method=method, wait_s=round(wait, 3), attempt=attempt, error=str(exc)[:200]
                )
            if attempt == self._max_attempts:
                break
            await asyncio.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise RuntimeError(f"{method} failed after {self._max_attempts} attempts")

    def _retry_after(self) -> float | None:
        headers = self._client.last_response_headers or {}
        value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None
