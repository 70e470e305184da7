"""Numeric kernels shared by the indicators, each in a batch form and a one-step form.

Every kernel here fixes one order of float64 operations and performs exactly that order in both
forms, so the batch result equals the step-by-step result bit for bit. The step forms hold many
series at once, a row each (`base.RowState`): one numpy operation steps every row given, each at
its own position, with the same IEEE operations a scalar loop would do. What they are:

- `sum_in_order`: a plain left-to-right sum starting from 0.0 (the seeds of TA-Lib's averages).
  Python's built-in `sum` is not used: from 3.12 it compensates, and numpy's `sum` is pairwise.
- `linear_recurrence` / `recur_lanes` / `RecurrenceRows`: y[i] = a·y[i-1] + b[i] (EMA, Wilder
  smoothing). A plain loop is the only exact vectorisation-free form and costs ≈ 80 ms for a
  year of 1m candles (scipy's lfilter, a C loop, computes exactly that loop in ≈ 2.3 ms, twice
  TA-Lib's whole EMA: decision 0016). Instead the series is cut into fixed chunks of `CHUNK`
  steps counted from the first step. Inside a chunk z runs the same recurrence from zero and p
  multiplies the a's; then y = z + p·c, with c the last y of the previous chunk. Batch lays the
  series out as lanes (`to_lanes`: one column per chunk, so one numpy operation on a row steps
  every chunk at the same position; `lanes_of` computes b, k·x or x/n or a price change, in
  the same call), then carries c from chunk to chunk in a float loop; the step form keeps z, p
  and c. Same operations, same order: identical floats. The result differs from a plain loop
  by rounding only (≈ 1e-16 relative per step, not accumulating: a < 1). Several recurrences of
  one indicator can run side by side (`recur_lane_groups`: ADX's three sums).
- `rolling_sum` / `RollingSumRows`: the sum of the last n values. Up to `SUMMED_IN_ORDER` values
  it is summed in order at every output. Longer windows carry it as w += x[i] - x[i-n],
  recomputed exactly (summed in order) every `CHUNK` outputs, which bounds the drift of the
  running total; batch runs that in lanes too (`window_sums`), one addition per row.
- `rolling_extreme` / `ExtremeRows`: the highest or lowest of the last n values (max and min do
  not round, so any method gives the same value: batch takes n shifted maxima, the step form the
  maximum of its window).

`CHUNK` is part of the arithmetic: changing it changes the last bits of every smoothed output.
Batch work arrays come from `scratch` (kept per thread): fresh multi-MB arrays cost as much in
page faults as the arithmetic. Masked numpy operations on data-dependent masks (np.where,
boolean indexing) are avoided in the batch forms: they cost ten times a plain operation.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from rules.engine.base import BoolArray, FloatArray, RowIndex, RowState, nan_prefixed

CHUNK = 128
SUMMED_IN_ORDER = 4  # windows this short are summed in order at every output (no running total)
_KEPT_AT_MOST = 1 << 21  # elements of a scratch array kept between calls (16 MB)


def sum_in_order(values: FloatArray) -> float:
    """((0.0 + v0) + v1) + …: the order a running accumulator adds values in."""
    total = 0.0
    for value in values.tolist():
        total = total + value
    return total


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[int, FloatArray] = {}


_scratch = _Scratch()


def scratch(slot: int, size: int) -> FloatArray:
    """A float64 work array of `size` elements, kept between calls (one per slot and thread).

    A fresh array of a few MB is paid again at first touch, one page fault per 4 KiB (≈ 1 µs each
    on our VMs: 1.5 ms of a 4 ms EMA over a year of 1m candles). Work arrays are taken from here
    and outputs are fresh. What is held is the largest size asked for in each slot (0…5), per
    thread, up to `_KEPT_AT_MOST` elements (25 MB for six slots of a year of 1m candles); longer
    work arrays are fresh each time. A caller owns a slot until it returns: kernels name the
    slots they use."""
    if size > _KEPT_AT_MOST:
        return np.empty(size, dtype=np.float64)
    buffer = _scratch.buffers.get(slot)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=np.float64)
        _scratch.buffers[slot] = buffer
    return buffer[:size]


def lanes_shape(size: int) -> tuple[int, int]:
    """(rows, chunks) of the lane layout of `size` steps: chunks of `CHUNK` steps (one shorter
    chunk when the whole series is shorter), the last one padded."""
    rows = max(1, min(CHUNK, size))
    return rows, -(-size // rows)


def to_lanes(values: FloatArray, slot: int) -> FloatArray:
    """values laid out as (rows, chunks) in scratch `slot`: column j holds chunk j,
    values[j·rows:(j+1)·rows], and 0.0 past the end. One numpy operation on a row then steps every
    chunk at once."""
    return lanes_of(np.positive, (values,), values.size, slot)


def lanes_of(op: np.ufunc, operands: tuple[FloatArray | float, ...], size: int, slot: int) -> FloatArray:
    """op(*operands)[:size] laid out as `to_lanes` lays out a series, in scratch `slot`: the
    operation and the transposition in one numpy call (an EMA's k·x, Wilder's x/n, a price
    change). Operands are series (at least `size` values, from their start) or floats."""
    rows, chunks = lanes_shape(size)
    lanes = scratch(slot, rows * chunks).reshape(rows, chunks)
    fill_lanes(op, operands, size, lanes)
    return lanes


def lanes_after_first(
    op: np.ufunc, operands: tuple[FloatArray | float, ...], size: int, slot: int
) -> FloatArray:
    """Lanes of `size` steps (`lanes_shape(size)`, in scratch `slot`) whose step q ≥ 1 is
    op(*operands)[q-1], for the caller to write row 0 (the first step of every chunk), which is
    left as it was: a window's change from one output to the next, where each chunk starts from
    an exact sum.

    The values are laid out from the second row of a buffer one row taller than the lanes, so
    each lands at its own step without a shifted copy (the one that would wrap to the next
    chunk's row 0 goes to the extra row)."""
    rows, chunks = lanes_shape(size)
    taller = scratch(slot, (rows + 1) * chunks).reshape(rows + 1, chunks)
    fill_lanes(op, operands, size - 1, taller[1:])
    return taller[:rows]


def fill_lanes(op: np.ufunc, operands: tuple[FloatArray | float, ...], size: int, lanes: FloatArray) -> None:
    """`lanes_of` into a given (rows, chunks) array: 0.0 past `size`.

    The call iterates in Fortran order over the lanes: the inner loop reads one chunk of the
    series in order and writes it down a column, so the few cache lines it writes to are the same
    for the next chunks (twice as fast here as numpy's own transposing copy, which reads a
    column of the series with a stride of one chunk)."""
    rows, chunks = lanes.shape
    full = size // rows
    laid = (o if isinstance(o, float) else o[: full * rows].reshape(full, rows).T for o in operands)
    op(*laid, out=lanes[:, :full], order="F")
    if full < chunks:
        rest = size - full * rows
        ends = (o if isinstance(o, float) else o[full * rows : size] for o in operands)
        op(*ends, out=lanes[:rest, full])
        lanes[rest:, full] = 0.0
        lanes[:, full + 1 :] = 0.0


def from_lanes(lanes: FloatArray, out: FloatArray) -> None:
    """Write the first out.size steps of a lane layout back in series order into `out`."""
    rows = lanes.shape[0]
    full = out.size // rows
    np.copyto(out[: full * rows].reshape(full, rows), lanes[:, :full].T)
    rest = out.size - full * rows
    if rest:
        out[full * rows :] = lanes[:rest, full]


def _powers(a: float, rows: int) -> FloatArray:
    """a, a·a, (a·a)·a, …: the running product the step form keeps, for a constant a."""
    return np.multiply.accumulate(np.full(rows, a, dtype=np.float64))


def recur_lanes(lanes: FloatArray, a: float, y0: float) -> None:
    """In place: lanes of b (`to_lanes`, `lanes_of`) become lanes of y, y[i] = a·y[i-1] + b[i],
    y[-1] = y0.

    In each chunk z runs the recurrence from zero (z = b at its first step), one numpy operation
    per position for all chunks; the carries c (the last y of each chunk) follow in order, a float
    loop over the chunks (a list comprehension: 4% of an EMA faster than an appending loop);
    then y = z + p·c with p the running product of the a's."""
    rows, chunks = lanes.shape
    lines = list(lanes)
    scratch = np.empty(chunks)
    factor = np.full(chunks, a)
    previous = lines[0]
    for line in lines[1:]:
        np.multiply(factor, previous, scratch)
        np.add(scratch, line, line)
        previous = line
    powers = _powers(a, rows)
    last_power = float(powers[-1])
    carry = y0
    carries = [y0]
    carries += [carry := last_z + last_power * carry for last_z in previous[:-1].tolist()]
    carried = np.fromiter(carries, np.float64, chunks)
    for line, power in zip(lines, powers, strict=True):
        np.multiply(power, carried, scratch)
        np.add(line, scratch, line)


def lane_groups(size: int, groups: int, slot: int) -> FloatArray:
    """Scratch lanes for `groups` series of `size` steps, (groups, rows, chunks) in scratch
    `slot`, for `recur_lane_groups`: [g] is series g's lanes, each as compact as `to_lanes`
    makes them (side by side in one row, a column of lanes would span more memory than the TLB
    maps here, and laying a series out or back became 1.5 times slower)."""
    rows, chunks = lanes_shape(size)
    return scratch(slot, groups * rows * chunks).reshape(groups, rows, chunks)


def recur_lane_groups(lanes: FloatArray, a: tuple[float, ...], y0: tuple[float, ...]) -> None:
    """`recur_lanes` for several series at once (`lane_groups`), series g with its own a[g] and
    y0[g]: one numpy operation per position steps every chunk of every series (ADX's three
    smoothed sums). Each element goes through the same operations as in `recur_lanes`."""
    groups, rows, chunks = lanes.shape
    lines = [lanes[:, t] for t in range(rows)]  # (groups, chunks) each
    scratch = np.empty((groups, chunks))
    factor = np.repeat(np.array(a, dtype=np.float64), chunks).reshape(groups, chunks)
    previous = lines[0]
    for line in lines[1:]:
        np.multiply(factor, previous, scratch)
        np.add(scratch, line, line)
        previous = line
    powers = np.stack([_powers(a_g, rows) for a_g in a], axis=1)[:, :, None]  # (rows, groups, 1)
    carried = np.empty((groups, chunks))
    for g in range(groups):
        last_power = float(powers[-1, g, 0])
        carry = y0[g]
        carries = [carry]
        carries += [carry := last_z + last_power * carry for last_z in previous[g, :-1].tolist()]
        carried[g] = np.fromiter(carries, np.float64, chunks)
    for line, power in zip(lines, powers, strict=True):
        np.multiply(power, carried, scratch)
        np.add(line, scratch, line)


def linear_recurrence(a: float, b: FloatArray, y0: float) -> FloatArray:
    """y[i] = a·y[i-1] + b[i] for i = 0…len(b)-1, with y[-1] = y0 and a constant."""
    out = np.empty(b.size, dtype=np.float64)
    if b.size:
        lanes = to_lanes(b, 0)
        recur_lanes(lanes, a, y0)
        from_lanes(lanes, out)
    return out


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


def chunk_windows(values: FloatArray, n: int, rows: int, chunks: int) -> FloatArray:
    """(chunks, n): row j holds values[j·rows…j·rows+n-1], the window of the first output of
    chunk j (copied out of the series: summing strided columns of it directly is 4 times slower)."""
    return as_strided(values, shape=(chunks, n), strides=(rows * values.strides[0], values.strides[0])).copy()


def window_sums(values: FloatArray, n: int, slot: int) -> FloatArray:
    """Lanes (`to_lanes`, in scratch `slot`) of the sums of values[q…q+n-1] for q = 0…size-n,
    as `RollingSumRows` computes them: t[q] = t[q-1] + (values[q+n-1] - values[q-1]), except at
    the first output of each chunk (q = j·CHUNK), where the window is summed in order. Needs
    size ≥ n."""
    lanes = lanes_after_first(np.subtract, (values[n:], values[:-n]), values.size - (n - 1), slot)
    rows, chunks = lanes.shape
    exact = np.zeros(chunks)
    for column in chunk_windows(values, n, rows, chunks).T:
        np.add(exact, column, out=exact)
    lanes[0] = exact
    for t in range(1, rows):
        np.add(lanes[t - 1], lanes[t], out=lanes[t])
    return lanes


def rolling_sum_into(values: FloatArray, n: int, out: FloatArray) -> FloatArray:
    """The sums of values[q…q+n-1] for q = 0…size-n into `out`, as `RollingSumRows` computes
    them: summed in order when n ≤ SUMMED_IN_ORDER, else `window_sums`."""
    if n > SUMMED_IN_ORDER:
        from_lanes(window_sums(values, n, 0), out)
        return out
    out.fill(0.0)
    for k in range(n):
        np.add(out, values[k : k + out.size], out=out)
    return out


def rolling_sum(values: FloatArray, n: int) -> FloatArray:
    """Sum of values[i-n+1…i] at each i ≥ n-1 (NaN before), as `RollingSumRows` computes it."""
    out = nan_prefixed(values.size, min(n - 1, values.size))
    if values.size >= n:
        rolling_sum_into(values, n, out[n - 1 :])
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

    def ordered(self, rows: RowIndex) -> FloatArray:
        """Each (full) row's window, oldest first: (rows, n)."""
        at = self.head[rows][:, None] + np.arange(self.n)
        at[at >= self.n] -= self.n
        ordered: FloatArray = self.ring[rows[:, None], at]
        return ordered


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
        exact = full if self.window.n <= SUMMED_IN_ORDER else full & (outputs % CHUNK == 0)
        if exact.any():
            at = rows[exact]
            recomputed = np.zeros(at.size)
            for column in self.window.ordered(at).T:
                recomputed = recomputed + column
            total[exact] = recomputed
        self.total[rows] = total
        self.outputs[rows] = outputs + full
        return np.where(full, total, np.nan), leaving


def window_extreme(values: FloatArray, n: int, out: FloatArray, *, highest: bool) -> FloatArray:
    """max (or min) of values[q…q+n-1] for q = 0…size-n, into `out` (max and min do not round:
    any order gives the step form's value)."""
    pick = np.maximum if highest else np.minimum
    outputs = out.size
    np.copyto(out, values[:outputs])
    for k in range(1, n):
        pick(out, values[k : k + outputs], out=out)
    return out


def rolling_extreme(values: FloatArray, n: int, *, highest: bool) -> FloatArray:
    """max (or min) of values[i-n+1…i] at each i ≥ n-1, NaN before."""
    out = nan_prefixed(values.size, min(n - 1, values.size))
    if values.size >= n:
        window_extreme(values, n, out[n - 1 :], highest=highest)
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
