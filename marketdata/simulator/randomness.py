"""Counter-based randomness: every random number is a hash of (seed, purpose, index), so any
minute of any symbol can be computed alone, in any order, and always comes out the same.

SplitMix64's finaliser over numpy uint64 arrays; it only uses integer arithmetic, and the
floats derived from it only use +, -, *, / (no transcendental functions), so the streams are
bit-identical on every IEEE-754 machine."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_UNIFORM_SCALE = 2.0**-53
_SQRT3 = 1.7320508075688772

U64Array = npt.NDArray[np.uint64]
FloatArray = npt.NDArray[np.float64]


def derive_key(*parts: object) -> int:
    """A 64-bit key for a purpose, e.g. `derive_key(seed, "BTCUSDT", "walk")`."""
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def chance(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by `parts` (used for fault decisions)."""
    return derive_key(*parts) / 2.0**64


def _mix(values: U64Array) -> U64Array:
    # Integer overflow wraps silently for numpy arrays (never for scalars), which is what
    # SplitMix64 wants; callers therefore always pass arrays.
    z = values
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hashes(key: int, counters: npt.NDArray[np.int64]) -> U64Array:
    """One 64-bit hash per counter."""
    base = np.array([(key + _GOLDEN) & _MASK], dtype=np.uint64)
    golden = np.array([_GOLDEN], dtype=np.uint64)
    return _mix(counters.astype(np.uint64) * golden + base)


def uniforms(key: int, counters: npt.NDArray[np.int64], lanes: int = 1) -> FloatArray:
    """Uniform floats in [0, 1): shape (lanes, len(counters)), independent streams per lane,
    all from one vectorised hash."""
    grid = counters.astype(np.int64)[np.newaxis, :] * lanes + np.arange(lanes, dtype=np.int64)[:, np.newaxis]
    return (hashes(key, grid) >> np.uint64(11)).astype(np.float64) * _UNIFORM_SCALE


def normals_from(lanes: FloatArray) -> FloatArray:
    """Approximately standard normal floats from four uniform lanes (Irwin-Hall: mean 0,
    variance 1, bounded by ±3.46)."""
    total: FloatArray = lanes[0] + lanes[1] + lanes[2] + lanes[3]
    return (total - 2.0) * _SQRT3


def normals(key: int, counters: npt.NDArray[np.int64]) -> FloatArray:
    """Approximately standard normal floats, one per counter."""
    return normals_from(uniforms(key, counters, 4))
