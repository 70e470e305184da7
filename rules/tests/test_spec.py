"""The rule spec: the examples of docs/rules.md parse; every kind of bad input names its field; all
problems come together; the canonical form and checksum are stable."""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from marketdata.core.timeframes import Timeframe
from rules.engine.spec import (
    IndicatorDecl,
    RuleSpec,
    SpecError,
    indicator_outputs,
    parse_spec,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def doc_examples() -> list[dict[str, Any]]:
    """The ```json blocks of docs/rules.md, parsed."""
    blocks = re.findall(r"^```json\n(.*?)^```$", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [json.loads(block) for block in blocks]


EXAMPLES = doc_examples()
EMA_CROSS, BOLLINGER, MACD_ADX = EXAMPLES


def errors_of(data: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    return caught.value.errors


def changed(base: dict[str, Any], path: str, new: object) -> dict[str, Any]:
    """A deep copy of `base` with the value at dotted `path` replaced (or removed, for DELETE)."""
    data = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target.setdefault(key, {})
    if new is DELETE:
        del target[last]
    else:
        target[last] = new
    return data


DELETE = object()


# --- The documented examples ---------------------------------------------------------------------


def test_the_doc_has_the_three_worked_examples():
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("example", EXAMPLES, ids=["ema_cross", "bollinger", "macd_adx"])
def test_doc_examples_parse(example):
    spec = parse_spec(example)
    assert isinstance(spec, RuleSpec)
    assert spec.entry.names <= spec.output_names
    assert spec.exit.names <= spec.output_names


def test_ema_cross_example_in_detail():
    spec = parse_spec(EMA_CROSS)
    assert spec.timeframes == (Timeframe.M1, Timeframe.M5)
    assert spec.indicators_for("1m")["fast"] == IndicatorDecl("ema", {"period": 12})
    assert spec.indicators_for("5m")["fast"] == IndicatorDecl("ema", {"period": 9})
    assert spec.indicators_for(Timeframe.M5)["slow"] == IndicatorDecl("ema", {"period": 26})
    assert spec.entry.names == {"fast", "slow", "rsi"}
    assert spec.entry.needs_previous
    assert spec.sizing.quote_amount == Decimal("100")
    assert spec.sizing.equity_pct is None
    assert spec.limits.max_position_total == Decimal("5000")
    assert spec.stop_loss_pct == Decimal("2")
    assert spec.take_profit_pct == Decimal("4")
    assert spec.cooldowns.after_loss_s == 300
    assert spec.kill_switch.error_burst.window_s == 60
    assert spec.kill_switch.max_drawdown_pct == Decimal("10")
    assert spec.drift_tolerance.price_pct == Decimal("0.1")
    with pytest.raises(KeyError, match="not one of this spec's"):
        spec.indicators_for("1h")


def test_defaults_fill_what_the_bollinger_example_leaves_out():
    spec = parse_spec(BOLLINGER)
    assert spec.sizing.equity_pct == Decimal("2.5")
    assert spec.take_profit_pct is None
    assert (spec.cooldowns.after_trade_s, spec.cooldowns.after_loss_s, spec.cooldowns.per_symbol_s) == (
        0,
        0,
        900,
    )
    assert spec.order_rate_limits.per_symbol_per_minute == 2
    assert spec.order_rate_limits.global_per_minute == 30
    assert spec.kill_switch.latency_p95_ms == 500
    assert spec.kill_switch.stale_data_s == 120
    assert spec.drift_tolerance.pnl_pct == Decimal("1")
    assert spec.indicators_for("15m")["bb"] == IndicatorDecl("bbands", {"period": 20, "stddev": 2.0})
    assert "#" in spec.entry.text  # comments stay in the stored text


def test_the_sections_are_frozen():
    spec = parse_spec(EMA_CROSS)
    with pytest.raises(Exception, match="frozen"):
        spec.sizing.quote_amount = Decimal(1)
    with pytest.raises(TypeError):
        spec.indicators_for("1m")["fast"].params["period"] = 3  # type: ignore[index]


def test_every_kind_gives_its_outputs():
    data = changed(
        EMA_CROSS,
        "indicators",
        {
            "m": {"kind": "macd", "fast": 3, "slow": 5, "signal": 2},
            "b": {"kind": "bbands", "period": 5, "stddev": 1.5},
            "s": {"kind": "stoch", "k_period": 5, "k_smooth": 3, "d_period": 3},
            "v": {"kind": "vwap"},
            "a": {"kind": "atr", "period": 5},
            "x": {"kind": "adx", "period": 5},
            "ma": {"kind": "sma", "period": 5},
            "e": {"kind": "ema", "period": 5},
            "r": {"kind": "rsi", "period": 5},
        },
    )
    everything = (
        "m.line + m.signal + m.hist + b.middle + b.upper + b.lower + s.k + s.d + v + a + x + ma + e + r"
    )
    data = changed(data, "entry", f"{everything} + open + high + low + close + volume > 0")
    data = changed(data, "exit", "m.line < 0")
    spec = parse_spec(data)
    assert len(spec.entry.names) == 19
    assert indicator_outputs("m", "macd") == ("m.line", "m.signal", "m.hist")
    assert spec.indicators["s"].outputs("s") == ("s.k", "s.d")


# --- Bad input, one field at a time -------------------------------------------------------------

BAD_FIELDS = [
    ("timeframes", [], "timeframes", "name at least one timeframe"),
    (
        "timeframes",
        ["1m", "2m"],
        "timeframes.1",
        "unknown timeframe '2m'; valid: 1m, 3m, 5m, 10m, 15m, 1h, 4h",
    ),
    ("timeframes", ["1m", "5m", "1m"], "timeframes.2", "'1m' is listed twice"),
    ("timeframes", "1m", "timeframes", "must be a list"),
    ("indicators.fast.period", 0, "indicators.fast.period", "must be ≥ 2"),
    ("indicators.fast.period", 1001, "indicators.fast.period", "must be ≤ 1000"),
    ("indicators.fast.period", 12.0, "indicators.fast.period", "must be a whole number"),
    ("indicators.fast.period", "12", "indicators.fast.period", "must be a whole number"),
    ("indicators.fast.period", True, "indicators.fast.period", "must be a whole number"),
    ("indicators.fast.period", DELETE, "indicators.fast.period", "required"),
    ("indicators.fast.length", 3, "indicators.fast.length", "unknown parameter; ema takes period"),
    ("indicators.fast.kind", "hma", "indicators.fast.kind", "unknown kind 'hma'; one of sma, ema, rsi"),
    ("indicators.fast.kind", DELETE, "indicators.fast.kind", "required; one of sma, ema"),
    ("indicators.fast", 12, "indicators.fast", "must be an object with a 'kind' and its parameters"),
    (
        "indicators.fast.by_timeframe",
        {"1h": {"period": 5}},
        "indicators.fast.by_timeframe.1h",
        "'1h' is not in",
    ),
    ("indicators.fast.by_timeframe", {"2h": {}}, "indicators.fast.by_timeframe.2h", "unknown timeframe '2h'"),
    (
        "indicators.fast.by_timeframe",
        {"5m": {"period": 0}},
        "indicators.fast.by_timeframe.5m.period",
        "must be ≥ 2",
    ),
    (
        "indicators.fast.by_timeframe",
        {"5m": {"kind": "sma"}},
        "indicators.fast.by_timeframe.5m.kind",
        "unknown",
    ),
    ("indicators.fast.by_timeframe", {"5m": 9}, "indicators.fast.by_timeframe.5m", "must be an object"),
    ("indicators.fast.by_timeframe", [9], "indicators.fast.by_timeframe", "must be an object"),
    ("indicators.Fast", {"kind": "ema", "period": 3}, "indicators.Fast", "a name is a lower-case letter"),
    ("indicators.close", {"kind": "ema", "period": 3}, "indicators.close", "'close' is a candle field"),
    ("indicators.and", {"kind": "ema", "period": 3}, "indicators.and", "'and' is a keyword"),
    ("indicators", [], "indicators", "must be an object"),
    (
        "entry",
        "fsat crosses_above slow",
        "entry",
        "line 1, column 1: unknown name 'fsat'; did you mean 'fast'?",
    ),
    ("entry", "fast >\n  ", "entry", "line 1, column 7: expected an operand after '>', found end of text"),
    ("exit", "rsi", "exit", "line 1, column 1: the expression must be a condition"),
    ("exit", 3, "exit", "must be a string"),
    ("entry", DELETE, "entry", "required"),
    ("sizing", {}, "sizing", "give exactly one of quote_amount, equity_pct"),
    ("sizing", {"quote_amount": "1", "equity_pct": "1"}, "sizing", "give exactly one of"),
    ("sizing.quote_amount", 100, "sizing.quote_amount", 'must be a decimal string such as "2.5" (a number'),
    ("sizing.quote_amount", 100.5, "sizing.quote_amount", 'must be a decimal string such as "2.5" (a number'),
    ("sizing.quote_amount", "-5", "sizing.quote_amount", "must be > 0"),
    ("sizing.quote_amount", "1e3", "sizing.quote_amount", "'1e3' is not a decimal number"),
    ("sizing.quote_amount", "NaN", "sizing.quote_amount", "'NaN' is not a decimal number"),
    ("sizing", {"equity_pct": "101"}, "sizing.equity_pct", "must be ≤ 100"),
    ("sizing", {"equity_pct": "0"}, "sizing.equity_pct", "must be > 0"),
    ("limits.max_position_per_symbol", "-1", "limits.max_position_per_symbol", "must be > 0"),
    ("limits.max_position_total", "100", "limits.max_position_total", "must be ≥ max_position_per_symbol"),
    ("limits.max_position_total", DELETE, "limits.max_position_total", "required"),
    ("limits", DELETE, "limits", "required"),
    ("stop_loss_pct", 2, "stop_loss_pct", "must be a decimal string"),
    ("stop_loss_pct", "0", "stop_loss_pct", "must be > 0"),
    ("take_profit_pct", "-4", "take_profit_pct", "must be > 0"),
    ("cooldowns.after_loss_s", -1, "cooldowns.after_loss_s", "must be ≥ 0"),
    ("cooldowns.after_trade_s", 1.5, "cooldowns.after_trade_s", "must be a whole number"),
    ("cooldowns.per_symbol", 5, "cooldowns.per_symbol", "unknown field"),
    ("order_rate_limits.per_symbol_per_minute", 0, "order_rate_limits.per_symbol_per_minute", "must be ≥ 1"),
    ("order_rate_limits.global_per_minute", 1, "order_rate_limits.global_per_minute", "must be ≥ per_symbol"),
    ("kill_switch.error_burst.count", -5, "kill_switch.error_burst.count", "must be ≥ 1"),
    ("kill_switch.latency_p95_ms", "500", "kill_switch.latency_p95_ms", "must be a whole number"),
    ("kill_switch.max_drawdown_pct", 10.0, "kill_switch.max_drawdown_pct", "must be a decimal string"),
    ("kill_switch.stale_data_s", 0, "kill_switch.stale_data_s", "must be ≥ 1"),
    ("drift_tolerance.price_pct", "-0.1", "drift_tolerance.price_pct", "must be ≥ 0"),
    ("drift_tolerance", 1, "drift_tolerance", "must be an object"),
    ("surprise", 1, "surprise", "unknown field"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "message"), BAD_FIELDS, ids=[f"{b[0]}={b[1]!r}" for b in BAD_FIELDS]
)
def test_bad_input_names_its_field(path, value, field, message):
    errors = errors_of(changed(EMA_CROSS, path, value))
    assert len(errors) == 1, errors
    assert errors[0][0] == field
    assert errors[0][1].startswith(message), errors[0][1]


@pytest.mark.parametrize(
    ("indicator", "field", "message"),
    [
        (
            {"kind": "macd", "fast": 26, "slow": 12, "signal": 9},
            "indicators.x.slow",
            "must be greater than fast (26)",
        ),
        (
            {"kind": "macd", "fast": 12, "slow": 12, "signal": 9},
            "indicators.x.slow",
            "must be greater than fast (12)",
        ),
        ({"kind": "macd", "fast": 12, "slow": 26}, "indicators.x.signal", "required"),
        ({"kind": "bbands", "period": 20, "stddev": 0}, "indicators.x.stddev", "must be > 0"),
        ({"kind": "bbands", "period": 20, "stddev": "2"}, "indicators.x.stddev", "must be a number"),
        ({"kind": "bbands", "period": 1, "stddev": 2}, "indicators.x.period", "must be ≥ 2"),
        # An average of one value is the value: the averages need two (their indicators refuse 1).
        ({"kind": "rsi", "period": 1}, "indicators.x.period", "must be ≥ 2"),
        ({"kind": "macd", "fast": 1, "slow": 26, "signal": 9}, "indicators.x.fast", "must be ≥ 2"),
        (
            {"kind": "stoch", "k_period": 14, "k_smooth": 0, "d_period": 3},
            "indicators.x.k_smooth",
            "must be ≥ 1",
        ),
        ({"kind": "vwap", "period": 3}, "indicators.x.period", "unknown parameter; vwap takes no parameters"),
        (
            {"kind": "macd", "fast": 12, "slow": 26, "signal": 9, "by_timeframe": {"5m": {"fast": 30}}},
            "indicators.x.by_timeframe.5m.slow",
            "must be greater than fast (30)",
        ),
    ],
)
def test_indicator_parameter_ranges(indicator, field, message):
    errors = errors_of(changed(EMA_CROSS, "indicators.x", indicator))
    assert errors == [(field, message)]


def test_not_an_object():
    assert errors_of([1, 2]) == [("", "must be a JSON object")]


def test_all_errors_are_reported_together_in_field_order():
    data = copy.deepcopy(EMA_CROSS)
    data["timeframes"] = ["1m", "5m", "2m"]
    data["indicators"]["fast"]["period"] = 0
    data["indicators"]["fast"]["by_timeframe"]["5m"] = {"period": -1, "x": 1}
    data["indicators"]["zz"] = {"kind": "foo"}
    data["entry"] = "fsat crosses_above slow and zz.k > 1\n  and rsii < 70"
    data["exit"] = "rsi and 3"
    data["sizing"] = {"quote_amount": 100}
    data["cooldowns"]["after_loss_s"] = -5
    data["surprise"] = True
    errors = errors_of(data)
    assert errors == [
        ("timeframes.2", "unknown timeframe '2m'; valid: 1m, 3m, 5m, 10m, 15m, 1h, 4h"),
        ("indicators.fast.period", "must be ≥ 2"),
        ("indicators.fast.by_timeframe.5m.period", "must be ≥ 2"),
        ("indicators.fast.by_timeframe.5m.x", "unknown parameter; ema takes period"),
        (
            "indicators.zz.kind",
            "unknown kind 'foo'; one of sma, ema, rsi, atr, adx, vwap, macd, bbands, stoch",
        ),
        ("entry", "line 1, column 1: unknown name 'fsat'; did you mean 'fast'?"),
        ("entry", "line 2, column 7: unknown name 'rsii'; did you mean 'rsi'?"),
        ("exit", "line 1, column 1: the left side of 'and' needs a condition (true/false), found a number"),
        ("exit", "line 1, column 9: the right side of 'and' needs a condition (true/false), found a number"),
        (
            "sizing.quote_amount",
            'must be a decimal string such as "2.5" (a number: JSON numbers can lose digits)',
        ),
        ("cooldowns.after_loss_s", "must be ≥ 0"),
        ("surprise", "unknown field"),
    ]
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    text = str(caught.value)
    assert all(f"- {field}: {message}" in text for field, message in errors)


def test_an_undeclared_indicator_in_a_condition_names_the_field_and_position():
    data = changed(EMA_CROSS, "exit", "fast crosses_below slow\n  or macd.hist < 0")
    assert errors_of(data) == [
        (
            "exit",
            "line 2, column 6: unknown name 'macd.hist'; known names: close, fast, "
            "high, low, open, rsi, slow, volume",
        )
    ]


# --- Canonical form and checksum -----------------------------------------------------------------


def reordered(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


@pytest.mark.parametrize("example", EXAMPLES, ids=["ema_cross", "bollinger", "macd_adx"])
def test_checksum_is_stable_under_key_order(example):
    assert list(reordered(example)) != list(example)
    assert parse_spec(reordered(example)).checksum() == parse_spec(example).checksum()
    assert parse_spec(reordered(example)).canonical_json() == parse_spec(example).canonical_json()


@pytest.mark.parametrize("example", EXAMPLES, ids=["ema_cross", "bollinger", "macd_adx"])
def test_canonical_json_parses_to_the_same_spec(example):
    spec = parse_spec(example)
    again = parse_spec(json.loads(spec.canonical_json()))
    assert again.canonical_json() == spec.canonical_json()
    assert again == spec


def test_canonical_json_normalises_and_is_compact():
    spec = parse_spec(EMA_CROSS)
    canonical = spec.canonical_json()
    assert canonical == json.dumps(
        json.loads(canonical), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert re.fullmatch(r"[0-9a-f]{64}", spec.checksum())
    spelled = changed(EMA_CROSS, "sizing.quote_amount", "100.00")
    spelled = changed(spelled, "timeframes", ["5m", "1m"])
    spelled = changed(spelled, "indicators.slow.by_timeframe", {"5m": {"period": 26}})  # changes nothing
    spelled = changed(spelled, "indicators.bb", {"kind": "bbands", "period": 20, "stddev": 2})
    plain = changed(EMA_CROSS, "indicators.bb", {"kind": "bbands", "period": 20, "stddev": 2.0})
    assert parse_spec(spelled).checksum() == parse_spec(plain).checksum()
    defaults = changed(BOLLINGER, "order_rate_limits", {"per_symbol_per_minute": 2, "global_per_minute": 30})
    assert parse_spec(defaults).checksum() == parse_spec(BOLLINGER).checksum()


def test_checksum_changes_with_meaning_and_with_condition_text():
    base = parse_spec(EMA_CROSS).checksum()
    assert parse_spec(changed(EMA_CROSS, "sizing.quote_amount", "101")).checksum() != base
    assert parse_spec(changed(EMA_CROSS, "indicators.fast.by_timeframe", {})).checksum() != base
    assert (
        parse_spec(changed(EMA_CROSS, "entry", "fast crosses_above slow and rsi < 70 # x")).checksum() != base
    )


def test_every_period_the_spec_accepts_compiles() -> None:
    """The spec's lower bounds are the indicators' own: nothing valid fails to compile."""
    from marketdata.core.timeframes import Timeframe
    from rules.engine.evaluator import RuleProgram

    smallest = {
        "sma": {"period": 2},
        "ema": {"period": 2},
        "rsi": {"period": 2},
        "atr": {"period": 1},
        "adx": {"period": 2},
        "macd": {"fast": 2, "slow": 3, "signal": 1},
        "bbands": {"period": 2, "stddev": 1},
        "stoch": {"k_period": 1, "k_smooth": 1, "d_period": 1},
    }
    for kind, params in smallest.items():
        outputs = ", ".join(indicator_outputs("x", kind))
        entry = f"{outputs.split(', ')[0]} > 0"
        spec = parse_spec(
            {**EMA_CROSS, "indicators": {"x": {"kind": kind, **params}}, "entry": entry, "exit": entry}
        )
        RuleProgram.from_spec(spec, Timeframe.M1)
