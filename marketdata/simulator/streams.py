"""Binance kline WebSocket streams: `/ws/<stream>`, `/stream?streams=a/b` (combined) and `/ws`
with SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY frames.

One ticker task drives every subscribed stream, in three steps per tick:

1. Close burst (synchronous, first): when simulated time has passed a candle's close, that
   candle's final frames (with their injected faults) are queued for every subscriber and
   handed to the sockets at once. They were prepared ahead: a candle's final values are fixed
   long before it closes, so step 3 of an earlier tick has already built and serialised them
   (once per stream, shared by every subscriber); the burst only queues and writes. Finals
   not prepared in time (just subscribed, faults changed) are built after the others left.
2. Updates of the forming candles, when they changed. Right after a close, that is the first
   update of every new candle: prepared ahead too (its values at the close instant are as
   fixed as the final's), so it follows the finals without being built in the burst.
3. Preparing the next final and the next candle's first update of every stream (rebuilt if
   the faults changed since), and the next 4-hour chunk of subscribed symbols shortly before
   it is needed. After a close burst this waits `_AFTER_BURST_S` (at most a quarter of the
   time to the next boundary): building a thousand finals and updates takes tens of ms of
   CPU, which would otherwise compete with the burst's receivers on the machine they share
   with the simulator (tests, benchmarks); an exchange's own work never takes our cores, and
   the preparing has the rest of the candle to get done.

Steps 2 and 3 run in slices of a few milliseconds and yield to the event loop between them;
when the next minute boundary (a possible close) comes during them, they stop and the ticker
starts over with the burst. The ticker also wakes at every minute boundary.

Event time `E` is the wall clock (ms) when the exchange hands the frame to the network: a
frame is kept serialised as head + tail (raw, and wrapped for combined streams), and the
digits of `E` are spliced between them frame by frame, right before the frame joins the bytes
of the next socket write, so the last frame of a burst of a thousand carries a later `E` than
the first. Exceptions: a duplicated final repeats the original's bytes (E included), and under
the stream-latency fault E is stamped when the frame is queued, before the added delay.
`t`/`T` are simulated candle times.

Writes bypass aiohttp's `send_frame` (a coroutine and a syscall per frame): each connection's
outbox is drained synchronously into the transport, every message its own WebSocket text frame
(unmasked, uncompressed, as a server frames them), about 16 KiB of frames per write (a
thousand one-frame writes made the burst spread over 3-13 ms and the delivery jittery), up to a
write-buffer limit. The connection's writer task sends what the ticker did not (method replies,
frames held by the latency fault or by a full buffer) and pings. Garbage collection waits while
a burst is sent and between stamping and writing (see `_gc_paused`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from marketdata.simulator.candles import CHECKPOINTS, Candle, checkpoint_at
from marketdata.simulator.clock import SimClock
from marketdata.simulator.config import SimConfig
from marketdata.simulator.faults import FaultState
from marketdata.simulator.intervals import KLINE_INTERVALS, MINUTE_MS, floor_to
from marketdata.simulator.market import Market
from marketdata.simulator.series import CHUNK_MS
from marketdata.simulator.symbols import SymbolSpec

logger = logging.getLogger(__name__)

_KLINE_STREAM = re.compile(r"^([a-z0-9]+)@kline_([0-9]+[a-zA-Z])$")
_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_MAX_OUTBOX = 200_000  # frames queued for a client that does not read: it is dropped
_WRITE_BUFFER_LIMIT = 1 << 20  # bytes in the transport's buffer before the outbox waits
_WRITE_CHUNK = 16 * 1024  # bytes of frames per socket write
_BURST_FLUSH_STREAMS = 32  # a close burst is written as it is queued, every this many streams
_DRAIN_POLL_S = 0.005  # how often a writer blocked by a full buffer looks again
# Kernel send buffer of a stream connection. An exchange's servers push a close burst (a
# thousand frames at once) into a fast network; with the default auto-tuned buffer the burst
# waited in this process's user-space buffer instead, refilled only between its other work:
# 4 ms pauses every 8 ms, which is the simulator's latency, not the exchange's.
_SEND_BUFFER_BYTES = 4 * 1024 * 1024
_SLICE_S = 0.002  # background work (updates, preparing finals) between two yields
# Wall time a close burst gets to reach its clients before the next ones are prepared (step 3).
_AFTER_BURST_S = 0.1
_CLOSE_POLICY = 1008
_KLINE_HEAD = b'{"e":"kline","E":'
_E_DIGITS = 13  # wall-clock ms have 13 digits from 2001 to 2286
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def wall_ms() -> int:
    """The wall clock in ms, as `E` carries it."""
    return time.time_ns() // 1_000_000


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection inside: a full pass in a process with Django loaded takes
    ~100 ms, which must fall neither between stamping E and the write nor inside a burst. A
    pending collection runs at the next allocation after it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Counters:
    connections: int = 0
    frames_sent: int = 0
    final_frames: int = 0
    drops: int = 0
    closed_for_limits: int = 0
    rest_requests: int = 0
    rest_faults: int = 0
    rest_rate_limited: int = 0
    order_requests: int = 0  # POST /api/v3/order that reached the handler (not the faulted ones)
    order_requests_faulted: int = 0  # POST /api/v3/order answered by an injected rest_error
    order_answers_withheld: int = 0  # accepted orders whose answer the order_timeout fault held
    orders_count_limited: int = 0  # placements refused with -1015 (unfilled-order count)


@dataclass(frozen=True, slots=True)
class Frame:
    """A kline event frame serialised but for its `E`: sent as head + E digits + tail.
    `again`: not a frame of its own but the previous frame's bytes once more (duplicates)."""

    head: bytes  # as /ws sends it
    tail: bytes
    combined_head: bytes  # wrapped for /stream: {"stream": …, "data": …}
    combined_tail: bytes
    again: bool = False


_AGAIN = Frame(b"", b"", b"", b"", again=True)


@dataclass(slots=True)
class PreparedFinal:
    """What a stream sends when candle `open_ms` closes, built ahead under fault settings
    `generation`: its frames in order (none when silenced) and the late final to send after
    the next update (out-of-order fault)."""

    open_ms: int
    generation: int
    frames: list[Frame] = field(default_factory=list)
    finals: int = 0
    late_final: Frame | None = None


@dataclass(slots=True)
class PreparedUpdate:
    """The update a stream sends at update key `key` (see `StreamHub._update`), built ahead
    under fault settings `generation`: the first update of the candle opening at `key[0]`."""

    key: tuple[int, int]
    generation: int
    frames: list[Frame]


@dataclass(eq=False)
class KlineStream:
    name: str
    spec: SymbolSpec
    interval: str
    interval_ms: int
    last_final_open: int
    subscribers: set[Connection] = field(default_factory=set)
    last_update: tuple[int, int] | None = None
    late_finals: list[Frame] = field(default_factory=list)
    prepared: PreparedFinal | None = None
    prepared_update: PreparedUpdate | None = None

    def frame(self, body: bytes, *, first_half: bool = False) -> Frame:
        """A frame of the event `{"e":"kline","E":…,` + the rest of `body` (the event's other
        keys, serialised). `first_half`: only the first half of the event's bytes (invalid
        JSON), the same bytes as cutting the stamped event, E having its 13 digits."""
        tail = b"," + body[1:]
        if first_half:
            whole = len(_KLINE_HEAD) + _E_DIGITS + len(tail)
            tail = tail[: max(0, whole // 2 - len(_KLINE_HEAD) - _E_DIGITS)]
        wrapper = b'{"stream":"' + self.name.encode() + b'","data":' + _KLINE_HEAD
        return Frame(_KLINE_HEAD, tail, wrapper, tail + b"}")


def _text_header(length: int) -> bytes:
    """The header of an unmasked, final, uncompressed WebSocket text frame (RFC 6455 5.2)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return _HEADER_16(0x81, 126, length)
    return _HEADER_64(0x81, 127, length)


class Connection:
    def __init__(
        self, hub: StreamHub, ws: web.WebSocketResponse, request: web.Request, *, combined: bool
    ) -> None:
        self.hub = hub
        self.ws = ws
        self.request = request
        self.combined = combined
        self.subscriptions: dict[str, None] = {}  # ordered set, as LIST_SUBSCRIPTIONS shows it
        # (monotonic time queued, bytes or head, tail or None when the bytes are final, again)
        self._outbox: deque[tuple[float, bytes, bytes | None, bool]] = deque()
        self._last_sent = b""
        self._wake = asyncio.Event()
        self._incoming: deque[float] = deque(maxlen=hub.config.max_incoming_per_s)
        now = time.monotonic()
        self._next_ping = now + hub.config.ping_interval_s
        self._awaiting_pong_since: float | None = None
        self.writer: asyncio.Task[None] | None = None
        self.closing: asyncio.Task[bool] | None = None

    def close(self, code: int, reason: bytes) -> asyncio.Task[bool]:
        """Close with a handshake from outside the reading task (which then waits for it)."""
        if self.closing is None:
            self.closing = asyncio.create_task(self.ws.close(code=code, message=reason))
        return self.closing

    def enqueue(self, data: bytes) -> None:
        """Queue a frame sent as it is (method replies)."""
        self._outbox.append((time.monotonic(), data, None, False))
        self._queued()

    def enqueue_frames(self, frames: Iterable[Frame]) -> None:
        """Queue kline frames; E is stamped when each is written (see `flush`), or now under
        the latency fault."""
        now = time.monotonic()
        append = self._outbox.append
        stamp = self.hub.faults.ws_latency_ms > 0
        stamped_at = self.hub.wall_ms() if stamp else 0
        combined = self.combined
        for frame in frames:
            if frame.again:
                append((now, b"", None, True))
                continue
            head, tail = (frame.combined_head, frame.combined_tail) if combined else (frame.head, frame.tail)
            if stamp:
                append((now, b"%b%d%b" % (head, stamped_at, tail), None, False))
            else:
                append((now, head, tail, False))
        self._queued()

    def _queued(self) -> None:
        if len(self._outbox) > _MAX_OUTBOX:
            logger.warning("stream client %s does not read; dropped", self.request.remote)
            self._outbox.clear()
            self.abort()
        self._wake.set()

    def flush(self) -> None:
        """Hand every frame that is due to the socket, in order, each its own WebSocket
        message. E is stamped into each frame right before it joins the bytes of the next
        socket write (writes of about `_WRITE_CHUNK` bytes: one syscall per frame costs more
        than it saves). Stops at the write-buffer limit; the writer task goes on when the
        client has read."""
        with _gc_paused():
            self._flush()

    def _flush(self) -> None:
        transport = self.request.transport
        outbox = self._outbox
        if transport is None or transport.is_closing() or self.ws.closed:
            outbox.clear()
            return
        latency = self.hub.faults.ws_latency_ms / 1000
        now = time.monotonic()
        write, buffered, stamp = transport.write, transport.get_write_buffer_size, self.hub.wall_ms
        last, sent, size = self._last_sent, 0, 0
        parts: list[bytes] = []
        while outbox and buffered() < _WRITE_BUFFER_LIMIT and not transport.is_closing():
            queued, data, tail, again = outbox[0]
            if latency and queued + latency > now:
                break  # each frame leaves `latency` after it was queued
            outbox.popleft()
            if again:
                data = last
            elif tail is not None:
                data = b"%b%d%b" % (data, stamp(), tail)
            parts.append(_text_header(len(data)))
            parts.append(data)
            last = data
            sent += 1
            size += len(data)
            if size >= _WRITE_CHUNK:
                write(b"".join(parts))
                parts.clear()
                size = 0
        if parts and not transport.is_closing():
            write(b"".join(parts))
        self._last_sent = last
        self.hub.counters.frames_sent += sent

    def _next_flush(self, now: float) -> float:
        """When the outbox (not empty) can be written next (monotonic)."""
        transport = self.request.transport
        if transport is not None and transport.get_write_buffer_size() >= _WRITE_BUFFER_LIMIT:
            return now + _DRAIN_POLL_S
        latency = self.hub.faults.ws_latency_ms / 1000
        return self._outbox[0][0] + latency if latency else now

    def abort(self) -> None:
        """Cut the TCP connection without a closing handshake (a network failure)."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def allow_incoming(self) -> bool:
        """Binance: more than `max_incoming_per_s` messages (pings, pongs and JSON frames) in
        a second closes the connection."""
        now = time.monotonic()
        window = self._incoming
        if len(window) == window.maxlen and now - window[0] < 1.0:
            return False
        window.append(now)
        return True

    def pong_received(self) -> None:
        self._awaiting_pong_since = None

    async def write_loop(self) -> None:
        """Writes what the ticker did not (method replies, frames delayed by the latency
        fault or by a full write buffer), pings, and drops clients that stopped answering."""
        ws, config = self.ws, self.hub.config
        try:
            while not ws.closed:
                now = time.monotonic()
                deadline = self._next_ping
                if self._awaiting_pong_since is not None:
                    deadline = min(deadline, self._awaiting_pong_since + config.pong_timeout_s)
                if self._outbox:
                    deadline = min(deadline, self._next_flush(now))
                if deadline > now:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(deadline - now):
                            await self._wake.wait()
                self._wake.clear()
                self.flush()
                now = time.monotonic()
                if (
                    self._awaiting_pong_since is not None
                    and now - self._awaiting_pong_since >= config.pong_timeout_s
                ):
                    logger.info("stream client %s did not answer pings; dropped", self.request.remote)
                    self.abort()
                    return
                if now >= self._next_ping:
                    await ws.ping()
                    if self._awaiting_pong_since is None:
                        self._awaiting_pong_since = now
                    self._next_ping = now + config.ping_interval_s
        except (ConnectionError, RuntimeError):
            self.abort()


def _enlarge_send_buffer(request: web.Request) -> None:
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)


class _Pacer:
    """Background work in slices of `_SLICE_S` with a yield to the event loop between them;
    a pass stops once simulated time reaches the next minute boundary (a close burst)."""

    def __init__(self, clock: SimClock, now_ms: int) -> None:
        self._clock = clock
        self._boundary = floor_to(now_ms, MINUTE_MS) + MINUTE_MS
        self._slice_end = time.perf_counter() + _SLICE_S

    def slice_over(self) -> bool:
        return time.perf_counter() >= self._slice_end

    async def pause(self) -> bool:
        """Yield; False when the pass must stop for a close."""
        await asyncio.sleep(0)
        self._slice_end = time.perf_counter() + _SLICE_S
        return self._clock.now_ms() < self._boundary


class StreamHub:
    def __init__(
        self, *, market: Market, clock: SimClock, faults: FaultState, config: SimConfig, counters: Counters
    ) -> None:
        self.market = market
        self.clock = clock
        self.faults = faults
        self.config = config
        self.counters = counters
        self.connections: set[Connection] = set()
        self.streams: dict[str, KlineStream] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._prefetched: set[tuple[int, int]] = set()
        self.wall_ms: Callable[[], int] = wall_ms  # the clock of E (tests replace it)

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run_ticks()), asyncio.create_task(self._run_drops())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        closing = [connection.close(1001, b"Server shutting down") for connection in self.connections]
        if closing:
            await asyncio.wait(closing, timeout=2.0)
        for connection in list(self.connections):
            connection.abort()

    # Connections --------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        if request.path.startswith("/stream"):
            combined, names = True, request.query.get("streams", "").split("/")
        else:
            combined, names = False, request.path.removeprefix("/ws").split("/")
        names = list(dict.fromkeys(name for name in names if name))
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 16, timeout=2.0)
        await ws.prepare(request)
        _enlarge_send_buffer(request)
        connection = Connection(self, ws, request, combined=combined)
        self.connections.add(connection)
        self.counters.connections += 1
        try:
            if len(names) > self.config.max_streams:
                await self._close_for_limits(connection, b"Too many streams")
                return ws
            self.subscribe(connection, names)
            connection.writer = asyncio.create_task(connection.write_loop())
            await self._read_loop(connection)
        finally:
            self._disconnect(connection)
        return ws

    async def _read_loop(self, connection: Connection) -> None:
        ws = connection.ws
        while True:
            message = await ws.receive()
            if message.type is WSMsgType.CLOSING and connection.closing is not None:
                # Shutdown: returning now would end the response before the handshake.
                await asyncio.wait([connection.closing], timeout=2.0)
                return
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if not connection.allow_incoming():
                await self._close_for_limits(connection, b"Too many messages")
                return
            if message.type is WSMsgType.PING:
                await ws.pong(message.data)
            elif message.type is WSMsgType.PONG:
                connection.pong_received()
            elif message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                reply = self._method(connection, message.data)
                if reply is None:
                    await self._close_for_limits(connection, b"Too many streams")
                    return
                connection.enqueue(orjson.dumps(reply))

    async def _close_for_limits(self, connection: Connection, reason: bytes) -> None:
        self.counters.closed_for_limits += 1
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(connection.ws.close(code=_CLOSE_POLICY, message=reason), 2.0)
        connection.abort()

    def _disconnect(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if connection.writer is not None:
            connection.writer.cancel()
        self.unsubscribe(connection, list(connection.subscriptions))

    def _method(self, connection: Connection, data: str | bytes) -> dict[str, Any] | None:
        """The answer to a method frame; None when it must close the connection."""
        try:
            request = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            return _ws_error(3, f"Invalid JSON: {error}", None)
        if not isinstance(request, dict):
            return _ws_error(2, "Invalid request: expected a JSON object", None)
        request_id = request.get("id")
        valid_id = request_id is None or (
            (isinstance(request_id, int) and not isinstance(request_id, bool) and request_id >= 0)
            or (isinstance(request_id, str) and len(request_id) <= 36)
        )
        if not valid_id:
            return _ws_error(2, "Invalid request: request ID must be an unsigned integer", None)
        method = request.get("method")
        if method is None:
            return _ws_error(2, "Invalid request: missing field `method`", request_id)
        if method not in _METHODS:
            expected = ", ".join(f"`{name}`" for name in _METHODS)
            return _ws_error(
                2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", request_id
            )
        params = request.get("params", [])
        if not isinstance(params, list):
            return _ws_error(2, "Invalid request: params must be an array", request_id)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(name, str) and name for name in params):
                return _ws_error(2, "Invalid request: params must be stream names (strings)", request_id)
            if method == "SUBSCRIBE":
                added = [name for name in dict.fromkeys(params) if name not in connection.subscriptions]
                if len(connection.subscriptions) + len(added) > self.config.max_streams:
                    return None
                self.subscribe(connection, added)
            else:
                self.unsubscribe(connection, params)
            return {"result": None, "id": request_id}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(connection.subscriptions), "id": request_id}
        if method == "SET_PROPERTY":
            if len(params) != 2 or params[0] != "combined":
                return _ws_error(0, "Unknown property", request_id)
            if not isinstance(params[1], bool):
                return _ws_error(1, "Invalid value type: expected Boolean", request_id)
            connection.combined = params[1]
            return {"result": None, "id": request_id}
        if len(params) != 1 or params[0] != "combined":
            return _ws_error(0, "Unknown property", request_id)
        return {"result": connection.combined, "id": request_id}

    def subscribe(self, connection: Connection, names: list[str]) -> None:
        now = self.clock.now_ms()
        for name in names:
            connection.subscriptions[name] = None
            stream = self.streams.get(name)
            if stream is None:
                stream = self._new_stream(name, now)
                if stream is None:
                    continue  # well-formed or not, Binance accepts it and sends nothing
                self.streams[name] = stream
            stream.subscribers.add(connection)

    def unsubscribe(self, connection: Connection, names: list[str]) -> None:
        for name in names:
            connection.subscriptions.pop(name, None)
            stream = self.streams.get(name)
            if stream is not None:
                stream.subscribers.discard(connection)
                if not stream.subscribers:
                    del self.streams[name]

    def _new_stream(self, name: str, now_ms: int) -> KlineStream | None:
        match = _KLINE_STREAM.match(name)
        if match is None:
            return None
        spec = self.market.symbol(match.group(1).upper())
        length = KLINE_INTERVALS.get(match.group(2))
        if spec is None or length is None or spec.stream_prefix != match.group(1):
            return None
        return KlineStream(
            name, spec, match.group(2), length, last_final_open=floor_to(now_ms, length) - length
        )

    async def _drop_all(self) -> None:
        self.counters.drops += 1
        for connection in list(self.connections):
            connection.abort()

    # Ticks --------------------------------------------------------------------------------

    async def _run_ticks(self) -> None:
        while True:
            now = self.clock.now_ms()
            try:
                await self.tick(now)
            except Exception:
                logger.exception("stream tick failed")
            after = self.clock.now_ms()
            next_minute = floor_to(after, MINUTE_MS) + MINUTE_MS
            if floor_to(after, MINUTE_MS) > floor_to(now, MINUTE_MS):
                continue  # a boundary passed during the tick: its burst goes out now
            delay = min(self.config.update_interval_s, self.clock.seconds_until(next_minute))
            await asyncio.sleep(max(delay, 0.001))

    async def _run_drops(self) -> None:
        every: float | None = None
        next_drop = 0.0
        while True:
            await asyncio.sleep(0.05)
            if self.faults.ws_drop_every_s != every:
                every = self.faults.ws_drop_every_s
                next_drop = time.monotonic() + (every or 0.0)
            if every is not None and time.monotonic() >= next_drop:
                await self._drop_all()
                next_drop += every

    async def tick(self, now_ms: int) -> bool:
        """Everything simulated time `now_ms` calls for: the close burst, the updates, and the
        finals of the next closes prepared. False when a minute boundary came before the
        background part finished (the rest waits for the next tick)."""
        burst = self.send_closes(now_ms)
        if not await self.send_updates(now_ms):
            return False
        if burst:
            boundary = floor_to(now_ms, MINUTE_MS) + MINUTE_MS
            await self._let_burst_through(boundary)
            now_ms = max(now_ms, self.clock.now_ms())
            if now_ms >= boundary:
                return False
        return await self.prepare(now_ms)

    async def _let_burst_through(self, boundary: int) -> None:
        """Wait before preparing the next closes (step 3 of the module docstring)."""
        await asyncio.sleep(min(_AFTER_BURST_S, self.clock.seconds_until(boundary) / 4))

    def send_closes(self, now_ms: int) -> int:
        """The close burst: the final frames of every candle closed by `now_ms`, queued for
        every subscriber and handed to the sockets (E stamped frame by frame as written).
        Returns how many streams closed a candle."""
        with _gc_paused():
            return self._send_closes(now_ms)

    def _send_closes(self, now_ms: int) -> int:
        pending: dict[Connection, list[Frame]] = {}
        behind: list[KlineStream] = []  # finals not prepared: built once the others are out
        queued = 0
        for stream in list(self.streams.values()):
            open_ms = stream.last_final_open + stream.interval_ms
            if open_ms + stream.interval_ms > now_ms:
                continue  # its candle has not closed
            if not self._is_prepared(stream, open_ms):
                behind.append(stream)
                continue
            self._queue_closes(stream, now_ms, pending)
            queued += 1
            if queued % _BURST_FLUSH_STREAMS == 0:
                _send(pending)  # the first frames leave while the rest is queued
        for stream in behind:
            self._queue_closes(stream, now_ms, pending)
            queued += 1
            if queued % _BURST_FLUSH_STREAMS == 0:
                _send(pending)
        _send(pending)
        return queued

    def _queue_closes(self, stream: KlineStream, now_ms: int, pending: dict[Connection, list[Frame]]) -> None:
        """Add to `pending` the finals of every candle of `stream` closed by `now_ms`, as
        prepared or built now."""
        length = stream.interval_ms
        for open_ms in range(stream.last_final_open + length, floor_to(now_ms, length), length):
            prepared = stream.prepared if self._is_prepared(stream, open_ms) else None
            stream.last_final_open = open_ms
            stream.prepared = None
            if prepared is None:
                prepared = self._build_final(stream, open_ms)
            self.counters.final_frames += prepared.finals
            if prepared.late_final is not None:
                stream.late_finals.append(prepared.late_final)
            if prepared.frames:
                for connection in stream.subscribers:
                    pending.setdefault(connection, []).extend(prepared.frames)

    def _is_prepared(self, stream: KlineStream, open_ms: int) -> bool:
        prepared = stream.prepared
        return (
            prepared is not None
            and prepared.open_ms == open_ms
            and prepared.generation == self.faults.generation
        )

    async def send_updates(self, now_ms: int) -> bool:
        """An update of every forming candle that changed since its last one (then the late
        finals of the out-of-order fault); stops at the next minute boundary."""
        pacer = _Pacer(self.clock, now_ms)
        pending: dict[Connection, list[Frame]] = {}
        for stream in list(self.streams.values()):
            frames = self._update(stream, now_ms)
            if frames:
                for connection in stream.subscribers:
                    pending.setdefault(connection, []).extend(frames)
            if pacer.slice_over():
                _send(pending)
                if not await pacer.pause():
                    return False
        _send(pending)
        return True

    async def prepare(self, now_ms: int) -> bool:
        """Build the next final of every stream and the first update of the candle after it,
        where there is none (or one built under other fault settings), then prefetch the next
        4-hour chunk of subscribed symbols when it is near; stops at the next minute boundary."""
        pacer = _Pacer(self.clock, now_ms)
        generation = self.faults.generation
        for stream in list(self.streams.values()):
            open_ms = stream.last_final_open + stream.interval_ms
            built = False
            if not self._is_prepared(stream, open_ms):
                stream.prepared = self._build_final(stream, open_ms)
                built = True
            close_ms = open_ms + stream.interval_ms
            key = (close_ms, close_ms // MINUTE_MS * CHECKPOINTS)  # checkpoint 0 of its minute
            update = stream.prepared_update
            if update is None or update.key != key or update.generation != generation:
                stream.prepared_update = PreparedUpdate(
                    key, generation, self._build_update(stream, close_ms, key)
                )
                built = True
            if built and pacer.slice_over() and not await pacer.pause():
                return False
        return await self._prefetch(now_ms, pacer)

    def _build_final(self, stream: KlineStream, open_ms: int) -> PreparedFinal:
        faults, length = self.faults, stream.interval_ms
        prepared = PreparedFinal(open_ms, faults.generation)
        if faults.is_silenced(stream.name, open_ms):
            return prepared
        body = _body(stream, self.market.closed(stream.spec, length, open_ms, open_ms)[0])
        self._inject_malformed(stream, prepared.frames, body, open_ms, -1)
        frame = stream.frame(orjson.dumps(body))
        prepared.frames.append(frame)
        prepared.finals = 1
        if faults.duplicates(stream.name, open_ms):
            prepared.frames.append(_AGAIN)
        disorder = faults.out_of_order(stream.name, open_ms)
        if disorder == "stale-update":
            stale = self.market.forming(stream.spec, length, open_ms + length // 2)
            prepared.frames.append(stream.frame(orjson.dumps(_body(stream, stale))))
        elif disorder == "late-final":
            prepared.late_final = frame
        return prepared

    def _update(self, stream: KlineStream, now_ms: int) -> list[Frame]:
        length = stream.interval_ms
        current_open = floor_to(now_ms, length)
        update_key = (
            current_open,
            floor_to(now_ms, MINUTE_MS) // MINUTE_MS * CHECKPOINTS + checkpoint_at(now_ms),
        )
        if update_key == stream.last_update or self.faults.is_silenced(stream.name, current_open):
            return []
        stream.last_update = update_key
        prepared = stream.prepared_update
        if (
            prepared is not None
            and prepared.key == update_key
            and prepared.generation == self.faults.generation
        ):
            frames = list(prepared.frames)
        else:
            frames = self._build_update(stream, now_ms, update_key)
        frames.extend(stream.late_finals)
        stream.late_finals.clear()
        return frames

    def _build_update(self, stream: KlineStream, now_ms: int, update_key: tuple[int, int]) -> list[Frame]:
        """The frames of the forming candle's update at `now_ms` (its key `update_key`)."""
        body = _body(stream, self.market.forming(stream.spec, stream.interval_ms, now_ms))
        frames: list[Frame] = []
        self._inject_malformed(stream, frames, body, update_key[0], update_key[1])
        frames.append(stream.frame(orjson.dumps(body)))
        return frames

    def _inject_malformed(
        self, stream: KlineStream, frames: list[Frame], body: dict[str, Any], open_ms: int, frame_key: int
    ) -> None:
        kind = self.faults.malformed(stream.name, open_ms, frame_key)
        if kind is not None:
            frames.append(_malformed(stream, body, kind))

    async def _prefetch(self, now_ms: int, pacer: _Pacer) -> bool:
        """Generate the next 4-hour chunk of subscribed symbols a little before it is needed,
        in slices, so the ticks at a chunk boundary do not wait for it."""
        next_chunk = now_ms // CHUNK_MS + 1
        if (
            self.clock.seconds_until(next_chunk * CHUNK_MS) > 5.0
            and next_chunk * CHUNK_MS - now_ms > 20 * MINUTE_MS
        ):
            return True
        for stream in list(self.streams.values()):
            key = (stream.spec.index, next_chunk)
            if key in self._prefetched:
                continue
            self.market.minutes(stream.spec, next_chunk * CHUNK_MS, next_chunk * CHUNK_MS + MINUTE_MS)
            self._prefetched.add(key)
            if pacer.slice_over() and not await pacer.pause():
                return False
        if len(self._prefetched) > 100_000:
            self._prefetched = {key for key in self._prefetched if key[1] >= next_chunk}
        return True


def _send(pending: dict[Connection, list[Frame]]) -> None:
    """Queue each connection's frames and write them; empties `pending`."""
    for connection, frames in pending.items():
        connection.enqueue_frames(frames)
        connection.flush()
    pending.clear()


def _body(stream: KlineStream, candle: Candle) -> dict[str, Any]:
    """A kline event without its leading `e` and `E` (see `KlineStream.frame`)."""
    return {"s": stream.spec.name, "k": candle.stream_payload(stream.spec.name, stream.interval)}


def _malformed(stream: KlineStream, body: dict[str, Any], kind: str) -> Frame:
    if kind == "invalid-json":
        return stream.frame(orjson.dumps(body), first_half=True)
    kline = dict(body["k"])
    if kind == "missing-field":
        del kline["c"]
    elif kind == "wrong-type":
        kline["t"] = str(kline["t"])
        kline["n"] = str(kline["n"])
    else:
        kline["c"] = "not-a-number"
    return stream.frame(orjson.dumps({**body, "k": kline}))


def _ws_error(code: int, msg: str, request_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}
