"""An ASGI handler for Django that keeps long-lived responses from pinning threads.

Django runs a request's sync work (sync middleware, session loads) on a
thread of that request's own, kept until its response has ended. For a normal
request that is milliseconds; an SSE stream or a long poll stays open for
minutes, so each would hold an idle thread (2,000 waiting long polls, 2,000
threads). On the event-stream and long-poll paths this handler leaves the
sync work to asgiref's one shared thread instead, where channels runs the
consumers' database work too (``log.async_reader``); nothing else of those
views blocks.
"""

from __future__ import annotations

from typing import Any

import django
from django.core.handlers.asgi import ASGIHandler

# Path segments of the long-lived endpoints, wherever the app's URLs are mounted.
LONG_LIVED_PATHS = ("/events/human-input/", "/poll/human-input/", "/inbox/stream")


def is_long_lived(path: str) -> bool:
    return any(segment in path for segment in LONG_LIVED_PATHS)


class HumanInputASGIHandler(ASGIHandler):
    """``django.core.asgi.get_asgi_application()``, but no thread per open stream."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_long_lived(scope.get("path", "")):
            # Without Django's per-request ThreadSensitiveContext, thread-sensitive
            # calls of this request go to asgiref's single shared thread.
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def get_asgi_application() -> HumanInputASGIHandler:
    """Like ``django.core.asgi.get_asgi_application``: set Django up, return the handler."""
    django.setup(set_prefix=False)
    return HumanInputASGIHandler()
