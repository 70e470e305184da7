"""Putting an execution loop together from settings: mode, broker, fill model, paper account,
and the guarantee that only one loop runs against a database."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import connection
from waffle.models import Flag

from oasis_site.flags import LIVE_TRADING
from trading.brokers.dry_run import DryRunBroker
from trading.core.fills import FillModel
from trading.credentials import credentials_from_environment
from trading.execution import ExecutionConfig, ExecutionLoop
from trading.models import Balance, Mode
from trading.services import balance_set

# Key of the PostgreSQL advisory lock held by the one running execution loop ("OASISTRD").
TRADE_LOCK_KEY = 0x4F41534953545244 & 0x7FFFFFFFFFFFFFFF


class ExecutionSetupError(RuntimeError):
    """The loop cannot start; the message says what to change."""


def live_trading_on() -> bool:
    flag = Flag.get(LIVE_TRADING)
    return bool(flag.pk and flag.everyone)


def fill_model() -> FillModel:
    return FillModel(
        taker_fee_bps=settings.OASIS_FEE_BPS,
        maker_fee_bps=settings.OASIS_FEE_BPS,
        slippage_bps=settings.OASIS_SLIPPAGE_BPS,
    )


def execution_loop(*, exchange: str) -> ExecutionLoop:
    """The loop for `exchange`: live when the live_trading flag is on (and keys are set),
    dry-run otherwise."""
    model = fill_model()
    live = live_trading_on()
    config = ExecutionConfig(
        mode=Mode.LIVE.value if live else Mode.DRY_RUN.value,
        exchange=exchange,
        quote_asset=settings.OASIS_QUOTE_ASSET,
        taker_fee_bps=model.taker_fee_bps,
    )
    if not live:
        paper_account_open(quote_asset=config.quote_asset, amount=settings.OASIS_DRYRUN_BALANCE)
        return ExecutionLoop(
            broker_factory=lambda _loop: DryRunBroker(exchange=exchange, fill_model=model), config=config
        )
    try:
        credentials = credentials_from_environment(os.environ, exchange)
    except ValueError as error:
        raise ExecutionSetupError(str(error)) from None
    if credentials is None:
        raise ExecutionSetupError(
            f"the live_trading flag is on but no API key is set for {exchange}: set "
            f"OASIS_{exchange.upper()}_API_KEY and OASIS_{exchange.upper()}_API_SECRET (or "
            f"OASIS_{exchange.upper()}_SECRETS_FILE), or turn the flag off to trade dry-run"
        )
    from trading.brokers.live import LiveBroker

    return ExecutionLoop(
        broker_factory=lambda loop: LiveBroker(
            exchange=exchange,
            credentials=credentials,
            rest_url=settings.OASIS_EXCHANGE_URLS.get(exchange, {}).get("rest"),
            gate=loop.gate,
            on_error=loop.on_broker_error,
        ),
        config=config,
    )


def paper_account_open(*, quote_asset: str, amount: Decimal) -> None:
    """Give an empty dry-run account its starting balance (audited); never tops one up."""
    if Balance.objects.filter(mode=Mode.DRY_RUN).exists():
        return
    balance_set(
        mode=Mode.DRY_RUN.value,
        asset=quote_asset,
        free=amount,
        locked=Decimal(0),
        actor="system:execution",
        reason="dry-run paper account opened",
    )


@contextlib.contextmanager
def single_instance() -> Iterator[None]:
    """Hold the one-execution-loop lock for the duration, or refuse."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [TRADE_LOCK_KEY])
            (locked,) = cursor.fetchone() or (False,)
        if not locked:
            raise ExecutionSetupError("another execution loop (manage.py trade) is running on this database")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [TRADE_LOCK_KEY])
        return
    # SQLite: a lock file beside the database file, so two stacks on two databases never
    # block each other (an in-memory database has no file: the project's var/ then).
    name = str(connection.settings_dict["NAME"])
    database = Path(name) if name and name != ":memory:" and not name.startswith("file:") else None
    path = Path(f"{database}.trade.lock") if database else Path(settings.BASE_DIR) / "var" / "trade.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExecutionSetupError(
                "another execution loop (manage.py trade) is running on this database"
            ) from None
        yield
