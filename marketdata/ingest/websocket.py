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
import socket
import time
from collections import deque
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
# Kernel receive buffer of a market-data socket. A close burst is a thousand frames of ~450
# bytes at once; with the default (auto-tuned from a small start) buffer the burst stalls in
# TCP flow control whenever the reader is busy parsing, and the sender refills it only when
# it gets round to it: measured as 4 ms pauses every 8 ms through a burst. 4 MiB holds
# several bursts (Linux caps it at net.core.rmem_max).
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Frames read before the reading task yields to the event loop (see `_read`).
YIELD_EVERY = 128


def market_data_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """Socket factory for the streams' connector: a socket with a large receive buffer, set
    before connecting so that TCP's window scaling is negotiated for it."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    return sock


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
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        # Monotonic times of this connection's reconnections (for storm detection).
        self.reconnects: deque[float] = deque(maxlen=1000)

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def request_reconnect(self, reason: str) -> bool:
        """Close the current socket so that `run` reconnects (and catches up over REST):
        the assisted reconnect of a stale stream. False when not connected."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        logger.warning("ws_assisted_reconnect", connection=self._label, reason=reason)
        task = asyncio.ensure_future(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"stale stream"))
        self._closing = task  # keep a reference until done
        return True

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
            self.reconnects.append(time.monotonic())
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
            self._ws = ws
            await self._subscribe(ws)
            logger.info("ws_connected", connection=self._label, streams=len(self._streams))
            # Backfill what was missed while we were away; runs beside the reading loop.
            catch_up = asyncio.create_task(self._on_connected())
            # Reading happens in its own task with no per-message timeout (a timeout per frame
            # costs more than parsing the frame); stopping and the age limit end it instead.
            reader = asyncio.create_task(self._read(ws))
            stopping = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    {reader, stopping},
                    timeout=self._profile.max_connection_age_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reader in done:
                    reader.result()  # the connection failed: raise, and `run` reconnects
                elif not stop.is_set():
                    logger.info("ws_rotating_before_exchange_cut", connection=self._label)
            finally:
                for task in (reader, stopping, catch_up):
                    if not task.done():
                        task.cancel()
                await asyncio.gather(reader, stopping, return_exceptions=True)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        on_frame = self._on_frame
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        handled = 0
        while True:
            message = await ws.receive()
            if message.type is text or message.type is binary:
                on_frame(message.data)
                handled += 1
                if handled % YIELD_EVERY == 0:
                    # Frames already buffered are returned without yielding to the loop, so a
                    # burst would be read to its end before the writer could start on it:
                    # let the writer take what has been read so far.
                    await asyncio.sleep(0)
            elif message.type == aiohttp.WSMsgType.ERROR:
                raise aiohttp.ClientError(f"websocket error: {ws.exception()}")
            elif message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                raise aiohttp.ClientError(f"closed by the exchange (code {ws.close_code})")

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        interval = 1.0 / max(1, self._profile.max_control_messages_per_second - 1)
        for index in range(0, len(self._streams), SUBSCRIBE_CHUNK):
            if index:
                await asyncio.sleep(interval)
            chunk = self._streams[index : index + SUBSCRIBE_CHUNK]
            request = {"method": "SUBSCRIBE", "params": chunk, "id": index // SUBSCRIBE_CHUNK + 1}
            await ws.send_str(orjson.dumps(request).decode())
