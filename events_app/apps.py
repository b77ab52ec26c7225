"""The app's configuration: everything the app needs is set up here, not by the host project."""

from __future__ import annotations

from django.apps import AppConfig
from django.core.signals import request_started


class EventsAppConfig(AppConfig):
    name = "events_app"
    verbose_name = "Human input"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Called once Django's apps are loaded: connect the publish receiver, register the
        system checks, start expiry with the first request, register the metrics collectors,
        harden the server."""
        from . import checks, expiry, metrics, server, signals  # noqa: F401  (need the app registry)

        request_started.connect(expiry.start_on_request, dispatch_uid="humaninput_expiry_scheduler")
        metrics.register_collectors()
        server.install()
