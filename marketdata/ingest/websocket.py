"""Our WebSocket client for Binance-style market streams.

Not ccxt.pro: its unified OHLCV drops the close flag, the event time and the exact decimal
strings, all of which ingestion needs. One `StreamConnection` carries at most the exchange's
streams-per-connection limit, subscribes within its control-message rate, reconnects with
exponential backoff and jitter, and reconnects on its own before the exchange's 24 h cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import orjson
import structlog

from marketdata.exchanges import ExchangeProfile
from marketdata.ingest.metrics import WS_RECONNECTS

logger = structlog.get_logger(__name__)

# Streams per SUBSCRIBE frame: 1,024 streams take 4 frames, well inside 5 frames a second.
SUBSCRIBE_CHUNK = 256


class StreamConnection:
    def __init__(
        self,
        *,
        profile: ExchangeProfile,
        streams: Sequence[str],
        on_frame: Callable[[str | bytes], None],
        on_connected: Callable[[], Coroutine[Any, Any, None]],
        session: aiohttp.ClientSession,
        label: str,
        backoff_initial: float = 0.25,
        backoff_max: float = 30.0,
        heartbeat: float = 20.0,
    ) -> None:
        if len(streams) > profile.max_streams_per_connection:
            raise ValueError(
                f"{len(streams)} streams on one connection; {profile.name} allows "
                f"{profile.max_streams_per_connection}"
            )
        self._profile = profile
        self._streams = list(streams)
        self._on_frame = on_frame
        self._on_connected = on_connected
        self._session = session
        self._label = label
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._heartbeat = heartbeat
        self.connects = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set."""
        delay = self._backoff_initial
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._connect_and_read(stop)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                logger.warning(
                    "ws_connection_lost", connection=self._label, error=f"{type(exc).__name__}: {exc}"
                )
            if stop.is_set():
                break
            WS_RECONNECTS.labels(self._profile.name).inc()
            if time.monotonic() - started > 10:
                delay = self._backoff_initial  # it had been healthy: start backoff afresh
            # Full jitter: many clients dropped at once must not come back in lockstep.
            wait = random.uniform(0, delay)  # noqa: S311 - jitter, not cryptography
            logger.info("ws_reconnecting", connection=self._label, in_s=round(wait, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            delay = min(delay * 2, self._backoff_max)

    async def _connect_and_read(self, stop: asyncio.Event) -> None:
        url = f"{self._profile.ws_url}/ws"
        async with self._session.ws_connect(url, heartbeat=self._heartbeat, max_msg_size=0) as ws:
            self.connects += 1
            await self._subscribe(ws)
            logger.info("ws_connected", connection=self._label, streams=len(self._streams))
            # Backfill what was missed while we were away; runs beside the reading loop.
            catch_up = asyncio.create_task(self._on_connected())
            deadline = time.monotonic() + self._profile.max_connection_age_seconds
            try:
                while not stop.is_set():
                    if time.monotonic() >= deadline:
                        logger.info("ws_rotating_before_exchange_cut", connection=self._label)
                        return
                    try:
                        # A short timeout so `stop` and the age limit are noticed promptly.
                        message = await ws.receive(timeout=0.5)
                    except TimeoutError:
                        continue
                    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        self._on_frame(message.data)
                    elif message.type == aiohttp.WSMsgType.ERROR:
                        raise aiohttp.ClientError(f"websocket error: {ws.exception()}")
                    elif message.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.CLOSED,
                    ):
                        raise aiohttp.ClientError(f"closed by the exchange (code {ws.close_code})")
            finally:
                if not catch_up.done():
                    catch_up.cancel()

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval = 1.0 / max(1, self._profile.max_control_messages_per_second - 1)
        for index in range(0, len(self._streams), SUBSCRIBE_CHUNK):
            if index:
                await asyncio.sleep(interval)
            chunk = self._streams[index : index + SUBSCRIBE_CHUNK]
            request = {"method": "SUBSCRIBE", "params": chunk, "id": index // SUBSCRIBE_CHUNK + 1}
            await ws.send_str(orjson.dumps(request).decode())
