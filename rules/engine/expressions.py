"""The condition language of rule specs: parsed, checked and compiled to closures, never `eval`ed.

A condition is a small boolean expression over the latest values of indicator outputs and candle
fields, for example::

    fast crosses_above slow        # trend turns up
      and rsi < 70                 # not overbought
      and close > bb.middle

Grammar (lowest precedence first; binary operators associate to the left)::

    condition  := or_expr END
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := sum [("<" | "<=" | ">" | ">=" | "==" | "!=" | "crosses_above" | "crosses_below") sum]
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | NAME | "(" or_expr ")"

NUMBER is `123` or `12.5`; NAME is `rsi`, `macd.signal`, …; `#` starts a comment that runs to the
end of the line, and newlines are plain whitespace. Comparisons do not chain (`a < b < c` is an
error: write `a < b and b < c`). `not` takes the whole comparison after it, as in Python:
`not rsi > 70` is `not (rsi > 70)` (the other reading, `(not rsi) > 70`, could only ever be a type
error, because comparisons take numbers and `not` takes a condition).

Types are checked before anything runs: arithmetic and comparisons take numbers, `and`/`or`/`not`
take conditions, and the whole text must be a condition. Every name must be one of the names the
caller declares.

Evaluation, with `current` and `previous` mapping each name to its value on the latest closed
candle and the one before:
- `a crosses_above b` is true when previous a ≤ previous b and current a > current b;
  `a crosses_below b` when previous a ≥ previous b and current a < current b. Without a previous
  candle (`previous is None`) a cross is never true.
- Missing values (None or NaN: an indicator still warming up) make every comparison or cross
  that involves them *unknown*, and so does a division by zero. Unknown counts as false in
  `and`/`or`, stays unknown under `not`, and a condition that ends unknown evaluates to False.
  So a comparison with a missing value is false, and `not (rsi > 70)` is false too while `rsi` is
  still warming up: a signal never fires because data is missing. (This is Kleene's three-valued
  logic; without `not` it is exactly "a comparison with a missing value is false".)
- Arithmetic is plain float arithmetic; nothing raises at evaluation time except a KeyError when a
  mapping lacks one of `Condition.names`.

`Condition.evaluate_columns` gives the same answer for every row of whole columns at once (numpy,
for the offline/backtest path): row i's previous is row i-1 and row 0 has none.
`Condition.evaluate_rows` does it for rows that each bring their own previous values (the live
evaluator: one row per symbol). The float64 operations are the same IEEE ones, so they agree
exactly with `evaluate` (rules/tests/test_evaluator_vectorised.py).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, NamedTuple, TypeAlias, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "KEYWORDS",
    "Arithmetic",
    "Comparison",
    "Condition",
    "Expr",
    "ExpressionError",
    "Logical",
    "Name",
    "Negate",
    "Not",
    "Number",
    "Position",
    "compile_condition",
    "parse_expression",
]

KEYWORDS = frozenset({"and", "or", "not", "crosses_above", "crosses_below"})

# Limits that keep parsing, checking, compiling and evaluating (all recursive) far from Python's
# recursion limit. Real conditions are a handful of clauses.
MAX_NESTING = 25  # parentheses, 'not' and unary '-' inside one another
MAX_DEPTH = 100  # operations inside one another, counting chains such as a + b + c + …

_ARITHMETIC_OPS = ("+", "-", "*", "/")
_COMPARISON_OPS = ("<", "<=", ">", ">=", "==", "!=", "crosses_above", "crosses_below")
_SYMBOLS = ("<=", ">=", "==", "!=", "<", ">", "+", "-", "*", "/", "(", ")")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NAN = math.nan


class Position(NamedTuple):
    """1-based line and column of a character in the condition text."""

    line: int
    column: int


class ExpressionError(ValueError):
    """A condition that cannot be parsed, names an unknown value, or mixes numbers and conditions.

    `str()` reads "line L, column C: message". When checking finds several problems (unknown
    names, type errors) the first is raised and `problems` holds all of them, in text order.
    """

    def __init__(self, message: str, position: Position) -> None:
        self.message = message
        self.line = position.line
        self.column = position.column
        self.problems: tuple[ExpressionError, ...] = (self,)
        super().__init__(f"line {position.line}, column {position.column}: {message}")


# --- Syntax tree -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Number:
    value: float
    text: str  # normalised: "70.0" and "070" are both "70"
    at: Position


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    at: Position


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Expr
    at: Position


_ArithmeticOp = Literal["+", "-", "*", "/"]
_ComparisonOp = Literal["<", "<=", ">", ">=", "==", "!=", "crosses_above", "crosses_below"]


@dataclass(frozen=True, slots=True)
class Arithmetic:
    op: _ArithmeticOp
    left: Expr
    right: Expr
    at: Position  # of the operator


@dataclass(frozen=True, slots=True)
class Comparison:
    op: _ComparisonOp
    left: Expr
    right: Expr
    at: Position  # of the operator


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    at: Position


@dataclass(frozen=True, slots=True)
class Logical:
    op: Literal["and", "or"]
    operands: tuple[Expr, ...]  # two or more; `a and b and c` is one node
    at: Position  # of the first operator


Expr = Number | Name | Negate | Arithmetic | Comparison | Not | Logical


def render(node: Expr) -> str:
    """The expression as text with every operation in parentheses: shows how it was parsed."""
    match node:
        case Number(text=text):
            return text
        case Name(name=name):
            return name
        case Negate(operand=operand):
            return f"(-{render(operand)})"
        case Not(operand=operand):
            return f"(not {render(operand)})"
        case Arithmetic(op=op, left=left, right=right) | Comparison(op=op, left=left, right=right):
            return f"({render(left)} {op} {render(right)})"
        case Logical(op=op, operands=operands):
            return "(" + f" {op} ".join(render(o) for o in operands) + ")"


def _start(node: Expr) -> Position:
    """Where the text of `node` begins (binary nodes record their operator's position)."""
    while isinstance(node, Arithmetic | Comparison | Logical):
        node = node.operands[0] if isinstance(node, Logical) else node.left
    return node.at


# --- Tokenizer -----------------------------------------------------------------------------------

_TokenKind = Literal["number", "name", "keyword", "symbol", "end"]


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _TokenKind
    text: str
    at: Position

    def describe(self) -> str:
        if self.kind == "end":
            return "end of text"
        if self.kind == "number":
            return f"number {self.text}"
        if self.kind == "name":
            return f"name '{self.text}'"
        return f"'{self.text}'"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    line, line_start, i, n = 1, 0, 0, len(text)
    end_at = Position(1, 1)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line, line_start, i = line + 1, i + 1, i + 1
            continue
        if ch in " \t\r\f\v":
            i += 1
            continue
        if ch == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        at = Position(line, i - line_start + 1)
        if match := _NUMBER_RE.match(text, i):
            word = match.group()
            follow = text[match.end()] if match.end() < n else ""
            if follow and (follow.isalnum() or follow in "._"):
                raise ExpressionError(f"malformed number starting '{word}{follow}'", at)
            tokens.append(_Token("number", word, at))
        elif match := _NAME_RE.match(text, i):
            word = match.group()
            if match.end() < n and text[match.end()] == ".":
                raise ExpressionError(f"malformed name '{word}.': a '.' must be followed by a name", at)
            tokens.append(_Token("keyword" if word in KEYWORDS else "name", word, at))
        else:
            word = next((s for s in _SYMBOLS if text.startswith(s, i)), "")
            if not word:
                hint = "; did you mean '=='?" if ch == "=" else ""
                hint = "; did you mean '!='?" if ch == "!" else hint
                raise ExpressionError(f"unexpected character {ch!r}{hint}", at)
            tokens.append(_Token("symbol", word, at))
        i += len(word)
        end_at = Position(line, i - line_start + 1)
    tokens.append(_Token("end", "", end_at))
    return tokens


# --- Parser --------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent, one method per grammar rule (module doc)."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.nesting = 0
        self.depths: dict[int, int] = {}  # id(node) → height of its subtree, while parsing

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_any(self, *texts: str) -> bool:
        token = self.token
        return token.kind in ("keyword", "symbol") and token.text in texts

    def parse(self) -> Expr:
        if self.token.kind == "end":
            raise ExpressionError("expected a condition, found end of text", self.token.at)
        node = self.or_expr()
        rest = self.tokens[self.index]
        if rest.kind != "end":
            expected = "an operator or end of text"
            if rest.text == ")":
                expected += " (this ')' has no matching '(')"
            raise ExpressionError(f"expected {expected}, found {rest.describe()}", rest.at)
        return node

    def or_expr(self) -> Expr:
        return self.logical("or", self.and_expr)

    def and_expr(self) -> Expr:
        return self.logical("and", self.not_expr)

    def logical(self, op: Literal["and", "or"], operand: Callable[[], Expr]) -> Expr:
        first = operand()
        if not self.at_any(op):
            return first
        operands, at = [first], self.token.at
        while self.at_any(op):
            self.advance()
            operands.append(operand())
        return self.made(Logical(op, tuple(operands), at), *operands)

    def not_expr(self) -> Expr:
        if self.at_any("not"):
            token = self.advance()
            operand = self.nested(self.not_expr, token)
            return self.made(Not(operand, token.at), operand)
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.sum()
        if not self.at_any(*_COMPARISON_OPS):
            return left
        token = self.advance()
        right = self.sum()
        if self.at_any(*_COMPARISON_OPS):
            raise ExpressionError(
                f"comparisons cannot be chained ('{token.text}' then '{self.token.text}'); "
                "join two comparisons with 'and'",
                self.token.at,
            )
        op = cast(_ComparisonOp, token.text)
        return self.made(Comparison(op, left, right, token.at), left, right)

    def sum(self) -> Expr:
        return self.arithmetic(("+", "-"), self.product)

    def product(self) -> Expr:
        return self.arithmetic(("*", "/"), self.unary)

    def arithmetic(self, ops: tuple[str, ...], operand: Callable[[], Expr]) -> Expr:
        node = operand()
        while self.at_any(*ops):
            token = self.advance()
            right = operand()
            node = self.made(Arithmetic(cast(_ArithmeticOp, token.text), node, right, token.at), node, right)
        return node

    def unary(self) -> Expr:
        if self.at_any("-"):
            token = self.advance()
            operand = self.nested(self.unary, token)
            return self.made(Negate(operand, token.at), operand)
        return self.primary()

    def primary(self) -> Expr:
        token = self.token
        if token.kind == "number":
            self.advance()
            text = format(Decimal(token.text).normalize(), "f")
            return Number(float(token.text), text, token.at)
        if token.kind == "name":
            self.advance()
            return Name(token.text, token.at)
        if token.kind == "symbol" and token.text == "(":
            self.advance()
            node = self.nested(self.or_expr, token)
            if not self.at_any(")"):
                raise ExpressionError(
                    f"expected ')' to close the '(' at line {token.at.line}, column {token.at.column}, "
                    f"found {self.token.describe()}",
                    self.token.at,
                )
            self.advance()
            return node
        before = self.tokens[self.index - 1] if self.index else None
        after = (
            f" after '{before.text}'" if before is not None and before.kind in ("keyword", "symbol") else ""
        )
        raise ExpressionError(f"expected an operand{after}, found {token.describe()}", token.at)

    def nested(self, operand: Callable[[], Expr], token: _Token) -> Expr:
        """`operand()` one level of parentheses, 'not' or '-' deeper."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExpressionError(f"more than {MAX_NESTING} levels of parentheses, 'not' or '-'", token.at)
        try:
            return operand()
        finally:
            self.nesting -= 1

    def made(self, node: Expr, *children: Expr) -> Expr:
        """`node`, after checking the height of the tree under it against MAX_DEPTH."""
        depth = 1 + max(self.depths.get(id(child), 1) for child in children)
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression too deep (more than {MAX_DEPTH} nested operations)", node.at)
        self.depths[id(node)] = depth
        return node


def parse_expression(text: str) -> Expr:
    """The syntax tree of `text`; ExpressionError at the first syntax error. Names and types are
    not checked here (`compile_condition` does)."""
    return _Parser(text).parse()


# --- Checking ------------------------------------------------------------------------------------

_Kind = Literal["number", "condition"]
_KIND_TEXT = {"number": "a number", "condition": "a condition (true/false)"}


def _check(node: Expr, names: frozenset[str], problems: list[ExpressionError]) -> _Kind:
    """The kind of value `node` produces; appends every unknown name and type error found."""

    def expect(kind: _Kind, child: Expr, what: str) -> None:
        found = _check(child, names, problems)
        if found != kind:
            problems.append(
                ExpressionError(f"{what} needs {_KIND_TEXT[kind]}, found {_KIND_TEXT[found]}", _start(child))
            )

    match node:
        case Number():
            return "number"
        case Name(name=name, at=at):
            if name not in names:
                problems.append(ExpressionError(_unknown_name_message(name, names), at))
            return "number"
        case Negate(operand=operand):
            expect("number", operand, "'-'")
            return "number"
        case Arithmetic(op=op, left=left, right=right) | Comparison(op=op, left=left, right=right):
            expect("number", left, f"the left side of '{op}'")
            expect("number", right, f"the right side of '{op}'")
            return "number" if isinstance(node, Arithmetic) else "condition"
        case Not(operand=operand):
            expect("condition", operand, "'not'")
            return "condition"
        case Logical(op=op, operands=operands):
            for index, operand in enumerate(operands):
                side = "the left side" if index == 0 else "the right side"
                expect("condition", operand, f"{side} of '{op}'")
            return "condition"


def _unknown_name_message(name: str, names: frozenset[str]) -> str:
    message = f"unknown name '{name}'"
    outputs = sorted(n for n in names if n.startswith(name + "."))
    if outputs:
        listed = ", ".join(f"'{o}'" for o in outputs)
        return f"{message}: '{name}' has several outputs; use one of {listed}"
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.6)
    if close:
        listed = " or ".join(f"'{c}'" for c in close)
        return f"{message}; did you mean {listed}?"
    if not names:
        return f"{message}; no names are declared"
    known = sorted(names)
    listed = ", ".join(known[:20]) + (", …" if len(known) > 20 else "")
    return f"{message}; known names: {listed}"


# --- Compiling to closures ---------------------------------------------------------------------

Values = Mapping[str, float | None]
_NumberFn = Callable[[Values], float]
_TruthFn = Callable[[Values, Values | None], bool | None]  # None: unknown

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _compile_number(node: Expr) -> _NumberFn:
    match node:
        case Number(value=value):
            return lambda values: value
        case Name(name=name):

            def load(values: Values) -> float:
                value = values[name]
                return _NAN if value is None else value

            return load
        case Negate(operand=operand):
            inner = _compile_number(operand)
            return lambda values: -inner(values)
        case Arithmetic(op=op, left=left, right=right):
            lf, rf = _compile_number(left), _compile_number(right)
            if op == "+":
                return lambda values: lf(values) + rf(values)
            if op == "-":
                return lambda values: lf(values) - rf(values)
            if op == "*":
                return lambda values: lf(values) * rf(values)

            def divide(values: Values) -> float:
                a, b = lf(values), rf(values)
                return _NAN if b == 0 else a / b

            return divide
    raise AssertionError(f"not a number expression: {render(node)}")  # excluded by _check


def _compile_truth(node: Expr) -> _TruthFn:
    match node:
        case Comparison(op="crosses_above" | "crosses_below" as op, left=left, right=right):
            return _compile_cross(op == "crosses_above", _compile_number(left), _compile_number(right))
        case Comparison(op=op, left=left, right=right):
            compare = _COMPARE[op]
            lf, rf = _compile_number(left), _compile_number(right)

            def comparison(current: Values, previous: Values | None) -> bool | None:
                a, b = lf(current), rf(current)
                if a != a or b != b:  # NaN: missing value or 0/0
                    return None
                return compare(a, b)

            return comparison
        case Not(operand=operand):
            inner = _compile_truth(operand)

            def negation(current: Values, previous: Values | None) -> bool | None:
                value = inner(current, previous)
                return None if value is None else not value

            return negation
        case Logical(op="and", operands=operands):
            return _compile_and(tuple(_compile_truth(o) for o in operands))
        case Logical(op="or", operands=operands):
            return _compile_or(tuple(_compile_truth(o) for o in operands))
    raise AssertionError(f"not a condition: {render(node)}")  # excluded by _check


def _compile_cross(above: bool, lf: _NumberFn, rf: _NumberFn) -> _TruthFn:
    def cross(current: Values, previous: Values | None) -> bool | None:
        if previous is None:
            return None
        a1, b1, a0, b0 = lf(current), rf(current), lf(previous), rf(previous)
        if a1 != a1 or b1 != b1 or a0 != a0 or b0 != b0:
            return None
        return (a0 <= b0 and a1 > b1) if above else (a0 >= b0 and a1 < b1)

    return cross


def _compile_and(parts: tuple[_TruthFn, ...]) -> _TruthFn:
    if len(parts) == 2:
        first, second = parts

        def and2(current: Values, previous: Values | None) -> bool | None:
            a = first(current, previous)
            if a is False:
                return False
            b = second(current, previous)
            if b is False:
                return False
            return a and b  # True, or None when either is unknown

        return and2

    def and_n(current: Values, previous: Values | None) -> bool | None:
        result: bool | None = True
        for part in parts:
            value = part(current, previous)
            if value is False:
                return False
            if value is None:
                result = None
        return result

    return and_n


def _compile_or(parts: tuple[_TruthFn, ...]) -> _TruthFn:
    def or_n(current: Values, previous: Values | None) -> bool | None:
        result: bool | None = False
        for part in parts:
            value = part(current, previous)
            if value is True:
                return True
            if value is None:
                result = None
        return result

    return or_n


# --- Compiling to column functions (every row at once) ------------------------------------------

_FloatColumn: TypeAlias = npt.NDArray[np.float64]
_BoolColumn: TypeAlias = npt.NDArray[np.bool_]
_Columns = Mapping[str, _FloatColumn]
_ColumnNumberFn = Callable[[_Columns, int], _FloatColumn]
# Three-valued logic over rows as two masks, (holds, fails); rows in neither are unknown. Takes
# the current values, the previous ones and where there is a previous candle at all.
_ColumnTruthFn = Callable[[_Columns, _Columns, _BoolColumn, int], tuple[_BoolColumn, _BoolColumn]]

_COMPARE_COLUMNS: dict[str, Callable[[_FloatColumn, _FloatColumn], _BoolColumn]] = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


def _compile_number_columns(node: Expr) -> _ColumnNumberFn:
    match node:
        case Number(value=value):
            return lambda columns, rows: np.full(rows, value, dtype=np.float64)
        case Name(name=name):
            return lambda columns, rows: columns[name]
        case Negate(operand=operand):
            inner = _compile_number_columns(operand)
            return lambda columns, rows: np.negative(inner(columns, rows))
        case Arithmetic(op=op, left=left, right=right):
            lf, rf = _compile_number_columns(left), _compile_number_columns(right)
            if op == "+":
                return lambda columns, rows: np.add(lf(columns, rows), rf(columns, rows))
            if op == "-":
                return lambda columns, rows: np.subtract(lf(columns, rows), rf(columns, rows))
            if op == "*":
                return lambda columns, rows: np.multiply(lf(columns, rows), rf(columns, rows))

            def divide(columns: _Columns, rows: int) -> _FloatColumn:
                a, b = lf(columns, rows), rf(columns, rows)
                quotient = np.divide(a, b)
                quotient[b == 0] = _NAN
                return quotient

            return divide
    raise AssertionError(f"not a number expression: {render(node)}")  # excluded by _check


def _known(*values: _FloatColumn) -> _BoolColumn:
    missing = np.isnan(values[0])
    for value in values[1:]:
        missing |= np.isnan(value)
    return ~missing


def _previous_row(column: _FloatColumn) -> _FloatColumn:
    """`column` one row down: row i holds row i-1, row 0 is NaN (there is no earlier candle)."""
    shifted = np.empty_like(column)
    shifted[:1] = _NAN
    shifted[1:] = column[:-1]
    return shifted


def _compile_truth_columns(node: Expr) -> _ColumnTruthFn:
    match node:
        case Comparison(op="crosses_above" | "crosses_below" as op, left=left, right=right):
            above = op == "crosses_above"
            lf, rf = _compile_number_columns(left), _compile_number_columns(right)

            def cross(
                current: _Columns, previous: _Columns, has_previous: _BoolColumn, rows: int
            ) -> tuple[_BoolColumn, _BoolColumn]:
                a1, b1 = lf(current, rows), rf(current, rows)
                a0, b0 = lf(previous, rows), rf(previous, rows)
                known = _known(a1, b1, a0, b0) & has_previous  # unknown without one, as previous=None
                if above:
                    crossed = np.less_equal(a0, b0) & np.greater(a1, b1)
                else:
                    crossed = np.greater_equal(a0, b0) & np.less(a1, b1)
                return crossed & known, ~crossed & known

            return cross
        case Comparison(op=op, left=left, right=right):
            compare = _COMPARE_COLUMNS[op]
            lf, rf = _compile_number_columns(left), _compile_number_columns(right)

            def comparison(
                current: _Columns, previous: _Columns, has_previous: _BoolColumn, rows: int
            ) -> tuple[_BoolColumn, _BoolColumn]:
                a, b = lf(current, rows), rf(current, rows)
                known = _known(a, b)
                holds = compare(a, b)
                return holds & known, ~holds & known

            return comparison
        case Not(operand=operand):
            inner = _compile_truth_columns(operand)

            def negation(
                current: _Columns, previous: _Columns, has_previous: _BoolColumn, rows: int
            ) -> tuple[_BoolColumn, _BoolColumn]:
                holds, fails = inner(current, previous, has_previous, rows)
                return fails, holds

            return negation
        case Logical(op=op, operands=operands):
            parts = tuple(_compile_truth_columns(o) for o in operands)
            conjunction = op == "and"

            def logical(
                current: _Columns, previous: _Columns, has_previous: _BoolColumn, rows: int
            ) -> tuple[_BoolColumn, _BoolColumn]:
                # and: holds where every part holds, fails where any fails; or: the other way round.
                holds, fails = parts[0](current, previous, has_previous, rows)
                for part in parts[1:]:
                    part_holds, part_fails = part(current, previous, has_previous, rows)
                    if conjunction:
                        holds, fails = holds & part_holds, fails | part_fails
                    else:
                        holds, fails = holds | part_holds, fails & part_fails
                return holds, fails

            return logical
    raise AssertionError(f"not a condition: {render(node)}")  # excluded by _check


def _uses_previous(node: Expr) -> bool:
    match node:
        case Comparison(op="crosses_above" | "crosses_below"):
            return True
        case Comparison(left=left, right=right):
            return _uses_previous(left) or _uses_previous(right)
        case Not(operand=operand):
            return _uses_previous(operand)
        case Logical(operands=operands):
            return any(_uses_previous(o) for o in operands)
        case _:
            return False


def _names_in(node: Expr) -> frozenset[str]:
    match node:
        case Name(name=name):
            return frozenset({name})
        case Number():
            return frozenset()
        case Negate(operand=operand) | Not(operand=operand):
            return _names_in(operand)
        case Arithmetic(left=left, right=right) | Comparison(left=left, right=right):
            return _names_in(left) | _names_in(right)
        case Logical(operands=operands):
            return frozenset().union(*(_names_in(o) for o in operands))


class Condition:
    """A checked, compiled condition. Immutable; safe to share between threads and evaluations."""

    __slots__ = ("_columns_fn", "_fn", "names", "needs_previous", "source", "text", "tree")

    text: str
    tree: Expr
    source: str
    names: frozenset[str]
    needs_previous: bool
    _fn: _TruthFn
    _columns_fn: _ColumnTruthFn

    def __init__(self, text: str, tree: Expr) -> None:
        object.__setattr__(self, "text", text)  # as written, comments included
        object.__setattr__(self, "tree", tree)
        # Canonical text: fully parenthesised, numbers normalised, no comments. Equal for texts
        # that differ only in layout, comments or redundant parentheses.
        object.__setattr__(self, "source", render(tree))
        object.__setattr__(self, "names", _names_in(tree))  # the identifiers used
        object.__setattr__(self, "needs_previous", _uses_previous(tree))  # uses crosses_*
        object.__setattr__(self, "_fn", _compile_truth(tree))
        object.__setattr__(self, "_columns_fn", _compile_truth_columns(tree))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Condition is immutable")

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def evaluate(self, current: Values, previous: Values | None) -> bool:
        """True when the condition holds on the latest closed candle.

        `current` and `previous` map every name in `self.names` to its value on the latest candle
        and the one before (None or NaN while warming up); `previous` may be None when there is
        no earlier candle, and then any cross is false. Unknown results are False (module doc).
        """
        return self._fn(current, previous) is True

    def evaluate_columns(self, columns: Mapping[str, npt.ArrayLike], rows: int) -> _BoolColumn:
        """`evaluate` on every row of whole columns at once: a bool array of length `rows`.

        `columns` maps every name in `self.names` to a 1-D array of `rows` values (NaN, or None
        in a list, while warming up). Row i is evaluated with row i as `current` and row i-1 as
        `previous`; row 0 has no previous (any cross is false there). Element i of the result is
        exactly `evaluate(row i, row i-1 or None)`.
        """
        table: dict[str, _FloatColumn] = {}
        for name in self.names:
            column = np.asarray(columns[name], dtype=np.float64)
            if column.shape != (rows,):
                raise ValueError(f"column {name!r} has shape {column.shape}, expected ({rows},)")
            table[name] = column
        previous = (
            {name: _previous_row(column) for name, column in table.items()} if self.needs_previous else table
        )
        return self.evaluate_rows(table, previous, np.arange(rows) > 0, rows)

    def evaluate_rows(
        self,
        current: Mapping[str, _FloatColumn],
        previous: Mapping[str, _FloatColumn],
        has_previous: _BoolColumn,
        rows: int,
    ) -> _BoolColumn:
        """`evaluate` on many rows at once, each with its own previous values: element i of the
        result is `evaluate(current row i, previous row i if has_previous[i] else None)`.

        `current` and `previous` map every name in `self.names` to a float64 array of `rows`
        values (NaN while warming up); the rows may be different series (the live evaluator
        passes one row per symbol) or one series' candles (`evaluate_columns`).
        """
        # Overflow to ±inf, inf - inf, 0 * inf and x / 0 are the plain float results here, as in
        # `evaluate` (where division by zero is NaN): no warnings.
        with np.errstate(all="ignore"):
            holds, _ = self._columns_fn(current, previous, has_previous, rows)
        return holds


def compile_condition(text: str, *, names: Collection[str]) -> Condition:
    """Parse and check `text` against the declared `names`, and compile it.

    Raises ExpressionError at the first syntax error, or at the first of all unknown names and
    type errors (every one of them in `.problems`).
    """
    tree = parse_expression(text)
    problems: list[ExpressionError] = []
    kind = _check(tree, frozenset(names), problems)
    problems.sort(key=lambda p: (p.line, p.column))
    if kind != "condition":  # after the others: an inner type error is usually the real cause
        problems.append(
            ExpressionError(
                "the expression must be a condition (true/false), found a number; "
                "compare it with something, e.g. 'rsi < 70'",
                _start(tree),
            )
        )
    if problems:
        first = problems[0]
        first.problems = tuple(problems)
        raise first
    return Condition(text, tree)
