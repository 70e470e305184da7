"""The environment is read in one place and bad values are named, one line each."""

from pathlib import Path

import pytest

from oasis_site.environment import (
    INSECURE_DEV_SECRET_KEY,
    ConfigurationError,
    parse_database_url,
    read_environment,
)

BASE = Path("/srv/oasis")
GOOD_KEY = "k3y-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOP"
PROD = {
    "OASIS_ENV": "prod",
    "SECRET_KEY": GOOD_KEY,
    "REDIS_URL": "redis://redis:6379/0",
    "DATABASE_URL": "postgres://oasis:s3cret@db:5432/oasis",
    "ALLOWED_HOSTS": "desk.example.com",
}


def read(**env: str):
    return read_environment(env, base_dir=BASE)


def refusal(**env: str) -> str:
    with pytest.raises(ConfigurationError) as excinfo:
        read(**env)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_dev_defaults_are_embedded_and_safe():
    env = read()
    assert env.name == "dev"
    assert env.debug is False
    assert env.bind == "127.0.0.1"
    assert env.port == 8000
    assert env.redis_url is None
    assert env.secret_key == INSECURE_DEV_SECRET_KEY
    assert env.database["ENGINE"].endswith("sqlite3")
    assert env.database["NAME"] == str(BASE / "var" / "oasis.sqlite3")
    assert env.log_format == "console"
    assert env.ssl_redirect is False
    assert env.hsts_seconds == 0


def test_prod_reads_a_complete_environment():
    env = read(**PROD)
    assert env.is_prod
    assert env.database["NAME"] == "oasis"
    assert env.database["HOST"] == "db"
    assert env.database["PASSWORD"] == "s3cret"
    assert env.log_format == "json"
    assert env.ssl_redirect is True
    assert env.hsts_seconds == 31_536_000


@pytest.mark.parametrize(
    ("missing", "named"),
    [("SECRET_KEY", "SECRET_KEY"), ("REDIS_URL", "REDIS_URL"), ("ALLOWED_HOSTS", "ALLOWED_HOSTS")],
)
def test_prod_refuses_without_required_variables(missing, named):
    env = {k: v for k, v in PROD.items() if k != missing}
    assert refusal(**env).startswith(named)


def test_prod_refuses_blank_secret_key_and_weak_one():
    assert refusal(**{**PROD, "SECRET_KEY": "   "}).startswith("SECRET_KEY is required")
    assert refusal(**{**PROD, "SECRET_KEY": "short"}).startswith("SECRET_KEY is too weak")


def test_prod_refuses_debug():
    assert refusal(**{**PROD, "DEBUG": "1"}).startswith("DEBUG must be off")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://u@h/db", "unsupported scheme 'mysql'"),
        ("postgres://", "needs a host and a database name"),
        ("postgres://db:5432/", "needs a host and a database name"),
        ("postgres://db:notaport/oasis", "malformed"),
        ("sqlite://", "malformed"),
        ("just-a-path.sqlite3", "unsupported scheme '(none)'"),
    ],
)
def test_malformed_database_url_is_named(url, fragment):
    message = refusal(**{**PROD, "DATABASE_URL": url})
    assert message.startswith("DATABASE_URL")
    assert fragment in message


def test_database_url_error_does_not_echo_the_password():
    message = refusal(DATABASE_URL="postgres://oasis:hunter2@db:99999/oasis")
    assert "hunter2" not in message


def test_database_url_forms():
    relative = parse_database_url("sqlite:///var/other.sqlite3", base_dir=BASE)
    assert relative["NAME"] == str(BASE / "var" / "other.sqlite3")
    absolute = parse_database_url("sqlite:////tmp/x.sqlite3", base_dir=BASE)
    assert absolute["NAME"] == "/tmp/x.sqlite3"
    pg = parse_database_url("postgresql://u%40x:p%2Fw@h:6543/name?sslmode=require", base_dir=BASE)
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "u@x",
        "p/w",
        "h",
        "6543",
        "name",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("name", "value", "starts"),
    [
        ("OASIS_ENV", "staging", "OASIS_ENV must be one of dev, test, prod"),
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("OASIS_BIND", "example.com", "OASIS_BIND must be an IP address"),
        ("OASIS_PORT", "80a", "OASIS_PORT must be a whole number"),
        ("OASIS_PORT", "70000", "OASIS_PORT must be between 1 and 65535"),
        ("REDIS_URL", "http://redis:6379", "REDIS_URL must use one of the schemes"),
        ("REDIS_URL", "redis://", "REDIS_URL has no host"),
        ("MONGO_URL", "mongo://x", "MONGO_URL must use one of the schemes"),
        ("CORS_ALLOWED_ORIGINS", "desk.example.com", "CORS_ALLOWED_ORIGINS must be a comma-separated"),
        ("CSRF_TRUSTED_ORIGINS", "https://x.example/path", "CSRF_TRUSTED_ORIGINS must be a comma-separated"),
        ("OASIS_LOG_FORMAT", "xml", "OASIS_LOG_FORMAT must be json or console"),
        ("OASIS_LOG_LEVEL", "LOUD", "OASIS_LOG_LEVEL must be one of"),
        ("OASIS_HSTS_SECONDS", "-1", "OASIS_HSTS_SECONDS must be between"),
        ("OASIS_EXCHANGE", "kraken", "OASIS_EXCHANGE must be one of sim, binance, binanceus"),
        (
            "OASIS_BINANCE_WS_URL",
            "https://stream.example",
            "OASIS_BINANCE_WS_URL must use one of the schemes ws, wss",
        ),
        ("OASIS_SIM_REST_URL", "ws://127.0.0.1:9100", "OASIS_SIM_REST_URL must use one of the schemes http"),
        ("OASIS_SHUTDOWN_DELAY_S", "soon", "OASIS_SHUTDOWN_DELAY_S must be a number of seconds such as 0"),
        ("OASIS_SHUTDOWN_GRACE_S", "-1", "OASIS_SHUTDOWN_GRACE_S must be between 0 and 600 seconds"),
        ("OASIS_SHUTDOWN_GRACE_S", "601", "OASIS_SHUTDOWN_GRACE_S must be between 0 and 600 seconds"),
        ("OASIS_INGEST_PROCESSES", "0", "OASIS_INGEST_PROCESSES must be between 1 and 64"),
        ("OASIS_INGEST_PROCESSES", "two", "OASIS_INGEST_PROCESSES must be a whole number"),
        (
            "OASIS_INGEST_METRICS_URL",
            "ingest:9101",
            "OASIS_INGEST_METRICS_URL must use one of the schemes http",
        ),
        ("OASIS_TRADE_METRICS_URL", "http://", "OASIS_TRADE_METRICS_URL has no host"),
        (
            "OASIS_INGEST_METRICS_URL",
            "http://ingest-0:9101/metrics,ingest-1:9101",
            "OASIS_INGEST_METRICS_URL must use one of the schemes http",
        ),
        (
            "OASIS_TRADE_METRICS_URL",
            "http://a:9102/metrics,http://b:9102/metrics",
            "OASIS_TRADE_METRICS_URL takes one URL (there is one trade process), got 2",
        ),
    ],
)
def test_bad_values_are_named(name, value, starts):
    assert refusal(**{name: value}).startswith(starts)


def test_bind_all_interfaces_only_when_asked():
    assert read().bind == "127.0.0.1"
    assert read(OASIS_BIND="0.0.0.0").bind == "0.0.0.0"


def test_lists_are_trimmed():
    env = read(
        ALLOWED_HOSTS=" a.example , b.example,, ",
        CORS_ALLOWED_ORIGINS="https://desk.example.com/, http://127.0.0.1:3000",
    )
    assert env.allowed_hosts == ["a.example", "b.example"]
    assert env.cors_allowed_origins == ["https://desk.example.com", "http://127.0.0.1:3000"]


def test_exchange_endpoints_are_configuration():
    env = read(
        OASIS_EXCHANGE="binance",
        OASIS_BINANCE_REST_URL="https://testnet.binance.vision/",
        OASIS_BINANCE_WS_URL="wss://stream.testnet.binance.vision",
    )
    assert env.exchange == "binance"
    assert env.exchange_urls == {
        "binance": {"rest": "https://testnet.binance.vision", "ws": "wss://stream.testnet.binance.vision"}
    }
    assert read().exchange == "sim"
    assert read().exchange_urls == {}


def test_ingest_processes_default_to_one():
    assert read().ingest_processes == 1
    assert read(OASIS_INGEST_PROCESSES="2").ingest_processes == 2


def test_the_ingest_metrics_url_lists_one_url_per_shard():
    assert read().ingest_metrics_urls == ("http://127.0.0.1:9101/metrics",)
    assert list(read().process_metrics_urls) == ["ingest", "trade"]
    env = read(OASIS_INGEST_METRICS_URL="http://ingest-0:9101/metrics, http://ingest-1:9101/metrics")
    assert env.ingest_metrics_urls == ("http://ingest-0:9101/metrics", "http://ingest-1:9101/metrics")
