"""Our WebSocket client (RFC 6455, client side) over real sockets: against the simulator
(subscribing, reading, answering its pings, reconnecting), and against a scripted server that
sends what the simulator never does (fragments, control frames between them, protocol errors,
a refused or wrong handshake, silence), checking what the client puts on the wire."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketdata.exchanges import exchange_profile
from marketdata.ingest import websocket as ws_module
from marketdata.ingest.websocket import (
    MarketDataProtocol,
    StreamClosed,
    StreamConnection,
    accept_key,
    client_frame,
    mask,
    open_market_stream,
)
from marketdata.tests.test_simulator_ws import started

SYMBOLS = ("BTCUSDT", "ETHUSDT")
TIMEOUT = 15.0


def server_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = False
) -> bytes:
    """A frame as a server sends it (unmasked unless told otherwise)."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = bytes((first, mask_bit | size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if masked:
        key = b"\x01\x02\x03\x04"
        return header + key + mask(payload, key)
    return header + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(opcode, fin, unmasked payload) of the next frame from the client; it must be masked."""
    first, second = await reader.readexactly(2)
    assert second & 0x80, "a client frame must be masked"
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4)
    return first & 0x0F, bool(first & 0x80), mask(await reader.readexactly(size), key)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """A WebSocket server that completes the opening handshake (or answers `refuse` instead)
    and then runs `script` on the connection."""

    def __init__(self, script: Script, *, refuse: bytes | None = None, wrong_accept: bool = False) -> None:
        self.script = script
        self.refuse = refuse
        self.wrong_accept = wrong_accept
        self.requests: list[str] = []
        self.done = asyncio.Event()
        self.error: BaseException | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readuntil(b"\r\n\r\n")).decode()
            self.requests.append(request)
            if self.refuse is not None:
                writer.write(self.refuse)
                await writer.drain()
                writer.close()
                return
            key = next(
                line.split(":", 1)[1].strip()
                for line in request.split("\r\n")
                if line.lower().startswith("sec-websocket-key:")
            )
            accept = accept_key(key if not self.wrong_accept else "another key")
            writer.write(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            await self.script(reader, writer)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def ended(protocol: MarketDataProtocol) -> StreamClosed:
    with pytest.raises(StreamClosed) as info:
        await asyncio.wait_for(protocol.closed, TIMEOUT)
    return info.value


# Framing, without sockets ---------------------------------------------------------------------


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_masking_is_the_rfc_xor_and_its_own_inverse(payload, key):
    masked = mask(payload, key)
    assert masked == bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    assert mask(masked, key) == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_client_frame_is_masked_with_the_length_in_the_shortest_form(size):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = client_frame(0x1, payload, key=b"\x0a\x0b\x0c\x0d")
    assert frame[0] == 0x81
    assert frame[1] & 0x80
    header = {0: 2, 125: 2, 126: 4, 65535: 4, 65536: 10}[size]
    assert mask(frame[header + 4 :], frame[header : header + 4]) == payload
    assert len(frame) == header + 4 + size


def test_the_accept_key_is_the_rfc_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@given(st.lists(st.binary(min_size=0, max_size=400), min_size=1, max_size=30), st.data())
def test_messages_split_anywhere_across_reads_come_out_whole_and_in_order(payloads, data):
    async def scenario() -> list[str | bytes]:
        protocol, _transport, received = opened_protocol()
        stream = b"".join(server_frame(0x2, payload) for payload in payloads)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            protocol.data_received(stream[start:end])
            while protocol._paused:
                await asyncio.sleep(0)
        return received

    assert asyncio.run(scenario()) == payloads


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.paused = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def abort(self) -> None:
        raise AssertionError("aborted")

    def close(self) -> None:
        raise AssertionError("closed")


def opened_protocol(
    on_frame: Callable[[str | bytes], None] | None = None,
) -> tuple[MarketDataProtocol, FakeTransport, list[str | bytes]]:
    """A protocol past its handshake on a `FakeTransport` (in a running loop), handing its
    messages to `on_frame`, by default appending them to the list returned."""
    received: list[str | bytes] = []
    protocol = MarketDataProtocol(
        on_frame=on_frame or received.append, host="h", resource="/ws", heartbeat=None
    )
    protocol.handshake.set_result(None)
    transport = FakeTransport()
    protocol.transport = transport  # type: ignore[assignment]
    return protocol, transport, received


def test_a_long_burst_lets_the_loop_run_between_its_messages():
    async def scenario() -> tuple[list[int], list[str]]:
        order: list[str] = []
        seen: list[int] = []

        def on_frame(payload: str | bytes) -> None:
            seen.append(int(payload))
            order.append(f"message {int(payload)}")
            if int(payload) == 0:
                asyncio.get_running_loop().call_soon(order.append, "other work")

        protocol, transport, _ = opened_protocol(on_frame)
        count = 3 * ws_module.YIELD_EVERY + 5
        protocol.data_received(b"".join(server_frame(0x1, str(n).encode()) for n in range(count)))
        reading = [not transport.paused]  # reading waits while what was received is handed over
        while protocol._paused:
            await asyncio.sleep(0)
        reading.append(not transport.paused)
        assert reading == [False, True]
        return seen, order

    seen, order = asyncio.run(scenario())
    assert seen == list(range(len(seen)))
    assert len(seen) == 3 * ws_module.YIELD_EVERY + 5
    assert order.index("other work") == ws_module.YIELD_EVERY  # right after the first share


def test_messages_received_before_the_connection_ended_are_still_handed_over():
    async def scenario() -> list[str | bytes]:
        protocol, transport, received = opened_protocol()
        count = 2 * ws_module.YIELD_EVERY + 1
        protocol.data_received(b"".join(server_frame(0x1, str(n).encode()) for n in range(count)))
        transport.closing = True  # the connection drops while the rest waits its turn
        protocol.connection_lost(ConnectionResetError())
        for _ in range(100):  # a few turns of the loop at most
            await asyncio.sleep(0)
        assert isinstance(protocol.closed.exception(), StreamClosed)
        return received

    assert asyncio.run(scenario()) == [str(n).encode() for n in range(2 * ws_module.YIELD_EVERY + 1)]


# Against a scripted server -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fragments_control_frames_between_them_and_a_closing_handshake_from_the_server():
    sent: list[tuple[int, bool, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            server_frame(0x1, b'{"a":', fin=False)
            + server_frame(0x9, b"are you there")  # a ping between two fragments
            + server_frame(0x0, b'"caf\xc3\xa9', fin=False)
            + server_frame(0x0, b'"}')
            + server_frame(0x2, b"\x00\xffbinary")
            + server_frame(0xA, b"unsolicited pong")
            + server_frame(0x1, b"whole")
        )
        sent.append(await read_client_frame(reader))  # the pong
        writer.write(server_frame(0x8, struct.pack("!H", 1001) + b"going away"))
        sent.append(await read_client_frame(reader))  # the closing answer
        assert await reader.read() == b""  # then the client closes its side

    received: list[str | bytes] = []
    server = ScriptedServer(script)
    async with server as url:
        protocol = await open_market_stream(url, on_frame=received.append)
        closing = await ended(protocol)
        await asyncio.wait_for(server.done.wait(), TIMEOUT)
    assert server.error is None
    assert received == ['{"a":"café"}', b"\x00\xffbinary", b"whole"]
    assert sent == [(0xA, True, b"are you there"), (0x8, True, struct.pack("!H", 1001))]
    assert closing.code == 1001
    assert "going away" in str(closing)
    request = server.requests[0]
    assert request.startswith("GET /ws HTTP/1.1\r\n")
    assert "Sec-WebSocket-Version: 13" in request
    assert "Sec-WebSocket-Extensions" not in request  # nothing offered: no compression
    assert len(base64.b64decode(request.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0])) == 16


@pytest.mark.asyncio
async def test_a_closing_handshake_from_the_client_waits_for_the_servers_answer():
    sent: list[tuple[int, bool, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(0x1, b"hello"))
        sent.append(await read_client_frame(reader))
        writer.write(server_frame(0x1, b"sent before our answer"))  # still read
        writer.write(server_frame(0x8, sent[0][2][:2]))
        assert await reader.read() == b""

    received: list[str | bytes] = []
    server = ScriptedServer(script)
    async with server as url:
        protocol = await open_market_stream(url, on_frame=received.append)
        while not received:
            await asyncio.sleep(0.01)
        protocol.close(1001, b"stale stream")
        protocol.close(1000)  # a second call sends nothing more
        closing = await ended(protocol)
        await asyncio.wait_for(server.done.wait(), TIMEOUT)
    assert server.error is None
    assert sent == [(0x8, True, struct.pack("!H", 1001) + b"stale stream")]
    assert received == [b"hello", b"sent before our answer"]
    assert closing.code == 1001


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (server_frame(0x1, b"masked", masked=True), 1002),
        (server_frame(0x1, b"deflated?", rsv=0x40), 1002),
        (server_frame(0x1, b"caf\xe9"), 1007),  # Latin-1, not UTF-8
        (server_frame(0x0, b"a continuation of nothing"), 1002),
        (server_frame(0x9, b"a fragmented ping", fin=False), 1002),
        (server_frame(0x9, b"x" * 126), 1002),
        (server_frame(0x3, b"a reserved opcode"), 1002),
        (server_frame(0x8, b"\x03"), 1002),  # a one-byte closing body
        (server_frame(0x8, struct.pack("!H", 1005)), 1002),  # a code never sent
    ],
)
async def test_what_a_server_must_not_send_fails_the_connection(frame, code):
    sent: list[tuple[int, bool, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(server_frame(0x1, b"before") + frame + server_frame(0x1, b"after"))
        sent.append(await read_client_frame(reader))

    received: list[str | bytes] = []
    server = ScriptedServer(script)
    async with server as url:
        protocol = await open_market_stream(url, on_frame=received.append)
        closing = await ended(protocol)
        await asyncio.wait_for(server.done.wait(), TIMEOUT)
    assert received == [b"before"]
    assert sent == [(0x8, True, struct.pack("!H", code))]
    assert closing.code == code
    assert "protocol error" in str(closing)


@pytest.mark.asyncio
async def test_a_refused_or_wrong_handshake_raises():
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("no WebSocket traffic expected")

    refusal = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"
    async with ScriptedServer(never, refuse=refusal) as url:
        with pytest.raises(StreamClosed, match=r"handshake refused: HTTP/1\.1 429"):
            await open_market_stream(url, on_frame=print)
    async with ScriptedServer(never, wrong_accept=True) as url:
        with pytest.raises(StreamClosed, match="Sec-WebSocket-Accept"):
            await open_market_stream(url, on_frame=print)


@pytest.mark.asyncio
async def test_a_silent_server_is_pinged_then_given_up():
    sent: list[tuple[int, bool, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent.append(await read_client_frame(reader))  # a ping, never answered
        await reader.read()

    server = ScriptedServer(script)
    async with server as url:
        protocol = await open_market_stream(url, on_frame=print, heartbeat=0.2)
        closing = await ended(protocol)
        await asyncio.wait_for(server.done.wait(), TIMEOUT)
    assert [opcode for opcode, _, _ in sent] == [0x9]
    assert "no answer to a ping" in str(closing)


@pytest.mark.asyncio
async def test_a_server_that_answers_pings_is_kept():
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            opcode, _, payload = await read_client_frame(reader)
            assert opcode == 0x9
            writer.write(server_frame(0xA, payload))
        writer.write(server_frame(0x8, struct.pack("!H", 1000)))
        await read_client_frame(reader)

    server = ScriptedServer(script)
    async with server as url:
        protocol = await open_market_stream(url, on_frame=print, heartbeat=0.1)
        closing = await ended(protocol)  # after three pings answered: the server's close
    assert closing.code == 1000


# Against the simulator (started as the simulator's own WebSocket tests start it) ---------------


@pytest.mark.asyncio
async def test_streams_from_the_simulator_are_read_through_its_pings_and_reconnected_on_request():
    # The simulator pings every 0.2 s and drops a client that leaves a ping unanswered for
    # 0.5 s: staying connected for 2 s means every ping was answered.
    exchange = await started(symbols=SYMBOLS, ping_interval_s=0.2, pong_timeout_s=0.5)
    try:
        host, port = exchange.urls.ws.removeprefix("ws://").split("/")[0].split(":")
        profile = exchange_profile("sim", overrides={"sim": {"ws": f"ws://{host}:{port}"}})
        frames: list[dict[str, Any]] = []
        connected = asyncio.Event()

        async def on_connected() -> None:
            connected.set()

        connection = StreamConnection(
            profile=profile,
            streams=["btcusdt@kline_1m", "ethusdt@kline_1m"],
            on_frame=lambda raw: frames.append(orjson.loads(raw)),
            on_connected=on_connected,
            label="sim#1",
            backoff_initial=0.05,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(connection.run(stop))

        async def until(condition: Callable[[], bool]) -> None:
            async with asyncio.timeout(TIMEOUT):
                while not condition():
                    await asyncio.sleep(0.02)

        await until(lambda: sum(1 for f in frames if f.get("k", {}).get("x")) >= 4)
        assert {"result": None, "id": 1} in frames  # the SUBSCRIBE (a masked frame) was taken
        assert {f["s"] for f in frames if "k" in f} == {"BTCUSDT", "ETHUSDT"}
        await asyncio.sleep(2.0)
        assert connection.connects == 1
        assert exchange.counters.connections == 1

        connected.clear()
        assert connection.request_reconnect("a test")
        await until(lambda: connection.connects == 2 and connected.is_set())
        before = len(frames)
        await until(lambda: len(frames) > before + 4)
        stop.set()
        await asyncio.wait_for(running, TIMEOUT)
        assert not connection.request_reconnect("stopped")
    finally:
        await exchange.stop()


@pytest.mark.asyncio
async def test_dropped_connections_are_reopened_with_backoff():
    exchange = await started(symbols=SYMBOLS, faults={"ws_drop_every_s": 0.3})
    try:
        profile = exchange_profile("sim", overrides={"sim": {"ws": exchange.urls.ws.removesuffix("/ws")}})
        frames: list[bytes | str] = []

        async def on_connected() -> None:
            return None

        connection = StreamConnection(
            profile=profile,
            streams=["btcusdt@kline_1m"],
            on_frame=frames.append,
            on_connected=on_connected,
            label="sim#1",
            backoff_initial=0.05,
            backoff_max=0.1,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(connection.run(stop))
        async with asyncio.timeout(TIMEOUT):
            while connection.connects < 3:
                await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(running, TIMEOUT)
        assert len(connection.reconnects) >= 2
        assert frames
    finally:
        await exchange.stop()
