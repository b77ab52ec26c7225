"""Expiring overdue requests without anyone having to read them.

Each server process runs ``expire_overdue_forever`` in the background: every
``HUMANINPUT_EXPIRY_INTERVAL_SECONDS`` it asks ``services.requests_expire_due``
to expire what is past ``expires_at``. Several processes doing this at once
is safe (each expiry locks the row and only a pending request changes), so
no leader election is needed. ``ExpirySchedulerMiddleware`` starts the task
on the first connection a process serves, because daphne has no startup
hook (it does not speak ASGI lifespan); a deployment that prefers a separate
worker sets the interval to 0 and runs ``manage.py humaninput_expire``.
"""

from __future__ import annotations

import asyncio
import logging
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


class ExpirySchedulerMiddleware:
    """ASGI middleware that starts the expiry task once per process, on first use."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if humaninput_settings.EXPIRY_INTERVAL_SECONDS > 0 and not self._running():
            self.task = asyncio.create_task(expire_overdue_forever())
        return await self.inner(scope, receive, send)

    def _running(self) -> bool:
        # A task of a loop that has since closed (tests run one loop each) no longer counts.
        return (
            self.task is not None
            and not self.task.done()
            and self.task.get_loop() is asyncio.get_running_loop()
        )
