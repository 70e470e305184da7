"""A Binance-Spot-compatible exchange simulator on real sockets: REST market data and orders,
kline WebSocket streams, injectable faults. Pure Python/numpy/aiohttp, no Django (only the
`simexchange` management command imports Django). See docs/decisions/0009-exchange-simulator.md.

    exchange = SimExchange(SimConfig(port=0, speed=60))
    host, port = await exchange.start()
    ...
    await exchange.stop()
"""

from marketdata.simulator.config import ConfigError, SimConfig
from marketdata.simulator.server import SimExchange, SimExchangeThread, SimUrls

__all__ = ["ConfigError", "SimConfig", "SimExchange", "SimExchangeThread", "SimUrls"]
