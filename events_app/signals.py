"""Announce each stored event to its execution's group, after commit.

The receiver only schedules: ``transaction.on_commit`` guarantees nothing is
announced that could still roll back. The publish itself is best effort — a
channel-layer failure is logged and counted, never raised into the write,
because subscribers re-read the log from their cursor anyway.

A write that runs in a server's request thread never waits for its publish:
the send is handed to the server's event loop and the thread returns. Had it
waited (``async_to_sync``), a SIGTERM that stops the loop would leave it
waiting forever, and the interpreter's exit would join it forever. Only code
with no serving loop at all (management commands, the shell, sync tests)
publishes in place, bounded by ``HUMANINPUT_PUBLISH_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from .conf import humaninput_settings
from .events import INBOX_GROUP, doorbell_message, group_name
from .loops import serving_loop
from .metrics import EVENTS_PUBLISHED, PUBLISH_FAILURES
from .models import HumanInputEvent

logger = logging.getLogger(__name__)

Payload = dict[str, Any]

# Publishes running on a serving loop; asyncio holds only weak references to tasks.
_in_flight: set[asyncio.Task[None]] = set()


async def _group_send(groups: list[str], message: dict[str, Any], seconds: float) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    sends = asyncio.gather(*(layer.group_send(group, message) for group in groups))
    await asyncio.wait_for(sends, timeout=seconds)


def _log_context(payload: Payload) -> dict[str, Any]:
    return {
        "execution_id": payload["execution_id"],
        "sequence": payload["sequence"],
        "event_id": payload["event_id"],
    }


def _record_failure(payload: Payload, error: BaseException) -> None:
    PUBLISH_FAILURES.inc()
    logger.error(
        "publish failed; subscribers will read the event on catch-up: %r",
        error,
        extra={**_log_context(payload), "error": type(error).__name__},
    )


def _record_drop(payload: Payload) -> None:
    PUBLISH_FAILURES.inc()
    logger.warning(
        "publish dropped, the event loop is shutting down; subscribers will read the event on catch-up",
        extra={**_log_context(payload), "error": "LoopStopped"},
    )


def _record_outcome(payload: Payload, task: asyncio.Task[None]) -> None:
    """Called on the loop when a scheduled publish has ended: count it, log a failure."""
    _in_flight.discard(task)
    if task.cancelled():  # the loop is shutting down and cancelled its tasks
        _record_drop(payload)
    elif (error := task.exception()) is not None:
        _record_failure(payload, error)
    else:
        EVENTS_PUBLISHED.inc()


def _start_publish(groups: list[str], message: dict[str, Any], timeout: float, payload: Payload) -> None:
    """Called on the serving loop: run the send as a task of its own, watched by ``_record_outcome``."""
    task = asyncio.create_task(_group_send(groups, message, timeout))
    _in_flight.add(task)
    task.add_done_callback(lambda done: _record_outcome(payload, done))


async def wait_for_publishes() -> None:
    """Return once the publishes scheduled on the running loop so far have ended (and been counted).

    For whoever is about to close a loop that writes have handed sends to
    (a test, a graceful shutdown): otherwise those sends are cancelled.
    """
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(task for task in _in_flight if task.get_loop() is loop), return_exceptions=True)


def publish_event(payload: Payload) -> None:
    """Ring the doorbells of ``payload``'s execution and of the inbox; never raises.

    It never waits on a serving loop: there the send is scheduled and this
    returns at once; the send's outcome is counted (and a failure logged)
    when it ends, at most ``PUBLISH_TIMEOUT_SECONDS`` later. A loop that has
    stopped (a server shutting down) will run nothing more, so the publish is
    dropped. Without a loop the send runs here, in a loop of its own, within
    the same timeout.
    """
    groups = [group_name(payload["execution_id"]), INBOX_GROUP]
    message = doorbell_message(payload, published_at=time.time())
    timeout = humaninput_settings.PUBLISH_TIMEOUT_SECONDS
    loop = serving_loop()
    if loop is None:
        try:
            async_to_sync(_group_send, force_new_loop=True)(groups, message, timeout)
        except Exception as error:
            _record_failure(payload, error)
        else:
            EVENTS_PUBLISHED.inc()
        return
    if not loop.is_running():
        _record_drop(payload)
        return
    try:
        loop.call_soon_threadsafe(_start_publish, groups, message, timeout, payload)
    except RuntimeError:  # closed since we looked
        _record_drop(payload)


@receiver(post_save, sender=HumanInputEvent, dispatch_uid="humaninput_publish_event")
def schedule_publish(
    sender: type[HumanInputEvent], instance: HumanInputEvent, created: bool, using: str, **kwargs: Any
) -> None:
    """Called when an event row is saved: publish it once its transaction commits."""
    if created:
        payload = instance.payload
        transaction.on_commit(lambda: publish_event(payload), using=using)
