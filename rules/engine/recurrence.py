"""Numeric kernels shared by the indicators, each in a batch form and a one-step form.

Every kernel here fixes one order of float64 operations and performs exactly that order in both
forms, so the batch result equals the step-by-step result bit for bit. What they are:

- `sum_in_order`: a plain left-to-right sum starting from 0.0 (the seeds of TA-Lib's averages).
  Python's built-in `sum` is not used: from 3.12 it compensates, and numpy's `sum` is pairwise.
- `linear_recurrence` / `LinearRecurrence`: y[i] = a[i]·y[i-1] + b[i] (EMA, Wilder smoothing).
  A plain loop is the only exact vectorisation-free form and costs ≈ 80 ms for a year of 1m
  candles. Instead the series is cut into fixed chunks of `CHUNK` steps counted from the first
  step. Inside a chunk z runs the same recurrence from zero and p multiplies the a's; then
  y = z + p·c, with c the last y of the previous chunk. Batch runs the chunks side by side (one
  numpy operation per position in the chunk, over all chunks at once); the step form keeps z, p
  and c. Same operations, same order: identical floats. The result differs from a plain loop by
  rounding only (≈ 1e-16 relative per step, not accumulating: the a's are below 1).
- `rolling_sum` / `RollingSum`: the sum of the last n values, carried as w += x[i] - x[i-n] and
  recomputed exactly (`sum_in_order` over the window) every `CHUNK` outputs, which bounds the
  drift of the running total. Batch: one `cumsum` per chunk (numpy's accumulate is sequential).
- `RollingExtreme`: the highest or lowest of the last n values with a monotonic deque (max and
  min do not round, so any method gives the same value; batch takes n shifted maxima).

`CHUNK` is part of the arithmetic: changing it changes the last bits of every smoothed output.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from rules.engine.base import FloatArray

CHUNK = 512


def sum_in_order(values: FloatArray) -> float:
    """((0.0 + v0) + v1) + …: the order a running accumulator adds values in."""
    total = 0.0
    for value in values.tolist():
        total = total + value
    return total


def _as_chunks(values: FloatArray, chunks: int, rows: int, fill: float) -> FloatArray:
    """values laid out as (rows, chunks): column j holds values[j*CHUNK:(j+1)*CHUNK]."""
    padded = np.full(chunks * rows, fill, dtype=np.float64)
    padded[: values.size] = values
    return np.ascontiguousarray(padded.reshape(chunks, rows).T)


def _powers(a: float, rows: int) -> FloatArray:
    """a, a·a, (a·a)·a, …: the running product the step form keeps, for a constant a."""
    return np.multiply.accumulate(np.full(rows, a, dtype=np.float64))


def linear_recurrence(a: float | FloatArray, b: FloatArray, y0: float) -> FloatArray:
    """y[i] = a[i]·y[i-1] + b[i] for i = 0…len(b)-1, with y[-1] = y0. `a` may be one constant."""
    steps = b.size
    if steps == 0:
        return np.empty(0, dtype=np.float64)
    chunks = -(-steps // CHUNK)
    rows = CHUNK if chunks > 1 else steps
    b_t = _as_chunks(b, chunks, rows, 0.0)
    z = np.empty_like(b_t)
    z[0] = b_t[0]
    p: FloatArray
    if isinstance(a, np.ndarray):
        a_t = _as_chunks(a, chunks, rows, 1.0)
        p = np.empty_like(a_t)
        p[0] = a_t[0]
        for t in range(1, rows):
            np.multiply(a_t[t], z[t - 1], out=z[t])
            np.add(z[t], b_t[t], out=z[t])
            np.multiply(p[t - 1], a_t[t], out=p[t])
    else:
        for t in range(1, rows):
            np.multiply(z[t - 1], a, out=z[t])
            np.add(z[t], b_t[t], out=z[t])
        p = np.broadcast_to(_powers(float(a), rows)[:, None], z.shape)
    carries = [y0]
    last_z = z[rows - 1].tolist()
    last_p = p[rows - 1].tolist()
    for j in range(chunks - 1):
        carries.append(last_z[j] + last_p[j] * carries[j])
    y: FloatArray = z + p * np.array(carries)
    return y.T.reshape(-1)[:steps]


class LinearRecurrence:
    """The step form of `linear_recurrence`: `step(a, b)` returns the next y."""

    __slots__ = ("_carry", "_p", "_position", "_z")

    def __init__(self, y0: float) -> None:
        self._carry = y0
        self._z = 0.0
        self._p = 1.0
        self._position = 0

    def step(self, a: float, b: float) -> float:
        if self._position == 0:
            z, p = b, a
        else:
            z, p = a * self._z + b, self._p * a
        y = z + p * self._carry
        self._z, self._p = z, p
        self._position += 1
        if self._position == CHUNK:
            self._position = 0
            self._carry = y
        return y


def chunk_starts(first: int, size: int) -> npt.NDArray[np.intp]:
    """Indexes first, first + CHUNK, … below size: where running totals are recomputed exactly."""
    return np.arange(first, size, CHUNK)


def restarted_total(exact: FloatArray, steps: FloatArray) -> FloatArray:
    """t[q] = t[q-1] + steps[q], except t[j·CHUNK] = exact[j] (steps[j·CHUNK] is not used)."""
    outputs = steps.size
    flat = np.zeros(exact.size * CHUNK)
    flat[:outputs] = steps
    laid = flat.reshape(exact.size, CHUNK)
    laid[:, 0] = exact
    total: FloatArray = np.cumsum(laid, axis=1).reshape(-1)[:outputs]
    return total


def rolling_sum(values: FloatArray, n: int) -> FloatArray:
    """Sum of values[i-n+1…i] at each i ≥ n-1 (NaN before), as `RollingSum` computes it."""
    out = np.full(values.size, np.nan)
    if values.size < n:
        return out
    starts = chunk_starts(n - 1, values.size)
    exact = np.zeros(starts.size)
    for k in range(n):
        exact = exact + values[starts - (n - 1) + k]
    steps = np.zeros(values.size - (n - 1))
    steps[1:] = values[n:] - values[:-n]
    out[n - 1 :] = restarted_total(exact, steps)
    return out


class RollingSum:
    """The step form of `rolling_sum`: `push(x)` returns the window's sum, None while filling."""

    __slots__ = ("_n", "_outputs", "_total", "_window")

    def __init__(self, n: int) -> None:
        self._n = n
        self._window: deque[float] = deque(maxlen=n)
        self._total = 0.0
        self._outputs = 0

    def push(self, value: float) -> float | None:
        leaving = self._window[0] if len(self._window) == self._n else 0.0
        self._window.append(value)
        if len(self._window) < self._n:
            return None
        if self._outputs % CHUNK == 0:
            total = 0.0
            for kept in self._window:
                total = total + kept
        else:
            total = self._total + (value - leaving)
        self._total = total
        self._outputs += 1
        return total


def rolling_extreme(values: FloatArray, n: int, *, highest: bool) -> FloatArray:
    """max (or min) of values[i-n+1…i] at each i ≥ n-1, NaN before."""
    out = np.full(values.size, np.nan)
    outputs = values.size - (n - 1)
    if outputs > 0:
        pick = np.maximum if highest else np.minimum
        extreme = values[:outputs].copy()
        for k in range(1, n):
            pick(extreme, values[k : k + outputs], out=extreme)
        out[n - 1 :] = extreme
    return out


class RollingExtreme:
    """The step form of `rolling_extreme`, amortised O(1) with a monotonic deque."""

    __slots__ = ("_count", "_highest", "_kept", "_n")

    def __init__(self, n: int, *, highest: bool) -> None:
        self._n = n
        self._highest = highest
        self._kept: deque[tuple[int, float]] = deque()
        self._count = 0

    def push(self, value: float) -> float | None:
        kept = self._kept
        if self._highest:
            while kept and kept[-1][1] <= value:
                kept.pop()
        else:
            while kept and kept[-1][1] >= value:
                kept.pop()
        kept.append((self._count, value))
        self._count += 1
        if kept[0][0] <= self._count - 1 - self._n:
            kept.popleft()
        return kept[0][1] if self._count >= self._n else None
