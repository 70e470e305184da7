"""The simulator's kline WebSocket streams over real sockets: raw and combined streams, method
frames, Binance's limits, pings, the close burst, and the stream faults."""

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from marketdata.simulator import SimConfig, SimExchange
from marketdata.simulator import streams as streams_module
from marketdata.simulator.intervals import MINUTE_MS
from marketdata.simulator.streams import Connection
from marketdata.simulator.symbols import generated_names

START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SIM0001USDT")
TIMEOUT = 15.0


async def started(**overrides) -> SimExchange:
    # 120x: a 1m candle closes every half second of wall time.
    fields = {
        "port": 0,
        "symbols": SYMBOLS,
        "start_ms": START,
        "history_minutes": 60,
        "speed": 120.0,
        "update_interval_s": 0.05,
    }
    exchange = SimExchange(SimConfig(**{**fields, **overrides}))
    await exchange.start()
    return exchange


@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


@pytest_asyncio.fixture
async def sim():
    exchange = await started()
    yield exchange
    await exchange.stop()


class Received:
    """Frames read from a connection: (wall ms at receipt, text), and the well-formed kline
    events among them (parsed once: the client shares the event loop with the server)."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[tuple[int, str]] = []
        self._events: list[dict[str, Any]] = []
        self._finals: list[dict[str, Any]] = []

    async def until(self, condition, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not condition(self):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out; {len(self.frames)} frames, last: {self.frames[-3:]}"
            message = await self.ws.receive(timeout=remaining)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            self.frames.append((int(time.time() * 1000), message.data))
            self._parse(message.data)
        return self

    def _parse(self, text):
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        event = event.get("data", event)
        if event.get("e") == "kline" and "c" in event["k"] and isinstance(event["k"]["t"], int):
            self._events.append(event)
            if event["k"]["x"]:
                self._finals.append(event)

    def events(self):
        """Well-formed kline events (unwrapped from combined frames)."""
        return self._events

    def finals(self, symbol=None):
        return [e["k"] for e in self._finals if symbol in (None, e["s"])]


def final_count(count, symbol=None):
    return lambda received: len(received.finals(symbol)) >= count


async def truth(session, sim, symbol, interval, start):
    async with session.get(
        f"{sim.urls.control}/closed", params={"symbol": symbol, "interval": interval, "startTime": str(start)}
    ) as response:
        return {row[0]: row for row in orjson.loads(await response.read())}


def as_row(k):
    return [k["t"], k["o"], k["h"], k["l"], k["c"], k["v"], k["T"], k["q"], k["n"], k["V"], k["Q"], "0"]


async def set_faults(session, sim, payload):
    async with session.post(f"{sim.urls.control}/faults", data=orjson.dumps(payload)) as response:
        body = orjson.loads(await response.read())
        assert response.status == 200, body
        return body["faults"]


# Streams ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_raw_stream_updates_then_exactly_one_final_equal_to_the_truth(sim, session):
    async with session.ws_connect(f"{sim.urls.ws}/btcusdt@kline_1m") as ws:
        received = await Received(ws).until(final_count(3))
    events = received.events()
    finals = received.finals()
    assert [k["t"] for k in finals] == sorted({k["t"] for k in finals})
    rows = await truth(session, sim, "BTCUSDT", "1m", finals[0]["t"])
    for k in finals:
        assert as_row(k) == rows[k["t"]]
        assert (k["s"], k["i"]) == ("BTCUSDT", "1m")
        assert k["L"] - k["f"] + 1 == k["n"]
        # Updates of the candle came first, none after its final.
        position = next(i for i, e in enumerate(events) if e["k"]["x"] and e["k"]["t"] == k["t"])
        before = [e["k"] for e in events[:position] if e["k"]["t"] == k["t"]]
        after = [e["k"] for e in events[position + 1 :] if e["k"]["t"] == k["t"]]
        assert before
        assert not any(u["x"] for u in before)
        assert after == []
        assert all(u["o"] == k["o"] and float(u["h"]) <= float(k["h"]) for u in before)
    # E is the wall-clock time of sending; t/T are simulated.
    for (received_ms, text), event in zip(received.frames, events, strict=True):
        assert orjson.loads(text) == event
        assert received_ms - 1000 < event["E"] <= received_ms + 5
        assert event["k"]["t"] < START + 3600_000


@pytest.mark.asyncio
async def test_combined_stream_wraps_frames_with_the_stream_name(sim, session):
    url = f"{sim.urls.stream}?streams=btcusdt@kline_1m/ethusdt@kline_3m"
    async with session.ws_connect(url) as ws:
        received = await Received(ws).until(final_count(1, "ETHUSDT"))
    wrapped = [orjson.loads(text) for _, text in received.frames]
    assert {frame["stream"] for frame in wrapped} == {"btcusdt@kline_1m", "ethusdt@kline_3m"}
    for frame in wrapped:
        assert set(frame) == {"stream", "data"}
        assert frame["stream"] == f"{frame['data']['s'].lower()}@kline_{frame['data']['k']['i']}"
    eth = received.finals("ETHUSDT")[0]
    assert as_row(eth) == (await truth(session, sim, "ETHUSDT", "3m", eth["t"]))[eth["t"]]


@pytest.mark.asyncio
async def test_subscribe_list_properties_and_unsubscribe(sim, session):
    async with session.ws_connect(sim.urls.ws) as ws:
        await ws.send_str(
            '{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","sim0001usdt@kline_1m"],"id":1}'
        )
        received = Received(ws)
        await received.until(lambda r: any('"id":1' in text for _, text in r.frames))
        assert orjson.loads(received.frames[0][1]) == {"result": None, "id": 1}
        await received.until(final_count(2))
        assert all("stream" not in orjson.loads(text) for _, text in received.frames[1:])

        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":2}')
        await ws.send_str('{"method":"SET_PROPERTY","params":["combined",true],"id":3}')
        await ws.send_str('{"method":"GET_PROPERTY","params":["combined"],"id":"four"}')
        await ws.send_str('{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":5}')
        replies = {}
        after_unsubscribe = []
        deadline = time.monotonic() + 1.5  # three candles after the unsubscription
        while time.monotonic() < deadline:
            message = await ws.receive(timeout=TIMEOUT)
            frame = orjson.loads(message.data)
            if "id" in frame:
                replies[frame["id"]] = frame
            elif 5 in replies:
                after_unsubscribe.append(frame)
    assert replies[2] == {"result": ["btcusdt@kline_1m", "sim0001usdt@kline_1m"], "id": 2}
    assert replies[3] == {"result": None, "id": 3}
    assert replies["four"] == {"result": True, "id": "four"}
    assert replies[5] == {"result": None, "id": 5}
    assert after_unsubscribe
    assert {frame["stream"] for frame in after_unsubscribe} == {"sim0001usdt@kline_1m"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("frame", "reply"),
    [
        ("not json", {"error": {"code": 3}, "id": None}),
        ('{"method":"SUBSCRIBE","params":["a@kline_1m"],"id":-1}', {"error": {"code": 2}, "id": None}),
        ('{"params":[],"id":7}', {"error": {"code": 2}, "id": 7}),
        ('{"method":"SUBSCRIB","params":[],"id":8}', {"error": {"code": 2}, "id": 8}),
        ('{"method":"SUBSCRIBE","params":[1],"id":9}', {"error": {"code": 2}, "id": 9}),
        ('{"method":"SET_PROPERTY","params":["colour",true],"id":10}', {"error": {"code": 0}, "id": 10}),
        ('{"method":"SET_PROPERTY","params":["combined","yes"],"id":11}', {"error": {"code": 1}, "id": 11}),
    ],
)
async def test_bad_method_frames_get_binance_errors(sim, session, frame, reply):
    async with session.ws_connect(sim.urls.ws) as ws:
        await ws.send_str(frame)
        answer = orjson.loads((await ws.receive(timeout=TIMEOUT)).data)
    assert answer["id"] == reply["id"]
    assert answer["error"]["code"] == reply["error"]["code"]
    assert isinstance(answer["error"]["msg"], str)
    assert answer["error"]["msg"].startswith(("Invalid", "Unknown"))


@pytest.mark.asyncio
async def test_more_than_1024_streams_closes_the_connection(sim, session):
    too_many = "/".join(f"s{i}" for i in range(1025))
    async with session.ws_connect(f"{sim.urls.stream}?streams={too_many}") as ws:
        message = await ws.receive(timeout=TIMEOUT)
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008

    async with session.ws_connect(sim.urls.ws) as ws:
        names = [f"s{i}@kline_1m" for i in range(1024)]
        await ws.send_str(orjson.dumps({"method": "SUBSCRIBE", "params": names, "id": 1}).decode())
        assert orjson.loads((await ws.receive(timeout=TIMEOUT)).data) == {"result": None, "id": 1}
        await ws.send_str('{"method":"SUBSCRIBE","params":["one@kline_1m"],"id":2}')
        message = await ws.receive(timeout=TIMEOUT)
    assert message.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008


@pytest.mark.asyncio
async def test_more_than_5_messages_a_second_closes_the_connection(sim, session):
    async with session.ws_connect(sim.urls.ws) as ws:
        for request_id in range(6):
            await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{request_id}}}')
        replies = []
        while True:
            message = await ws.receive(timeout=TIMEOUT)
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            replies.append(orjson.loads(message.data)["id"])
    assert replies == [0, 1, 2, 3, 4]
    assert ws.close_code == 1008
    # Five in a second are fine.
    async with session.ws_connect(sim.urls.ws) as ws:
        for request_id in range(5):
            await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{request_id}}}')
        for request_id in range(5):
            assert orjson.loads((await ws.receive(timeout=TIMEOUT)).data)["id"] == request_id
        assert not ws.closed


@pytest.mark.asyncio
async def test_server_pings_and_drops_clients_that_do_not_pong(session):
    exchange = await started(ping_interval_s=0.3, pong_timeout_s=0.8)
    try:
        async with (
            session.ws_connect(exchange.urls.ws, autoping=False) as silent,
            session.ws_connect(exchange.urls.ws, autoping=False) as polite,
        ):

            async def answer_pings():
                pings = 0
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    message = await polite.receive(timeout=TIMEOUT)
                    assert message.type == aiohttp.WSMsgType.PING
                    pings += 1
                    await polite.pong(message.data)
                return pings

            async def ignore_pings():
                kinds = []
                while True:
                    message = await silent.receive(timeout=TIMEOUT)
                    kinds.append(message.type)
                    if message.type != aiohttp.WSMsgType.PING:
                        return kinds

            pings, kinds = await asyncio.gather(answer_pings(), ignore_pings())
            assert pings >= 4
            assert kinds[0] == aiohttp.WSMsgType.PING
            assert kinds[-1] in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
            assert not polite.closed
    finally:
        await exchange.stop()


@pytest.mark.asyncio
async def test_a_thousand_symbols_closing_together_arrive_as_one_burst(session):
    names = tuple(generated_names(1000))
    exchange = await started(symbols=names, history_minutes=0, update_interval_s=0.25)
    try:
        async with session.ws_connect(exchange.urls.ws) as ws:
            for first in range(0, 1000, 500):
                params = [f"{name.lower()}@kline_1m" for name in names[first : first + 500]]
                await ws.send_str(
                    orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": first}).decode()
                )
            received = Received(ws)
            # Every symbol's final of the same candle, twice: the first burst after subscribing
            # may still be generating candles (its E grows as frames leave), the next one was
            # prepared ahead.
            await received.until(
                lambda r: sum(n >= 1000 for n in Counter(k["t"] for k in r.finals()).values()) >= 2
            )
        by_candle = Counter(k["t"] for k in received.finals())
        complete = sorted(t for t, n in by_candle.items() if n >= 1000)
        assert [by_candle[t] for t in complete] == [1000] * len(complete)
        candle = complete[1]
        burst = [e for e in received.events() if e["k"]["x"] and e["k"]["t"] == candle]
        assert {e["s"] for e in burst} == set(names)
        assert max(e["E"] for e in burst) - min(e["E"] for e in burst) < 250
        sample = burst[::97]
        for event in sample:
            rows = await truth(session, exchange, event["s"], "1m", candle)
            assert as_row(event["k"]) == rows[candle]
    finally:
        await exchange.stop()


# Faults -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_drop_fault_cuts_every_connection(sim, session):
    await set_faults(session, sim, {"ws_drop_every_s": 0.3})
    for _ in range(2):
        async with session.ws_connect(f"{sim.urls.ws}/btcusdt@kline_1m") as ws:
            while True:
                message = await ws.receive(timeout=TIMEOUT)
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    async with session.get(f"{sim.urls.control}/status") as response:
        assert orjson.loads(await response.read())["counters"]["drops"] >= 2


@pytest.mark.asyncio
async def test_silenced_stream_sends_nothing_for_n_candles(sim, session):
    url = f"{sim.urls.stream}?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    async with session.ws_connect(url) as ws:
        received = Received(ws)
        await received.until(final_count(1, "BTCUSDT"))
        faults = await set_faults(
            session, sim, {"ws_silence": {"symbol": "BTCUSDT", "interval": "1m", "candles": 2}}
        )
        first = faults["ws_silence"][0]["first_open"]
        await received.until(
            lambda r: (
                any(k["t"] == first + 2 * MINUTE_MS for k in r.finals("BTCUSDT"))
                and any(k["t"] == first + MINUTE_MS for k in r.finals("ETHUSDT"))
            )
        )
    btc = [e["k"] for e in received.events() if e["s"] == "BTCUSDT"]
    assert not [k for k in btc if k["t"] == first + MINUTE_MS]
    assert not [k for k in btc if k["t"] == first and k["x"]]
    eth_finals = {k["t"] for k in received.finals("ETHUSDT")}
    assert {first, first + MINUTE_MS} <= eth_finals


@pytest.mark.asyncio
async def test_duplicate_fault_sends_each_final_twice(session):
    exchange = await started(faults={"ws_duplicate_rate": 1.0})
    try:
        async with session.ws_connect(f"{exchange.urls.ws}/btcusdt@kline_1m") as ws:
            received = await Received(ws).until(final_count(4))
        texts = [text for _, text in received.frames]
        finals = [i for i, text in enumerate(texts) if '"x":true' in text]
        assert len(finals) % 2 == 0
        for first, second in zip(finals[::2], finals[1::2], strict=True):
            assert second == first + 1
            assert texts[first] == texts[second]
    finally:
        await exchange.stop()


def checked(received):
    """Candles whose disorder can be checked: all with a final but the latest."""
    return sorted({k["t"] for k in received.finals()})[:-1]


@pytest.mark.asyncio
async def test_out_of_order_fault_sends_stale_updates_and_late_finals(session):
    exchange = await started(faults={"ws_out_of_order_rate": 1.0})
    try:
        async with session.ws_connect(f"{exchange.urls.ws}/btcusdt@kline_1m") as ws:

            def both_kinds_seen(received):
                candles = checked(received)
                seen = {exchange.faults.out_of_order("btcusdt@kline_1m", t) for t in candles}
                return len(candles) >= 3 and seen == {"stale-update", "late-final"}

            received = await Received(ws).until(both_kinds_seen)
        klines = [e["k"] for e in received.events()]
        kinds = set()
        for candle in checked(received):
            kind = exchange.faults.out_of_order("btcusdt@kline_1m", candle)
            kinds.add(kind)
            first_final = next(i for i, k in enumerate(klines) if k["t"] == candle and k["x"])
            if kind == "stale-update":
                stale = klines[first_final + 1]
                assert (stale["t"], stale["x"]) == (candle, False)
            else:
                assert kind == "late-final"
                again = [i for i, k in enumerate(klines) if k["t"] == candle and k["x"]]
                assert len(again) == 2
                assert klines[again[1]] == klines[again[0]]
                assert any(k["t"] > candle for k in klines[again[0] : again[1]])
        assert kinds == {"stale-update", "late-final"}
    finally:
        await exchange.stop()


@pytest.mark.asyncio
async def test_malformed_fault_injects_broken_frames_before_real_ones(session):
    exchange = await started(faults={"ws_malformed_rate": 1.0})
    try:
        async with session.ws_connect(f"{exchange.urls.ws}/btcusdt@kline_1m") as ws:
            received = await Received(ws).until(final_count(3))
        kinds = []
        valid = []
        for _, text in received.frames:
            try:
                event = orjson.loads(text)
            except orjson.JSONDecodeError:
                kinds.append("invalid-json")
                continue
            k = event["k"]
            if "c" not in k:
                kinds.append("missing-field")
            elif isinstance(k["t"], str):
                kinds.append("wrong-type")
            elif k["c"] == "not-a-number":
                kinds.append("non-numeric-price")
            else:
                kinds.append("valid")
                valid.append(k)
        assert kinds[::2] == [kind for kind in kinds if kind != "valid"]
        assert kinds[1::2] == ["valid"] * (len(kinds) // 2)
        assert set(kinds) == {"valid", "invalid-json", "missing-field", "wrong-type", "non-numeric-price"}
        finals = [k for k in valid if k["x"]]
        rows = await truth(session, exchange, "BTCUSDT", "1m", finals[0]["t"])
        assert [as_row(k) for k in finals] == [rows[k["t"]] for k in finals]
    finally:
        await exchange.stop()


@pytest.mark.asyncio
async def test_latency_fault_delays_every_frame(session):
    exchange = await started(faults={"ws_latency_ms": 300})
    try:
        async with session.ws_connect(f"{exchange.urls.ws}/btcusdt@kline_1m") as ws:
            received = await Received(ws).until(final_count(2))
        delays = [received_ms - orjson.loads(text)["E"] for received_ms, text in received.frames]
        assert min(delays) >= 295
        assert max(delays) < 1500
    finally:
        await exchange.stop()


# Event time, without sockets --------------------------------------------------------------


class FakeWall:
    """The clock of E: stands still unless moved, and advances 1 ms every time it is read,
    so frames stamped one by one get distinct, increasing E values."""

    def __init__(self, now):
        self.now = now
        self.reads = 0

    def __call__(self):
        self.reads += 1
        self.now += 1
        return self.now


class FakeTransport:
    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, data):
        self.writes.append(bytes(data))

    def get_write_buffer_size(self):
        return 0

    def is_closing(self):
        return False

    def abort(self):
        raise AssertionError("aborted")


def ws_messages(data: bytes) -> list[bytes]:
    """The payloads of the unmasked text frames in `data`, checking their headers."""
    messages = []
    while data:
        assert data[0] == 0x81  # FIN, text
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        messages.append(data[start : start + length])
        data = data[start + length :]
    return messages


def offline_hub(*, combined=False, **faults):
    """A hub that is not serving (its simulated clock stands at START) with one connection
    whose socket writes are recorded; E comes from a FakeWall."""
    exchange = SimExchange(
        SimConfig(port=0, symbols=SYMBOLS, start_ms=START, history_minutes=60, faults=faults)
    )
    hub = exchange.hub
    wall = FakeWall(1_700_000_000_000)
    hub.wall_ms = wall
    transport = FakeTransport()
    ws: Any = SimpleNamespace(closed=False)
    request: Any = SimpleNamespace(transport=transport, remote="test")
    connection = Connection(hub, ws, request, combined=combined)
    return exchange, hub, wall, transport, connection


@pytest.mark.asyncio
@pytest.mark.parametrize("combined", [False, True])
async def test_finals_are_prepared_ahead_and_e_is_stamped_per_frame_when_written(combined, monkeypatch):
    exchange, hub, wall, transport, connection = offline_hub(combined=combined)
    names = ["btcusdt@kline_1m", "ethusdt@kline_1m"]
    hub.subscribe(connection, names)
    # Before the close of the candle opening at START: its finals are built now…
    assert await hub.prepare(START + 1_000)
    built_at = wall.now
    assert wall.reads == 0  # building does not stamp
    # …and at the close only stamped and written: the market is not asked again.
    wall.now += 5_000
    with monkeypatch.context() as patch:
        patch.setattr(exchange.market, "closed", None)
        patch.setattr(exchange.market, "forming", None)
        hub.send_closes(START + MINUTE_MS)
    messages = [message for data in transport.writes for message in ws_messages(data)]
    assert len(messages) == 2
    events = [orjson.loads(message) for message in messages]
    if combined:
        assert [event["stream"] for event in events] == names
        events = [event["data"] for event in events]
    stamps = [event["E"] for event in events]
    # One read of the wall clock per frame, in sending order, after the frames were built.
    assert stamps == [built_at + 5_001, built_at + 5_002]
    assert all(stamp >= built_at for stamp in stamps)
    assert stamps[0] <= stamps[1]
    for event, symbol in zip(events, ("BTCUSDT", "ETHUSDT"), strict=True):
        assert list(event) == ["e", "E", "s", "k"]
        assert (event["e"], event["s"], event["k"]["x"]) == ("kline", symbol, True)
        spec = exchange.market.symbol(symbol)
        assert as_row(event["k"]) == exchange.market.closed(spec, MINUTE_MS, START, START)[0].rest_row()
    assert hub.counters.final_frames == 2
    assert hub.counters.frames_sent == 2


@pytest.mark.asyncio
async def test_finals_prepared_before_a_fault_change_are_rebuilt():
    exchange, hub, _wall, transport, connection = offline_hub()
    hub.subscribe(connection, ["btcusdt@kline_1m", "ethusdt@kline_1m"])
    assert await hub.prepare(START + 1_000)
    exchange.faults.apply(
        {"ws_silence": {"symbol": "BTCUSDT", "interval": "1m", "candles": 1}, "ws_duplicate_rate": 1.0},
        now_ms=START + 1_000,
        monotonic_now=time.monotonic(),
        symbols=set(SYMBOLS),
    )
    hub.send_closes(START + MINUTE_MS)
    messages = [message for data in transport.writes for message in ws_messages(data)]
    # BTCUSDT silenced; ETHUSDT's final twice, byte for byte (E included).
    assert len(messages) == 2
    assert messages[0] == messages[1]
    assert orjson.loads(messages[0])["s"] == "ETHUSDT"


def test_a_truncated_frame_is_the_first_half_of_the_stamped_event():
    exchange, hub, _wall, _transport, connection = offline_hub()
    hub.subscribe(connection, ["btcusdt@kline_1m"])
    stream = hub.streams["btcusdt@kline_1m"]
    candle = exchange.market.closed(stream.spec, MINUTE_MS, START, START)[0]
    body = streams_module._body(stream, candle)
    frame = streams_module._malformed(stream, body, "invalid-json")
    stamp = 1_700_000_000_123
    whole = orjson.dumps({"e": "kline", "E": stamp, **body})
    assert frame.head + str(stamp).encode() + frame.tail == whole[: len(whole) // 2]
    wrapped = frame.combined_head + str(stamp).encode() + frame.combined_tail
    assert wrapped == b'{"stream":"btcusdt@kline_1m","data":' + whole[: len(whole) // 2] + b"}"


@pytest.mark.asyncio
async def test_the_first_update_after_a_close_is_prepared_ahead(monkeypatch):
    exchange, hub, _wall, transport, connection = offline_hub()
    hub.subscribe(connection, ["btcusdt@kline_1m", "ethusdt@kline_1m"])
    assert await hub.prepare(START + 1_000)
    close = START + MINUTE_MS
    with monkeypatch.context() as patch:
        # At the close the market is not asked: the finals and the new candles' first
        # updates were built by `prepare`.
        patch.setattr(exchange.market, "closed", None)
        patch.setattr(exchange.market, "forming", None)
        assert hub.send_closes(close + 10) == 2
        assert await hub.send_updates(close + 10)
    events = [orjson.loads(message) for data in transport.writes for message in ws_messages(data)]
    assert [(e["s"], e["k"]["x"], e["k"]["t"]) for e in events] == [
        ("BTCUSDT", True, START),
        ("ETHUSDT", True, START),
        ("BTCUSDT", False, close),
        ("ETHUSDT", False, close),
    ]
    for event in events[2:]:
        # The same update as one built at the moment it is sent.
        forming = exchange.market.forming(exchange.market.symbol(event["s"]), MINUTE_MS, close + 10)
        assert event["k"] == orjson.loads(orjson.dumps(forming.stream_payload(event["s"], "1m")))
    # A later checkpoint of the same candle is built when it is due, not taken from `prepare`.
    transport.writes.clear()
    later = close + 1_500
    assert await hub.send_updates(later)
    events = [orjson.loads(message) for data in transport.writes for message in ws_messages(data)]
    assert [e["k"]["c"] for e in events] == [
        exchange.market.forming(exchange.market.symbol(e["s"]), MINUTE_MS, later).stream_payload(
            e["s"], "1m"
        )["c"]
        for e in events
    ]
    assert len(events) == 2


@pytest.mark.asyncio
async def test_a_close_tick_prepares_the_next_closes_only_after_its_burst_went_out(monkeypatch):
    _exchange, hub, _wall, transport, connection = offline_hub()
    hub.subscribe(connection, ["btcusdt@kline_1m"])
    assert await hub.prepare(START + 1_000)
    steps: list[str] = []
    build_final, let_through = hub._build_final, hub._let_burst_through

    def recording_build(stream, open_ms):
        steps.append(f"build {open_ms - START}")
        return build_final(stream, open_ms)

    async def recording_wait(boundary):
        steps.append(f"wait, {len(transport.writes)} writes out")
        await let_through(boundary)

    monkeypatch.setattr(hub, "_build_final", recording_build)
    monkeypatch.setattr(hub, "_let_burst_through", recording_wait)
    assert await hub.tick(START + MINUTE_MS)
    assert steps == ["wait, 2 writes out", f"build {MINUTE_MS}"]  # the burst, its update, then the next final
    stream = hub.streams["btcusdt@kline_1m"]
    assert stream.prepared is not None
    assert stream.prepared.open_ms == START + MINUTE_MS
    assert stream.prepared_update is not None
    assert stream.prepared_update.key[0] == START + 2 * MINUTE_MS
    # A tick without a close does not wait.
    steps.clear()
    assert await hub.tick(START + MINUTE_MS + 20_000)
    assert steps == []
