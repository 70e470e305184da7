"""`manage.py simexchange`: the simulated Binance exchange in the foreground."""

from __future__ import annotations

import asyncio
import gc
import signal
from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from marketdata.simulator import ConfigError, SimConfig, SimExchange
from marketdata.simulator.config import parse_duration_minutes, parse_start, parse_symbols
from marketdata.simulator.faults import REST_ERROR_STATUSES
from marketdata.simulator.intervals import KLINE_INTERVALS
from marketdata.simulator.symbols import MAX_SYMBOLS


class Command(BaseCommand):
    help = (
        "Run a Binance-Spot-compatible exchange simulator (REST, kline streams, faults) on one port. "
        "Stops on SIGINT/SIGTERM."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100, help="0: any free port (printed)")
        parser.add_argument(
            "--symbols",
            default="20",
            help=f"a count (1-{MAX_SYMBOLS}) or a list: BTCUSDT,ETHUSDT (default 20)",
        )
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
        parser.add_argument(
            "--start", help="simulated start, ISO 8601 UTC or epoch ms (default: now, whole minute)"
        )
        parser.add_argument("--history", default="2d", help="candles before the start: 90m, 36h, 2d or 0")
        parser.add_argument(
            "--replay", type=Path, help="CSV of real 1m candles to replay for --replay-symbol"
        )
        parser.add_argument("--replay-symbol", default="BTCUSDT")
        parser.add_argument("--update-interval-ms", type=int, default=250, help="forming-candle updates")
        parser.add_argument("--ping-interval", type=float, default=20.0, help="stream pings, seconds")
        parser.add_argument(
            "--pong-timeout", type=float, default=60.0, help="seconds without pong before a drop"
        )
        parser.add_argument("--weight-limit", type=int, default=6000, help="request weight per IP per minute")
        parser.add_argument("--api-key", default="sim-key")
        parser.add_argument("--api-secret", default="sim-secret")
        parser.add_argument("--quote-balance", default="100000", help="starting balance of each quote asset")
        parser.add_argument(
            "--orders-per-10s", type=int, default=50, help="unfilled-order count limit per 10 seconds"
        )
        parser.add_argument(
            "--orders-per-day", type=int, default=160_000, help="unfilled-order count limit per day"
        )
        parser.add_argument(
            "--no-order-fill-decrement",
            action="store_true",
            help="count filled orders too (Binance takes an order out of the count when it fills)",
        )
        parser.add_argument(
            "--commission-bps",
            type=int,
            default=0,
            help="commission on every fill, in the quote asset (10 = 0.1%%)",
        )
        faults = parser.add_argument_group("faults")
        faults.add_argument(
            "--fault-rest-status",
            help=f"answer REST requests with this status: {', '.join(map(str, REST_ERROR_STATUSES))} or 5xx",
        )
        faults.add_argument("--fault-rest-count", type=int, help="... for this many requests")
        faults.add_argument("--fault-rest-seconds", type=float, help="... for this many seconds")
        faults.add_argument(
            "--fault-retry-after", type=int, default=1, help="Retry-After of 429/418, seconds"
        )
        faults.add_argument("--rest-latency-ms", type=int, default=0)
        faults.add_argument("--ws-latency-ms", type=int, default=0)
        faults.add_argument(
            "--ws-drop-every", type=float, help="drop every stream connection every N seconds"
        )
        faults.add_argument(
            "--ws-silence", action="append", default=[], metavar="SYMBOL:INTERVAL:CANDLES", help="repeatable"
        )
        faults.add_argument("--ws-duplicate-rate", type=float, default=0.0, help="share of finals sent twice")
        faults.add_argument("--ws-out-of-order-rate", type=float, default=0.0)
        faults.add_argument("--ws-malformed-rate", type=float, default=0.0)

    def handle(self, *args: Any, **options: Any) -> None:
        config = self._config(options)
        try:
            exchange = SimExchange(config)
        except ConfigError as error:
            raise CommandError(str(error)) from None
        asyncio.run(self._serve(exchange))

    def _config(self, options: dict[str, Any]) -> SimConfig:
        try:
            quote_balance = Decimal(options["quote_balance"])
        except InvalidOperation:
            raise CommandError(f"--quote-balance {options['quote_balance']!r} is not a number") from None
        if options["update_interval_ms"] <= 0:
            raise CommandError(f"--update-interval-ms {options['update_interval_ms']} must be > 0")
        replay = options["replay"]
        if replay is not None and not replay.is_file():
            raise CommandError(f"--replay {replay}: no such file")
        try:
            return SimConfig(
                host=options["host"],
                port=options["port"],
                symbols=parse_symbols(options["symbols"]),
                seed=options["seed"],
                speed=options["speed"],
                start_ms=None if options["start"] is None else parse_start(options["start"]),
                # Without --start, simulated time is the wall clock (at speed 1), like an exchange.
                follow_wall_clock=options["start"] is None,
                history_minutes=parse_duration_minutes(options["history"]),
                replay_path=replay,
                replay_symbol=options["replay_symbol"].upper(),
                update_interval_s=options["update_interval_ms"] / 1000,
                ping_interval_s=options["ping_interval"],
                pong_timeout_s=options["pong_timeout"],
                weight_limit=options["weight_limit"],
                api_key=options["api_key"],
                api_secret=options["api_secret"],
                quote_balance=quote_balance,
                orders_per_10s=options["orders_per_10s"],
                orders_per_day=options["orders_per_day"],
                orders_fill_decrement=not options["no_order_fill_decrement"],
                commission_bps=options["commission_bps"],
                faults=self._faults(options),
            )
        except ConfigError as error:
            raise CommandError(str(error)) from None

    def _faults(self, options: dict[str, Any]) -> dict[str, Any]:
        faults: dict[str, Any] = {
            "rest_latency_ms": options["rest_latency_ms"],
            "ws_latency_ms": options["ws_latency_ms"],
            "ws_duplicate_rate": options["ws_duplicate_rate"],
            "ws_out_of_order_rate": options["ws_out_of_order_rate"],
            "ws_malformed_rate": options["ws_malformed_rate"],
        }
        if options["ws_drop_every"] is not None:
            faults["ws_drop_every_s"] = options["ws_drop_every"]
        status = options["fault_rest_status"]
        if status is not None:
            faults["rest_error"] = {
                "status": status if status == "5xx" else _integer(status, "--fault-rest-status"),
                "count": options["fault_rest_count"],
                "seconds": options["fault_rest_seconds"],
                "retry_after": options["fault_retry_after"],
            }
        elif options["fault_rest_count"] is not None or options["fault_rest_seconds"] is not None:
            raise CommandError("--fault-rest-count/--fault-rest-seconds need --fault-rest-status")
        silences = []
        for text in options["ws_silence"]:
            parts = text.split(":")
            if len(parts) != 3:
                raise CommandError(f"--ws-silence {text!r}: use SYMBOL:INTERVAL:CANDLES, e.g. BTCUSDT:1m:3")
            symbol, interval, candles = parts
            if interval not in KLINE_INTERVALS:
                valid = ", ".join(KLINE_INTERVALS)
                raise CommandError(f"--ws-silence {text!r}: unknown interval {interval!r}; valid: {valid}")
            silences.append(
                {"symbol": symbol.upper(), "interval": interval, "candles": _integer(candles, "--ws-silence")}
            )
        if silences:
            faults["ws_silence"] = silences
        return faults

    async def _serve(self, exchange: SimExchange) -> None:
        config = exchange.config
        try:
            await exchange.start()
        except OSError as error:
            raise CommandError(f"cannot listen on {config.host}:{config.port}: {error.strerror}") from None
        # Everything built at start-up (markets, symbol tables) lives for the whole run: keep it
        # out of the collector's full passes, which otherwise take tens of ms between bursts.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        urls = exchange.urls
        symbols = len(exchange.market.symbols)
        self.stdout.write(
            f"Simulated Binance: {symbols} symbols, seed {config.seed}, speed {config.speed}x\n"
            f"REST {urls.rest}, WS {urls.ws} (raw /ws/<stream>, combined {urls.stream}?streams=…), "
            f"control {urls.control}/status (Ctrl-C stops)"
        )
        self.stdout.flush()
        try:
            await stop.wait()
        finally:
            await exchange.stop()
        self.stdout.write("Simulator stopped.")


def _integer(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CommandError(f"{flag} {text!r} is not an integer") from None
