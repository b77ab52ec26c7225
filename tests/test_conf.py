"""``humaninput_settings`` (defaults, coercion, validation) and the project's environment handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from events_app.conf import OPTIONS, humaninput_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("CATCHUP_SECONDS", 5.0),
        ("SSE_HEARTBEAT_SECONDS", 2.5),
        ("SSE_RETRY_MILLISECONDS", 3000),
        ("POLL_MAX_WAIT_SECONDS", 30.0),
        ("POLL_DEFAULT_LIMIT", 100),
        ("POLL_MAX_LIMIT", 1000),
        ("WS_MAX_MESSAGE_BYTES", 65536),
        ("ALLOW_ANONYMOUS", False),
    ],
)
def test_unset_setting_has_its_documented_default(settings, name, default):
    if hasattr(settings, f"HUMANINPUT_{name}"):
        delattr(settings, f"HUMANINPUT_{name}")
    assert getattr(humaninput_settings, name) == default


def test_every_option_resolves_with_the_test_settings():
    for name in OPTIONS:
        getattr(humaninput_settings, name)


def test_unknown_setting_is_an_attribute_error():
    with pytest.raises(AttributeError):
        humaninput_settings.NO_SUCH_SETTING  # noqa: B018


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("CATCHUP_SECONDS", "2.5", 2.5),
        ("CATCHUP_SECONDS", "1", 1.0),
        ("POLL_DEFAULT_LIMIT", "50", 50),
        ("SSE_RETRY_MILLISECONDS", "0", 0),
        ("ALLOW_ANONYMOUS", "1", True),
        ("ALLOW_ANONYMOUS", "true", True),
        ("ALLOW_ANONYMOUS", " Yes ", True),
        ("ALLOW_ANONYMOUS", "on", True),
        ("ALLOW_ANONYMOUS", "off", False),
        ("ALLOW_ANONYMOUS", "0", False),
        ("ALLOW_ANONYMOUS", "", False),
        ("ALLOW_ANONYMOUS", "FALSE", False),
    ],
)
def test_environment_strings_are_coerced(name, raw, expected):
    with override_settings(**{f"HUMANINPUT_{name}": raw}):
        value = getattr(humaninput_settings, name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("CATCHUP_SECONDS", "0"),
        ("CATCHUP_SECONDS", "-1"),
        ("CATCHUP_SECONDS", "3601"),
        ("CATCHUP_SECONDS", "soon"),
        ("PUBLISH_TIMEOUT_SECONDS", "inf"),
        ("POLL_MAX_LIMIT", "0"),
        ("POLL_DEFAULT_LIMIT", "2.5"),
        ("SSE_RETRY_MILLISECONDS", "-1"),
        ("WS_MAX_MESSAGE_BYTES", "0"),
        ("ALLOW_ANONYMOUS", "maybe"),
        ("ALLOW_ANONYMOUS", 2),
        ("API_KEY", 12345),
        ("POLL_MAX_WAIT_SECONDS", None),
    ],
)
def test_invalid_or_out_of_range_value_is_improperly_configured(name, raw):
    with override_settings(**{f"HUMANINPUT_{name}": raw}), pytest.raises(ImproperlyConfigured):
        getattr(humaninput_settings, name)


@pytest.mark.parametrize("name", ["CATCHUP_SECONDS", "SSE_HEARTBEAT_SECONDS", "PUBLISH_TIMEOUT_SECONDS"])
def test_nan_is_out_of_range(name):
    with override_settings(**{f"HUMANINPUT_{name}": "nan"}), pytest.raises(ImproperlyConfigured):
        getattr(humaninput_settings, name)


def test_override_settings_is_seen_and_undone():
    before = humaninput_settings.CATCHUP_SECONDS
    with override_settings(HUMANINPUT_CATCHUP_SECONDS=0.25):
        assert humaninput_settings.CATCHUP_SECONDS == 0.25
    assert humaninput_settings.CATCHUP_SECONDS == before


# --- the project's settings, read from the environment --------------------------

START = "import django; django.setup()"
SHOW_BACKENDS = (
    "import django; django.setup(); from django.conf import settings; import json; "
    "print(json.dumps({'db': settings.DATABASES['default']['ENGINE'], "
    "'layer': settings.CHANNEL_LAYERS['default']['BACKEND']}))"
)


def run_project(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with the project's own settings and a clean environment plus ``env``."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("HUMANINPUT_", "DJANGO_")) and name not in {"DATABASE_URL", "REDIS_URL"}
    }
    clean["DJANGO_SETTINGS_MODULE"] = "humaninput_project.settings"
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_project_refuses_to_start_without_key_debug_or_allowance():
    result = run_project(START, DJANGO_SECRET_KEY="s3cret")
    assert result.returncode != 0
    assert "Refusing to start" in result.stderr


def test_project_starts_without_key_when_anonymous_is_allowed():
    result = run_project(START, DJANGO_SECRET_KEY="s3cret", HUMANINPUT_ALLOW_ANONYMOUS="1")
    assert result.returncode == 0, result.stderr


def test_project_starts_without_key_in_debug():
    result = run_project(START, DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr


def test_project_starts_with_a_key():
    result = run_project(START, DJANGO_SECRET_KEY="s3cret", HUMANINPUT_API_KEY="k")
    assert result.returncode == 0, result.stderr


def test_project_refuses_to_start_without_secret_key_outside_debug():
    result = run_project(START, HUMANINPUT_API_KEY="k")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_project_defaults_to_sqlite_and_the_in_memory_layer():
    result = run_project(SHOW_BACKENDS, DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "db": "django.db.backends.sqlite3",
        "layer": "events_app.server.channel_layer.LinearInMemoryChannelLayer",
    }


def test_database_url_selects_postgresql():
    result = run_project(SHOW_BACKENDS, DJANGO_DEBUG="1", DATABASE_URL="postgres://u:p@db.example:5432/hi")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["db"] == "django.db.backends.postgresql"


def test_redis_url_selects_the_channels_redis_pubsub_layer():
    result = run_project(SHOW_BACKENDS, DJANGO_DEBUG="1", REDIS_URL="redis://cache.example:6379/0")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"


@pytest.mark.parametrize(
    ("choice", "backend"),
    [
        ("core", "channels_redis.core.RedisChannelLayer"),
        ("pubsub", "channels_redis.pubsub.RedisPubSubChannelLayer"),
    ],
)
def test_redis_channel_layer_selects_the_layer(choice, backend):
    env = {"DJANGO_DEBUG": "1", "REDIS_URL": "redis://cache.example:6379/0", "REDIS_CHANNEL_LAYER": choice}
    result = run_project(SHOW_BACKENDS, **env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layer"] == backend


def test_an_unknown_redis_channel_layer_refuses_to_start():
    env = {"DJANGO_DEBUG": "1", "REDIS_URL": "redis://cache.example:6379/0", "REDIS_CHANNEL_LAYER": "kafka"}
    result = run_project(SHOW_BACKENDS, **env)
    assert result.returncode != 0
    assert "REDIS_CHANNEL_LAYER must be one of" in result.stderr


def test_humaninput_environment_variables_become_settings():
    code = (
        "import django; django.setup(); "
        "from events_app.conf import humaninput_settings as s; print(s.CATCHUP_SECONDS)"
    )
    result = run_project(code, DJANGO_DEBUG="1", HUMANINPUT_CATCHUP_SECONDS="0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.5"
