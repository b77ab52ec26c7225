"""System checks (``manage.py check``): what a host project must have for the app to work.

Registered by importing this module from ``EventsAppConfig.ready()``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

# Apps whose templates, static files or management commands we use.
REQUIRED_APPS = (
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
)


@register()
def check_required_apps(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Called by ``manage.py check``: every app of ``REQUIRED_APPS`` is installed."""
    missing = [app for app in REQUIRED_APPS if app not in settings.INSTALLED_APPS]
    if not missing:
        return []
    return [
        Error(
            f"humaninput needs these apps in INSTALLED_APPS: {', '.join(missing)}.",
            hint="Add them beside 'events_app' (see docs/embedding.md).",
            id="humaninput.E001",
        )
    ]


@register()
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Called by ``manage.py check``: without a channel layer nothing rings the doorbell."""
    if getattr(settings, "CHANNEL_LAYERS", {}).get("default"):
        return []
    return [
        Warning(
            "CHANNEL_LAYERS has no 'default' layer: subscribers see new events only at their "
            "periodic catch-up (HUMANINPUT_CATCHUP_SECONDS), and /health reports the layer as failing.",
            hint="Use channels.layers.InMemoryChannelLayer for one process, or channels_redis for several.",
            id="humaninput.W001",
        )
    ]
