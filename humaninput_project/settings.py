"""Settings of the humaninput demo project, read from the environment.

With nothing set this is the embedded default: SQLite in the project folder
and the in-memory channel layer, one daphne process. ``DATABASE_URL`` and
``REDIS_URL`` switch to PostgreSQL (or another SQLite file) and channels-redis
for several processes. Every ``HUMANINPUT_*`` environment variable becomes the
Django setting of the same name; ``events_app.conf`` validates them.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"", "0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for local development).")
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# Browser writes with a session (the inbox, the admin) from another origin
# than the Host, e.g. "https://humaninput.example.com" behind a proxy.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it
# from clients): request.is_secure() and absolute URLs then say https.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# DJANGO_HTTPS=1: the site is served over HTTPS only (production; `manage.py
# check --deploy` is then clean). Plain-HTTP requests are redirected, except the
# probes a load balancer or Prometheus sends to a process directly; cookies are
# HTTPS-only; browsers are told to use HTTPS for DJANGO_SECURE_HSTS_SECONDS
# (an hour by default: raise it once HTTPS is known to work everywhere).
if env_bool("DJANGO_HTTPS", False):
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "3600"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Joining browsers' preload list is a commitment for every subdomain that
        # takes months to undo: the operator's decision, not a default of ours.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "events_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "humaninput_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

ASGI_APPLICATION = "humaninput_project.asgi.application"

# --- Database -------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        # Async consumers and views open connections from worker threads;
        # persistent connections there are never closed, so close after use.
        conn_max_age=0,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's psycopg pool (CONN_MAX_AGE stays 0): "closing" a connection hands
    # it back to the process's pool, so the many short reads of async code
    # (every subscriber's catch-up, every long poll) don't each pay a new
    # PostgreSQL connection. DATABASE_POOL_MAX_SIZE bounds the connections
    # each process holds; 0 turns the pool off (e.g. behind PgBouncer).
    _pool_max = int(os.environ.get("DATABASE_POOL_MAX_SIZE", "10"))
    if _pool_max > 0:
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": _pool_max,
            "timeout": 10,
        }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers (every subscriber's catch-up) run beside the writer;
    # IMMEDIATE transactions take the write lock up front, so two writers
    # queue on the busy timeout instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # The test database is a file too, so threads and a daphne subprocess
    # started by the end-to-end tests see the same data.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("HUMANINPUT_TEST_SQLITE_PATH") or str(BASE_DIR / "test-db.sqlite3"),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
# Which channels_redis layer carries the doorbells: "pubsub" (the default,
# RedisPubSubChannelLayer: one PUBLISH per group_send, received once per
# process) or "core" (RedisChannelLayer: a Lua script adds the message to every
# member's queue). docs/deployment.md has the measurements behind the default.
REDIS_CHANNEL_LAYER = os.environ.get("REDIS_CHANNEL_LAYER", "pubsub")
REDIS_CHANNEL_LAYER_BACKENDS = {
    "core": "channels_redis.core.RedisChannelLayer",
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
if REDIS_CHANNEL_LAYER not in REDIS_CHANNEL_LAYER_BACKENDS:
    raise ImproperlyConfigured(
        f"REDIS_CHANNEL_LAYER must be one of {sorted(REDIS_CHANNEL_LAYER_BACKENDS)}, "
        f"got {REDIS_CHANNEL_LAYER!r}"
    )
if REDIS_URL:
    # Several comma-separated URLs shard channels and groups over several
    # Redis servers. redis-py 8 reads with a 5 s socket timeout by default,
    # which aborts channels_redis' blocking 5 s BZPOPMIN: give reads more
    # time than that (and still fail on a dead server).
    _redis_hosts = [
        {"address": url, "socket_timeout": 15, "socket_connect_timeout": 3}
        for url in env_list("REDIS_URL", "")
    ]
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": REDIS_CHANNEL_LAYER_BACKENDS[REDIS_CHANNEL_LAYER],
            "CONFIG": (
                # All of a process's channels share one Redis queue, so capacity
                # is per process, not per subscriber.
                {"hosts": _redis_hosts, "capacity": 10_000, "expiry": 60}
                if REDIS_CHANNEL_LAYER == "core"
                else {"hosts": _redis_hosts}
            ),
        }
    }
else:
    # channels' in-memory layer, with a linear group_send (see events_app.server.channel_layer).
    CHANNEL_LAYERS = {"default": {"BACKEND": "events_app.server.channel_layer.LinearInMemoryChannelLayer"}}

# The cache holds the API's rate-limit counters: shared through Redis across
# processes when there is one, per process otherwise.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env_list("REDIS_URL", "")[0],
            "KEY_PREFIX": "humaninput",
            "OPTIONS": {"socket_timeout": 3, "socket_connect_timeout": 3},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- humaninput -----------------------------------------------------------

# Every HUMANINPUT_* variable of the environment becomes a setting;
# events_app.conf turns the strings into numbers and booleans and checks them.
for _name, _value in os.environ.items():
    if _name.startswith("HUMANINPUT_"):
        globals()[_name] = _value

HUMANINPUT_API_KEY = os.environ.get("HUMANINPUT_API_KEY", "")
HUMANINPUT_ALLOW_ANONYMOUS = env_bool("HUMANINPUT_ALLOW_ANONYMOUS", False)
if not DEBUG and not HUMANINPUT_API_KEY and not HUMANINPUT_ALLOW_ANONYMOUS:
    raise ImproperlyConfigured(
        "Refusing to start: HUMANINPUT_API_KEY is not set and DJANGO_DEBUG is off. "
        "Set an API key, or HUMANINPUT_ALLOW_ANONYMOUS=1 to allow open access."
    )

# --- Django REST framework ------------------------------------------------

# Nothing: humaninput's views carry their own authentication, parsers,
# renderers, exception handler and OpenAPI settings (events_app.api.base and
# events_app.api.docs), so a host project's REST_FRAMEWORK never changes them.

# --- The rest -------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# HUMANINPUT_LOG_FORMAT=json writes one JSON object per line (with the
# execution_id, request_id, sequence, ... a record carries) for log shippers;
# plain writes `time level logger message` and then the same context as key=value.
LOG_FORMAT = os.environ.get("HUMANINPUT_LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"HUMANINPUT_LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "class": "events_app.logformat.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
        "null": {"class": "logging.NullHandler"},
    },
    "loggers": {
        # A client controls how many 4xx it causes (10,000 bad tokens, a flood of
        # bad Host headers): those are in daphne's access log already, one line
        # each; the error log keeps 5xx. Django's docs silence DisallowedHost this way.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.security.DisallowedHost": {"handlers": ["null"], "propagate": False},
        "events_app": {
            "handlers": ["console"],
            "level": os.environ.get("HUMANINPUT_LOG_LEVEL", "INFO"),
            "propagate": False,
        },
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
}
