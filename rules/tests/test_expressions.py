"""The condition language: parsing and precedence, every error with its position, evaluation
(crosses, missing values, division by zero), and a property against Python's own operators."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine.expressions import (
    Condition,
    ExpressionError,
    compile_condition,
    parse_expression,
    render,
)

NAMES = frozenset(
    {"a", "b", "c", "fast", "slow", "rsi", "close", "open", "bb.upper", "bb.lower", "macd.line"}
)
NAN = math.nan


def compiled(text: str) -> Condition:
    return compile_condition(text, names=NAMES)


def error_of(text: str, names: frozenset[str] = NAMES) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_condition(text, names=names)
    return caught.value


# --- Parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a + b * c > 1", "((a + (b * c)) > 1)"),
        ("a * b + c > 1", "(((a * b) + c) > 1)"),
        ("a - b - c > 0", "(((a - b) - c) > 0)"),
        ("a / b / c > 0", "(((a / b) / c) > 0)"),
        ("-a * b > 0", "(((-a) * b) > 0)"),
        ("- -a > 0", "((-(-a)) > 0)"),
        ("a - -b > 0", "((a - (-b)) > 0)"),
        ("(a + b) * c > 1", "(((a + b) * c) > 1)"),
        ("a > 1 or b > 1 and c > 1", "((a > 1) or ((b > 1) and (c > 1)))"),
        ("(a > 1 or b > 1) and c > 1", "(((a > 1) or (b > 1)) and (c > 1))"),
        ("not a > 1 and b > 1", "((not (a > 1)) and (b > 1))"),
        ("not not a > 1", "(not (not (a > 1)))"),
        ("a > 1 and b > 1 and c > 1", "((a > 1) and (b > 1) and (c > 1))"),
        ("fast crosses_above slow * 1.01", "(fast crosses_above (slow * 1.01))"),
        ("fast crosses_below slow or rsi >= 70", "((fast crosses_below slow) or (rsi >= 70))"),
        ("a <= b and a == b or a != b", "(((a <= b) and (a == b)) or (a != b))"),
        ("close > bb.upper", "(close > bb.upper)"),
        ("a > 070.50", "(a > 70.5)"),
        ("a > 12", "(a > 12)"),
    ],
)
def test_precedence_and_associativity(text, tree):
    assert render(parse_expression(text)) == tree


def test_newlines_and_comments_are_whitespace():
    text = "# entry\nfast crosses_above slow   # trend turns up\n  and rsi < 70 # not overbought\n"
    assert compiled(text).source == "((fast crosses_above slow) and (rsi < 70))"
    assert compiled(text).text == text


def test_names_and_needs_previous():
    condition = compiled("fast crosses_above slow and rsi < 70 or close > bb.upper * 2")
    assert condition.names == {"fast", "slow", "rsi", "close", "bb.upper"}
    assert condition.needs_previous
    assert not compiled("not (rsi < 70)").needs_previous
    assert compiled("not (a crosses_below b)").needs_previous


def test_condition_is_immutable_and_compares_by_meaning():
    condition = compiled("a > 1")
    with pytest.raises(AttributeError):
        condition.text = "b > 1"
    assert condition == compiled("(a > 1.0)  # same")
    assert hash(condition) == hash(compiled("a>1"))
    assert condition != compiled("a > 2")


# --- Errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("", 1, 1, "expected a condition, found end of text"),
        ("  # only a comment\n", 1, 1, "expected a condition, found end of text"),
        ("a >", 1, 4, "expected an operand after '>', found end of text"),
        ("fast > 1 and\nslow > 2 and", 2, 13, "expected an operand after 'and', found end of text"),
        ("a > 1 and\n  rsi < 7 or", 2, 13, "expected an operand after 'or', found end of text"),
        ("a > * b", 1, 5, "expected an operand after '>', found '*'"),
        ("not", 1, 4, "expected an operand after 'not', found end of text"),
        ("a > (b", 1, 7, "expected ')' to close the '(' at line 1, column 5, found end of text"),
        ("(a > b", 1, 7, "expected ')' to close the '(' at line 1, column 1, found end of text"),
        ("a > b)", 1, 6, "expected an operator or end of text (this ')' has no matching '('), found ')'"),
        ("a > 1 b", 1, 7, "expected an operator or end of text, found name 'b'"),
        ("a > 1\n  2", 2, 3, "expected an operator or end of text, found number 2"),
        ("a > ()", 1, 6, "expected an operand after '(', found ')'"),
        ("a < b < c", 1, 7, "comparisons cannot be chained ('<' then '<'); join two comparisons with 'and'"),
        ("a crosses_above b crosses_above c", 1, 19, "comparisons cannot be chained"),
        ("12x > 1", 1, 1, "malformed number starting '12x'"),
        ("a > 1.2.3", 1, 5, "malformed number starting '1.2.'"),
        ("a > 1.", 1, 5, "malformed number starting '1.'"),
        ("macd. > 1", 1, 1, "malformed name 'macd.': a '.' must be followed by a name"),
        ("a = b", 1, 3, "unexpected character '='; did you mean '=='?"),
        ("a ! b", 1, 3, "unexpected character '!'; did you mean '!='?"),
        ("a > 1 && b > 2", 1, 7, "unexpected character '&'"),
        ("a >\n\t$b", 2, 2, "unexpected character '$'"),
        ("and a > 1", 1, 1, "expected an operand, found 'and'"),
    ],
)
def test_syntax_errors_say_where_and_what(text, line, column, message):
    error = error_of(text)
    assert (error.line, error.column) == (line, column)
    assert error.message.startswith(message)
    assert str(error) == f"line {line}, column {column}: {error.message}"


def test_unknown_names_are_named_with_close_matches():
    error = error_of("fsat crosses_above slow\n  and rsii < 70")
    assert str(error) == "line 1, column 1: unknown name 'fsat'; did you mean 'fast'?"
    assert [str(p) for p in error.problems] == [
        "line 1, column 1: unknown name 'fsat'; did you mean 'fast'?",
        "line 2, column 7: unknown name 'rsii'; did you mean 'rsi'?",
    ]


def test_unknown_name_with_outputs_lists_them():
    error = error_of("macd > 0")
    assert error.message == "unknown name 'macd': 'macd' has several outputs; use one of 'macd.line'"
    error = error_of("bb > 0")
    assert "use one of 'bb.lower', 'bb.upper'" in error.message


def test_unknown_name_without_close_match_lists_known_names():
    assert error_of("zzz > 1", frozenset({"a", "b"})).message == "unknown name 'zzz'; known names: a, b"
    assert error_of("zzz > 1", frozenset()).message == "unknown name 'zzz'; no names are declared"


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("rsi and 3", 1, 1, "the left side of 'and' needs a condition (true/false), found a number"),
        ("a > 1 and 3", 1, 11, "the right side of 'and' needs a condition (true/false), found a number"),
        ("a > 1 or\n  rsi", 2, 3, "the right side of 'or' needs a condition (true/false), found a number"),
        (
            "close + (a > b) > 1",
            1,
            10,
            "the right side of '+' needs a number, found a condition (true/false)",
        ),
        ("not rsi", 1, 5, "'not' needs a condition (true/false), found a number"),
        ("-(a > b) > 1", 1, 3, "'-' needs a number, found a condition (true/false)"),
        ("(a > b) > 1", 1, 2, "the left side of '>' needs a number, found a condition (true/false)"),
        ("rsi", 1, 1, "the expression must be a condition (true/false), found a number"),
        ("rsi * 2", 1, 1, "the expression must be a condition (true/false), found a number"),
    ],
)
def test_type_errors_say_where_and_what(text, line, column, message):
    error = error_of(text)
    assert (error.line, error.column) == (line, column)
    assert error.message.startswith(message)


def test_inner_type_error_comes_before_the_top_level_one():
    error = error_of("close + (a > b)")
    assert [(p.line, p.column) for p in error.problems] == [(1, 10), (1, 1)]
    assert error.problems[1].message.startswith("the expression must be a condition")


def test_nesting_limits_are_errors_not_crashes():
    assert "levels of parentheses" in error_of("(" * 40 + "a > b" + ")" * 40).message
    assert "levels of parentheses" in error_of("not " * 40 + "a > b").message
    assert "too deep" in error_of(" + ".join(["a"] * 150) + " > 1").message
    assert compiled(" + ".join(["a"] * 50) + " > 1").evaluate({"a": 1.0}, None)


# --- Evaluation ------------------------------------------------------------------------------------


def values(**kwargs: float | None) -> dict[str, float | None]:
    return {name.replace("__", "."): value for name, value in kwargs.items()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a < b", True),
        ("a <= 1", True),
        ("a > b", False),
        ("a >= 1", True),
        ("a == 1", True),
        ("a != 1", False),
        ("a + b * c == 7", True),  # 1 + 2 * 3
        ("(a + b) * c == 9", True),
        ("b / c * 3 == 2", True),
        ("-a + b == 1", True),
        ("c - b - a == 0", True),
        ("not a > b", True),
        ("a > b or c > b", True),
        ("a > b and c > b", False),
    ],
)
def test_evaluation(text, expected):
    assert compiled(text).evaluate(values(a=1.0, b=2.0, c=3.0), None) is expected


def test_crosses_above_needs_previous_at_or_below_and_current_above():
    above = compiled("fast crosses_above slow")
    assert above.evaluate(values(fast=2.0, slow=1.0), values(fast=0.5, slow=1.0))
    assert above.evaluate(values(fast=2.0, slow=1.0), values(fast=1.0, slow=1.0))  # from touching
    assert not above.evaluate(values(fast=2.0, slow=1.0), values(fast=1.5, slow=1.0))  # already above
    assert not above.evaluate(values(fast=1.0, slow=1.0), values(fast=0.5, slow=1.0))  # only touches
    assert not above.evaluate(values(fast=2.0, slow=1.0), None)  # no previous candle


def test_crosses_below_mirrors_crosses_above():
    below = compiled("fast crosses_below slow")
    assert below.evaluate(values(fast=0.5, slow=1.0), values(fast=1.0, slow=1.0))
    assert below.evaluate(values(fast=0.5, slow=1.0), values(fast=2.0, slow=1.0))
    assert not below.evaluate(values(fast=0.5, slow=1.0), values(fast=0.9, slow=1.0))
    assert not below.evaluate(values(fast=1.0, slow=1.0), values(fast=2.0, slow=1.0))


def test_crosses_of_expressions_use_previous_values_of_both_sides():
    condition = compiled("close crosses_above bb.upper + 1")
    assert condition.evaluate(values(close=12.0, bb__upper=10.0), values(close=10.0, bb__upper=9.0))
    assert not condition.evaluate(values(close=12.0, bb__upper=10.0), values(close=10.5, bb__upper=9.0))


@pytest.mark.parametrize("missing", [None, NAN])
@pytest.mark.parametrize(
    "text",
    ["a > 0", "a < 0", "a == a", "a != 0", "not a > 0", "not a < 0", "not not a > 0", "a * 0 == 0"],
)
def test_missing_values_never_make_a_condition_true(text, missing):
    assert not compiled(text).evaluate(values(a=missing), None)


@pytest.mark.parametrize("missing", [None, NAN])
def test_missing_values_make_crosses_false(missing):
    condition = compiled("fast crosses_above slow")
    assert not condition.evaluate(values(fast=2.0, slow=1.0), values(fast=missing, slow=1.0))
    assert not condition.evaluate(values(fast=2.0, slow=missing), values(fast=0.0, slow=1.0))
    assert not compiled("not fast crosses_above slow").evaluate(values(fast=2.0, slow=1.0), None)


def test_unknown_is_false_in_and_or_and_stays_unknown_under_not():
    now = values(a=None, b=1.0)
    assert compiled("a > 0 or b > 0").evaluate(now, None)  # unknown or true: true
    assert not compiled("a > 0 or b < 0").evaluate(now, None)  # unknown or false: unknown
    assert not compiled("not (a > 0 or b < 0)").evaluate(now, None)
    assert compiled("not (a > 0 and b < 0)").evaluate(now, None)  # unknown and false: false
    assert not compiled("a > 0 and b > 0").evaluate(now, None)
    assert not compiled("not (a > 0 and b > 0 and b > 0)").evaluate(now, None)
    assert compiled("not (a > 0 and b < 0 and b > 0)").evaluate(now, None)
    assert not compiled("a > 0 or b < 0 or b < 0").evaluate(now, None)


@pytest.mark.parametrize("text", ["a / b > 0", "a / b < 0", "a / b == a / b", "a / b != 1", "not a / b > 0"])
def test_division_by_zero_makes_the_comparison_false(text):
    assert not compiled(text).evaluate(values(a=1.0, b=0.0), None)
    assert not compiled(text).evaluate(values(a=0.0, b=0.0), None)


def test_division_by_zero_inside_a_cross_is_false():
    condition = compiled("a / b crosses_above 1")
    assert not condition.evaluate(values(a=2.0, b=0.0), values(a=0.0, b=1.0))
    assert not condition.evaluate(values(a=2.0, b=1.0), values(a=0.0, b=0.0))
    assert condition.evaluate(values(a=2.0, b=1.0), values(a=0.0, b=1.0))


def test_a_missing_key_is_a_caller_bug():
    with pytest.raises(KeyError):
        compiled("a > 0").evaluate({}, None)


# --- Property: the evaluator equals Python's operators on the same tree ----------------------------

# Test-side trees, independent of the module's: ("num", text) ("name", n) ("neg", x) ("arith", op, l, r)
# ("cmp", op, l, r) ("not", x) ("logic", op, l, r) ("paren", x). Levels: higher binds tighter.
LEVEL = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7, "atom": 8}
PY_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
PY_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
VAR_NAMES = ("a", "b", "c", "bb.upper")

numbers = st.one_of(
    st.integers(0, 1000).map(str),
    st.tuples(st.integers(0, 99), st.integers(0, 99)).map(lambda p: f"{p[0]}.{p[1]:02d}"),
)
arith = st.recursive(
    st.one_of(numbers.map(lambda t: ("num", t)), st.sampled_from(VAR_NAMES).map(lambda n: ("name", n))),
    lambda inner: st.one_of(
        inner.map(lambda x: ("neg", x)),
        inner.map(lambda x: ("paren", x)),
        st.tuples(st.just("arith"), st.sampled_from(sorted(PY_ARITH)), inner, inner),
    ),
    max_leaves=8,
)
comparisons = st.tuples(
    st.just("cmp"), st.sampled_from([*PY_COMPARE, "crosses_above", "crosses_below"]), arith, arith
)
conditions = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        inner.map(lambda x: ("not", x)),
        inner.map(lambda x: ("paren", x)),
        st.tuples(st.just("logic"), st.sampled_from(["and", "or"]), inner, inner),
    ),
    max_leaves=5,
)
# Mostly a few small values, so that equal sides (ties in comparisons and crosses) are common.
small = st.sampled_from([0.0, 1.0, -1.0, 2.5, None, NAN])
value = st.one_of(small, small, small, st.floats(allow_nan=True, allow_infinity=True))
mappings = st.fixed_dictionaries(dict.fromkeys(VAR_NAMES, value))


def to_text(node) -> tuple[str, int]:
    """`node` written with as few parentheses as the precedence table allows; and its level."""
    tag = node[0]
    if tag == "num":
        return node[1], LEVEL["atom"]
    if tag == "name":
        return node[1], LEVEL["atom"]
    if tag == "paren":
        return f"({to_text(node[1])[0]})", LEVEL["atom"]
    if tag in ("neg", "not"):
        level = LEVEL[tag]
        text, inner = to_text(node[1])
        text = text if inner >= level else f"({text})"
        return (f"-{text}" if tag == "neg" else f"not {text}"), level
    _, op, left, right = node
    level = LEVEL["cmp"] if tag == "cmp" else LEVEL[op]
    left_text, left_level = to_text(left)
    right_text, right_level = to_text(right)
    left_text = left_text if left_level >= level else f"({left_text})"
    right_text = right_text if right_level > level else f"({right_text})"  # left-associative
    return f"{left_text} {op} {right_text}", level


def py_number(node, env) -> float:
    tag = node[0]
    if tag == "num":
        return float(node[1])
    if tag == "name":
        found = env[node[1]]
        return NAN if found is None else found
    if tag == "paren":
        return py_number(node[1], env)
    if tag == "neg":
        return -py_number(node[1], env)
    _, op, left, right = node
    try:
        return PY_ARITH[op](py_number(left, env), py_number(right, env))
    except ZeroDivisionError:
        return NAN


def py_truth(node, current, previous) -> bool | None:
    """Kleene logic: None is unknown."""
    tag = node[0]
    if tag == "paren":
        return py_truth(node[1], current, previous)
    if tag == "not":
        inner = py_truth(node[1], current, previous)
        return None if inner is None else not inner
    if tag == "logic":
        left, right = py_truth(node[2], current, previous), py_truth(node[3], current, previous)
        if node[1] == "and":
            return False if False in (left, right) else (None if None in (left, right) else True)
        return True if True in (left, right) else (None if None in (left, right) else False)
    _, op, left, right = node
    a, b = py_number(left, current), py_number(right, current)
    if op.startswith("crosses"):
        if previous is None:
            return None
        a0, b0 = py_number(left, previous), py_number(right, previous)
        if any(math.isnan(x) for x in (a, b, a0, b0)):
            return None
        return (a0 <= b0 and a > b) if op == "crosses_above" else (a0 >= b0 and a < b)
    if math.isnan(a) or math.isnan(b):
        return None
    return PY_COMPARE[op](a, b)


@settings(max_examples=400, deadline=None)
@given(tree=conditions, current=mappings, previous=st.one_of(st.none(), mappings))
def test_evaluation_equals_python_operators(tree, current, previous):
    text, _ = to_text(tree)
    condition = compile_condition(text, names=VAR_NAMES)
    assert condition.evaluate(current, previous) is (py_truth(tree, current, previous) is True), text
