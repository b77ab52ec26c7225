"""The WebSocket transport: ``/ws/human-input/<execution_id>``.

A thin adapter: ``auth`` decides who may connect, an ``ExecutionSubscription``
(the same one SSE and long polls use) follows the log from the client's
cursor, ``services`` records answers.

The consumer has no channel-layer channel of its own: channels ends a
consumer whose layer ``receive`` fails, so a Redis outage would drop every
WebSocket. The subscription instead keeps delivering by catch-up reads every
``HUMANINPUT_CATCHUP_SECONDS`` and rejoins the group when the layer is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import services
from .auth import READ, RESPOND, Principal, aauthenticate, acheck_not_revoked, authorize, origin_allowed
from .conf import humaninput_settings
from .exceptions import (
    HumanInputError,
    InvalidJson,
    InvalidMessage,
    InvalidParameter,
    OriginNotAllowed,
    TokenRevoked,
    UnknownMessageType,
)
from .expiry import ensure_expiry_scheduler
from .log import Payload, aresolve_cursor, parse_cursor, validate_execution_id
from .subscription import ExecutionSubscription

logger = logging.getLogger(__name__)

# A layer alias that is never configured: channels then gives the consumer no
# channel and no layer receive loop (see the module docstring).
NO_CHANNEL_LAYER = "humaninput.no-layer"


def _query_params(scope: dict[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}


def _origin(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1")
    return None


class HumanInputEventConsumer(AsyncWebsocketConsumer):
    """One client following one execution's events, and possibly answering them."""

    channel_layer_alias = NO_CHANNEL_LAYER
    principal: Principal
    execution_id: str
    subscription: ExecutionSubscription | None = None
    follow_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Called on the handshake: accept, then check and close with 44xx, or replay and follow."""
        ensure_expiry_scheduler()
        await self.accept()
        try:
            query = _query_params(self.scope)
            self.principal = await aauthenticate(token=query.get("token"), user=self.scope.get("user"))
            if self.principal.via_session and not origin_allowed(_origin(self.scope)):
                raise OriginNotAllowed()
            self.execution_id = validate_execution_id(self.scope["url_route"]["kwargs"]["execution_id"])
            cursor = parse_cursor(query.get("last_event_id"))
            authorize(self.principal, execution_id=self.execution_id, scope=READ)
        except HumanInputError as error:
            await self.close(code=error.ws_close_code)
            return
        after = await aresolve_cursor(execution_id=self.execution_id, cursor=cursor)
        subscription = ExecutionSubscription(
            execution_id=self.execution_id,
            after_sequence=after,
            transport="ws",
            token_id=self.principal.token_id,
        )
        # Joined before the first read: an event committed in between is then
        # either in the read or rung afterwards (and deduplicated by sequence).
        await subscription.__aenter__()
        self.subscription = subscription
        await self._send_events(await subscription.read_log())
        self.follow_task = asyncio.create_task(self._follow(subscription))

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, for whatever reason: give everything back."""
        task, self.follow_task = self.follow_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            await subscription.__aexit__(None, None, None)

    async def _follow(self, subscription: ExecutionSubscription) -> None:
        """Send what the subscription brings until the connection ends."""
        while True:
            try:
                events = await subscription.next_events(max_wait=3600)
            except asyncio.CancelledError:
                raise
            except TokenRevoked as error:
                await self.close(code=error.ws_close_code)
                return
            except Exception:
                # The database is unreachable; the next catch-up retries.
                logger.exception("reading the log failed for %s", self.execution_id)
                await asyncio.sleep(humaninput_settings.CATCHUP_SECONDS)
                continue
            try:
                await self._send_events(events)
            except Exception:
                logger.exception("sending to a WebSocket of %s failed; closing it", self.execution_id)
                await self.close(code=1011)  # the client resumes from its cursor
                return

    async def _send_events(self, events: list[Payload]) -> None:
        for payload in events:
            await self.send(text_data=json.dumps(payload))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each client frame: ``ping`` or ``respond``; anything else gets an error frame."""
        if self.subscription is None:
            return
        try:
            await self._handle(text_data, bytes_data)
        except TokenRevoked as error:
            await self.close(code=error.ws_close_code)
        except HumanInputError as error:
            await self.send(text_data=json.dumps({"type": "error", **error.as_dict()}))

    async def _handle(self, text_data: str | None, bytes_data: bytes | None) -> None:
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
        kind = message.get("type")
        if kind == "ping":
            await self.send(text_data=json.dumps({"type": "pong"}))
        elif kind == "respond":
            await self._respond(message)
        else:
            raise UnknownMessageType(
                f"Unknown message type {kind[:100]!r}." if isinstance(kind, str) else "Missing message type."
            )

    async def _respond(self, message: dict[str, Any]) -> None:
        authorize(self.principal, execution_id=self.execution_id, scope=RESPOND)
        await acheck_not_revoked(self.principal)
        response = message.get("response")
        if not isinstance(response, str):
            raise InvalidParameter("response must be a string.", field="response")
        await database_sync_to_async(services.request_respond)(
            request_id=message.get("request_id"),
            response=response,
            responded_by=self.principal.name,
            execution_id=self.execution_id,
        )


class UnknownRouteConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: accept, then close 4404, instead of a router traceback."""

    async def connect(self) -> None:
        """Called on the handshake of a path no route matched."""
        await self.accept()
        await self.close(code=4404)
