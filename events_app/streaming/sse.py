"""Server-Sent Events: the stream machinery, and ``GET /events/human-input/<execution_id>``.

``event_stream_response`` serves any ``Feed`` — this module's execution feed
and the inbox's — the same way: ``retry:`` first, then what the feed brings,
a heartbeat after each quiet ``HUMANINPUT_SSE_HEARTBEAT_SECONDS``, and a
domain error raised by the feed as a last ``data: {"type": "error", ...}``
message (the browser's EventSource then reconnects and meets the error as an
HTTP status). An async view: a connected client costs a coroutine, not a
thread. When the client goes away Django cancels the stream and the feed
gives back what it holds.

The execution stream replays the log past the client's cursor
(``Last-Event-ID`` header, else ``?last_event_id=``) and then follows it live;
what it answers on each failure is the table in ``opening``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone

from ..auth import Credentials
from ..conf import humaninput_settings
from ..events import format_timestamp
from ..exceptions import HumanInputError
from ..http import error_response, get_only
from ..log import Payload
from ..params import Query
from .opening import open_subscription
from .subscription import ExecutionSubscription


def format_event(payload: Payload) -> str:
    return f"id: {payload['event_id']}\ndata: {json.dumps(payload)}\n\n"


def format_data(data: dict[str, Any]) -> str:
    """A message without ``id:``: not an event a client could resume from."""
    return f"data: {json.dumps(data)}\n\n"


def format_heartbeat() -> str:
    return format_data({"type": "heartbeat", "timestamp": format_timestamp(timezone.now())})


class Feed(Protocol):
    """What an SSE stream sends: entered once, then asked for messages until the client leaves."""

    async def next_messages(self, max_wait: float) -> list[str]:
        """Formatted messages, waiting at most ``max_wait`` seconds; ``[]`` if none came.

        A ``HumanInputError`` ends the stream with that error as its last message.
        """
        ...


async def _stream(feed: AbstractAsyncContextManager[Feed]) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    yield f"retry: {humaninput_settings.SSE_RETRY_MILLISECONDS}\n\n"
    async with feed as entered:
        quiet_since = loop.time()
        while True:
            heartbeat_at = quiet_since + humaninput_settings.SSE_HEARTBEAT_SECONDS
            try:
                messages = await entered.next_messages(max(0.0, heartbeat_at - loop.time()))
            except HumanInputError as error:
                yield format_data({"type": "error", **error.as_dict()})
                return
            if messages:
                yield "".join(messages)
            elif loop.time() >= heartbeat_at:
                yield format_heartbeat()
            else:
                continue
            quiet_since = loop.time()


def event_stream_response(feed: AbstractAsyncContextManager[Feed]) -> StreamingHttpResponse:
    """``text/event-stream`` of ``feed``, which neither browsers nor proxies (nginx) cache or buffer."""
    response = StreamingHttpResponse(_stream(feed), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class ExecutionFeed:
    """An execution's events as SSE messages: the log past the cursor first, then live."""

    def __init__(self, subscription: ExecutionSubscription) -> None:
        self.subscription = subscription
        self.replayed = False

    async def __aenter__(self) -> ExecutionFeed:
        await self.subscription.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.subscription.__aexit__(exc_type, exc, tb)

    async def next_messages(self, max_wait: float) -> list[str]:
        if self.replayed:
            events = await self.subscription.next_events(max_wait)
        else:
            self.replayed, events = True, await self.subscription.read_log()
        return [format_event(payload) for payload in events]


@get_only
async def human_input_stream(request: HttpRequest, execution_id: str) -> HttpResponse:
    try:
        subscription = await open_subscription(
            await Credentials.of_async_request(request),
            execution_id=execution_id,
            query=Query.of_request(request),
            header_cursor=request.headers.get("Last-Event-ID"),
            transport="sse",
        )
    except HumanInputError as error:
        return error_response(error)
    return event_stream_response(ExecutionFeed(subscription))
