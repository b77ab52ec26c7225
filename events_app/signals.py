"""Announce each stored event to its execution's group, after commit.

The receiver only schedules: ``transaction.on_commit`` guarantees nothing is
announced that could still roll back. The publish itself is best effort — a
channel-layer failure is logged and counted, never raised into the write,
because subscribers re-read the log from their cursor anyway.
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
from .metrics import EVENTS_PUBLISHED, PUBLISH_FAILURES
from .models import HumanInputEvent

logger = logging.getLogger(__name__)


async def _group_send(groups: list[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    sends = asyncio.gather(*(layer.group_send(group, message) for group in groups))
    await asyncio.wait_for(sends, timeout=humaninput_settings.PUBLISH_TIMEOUT_SECONDS)


def publish_event(payload: dict[str, Any]) -> None:
    """Ring the doorbells of ``payload``'s execution and of the inbox; never raises."""
    groups = [group_name(payload["execution_id"]), INBOX_GROUP]
    try:
        async_to_sync(_group_send)(groups, doorbell_message(payload, published_at=time.time()))
    except Exception as error:
        PUBLISH_FAILURES.inc()
        logger.error(
            "publish failed; subscribers will read the event on catch-up: %r",
            error,
            extra={
                "execution_id": payload["execution_id"],
                "sequence": payload["sequence"],
                "event_id": payload["event_id"],
                "error": type(error).__name__,
            },
        )
    else:
        EVENTS_PUBLISHED.inc()


@receiver(post_save, sender=HumanInputEvent, dispatch_uid="humaninput_publish_event")
def schedule_publish(
    sender: type[HumanInputEvent], instance: HumanInputEvent, created: bool, using: str, **kwargs: Any
) -> None:
    """Called when an event row is saved: publish it once its transaction commits."""
    if created:
        payload = instance.payload
        transaction.on_commit(lambda: publish_event(payload), using=using)
