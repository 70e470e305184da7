"""The exchanges' APIs as the live broker sees them (`trading.brokers.live.LiveBroker`): one
`Venue` per API makes its requests and converts its answers; the broker retries, gates and
classifies failures around them."""

from trading.brokers.venues.base import Venue
from trading.brokers.venues.binance import Binance
from trading.brokers.venues.coinbase import Coinbase

__all__ = ["Binance", "Coinbase", "Venue"]
