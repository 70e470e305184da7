"""The one place Oasis reads its environment.

Every variable is parsed and validated here, into an immutable `Environment`, and
`settings.py` turns that into Django settings. Nothing else in the code base reads
`os.environ` for configuration. Every variable is documented in `.env.example`.

A bad value raises `ConfigurationError` whose message is one line naming the variable
and what is expected; `settings.py` turns that into a refusal to start.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from marketdata.core.resample import Derivation, validate_derivations
from marketdata.exchanges import PROFILES

EnvName = Literal["dev", "test", "prod"]
LogFormat = Literal["json", "console"]

ENV_NAMES: tuple[EnvName, ...] = ("dev", "test", "prod")
EXCHANGE_NAMES: tuple[str, ...] = tuple(PROFILES)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Only for dev/test. Never valid in prod: `read_environment` demands SECRET_KEY there.
INSECURE_DEV_SECRET_KEY = "oasis-dev-insecure-secret-key-do-not-use-in-production-0123456789"  # noqa: S105

# Every variable `read_environment` understands, so that tooling (docker-compose checks,
# `.env.example` checks) can tell a documented variable from a typo.
KNOWN_VARIABLES: tuple[str, ...] = (
    "OASIS_ENV",
    "SECRET_KEY",
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "MONGO_URL",
    "OASIS_BIND",
    "OASIS_PORT",
    "ALLOWED_HOSTS",
    "CORS_ALLOWED_ORIGINS",
    "CSRF_TRUSTED_ORIGINS",
    "OASIS_PROXY_HEADERS",
    "OASIS_SSL_REDIRECT",
    "OASIS_HSTS_SECONDS",
    "OASIS_LOG_FORMAT",
    "OASIS_LOG_LEVEL",
    "OASIS_EXCHANGE",
    "OASIS_DERIVATIONS",
    *(f"OASIS_{name.upper()}_{kind}_URL" for name in EXCHANGE_NAMES for kind in ("REST", "WS")),
    "OASIS_QUOTE_ASSET",
    "OASIS_DRYRUN_BALANCE",
    "OASIS_FEE_BPS",
    "OASIS_SLIPPAGE_BPS",
    "OASIS_BROADCAST_RELAY_URL",
    "OASIS_SLACK_WEBHOOK_URL",
    "OASIS_ALERT_EMAIL_TO",
    "OASIS_ALERT_EMAIL_FROM",
    "OASIS_SMTP_HOST",
    "OASIS_SMTP_PORT",
    "OASIS_SLO_WINDOW_S",
    "OASIS_SLO_CHECK_S",
    "OASIS_SHUTDOWN_DELAY_S",
    "OASIS_SHUTDOWN_GRACE_S",
    "OASIS_INGEST_METRICS_URL",
    "OASIS_TRADE_METRICS_URL",
    "OASIS_API_READ_RATE",
    "OASIS_API_WRITE_RATE",
    "OASIS_WORKER_METRICS_PORT",
    "OASIS_INGEST_PROCESSES",
    # Exchange credentials (trading.credentials reads them; never logged or stored).
    *(
        f"OASIS_{name.upper()}_{kind}"
        for name in (*EXCHANGE_NAMES, "coinbase")
        for kind in ("API_KEY", "API_SECRET", "API_PASSWORD", "SECRETS_FILE")
    ),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigurationError(ValueError):
    """A variable is missing or malformed. The message names it and what is expected."""


@dataclass(frozen=True)
class Environment:
    name: EnvName
    debug: bool
    secret_key: str
    database: dict[str, Any]
    redis_url: str | None
    mongo_url: str | None
    bind: str
    port: int
    allowed_hosts: list[str]
    cors_allowed_origins: list[str]
    csrf_trusted_origins: list[str]
    proxy_headers: bool
    ssl_redirect: bool
    hsts_seconds: int
    log_format: LogFormat
    log_level: str
    exchange: str = "sim"
    # {"binance": {"rest": "...", "ws": "..."}}: only the URLs set in the environment.
    exchange_urls: dict[str, dict[str, str]] = field(default_factory=dict)
    # Which timeframes are derived from which: ((source, target), ...); None: the default map,
    # less what each exchange streams itself (marketdata.resampling.derivations).
    derivations: tuple[Derivation, ...] | None = None
    # Execution: the account's quote asset, the dry-run paper account's starting balance, and
    # the fill model's fee and slippage (basis points), shared by dry-run and backtests.
    quote_asset: str = "USDT"
    dry_run_balance: Decimal = Decimal(10_000)
    fee_bps: Decimal = Decimal(10)
    slippage_bps: Decimal = Decimal(5)
    # Without Redis (make run), the web process relays WebSocket broadcasts that other
    # processes post here (oasis_site/broadcast.py); None: the channel layer carries them.
    broadcast_relay_url: str | None = None
    # Alert notifications (audit/notifications.py): none configured, none sent.
    slack_webhook_url: str | None = None
    alert_email_to: tuple[str, ...] = ()
    alert_email_from: str = "oasis@localhost"
    smtp_host: str | None = None
    smtp_port: int = 25
    # Service-level monitors (audit/monitors.py): the window their p95 covers, how often checked.
    slo_window_s: int = 120
    slo_check_s: int = 10
    # Graceful stop of the web server (oasis_site/shutdown.py): seconds it answers "draining" on
    # /readyz before closing WebSockets (for a load balancer to notice), then at most this long
    # for requests in flight.
    shutdown_delay_s: float = 0.0
    shutdown_grace_s: float = 10.0
    # The ingest and trade processes' /metrics, read by the operations page: one URL per ingest
    # process (comma-separated in OASIS_INGEST_METRICS_URL: one per shard).
    ingest_metrics_urls: tuple[str, ...] = ("http://127.0.0.1:9101/metrics",)
    trade_metrics_url: str = "http://127.0.0.1:9102/metrics"
    # REST API throttling: requests per client IP and per route, for reads (GET) and writes.
    api_read_rate: str = "600/min"
    api_write_rate: str = "60/min"
    # Celery worker /metrics: pool process i listens on this port + i (oasis_site/celery.py); 0: off
    # (the default in test).
    worker_metrics_port: int = 9103
    # `manage.py ingest` processes on one host by default (`--processes`): the symbols dealt
    # among them, so a close burst is read on several cores.
    ingest_processes: int = 1
    var_dir: Path = field(repr=False, default=Path("var"))

    @property
    def process_metrics_urls(self) -> dict[str, str]:
        """The processes whose /metrics the operations page reads, by the name it shows: the
        ingest process ("ingest", or "ingest-0", "ingest-1", … with one per shard) and "trade"."""
        if len(self.ingest_metrics_urls) == 1:
            ingest = {"ingest": self.ingest_metrics_urls[0]}
        else:
            ingest = {f"ingest-{shard}": url for shard, url in enumerate(self.ingest_metrics_urls)}
        return {**ingest, "trade": self.trade_metrics_url}

    @property
    def is_prod(self) -> bool:
        return self.name == "prod"


def read_environment(environ: Mapping[str, str], *, base_dir: Path) -> Environment:
    """Parse and validate `environ`. Raises `ConfigurationError` on the first bad variable."""

    def get(name: str) -> str | None:
        value = environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    name = get("OASIS_ENV") or "dev"
    if name not in ENV_NAMES:
        raise ConfigurationError(f"OASIS_ENV must be one of dev, test, prod; got {name!r}")
    env_name: EnvName = name  # type: ignore[assignment]
    prod = env_name == "prod"

    debug = _parse_bool("DEBUG", get("DEBUG"), default=False)
    if prod and debug:
        raise ConfigurationError("DEBUG must be off when OASIS_ENV=prod (unset it or set DEBUG=0)")

    secret_key = get("SECRET_KEY")
    if secret_key is None:
        if prod:
            raise ConfigurationError(
                "SECRET_KEY is required when OASIS_ENV=prod: set it to a random string of at "
                "least 50 characters"
            )
        secret_key = INSECURE_DEV_SECRET_KEY
    elif prod and (len(secret_key) < 50 or len(set(secret_key)) < 5):
        raise ConfigurationError(
            "SECRET_KEY is too weak for OASIS_ENV=prod: expected a random string of at least "
            "50 characters with at least 5 distinct characters"
        )

    var_dir = base_dir / "var"
    database = parse_database_url(get("DATABASE_URL"), base_dir=base_dir)

    redis_url = get("REDIS_URL")
    if redis_url is None:
        if prod:
            raise ConfigurationError(
                "REDIS_URL is required when OASIS_ENV=prod (e.g. redis://redis:6379/0); the "
                "in-memory channel layer and eager Celery are for dev and test only"
            )
    else:
        _check_url("REDIS_URL", redis_url, ("redis", "rediss", "unix"), "redis://host:6379/0")

    mongo_url = get("MONGO_URL")
    if mongo_url is not None:
        _check_url("MONGO_URL", mongo_url, ("mongodb", "mongodb+srv"), "mongodb://host:27017/oasis")

    bind = get("OASIS_BIND") or "127.0.0.1"
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise ConfigurationError(
            f"OASIS_BIND must be an IP address to listen on (127.0.0.1, or 0.0.0.0 for all "
            f"interfaces); got {bind!r}"
        ) from None
    port = _parse_int("OASIS_PORT", get("OASIS_PORT"), default=8000, low=1, high=65535)

    default_hosts = ["127.0.0.1", "localhost", "[::1]"]
    if env_name == "test":
        default_hosts.append("testserver")
    allowed_hosts = _parse_list(get("ALLOWED_HOSTS"))
    if not allowed_hosts:
        if prod:
            raise ConfigurationError(
                "ALLOWED_HOSTS is required when OASIS_ENV=prod: a comma-separated list of the "
                "host names the site is served under"
            )
        allowed_hosts = default_hosts

    cors = _parse_origins("CORS_ALLOWED_ORIGINS", get("CORS_ALLOWED_ORIGINS"))
    csrf_trusted = _parse_origins("CSRF_TRUSTED_ORIGINS", get("CSRF_TRUSTED_ORIGINS"))

    proxy_headers = _parse_bool("OASIS_PROXY_HEADERS", get("OASIS_PROXY_HEADERS"), default=False)
    ssl_redirect = _parse_bool("OASIS_SSL_REDIRECT", get("OASIS_SSL_REDIRECT"), default=prod)
    hsts_seconds = _parse_int(
        "OASIS_HSTS_SECONDS",
        get("OASIS_HSTS_SECONDS"),
        default=31_536_000 if prod else 0,
        low=0,
        high=63_072_000,
    )

    log_format = get("OASIS_LOG_FORMAT") or ("console" if env_name == "dev" else "json")
    if log_format not in ("json", "console"):
        raise ConfigurationError(f"OASIS_LOG_FORMAT must be json or console; got {log_format!r}")
    log_level = (get("OASIS_LOG_LEVEL") or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigurationError(f"OASIS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}; got {log_level!r}")

    exchange = get("OASIS_EXCHANGE") or "sim"
    if exchange not in EXCHANGE_NAMES:
        raise ConfigurationError(
            f"OASIS_EXCHANGE must be one of {', '.join(EXCHANGE_NAMES)}; got {exchange!r}"
        )
    exchange_urls: dict[str, dict[str, str]] = {}
    for exchange_name in EXCHANGE_NAMES:
        for kind, schemes in (("rest", ("http", "https")), ("ws", ("ws", "wss"))):
            variable = f"OASIS_{exchange_name.upper()}_{kind.upper()}_URL"
            url = get(variable)
            if url is not None:
                _check_url(variable, url, schemes, f"{schemes[1]}://host:port")
                exchange_urls.setdefault(exchange_name, {})[kind] = url.rstrip("/")

    derivations: tuple[Derivation, ...] | None = None
    derivations_text = get("OASIS_DERIVATIONS")
    if derivations_text is not None:
        pairs = [
            entry.split(">") for entry in (part.strip() for part in derivations_text.split(",")) if entry
        ]
        try:
            derivations = validate_derivations([[side.strip() for side in pair] for pair in pairs])
        except ValueError as exc:
            raise ConfigurationError(
                f"OASIS_DERIVATIONS must be source>target pairs separated by commas (e.g. 1m>3m,1h>4h): {exc}"
            ) from None

    quote_asset = (get("OASIS_QUOTE_ASSET") or "USDT").upper()
    if not quote_asset.isalnum() or len(quote_asset) > 16:
        raise ConfigurationError(f"OASIS_QUOTE_ASSET must be an asset name such as USDT; got {quote_asset!r}")
    dry_run_balance = _parse_decimal(
        "OASIS_DRYRUN_BALANCE", get("OASIS_DRYRUN_BALANCE"), default="10000", high=10**12
    )
    fee_bps = _parse_decimal("OASIS_FEE_BPS", get("OASIS_FEE_BPS"), default="10", high=1000)
    slippage_bps = _parse_decimal("OASIS_SLIPPAGE_BPS", get("OASIS_SLIPPAGE_BPS"), default="5", high=1000)

    broadcast_relay_url = get("OASIS_BROADCAST_RELAY_URL")
    if broadcast_relay_url is None and env_name == "dev" and redis_url is None:
        # `make run`: no Redis, so every process (a CLI command too) relays to the web server.
        broadcast_relay_url = f"http://127.0.0.1:{port}/internal/broadcast"
    if broadcast_relay_url is not None:
        _check_url(
            "OASIS_BROADCAST_RELAY_URL",
            broadcast_relay_url,
            ("http",),
            "http://127.0.0.1:8000/internal/broadcast",
        )
        relay_host = urlsplit(broadcast_relay_url).hostname or ""
        if relay_host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigurationError(
                f"OASIS_BROADCAST_RELAY_URL must point at this machine (127.0.0.1); got host {relay_host!r}"
            )

    api_read_rate = _parse_rate("OASIS_API_READ_RATE", get("OASIS_API_READ_RATE"), default="600/min")
    api_write_rate = _parse_rate("OASIS_API_WRITE_RATE", get("OASIS_API_WRITE_RATE"), default="60/min")

    # Off in tests: an in-process test worker must not hold a port on the machine.
    worker_metrics_port = _parse_int(
        "OASIS_WORKER_METRICS_PORT",
        get("OASIS_WORKER_METRICS_PORT"),
        default=0 if env_name == "test" else 9103,
        low=0,
        high=65535,
    )

    ingest_processes = _parse_int(
        "OASIS_INGEST_PROCESSES", get("OASIS_INGEST_PROCESSES"), default=1, low=1, high=64
    )

    slack_webhook_url = get("OASIS_SLACK_WEBHOOK_URL")
    if slack_webhook_url is not None:
        _check_url(
            "OASIS_SLACK_WEBHOOK_URL",
            slack_webhook_url,
            ("https", "http"),
            "https://hooks.slack.com/services/...",
        )
    alert_email_to = tuple(_parse_list(get("OASIS_ALERT_EMAIL_TO")))
    for address in (*alert_email_to, get("OASIS_ALERT_EMAIL_FROM") or "oasis@localhost"):
        if "@" not in address or " " in address:
            raise ConfigurationError(
                f"OASIS_ALERT_EMAIL_TO/OASIS_ALERT_EMAIL_FROM: {address!r} is not an e-mail address"
            )
    smtp_host = get("OASIS_SMTP_HOST")
    smtp_port = _parse_int("OASIS_SMTP_PORT", get("OASIS_SMTP_PORT"), default=25, low=1, high=65535)

    slo_window_s = _parse_int(
        "OASIS_SLO_WINDOW_S", get("OASIS_SLO_WINDOW_S"), default=120, low=5, high=86_400
    )
    slo_check_s = _parse_int("OASIS_SLO_CHECK_S", get("OASIS_SLO_CHECK_S"), default=10, low=1, high=3600)
    shutdown_delay_s = _parse_seconds("OASIS_SHUTDOWN_DELAY_S", get("OASIS_SHUTDOWN_DELAY_S"), default=0.0)
    shutdown_grace_s = _parse_seconds("OASIS_SHUTDOWN_GRACE_S", get("OASIS_SHUTDOWN_GRACE_S"), default=10.0)
    metrics_urls: dict[str, list[str]] = {}
    for name, default in (("INGEST", 9101), ("TRADE", 9102)):
        variable = f"OASIS_{name}_METRICS_URL"
        urls = _parse_list(get(variable)) or [f"http://127.0.0.1:{default}/metrics"]
        if name == "TRADE" and len(urls) > 1:
            raise ConfigurationError(
                f"{variable} takes one URL (there is one trade process), got {len(urls)}"
            )
        for url in urls:
            _check_url(variable, url, ("http", "https"), f"http://{name.lower()}:{default}/metrics")
        metrics_urls[name] = urls

    return Environment(
        name=env_name,
        debug=debug,
        secret_key=secret_key,
        database=database,
        redis_url=redis_url,
        mongo_url=mongo_url,
        bind=bind,
        port=port,
        allowed_hosts=allowed_hosts,
        cors_allowed_origins=cors,
        csrf_trusted_origins=csrf_trusted,
        proxy_headers=proxy_headers,
        ssl_redirect=ssl_redirect,
        hsts_seconds=hsts_seconds,
        log_format=log_format,  # type: ignore[arg-type]
        log_level=log_level,
        exchange=exchange,
        exchange_urls=exchange_urls,
        derivations=derivations,
        quote_asset=quote_asset,
        dry_run_balance=dry_run_balance,
        fee_bps=fee_bps,
        slippage_bps=slippage_bps,
        broadcast_relay_url=broadcast_relay_url,
        slack_webhook_url=slack_webhook_url,
        alert_email_to=alert_email_to,
        alert_email_from=get("OASIS_ALERT_EMAIL_FROM") or "oasis@localhost",
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        slo_window_s=slo_window_s,
        slo_check_s=slo_check_s,
        shutdown_delay_s=shutdown_delay_s,
        shutdown_grace_s=shutdown_grace_s,
        ingest_metrics_urls=tuple(metrics_urls["INGEST"]),
        trade_metrics_url=metrics_urls["TRADE"][0],
        api_read_rate=api_read_rate,
        api_write_rate=api_write_rate,
        worker_metrics_port=worker_metrics_port,
        ingest_processes=ingest_processes,
        var_dir=var_dir,
    )


def parse_database_url(url: str | None, *, base_dir: Path) -> dict[str, Any]:
    """Turn DATABASE_URL into a Django DATABASES entry.

    Supported: ``sqlite:///relative/or/absolute/path`` and
    ``postgres://user:password@host:port/name?option=value`` (``postgresql://`` too).
    Query options are passed to the driver (e.g. ``sslmode=require``). Unset: the SQLite
    file ``var/oasis.sqlite3`` under `base_dir`, the embedded default.
    """
    if url is None:
        return _sqlite_config(base_dir / "var" / "oasis.sqlite3")
    expected = "postgres://user:password@host:5432/name or sqlite:///path/to/file.sqlite3"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"DATABASE_URL is malformed ({exc}); expected {expected}") from None
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc or not path or path == "/":
            raise ConfigurationError(f"DATABASE_URL is malformed: expected {expected}")
        # As in SQLAlchemy: sqlite:///var/x.sqlite3 is relative (to the project directory),
        # sqlite:////abs/x.sqlite3 is absolute.
        return _sqlite_config(base_dir / path[1:])
    if scheme in ("postgres", "postgresql"):
        name = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not name or "/" in name:
            raise ConfigurationError(
                f"DATABASE_URL is malformed: a PostgreSQL URL needs a host and a database name; "
                f"expected {expected}"
            )
        options: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=False))
        return {
            "ENGINE": "django_prometheus.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname,
            "PORT": str(port or 5432),
            "CONN_MAX_AGE": 0,
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    raise ConfigurationError(
        f"DATABASE_URL has unsupported scheme {scheme or '(none)'!r}: expected {expected}"
    )


def _sqlite_config(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django_prometheus.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # IMMEDIATE takes the write lock when a transaction starts, so read-then-write
            # services (the audit hash chain) are serialised on SQLite as on PostgreSQL.
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def _check_url(name: str, url: str, schemes: tuple[str, ...], example: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise ConfigurationError(f"{name} is malformed ({exc}); expected e.g. {example}") from None
    if parts.scheme.lower() not in schemes:
        raise ConfigurationError(
            f"{name} must use one of the schemes {', '.join(schemes)}; expected e.g. {example}"
        )
    if parts.scheme.lower() != "unix" and not parts.hostname:
        raise ConfigurationError(f"{name} has no host; expected e.g. {example}")


def _parse_bool(name: str, value: str | None, *, default: bool) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be a boolean (1/0, true/false, yes/no, on/off); got {value!r}")


def _parse_decimal(name: str, value: str | None, *, default: str, high: int) -> Decimal:
    text = default if value is None or not value.strip() else value.strip()
    try:
        number = Decimal(text)
    except ArithmeticError:
        raise ConfigurationError(f"{name} must be a decimal number such as {default}; got {text!r}") from None
    if not number.is_finite() or not 0 <= number <= high:
        raise ConfigurationError(f"{name} must be between 0 and {high}; got {text!r}")
    return number


_RATE_RE = re.compile(r"([1-9][0-9]{0,6})/(s|sec|second|m|min|minute|h|hour|d|day)")


def _parse_rate(name: str, value: str | None, *, default: str) -> str:
    """A throttle rate as DRF reads it: <requests>/<period>, the period one of s, min, hour, day."""
    text = default if value is None else value.replace(" ", "")
    if not _RATE_RE.fullmatch(text):
        raise ConfigurationError(f"{name} must be <requests>/<s|min|hour|day>, e.g. {default}; got {text!r}")
    return text


def _parse_int(name: str, value: str | None, *, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number; got {value!r}") from None
    if not low <= number <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}; got {number}")
    return number


def _parse_seconds(name: str, value: str | None, *, default: float, high: float = 600.0) -> float:
    if value is None or not value.strip():
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(
            f"{name} must be a number of seconds such as {default:g}; got {value!r}"
        ) from None
    if not 0 <= number <= high:
        raise ConfigurationError(f"{name} must be between 0 and {high:g} seconds; got {value!r}")
    return number


def _parse_list(value: str | None) -> list[str]:
    if value is None:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_origins(name: str, value: str | None) -> list[str]:
    origins = _parse_list(value)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"{name} must be a comma-separated list of origins such as "
                f"https://desk.example.com; got {origin!r}"
            )
    return [origin.rstrip("/") for origin in origins]
