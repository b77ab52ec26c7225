"""Announce each stored event to its execution's group, after commit.

The receiver only schedules: ``transaction.on_commit`` guarantees nothing is
announced that could still roll back. The publish itself is best effort — a
channel-layer failure is logged and counted, never raised into the write,
because subscribers re-read the log from their cursor anyway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from .conf import humaninput_settings
from .events import INBOX_GROUP, doorbell_message, group_name
from .models import HumanInputEvent

logger = logging.getLogger(__name__)

# Process-wide publish counters ("published", "failed"); read by health/metrics.
publish_stats: Counter[str] = Counter()
_stats_lock = threading.Lock()


def _count(outcome: str) -> None:
    with _stats_lock:
        publish_stats[outcome] += 1


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
        async_to_sync(_group_send)(groups, doorbell_message(payload))
    except Exception:
        _count("failed")
        logger.exception(
            "publish failed; subscribers will read the event on catch-up",
            extra={"execution_id": payload["execution_id"], "sequence": payload["sequence"]},
        )
    else:
        _count("published")


@receiver(post_save, sender=HumanInputEvent, dispatch_uid="humaninput_publish_event")
def schedule_publish(
    sender: type[HumanInputEvent], instance: HumanInputEvent, created: bool, using: str, **kwargs: Any
) -> None:
    """Called when an event row is saved: publish it once its transaction commits."""
    if created:
        payload = instance.payload
        transaction.on_commit(lambda: publish_event(payload), using=using)
