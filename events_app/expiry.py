"""Expiring overdue requests without anyone having to read them.

Each server process runs ``expire_overdue_forever`` in the background: every
``HUMANINPUT_EXPIRY_INTERVAL_SECONDS`` it asks ``services.requests_expire_due``
to expire what is past ``expires_at``. Several processes doing this at once
is safe (each expiry locks the row and only a pending request changes), so
no leader election is needed. Daphne has no startup hook (it does not speak
ASGI lifespan), so the task starts with the first request or WebSocket a
process serves on its event loop (``ensure_expiry_scheduler``, connected to
Django's ``request_started`` by the app itself: a host project adds nothing).
A deployment that prefers a separate worker sets the interval to 0 and runs
``manage.py humaninput_expire``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from channels.db import database_sync_to_async

from . import services
from .conf import humaninput_settings

logger = logging.getLogger(__name__)


async def expire_overdue_once() -> int:
    expired = await database_sync_to_async(services.requests_expire_due)()
    return len(expired)


async def expire_overdue_forever() -> None:
    """Called once per process; runs until the process ends."""
    while True:
        interval = humaninput_settings.EXPIRY_INTERVAL_SECONDS
        if interval <= 0:
            return
        try:
            count = await expire_overdue_once()
        except Exception:
            logger.exception("expiring overdue requests failed; retrying")
        else:
            if count:
                logger.info("expired %d overdue request(s)", count)
        await asyncio.sleep(interval)


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def ensure_expiry_scheduler() -> None:
    """Start ``expire_overdue_forever`` on the running loop unless it runs there already.

    Called on every HTTP request (``start_on_request``) and WebSocket
    connection a process serves: cheap after the first.
    """
    if humaninput_settings.EXPIRY_INTERVAL_SECONDS <= 0:
        return
    loop = asyncio.get_running_loop()
    task = _schedulers.get(loop)
    if task is None or task.done():
        _schedulers[loop] = loop.create_task(expire_overdue_forever(), name="humaninput-expiry")


async def start_on_request(sender: Any, scope: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Called on Django's ``request_started``: under ASGI (a ``scope``), on the server's loop."""
    if scope is not None:
        ensure_expiry_scheduler()
