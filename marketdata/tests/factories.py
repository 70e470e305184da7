from datetime import UTC, datetime
from decimal import Decimal

from factory.declarations import Sequence
from factory.django import DjangoModelFactory

from marketdata.core.klines import Kline
from marketdata.core.timeframes import Timeframe
from marketdata.models import Symbol


class SymbolFactory(DjangoModelFactory[Symbol]):
    class Meta:
        model = Symbol

    exchange = "sim"
    symbol = Sequence(lambda n: f"SIM{n:04d}USDT")
    base = Sequence(lambda n: f"SIM{n:04d}")
    quote = "USDT"
    status = "TRADING"
    tick_size = Decimal("0.01000000")
    step_size = Decimal("0.00001000")
    min_qty = Decimal("0.00001000")
    max_qty = Decimal("9000.00000000")
    min_notional = Decimal("5.00000000")
    filters = {"filterType": "PRICE_FILTER"}
    updated_at = datetime(2026, 3, 1, tzinfo=UTC)


def kline(
    symbol: str = "BTCUSDT",
    *,
    open_time_ms: int = 1_677_628_800_000,  # 2023-03-01 00:00 UTC
    timeframe: Timeframe = Timeframe.M1,
    o: str = "23141.57000000",
    h: str = "23169.80000000",
    low: str = "23124.85000000",
    c: str = "23160.47000000",
    v: str = "12.34567000",
    q: str = "285912.34560000",
    n: int = 321,
    closed: bool = True,
) -> Kline:
    return Kline(
        symbol=symbol,
        timeframe=timeframe,
        open_time_ms=open_time_ms,
        open=Decimal(o),
        high=Decimal(h),
        low=Decimal(low),
        close=Decimal(c),
        volume=Decimal(v),
        quote_volume=Decimal(q),
        trades=n,
        closed=closed,
    )
