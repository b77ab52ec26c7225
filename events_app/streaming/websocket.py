"""The WebSocket transport: ``/ws/human-input/<execution_id>``.

The handshake is accepted first, so every refusal is a close code the client
can read (the table in ``opening``); then the subscription replays the log
past the cursor and follows it. The consumer has no channel-layer channel of
its own: channels ends a consumer whose layer ``receive`` fails, so a Redis
outage would drop every WebSocket; the subscription instead keeps delivering
by catch-up reads and rejoins the group when the layer is back. Client
frames are handled by ``frames``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.generic.websocket import AsyncWebsocketConsumer

from ..auth import Credentials
from ..exceptions import HumanInputError
from ..expiry import ensure_expiry_scheduler
from ..log import Payload
from ..params import Query
from .frames import answer_frame
from .opening import open_subscription
from .subscription import ExecutionSubscription

logger = logging.getLogger(__name__)

# A layer alias that is never configured: channels then gives the consumer no
# channel and no layer receive loop (see the module docstring).
NO_CHANNEL_LAYER = "humaninput.no-layer"


class HumanInputEventConsumer(AsyncWebsocketConsumer):
    """One client following one execution's events, and possibly answering them."""

    channel_layer_alias = NO_CHANNEL_LAYER
    subscription: ExecutionSubscription | None = None
    follow_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Called on the handshake: accept, then close with the policy's code, or replay and follow."""
        ensure_expiry_scheduler()
        await self.accept()
        try:
            subscription = await open_subscription(
                Credentials.of_websocket(self.scope),
                execution_id=self.scope["url_route"]["kwargs"]["execution_id"],
                query=Query.of_scope(self.scope),
                transport="ws",
            )
            # Joined before the first read: an event committed in between is then
            # either in the read or rung afterwards (and deduplicated by sequence).
            self.subscription = await subscription.__aenter__()
            await self._send_events(await subscription.read_log())
        except HumanInputError as error:
            await self.close(code=error.ws_close_code)
            return
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
        """Send what the subscription brings until the connection ends (or the token is revoked)."""
        try:
            while True:
                await self._send_events(await subscription.next_events(max_wait=3600))
        except HumanInputError as error:
            await self.close(code=error.ws_close_code)
        except Exception:
            logger.exception("sending to a WebSocket of %s failed; closing it", subscription.execution_id)
            await self.close(code=1011)  # the client resumes from its cursor

    async def _send_events(self, events: list[Payload]) -> None:
        for payload in events:
            await self.send(text_data=json.dumps(payload))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each client frame; a refused frame gets an error frame, a revoked token closes."""
        if self.subscription is None:
            return
        reply = await answer_frame(self.subscription, text_data, bytes_data)
        if isinstance(reply, int):
            await self.close(code=reply)
        elif reply is not None:
            await self.send(text_data=json.dumps(reply))


class UnknownRouteConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: accept, then close 4404, instead of a router traceback."""

    async def connect(self) -> None:
        """Called on the handshake of a path no route matched."""
        await self.accept()
        await self.close(code=4404)
