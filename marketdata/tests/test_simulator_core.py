"""The simulator's pure core: generation, aggregation, forming candles, selection, replay,
faults, clock and configuration (no sockets, no Django)."""

from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.core.timeframes import Timeframe
from marketdata.simulator.candles import CHECKPOINTS, aggregate, forming_minute
from marketdata.simulator.clock import SimClock
from marketdata.simulator.config import (
    ConfigError,
    SimConfig,
    parse_duration_minutes,
    parse_start,
    parse_symbols,
)
from marketdata.simulator.faults import FaultError, FaultState
from marketdata.simulator.intervals import KLINE_INTERVALS, MINUTE_MS, interval_ms
from marketdata.simulator.market import Market
from marketdata.simulator.replay import ReplayError, load_replay
from marketdata.simulator.series import (
    CHUNK_MS,
    CLOSE,
    FIRST_ID,
    HIGH,
    LAST_ID,
    LOW,
    OPEN,
    QUOTE_VOLUME,
    TAKER_BASE,
    TAKER_QUOTE,
    TRADES,
    VOLUME,
)
from marketdata.simulator.symbols import build_symbols, generated_names, split_symbol
from marketdata.simulator.units import format_units, parse_units
from marketdata.simulator.weights import WeightLimiter, request_weight
from marketdata.tests.shared_data import REAL_CANDLES_CSV

DAY_MS = 1440 * MINUTE_MS
HISTORY_START = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
NOW = HISTORY_START + 2 * DAY_MS + 7 * 60 * MINUTE_MS + 17 * MINUTE_MS + 23_456
REPLAY_CSV = REAL_CANDLES_CSV
SYMBOLS = build_symbols(generated_names(16), seed=7)


def market(seed: int = 7, history_start: int = HISTORY_START, **kwargs) -> Market:
    return Market(SYMBOLS, seed=seed, history_start_ms=history_start, **kwargs)


def fresh_rows(seed, spec_index, first, end):
    return market(seed).minutes(SYMBOLS[spec_index], first, end).copy()


# Fixed-point amounts ----------------------------------------------------------------------


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_units_round_trip(value):
    text = format_units(value)
    assert len(text.split(".")[1]) == 8
    assert parse_units(text) == value


def test_units_format_like_binance():
    assert format_units(2745012000000) == "27450.12000000"
    assert format_units(0) == "0.00000000"
    assert format_units(1) == "0.00000001"
    with pytest.raises(ValueError, match="more than 8 decimals"):
        parse_units("0.000000001")
    with pytest.raises(ValueError, match="not a decimal"):
        parse_units("abc")


# Symbols ----------------------------------------------------------------------------------


def test_generated_symbols_put_real_names_first_and_are_deterministic():
    names = generated_names(14)
    assert names[:3] == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    assert names[-2:] == ["SIM0001USDT", "SIM0002USDT"]
    assert len(set(generated_names(2000))) == 2000
    assert build_symbols(generated_names(40), seed=3) == build_symbols(generated_names(40), seed=3)


def test_symbol_filters_are_binance_decimal_strings_and_consistent():
    for spec in build_symbols(generated_names(200), seed=1):
        info = spec.exchange_info()
        filters = {item["filterType"]: item for item in info["filters"]}
        for key in ("minPrice", "maxPrice", "tickSize"):
            assert len(filters["PRICE_FILTER"][key].split(".")[1]) == 8
        tick = Decimal(filters["PRICE_FILTER"]["tickSize"])
        step = Decimal(filters["LOT_SIZE"]["stepSize"])
        assert tick > 0
        assert step > 0
        assert Decimal(filters["PRICE_FILTER"]["maxPrice"]) % tick == 0
        assert Decimal(filters["LOT_SIZE"]["maxQty"]) % step == 0
        assert Decimal(filters["NOTIONAL"]["minNotional"]) > 0
        assert info["baseAsset"] + info["quoteAsset"] == info["symbol"]
    btc = build_symbols(["BTCUSDT"], seed=1)[0].exchange_info()
    assert btc["filters"][0] == {
        "filterType": "PRICE_FILTER",
        "minPrice": "0.01000000",
        "maxPrice": "100000000.00000000",
        "tickSize": "0.01000000",
    }


def test_split_symbol_knows_quote_assets():
    assert split_symbol("ETHBTC") == ("ETH", "BTC")
    assert split_symbol("SIM0001USDT") == ("SIM0001", "USDT")
    with pytest.raises(ValueError, match="known quote asset"):
        split_symbol("FOOBAR")


# Generation: determinism and shape --------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    spec_index=st.integers(0, len(SYMBOLS) - 1),
    first_minute=st.integers(0, 2 * 1440),
    length=st.integers(1, 600),
)
def test_same_seed_gives_identical_minutes_whatever_the_order_of_requests(spec_index, first_minute, length):
    first = HISTORY_START + first_minute * MINUTE_MS
    end = first + length * MINUTE_MS
    spec = SYMBOLS[spec_index]
    warmed = market()
    # Touch other chunks first (later, earlier, other symbols) in the warmed instance.
    warmed.minutes(spec, HISTORY_START + 2 * DAY_MS, HISTORY_START + 2 * DAY_MS + CHUNK_MS)
    warmed.minutes(SYMBOLS[(spec_index + 1) % len(SYMBOLS)], HISTORY_START, HISTORY_START + CHUNK_MS)
    expected = fresh_rows(7, spec_index, first, end)
    assert np.array_equal(warmed.minutes(spec, first, end), expected)
    # Minute by minute equals the range.
    single = np.concatenate(
        [
            market().minutes(spec, t, t + MINUTE_MS)
            for t in range(first, min(end, first + 5 * MINUTE_MS), MINUTE_MS)
        ],
        axis=1,
    )
    assert np.array_equal(single, expected[:, : single.shape[1]])


def test_candles_do_not_depend_on_history_start_or_cache_size():
    late = market(history_start=HISTORY_START + DAY_MS, cache_chunks=1)
    first, end = HISTORY_START + DAY_MS, HISTORY_START + 2 * DAY_MS
    for spec in SYMBOLS[:4]:
        assert np.array_equal(late.minutes(spec, first, end), market().minutes(spec, first, end))


def test_different_seeds_give_different_markets():
    first, end = HISTORY_START, HISTORY_START + 60 * MINUTE_MS
    assert not np.array_equal(fresh_rows(7, 0, first, end), fresh_rows(8, 0, first, end))


def test_minute_invariants_hold_over_days_of_every_symbol():
    m = market()
    zero_minutes = 0
    for spec in SYMBOLS:
        rows = m.minutes(spec, HISTORY_START, HISTORY_START + 2 * DAY_MS)
        o, h, l, c = rows[OPEN], rows[HIGH], rows[LOW], rows[CLOSE]  # noqa: E741
        assert (h >= np.maximum(o, c)).all()
        assert (l <= np.minimum(o, c)).all()
        assert (l > 0).all()
        for prices in (o, h, l, c):
            assert (prices % spec.tick == 0).all(), spec.name
        assert (rows[VOLUME] % spec.step == 0).all()
        assert (rows[TAKER_BASE] <= rows[VOLUME]).all()
        assert (rows[TAKER_QUOTE] <= rows[QUOTE_VOLUME]).all()
        traded = rows[TRADES] > 0
        assert np.array_equal(traded, rows[VOLUME] > 0)
        # A minute opens at the previous close; one without trades stays there, as Binance.
        assert np.array_equal(o[1:], c[:-1])
        quiet = ~traded
        zero_minutes += int(quiet.sum())
        for field in (OPEN, HIGH, LOW):
            assert np.array_equal(rows[field][quiet], c[quiet])
        assert (rows[FIRST_ID][quiet] == -1).all()
        assert (rows[LAST_ID][quiet] == -1).all()
        ids = rows[:, traded]
        assert (ids[LAST_ID] - ids[FIRST_ID] + 1 == ids[TRADES]).all()
        assert (np.diff(ids[FIRST_ID]) > 0).all()
        # Prices stay within a band around the base price (the walk is folded).
        price = c / 1e8
        assert price.min() > spec.base_price / 3
        assert price.max() < spec.base_price * 3
    assert zero_minutes > 0


def test_market_for_2000_symbols_starts_without_generating_anything():
    specs = build_symbols(generated_names(2000), seed=1)
    m = Market(specs, seed=1, history_start_ms=HISTORY_START)
    assert len(m._cache) == 0
    candles = m.klines(specs[1999], MINUTE_MS, NOW, start_ms=None, end_ms=None, limit=5)
    assert len(candles) == 5
    assert len(m._cache) == 1


# Aggregation and selection ----------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    interval=st.sampled_from(list(KLINE_INTERVALS)),
    spec_index=st.integers(0, len(SYMBOLS) - 1),
    start_offset=st.integers(0, 2 * DAY_MS),
    limit=st.integers(1, 40),
)
def test_klines_equal_the_aggregation_of_1m(interval, spec_index, start_offset, limit):
    length = interval_ms(interval)
    m, spec = market(), SYMBOLS[spec_index]
    candles = m.klines(spec, length, NOW, start_ms=HISTORY_START + start_offset, end_ms=None, limit=limit)
    assert candles
    assert len(candles) <= limit
    for candle in candles:
        assert candle.open_time % length == 0
        assert candle.open_time >= HISTORY_START + start_offset
        assert candle.close_time == candle.open_time + length - 1
        assert candle.open_time <= NOW
        if not candle.closed:
            assert candle is candles[-1]
            assert candle.open_time <= NOW < candle.close_time
            continue
        minutes = m.klines(
            spec, MINUTE_MS, NOW, start_ms=candle.open_time, end_ms=candle.close_time, limit=1000
        )
        assert len(minutes) == length // MINUTE_MS
        assert candle.open == minutes[0].open
        assert candle.close == minutes[-1].close
        assert candle.high == max(c.high for c in minutes)
        assert candle.low == min(c.low for c in minutes)
        assert candle.volume == sum(c.volume for c in minutes)
        assert candle.quote_volume == sum(c.quote_volume for c in minutes)
        assert candle.trades == sum(c.trades for c in minutes)
        assert candle.taker_base == sum(c.taker_base for c in minutes)
        assert candle.taker_quote == sum(c.taker_quote for c in minutes)
        traded = [c for c in minutes if c.trades]
        assert candle.first_trade_id == (traded[0].first_trade_id if traded else -1)
        assert candle.last_trade_id == (traded[-1].last_trade_id if traded else -1)


@pytest.mark.parametrize("interval", ["1m", "3m", "5m", "15m", "1h", "4h"])
def test_buckets_are_utc_epoch_aligned_like_the_core_timeframes(interval):
    length = interval_ms(interval)
    assert length == Timeframe(interval).ms
    candles = market().klines(SYMBOLS[0], length, NOW, start_ms=HISTORY_START + 1, end_ms=None, limit=20)
    for candle in candles:
        assert Timeframe(interval).is_aligned(candle.open_time)
        assert Timeframe(interval).bucket_start(candle.close_time) == candle.open_time


def test_klines_selection_follows_binance():
    m, spec = market(), SYMBOLS[0]
    latest = m.klines(spec, MINUTE_MS, NOW, start_ms=None, end_ms=None, limit=500)
    assert len(latest) == 500
    assert latest[-1].open_time == NOW - NOW % MINUTE_MS
    assert not latest[-1].closed
    assert all(candle.closed for candle in latest[:-1])
    # startTime inside a candle starts at the next open; endTime includes the candle opening at it.
    mid = HISTORY_START + 10 * MINUTE_MS + 1
    rows = m.klines(spec, MINUTE_MS, NOW, start_ms=mid, end_ms=mid + 4 * MINUTE_MS, limit=1000)
    assert [row.open_time for row in rows] == [HISTORY_START + i * MINUTE_MS for i in range(11, 15)]
    ending = m.klines(spec, MINUTE_MS, NOW, start_ms=None, end_ms=HISTORY_START + 100 * MINUTE_MS, limit=3)
    assert [row.open_time for row in ending] == [HISTORY_START + i * MINUTE_MS for i in (98, 99, 100)]
    # Nothing before the history or after now.
    assert m.klines(spec, MINUTE_MS, NOW, start_ms=0, end_ms=HISTORY_START - 1, limit=10) == []
    assert m.klines(spec, MINUTE_MS, NOW, start_ms=NOW + MINUTE_MS, end_ms=None, limit=10) == []
    assert m.klines(spec, MINUTE_MS, NOW, start_ms=0, end_ms=None, limit=2)[0].open_time == HISTORY_START


def test_closed_between_is_klines_without_the_forming_candle_or_limit():
    m, spec = market(), SYMBOLS[2]
    truth = m.closed_between(spec, 5 * MINUTE_MS, NOW, start_ms=None, end_ms=None)
    assert truth[0].open_time == HISTORY_START
    assert all(candle.closed for candle in truth)
    assert truth[-1].open_time == NOW - NOW % (5 * MINUTE_MS) - 5 * MINUTE_MS
    paged = m.klines(spec, 5 * MINUTE_MS, NOW, start_ms=HISTORY_START, end_ms=None, limit=1000)
    assert paged[: len(truth)] == truth[: len(paged)]
    assert m.count_closed_between(5 * MINUTE_MS, NOW, start_ms=None, end_ms=None) == len(truth)


# Forming candles --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    interval=st.sampled_from(["1m", "5m", "1h"]),
    spec_index=st.integers(0, len(SYMBOLS) - 1),
    offset=st.integers(0, DAY_MS),
)
def test_forming_candle_is_consistent_with_its_final(interval, spec_index, offset):
    length = interval_ms(interval)
    m, spec = market(), SYMBOLS[spec_index]
    now = HISTORY_START + DAY_MS + offset
    forming = m.forming(spec, length, now)
    final = m.closed(spec, length, forming.open_time, forming.open_time)[0]
    assert not forming.closed
    assert final.closed
    assert forming.open_time == final.open_time
    assert forming.open == final.open
    assert final.low <= forming.low <= min(forming.open, forming.close)
    assert max(forming.open, forming.close) <= forming.high <= final.high
    assert forming.volume <= final.volume
    assert forming.quote_volume <= final.quote_volume
    assert forming.trades <= final.trades
    assert forming.first_trade_id == final.first_trade_id
    if forming.trades:
        assert forming.last_trade_id == forming.first_trade_id + forming.trades - 1 or length > MINUTE_MS
    # Later is never less.
    later = m.forming(spec, length, min(now + 7_000, forming.close_time))
    assert later.high >= forming.high
    assert later.low <= forming.low
    assert later.volume >= forming.volume
    assert later.trades >= forming.trades


def test_forming_minute_passes_through_high_and_low():
    final = [100, 130, 90, 120, 1000, 110_000, 10, 400, 44_000, 5, 14]
    path = [
        forming_minute(final, minute_open=HISTORY_START, tick=1, step=1, checkpoint=j)
        for j in range(CHECKPOINTS)
    ]
    assert max(state[1] for state in path) == 130
    assert min(state[2] for state in path) == 90
    assert all(state[0] == 100 for state in path)
    assert [state[4] for state in path] == sorted(state[4] for state in path)
    no_trades = [5, 5, 5, 5, 0, 0, 0, 0, 0, -1, -1]
    assert forming_minute(no_trades, minute_open=0, tick=1, step=1, checkpoint=3) == no_trades


def test_aggregate_of_quiet_minutes_has_no_trade_ids():
    rows = np.array([[5, 5, 5, 5, 0, 0, 0, 0, 0, -1, -1]] * 3, dtype=np.int64).T
    assert aggregate(rows, 3)[:, 0].tolist() == [5, 5, 5, 5, 0, 0, 0, 0, 0, -1, -1]


# Replay -----------------------------------------------------------------------------------


def test_replay_starts_at_the_history_start_with_the_file_values():
    rows = load_replay(REPLAY_CSV)
    assert rows.shape[1] == 30_240
    spec = build_symbols(["BTCUSDT"], seed=1)
    m = Market(spec, seed=1, history_start_ms=HISTORY_START, replay={"BTCUSDT": rows})
    first = m.klines(spec[0], MINUTE_MS, NOW, start_ms=HISTORY_START, end_ms=None, limit=2)
    # 2023-03-01 00:00,23140.48,23150.77,23128.52,23142.31,2.131777
    assert first[0].rest_row()[:6] == [
        HISTORY_START,
        "23140.48000000",
        "23150.77000000",
        "23128.52000000",
        "23142.31000000",
        "2.13177700",
    ]
    assert first[1].rest_row()[1] == "23143.89000000"
    assert first[0].trades > 0
    # After the last row the file starts over.
    wrapped = m.klines(
        spec[0],
        MINUTE_MS,
        NOW + 30 * DAY_MS,
        start_ms=HISTORY_START + 30_240 * MINUTE_MS,
        end_ms=None,
        limit=1,
    )
    assert wrapped[0].rest_row()[1:6] == first[0].rest_row()[1:6]


def test_replay_fills_missing_minutes_and_rejects_bad_files(tmp_path):
    path = tmp_path / "gap.csv"
    path.write_text(
        "open_time,open,high,low,close,volume\n"
        "2023-03-01T00:00:00Z,10,12,9,11,1.5\n"
        "2023-03-01T00:03:00Z,11,13,10,12,2\n"
    )
    rows = load_replay(path)
    assert rows.shape[1] == 4
    assert rows[CLOSE].tolist() == [11 * 10**8] * 3 + [12 * 10**8]
    assert rows[VOLUME].tolist()[1:3] == [0, 0]
    bad = tmp_path / "bad.csv"
    bad.write_text("open_time,open,high,low,close,volume\n2023-03-01T00:00:00Z,10,12,9,abc,1\n")
    with pytest.raises(ReplayError, match=r"bad.csv:2: close"):
        load_replay(bad)
    (tmp_path / "cols.csv").write_text("open_time,open\n")
    with pytest.raises(ReplayError, match="missing column"):
        load_replay(tmp_path / "cols.csv")


# Faults, clock, weights, configuration ----------------------------------------------------


def test_fault_decisions_are_deterministic_and_match_their_rates():
    faults = FaultState(seed=3)
    faults.apply(
        {"ws_duplicate_rate": 0.5, "ws_malformed_rate": 0.25}, now_ms=0, monotonic_now=0, symbols=set()
    )
    picks = [faults.duplicates("btcusdt@kline_1m", t * MINUTE_MS) for t in range(2000)]
    assert picks == [
        FaultState(seed=3, duplicate_rate=0.5).duplicates("btcusdt@kline_1m", t * MINUTE_MS)
        for t in range(2000)
    ]
    assert 850 < sum(picks) < 1150
    kinds = {faults.malformed("s", t, 0) for t in range(400)}
    assert kinds == {None, "invalid-json", "missing-field", "wrong-type", "non-numeric-price"}


def test_rest_error_fault_counts_and_cycles_5xx():
    faults = FaultState(seed=1)
    faults.apply({"rest_error": {"status": "5xx", "count": 5}}, now_ms=0, monotonic_now=0.0, symbols=set())
    assert faults.rest_error is not None
    taken = [faults.rest_error.take(0.0) for _ in range(6)]
    assert taken == [500, 502, 503, 504, 500, None]
    faults.apply({"rest_error": {"status": 429, "seconds": 2}}, now_ms=0, monotonic_now=10.0, symbols=set())
    assert faults.rest_error.take(11.0) == 429
    assert faults.rest_error.take(12.0) is None


def test_silence_starts_with_the_forming_candle():
    faults = FaultState(seed=1)
    now = HISTORY_START + 5 * MINUTE_MS + 30_000
    faults.apply(
        {"ws_silence": {"symbol": "BTCUSDT", "interval": "1m", "candles": 2}},
        now_ms=now,
        monotonic_now=0,
        symbols={"BTCUSDT"},
    )
    opens = [HISTORY_START + i * MINUTE_MS for i in range(4, 9)]
    assert [faults.is_silenced("btcusdt@kline_1m", t) for t in opens] == [False, True, True, False, False]
    assert not faults.is_silenced("btcusdt@kline_3m", opens[1])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"nope": 1}, "unknown fault setting"),
        ({"rest_error": {"status": 404, "count": 1}}, "not one of 429, 418, 500"),
        ({"rest_error": {"status": 429}}, "needs count"),
        ({"ws_silence": {"symbol": "XXXUSDT", "interval": "1m", "candles": 1}}, "not a simulated symbol"),
        ({"ws_silence": {"symbol": "BTCUSDT", "interval": "10m", "candles": 1}}, "valid: 1m, 3m"),
        ({"ws_duplicate_rate": 2}, "from 0 to 1"),
        ({"ws_drop_every_s": 0}, "> 0"),
    ],
)
def test_fault_settings_are_validated(payload, message):
    faults = FaultState(seed=1)
    with pytest.raises(FaultError, match=message):
        faults.apply(payload, now_ms=0, monotonic_now=0, symbols={"BTCUSDT"})
    assert faults.describe(0)["ws_duplicate_rate"] == 0.0


def test_clock_runs_speed_times_faster_from_its_start():
    wall = [100.0]
    clock = SimClock(HISTORY_START, 60, monotonic=lambda: wall[0])
    assert clock.now_ms() == HISTORY_START
    clock.start()
    wall[0] += 1.5
    assert clock.now_ms() == HISTORY_START + 90_000
    assert clock.seconds_until(HISTORY_START + 120_000) == pytest.approx(0.5)
    assert clock.seconds_until(HISTORY_START) == 0.0
    with pytest.raises(ValueError, match="> 0"):
        SimClock(0, 0)


def test_a_clock_that_follows_the_wall_clock_starts_at_it():
    wall = [100.0]
    clock = SimClock(HISTORY_START, 1, monotonic=lambda: wall[0])
    clock.start(wall_ms=HISTORY_START + 12_500)  # started 12.5 s into the minute
    assert clock.now_ms() == HISTORY_START + 12_500
    wall[0] += 2
    assert clock.now_ms() == HISTORY_START + 14_500
    assert clock.seconds_until(HISTORY_START + 60_000) == pytest.approx(45.5)


def test_weight_limiter_window_and_retry_after():
    wall = [0.0]
    limiter = WeightLimiter(10, 60, monotonic=lambda: wall[0])
    assert limiter.charge("a", 6) == (6, None)
    assert limiter.charge("b", 6) == (6, None)
    wall[0] = 20.0
    assert limiter.charge("a", 6) == (12, 40)
    wall[0] = 60.0
    assert limiter.charge("a", 1) == (1, None)
    assert request_weight("GET", "/api/v3/exchangeInfo", {}) == 20
    assert request_weight("GET", "/api/v3/klines", {"limit": "1000"}) == 2
    assert request_weight("GET", "/api/v3/openOrders", {}) == 80
    assert request_weight("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}) == 6


def test_configuration_parsing_and_validation():
    assert parse_symbols("3") == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    assert parse_symbols("btcusdt, ethbtc") == ("BTCUSDT", "ETHBTC")
    assert len(parse_symbols("2000")) == 2000
    with pytest.raises(ConfigError, match="must be 1-2000"):
        parse_symbols("2001")
    with pytest.raises(ConfigError, match="twice"):
        parse_symbols("BTCUSDT,BTCUSDT")
    assert parse_duration_minutes("2d") == 2880
    assert parse_duration_minutes("90m") == 90
    with pytest.raises(ConfigError, match="2x"):
        parse_duration_minutes("2x")
    assert parse_start("2024-03-01T00:00:00Z") == HISTORY_START
    with pytest.raises(ConfigError, match="whole minute"):
        parse_start("2024-03-01T00:00:30Z")
    with pytest.raises(ConfigError, match="speed 0"):
        SimConfig(speed=0)
    with pytest.raises(ConfigError, match="at most 2000"):
        SimConfig(symbols=tuple(f"S{i}USDT" for i in range(2001)))
