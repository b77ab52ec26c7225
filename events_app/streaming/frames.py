"""What a WebSocket client may send: ``{"type": "ping"}`` and ``{"type": "respond", ...}``.

``answer_frame`` checks one client frame and acts on it. It returns the
frame to send back (``pong``, or ``{"type": "error", ...}`` for a frame it
refuses — the connection stays open), nothing after an answer was recorded
(every subscriber, this one included, gets ``human_input_completed``), or a
close code when the connection must end (its token was revoked).
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async
from django.db import Error as DatabaseError

from .. import services
from ..auth import RESPOND, acheck_not_revoked, authorize
from ..conf import humaninput_settings
from ..exceptions import (
    HumanInputError,
    InvalidJson,
    InvalidMessage,
    InvalidParameter,
    ServiceUnavailable,
    TokenRevoked,
    UnknownMessageType,
)
from .subscription import ExecutionSubscription

Reply = dict[str, Any] | int | None


def parse_frame(text_data: str | None) -> dict[str, Any]:
    """The JSON object of a text frame, or ``InvalidMessage`` / ``InvalidJson``."""
    if text_data is None:
        raise InvalidMessage("Binary frames are not supported; send JSON text.")
    if len(text_data.encode("utf-8", "surrogatepass")) > humaninput_settings.WS_MAX_MESSAGE_BYTES:
        raise InvalidMessage("Message too big.")
    try:
        message = json.loads(text_data)
    except (ValueError, RecursionError):
        raise InvalidJson() from None
    if not isinstance(message, dict):
        raise InvalidMessage("Messages must be JSON objects.")
    return message


async def answer_frame(
    subscription: ExecutionSubscription, text_data: str | None, bytes_data: bytes | None
) -> Reply:
    """Act on one client frame; what to send back, or the code to close with."""
    try:
        message = parse_frame(text_data)
        kind = message.get("type")
        if kind == "ping":
            return {"type": "pong"}
        if kind == "respond":
            await record_answer(subscription, message)
            return None
        raise UnknownMessageType(
            f"Unknown message type {kind[:100]!r}." if isinstance(kind, str) else "Missing message type."
        )
    except TokenRevoked as error:
        return error.ws_close_code
    except HumanInputError as error:
        return {"type": "error", **error.as_dict()}
    except DatabaseError:
        return {"type": "error", **ServiceUnavailable().as_dict()}


async def record_answer(subscription: ExecutionSubscription, message: dict[str, Any]) -> None:
    """A ``respond`` frame: the subscriber's principal answers a request of its execution."""
    principal = subscription.principal
    authorize(principal, execution_id=subscription.execution_id, scope=RESPOND)
    await acheck_not_revoked(principal)
    response = message.get("response")
    if not isinstance(response, str):
        raise InvalidParameter("response must be a string.", field="response")
    await database_sync_to_async(services.request_respond)(
        request_id=message.get("request_id"),
        response=response,
        responded_by=principal.name,
        execution_id=subscription.execution_id,
    )
