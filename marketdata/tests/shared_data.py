"""Where the real market data for tests lives (see ../shared/data/README.md).

The repository may be checked out anywhere (CI clones it into a temporary folder), so look in
order: OASIS_SHARED_DATA (a directory), a `shared/data` beside any ancestor of the repository,
then /work/shared/data, the machines' standard place. Tests that need it skip, naming the paths
tried, when it is nowhere.
"""

from __future__ import annotations

import csv
import os
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe

FILE_NAME = "binanceus-BTCUSDT-1m-2023-03-01_21.csv"


def _candidates() -> list[Path]:
    found = []
    if os.environ.get("OASIS_SHARED_DATA"):
        found.append(Path(os.environ["OASIS_SHARED_DATA"]))
    found += [parent / "shared" / "data" for parent in Path(__file__).resolve().parents]
    found.append(Path("/work/shared/data"))
    return found


def _locate() -> Path:
    for directory in _candidates():
        if (directory / FILE_NAME).exists():
            return directory
    return _candidates()[0]


SHARED_DATA = _locate()
REAL_CANDLES_CSV = SHARED_DATA / FILE_NAME


def real_klines(symbol: str, rows: int) -> list[Kline]:
    """The first `rows` real 1m candles as closed klines of `symbol` (skips the test when the
    data is not here)."""
    import pytest

    if not REAL_CANDLES_CSV.exists():
        pytest.skip(f"the real candles are not here: {REAL_CANDLES_CSV}")
    with REAL_CANDLES_CSV.open() as handle:
        table = list(csv.DictReader(handle))[:rows]
    return [
        Kline(
            symbol=symbol,
            timeframe=Timeframe.M1,
            open_time_ms=int(
                datetime.fromisoformat(row["open_time"].replace("Z", "+00:00")).timestamp() * 1000
            ),
            open=Decimal(row["open"]),
            high=Decimal(row["high"]),
            low=Decimal(row["low"]),
            close=Decimal(row["close"]),
            volume=Decimal(row["volume"]),
            quote_volume=Decimal(0),
            trades=0,
            closed=True,
        )
        for row in table
    ]
