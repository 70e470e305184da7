"""Numeric kernels shared by the indicators, each in a batch form and a one-step form.

Every kernel here fixes one order of float64 operations and performs exactly that order in both
forms, so the batch result equals the step-by-step result bit for bit. The step forms hold many
series at once, a row each (`base.RowState`): one numpy operation steps every row given, each at
its own position, with the same IEEE operations a scalar loop would do. What they are:

- `sum_in_order`: a plain left-to-right sum starting from 0.0 (the seeds of TA-Lib's averages).
  Python's built-in `sum` is not used: from 3.12 it compensates, and numpy's `sum` is pairwise.
- `linear_recurrence` / `RecurrenceRows`: y[i] = a[i]·y[i-1] + b[i] (EMA, Wilder smoothing).
  A plain loop is the only exact vectorisation-free form and costs ≈ 80 ms for a year of 1m
  candles. Instead the series is cut into fixed chunks of `CHUNK` steps counted from the first
  step. Inside a chunk z runs the same recurrence from zero and p multiplies the a's; then
  y = z + p·c, with c the last y of the previous chunk. Batch runs the chunks side by side (one
  numpy operation per position in the chunk, over all chunks at once); the step form keeps z, p
  and c. Same operations, same order: identical floats. The result differs from a plain loop by
  rounding only (≈ 1e-16 relative per step, not accumulating: the a's are below 1).
- `rolling_sum` / `RollingSumRows`: the sum of the last n values, carried as w += x[i] - x[i-n] and
  recomputed exactly (`sum_in_order` over the window) every `CHUNK` outputs, which bounds the
  drift of the running total. Batch: one `cumsum` per chunk (numpy's accumulate is sequential).
- `rolling_extreme` / `ExtremeRows`: the highest or lowest of the last n values (max and min do
  not round, so any method gives the same value: batch takes n shifted maxima, the step form the
  maximum of its window).

`CHUNK` is part of the arithmetic: changing it changes the last bits of every smoothed output.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rules.engine.base import BoolArray, FloatArray, RowIndex, RowState

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


class RecurrenceRows(RowState):
    """The step form of `linear_recurrence`, one recurrence per row: `start(rows, y0)` seeds rows,
    `step(rows, a, b)` returns their next y. Only rows that were started may be stepped."""

    carry: FloatArray
    z: FloatArray
    p: FloatArray
    position: npt.NDArray[np.int64]

    def __init__(self) -> None:
        super().__init__()
        self._array("carry", np.float64, 0.0)
        self._array("z", np.float64, 0.0)
        self._array("p", np.float64, 1.0)
        self._array("position", np.int64, 0)

    def start(self, rows: RowIndex, y0: FloatArray) -> None:
        self.carry[rows] = y0
        self.z[rows] = 0.0
        self.p[rows] = 1.0
        self.position[rows] = 0

    def step(self, rows: RowIndex, a: float | FloatArray, b: FloatArray) -> FloatArray:
        position = self.position[rows]
        first = position == 0
        z = np.where(first, b, a * self.z[rows] + b)
        p = np.where(first, a, self.p[rows] * a)
        y: FloatArray = z + p * self.carry[rows]
        self.z[rows], self.p[rows] = z, p
        position += 1
        ended = position == CHUNK
        position[ended] = 0
        self.position[rows] = position
        if ended.any():
            self.carry[rows[ended]] = y[ended]
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


class WindowRows(RowState):
    """The last n values of each row, oldest first from `head` (a ring), and how many are held."""

    ring: FloatArray
    head: npt.NDArray[np.int64]
    held: npt.NDArray[np.int64]

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self._array("ring", np.float64, 0.0, width=n)
        self._array("head", np.int64, 0)
        self._array("held", np.int64, 0)

    def push(self, rows: RowIndex, values: FloatArray) -> tuple[FloatArray, BoolArray]:
        """Append one value per row; return the value that left each row's window (0.0 while it
        was not full) and where the window is full now."""
        head, held = self.head[rows], self.held[rows]
        leaving = np.where(held == self.n, self.ring[rows, head], 0.0)
        self.ring[rows, head] = values
        head += 1
        head[head == self.n] = 0
        np.minimum(held + 1, self.n, out=held)
        self.head[rows], self.held[rows] = head, held
        return leaving, held == self.n

    def kept(self, rows: RowIndex, k: int) -> FloatArray:
        """The k-th oldest value of each (full) row's window."""
        at = self.head[rows] + k
        at[at >= self.n] -= self.n
        kept: FloatArray = self.ring[rows, at]
        return kept


class RollingSumRows(RowState):
    """The step form of `rolling_sum`: `push(rows, x)` returns each row's window sum, NaN while
    the window fills."""

    total: FloatArray
    outputs: npt.NDArray[np.int64]

    def __init__(self, n: int) -> None:
        super().__init__()
        self.window = self._part(WindowRows(n))
        self._array("total", np.float64, 0.0)
        self._array("outputs", np.int64, 0)

    def push(self, rows: RowIndex, values: FloatArray) -> FloatArray:
        return self.push_leaving(rows, values)[0]

    def push_leaving(self, rows: RowIndex, values: FloatArray) -> tuple[FloatArray, FloatArray]:
        """`push`, and the values that left the windows."""
        leaving, full = self.window.push(rows, values)
        outputs = self.outputs[rows]
        total = self.total[rows] + (values - leaving)
        exact = full & (outputs % CHUNK == 0)
        if exact.any():
            at = rows[exact]
            recomputed = np.zeros(at.size)
            for k in range(self.window.n):
                recomputed = recomputed + self.window.kept(at, k)
            total[exact] = recomputed
        self.total[rows] = total
        self.outputs[rows] = outputs + full
        return np.where(full, total, np.nan), leaving


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


class ExtremeRows(RowState):
    """The step form of `rolling_extreme`: `push(rows, x)` returns each row's highest (or lowest)
    of its last n values, NaN while the window fills."""

    def __init__(self, n: int, *, highest: bool) -> None:
        super().__init__()
        self.window = self._part(WindowRows(n))
        self._highest = highest

    def push(self, rows: RowIndex, values: FloatArray) -> FloatArray:
        _, full = self.window.push(rows, values)
        ring = self.window.ring[rows]
        extreme: FloatArray = ring.max(axis=1) if self._highest else ring.min(axis=1)
        extreme[~full] = np.nan
        return extreme
