"""The simulator's `missing_klines` fault over real sockets: REST klines leave out the candles of
the windows, still answer `limit` rows where there are that many (as Binance does), and the
setting is validated and replaced as a whole."""

from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
import pytest_asyncio

from marketdata.simulator import SimConfig, SimExchange
from marketdata.simulator.intervals import MINUTE_MS

START = int(datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp() * 1000)
FIRST = START - 1440 * MINUTE_MS  # history_minutes=1440, aligned to 4h already


class Sim(SimExchange):
    session: aiohttp.ClientSession


@pytest_asyncio.fixture
async def sim():
    exchange = Sim(
        SimConfig(port=0, symbols=("BTCUSDT", "ETHUSDT"), start_ms=START, history_minutes=1440, speed=1.0)
    )
    await exchange.start()
    async with aiohttp.ClientSession(base_url=exchange.urls.base) as session:
        exchange.session = session
        yield exchange
    await exchange.stop()


async def klines(sim, **params):
    async with sim.session.get("/api/v3/klines", params=params) as response:
        assert response.status == 200
        return [row[0] for row in orjson.loads(await response.read())]


async def faults(sim, payload):
    async with sim.session.post("/_sim/faults", data=orjson.dumps(payload)) as response:
        return response.status, orjson.loads(await response.read())


@pytest.mark.asyncio
async def test_windows_are_left_out_and_pages_stay_full(sim):
    window = {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "start": FIRST + 10 * MINUTE_MS,
        "end": FIRST + 14 * MINUTE_MS,
    }
    status, body = await faults(sim, {"missing_klines": [window]})
    assert status == 200, body
    assert body["faults"]["missing_klines"] == [window]

    opens = await klines(sim, symbol="BTCUSDT", interval="1m", startTime=FIRST, limit=20)
    expected = [FIRST + i * MINUTE_MS for i in range(25) if not 10 <= i <= 14]
    assert opens == expected  # 20 rows: the five missing ones are made up from after the window

    bounded = await klines(
        sim, symbol="BTCUSDT", interval="1m", startTime=FIRST, endTime=FIRST + 15 * MINUTE_MS
    )
    assert bounded == [FIRST + i * MINUTE_MS for i in range(16) if not 10 <= i <= 14]

    latest = await klines(sim, symbol="BTCUSDT", interval="1m", endTime=FIRST + 19 * MINUTE_MS, limit=12)
    assert latest == [FIRST + i * MINUTE_MS for i in range(3, 20) if not 10 <= i <= 14]

    # Other symbols and intervals are untouched.
    assert await klines(sim, symbol="ETHUSDT", interval="1m", startTime=FIRST, limit=20) == [
        FIRST + i * MINUTE_MS for i in range(20)
    ]
    assert len(await klines(sim, symbol="BTCUSDT", interval="5m", startTime=FIRST, limit=5)) == 5


@pytest.mark.asyncio
async def test_setting_replaces_the_windows_and_clear_removes_them(sim):
    window = {"symbol": "BTCUSDT", "interval": "1m", "start": FIRST, "end": FIRST + MINUTE_MS}
    await faults(sim, {"missing_klines": [window]})
    assert (await klines(sim, symbol="BTCUSDT", interval="1m", startTime=FIRST, limit=1)) == [
        FIRST + 2 * MINUTE_MS
    ]
    other = {**window, "start": FIRST + 5 * MINUTE_MS, "end": FIRST + 5 * MINUTE_MS}
    _, body = await faults(sim, {"missing_klines": [other]})
    assert body["faults"]["missing_klines"] == [other]
    assert (await klines(sim, symbol="BTCUSDT", interval="1m", startTime=FIRST, limit=1)) == [FIRST]
    async with sim.session.delete("/_sim/faults") as response:
        assert orjson.loads(await response.read())["faults"]["missing_klines"] == []
    assert len(await klines(sim, symbol="BTCUSDT", interval="1m", startTime=FIRST, limit=10)) == 10


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"symbol": "NOPEUSDT", "interval": "1m", "start": 0, "end": 1}, "not a simulated symbol"),
        ({"symbol": "BTCUSDT", "interval": "7m", "start": 0, "end": 1}, "interval '7m' unknown"),
        ({"symbol": "BTCUSDT", "interval": "1m", "start": 5, "end": 1}, "before start"),
        ({"symbol": "BTCUSDT", "interval": "1m", "start": "0", "end": 1}, "start must be an integer"),
        ({"symbol": "BTCUSDT", "interval": "1m", "start": 0}, "need exactly symbol, interval, start and end"),
    ],
)
async def test_bad_windows_are_refused_and_change_nothing(sim, entry, message):
    status, body = await faults(sim, {"missing_klines": [entry]})
    assert status == 400
    assert message in body["error"]
    async with sim.session.get("/_sim/status") as response:
        assert orjson.loads(await response.read())["faults"]["missing_klines"] == []
