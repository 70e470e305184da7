"""Close-burst latency probe: how late the simulator's final kline frames reach a client.

    python -m marketdata.simulator.probe --symbols 1000

starts `manage.py simexchange --port 0` in a separate process (or uses `--url` of a running
one), subscribes every symbol's `@kline_<interval>` stream on ONE connection (SUBSCRIBE frames
of at most 256 streams, 0.3 s apart, as Binance allows 5 messages a second), and for every
final frame (`"x":true`) of the next `--closes` close bursts records receipt wall time minus
the frame's `E` (ms). It prints p50/p95/max per burst and over all of them, and how long after
the simulated close instant (mapped to wall time through `/api/v3/time`, ~1 ms error) the
burst's first `E` was stamped and its last frame received.

Two clients:
- `raw` (default): a minimal WebSocket client on an asyncio Protocol that stamps receipt time
  when the bytes reach the process (`data_received`) and parses them only when the connection
  is quiet, so the figure is the exchange's own latency (E stamping to delivery through the
  kernel), not the client's.
- `aiohttp`: `ClientSession.ws_connect` and `await ws.receive()` per message, as
  `marketdata.ingest.websocket` reads; includes that client's per-message cost.

No Django imports: it only needs the standard library, aiohttp (for `--client aiohttp`) and
orjson."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIBE_CHUNK = 256
SUBSCRIBE_SPACING_S = 0.3
_REST_LINE = re.compile(r"REST (http://[^/\s]+)/api/v3")
_FINAL = b'"x":true'
_KLINE_FRAME = (b'{"e":"kline"', b'{"stream"')  # raw and combined; replies start otherwise


@dataclass
class Samples:
    """(receipt wall ms, frame bytes) of every final frame, parsed after the run so that the
    probe's own parsing does not delay the receipt stamps of the frames behind it."""

    finals: list[tuple[float, bytes]] = field(default_factory=list)
    frames: int = 0
    on_final: Callable[[], None] | None = None

    def add(self, received_ms: float, payload: bytes) -> None:
        self.frames += 1
        if _FINAL in payload:
            self.finals.append((received_ms, payload))
            if self.on_final is not None:
                self.on_final()


# Simulator process --------------------------------------------------------------------------


def start_simulator(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """Run `manage.py simexchange` and return it with its base URL (http://host:port)."""
    manage = Path(args.manage).resolve()
    command = [
        args.python,
        str(manage),
        "simexchange",
        "--port",
        "0",
        "--symbols",
        str(args.symbols),
        "--speed",
        str(args.speed),
        "--history",
        args.history,
        "--update-interval-ms",
        str(args.update_interval_ms),
        *args.sim_arg,
    ]
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and manage.py)
        command,
        cwd=manage.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = _REST_LINE.search(line)
        if match:
            # Keep reading its output, so that a full pipe never blocks the simulator.
            threading.Thread(target=_echo, args=(process.stdout, args.show_sim_output), daemon=True).start()
            return process, match.group(1)
    stop_simulator(process)
    raise SystemExit("simulator did not start:\n" + "".join(lines))


def _echo(stream: IO[str], show: bool) -> None:
    for line in stream:
        if show:
            print(f"[sim] {line}", end="", file=sys.stderr, flush=True)


def stop_simulator(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (http to the simulator)
        return orjson.loads(response.read())


def symbol_names(base: str, count: int) -> list[str]:
    info = get_json(f"{base}/api/v3/exchangeInfo")
    assert isinstance(info, dict)
    return [entry["symbol"] for entry in info["symbols"]][:count]


@dataclass(frozen=True)
class ClockSample:
    """Simulated time `sim_ms` was current at wall time `wall_ms`; simulated time runs `speed`
    times the wall clock. Maps a candle's close to the wall-clock instant it happens."""

    wall_ms: float
    sim_ms: int
    speed: float
    round_trip_ms: float  # of the request it comes from: its error is at most half of it

    def wall_at(self, sim_ms: int) -> float:
        return self.wall_ms + (sim_ms - self.sim_ms) / self.speed


def clock_sample(base: str, tries: int = 7) -> ClockSample:
    """From `/api/v3/time`: the request with the shortest round trip of `tries`."""
    status = get_json(f"{base}/_sim/status")
    assert isinstance(status, dict)
    best: tuple[float, float, int] | None = None
    for _ in range(tries):
        before = time.time() * 1000
        answer = get_json(f"{base}/api/v3/time")
        after = time.time() * 1000
        assert isinstance(answer, dict)
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) / 2, int(answer["serverTime"]))
    assert best is not None
    return ClockSample(best[1], best[2], float(status["speed"]), best[0])


# Clients --------------------------------------------------------------------------------------


class RawWebSocket(asyncio.Protocol):
    """Just enough RFC 6455 for a probe: handshake, unfragmented server frames, masked client
    text frames, pong. `data_received` only stamps and keeps the bytes; frames are parsed by
    `parse` once the connection has been quiet for a moment (`run_parser`), so parsing one
    burst never delays the receipt stamps of the next bytes."""

    QUIET_S = 0.05

    def __init__(self, samples: Samples) -> None:
        self.samples = samples
        self.transport: asyncio.Transport | None = None
        self.handshaken = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.texts: list[bytes] = []  # non-kline frames (method replies)
        self._received: list[tuple[float, bytes]] = []  # (receipt wall ms, bytes), not parsed
        self._last_received = 0.0
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.handshaken.done():
            self.handshaken.set_exception(ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        received_ms = time.time() * 1000
        self._last_received = time.monotonic()
        if self.handshaken.done():
            self._received.append((received_ms, data))
            return
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        status = bytes(buffer[: buffer.find(b"\r\n")])
        del buffer[: end + 4]
        if b" 101 " not in status:
            self.handshaken.set_exception(ConnectionError(status.decode()))
            return
        self.handshaken.set_result(None)
        if buffer:
            self._received.append((received_ms, bytes(buffer)))
            buffer.clear()

    async def run_parser(self) -> None:
        while True:
            await asyncio.sleep(self.QUIET_S)
            if time.monotonic() - self._last_received >= self.QUIET_S or len(self._received) > 10_000:
                self.parse()

    def parse(self) -> None:
        """Parse the frames received so far; each complete frame gets the receipt time of the
        bytes that completed it."""
        received, self._received = self._received, []
        buffer = self._buffer
        for received_ms, data in received:
            buffer += data
            offset, size = 0, len(buffer)
            while size - offset >= 2:
                first, length = buffer[offset], buffer[offset + 1] & 0x7F
                start = offset + 2
                if length == 126:
                    if size - offset < 4:
                        break
                    (length,) = struct.unpack_from("!H", buffer, offset + 2)
                    start = offset + 4
                elif length == 127:
                    if size - offset < 10:
                        break
                    (length,) = struct.unpack_from("!Q", buffer, offset + 2)
                    start = offset + 10
                end = start + length
                if end > size:
                    break
                payload = bytes(buffer[start:end])
                offset = end
                opcode = first & 0x0F
                if opcode in (1, 2):
                    if payload.startswith(_KLINE_FRAME):
                        self.samples.add(received_ms, payload)
                    else:
                        self.texts.append(payload)
                elif opcode == 9:
                    self.send(payload, opcode=10)
                elif opcode == 8 and self.transport is not None:
                    self.transport.close()
            del buffer[:offset]

    def send(self, payload: bytes, *, opcode: int = 1) -> None:
        assert self.transport is not None
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.transport.write(header + mask + masked)


async def raw_connect(url: str, samples: Samples) -> RawWebSocket:
    parts = urllib.parse.urlsplit(url)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: RawWebSocket(samples), parts.hostname or "127.0.0.1", parts.port or 80
    )
    key = base64.b64encode(os.urandom(16)).decode()
    assert protocol.transport is not None
    protocol.transport.write(
        (
            f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await asyncio.wait_for(protocol.handshaken, 30)
    return protocol


async def subscribe(send: Callable[[bytes], Awaitable[None] | None], streams: Sequence[str]) -> None:
    for index in range(0, len(streams), SUBSCRIBE_CHUNK):
        if index:
            await asyncio.sleep(SUBSCRIBE_SPACING_S)
        request = {
            "method": "SUBSCRIBE",
            "params": list(streams[index : index + SUBSCRIBE_CHUNK]),
            "id": index // SUBSCRIBE_CHUNK + 1,
        }
        result = send(orjson.dumps(request))
        if result is not None:
            await result


# Measurement ---------------------------------------------------------------------------------


@dataclass
class Burst:
    open_ms: int
    delays: list[float]
    event_spread_ms: int  # max E - min E within the burst
    sent_after_close_ms: float  # min E - the wall-clock instant of the simulated close
    received_after_close_ms: float  # last receipt - that instant


def analyse(
    samples: Samples, first_open: int, symbols: int, interval_ms: int, clock: ClockSample
) -> list[Burst]:
    """The complete close bursts of candles opening at `first_open` or later."""
    by_candle: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for received_ms, payload in samples.finals:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue  # the malformed-frame fault
        event = event.get("data", event)
        kline = event["k"]
        if kline["t"] >= first_open:
            by_candle[kline["t"]].append((received_ms, event["E"]))
    bursts = []
    for open_ms in sorted(by_candle):
        rows = by_candle[open_ms]
        if len(rows) < symbols:
            continue  # the run stopped in the middle of this burst
        events = [e for _, e in rows]
        close = clock.wall_at(open_ms + interval_ms)
        bursts.append(
            Burst(
                open_ms,
                [r - e for r, e in rows],
                max(events) - min(events),
                min(events) - close,
                max(r for r, _ in rows) - close,
            )
        )
    return bursts


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def summary(values: Sequence[float]) -> str:
    return (
        f"n={len(values)} p50={percentile(values, 0.5):.1f} p95={percentile(values, 0.95):.1f} "
        f"max={max(values):.1f} ms"
    )


async def measure(base: str, args: argparse.Namespace) -> list[Burst]:
    names = symbol_names(base, args.symbols)
    streams = [f"{name.lower()}@kline_{args.interval}" for name in names]
    interval_ms = {"1m": 60_000, "3m": 180_000, "5m": 300_000}[args.interval]
    ws_url = base.replace("http://", "ws://", 1) + "/ws"
    samples = Samples()
    wanted = args.closes
    done = asyncio.Event()
    seen: dict[int, int] = defaultdict(int)
    first_open = 0

    def on_final() -> None:
        # Cheap bookkeeping in the receive path: count finals per candle without parsing JSON.
        payload = samples.finals[-1][1]
        at = payload.find(b'"t":')
        open_ms = int(payload[at + 4 : payload.find(b",", at)])
        seen[open_ms] += 1
        if sum(1 for t, n in seen.items() if t >= first_open and n >= len(streams)) >= wanted:
            done.set()

    samples.on_final = on_final
    if args.client == "raw":
        raw = await raw_connect(ws_url, samples)
        parser = asyncio.create_task(raw.run_parser())
        await subscribe(raw.send, streams)
        closed: asyncio.Future[None] = raw.closed
    else:
        import aiohttp

        session = aiohttp.ClientSession()
        ws = await session.ws_connect(ws_url, autoping=True, max_msg_size=1 << 20)

        async def read() -> None:
            while True:
                message = await ws.receive()
                received_ms = time.time() * 1000
                if message.type is aiohttp.WSMsgType.TEXT:
                    data = message.data.encode()
                    if data.startswith(_KLINE_FRAME):
                        samples.add(received_ms, data)
                elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    return

        reader = asyncio.create_task(read())
        await subscribe(lambda data: ws.send_str(data.decode()), streams)
        closed = reader
    # Candles opening from now on close after every subscription took effect.
    clock = clock_sample(base)
    first_open = clock.sim_ms // interval_ms * interval_ms
    print(
        f"subscribed {len(streams)} streams; waiting for {wanted} close bursts (from candle {first_open})",
        flush=True,
    )
    seconds_per_close = interval_ms / 1000 / args.speed
    # The probe's own garbage collection would stall its reads by tens of ms, which would
    # show as the simulator's latency: none while measuring (a few MB of frames at most).
    gc.collect()
    gc.freeze()
    gc.disable()
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(done.wait()), closed]
    try:
        await asyncio.wait_for(
            asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED),
            timeout=(wanted + 2) * seconds_per_close + 30,
        )
    except TimeoutError:
        print("timed out before enough bursts; reporting what arrived", flush=True)
    if args.client == "raw":
        parser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await parser
        if raw.transport is not None:
            raw.transport.close()
        raw.parse()
    else:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()
        await session.close()
    gc.enable()
    print(f"{samples.frames} kline frames, {len(samples.finals)} finals", flush=True)
    # The simulator was busy generating candles at the first sample; idle now, it answers faster.
    with contextlib.suppress(OSError):
        clock = min(clock, clock_sample(base), key=lambda sample: sample.round_trip_ms)
    print(f"clock mapped from a request of {clock.round_trip_ms:.1f} ms round trip", flush=True)
    return analyse(samples, first_open, len(streams), interval_ms, clock)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--speed", type=float, default=30.0)
    parser.add_argument("--history", default="30m")
    parser.add_argument("--update-interval-ms", type=int, default=1000)
    parser.add_argument("--interval", default="1m", choices=("1m", "3m", "5m"))
    parser.add_argument("--closes", type=int, default=10, help="close bursts to measure")
    parser.add_argument("--client", default="raw", choices=("raw", "aiohttp"))
    parser.add_argument("--url", help="a running simulator (http://host:port); default: start one")
    parser.add_argument("--python", default=sys.executable, help="interpreter for manage.py")
    parser.add_argument("--manage", default=str(ROOT / "manage.py"), help="manage.py of the checkout to run")
    parser.add_argument("--show-sim-output", action="store_true", help="echo the simulator's output")
    parser.add_argument(
        "--sim-arg", action="append", default=[], help="extra simexchange argument (repeatable)"
    )
    args = parser.parse_args(argv)
    process = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        process, base = start_simulator(args)
        print(f"simulator at {base} (pid {process.pid})", flush=True)
    try:
        bursts = asyncio.run(measure(base, args))
    finally:
        if process is not None:
            stop_simulator(process)
    if not bursts:
        print("no complete close burst received")
        return 1
    for burst in bursts:
        print(
            f"candle {burst.open_ms}: receipt - E {summary(burst.delays)}; after the close: "
            f"first E {burst.sent_after_close_ms:+.1f} ms, E spread {burst.event_spread_ms} ms, "
            f"all received {burst.received_after_close_ms:+.1f} ms"
        )
    every = [delay for burst in bursts for delay in burst.delays]
    sent = [burst.sent_after_close_ms for burst in bursts]
    received = [burst.received_after_close_ms for burst in bursts]
    print(
        f"ALL {len(bursts)} bursts x {args.symbols} symbols, client {args.client}: "
        f"receipt - E {summary(every)}; first E after the close: median "
        f"{percentile(sent, 0.5):.1f} ms, max {max(sent):.1f} ms; burst received after the close: "
        f"median {percentile(received, 0.5):.1f} ms, max {max(received):.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
