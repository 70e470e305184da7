"""Loading a CSV of real 1m candles for `--replay`: columns open_time (ISO 8601, UTC), open,
high, low, close, volume (decimal strings)."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

from marketdata.simulator.intervals import MINUTE_MS
from marketdata.simulator.series import ChunkArray, replay_rows
from marketdata.simulator.units import parse_units

COLUMNS = ("open_time", "open", "high", "low", "close", "volume")


class ReplayError(ValueError):
    """The file cannot be replayed; the message names the file, the line and the value."""


def load_replay(path: Path) -> ChunkArray:
    """The file's candles in chunk-row layout, one column per minute from its first row.
    Minutes missing from the file become minutes without trades (previous close, volume 0),
    as Binance reports them."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise ReplayError(
                    f"{path}: missing column(s) {', '.join(missing)}; needs {', '.join(COLUMNS)}"
                )
            fields: list[list[int]] = [[], [], [], [], []]
            previous_minute: int | None = None
            for line, row in enumerate(reader, start=2):
                minute, values = _parse_row(path, line, row)
                if previous_minute is not None:
                    if minute <= previous_minute:
                        raise ReplayError(
                            f"{path}:{line}: open_time {row['open_time']} is not after the previous row"
                        )
                    close = fields[3][-1]
                    for _ in range(minute - previous_minute - 1):
                        for column, value in zip(fields, (close, close, close, close, 0), strict=True):
                            column.append(value)
                for column, value in zip(fields, values, strict=True):
                    column.append(value)
                previous_minute = minute
    except OSError as error:
        raise ReplayError(f"cannot read {path}: {error.strerror}") from None
    if previous_minute is None:
        raise ReplayError(f"{path}: no candles")
    return replay_rows(*fields)


def _parse_row(path: Path, line: int, row: dict[str, str]) -> tuple[int, list[int]]:
    try:
        opened = datetime.fromisoformat(row["open_time"].replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{path}:{line}: open_time {row['open_time']!r} is not ISO 8601") from None
    if opened.utcoffset() is None:
        raise ReplayError(f"{path}:{line}: open_time {row['open_time']!r} has no UTC offset")
    open_ms = int(opened.timestamp() * 1000)
    if open_ms % MINUTE_MS:
        raise ReplayError(f"{path}:{line}: open_time {row['open_time']!r} is not a whole minute")
    values = []
    for column in COLUMNS[1:]:
        try:
            value = parse_units(row[column])
        except ValueError as error:
            raise ReplayError(f"{path}:{line}: {column}: {error}") from None
        if value < 0:
            raise ReplayError(f"{path}:{line}: {column} {row[column]!r} is negative")
        values.append(value)
    open_, high, low, close, _volume = values
    if not low <= min(open_, close) <= max(open_, close) <= high:
        raise ReplayError(f"{path}:{line}: high/low do not contain open/close")
    return open_ms // MINUTE_MS, values
