"""Our WebSocket client for Binance-style market streams.

Not ccxt.pro: its unified OHLCV drops the close flag, the event time and the exact decimal
strings, all of which ingestion needs. One `StreamConnection` carries at most the exchange's
streams-per-connection limit, subscribes within its control-message rate, reconnects with
exponential backoff and jitter, and reconnects on its own before the exchange's 24 h cut.

The protocol itself (RFC 6455, client side) is `MarketDataProtocol`, an asyncio `Protocol`
that hands every complete text or binary message to `on_frame` straight from
`data_received`. A general-purpose client (aiohttp was used before) wraps each message in an
object, puts it on a queue and wakes a task awaiting `receive()`: about 5 µs a message, a third
of what the engine then spends on it, paid a thousand times when candles close together.
This one does no more than the protocol asks of a client: it masks what it sends, reads
fragmented messages, answers pings, pings a quiet server (and gives it up when no answer
comes), performs the closing handshake from either side, and fails the connection on what a
server must not send (masked or reserved-bit frames, fragmented or oversized control frames,
text that is not UTF-8). No extension is offered, so none is in use (no compression).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

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
# Messages handed to `on_frame` before the protocol lets the event loop run other work (the
# candle writers) and then goes on with what it has already received. 48 rather than 128: the
# first closes of a burst reach the writers sooner (1,000 symbols, A/B twice: p50 29.0/27.6 ms
# against 36.2/31.0, p95 44.1/38.7 against 53.3/38.2; 100 symbols unchanged).
YIELD_EVERY = 48
# A message larger than this fails the connection (1009): no market-data event comes near.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONNECT_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0  # for the server's answer to our closing frame

# Opcodes and close codes (RFC 6455 5.2, 7.4.1).
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL_CLOSURE, GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, MESSAGE_TOO_BIG = 1000, 1001, 1002, 1007, 1009
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NO_STATUS_CODES = (1005, 1006, 1015)  # never sent in a closing frame


class StreamClosed(ConnectionError):
    """The connection ended: closed by either side, lost, or failed for a protocol error."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


def mask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the 4-byte masking `key` repeated (RFC 6455 5.3); its own inverse."""
    size = len(payload)
    if not size:
        return b""
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(size, "little")


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = None) -> bytes:
    """A frame as a client sends it: masked with a fresh random key (or `key`)."""
    key = os.urandom(4) if key is None else key
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + key + mask(payload, key)


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to the Sec-WebSocket-Key `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()).decode()  # noqa: S324


class MarketDataProtocol(asyncio.Protocol):
    """One WebSocket connection, client side. `on_frame` gets the payload of every text or
    binary message (bytes; a text message that is not ASCII is decoded, which checks its
    UTF-8) in order, from the event loop; it must not raise. `closed` completes when the
    connection has ended, with `StreamClosed` saying how (or the error that ended it)."""

    def __init__(
        self,
        *,
        on_frame: Callable[[str | bytes], None],
        host: str,
        resource: str,
        heartbeat: float | None = 20.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._on_frame = on_frame
        self._host = host
        self._resource = resource
        self._heartbeat = heartbeat
        self._key = base64.b64encode(os.urandom(16)).decode()
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buffer = b""
        self._offset = 0
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._paused = False  # reading paused while messages already received wait their turn
        self._close_sent = False
        self._close_received: tuple[int, str] | None = None
        self._ending: StreamClosed | BaseException | None = None
        self._last_received = time.monotonic()
        self._ping_handle: asyncio.TimerHandle | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self.messages = 0

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = (
            f"GET {self._resource} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        if self._offset < len(self._buffer):
            self._buffer = self._buffer[self._offset :] + data
        else:
            self._buffer = data
        self._offset = 0
        if not self.handshake.done():
            self._read_handshake()
            if not self.handshake.done() or self.handshake.exception() is not None:
                return
        if not self._paused:
            self._read_messages()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._ping_handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        if self._ending is None:
            if self._close_received is not None:
                code, reason = self._close_received
                self._ending = StreamClosed(f"closed (code {code}{': ' + reason if reason else ''})", code)
            elif exc is not None:
                self._ending = StreamClosed(f"connection lost: {type(exc).__name__}: {exc}")
            else:
                self._ending = StreamClosed("connection lost without a closing handshake")
        if not self.handshake.done():
            self.handshake.set_exception(self._ending)
            self.handshake.exception()  # retrieved: `closed` carries it too
        if not self.closed.done():
            self.closed.set_exception(self._ending)
            if self.handshake.exception() is not None:
                self.closed.exception()  # raised by the handshake already: retrieved

    # -- sending -------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        self._send(TEXT, payload)

    def ping(self, payload: bytes = b"") -> None:
        self._send(PING, payload)

    def close(self, code: int = NORMAL_CLOSURE, reason: bytes = b"") -> None:
        """Start the closing handshake; the transport is closed when the server answers, or
        after `CLOSE_TIMEOUT_S` without an answer."""
        if self._close_sent or self.transport is None or self.transport.is_closing():
            return
        self._send(CLOSE, struct.pack("!H", code) + reason[:123])
        self._close_sent = True
        if self._ending is None:
            self._ending = StreamClosed(
                f"closed by us (code {code}{': ' + reason.decode() if reason else ''})", code
            )
        if self._close_received is not None:
            self.transport.close()
        else:
            self._close_handle = self._loop.call_later(CLOSE_TIMEOUT_S, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self._close_sent:
            return
        self.transport.write(client_frame(opcode, payload))

    # -- reading -------------------------------------------------------------------------

    def _read_handshake(self) -> None:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > 65536:
                self._fail_handshake("the handshake answer has no end")
            return
        lines = buffer[:end].decode("latin-1").split("\r\n")
        self._buffer, self._offset = buffer[end + 4 :], 0
        status = lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = status.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            self._fail_handshake(f"handshake refused: {status[:200]}")
        elif headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in {
            token.strip().lower() for token in headers.get("connection", "").split(",")
        }:
            self._fail_handshake("handshake answer without Upgrade: websocket")
        elif headers.get("sec-websocket-accept") != accept_key(self._key):
            self._fail_handshake("handshake answer with a wrong Sec-WebSocket-Accept")
        elif headers.get("sec-websocket-extensions"):
            self._fail_handshake(
                f"an extension we did not offer: {headers['sec-websocket-extensions'][:100]}"
            )
        else:
            self.handshake.set_result(None)
            self._schedule_ping()

    def _fail_handshake(self, reason: str) -> None:
        self._ending = StreamClosed(reason)
        self.handshake.set_exception(self._ending)
        self.abort()

    def _read_messages(self) -> None:
        """Hand over every complete message received, `YIELD_EVERY` at a time: after that many,
        reading pauses and the rest waits for one turn of the event loop (`_resume`), so that
        the writers start on a burst while it is still being read."""
        on_frame = self._on_frame
        buffer, offset = self._buffer, self._offset
        end = len(buffer)
        handed = 0
        try:
            while end - offset >= 2:
                first, second = buffer[offset], buffer[offset + 1]
                size = second & 0x7F
                start = offset + 2
                if size == 126:
                    if end - offset < 4:
                        break
                    size = (buffer[start] << 8) | buffer[start + 1]
                    start += 2
                elif size == 127:
                    if end - offset < 10:
                        break
                    size = int.from_bytes(buffer[start : start + 8], "big")
                    start += 8
                if second & 0x80 or first & 0x70 or size > MAX_MESSAGE_BYTES:
                    self._offset = offset
                    self._fail_on_header(first, second, size)
                    return
                stop = start + size
                if stop > end:
                    break
                payload = buffer[start:stop]
                offset = stop
                if first == 0x81 and not self._fragments:  # a whole text message: the stream's
                    self.messages += 1
                    on_frame(payload if payload.isascii() else payload.decode())
                    handed += 1
                    if handed >= YIELD_EVERY:
                        if end - offset >= 2:
                            self._pause()
                        break
                elif not self._other_frame(first, payload):
                    self._offset = offset
                    return
        except UnicodeDecodeError:
            self._offset = offset
            self._fail(INVALID_DATA, "a text message that is not UTF-8")
            return
        self._offset = offset

    def _pause(self) -> None:
        assert self.transport is not None
        if not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        # Messages received before the connection ended are still handed over.
        self._paused = False
        if self.transport is None:
            return
        try:
            self._read_messages()
        except Exception as exc:  # noqa: BLE001 - from on_frame: end this connection, not the loop
            self._ending = exc
            self.abort()
            return
        if not self._paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def _fail_on_header(self, first: int, second: int, size: int) -> None:
        if second & 0x80:
            self._fail(PROTOCOL_ERROR, "a masked frame from the server")
        elif first & 0x70:
            self._fail(PROTOCOL_ERROR, "reserved bits set without an extension")
        else:
            self._fail(MESSAGE_TOO_BIG, f"a frame of {size} bytes")

    def _other_frame(self, first: int, payload: bytes) -> bool:
        """Anything but a whole text message: fragments, binary, control frames. False when
        the connection was failed."""
        opcode, fin = first & 0x0F, bool(first & 0x80)
        if opcode >= CLOSE:
            if not fin or len(payload) > 125:
                self._fail(PROTOCOL_ERROR, "a fragmented or oversized control frame")
                return False
            if opcode == PING:
                self._send(PONG, payload)
            elif opcode == CLOSE:
                return self._close_frame(payload)
            elif opcode != PONG:
                self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")
                return False
            return True
        if opcode == CONTINUATION:
            if not self._fragments:
                self._fail(PROTOCOL_ERROR, "a continuation frame outside a fragmented message")
                return False
        elif opcode in (TEXT, BINARY):
            if self._fragments:
                self._fail(PROTOCOL_ERROR, "a new message inside a fragmented one")
                return False
            self._fragment_opcode, self._fragment_size = opcode, 0
        else:
            self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            return False
        self._fragment_size += len(payload)
        if self._fragment_size > MAX_MESSAGE_BYTES:
            self._fail(MESSAGE_TOO_BIG, f"a message over {MAX_MESSAGE_BYTES} bytes")
            return False
        self._fragments.append(payload)
        if not fin:
            return True
        message = b"".join(self._fragments)
        self._fragments = []
        self.messages += 1
        if self._fragment_opcode == TEXT and not message.isascii():
            self._on_frame(message.decode())  # UnicodeDecodeError: failed by the caller
        else:
            self._on_frame(message)
        return True

    def _close_frame(self, payload: bytes) -> bool:
        if len(payload) == 1:
            self._fail(PROTOCOL_ERROR, "a closing frame with a one-byte body")
            return False
        code = struct.unpack("!H", payload[:2])[0] if payload else 1005
        if payload and (code < 1000 or code in _NO_STATUS_CODES or 1016 <= code < 3000 or code >= 5000):
            self._fail(PROTOCOL_ERROR, f"a closing frame with code {code}")
            return False
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            self._fail(INVALID_DATA, "a closing reason that is not UTF-8")
            return False
        self._close_received = (code, reason)
        assert self.transport is not None
        if self._close_sent:
            self.transport.close()  # the answer to ours: the handshake is complete
        else:
            # The server closes: answer with its code (none if it gave none), then end.
            self._send(CLOSE, payload[:2])
            self._close_sent = True
            self.transport.close()
        return False

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a closing frame if we can, then cut it."""
        logger.warning("ws_protocol_error", code=code, reason=reason)
        self._ending = StreamClosed(f"protocol error: {reason}", code)
        self._send(CLOSE, struct.pack("!H", code))
        self._close_sent = True
        self.abort()

    # -- keep-alive ----------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self._heartbeat:
            self._ping_handle = self._loop.call_later(self._heartbeat, self._keep_alive)

    def _keep_alive(self) -> None:
        """Every `heartbeat` s: a server quiet for that long is pinged, and given up when it
        has sent nothing (a pong or anything else) `heartbeat / 2` s later."""
        assert self._heartbeat is not None
        quiet_since = self._last_received
        if time.monotonic() - quiet_since < self._heartbeat:
            self._schedule_ping()
            return
        self.ping()
        self._ping_handle = self._loop.call_later(self._heartbeat / 2, self._check_answer, quiet_since)

    def _check_answer(self, quiet_since: float) -> None:
        if self._last_received == quiet_since:
            self._ending = StreamClosed(f"no answer to a ping within {self._heartbeat / 2:g} s")  # type: ignore[operator]
            self.abort()
        else:
            self._schedule_ping()


async def open_market_stream(
    url: str, *, on_frame: Callable[[str | bytes], None], heartbeat: float | None = 20.0
) -> MarketDataProtocol:
    """Connect to `url` (ws:// or wss://) and complete the opening handshake."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url}")
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        sock = await _connected_socket(loop, parts.hostname, port)
        try:
            _, protocol = await loop.create_connection(
                lambda: MarketDataProtocol(
                    on_frame=on_frame, host=host_header, resource=resource, heartbeat=heartbeat
                ),
                sock=sock,
                ssl=ssl.create_default_context() if secure else None,
                server_hostname=parts.hostname if secure else None,
            )
        except BaseException:
            sock.close()
            raise
        try:
            await protocol.handshake
        except BaseException:
            protocol.abort()
            raise
    return protocol


async def _connected_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A TCP socket connected to the first address of `host` that answers, its receive
    buffer enlarged before connecting (so that TCP's window scaling is negotiated for it)."""
    error: OSError | None = None
    for family, type_, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error or OSError(f"no address for {host}")


class StreamConnection:
    def __init__(
        self,
        *,
        profile: ExchangeProfile,
        streams: Sequence[str],
        on_frame: Callable[[str | bytes], None],
        on_connected: Callable[[], Coroutine[Any, Any, None]],
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
        self._label = label
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._heartbeat = heartbeat
        self.connects = 0
        self._ws: MarketDataProtocol | None = None
        # Monotonic times of this connection's reconnections (for storm detection).
        self.reconnects: deque[float] = deque(maxlen=1000)

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    def request_reconnect(self, reason: str) -> bool:
        """Close the current socket so that `run` reconnects (and catches up over REST):
        the assisted reconnect of a stale stream. False when not connected."""
        ws = self._ws
        if ws is None or ws.closed.done():
            return False
        logger.warning("ws_assisted_reconnect", connection=self._label, reason=reason)
        ws.close(GOING_AWAY, b"stale stream")
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set."""
        delay = self._backoff_initial
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._connect_and_read(stop)
            except (TimeoutError, OSError) as exc:
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
        ws = await open_market_stream(
            f"{self._profile.ws_url}/ws", on_frame=self._on_frame, heartbeat=self._heartbeat
        )
        self.connects += 1
        self._ws = ws
        catch_up: asyncio.Task[None] | None = None
        stopping = asyncio.create_task(stop.wait())
        try:
            await self._subscribe(ws)
            logger.info("ws_connected", connection=self._label, streams=len(self._streams))
            # Backfill what was missed while we were away; runs beside the reading.
            catch_up = asyncio.create_task(self._on_connected())
            # Frames are read by the protocol as they come; this waits for the connection to
            # end, for the stop, or for the age limit.
            waiters: set[asyncio.Future[Any]] = {ws.closed, stopping}
            done, _ = await asyncio.wait(
                waiters,
                timeout=self._profile.max_connection_age_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if ws.closed in done:
                ws.closed.result()  # how it ended: raise, and `run` reconnects
            elif not stop.is_set():
                logger.info("ws_rotating_before_exchange_cut", connection=self._label)
        finally:
            for task in (stopping, catch_up):
                if task is not None and not task.done():
                    task.cancel()
            if not ws.closed.done():
                ws.close(NORMAL_CLOSURE if stop.is_set() else GOING_AWAY)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({ws.closed}, timeout=CLOSE_TIMEOUT_S + 1)
                ws.abort()
            if ws.closed.done() and not ws.closed.cancelled():
                ws.closed.exception()  # retrieved: how it ended was reported above, if at all
            await asyncio.gather(stopping, return_exceptions=True)

    async def _subscribe(self, ws: MarketDataProtocol) -> None:
        interval = 1.0 / max(1, self._profile.max_control_messages_per_second - 1)
        for index in range(0, len(self._streams), SUBSCRIBE_CHUNK):
            if index:
                await asyncio.sleep(interval)
            if ws.closed.done():
                ws.closed.result()
            chunk = self._streams[index : index + SUBSCRIBE_CHUNK]
            request = {"method": "SUBSCRIBE", "params": chunk, "id": index // SUBSCRIBE_CHUNK + 1}
            ws.send_text(orjson.dumps(request))
