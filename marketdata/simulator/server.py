"""SimExchange: the simulator as one aiohttp application on one port (REST, WebSocket streams
and /_sim/ control), with a programmatic start/stop and a background-thread runner for tests of
synchronous clients such as ccxt."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from aiohttp import web

from marketdata.simulator.clock import SimClock
from marketdata.simulator.config import ConfigError, SimConfig
from marketdata.simulator.control import ControlApi
from marketdata.simulator.faults import FaultError, FaultState
from marketdata.simulator.intervals import LONGEST_INTERVAL_MS, MINUTE_MS, floor_to
from marketdata.simulator.market import Market
from marketdata.simulator.orders import Account
from marketdata.simulator.replay import ReplayError, load_replay
from marketdata.simulator.rest import RestApi
from marketdata.simulator.series import ChunkArray
from marketdata.simulator.streams import Counters, StreamHub
from marketdata.simulator.symbols import MAX_SYMBOLS, build_symbols
from marketdata.simulator.weights import OrderCountLimiter


@dataclass(frozen=True)
class SimUrls:
    base: str  # http://host:port (ccxt: urls['api'][...] = base + "/api/v3")
    rest: str
    ws: str
    stream: str
    control: str


class SimExchange:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config = config or SimConfig()
        start_ms = config.start_ms
        if start_ms is None:
            start_ms = floor_to(int(time.time() * 1000), MINUTE_MS)
        history_start = floor_to(start_ms - config.history_minutes * MINUTE_MS, LONGEST_INTERVAL_MS)
        names = list(config.symbols)
        replay: dict[str, ChunkArray] = {}
        if config.replay_path is not None:
            try:
                replay[config.replay_symbol] = load_replay(config.replay_path)
            except ReplayError as error:
                raise ConfigError(str(error)) from None
            if config.replay_symbol not in names:
                names.insert(0, config.replay_symbol)
        try:
            specs = build_symbols(names[: MAX_SYMBOLS + 1], config.seed)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.market = Market(
            specs,
            seed=config.seed,
            history_start_ms=history_start,
            replay=replay,
            cache_chunks=config.cache_chunks,
        )
        self.clock = SimClock(start_ms, config.speed)
        self.faults = FaultState(seed=config.seed)
        try:
            self.faults.apply(
                config.faults, now_ms=start_ms, monotonic_now=time.monotonic(), symbols=set(names)
            )
        except FaultError as error:
            raise ConfigError(str(error)) from None
        self.counters = Counters()
        self.order_counts = OrderCountLimiter(
            config.orders_per_10s, config.orders_per_day, fill_decrement=config.orders_fill_decrement
        )
        self.account = Account(
            self.market,
            config.quote_balance,
            commission_bps=config.commission_bps,
            on_first_fill=self.order_counts.filled,
        )
        self.hub = StreamHub(
            market=self.market, clock=self.clock, faults=self.faults, config=config, counters=self.counters
        )
        self.rest = RestApi(
            market=self.market,
            clock=self.clock,
            faults=self.faults,
            account=self.account,
            config=config,
            counters=self.counters,
            order_counts=self.order_counts,
        )
        self.control = ControlApi(
            market=self.market,
            clock=self.clock,
            faults=self.faults,
            account=self.account,
            hub=self.hub,
            config=config,
            counters=self.counters,
        )
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[self.rest.middleware])
        self.rest.add_routes(app)
        self.control.add_routes(app)
        for path in ("/ws", "/ws/{streams:.*}", "/stream"):
            app.router.add_get(path, self.hub.handle)
        return app

    async def start(self) -> tuple[str, int]:
        """Listen, start the clock and the streams; the (host, port) actually bound."""
        runner = web.AppRunner(
            self._application(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.address = (str(host), int(port))
        follow = self.config.follow_wall_clock and self.config.start_ms is None
        self.clock.start(wall_ms=int(time.time() * 1000) if follow else None)
        self.hub.start()
        return self.address

    async def stop(self) -> None:
        await self.hub.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def urls(self) -> SimUrls:
        if self.address is None:
            raise RuntimeError("SimExchange is not started")
        host, port = self.address
        base = f"http://{host}:{port}"
        return SimUrls(
            base=base,
            rest=f"{base}/api/v3",
            ws=f"ws://{host}:{port}/ws",
            stream=f"ws://{host}:{port}/stream",
            control=f"{base}/_sim",
        )


class SimExchangeThread:
    """A SimExchange on its own event loop in a daemon thread, for synchronous code:

    with SimExchangeThread(SimConfig(port=0)) as sim:
        exchange.urls["api"]["public"] = sim.urls.rest
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self.exchange = SimExchange(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sim-exchange", daemon=True)
        self._started = threading.Event()
        self._failure: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.exchange.start())
        except BaseException as error:  # noqa: BLE001 (handed over to the starting thread)
            self._failure = error
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.exchange.stop())
        self._loop.close()

    def start(self, timeout: float = 30.0) -> tuple[str, int]:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the simulator did not start")
        if self._failure is not None:
            raise self._failure
        return self.address

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    @property
    def urls(self) -> SimUrls:
        return self.exchange.urls

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) bound; RuntimeError before start()."""
        if self.exchange.address is None:
            raise RuntimeError("SimExchange is not started")
        return self.exchange.address

    def __enter__(self) -> SimExchangeThread:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
