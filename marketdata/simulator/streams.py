"""Binance kline WebSocket streams: `/ws/<stream>`, `/stream?streams=a/b` (combined) and `/ws`
with SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY frames.

One ticker task advances every subscribed stream: when simulated time passes a candle's close
it builds that candle's final frame (once per stream, serialised once with orjson, shared by
every subscriber) and, when the forming candle has changed, an update. Each connection has one
writer task that drains its outbox, so a burst of a thousand closes at the same instant costs a
thousand serialisations and a tight send loop per connection, never a task per frame.

`E` in every event is the wall-clock time (ms) at which the frame was built, right before it
is queued for sending; `t`/`T` are simulated candle times."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
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
_CLOSE_POLICY = 1008
_PREFETCH_PER_TICK = 100


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


@dataclass(frozen=True, slots=True)
class Frame:
    raw: bytes  # as /ws sends it
    combined: bytes  # wrapped for /stream: {"stream": …, "data": …}


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

    def frame(self, event: dict[str, Any] | bytes) -> Frame:
        raw = event if isinstance(event, bytes) else orjson.dumps(event)
        return Frame(raw, b'{"stream":"' + self.name.encode() + b'","data":' + raw + b"}")


class Connection:
    def __init__(
        self, hub: StreamHub, ws: web.WebSocketResponse, request: web.Request, *, combined: bool
    ) -> None:
        self.hub = hub
        self.ws = ws
        self.request = request
        self.combined = combined
        self.subscriptions: dict[str, None] = {}  # ordered set, as LIST_SUBSCRIPTIONS shows it
        self._outbox: deque[tuple[float, bytes]] = deque()  # (monotonic time queued, frame)
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
        self._outbox.append((time.monotonic(), data))
        if len(self._outbox) > _MAX_OUTBOX:
            logger.warning("stream client %s does not read; dropped", self.request.remote)
            self.abort()
        self._wake.set()

    def enqueue_frame(self, frame: Frame) -> None:
        self.enqueue(frame.combined if self.combined else frame.raw)

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
        ws, config, faults = self.ws, self.hub.config, self.hub.faults
        try:
            while not ws.closed:
                if not self._outbox:
                    deadline = self._next_ping
                    if self._awaiting_pong_since is not None:
                        deadline = min(deadline, self._awaiting_pong_since + config.pong_timeout_s)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                            await self._wake.wait()
                self._wake.clear()
                outbox, latency = self._outbox, faults.ws_latency_ms / 1000
                if outbox and latency:
                    await asyncio.sleep(max(0.0, outbox[0][0] + latency - time.monotonic()))
                now = time.monotonic()
                sent = 0
                # Each frame leaves `latency` after it was queued; without latency, all at once.
                while outbox and (not latency or outbox[0][0] + latency <= now):
                    await ws.send_frame(outbox.popleft()[1], WSMsgType.TEXT)
                    sent += 1
                self.hub.counters.frames_sent += sent
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
        connection = Connection(self, ws, request, combined=combined)
        self.connections.add(connection)
        self.counters.connections += 1
        try:
            if len(names) > self.config.max_streams:
                await self._close_for_limits(connection, b"Too many streams")
                return ws
            self._subscribe(connection, names)
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
        self._unsubscribe(connection, list(connection.subscriptions))

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
                self._subscribe(connection, added)
            else:
                self._unsubscribe(connection, params)
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

    def _subscribe(self, connection: Connection, names: list[str]) -> None:
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

    def _unsubscribe(self, connection: Connection, names: list[str]) -> None:
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
            try:
                self.tick(self.clock.now_ms(), int(time.time() * 1000))
            except Exception:
                logger.exception("stream tick failed")
            now = self.clock.now_ms()
            next_minute = floor_to(now, MINUTE_MS) + MINUTE_MS
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

    def tick(self, now_ms: int, wall_ms: int) -> None:
        """Queue every frame that simulated time `now_ms` calls for, stamped E = `wall_ms`."""
        for stream in list(self.streams.values()):
            frames = self._advance(stream, now_ms, wall_ms)
            if frames:
                for connection in stream.subscribers:
                    for frame in frames:
                        connection.enqueue_frame(frame)
        self._prefetch(now_ms)

    def _advance(self, stream: KlineStream, now_ms: int, wall_ms: int) -> list[Frame]:
        faults, length = self.faults, stream.interval_ms
        frames: list[Frame] = []
        current_open = floor_to(now_ms, length)
        for open_ms in range(stream.last_final_open + length, current_open, length):
            stream.last_final_open = open_ms
            if faults.is_silenced(stream.name, open_ms):
                continue
            final = self.market.closed(stream.spec, length, open_ms, open_ms)[0]
            event = _event(stream, final, wall_ms)
            self._inject_malformed(stream, frames, event, open_ms, -1)
            frame = stream.frame(event)
            frames.append(frame)
            self.counters.final_frames += 1
            if faults.duplicates(stream.name, open_ms):
                frames.append(frame)
            disorder = faults.out_of_order(stream.name, open_ms)
            if disorder == "stale-update":
                stale = self.market.forming(stream.spec, length, open_ms + length // 2)
                frames.append(stream.frame(_event(stream, stale, wall_ms)))
            elif disorder == "late-final":
                stream.late_finals.append(frame)
        update_key = (
            current_open,
            floor_to(now_ms, MINUTE_MS) // MINUTE_MS * CHECKPOINTS + checkpoint_at(now_ms),
        )
        if update_key != stream.last_update and not faults.is_silenced(stream.name, current_open):
            stream.last_update = update_key
            event = _event(stream, self.market.forming(stream.spec, length, now_ms), wall_ms)
            self._inject_malformed(stream, frames, event, current_open, update_key[1])
            frames.append(stream.frame(event))
            frames.extend(stream.late_finals)
            stream.late_finals.clear()
        return frames

    def _inject_malformed(
        self, stream: KlineStream, frames: list[Frame], event: dict[str, Any], open_ms: int, frame_key: int
    ) -> None:
        kind = self.faults.malformed(stream.name, open_ms, frame_key)
        if kind is not None:
            frames.append(stream.frame(_malformed(event, kind)))

    def _prefetch(self, now_ms: int) -> None:
        """Generate the next 4-hour chunk of subscribed symbols a little before it is needed,
        spread over ticks, so the close burst at a chunk boundary does not wait for it."""
        next_chunk = now_ms // CHUNK_MS + 1
        if (
            self.clock.seconds_until(next_chunk * CHUNK_MS) > 5.0
            and next_chunk * CHUNK_MS - now_ms > 20 * MINUTE_MS
        ):
            return
        budget = _PREFETCH_PER_TICK
        for stream in self.streams.values():
            key = (stream.spec.index, next_chunk)
            if key in self._prefetched:
                continue
            if budget == 0:
                return
            self.market.minutes(stream.spec, next_chunk * CHUNK_MS, next_chunk * CHUNK_MS + MINUTE_MS)
            self._prefetched.add(key)
            budget -= 1
        if len(self._prefetched) > 100_000:
            self._prefetched = {key for key in self._prefetched if key[1] >= next_chunk}


def _event(stream: KlineStream, candle: Candle, wall_ms: int) -> dict[str, Any]:
    return {
        "e": "kline",
        "E": wall_ms,
        "s": stream.spec.name,
        "k": candle.stream_payload(stream.spec.name, stream.interval),
    }


def _malformed(event: dict[str, Any], kind: str) -> dict[str, Any] | bytes:
    if kind == "invalid-json":
        raw = orjson.dumps(event)
        return raw[: len(raw) // 2]
    kline = dict(event["k"])
    if kind == "missing-field":
        del kline["c"]
    elif kind == "wrong-type":
        kline["t"] = str(kline["t"])
        kline["n"] = str(kline["n"])
    else:
        kline["c"] = "not-a-number"
    return {**event, "k": kline}


def _ws_error(code: int, msg: str, request_id: Any) -> dict[str, Any]:
    return {"error": {"code": code, "msg": msg}, "id": request_id}
