"""The fault schedule: what the simulator breaks, and when.

Set from command-line flags at start and from `POST /_sim/faults` at run time, both with the
same JSON shape (see `FaultState.apply`). Every random decision is a hash of (seed, fault,
stream, candle open time, …), never a draw from a shared generator, so which candles get
duplicated, reordered or malformed does not depend on timing or on how many frames were sent."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from marketdata.simulator.intervals import KLINE_INTERVALS, floor_to, interval_ms
from marketdata.simulator.randomness import chance

REST_ERROR_STATUSES = (429, 418, 500, 502, 503, 504)
SERVER_ERROR_BURST = (500, 502, 503, 504)
MALFORMED_KINDS = ("invalid-json", "missing-field", "wrong-type", "non-numeric-price")


class FaultError(ValueError):
    """A fault setting that cannot be applied; the message names the bad value."""


@dataclass
class RestErrorFault:
    """Answer the next `count` requests (and/or those until `until`, monotonic seconds) to
    /api/ with `statuses`, cycling."""

    statuses: tuple[int, ...]
    retry_after_s: int
    remaining: int | None
    until: float | None
    served: int = 0

    def take(self, monotonic_now: float) -> int | None:
        if self.until is not None and monotonic_now >= self.until:
            return None
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        status = self.statuses[self.served % len(self.statuses)]
        self.served += 1
        return status

    def describe(self, monotonic_now: float) -> dict[str, Any]:
        return {
            "statuses": list(self.statuses),
            "retry_after": self.retry_after_s,
            "remaining": self.remaining,
            "seconds_left": None if self.until is None else max(0.0, round(self.until - monotonic_now, 3)),
            "served": self.served,
        }


@dataclass
class OrderTimeoutFault:
    """The next `remaining` order placements the exchange accepts are carried out (the order
    exists, fills, moves balances) but their answer is held back `hold_s` seconds: the client
    times out not knowing whether its order went through."""

    remaining: int
    hold_s: float
    served: int = 0

    def take(self) -> float | None:
        """Seconds to hold this accepted order's answer, or None to answer at once."""
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        self.served += 1
        return self.hold_s

    def describe(self) -> dict[str, Any]:
        return {"remaining": self.remaining, "hold_s": self.hold_s, "served": self.served}


@dataclass(frozen=True)
class StreamSilence:
    """No frames at all for `stream` for the candles opening in
    [first_open, first_open + candles x interval)."""

    stream: str
    interval_ms: int
    first_open: int
    candles: int

    def covers(self, stream: str, open_ms: int) -> bool:
        return (
            stream == self.stream
            and self.first_open <= open_ms < self.first_open + self.candles * self.interval_ms
        )


@dataclass(frozen=True)
class MissingKlines:
    """The exchange has no `interval` candles of `symbol` opening in [start, end] (ms): REST
    klines leave them out, as Binance leaves out buckets it holds no candle for."""

    symbol: str
    interval: str
    start: int
    end: int

    def covers(self, symbol: str, interval: str, open_ms: int) -> bool:
        return symbol == self.symbol and interval == self.interval and self.start <= open_ms <= self.end


@dataclass
class FaultState:
    seed: int
    rest_error: RestErrorFault | None = None
    order_timeout: OrderTimeoutFault | None = None
    rest_latency_ms: int = 0
    ws_latency_ms: int = 0
    ws_drop_every_s: float | None = None
    silences: list[StreamSilence] = field(default_factory=list)
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    malformed_rate: float = 0.0
    missing_klines: list[MissingKlines] = field(default_factory=list)
    # Bumped by every change: the streams prepare finals ahead and rebuild those prepared
    # under an older generation.
    generation: int = 0

    def clear(self) -> None:
        self.generation += 1
        self.rest_error = None
        self.order_timeout = None
        self.rest_latency_ms = self.ws_latency_ms = 0
        self.ws_drop_every_s = None
        self.silences = []
        self.duplicate_rate = self.out_of_order_rate = self.malformed_rate = 0.0
        self.missing_klines = []

    def apply(
        self, payload: Mapping[str, Any], *, now_ms: int, monotonic_now: float, symbols: Container[str]
    ) -> None:
        """Validate all of `payload`, then apply it. Keys left out keep their value; `"clear":
        true` resets everything first. FaultError names the first bad value."""
        unknown = set(payload) - _KEYS
        if unknown:
            raise FaultError(f"unknown fault setting(s) {sorted(unknown)}; valid: {sorted(_KEYS)}")
        staged = FaultState(seed=self.seed)
        if not _flag(payload, "clear"):
            staged.__dict__.update(self.__dict__)
            staged.silences = list(self.silences)
            staged.missing_klines = list(self.missing_klines)
        if "rest_error" in payload:
            staged.rest_error = _rest_error(payload["rest_error"], monotonic_now)
        if "order_timeout" in payload:
            staged.order_timeout = _order_timeout(payload["order_timeout"])
        if "rest_latency_ms" in payload:
            staged.rest_latency_ms = _non_negative_int(payload, "rest_latency_ms")
        if "ws_latency_ms" in payload:
            staged.ws_latency_ms = _non_negative_int(payload, "ws_latency_ms")
        if "ws_drop_every_s" in payload:
            value = payload["ws_drop_every_s"]
            staged.ws_drop_every_s = None if value is None else _positive_number(value, "ws_drop_every_s")
        if "ws_silence" in payload:
            staged.silences.extend(_silences(payload["ws_silence"], now_ms, symbols))
        if "missing_klines" in payload:
            staged.missing_klines = _missing_klines(payload["missing_klines"], symbols)
        for key, attribute in _RATES.items():
            if key in payload:
                setattr(staged, attribute, _rate(payload[key], key))
        staged.generation = self.generation + 1
        self.__dict__.update(staged.__dict__)

    def missing_windows(self, symbol: str, interval: str) -> list[MissingKlines]:
        """The `missing_klines` windows of one symbol and interval."""
        return [w for w in self.missing_klines if w.symbol == symbol and w.interval == interval]

    def is_silenced(self, stream: str, open_ms: int) -> bool:
        return any(silence.covers(stream, open_ms) for silence in self.silences)

    def duplicates(self, stream: str, open_ms: int) -> bool:
        return (
            self.duplicate_rate > 0 and chance(self.seed, "duplicate", stream, open_ms) < self.duplicate_rate
        )

    def out_of_order(self, stream: str, open_ms: int) -> str | None:
        """None, "stale-update" (a forming update of the candle after its final) or
        "late-final" (its final again, after the next candle's first update)."""
        if (
            self.out_of_order_rate <= 0
            or chance(self.seed, "out-of-order", stream, open_ms) >= self.out_of_order_rate
        ):
            return None
        return (
            "stale-update" if chance(self.seed, "out-of-order-kind", stream, open_ms) < 0.5 else "late-final"
        )

    def malformed(self, stream: str, open_ms: int, frame: int) -> str | None:
        """None, or which kind of malformed frame to inject before frame number `frame` of
        the candle (`frame` -1 = its final)."""
        if (
            self.malformed_rate <= 0
            or chance(self.seed, "malformed", stream, open_ms, frame) >= self.malformed_rate
        ):
            return None
        pick = int(chance(self.seed, "malformed-kind", stream, open_ms, frame) * len(MALFORMED_KINDS))
        return MALFORMED_KINDS[pick]

    def describe(self, monotonic_now: float) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rest_error": None if self.rest_error is None else self.rest_error.describe(monotonic_now),
            "order_timeout": None if self.order_timeout is None else self.order_timeout.describe(),
            "rest_latency_ms": self.rest_latency_ms,
            "ws_latency_ms": self.ws_latency_ms,
            "ws_drop_every_s": self.ws_drop_every_s,
            "ws_silence": [
                {"stream": s.stream, "first_open": s.first_open, "candles": s.candles} for s in self.silences
            ],
            "ws_duplicate_rate": self.duplicate_rate,
            "ws_out_of_order_rate": self.out_of_order_rate,
            "ws_malformed_rate": self.malformed_rate,
            "missing_klines": [
                {"symbol": w.symbol, "interval": w.interval, "start": w.start, "end": w.end}
                for w in self.missing_klines
            ],
        }


_RATES = {
    "ws_duplicate_rate": "duplicate_rate",
    "ws_out_of_order_rate": "out_of_order_rate",
    "ws_malformed_rate": "malformed_rate",
}
_KEYS = {
    "clear", "rest_error", "order_timeout", "rest_latency_ms", "ws_latency_ms", "ws_drop_every_s",
    "ws_silence", "missing_klines", *_RATES,
}  # fmt: skip


def _flag(payload: Mapping[str, Any], key: str) -> bool:
    value = payload.get(key, False)
    if not isinstance(value, bool):
        raise FaultError(f"{key} must be true or false, got {value!r}")
    return value


def _non_negative_int(payload: Mapping[str, Any], key: str) -> int:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultError(f"{key} must be an integer >= 0, got {value!r}")
    return int(value)


def _positive_number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise FaultError(f"{key} must be a number > 0, got {value!r}")
    return float(value)


def _rate(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise FaultError(f"{key} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _rest_error(spec: Any, monotonic_now: float) -> RestErrorFault | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise FaultError(f"rest_error must be an object or null, got {spec!r}")
    unknown = set(spec) - {"status", "count", "seconds", "retry_after"}
    if unknown:
        raise FaultError(
            f"unknown rest_error field(s) {sorted(unknown)}; valid: count, retry_after, seconds, status"
        )
    status = spec.get("status")
    if status == "5xx":
        statuses: tuple[int, ...] = SERVER_ERROR_BURST
    elif status in REST_ERROR_STATUSES and not isinstance(status, bool):
        statuses = (int(status),)
    else:
        valid = ", ".join([*(str(code) for code in REST_ERROR_STATUSES), "5xx"])
        raise FaultError(f"rest_error status {status!r} is not one of {valid}")
    count = spec.get("count")
    seconds = spec.get("seconds")
    if count is None and seconds is None:
        raise FaultError("rest_error needs count (requests) and/or seconds")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count <= 0):
        raise FaultError(f"rest_error count must be an integer > 0, got {count!r}")
    until = None if seconds is None else monotonic_now + _positive_number(seconds, "rest_error seconds")
    retry_after = spec.get("retry_after", 1)
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise FaultError(f"rest_error retry_after must be an integer >= 0 (seconds), got {retry_after!r}")
    return RestErrorFault(statuses=statuses, retry_after_s=retry_after, remaining=count, until=until)


def _order_timeout(spec: Any) -> OrderTimeoutFault | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise FaultError(f"order_timeout must be an object or null, got {spec!r}")
    if set(spec) != {"count", "hold_s"}:
        raise FaultError(f"order_timeout needs exactly count and hold_s, got {sorted(spec)}")
    count = spec["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise FaultError(f"order_timeout count must be an integer >= 1, got {count!r}")
    return OrderTimeoutFault(remaining=count, hold_s=_positive_number(spec["hold_s"], "order_timeout hold_s"))


def _silences(specs: Any, now_ms: int, symbols: Container[str]) -> list[StreamSilence]:
    if isinstance(specs, Mapping):
        specs = [specs]
    if not isinstance(specs, list):
        raise FaultError(f"ws_silence must be an object or a list of objects, got {specs!r}")
    silences = []
    for spec in specs:
        if not isinstance(spec, Mapping) or set(spec) != {"symbol", "interval", "candles"}:
            raise FaultError(f"ws_silence entries need exactly symbol, interval and candles, got {spec!r}")
        symbol, interval, candles = spec["symbol"], spec["interval"], spec["candles"]
        if not isinstance(symbol, str) or symbol not in symbols:
            raise FaultError(f"ws_silence symbol {symbol!r} is not a simulated symbol")
        if not isinstance(interval, str) or interval not in KLINE_INTERVALS:
            raise FaultError(f"ws_silence interval {interval!r} unknown; valid: {', '.join(KLINE_INTERVALS)}")
        if isinstance(candles, bool) or not isinstance(candles, int) or candles <= 0:
            raise FaultError(f"ws_silence candles must be an integer > 0, got {candles!r}")
        length = interval_ms(interval)
        # Starts with the candle forming now: its updates and its final are not sent.
        silences.append(
            StreamSilence(f"{symbol.lower()}@kline_{interval}", length, floor_to(now_ms, length), candles)
        )
    return silences


def _missing_klines(specs: Any, symbols: Container[str]) -> list[MissingKlines]:
    """The whole list of windows (it replaces the one in force; [] removes them all)."""
    if isinstance(specs, Mapping):
        specs = [specs]
    if not isinstance(specs, list):
        raise FaultError(f"missing_klines must be an object or a list of objects, got {specs!r}")
    windows = []
    for spec in specs:
        if not isinstance(spec, Mapping) or set(spec) != {"symbol", "interval", "start", "end"}:
            raise FaultError(
                f"missing_klines entries need exactly symbol, interval, start and end (ms), got {spec!r}"
            )
        symbol, interval, start, end = spec["symbol"], spec["interval"], spec["start"], spec["end"]
        if not isinstance(symbol, str) or symbol not in symbols:
            raise FaultError(f"missing_klines symbol {symbol!r} is not a simulated symbol")
        if not isinstance(interval, str) or interval not in KLINE_INTERVALS:
            raise FaultError(
                f"missing_klines interval {interval!r} unknown; valid: {', '.join(KLINE_INTERVALS)}"
            )
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FaultError(f"missing_klines {name} must be an integer >= 0 (ms), got {value!r}")
        if end < start:
            raise FaultError(f"missing_klines end {end} is before start {start}")
        windows.append(MissingKlines(symbol, interval, start, end))
    return windows
