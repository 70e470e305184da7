"""Django settings for Oasis.

All configuration comes from the environment, read and validated in one place
(`oasis_site.environment`). A missing or malformed variable stops the process with one
line naming it; prod never falls back to SQLite-only, in-memory or eager modes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import django_stubs_ext

from oasis_site.environment import ConfigurationError, read_environment
from oasis_site.structured_logging import logging_config

# Lets admin.ModelAdmin[Model] and other generic Django classes be subscripted at run time.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    ENV = read_environment(os.environ, base_dir=BASE_DIR)
except ConfigurationError as exc:
    # One line naming the variable, no traceback: this is an operator's mistake, not a bug.
    sys.exit(f"oasis: refusing to start: {exc}")

OASIS_ENV = ENV.name
OASIS_BIND = ENV.bind
OASIS_PORT = ENV.port
OASIS_PROXY_HEADERS = ENV.proxy_headers
MONGO_URL = ENV.mongo_url
# Market data: the exchange `make run` ingests from, and endpoint overrides per exchange
# (marketdata/exchanges.py holds the defaults).
OASIS_EXCHANGE = ENV.exchange
OASIS_EXCHANGE_URLS = ENV.exchange_urls
# Which timeframes are resampled from which (marketdata.resampling); OASIS_DERIVATIONS. None:
# the desk's map (1m→3m, 1m→10m, 5m→10m, 1h→4h) plus 1m→5m/15m/1h where the exchange lacks them.
OASIS_DERIVATIONS = ENV.derivations
# Execution (trading): see oasis_site/environment.py for each variable.
OASIS_QUOTE_ASSET = ENV.quote_asset
OASIS_DRYRUN_BALANCE = ENV.dry_run_balance
OASIS_FEE_BPS = ENV.fee_bps
OASIS_SLIPPAGE_BPS = ENV.slippage_bps
REDIS_URL = ENV.redis_url
OASIS_BROADCAST_RELAY_URL = ENV.broadcast_relay_url
# Live dashboard WebSockets (oasis_site/consumers.py): per-connection quotas. Over one, the
# socket is closed with code 4008/4009/1009 and a reason (never silently ignored).
OASIS_WS_MAX_SUBSCRIPTIONS = 64
OASIS_WS_MAX_MESSAGES_PER_S = 20
OASIS_WS_MAX_MESSAGE_BYTES = 4096
# Alert notifications (audit/notifications.py).
OASIS_SLACK_WEBHOOK_URL = ENV.slack_webhook_url
OASIS_ALERT_EMAIL_TO = ENV.alert_email_to
DEFAULT_FROM_EMAIL = ENV.alert_email_from
# Service levels (the brief's): over them, a critical alert (and an incident).
OASIS_SLO_INGEST_P95_MS = 300.0
OASIS_SLO_POST_CLOSE_P95_MS = 500.0
OASIS_SLO_WINDOW_S = ENV.slo_window_s
OASIS_SLO_CHECK_S = ENV.slo_check_s
# Drawdown of an account from its equity peak at which a warning alert fires (percent).
OASIS_ALERT_DRAWDOWN_PCT = 5
# Each process sends its alerts' notifications from a background thread; tests send them
# explicitly (audit.notifications.notifications_dispatch) or switch this on.
OASIS_ALERT_DISPATCH_THREAD = ENV.name != "test"
if ENV.smtp_host:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = ENV.smtp_host
    EMAIL_PORT = ENV.smtp_port
    EMAIL_TIMEOUT = 5
# The operations page reads buffer lag and reconnects from the ingest and trade processes'
# own /metrics (by default their ports as `make run` starts them; compose and k8s set them).
OASIS_PROCESS_METRICS_URLS = ENV.process_metrics_urls  # each ingest shard by its own name
# `manage.py serve`'s graceful stop (oasis_site/shutdown.py).
OASIS_SHUTDOWN_DELAY_S = ENV.shutdown_delay_s
OASIS_SHUTDOWN_GRACE_S = ENV.shutdown_grace_s
# Celery workers' /metrics: pool process i on this port + i (oasis_site/celery.py); 0: off.
OASIS_WORKER_METRICS_PORT = ENV.worker_metrics_port
OASIS_INGEST_PROCESSES = ENV.ingest_processes

SECRET_KEY = ENV.secret_key
DEBUG = ENV.debug
ALLOWED_HOSTS = ENV.allowed_hosts

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "corsheaders",
    "django_prometheus",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "waffle",
    "oasis_site",
    "audit",
    "marketdata",
    "rules",
    "trading",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "waffle.middleware.WaffleMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "oasis_site.urls"
ASGI_APPLICATION = "oasis_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": ENV.database}
if ENV.database["ENGINE"].endswith("sqlite3"):
    Path(ENV.database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if ENV.redis_url:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": ENV.redis_url,
            "KEY_PREFIX": f"oasis-{ENV.name}",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [ENV.redis_url], "prefix": f"oasis-{ENV.name}"},
        }
    }
else:
    # Embedded default, dev/test only (environment.py refuses prod without REDIS_URL).
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: one app (oasis_site/celery.py) configured from these CELERY_* settings.
CELERY_BROKER_URL = ENV.redis_url or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = ENV.redis_url is None
CELERY_TASK_EAGER_PROPAGATES = True
# "Nothing lost": a task is acknowledged after it ran, and requeued if its worker dies.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Market-data tasks of one stream go to one of these shard queues (marketdata.tasks.route_by_stream);
# a worker consumes them all: -Q default,marketdata.0,…,marketdata.<N-1>.
OASIS_MARKETDATA_SHARDS = 4
CELERY_TASK_ROUTES = ("marketdata.tasks.route_by_stream",)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # Missing candles of every ingested stream: recorded as gaps, then backfilled or imputed.
    "marketdata-gaps-scan": {"task": "marketdata.gaps_scan", "schedule": 60.0},
    # Backtest vs dry-run over the last hour, decision by decision (trading.drift).
    "trading-drift-check": {"task": "trading.drift_check", "schedule": 3600.0},
    # Alert notifications due (retries, and any a process left unsent): audit.notifications.
    "audit-notifications-dispatch": {"task": "audit.notifications_dispatch", "schedule": 15.0},
    # Alerts raised by events resolve after an hour without a recurrence.
    "audit-alerts-expire": {"task": "audit.alerts_expire", "schedule": 300.0},
    # The MongoDB mirror's outbox, shipped in order (a no-op without MONGO_URL).
    "audit-mirror-ship": {"task": "audit.mirror_ship", "schedule": 10.0},
    # The whole audit hash chain, re-verified; a break is a critical alert.
    "audit-chain-verify": {"task": "audit.chain_verify", "schedule": 6 * 3600.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if ENV.name == "test":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "oasis_site.static_finders.PlotlyFinder",  # static/plotly/plotly.min.js, from the package
]
STATIC_ROOT = ENV.var_dir / "staticfiles"
# WhiteNoise serves static files from the app process with DEBUG off too. In prod they are
# collected at image build (`collectstatic`) with hashed names cached for a year; in dev and
# test they are found in place, so `make run` needs no collect step.
if ENV.is_prod:
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
else:
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = True

LOGIN_URL = "admin:login"

# Security headers, everywhere.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = ENV.csrf_trusted_origins
CORS_ALLOWED_ORIGINS = ENV.cors_allowed_origins
if ENV.proxy_headers:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = ENV.ssl_redirect
# Probes and the Prometheus scraper talk plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = ENV.hsts_seconds
SECURE_HSTS_INCLUDE_SUBDOMAINS = ENV.hsts_seconds > 0
if ENV.is_prod:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
# HSTS preload is a commitment the operator makes for the whole domain, not a default we can
# choose for them: docs/decisions/0003-settings-from-environment.md.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

LOGGING = logging_config(log_format=ENV.log_format, level=ENV.log_level)

# REST API (/api/v1/, oasis_site/api/ and each app's api/): token or admin-session auth, required
# only while the api_auth_required flag is on (oasis_site.api.access); throttled per client IP and
# per route in the cache above (Redis when REDIS_URL is set); 400s name the parameter at fault.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["oasis_site.api.access.ApiAccess"],
    "DEFAULT_THROTTLE_CLASSES": ["oasis_site.api.throttles.RouteIPThrottle"],
    "DEFAULT_THROTTLE_RATES": {"read": ENV.api_read_rate, "write": ENV.api_write_rate},
    # The client address is REMOTE_ADDR: daphne's --proxy-headers sets it behind a proxy; a
    # client's own X-Forwarded-For is never believed.
    "NUM_PROXIES": 0,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "oasis_site.api.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Oasis API",
    "DESCRIPTION": (
        "Market data, rules, signals, orders, positions, the kill switch, backtests and the audit log. "
        "Prices and quantities are decimal strings, exactly as stored; times are ISO 8601 UTC."
    ),
    "VERSION": "1",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["oasis_site.api.access.ApiAccess"],
    "COMPONENT_SPLIT_REQUEST": True,
}

WAFFLE_FLAG_DEFAULT = False
WAFFLE_SWITCH_DEFAULT = False
WAFFLE_CREATE_MISSING_FLAGS = False

PROMETHEUS_EXPORT_MIGRATIONS = False
