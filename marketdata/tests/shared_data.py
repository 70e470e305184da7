"""Where the real market data for tests lives (see ../shared/data/README.md).

The repository may be checked out anywhere (CI clones it into a temporary folder), so look in
order: OASIS_SHARED_DATA (a directory), a `shared/data` beside any ancestor of the repository,
then /work/shared/data, the machines' standard place. Tests that need it skip, naming the paths
tried, when it is nowhere.
"""

from __future__ import annotations

import os
from pathlib import Path

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
