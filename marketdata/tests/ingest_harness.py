"""Running the real `manage.py ingest` process against the simulator, for end-to-end tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from django.db import connection

from marketdata.models import Candle
from marketdata.simulator import SimExchangeThread
from oasis_site.tests.stack_harness import stop_gracefully

ROOT = Path(__file__).resolve().parents[2]


def sim_get(sim: SimExchangeThread, path: str) -> Any:
    with urllib.request.urlopen(f"{sim.urls.base}{path}", timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def sim_in_use(sim: SimExchangeThread, settings: Any) -> Iterator[SimExchangeThread]:
    """Point the `sim` exchange's settings at this simulator, with no faults, and sync its
    symbols; clear any fault a test left on leaving."""
    from django.core.management import call_command

    host, port = sim.address
    settings.OASIS_EXCHANGE_URLS = {"sim": {"rest": f"http://{host}:{port}", "ws": f"ws://{host}:{port}"}}
    sim_faults(sim, None)
    call_command("sync_symbols", exchange="sim", verbosity=0)
    try:
        yield sim
    finally:
        sim_faults(sim, None)


def sim_faults(sim: SimExchangeThread, payload: dict[str, Any] | None) -> None:
    """Set faults (POST) or clear them all (payload None)."""
    request = urllib.request.Request(
        f"{sim.urls.control}/faults",
        data=None if payload is None else json.dumps(payload).encode(),
        method="DELETE" if payload is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def signed_query(params: Mapping[str, Any], secret: str = "sim-secret") -> str:
    """Binance's SIGNED query string: `params` and a wall-clock `timestamp`, then `signature`,
    HMAC-SHA256 (hex) of the rest under `secret`."""
    query = urlencode({**params, "timestamp": int(time.time() * 1000)})
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={signature}"


def sim_signed(
    sim: SimExchangeThread,
    method: str,
    path: str,
    params: Mapping[str, Any],
    *,
    key: str = "sim-key",
    secret: str = "sim-secret",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    """A signed request to the simulator's REST API (parameters in the query string): status,
    headers and JSON body, error answers included. A `timeout` that runs out raises
    TimeoutError."""
    request = urllib.request.Request(
        f"{sim.urls.base}{path}?{signed_query(params, secret)}", method=method, headers={"X-MBX-APIKEY": key}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


def ingest_env(sim: SimExchangeThread) -> dict[str, str]:
    """The environment of a child process: the test database, the simulator's endpoints."""
    db = connection.settings_dict
    url = (
        f"postgres://{quote(db['USER'], safe='')}:{quote(db['PASSWORD'], safe='')}"
        f"@{db['HOST']}:{db['PORT']}/{quote(db['NAME'], safe='')}"
        if connection.vendor == "postgresql"
        else f"sqlite:///{db['NAME']}"
    )
    host, port = sim.exchange.address or ("127.0.0.1", 0)
    return {
        **{k: v for k, v in os.environ.items() if k not in {"REDIS_URL"}},
        "OASIS_ENV": "test",
        "DJANGO_SETTINGS_MODULE": "oasis_site.settings",
        "DATABASE_URL": url,
        "OASIS_SIM_REST_URL": f"http://{host}:{port}",
        "OASIS_SIM_WS_URL": f"ws://{host}:{port}",
        # 5m derived from 1m although the simulator streams 5m: the end-to-end tests hold the
        # derived candles against the simulator's own.
        "OASIS_DERIVATIONS": "1m>3m,1m>5m,1m>10m,5m>10m,1h>4h",
    }


def start_ingest(
    sim: SimExchangeThread, *args: str, log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    with log.open("a") as sink:
        return subprocess.Popen(
            [sys.executable, "manage.py", "ingest", "--exchange", "sim", "--metrics-port", "0", *args],
            cwd=ROOT,
            env={**ingest_env(sim), **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )


def stop_ingest(process: subprocess.Popen[str], log: Path) -> None:
    stop_gracefully(process, log, what="ingest")


def newest_closed_open_ms(sim: SimExchangeThread, length_ms: int) -> int:
    server_ms = int(sim_get(sim, "/_sim/status")["serverTime"])
    return server_ms - server_ms % length_ms - length_ms


def wait_until_stored(
    streams: list[tuple[int, str, int]], until_ms: int, *, timeout: float, log: Path
) -> None:
    """Wait until every (symbol id, timeframe, length) has a candle at or after `until_ms`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        behind = [
            (symbol_id, tf)
            for symbol_id, tf, _ in streams
            if not Candle.objects.filter(
                symbol_id=symbol_id, timeframe=tf, open_time__gte=_as_datetime(until_ms)
            ).exists()
        ]
        if not behind:
            return
        time.sleep(0.25)
    raise AssertionError(f"streams {behind} never reached {until_ms}:\n{log.read_text()[-4000:]}")


def stored_rows(symbol_id: int, timeframe: str, first_ms: int, last_ms: int) -> list[list[Any]]:
    """Stored candles as the simulator's rows [t, o, h, l, c, v, q, n], exact strings."""
    rows = Candle.objects.filter(
        symbol_id=symbol_id,
        timeframe=timeframe,
        open_time__gte=_as_datetime(first_ms),
        open_time__lte=_as_datetime(last_ms),
    ).order_by("open_time")
    return [
        [
            int(c.open_time.timestamp() * 1000),
            *(format(getattr(c, f), "f") for f in ("open", "high", "low", "close", "volume")),
            format(c.quote_volume, "f"),
            c.trade_count,
        ]
        for c in rows
    ]


def truth_rows(
    sim: SimExchangeThread, symbol: str, interval: str, first_ms: int, last_ms: int
) -> list[list[Any]]:
    rows = sim_get(
        sim, f"/_sim/closed?symbol={symbol}&interval={interval}&startTime={first_ms}&endTime={last_ms}"
    )
    return [[row[0], row[1], row[2], row[3], row[4], row[5], row[7], row[8]] for row in rows]


def _as_datetime(ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC)
