"""Resampling: complete buckets only, exact digits, and the same answer however candles arrive."""

from __future__ import annotations

import decimal
import functools
from collections.abc import Iterable
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.core.resample import (
    DEFAULT_DERIVATIONS,
    CandleArrays,
    ClosedCandle,
    FixedPointColumn,
    resample,
    resample_history,
    validate_derivations,
)
from marketdata.core.resample_stream import ConflictingCandleError, Resampler, StaleCandleError
from marketdata.core.timeframes import Timeframe
from marketdata.tests.factories import kline

M1 = Timeframe.M1
T0 = 1_677_628_800_000  # 2023-03-01 00:00 UTC, on every bucket boundary up to 4h
MINUTE = 60_000


def candle(
    minute: int,
    *,
    o: str = "10.5",
    h: str = "11.25",
    low: str = "10",
    c: str = "11",
    v: str = "1.5",
    q: str = "15.75",
    n: int = 2,
    imputed: int = 0,
    timeframe: Timeframe = M1,
) -> ClosedCandle:
    return ClosedCandle(
        timeframe=timeframe,
        open_time_ms=T0 + minute * MINUTE,
        open=Decimal(o),
        high=Decimal(h),
        low=Decimal(low),
        close=Decimal(c),
        volume=Decimal(v),
        quote_volume=Decimal(q),
        trades=n,
        imputed_inputs=imputed,
    )


def exact(c: ClosedCandle) -> tuple[object, ...]:
    """Everything about a candle, digits included ("1.0" and "1.00" differ)."""
    return (
        c.timeframe,
        c.open_time_ms,
        *(value.as_tuple() for value in c.decimal_values()),
        c.trades,
        c.imputed_inputs,
    )


def batch(candles: Iterable[ClosedCandle], target: Timeframe, source: Timeframe = M1) -> list[ClosedCandle]:
    ordered = sorted(candles, key=lambda c: c.open_time_ms)
    return resample(CandleArrays.from_candles(source, ordered), target).to_candles()


def minutes(derived: Iterable[ClosedCandle]) -> list[int]:
    return [(c.open_time_ms - T0) // MINUTE for c in derived]


# --- Complete buckets only ---------------------------------------------------------------------


def test_a_bucket_with_a_missing_candle_is_never_derived():
    history = [candle(m) for m in range(9) if m != 4]  # 3m buckets at 0, 3 (partial), 6
    assert minutes(batch(history, Timeframe.M3)) == [0, 6]


def test_partial_buckets_at_either_end_are_left_out():
    history = [candle(m) for m in range(1, 8)]  # 1..7: the buckets at 0 and 6 are partial
    assert minutes(batch(history, Timeframe.M3)) == [3]
    gappy = [candle(m) for m in (1, 2, 3, 4, 5, 7, 10, 11)]  # with gaps: the other code path
    assert minutes(batch(gappy, Timeframe.M3)) == [3]


def test_streaming_emits_a_bucket_when_its_last_candle_arrives_in_any_order():
    resampler = Resampler(M1, [Timeframe.M3])
    assert resampler.add(candle(2)) == []
    assert resampler.add(candle(0)) == []
    [derived] = resampler.add(candle(1))
    assert (derived.timeframe, derived.open_time_ms) == (Timeframe.M3, T0)
    assert resampler.add(candle(3)) == []


def test_a_forming_kline_cannot_be_resampled():
    with pytest.raises(ValueError, match="not closed yet"):
        ClosedCandle.from_kline(kline(closed=False))
    closed = ClosedCandle.from_kline(kline(), imputed=True)
    assert (closed.open, closed.imputed_inputs, closed.imputed) == (Decimal("23141.57000000"), 1, True)


def test_ohlcv_of_a_bucket():
    history = [
        candle(0, o="10", h="12", low="9", c="11", v="1", q="10", n=3),
        candle(1, o="11", h="15", low="10", c="14", v="2.5", q="30", n=4),
        candle(2, o="14", h="14.5", low="8.75", c="9", v="0", q="0", n=0, imputed=1),
    ]
    [derived] = batch(history, Timeframe.M3)
    assert derived == ClosedCandle(
        Timeframe.M3,
        T0,
        Decimal("10"),
        Decimal("15"),
        Decimal("8.75"),
        Decimal("9"),
        Decimal("3.5"),
        Decimal("40"),
        7,
        imputed_inputs=1,
    )
    assert derived.imputed


# --- Digits ------------------------------------------------------------------------------------


def test_digits_follow_decimal_arithmetic():
    history = [
        candle(0, o="10.10", h="12.0", low="9.50", c="11", v="0E-8", q="1.5"),
        candle(1, o="11", h="12.00", low="9.5", c="12.000", v="0E-8", q="0.25"),
        candle(2, o="12", h="12", low="9.500", c="11.10", v="0E-8", q="2"),
    ]
    [derived] = batch(history, Timeframe.M3)
    assert str(derived.open) == "10.10"  # the first candle's own digits
    assert str(derived.close) == "11.10"  # the last candle's own digits
    assert str(derived.high) == "12"  # Decimal.max: of equal values, the fewest places
    assert str(derived.low) == "9.500"  # Decimal.min: of equal values, the most places
    assert repr(derived.volume) == "Decimal('0E-8')"  # 0E-8 + 0E-8 + 0E-8
    assert str(derived.quote_volume) == "3.75"  # 1.5 + 0.25 + 2


def test_results_do_not_depend_on_the_decimal_context():
    history = [candle(m, v="1234567.891234567", q="98765432.1") for m in range(15)]
    expected = [exact(c) for c in batch(history, Timeframe.M15)]
    with decimal.localcontext(decimal.Context(prec=3, traps=[decimal.Inexact])):
        assert [exact(c) for c in batch(history, Timeframe.M15)] == expected
        streamed = Resampler(M1, [Timeframe.M15]).add_many(history)
        assert [exact(c) for c in streamed] == expected


def test_sums_past_int64_stay_exact():
    huge = "9" * 20  # more units than int64 holds, even at scale 0
    history = [candle(m, v=huge, q="5000000000000000000.5", n=2**62) for m in range(3)]
    [derived] = batch(history, Timeframe.M3)
    assert derived.volume == 3 * Decimal(huge)
    assert derived.quote_volume == Decimal("15000000000000000001.5")
    assert derived.trades == 3 * 2**62


def test_fixed_point_round_trip_keeps_every_digit():
    values = [Decimal(s) for s in ("0", "0E-8", "1.10000000", "27450.12", "5E+2", "0.000000001", "12")]
    column = FixedPointColumn.from_decimals(values)
    assert column.scale == 9  # "1.10000000" needs one place, "0.000000001" nine
    assert [v.as_tuple() for v in column.decimals()] == [v.as_tuple() for v in values]


@pytest.mark.parametrize("value", ["-1", "-0", "NaN", "Infinity"])
def test_negative_and_non_finite_values_are_refused(value):
    with pytest.raises(ValueError, match=r"negative|finite"):
        FixedPointColumn.from_decimals([Decimal(value)])


# --- Imputed candles ---------------------------------------------------------------------------


def test_imputed_counts_add_up_through_a_chain():
    history = [candle(m, imputed=1 if m in (1, 6, 7) else 0) for m in range(10)]
    [direct] = batch(history, Timeframe.M10)
    fives = batch(history, Timeframe.M5)
    assert [c.imputed_inputs for c in fives] == [1, 2]
    [chained] = batch(fives, Timeframe.M10, source=Timeframe.M5)
    assert direct.imputed_inputs == chained.imputed_inputs == 3


# --- Refusals ----------------------------------------------------------------------------------


def test_misaligned_candles_are_refused_with_the_open_time():
    resampler = Resampler(M1, [Timeframe.M3])
    skewed = ClosedCandle(M1, T0 + 30_000, *candle(0).decimal_values(), trades=1)
    with pytest.raises(ValueError, match=rf"open time {T0 + 30_000} ms is not on a 1m boundary"):
        resampler.add(skewed)
    with pytest.raises(ValueError, match=rf"open time {T0 + 30_000} ms is not on a 1m boundary"):
        batch([candle(0), skewed, candle(2)], Timeframe.M3)


def test_batch_refuses_unsorted_or_repeated_open_times():
    arrays = CandleArrays.from_candles(M1, [candle(0), candle(2), candle(1)])
    with pytest.raises(ValueError, match="strictly increasing"):
        resample(arrays, Timeframe.M3)
    arrays = CandleArrays.from_candles(M1, [candle(0), candle(0), candle(1)])
    with pytest.raises(ValueError, match="strictly increasing"):
        resample(arrays, Timeframe.M3)


def test_a_candle_of_another_timeframe_is_refused():
    with pytest.raises(ValueError, match=r"a 5m candle .* resampler of 1m candles"):
        Resampler(M1, [Timeframe.M10]).add(candle(0, timeframe=Timeframe.M5))


def test_empty_history_derives_nothing():
    assert batch([], Timeframe.H4) == []
    assert len(resample_history(CandleArrays.from_candles(M1, []))[(Timeframe.H1, Timeframe.H4)]) == 0


# --- Duplicates --------------------------------------------------------------------------------


def test_the_same_candle_twice_changes_nothing():
    resampler = Resampler(M1, [Timeframe.M3])
    resampler.add_many([candle(0), candle(1), candle(2)])
    assert resampler.add(candle(1)) == []
    assert resampler.add_many([candle(0), candle(2), candle(2)]) == []


def test_a_real_candle_replaces_an_imputed_one_and_the_bucket_is_derived_again():
    resampler = Resampler(M1, [Timeframe.M3])
    stand_in = candle(1, o="11", h="11", low="11", c="11", v="0", q="0", n=0, imputed=1)
    [first] = resampler.add_many([candle(0), stand_in, candle(2)])
    assert first.imputed_inputs == 1
    [again] = resampler.add(candle(1, h="20"))
    assert (again.open_time_ms, again.high, again.imputed_inputs) == (T0, Decimal("20"), 0)
    assert resampler.add(stand_in) == []  # an imputed candle never replaces a real one


def test_two_different_real_candles_conflict_and_the_first_stays():
    resampler = Resampler(M1, [Timeframe.M3])
    resampler.add(candle(0, h="12"))
    with pytest.raises(ConflictingCandleError, match="two different 1m candles"):
        resampler.add(candle(0, h="13"))
    with pytest.raises(ConflictingCandleError):
        resampler.add(candle(0, h="12.0"))  # an equal value with other digits is another candle
    [derived] = resampler.add_many([candle(1), candle(2)])
    assert derived.high == Decimal("12")


def test_add_many_takes_all_or_nothing():
    resampler = Resampler(M1, [Timeframe.M3])
    with pytest.raises(ConflictingCandleError):
        resampler.add_many([candle(0), candle(1), candle(1, c="1")])
    assert len(resampler) == 0
    assert minutes(resampler.add_many([candle(0), candle(1), candle(2)])) == [0]


def test_discarded_candles_are_refused_as_stale():
    resampler = Resampler(M1, [Timeframe.M3, Timeframe.M15])
    resampler.add_many([candle(m) for m in range(20)])
    resampler.discard_before(T0 + 17 * MINUTE)  # rounds down to the 15m bucket at minute 15
    assert len(resampler) == 5
    with pytest.raises(StaleCandleError):
        resampler.add(candle(14))
    assert minutes(resampler.add_many([candle(m) for m in range(20, 30)])) == [18, 21, 24, 27, 15]


# --- The derivation map ------------------------------------------------------------------------


def test_the_default_map_is_valid():
    assert validate_derivations(DEFAULT_DERIVATIONS) == DEFAULT_DERIVATIONS
    assert validate_derivations([("1m", "3m"), ("1h", "4h")]) == (
        (M1, Timeframe.M3),
        (Timeframe.H1, Timeframe.H4),
    )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("1m", "3m"), ("2m", "10m")], r"derivation #2 \('2m', '10m'\): unknown timeframe '2m'"),
        ([("5m", "3m")], r"derivation #1 \('5m', '3m'\): target 3m is not longer than source 5m"),
        ([("5m", "5m")], "target 5m is not longer than source 5m"),
        ([("3m", "10m")], r"derivation #1 \('3m', '10m'\): target 10m is not a whole multiple of source 3m"),
        ([("1m", "3m"), ("1m", "3m")], r"derivation #2 \('1m', '3m'\) is listed twice"),
        (["1m3m"], "derivation #1 '1m3m' is not a \\(source, target\\) pair"),
        ([("1m", "3m", "5m")], "is not a \\(source, target\\) pair"),
    ],
)
def test_a_bad_map_names_the_bad_entry(entries, message):
    with pytest.raises(ValueError, match=message):
        validate_derivations(entries)


def test_a_resampler_refuses_a_target_it_cannot_derive():
    with pytest.raises(ValueError, match="not a whole multiple"):
        Resampler(Timeframe.M3, [Timeframe.M10])
    with pytest.raises(ValueError, match="at least one target"):
        Resampler(M1, [])


# --- Properties --------------------------------------------------------------------------------

TARGETS = (Timeframe.M3, Timeframe.M5, Timeframe.M10, Timeframe.M15)


@st.composite
def decimal_strings(draw: st.DrawFn) -> Decimal:
    """Non-negative decimals, often one of a few values written with more or fewer trailing
    zeros ("1.5", "1.50", "15E-1"), so that equal values with different digits meet in a bucket."""
    if draw(st.booleans()):
        coefficient, exponent = draw(st.sampled_from([(0, 0), (15, -1), (2, 0), (2745012, -2), (10**19, 0)]))
        zeros = draw(st.integers(0, 3))
        return Decimal(f"{coefficient * 10**zeros}E{exponent - zeros}")
    return Decimal(f"{draw(st.integers(0, 10**12))}E{-draw(st.integers(-2, 10))}")


@st.composite
def histories(draw: st.DrawFn) -> list[ClosedCandle]:
    """1m candles over a stretch of up to 45 minutes, with holes, some imputed."""
    start = draw(st.integers(0, 20))
    slots = range(start, start + draw(st.integers(0, 45)))
    holes = draw(st.sets(st.sampled_from(slots))) if slots and draw(st.booleans()) else set()
    return [
        ClosedCandle(
            M1,
            T0 + minute * MINUTE,
            open=draw(decimal_strings()),
            high=draw(decimal_strings()),
            low=draw(decimal_strings()),
            close=draw(decimal_strings()),
            volume=draw(decimal_strings()),
            quote_volume=draw(decimal_strings()),
            trades=draw(st.integers(0, 10**6)),
            imputed_inputs=draw(st.sampled_from([0, 0, 0, 1])),
        )
        for minute in slots
        if minute not in holes
    ]


@st.composite
def arrivals(draw: st.DrawFn, history: list[ClosedCandle]) -> list[ClosedCandle]:
    """`history` in a random order, some candles twice, and imputed stand-ins for some real ones
    (arriving before or after them), which the real ones must win over."""
    stream = list(history)
    for real in history:
        if draw(st.booleans()):
            stream.append(real)
        if real.imputed_inputs == 0 and draw(st.integers(0, 3)) == 0:
            price = draw(decimal_strings())
            zero = Decimal(0)
            stream.append(
                ClosedCandle(
                    M1, real.open_time_ms, price, price, price, price, zero, zero, 0, imputed_inputs=1
                )
            )
    return draw(st.permutations(stream))


def by_key(derived: Iterable[ClosedCandle]) -> dict[tuple[Timeframe, int], tuple[object, ...]]:
    """The last value returned for each derived candle: later ones supersede earlier ones."""
    return {(c.timeframe, c.open_time_ms): exact(c) for c in derived}


def batch_all(history: list[ClosedCandle]) -> dict[tuple[Timeframe, int], tuple[object, ...]]:
    return by_key(c for target in TARGETS for c in batch(history, target))


def settled(received: Iterable[ClosedCandle]) -> list[ClosedCandle]:
    """What the duplicate rule keeps of `received`: per open time, the fewest imputed inputs."""
    kept: dict[int, ClosedCandle] = {}
    for c in received:
        if c.open_time_ms not in kept or c.imputed_inputs < kept[c.open_time_ms].imputed_inputs:
            kept[c.open_time_ms] = c
    return list(kept.values())


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_streaming_in_any_order_with_duplicates_equals_batch(data):
    history = data.draw(histories())
    stream = data.draw(arrivals(history))
    resampler = Resampler(M1, TARGETS)
    returned: dict[tuple[Timeframe, int], tuple[object, ...]] = {}
    for position, arriving in enumerate(stream, start=1):
        derived = by_key(resampler.add(arriving))
        if derived:
            # Each candle returned is exactly what batch gives on what has arrived so far: never
            # derived from part of a bucket, nor from a candle that lost to a duplicate.
            so_far = batch_all(settled(stream[:position]))
            assert all(so_far[key] == value for key, value in derived.items())
            # And it is news: a candle comes back only when it changed.
            assert all(returned.get(key) != value for key, value in derived.items())
            returned.update(derived)
    assert returned == batch_all(history)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_restart_from_the_stored_candles_continues_as_if_nothing_happened(data):
    history = data.draw(histories())
    stream = data.draw(arrivals(history))
    cut = data.draw(st.integers(0, len(stream)))
    before = Resampler(M1, TARGETS)
    returned = [c for arriving in stream[:cut] for c in before.add(arriving)]

    after = Resampler(M1, TARGETS)
    rebuilt = after.add_many(stream[:cut])
    assert by_key(rebuilt) == by_key(returned) == batch_all(settled(stream[:cut]))
    returned += [c for arriving in stream[cut:] for c in after.add(arriving)]
    assert by_key(returned) == batch_all(history)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_ten_minutes_from_ones_equal_ten_minutes_from_fives(history):
    fives = batch(history, Timeframe.M5)
    direct = batch(history, Timeframe.M10)
    assert [exact(c) for c in batch(fives, Timeframe.M10, source=Timeframe.M5)] == [exact(c) for c in direct]


def reference(candles: list[ClosedCandle], target: Timeframe) -> list[ClosedCandle]:
    """Resampling written plainly with Decimal arithmetic, exact by a context too wide to round."""
    wide = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
    buckets: dict[int, list[ClosedCandle]] = {}
    for c in sorted(candles, key=lambda c: c.open_time_ms):
        buckets.setdefault(target.bucket_start(c.open_time_ms), []).append(c)
    derived = []
    for start, members in buckets.items():
        if len(members) != target.ms // members[0].timeframe.ms:
            continue
        derived.append(
            ClosedCandle(
                target,
                start,
                members[0].open,
                functools.reduce(lambda a, b: a.max(b, wide), (m.high for m in members)),
                functools.reduce(lambda a, b: a.min(b, wide), (m.low for m in members)),
                members[-1].close,
                functools.reduce(lambda a, b: a.fma(1, b, wide), (m.volume for m in members)),
                functools.reduce(lambda a, b: a.fma(1, b, wide), (m.quote_volume for m in members)),
                sum(m.trades for m in members),
                sum(m.imputed_inputs for m in members),
            )
        )
    return derived


@settings(max_examples=100, deadline=None)
@given(histories(), st.sampled_from(TARGETS))
def test_batch_equals_plain_decimal_arithmetic_digit_for_digit(history, target):
    assert [exact(c) for c in batch(history, target)] == [exact(c) for c in reference(history, target)]


def test_the_reference_itself_sees_digits():
    # Guards the property above against a reference that would agree with anything.
    history = [candle(0, h="2.0"), candle(1, h="2.00"), candle(2, h="1")]
    [derived] = reference(history, Timeframe.M3)
    assert str(derived.high) == "2.0"
    assert np.array_equal(
        CandleArrays.from_candles(M1, history).high.places, np.array([1, 2, 0], dtype=np.int16)
    )


# Decimal strings of every form Decimal reads as a non-negative finite value: plain ones (as
# PostgreSQL prints a numeric), long ones (past int64), exponents, and zeros with places.
plain_decimal = st.from_regex(r"[0-9]{1,20}(\.[0-9]{0,12})?|\.[0-9]{1,12}", fullmatch=True)
other_decimal = st.builds(
    lambda digits, exponent: f"{digits}E{exponent:+d}", st.integers(0, 10**25), st.integers(-30, 5)
)
string_columns = st.lists(st.one_of(plain_decimal, plain_decimal, plain_decimal, other_decimal), max_size=30)


def same_column(a: FixedPointColumn, b: FixedPointColumn) -> bool:
    return (
        a.scale == b.scale
        and a.units.dtype == b.units.dtype
        and a.units.tolist() == b.units.tolist()
        and a.places.dtype == b.places.dtype
        and a.places.tolist() == b.places.tolist()
    )


@settings(max_examples=300, deadline=None)
@given(string_columns)
def test_a_column_from_strings_is_the_column_from_their_decimals(strings):
    assert same_column(
        FixedPointColumn.from_strings(strings), FixedPointColumn.from_decimals([Decimal(s) for s in strings])
    )


@settings(max_examples=300, deadline=None)
@given(string_columns)
def test_strings_are_the_decimals_in_fixed_point(strings):
    column = FixedPointColumn.from_decimals([Decimal(s) for s in strings])
    assert column.strings() == [format(d, "f") for d in column.decimals()]


@settings(max_examples=100, deadline=None)
@given(histories(), st.sampled_from(TARGETS))
def test_derived_strings_are_the_derived_decimals_in_fixed_point(history, target):
    ordered = sorted(history, key=lambda c: c.open_time_ms)
    derived = resample(CandleArrays.from_candles(M1, ordered), target)
    for column in (
        derived.open,
        derived.high,
        derived.low,
        derived.close,
        derived.volume,
        derived.quote_volume,
    ):
        assert column.strings() == [format(d, "f") for d in column.decimals()]


def test_strings_and_from_strings_at_the_edges():
    assert FixedPointColumn.from_strings([]).strings() == []
    column = FixedPointColumn.from_strings(["27450.12000000", "0", "0.00000000", "5.", "000123.40", ".5"])
    assert column.strings() == ["27450.12000000", "0", "0.00000000", "5", "123.40", "0.5"]
    big = FixedPointColumn.from_strings(["99999999999999999999.5", "1"])  # past int64: Python integers
    assert big.units.dtype == object
    assert big.strings() == ["99999999999999999999.5", "1"]
    assert FixedPointColumn.from_decimals([Decimal("5E+2"), Decimal("0E+2")]).strings() == ["500", "0"]
    with pytest.raises(ValueError, match="negative"):
        FixedPointColumn.from_strings(["-1"])
    # Inner and trailing NULs are not digits, whatever numpy makes of them.
    for odd in (["1.5\x00"], ["1\n2"], ["1.5", ""], ["."], ["1.2.3"]):
        with pytest.raises(decimal.InvalidOperation):
            FixedPointColumn.from_strings(odd)
    assert same_column(FixedPointColumn.from_strings(["٣"]), FixedPointColumn.from_decimals([Decimal(3)]))
    # Places and scale far apart: past what int64 powers of ten hold.
    assert FixedPointColumn.from_strings(["1E-19", "0"]).strings() == ["0.0000000000000000001", "0"]
