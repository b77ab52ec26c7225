"""The WebSocket transport: ``/ws/human-input/<execution_id>``.

A thin adapter: ``auth`` decides who may connect, ``log`` supplies the events
after the client's cursor, ``services`` records answers. Group messages are
doorbells handed to a ``LogFollower``; a background task re-reads the log
every ``HUMANINPUT_CATCHUP_SECONDS`` for doorbells the layer dropped.
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
from .auth import READ, RESPOND, Principal, authenticate, authorize
from .conf import humaninput_settings
from .events import group_name
from .exceptions import (
    HumanInputError,
    InvalidJson,
    InvalidMessage,
    InvalidParameter,
    UnknownMessageType,
)
from .log import LogFollower, Payload, aresolve_cursor, parse_cursor, validate_execution_id

logger = logging.getLogger(__name__)


def _query_params(scope: dict[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {key: values[-1] for key, values in parse_qs(raw, keep_blank_values=True).items()}


class HumanInputEventConsumer(AsyncWebsocketConsumer):
    """One client following one execution's events, and possibly answering them."""

    principal: Principal
    execution_id: str
    follower: LogFollower | None = None
    catch_up_task: asyncio.Task[None] | None = None
    joined_group: str | None = None

    async def connect(self) -> None:
        """Called on the handshake: accept, then check and close with 44xx, or replay."""
        await self.accept()
        try:
            query = _query_params(self.scope)
            self.principal = authenticate(token=query.get("token"), user=self.scope.get("user"))
            self.execution_id = validate_execution_id(self.scope["url_route"]["kwargs"]["execution_id"])
            cursor = parse_cursor(query.get("last_event_id"))
            authorize(self.principal, execution_id=self.execution_id, scope=READ)
        except HumanInputError as error:
            await self.close(code=error.ws_close_code)
            return
        after = await aresolve_cursor(execution_id=self.execution_id, cursor=cursor)
        self.follower = LogFollower(execution_id=self.execution_id, after_sequence=after)
        # Join before the first read: an event committed in between is then
        # either in the read or rung afterwards (and deduplicated by sequence).
        await self._join_group()
        await self._send_events(await self.follower.catch_up())
        self.catch_up_task = asyncio.create_task(self._catch_up_forever())

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, for whatever reason: give everything back."""
        if self.catch_up_task is not None:
            self.catch_up_task.cancel()
            self.catch_up_task = None
        if self.joined_group is not None:
            try:
                await self.channel_layer.group_discard(self.joined_group, self.channel_name)
            except Exception:
                logger.warning("could not leave group %s", self.joined_group, exc_info=True)
            self.joined_group = None

    async def _join_group(self) -> None:
        group = group_name(self.execution_id)
        try:
            await self.channel_layer.group_add(group, self.channel_name)
        except Exception:
            logger.warning("channel layer unavailable; catch-up reads only", exc_info=True)
            return
        self.joined_group = group

    async def _catch_up_forever(self) -> None:
        while self.follower is not None:
            await asyncio.sleep(humaninput_settings.CATCHUP_SECONDS)
            try:
                if self.joined_group is None:
                    await self._join_group()
                await self._send_events(await self.follower.catch_up())
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("catch-up read failed for %s", self.execution_id)

    async def humaninput_event(self, message: dict[str, Any]) -> None:
        """Called for each doorbell of this execution's group."""
        if self.follower is None:
            return
        events = await self.follower.on_doorbell(
            sequence=int(message.get("sequence", 0)), payload=message.get("event")
        )
        await self._send_events(events)

    async def _send_events(self, events: list[Payload]) -> None:
        for payload in events:
            await self.send(text_data=json.dumps(payload))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each client frame: ``ping`` or ``respond``; anything else gets an error frame."""
        if self.follower is None:
            return
        try:
            await self._handle(text_data, bytes_data)
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
                f"Unknown message type {kind!r}." if isinstance(kind, str) else "Missing message type."
            )

    async def _respond(self, message: dict[str, Any]) -> None:
        authorize(self.principal, execution_id=self.execution_id, scope=RESPOND)
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
