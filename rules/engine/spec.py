"""The RuleConfig spec: a JSON document that says what a rule trades on and how. Validated in full
(every problem reported at once, each with its field) into a frozen `RuleSpec`.

The fields, their ranges and defaults, and the condition language are described for authors in
docs/rules.md; the tests load that document's examples, so it stays true.

Money amounts and percentages are decimal strings ("100", "2.5"), never JSON numbers: a float
would lose digits before we ever saw them. They become `Decimal`s here. Indicator parameters are
plain numbers (whole numbers, and a float `stddev` for Bollinger bands) since indicators compute in
floats anyway.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from marketdata.core.timeframes import Timeframe
from rules.engine.expressions import KEYWORDS, Condition, ExpressionError, compile_condition, parse_expression

__all__ = [
    "CANDLE_FIELDS",
    "INDICATOR_KINDS",
    "Cooldowns",
    "DriftTolerance",
    "ErrorBurst",
    "IndicatorDecl",
    "KillSwitch",
    "Limits",
    "OrderRateLimits",
    "RuleSpec",
    "Sizing",
    "SpecError",
    "TripActions",
    "indicator_outputs",
    "parse_spec",
]

CANDLE_FIELDS: Final = frozenset({"open", "high", "low", "close", "volume"})

# Outputs of each indicator kind, as suffixes of the indicator's name ("" is the name itself).
_OUTPUT_SUFFIXES: Final[Mapping[str, tuple[str, ...]]] = {
    "sma": ("",),
    "ema": ("",),
    "rsi": ("",),
    "atr": ("",),
    "adx": ("",),
    "vwap": ("",),
    "macd": ("line", "signal", "hist"),
    "bbands": ("middle", "upper", "lower"),
    "stoch": ("k", "d"),
}
INDICATOR_KINDS: Final = tuple(_OUTPUT_SUFFIXES)

MAX_PERIOD = 1000  # longer look-backs need more warm-up history than a rule should wait for
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_DECIMAL_RE = re.compile(r"[+-]?[0-9]{1,20}(?:\.[0-9]{1,18})?")


def indicator_outputs(name: str, kind: str) -> tuple[str, ...]:
    """The identifiers an indicator called `name` gives conditions: `rsi`, or `macd.line`, …"""
    return tuple(f"{name}.{suffix}" if suffix else name for suffix in _OUTPUT_SUFFIXES[kind])


class SpecError(ValueError):
    """An invalid spec. `errors` lists every problem as (field path, message), e.g.
    ("indicators.fast.period", "must be ≥ 1"); "" is the document itself."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("invalid rule spec:\n" + "\n".join(f"- {f or '(spec)'}: {m}" for f, m in errors))


class _FieldProblem(ValueError):
    """Raised by cross-field checks to put the message on `field` inside the model checked."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


# --- Value types ---------------------------------------------------------------------------------


def _decimal_string(value: object) -> Decimal:
    if not isinstance(value, str):
        kind = (
            "a number" if isinstance(value, int | float) and not isinstance(value, bool) else "not a string"
        )
        raise ValueError(f'must be a decimal string such as "2.5" ({kind}: JSON numbers can lose digits)')
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f'{value!r} is not a decimal number such as "2.5"')
    return Decimal(value)


def _timeframe(value: object) -> Timeframe:
    if not isinstance(value, str):
        raise ValueError('must be a timeframe name such as "5m"')
    return Timeframe.parse(value)


def _timeframes_once_each(timeframes: list[Timeframe]) -> list[Timeframe]:
    if not timeframes:
        raise ValueError("name at least one timeframe")
    for index, timeframe in enumerate(timeframes):
        if timeframe in timeframes[:index]:
            raise _FieldProblem(str(index), f"'{timeframe}' is listed twice")
    return timeframes


DecimalString = Annotated[Decimal, BeforeValidator(_decimal_string)]
Percent = Annotated[DecimalString, Gt(0), Le(100)]
TimeframeName = Annotated[Timeframe, BeforeValidator(_timeframe)]
Seconds = Annotated[int, Ge(0), Le(7 * 24 * 3600)]
Period = Annotated[int, Ge(1), Le(MAX_PERIOD)]

_FROZEN = ConfigDict(strict=True, extra="forbid", frozen=True)


class Sizing(BaseModel):
    """How much each entry buys: a fixed quote amount, or a share of equity. Exactly one."""

    model_config = _FROZEN
    quote_amount: Annotated[DecimalString, Gt(0)] | None = None
    equity_pct: Percent | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Sizing:
        if (self.quote_amount is None) == (self.equity_pct is None):
            raise ValueError("give exactly one of quote_amount, equity_pct")
        return self


class Limits(BaseModel):
    """Position caps in quote currency."""

    model_config = _FROZEN
    max_position_per_symbol: Annotated[DecimalString, Gt(0)]
    max_position_total: Annotated[DecimalString, Gt(0)]

    @model_validator(mode="after")
    def _total_covers_one(self) -> Limits:
        if self.max_position_total < self.max_position_per_symbol:
            raise _FieldProblem("max_position_total", "must be ≥ max_position_per_symbol")
        return self


class Cooldowns(BaseModel):
    """Seconds to wait before another entry: after any trade, after a losing one, per symbol."""

    model_config = _FROZEN
    after_trade_s: Seconds = 0
    after_loss_s: Seconds = 0
    per_symbol_s: Seconds = 0


class OrderRateLimits(BaseModel):
    model_config = _FROZEN
    per_symbol_per_minute: Annotated[int, Ge(1), Le(60)] = 2
    global_per_minute: Annotated[int, Ge(1), Le(1200)] = 30

    @model_validator(mode="after")
    def _global_covers_one(self) -> OrderRateLimits:
        if self.global_per_minute < self.per_symbol_per_minute:
            raise _FieldProblem("global_per_minute", "must be ≥ per_symbol_per_minute")
        return self


class ErrorBurst(BaseModel):
    """`count` errors within `window_s` seconds trip the kill switch."""

    model_config = _FROZEN
    count: Annotated[int, Ge(1), Le(10_000)] = 5
    window_s: Annotated[int, Ge(1), Le(86_400)] = 60


TripState = Literal["halted", "reducing"]


class TripActions(BaseModel):
    """The kill-switch state each tripwire trips to: "halted" (nothing new) or "reducing" (only
    orders that reduce a position)."""

    model_config = _FROZEN
    error_burst: TripState = "halted"
    latency: TripState = "halted"
    drawdown: TripState = "reducing"
    stale_data: TripState = "halted"


class KillSwitch(BaseModel):
    model_config = _FROZEN
    error_burst: ErrorBurst = ErrorBurst()
    actions: TripActions = TripActions()
    latency_p95_ms: Annotated[int, Ge(1), Le(600_000)] = 500
    max_drawdown_pct: Percent = Decimal("10")
    stale_data_s: Annotated[int, Ge(1), Le(86_400)] = 120


class DriftTolerance(BaseModel):
    """How far live may differ from the backtest replay of the same candles before it is flagged."""

    model_config = _FROZEN
    price_pct: Annotated[DecimalString, Ge(0), Le(100)] = Decimal("0.1")
    pnl_pct: Annotated[DecimalString, Ge(0), Le(100)] = Decimal("1")
    # A backtest over more imputed candles than this (percent of the 1m candles in its range)
    # would measure the imputation, not the rule: it is refused.
    imputed_pct: Annotated[DecimalString, Ge(0), Le(100)] = Decimal("1")


class _Document(BaseModel):
    """Every field but the indicators' parameters and the conditions' meaning (checked apart, as
    they depend on the timeframes and on the declared names)."""

    model_config = _FROZEN
    timeframes: Annotated[list[TimeframeName], AfterValidator(_timeframes_once_each)]
    indicators: dict[str, object] = {}
    entry: str
    exit: str
    sizing: Sizing
    limits: Limits
    stop_loss_pct: Percent | None = None
    take_profit_pct: Annotated[DecimalString, Gt(0), Le(1000)] | None = None
    cooldowns: Cooldowns = Cooldowns()
    order_rate_limits: OrderRateLimits = OrderRateLimits()
    kill_switch: KillSwitch = KillSwitch()
    drift_tolerance: DriftTolerance = DriftTolerance()


_FIELD_ORDER = tuple(_Document.model_fields)


# --- Indicator parameters --------------------------------------------------------------------------


# Averages of one value are the value itself: SMA, EMA, RSI, ADX and MACD's averages need two.
AveragePeriod = Annotated[int, Ge(2), Le(MAX_PERIOD)]


class _PeriodParams(BaseModel):
    model_config = _FROZEN
    period: Period


class _AveragePeriodParams(BaseModel):
    model_config = _FROZEN
    period: AveragePeriod


class _MacdParams(BaseModel):
    model_config = _FROZEN
    fast: AveragePeriod
    slow: AveragePeriod
    signal: Period

    @model_validator(mode="after")
    def _fast_before_slow(self) -> _MacdParams:
        if self.fast >= self.slow:
            raise _FieldProblem("slow", f"must be greater than fast ({self.fast})")
        return self


class _BBandsParams(BaseModel):
    model_config = _FROZEN
    period: Annotated[int, Ge(2), Le(MAX_PERIOD)]  # a deviation needs two values
    stddev: Annotated[float, Gt(0), Le(10)]


class _StochParams(BaseModel):
    model_config = _FROZEN
    k_period: Period
    k_smooth: Period
    d_period: Period


class _NoParams(BaseModel):
    model_config = _FROZEN


_PARAMS: Final[Mapping[str, type[BaseModel]]] = {
    "sma": _AveragePeriodParams,
    "ema": _AveragePeriodParams,
    "rsi": _AveragePeriodParams,
    "atr": _PeriodParams,
    "adx": _AveragePeriodParams,
    "vwap": _NoParams,
    "macd": _MacdParams,
    "bbands": _BBandsParams,
    "stoch": _StochParams,
}


@dataclass(frozen=True)
class IndicatorDecl:
    """One indicator as computed on one timeframe: its kind and its parameters."""

    kind: str
    params: Mapping[str, int | float]

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.params.items()))))

    def outputs(self, name: str) -> tuple[str, ...]:
        return indicator_outputs(name, self.kind)


# --- The spec ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSpec:
    """A valid spec, typed and frozen. Build with `parse_spec`."""

    timeframes: tuple[Timeframe, ...]  # shortest first
    indicators: Mapping[str, IndicatorDecl]  # as declared, without per-timeframe overrides
    entry: Condition
    exit: Condition
    sizing: Sizing
    limits: Limits
    stop_loss_pct: Decimal | None
    take_profit_pct: Decimal | None
    cooldowns: Cooldowns
    order_rate_limits: OrderRateLimits
    kill_switch: KillSwitch
    drift_tolerance: DriftTolerance
    _per_timeframe: Mapping[Timeframe, Mapping[str, IndicatorDecl]] = field(repr=False)
    _canonical: str = field(repr=False)

    def indicators_for(self, timeframe: str | Timeframe) -> dict[str, IndicatorDecl]:
        """The indicators to compute on `timeframe`, with its `by_timeframe` overrides applied."""
        try:
            return dict(self._per_timeframe[Timeframe(timeframe)])
        except (KeyError, ValueError):
            listed = ", ".join(self.timeframes)
            raise KeyError(f"timeframe {timeframe!r} is not one of this spec's ({listed})") from None

    @property
    def output_names(self) -> frozenset[str]:
        """Every identifier conditions may use: indicator outputs and candle fields."""
        return CANDLE_FIELDS.union(*(decl.outputs(name) for name, decl in self.indicators.items()))

    def canonical_json(self) -> str:
        """The spec with defaults filled in, decimals normalised ("2.50" → "2.5"), timeframes
        shortest first, overrides equal to the base left out; keys sorted, no spaces. Condition
        texts stay as written. `parse_spec` of it gives an equal spec: it is what gets stored."""
        return self._canonical

    def checksum(self) -> str:
        """sha256 (hex) of `canonical_json()`."""
        return hashlib.sha256(self._canonical.encode()).hexdigest()


def parse_spec(data: object) -> RuleSpec:
    """The spec in `data` (parsed JSON), or SpecError listing every problem found."""
    if not isinstance(data, dict):
        raise SpecError([("", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    document: _Document | None = None
    try:
        document = _Document.model_validate(data)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, ""))

    timeframes = _valid_timeframes(data.get("timeframes"))
    raw_indicators = data.get("indicators", {})
    declared, overrides, names = _indicators(raw_indicators, timeframes, errors)
    conditions: dict[str, Condition] = {}
    for field_name in ("entry", "exit"):
        text = data.get(field_name)
        if not isinstance(text, str):
            continue  # reported by _Document
        try:
            if isinstance(raw_indicators, dict):
                conditions[field_name] = compile_condition(text, names=names)
            else:  # no declarations to check names against: syntax only
                parse_expression(text)
        except ExpressionError as exc:
            errors.extend((field_name, str(problem)) for problem in exc.problems)

    if errors:
        errors.sort(key=lambda error: _field_rank(error[0]))
        raise SpecError(errors)
    assert document is not None  # no errors, so it validated
    ordered = tuple(sorted(set(document.timeframes), key=lambda tf: tf.ms))
    per_timeframe = {
        tf: MappingProxyType(
            {
                name: IndicatorDecl(
                    decl.kind, MappingProxyType({**decl.params, **overrides[name].get(tf, {})})
                )
                for name, decl in declared.items()
            }
        )
        for tf in ordered
    }
    spec = RuleSpec(
        timeframes=ordered,
        indicators=MappingProxyType(declared),
        entry=conditions["entry"],
        exit=conditions["exit"],
        sizing=document.sizing,
        limits=document.limits,
        stop_loss_pct=document.stop_loss_pct,
        take_profit_pct=document.take_profit_pct,
        cooldowns=document.cooldowns,
        order_rate_limits=document.order_rate_limits,
        kill_switch=document.kill_switch,
        drift_tolerance=document.drift_tolerance,
        _per_timeframe=MappingProxyType(per_timeframe),
        _canonical="",
    )
    object.__setattr__(spec, "_canonical", _canonical_json(spec, overrides))
    return spec


def _field_rank(path: str) -> int:
    top = path.split(".", 1)[0]
    return _FIELD_ORDER.index(top) if top in _FIELD_ORDER else len(_FIELD_ORDER)


def _valid_timeframes(raw: object) -> list[Timeframe] | None:
    """`raw` as timeframes when it is valid, else None (and `by_timeframe` keys are then checked
    only for being timeframe names, as the list they should belong to is in doubt)."""
    try:
        return _TIMEFRAMES.validate_python(raw)
    except ValidationError:
        return None


_TIMEFRAMES: TypeAdapter[list[Timeframe]] = TypeAdapter(
    Annotated[list[TimeframeName], AfterValidator(_timeframes_once_each)], config=_FROZEN
)


def _indicators(
    raw: object, timeframes: list[Timeframe] | None, errors: list[tuple[str, str]]
) -> tuple[dict[str, IndicatorDecl], dict[str, dict[Timeframe, dict[str, Any]]], frozenset[str]]:
    """Declarations, per-timeframe overrides and the names conditions may use. Problems go to
    `errors`; a broken declaration still declares its name so conditions do not fail twice."""
    declared: dict[str, IndicatorDecl] = {}
    overrides: dict[str, dict[Timeframe, dict[str, Any]]] = {}
    names: set[str] = set(CANDLE_FIELDS)
    if not isinstance(raw, dict):
        return declared, overrides, frozenset(names)  # already reported by _Document
    for name, body in raw.items():
        path = f"indicators.{name}"
        if not isinstance(name, str):
            continue  # JSON keys are strings
        # Until the declaration is valid, any output of any kind may be used in the conditions:
        # the declaration is the error to fix, not each use of it.
        anything = {output for k in INDICATOR_KINDS for output in indicator_outputs(name, k)}
        if not _NAME_RE.fullmatch(name) or name in KEYWORDS | CANDLE_FIELDS:
            errors.append((path, _bad_name_message(name)))
            names.update(anything - CANDLE_FIELDS)
            continue
        if not isinstance(body, dict):
            errors.append((path, "must be an object with a 'kind' and its parameters"))
            names.update(anything)
            continue
        kind = body.get("kind")
        if kind not in _PARAMS:
            problem = "required" if kind is None else f"unknown kind {kind!r}"
            errors.append((f"{path}.kind", f"{problem}; one of {', '.join(INDICATOR_KINDS)}"))
            names.update(anything)
            continue
        assert isinstance(kind, str)
        names.update(indicator_outputs(name, kind))
        model = _PARAMS[kind]
        base = {k: v for k, v in body.items() if k not in ("kind", "by_timeframe")}
        params = _validate_params(model, base, kind, path, errors)
        overrides[name] = {}
        by_timeframe = body.get("by_timeframe", {})
        if not isinstance(by_timeframe, dict):
            errors.append((f"{path}.by_timeframe", "must be an object: timeframe → parameters"))
            continue
        for key, override in by_timeframe.items():
            where = f"{path}.by_timeframe.{key}"
            if key not in Timeframe._value2member_map_:
                errors.append((where, f"unknown timeframe {key!r}; valid: {', '.join(Timeframe)}"))
                continue
            timeframe = Timeframe(key)
            if timeframes is not None and timeframe not in timeframes:
                errors.append((where, f"'{key}' is not in timeframes"))
                continue
            if not isinstance(override, dict):
                errors.append((where, "must be an object of parameters"))
                continue
            # Over the raw base when it is broken, so the override's own problems still show.
            merged = _validate_params(
                model,
                {**(base if params is None else params), **override},
                kind,
                where,
                errors,
                only=set(override),
            )
            if merged is not None and params is not None:
                overrides[name][timeframe] = {k: v for k, v in merged.items() if params[k] != v}
        if params is not None:
            declared[name] = IndicatorDecl(kind, MappingProxyType(params))
    return declared, overrides, frozenset(names)


def _validate_params(
    model: type[BaseModel],
    params: dict[str, object],
    kind: str,
    path: str,
    errors: list[tuple[str, str]],
    only: set[str] | None = None,
) -> dict[str, Any] | None:
    """`params` validated by `model`, or None with the problems added to `errors`. With `only`
    (an override's keys) problems with the other keys are left out: they are the base's, and
    were reported with it."""
    try:
        return model.model_validate(params).model_dump()
    except ValidationError as exc:
        takes = ", ".join(model.model_fields) or "no parameters"
        converted = _pydantic_errors(exc, path, unknown=f"unknown parameter; {kind} takes {takes}")
        for error, (where, message) in zip(exc.errors(), converted, strict=True):
            # Cross-field problems (macd fast ≥ slow) are the override's doing, whichever key.
            cross_field = isinstance(error.get("ctx", {}).get("error"), _FieldProblem)
            if only is None or cross_field or str(error["loc"][0]) in only:
                errors.append((where, message))
        return None


def _bad_name_message(name: str) -> str:
    if name in KEYWORDS:
        return f"'{name}' is a keyword of the condition language; choose another name"
    if name in CANDLE_FIELDS:
        return f"'{name}' is a candle field; choose another name"
    return "a name is a lower-case letter, then up to 31 lower-case letters, digits or '_'"


def _pydantic_errors(
    exc: ValidationError, prefix: str, unknown: str = "unknown field"
) -> list[tuple[str, str]]:
    result = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        ctx = error.get("ctx", {})
        kind = error["type"]
        cause = ctx.get("error")
        if isinstance(cause, _FieldProblem):
            loc.append(cause.field)
        if kind in ("value_error", "assertion_error") and cause is not None:
            message = str(cause)
        elif kind == "missing":
            message = "required"
        elif kind == "extra_forbidden":
            message = unknown
        elif kind in _BOUND_SIGNS:
            sign, key = _BOUND_SIGNS[kind]
            message = f"must be {sign} {_number_text(ctx[key])}"
        else:
            message = _TYPE_MESSAGES.get(kind, error["msg"])
        path = ".".join(part for part in [prefix, *loc] if part)
        result.append((path, message))
    return result


_BOUND_SIGNS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": ("≥", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("≤", "le"),
}
_TYPE_MESSAGES = {
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _number_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _decimal_text(value: Decimal) -> str:
    with localcontext() as context:
        context.prec = 60  # above any value _DECIMAL_RE admits: normalising never rounds
        text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def _canonical_json(spec: RuleSpec, overrides: Mapping[str, Mapping[Timeframe, Mapping[str, Any]]]) -> str:
    def plain(value: object) -> object:
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, Decimal):
            return _decimal_text(value)
        return value

    indicators: dict[str, object] = {}
    for name, decl in spec.indicators.items():
        body: dict[str, object] = {"kind": decl.kind, **decl.params}
        if "stddev" in body:
            body["stddev"] = float(decl.params["stddev"])
        changed = {str(tf): dict(p) for tf, p in overrides[name].items() if p}
        if changed:
            body["by_timeframe"] = changed
        indicators[name] = body
    document: dict[str, object] = {
        "timeframes": [str(tf) for tf in spec.timeframes],
        "indicators": indicators,
        "entry": spec.entry.text,
        "exit": spec.exit.text,
        "sizing": plain(spec.sizing),
        "limits": plain(spec.limits),
        "cooldowns": plain(spec.cooldowns),
        "order_rate_limits": plain(spec.order_rate_limits),
        "kill_switch": plain(spec.kill_switch),
        "drift_tolerance": plain(spec.drift_tolerance),
    }
    if spec.stop_loss_pct is not None:
        document["stop_loss_pct"] = _decimal_text(spec.stop_loss_pct)
    if spec.take_profit_pct is not None:
        document["take_profit_pct"] = _decimal_text(spec.take_profit_pct)
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
