"""Kline frames and REST rows: parsed exactly, refused with a named kind when impossible."""

from collections.abc import Callable
from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.core.klines import FrameError, _parse_ws_frame_carefully, parse_rest_row, parse_ws_frame
from marketdata.core.timeframes import Timeframe

T0 = 1_677_628_800_000  # 2023-03-01 00:00 UTC


def frame(**overrides: object) -> dict[str, object]:
    body = {
        "t": T0,
        "T": T0 + 59_999,
        "s": "BTCUSDT",
        "i": "1m",
        "f": 1,
        "L": 2,
        "o": "23141.57000000",
        "c": "23160.47000000",
        "h": "23169.80000000",
        "l": "23124.85000000",
        "v": "12.34567000",
        "n": 321,
        "x": True,
        "q": "285912.34560000",
        "V": "1.0",
        "Q": "2.0",
        "B": "0",
    }
    body.update(overrides)
    return {"e": "kline", "E": T0 + 60_000 + 12, "s": "BTCUSDT", "k": body}


def test_raw_and_combined_frames_parse_exactly():
    raw = orjson.dumps(frame())
    combined = orjson.dumps({"stream": "btcusdt@kline_1m", "data": frame()})
    for message in (raw, combined, raw.decode()):
        kline = parse_ws_frame(message)
        assert kline is not None
        assert (kline.symbol, kline.timeframe, kline.open_time_ms, kline.closed) == (
            "BTCUSDT",
            Timeframe.M1,
            T0,
            True,
        )
        assert str(kline.open) == "23141.57000000"
        assert kline.event_time_ms == T0 + 60_012
        assert kline.close_time_ms == T0 + 59_999


def test_subscription_answers_are_not_market_data():
    assert parse_ws_frame(b'{"result":null,"id":1}') is None


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (orjson.dumps({"e": "trade"}), "unknown_event"),
        (orjson.dumps({"e": "kline", "E": 1}), "missing_field"),
        (orjson.dumps(frame(i="7m")), "unknown_timeframe"),
        (orjson.dumps(frame(o="abc")), "bad_number"),
        (orjson.dumps(frame(o=23141.57)), "bad_number"),
        (orjson.dumps(frame(o="NaN")), "bad_number"),
        (orjson.dumps(frame(o="Infinity")), "bad_number"),
        (orjson.dumps(frame(t="1677628800000")), "bad_number"),
        (orjson.dumps(frame(x="true")), "bad_number"),
        (orjson.dumps(frame(o="0", l="0")), "non_positive_price"),
        (orjson.dumps(frame(l="-1.0")), "non_positive_price"),
        (orjson.dumps(frame(h="23000.00000000", l="23100.00000000")), "high_below_low"),
        (orjson.dumps(frame(h="23150.00000000")), "ohlc_inconsistent"),
        (orjson.dumps(frame(v="-0.1")), "negative_volume"),
        (orjson.dumps(frame(t=T0 + 1)), "misaligned_open_time"),
        (orjson.dumps({k: v for k, v in frame().items() if k != "E"}), "missing_field"),
    ],
)
def test_impossible_frames_are_refused_by_kind(message, kind):
    with pytest.raises(FrameError) as excinfo:
        parse_ws_frame(message)
    assert excinfo.value.kind == kind


def test_rest_rows_know_whether_the_candle_has_closed():
    row = [T0, "1.00", "2.00", "0.50", "1.50", "10", T0 + 59_999, "15", 7, "0", "0", "0"]
    closed = parse_rest_row(row, symbol="BTCUSDT", timeframe=Timeframe.M1, now_ms=T0 + 60_000)
    forming = parse_rest_row(row, symbol="BTCUSDT", timeframe=Timeframe.M1, now_ms=T0 + 59_999)
    assert closed.closed is True
    assert forming.closed is False
    assert closed.quote_volume == Decimal("15")
    with pytest.raises(FrameError, match="malformed_row"):
        parse_rest_row(row[:5], symbol="BTCUSDT", timeframe=Timeframe.M1, now_ms=T0)


def test_timeframe_parse_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown timeframe '2m'; valid: 1m, 3m, 5m, 10m, 15m, 1h, 4h"):
        Timeframe.parse("2m")


@given(st.integers(min_value=0, max_value=2**41), st.sampled_from(list(Timeframe)))
def test_bucket_start_is_aligned_and_contains_the_time(time_ms, timeframe):
    start = timeframe.bucket_start(time_ms)
    assert timeframe.is_aligned(start)
    assert start <= time_ms < start + timeframe.ms


decimals = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("1000000"), places=8)


@given(st.lists(decimals, min_size=4, max_size=4))
def test_any_consistent_candle_parses_and_keeps_its_strings(prices):
    low, o, c, high = sorted(prices)
    strings = {"o": format(o, "f"), "h": format(high, "f"), "l": format(low, "f"), "c": format(c, "f")}
    kline = parse_ws_frame(orjson.dumps(frame(**strings)))
    assert kline is not None
    assert (format(kline.open, "f"), format(kline.high, "f")) == (strings["o"], strings["h"])


_PRICE = st.sampled_from(
    ["23141.57000000", "23160.47000000", "23169.80000000", "23124.85000000", "23200", "23000", "0", "-1"]
) | st.sampled_from(["NaN", "Infinity", "sNaN", "abc", " 23150 ", "2.315E+4", "", 23141.57, None, 23141])
_BODY_VALUES: dict[str, st.SearchStrategy[object]] = {
    "o": _PRICE,
    "h": _PRICE,
    "l": _PRICE,
    "c": _PRICE,
    "v": st.sampled_from(["0", "1.5", "-0.1", "NaN", "Infinity", 1.5, None]),
    "q": st.sampled_from(["0", "1.5", "-0.1", "NaN", 1, None]),
    "t": st.sampled_from([T0, T0 + 1, T0 + 60_000, -60_000, str(T0), True, float(T0), None]),
    "n": st.sampled_from([0, 5, -1, "5", True, 1.0, None]),
    "x": st.sampled_from([True, False, "true", 1, 0, None]),
    "s": st.sampled_from(["BTCUSDT", "", 5, None]),
    "i": st.sampled_from(["1m", "5m", "4h", "7m", 1, None]),
}
_TOP_VALUES: dict[str, st.SearchStrategy[object]] = {
    "e": st.sampled_from(["kline", "trade", None, 1]),
    "E": st.sampled_from([T0, "1", True, None, 1.5]),
    "result": st.none(),
    "id": st.integers(0, 3),
    "k": st.sampled_from([[], "k", None]),
}


@given(st.data())
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_path_accepts_exactly_what_the_careful_path_accepts(data):
    """`parse_ws_frame` takes a straight path for ordinary frames and falls back to the careful
    one; whatever frame it is given, both must give the same candle or the same refusal."""
    message = frame()
    body = message["k"]
    assert isinstance(body, dict)
    for _ in range(data.draw(st.integers(0, 2))):
        key = data.draw(st.sampled_from(sorted(_BODY_VALUES)))
        if data.draw(st.booleans()):
            body[key] = data.draw(_BODY_VALUES[key])
        else:
            body.pop(key, None)
    for _ in range(data.draw(st.integers(0, 2))):
        key = data.draw(st.sampled_from(sorted(_TOP_VALUES)))
        if data.draw(st.booleans()):
            message[key] = data.draw(_TOP_VALUES[key])
        else:
            message.pop(key, None)
    wrapped = data.draw(st.sampled_from(["raw", "combined", "half-combined"]))
    if wrapped == "combined":
        raw = orjson.dumps({"stream": "btcusdt@kline_1m", "data": message})
    elif wrapped == "half-combined":
        raw = orjson.dumps({"stream": "btcusdt@kline_1m", **message})
    else:
        raw = orjson.dumps(message)

    def outcome(parse: Callable[[bytes], object]) -> object:
        try:
            return parse(raw)
        except FrameError as exc:
            return exc.kind

    assert outcome(parse_ws_frame) == outcome(_parse_ws_frame_carefully)
