"""The wire payload of each event type, and the channel-layer group of an execution.

A payload is built once, when the event is written, and stored verbatim in
``HumanInputEvent.payload``; every transport sends exactly that.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime
from typing import Any

from .models import EventType, HumanInputRequest

GROUP_PREFIX = "humaninput."
# Every event also rings this group: the operator inbox follows all executions.
INBOX_GROUP = "humaninput-inbox"
_HASHED_GROUP_PREFIX = "humaninput-h."
# channels accepts ^[A-Za-z0-9._-]{1,99}$ (channels.layers.BaseChannelLayer).
_GROUP_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


def group_name(execution_id: str) -> str:
    """The group every subscriber of ``execution_id`` joins.

    Short ids without ``:`` are used as they are (readable in Redis); anything
    else becomes a SHA-256 under a different prefix, so the two forms can
    never collide and every valid execution id yields a legal group name.
    """
    if _GROUP_SAFE.match(execution_id):
        return GROUP_PREFIX + execution_id
    return _HASHED_GROUP_PREFIX + hashlib.sha256(execution_id.encode()).hexdigest()


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with an explicit offset and microseconds, always the same width."""
    return moment.isoformat(timespec="microseconds")


def _identity(request: HumanInputRequest) -> dict[str, Any]:
    return {
        "execution_id": request.execution_id,
        "crew_id": request.crew_id,
        "task_id": request.task_id,
        "agent_id": request.agent_id,
    }


def build_payload(
    *,
    event_type: str,
    request: HumanInputRequest,
    event_id: uuid.UUID,
    sequence: int,
    timestamp: datetime,
) -> dict[str, Any]:
    """The JSON object sent for one event, in the field order of the spec."""
    payload: dict[str, Any] = {"type": event_type, **_identity(request)}
    if event_type == EventType.REQUIRED:
        payload["prompt"] = request.prompt
        payload["context"] = request.context
    elif event_type == EventType.COMPLETED:
        payload["human_feedback"] = request.response
    payload["timestamp"] = format_timestamp(timestamp)
    payload["event_id"] = str(event_id)
    if event_type == EventType.REQUIRED:
        payload["reason_flags"] = request.reason_flags
    payload["request_id"] = str(request.id)
    payload["sequence"] = sequence
    return payload


def doorbell_message(payload: dict[str, Any], *, published_at: float) -> dict[str, Any]:
    """The channel-layer message announcing one stored event to its group.

    ``published_at`` (epoch seconds) lets subscribers measure publish-to-deliver latency.
    """
    return {
        "type": "humaninput.event",
        "sequence": payload["sequence"],
        "event": payload,
        "published_at": published_at,
    }
