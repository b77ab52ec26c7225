"""The ``HUMANINPUT_*`` settings, read once with defaults and validation.

Every tunable of the app lives here, the way DRF keeps ``api_settings``:
``humaninput_settings.CATCHUP_SECONDS`` resolves ``settings.HUMANINPUT_CATCHUP_SECONDS``
against the default below, checks its type and range, and caches the result
until Django's ``setting_changed`` signal says otherwise (so
``override_settings`` in tests just works). Reading the environment is the
project's job (``humaninput_project/settings.py``); this module only sees
Django settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

PREFIX = "HUMANINPUT_"


@dataclass(frozen=True)
class Option:
    default: Any
    kind: type
    minimum: float | None = None
    maximum: float | None = None
    # None (or "" from the environment) is allowed and means "off".
    optional: bool = False


OPTIONS: dict[str, Option] = {
    # Full-access key; empty means "no key configured".
    "API_KEY": Option("", str),
    # A bearer token that may read /metrics and nothing else (for Prometheus).
    "METRICS_TOKEN": Option("", str),
    # With no API key and DEBUG off, start only if this is true.
    "ALLOW_ANONYMOUS": Option(False, bool),
    # How often every subscriber re-reads the log from its cursor, so a lost
    # doorbell delays an event by at most this long.
    "CATCHUP_SECONDS": Option(5.0, float, 0.05, 3600),
    # Embedded default only (SQLite file + in-memory layer, which cannot ring
    # across processes): how often each server process asks SQLite whether
    # another process (`manage.py humaninput_ask`, a second daphne) committed,
    # and if so rings its own subscribers (events_app.streaming.crossprocess). A check is
    # `PRAGMA data_version`, not a query; 0 turns it off, and such events then
    # wait for the catch-up.
    "CROSS_PROCESS_CHECK_SECONDS": Option(0.25, float, 0, 60),
    # Idle SSE streams get a heartbeat this often. Under 5 s (SPEC §4): the seed
    # document's SSE client reads with httpx's default 5 s timeout, and a
    # heartbeat that comes late by a busy loop's delay must still beat it.
    "SSE_HEARTBEAT_SECONDS": Option(2.5, float, 0.05, 3600),
    # The ``retry:`` line sent first on every SSE stream, in milliseconds.
    "SSE_RETRY_MILLISECONDS": Option(3000, int, 0, 3_600_000),
    # Long-poll ``?wait=`` upper bound, in seconds.
    "POLL_MAX_WAIT_SECONDS": Option(30.0, float, 0, 300),
    "POLL_DEFAULT_LIMIT": Option(100, int, 1, 100_000),
    "POLL_MAX_LIMIT": Option(1000, int, 1, 100_000),
    # Largest client WebSocket message the consumer will parse.
    "WS_MAX_MESSAGE_BYTES": Option(65536, int, 1, 64 * 1024 * 1024),
    # Output a connection may hold unsent before its sender waits for the
    # client to read; a client still that far behind after the timeout is
    # dropped (it resumes from its cursor). See events_app.server.backpressure.
    "MAX_CLIENT_BUFFER_BYTES": Option(1024 * 1024, int, 1024, 1024 * 1024 * 1024),
    "SLOW_CLIENT_TIMEOUT_SECONDS": Option(10.0, float, 0.01, 3600),
    # A group_send that takes longer than this is abandoned (and counted).
    "PUBLISH_TIMEOUT_SECONDS": Option(2.0, float, 0.01, 60),
    # Scoped tokens: lifetime when none is asked for, and the longest allowed.
    "TOKEN_DEFAULT_TTL_SECONDS": Option(3600, int, 1, 10 * 365 * 86400),
    "TOKEN_MAX_TTL_SECONDS": Option(7 * 86400, int, 1, 10 * 365 * 86400),
    # Largest prompt, context, response (UTF-8 bytes) and metadata (as JSON).
    "MAX_TEXT_BYTES": Option(65536, int, 1, 16 * 1024 * 1024),
    # Longest timeout_seconds a request may ask for.
    "MAX_TIMEOUT_SECONDS": Option(30 * 86400, float, 1, 10 * 365 * 86400),
    # How often each server process expires overdue requests; 0 turns the
    # in-process scheduler off (run `manage.py humaninput_expire` instead).
    "EXPIRY_INTERVAL_SECONDS": Option(1.0, float, 0, 3600),
    # `manage.py humaninput_prune` without --older-than deletes executions that
    # finished more than this many days ago; None (the default) keeps everything.
    "RETENTION_DAYS": Option(None, int, 1, 36500, optional=True),
    # DRF throttle rates ("600/min"; empty disables) and the cache they count in.
    "THROTTLE_WRITE_RATE": Option("600/min", str),
    "THROTTLE_TOKEN_RATE": Option("60/min", str),
    "THROTTLE_CACHE": Option("default", str),
}


class HumanInputSettings:
    """Attribute access to the validated ``HUMANINPUT_*`` settings."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name not in OPTIONS:
            raise AttributeError(f"Unknown humaninput setting: {name!r}")
        if name not in self._cache:
            self._cache[name] = self._read_setting(name, OPTIONS[name])
        return self._cache[name]

    @staticmethod
    def _read_setting(name: str, option: Option) -> Any:
        raw = getattr(settings, PREFIX + name, option.default)
        if option.optional and (raw is None or raw == ""):
            return None
        if option.kind is bool:
            return _as_bool(name, raw)
        if option.kind is str:
            if not isinstance(raw, str):
                raise ImproperlyConfigured(f"{PREFIX}{name} must be a str")
            return raw
        try:
            value = option.kind(raw)
        except (TypeError, ValueError):
            raise ImproperlyConfigured(f"{PREFIX}{name} must be a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ImproperlyConfigured(f"{PREFIX}{name} must be a finite number, got {raw!r}")
        if option.minimum is not None and value < option.minimum:
            raise ImproperlyConfigured(f"{PREFIX}{name} must be >= {option.minimum}")
        if option.maximum is not None and value > option.maximum:
            raise ImproperlyConfigured(f"{PREFIX}{name} must be <= {option.maximum}")
        return value

    def reload(self) -> None:
        self._cache.clear()


def _as_bool(name: str, raw: Any) -> bool:
    # Strings come from the environment ("1", "true", "off", ...).
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return raw.strip().lower() in TRUE_WORDS
    raise ImproperlyConfigured(f"{PREFIX}{name} must be a boolean, got {raw!r}")


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

humaninput_settings = HumanInputSettings()


@receiver(setting_changed)
def _reload_humaninput_settings(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith(PREFIX):
        humaninput_settings.reload()
