"""The Server-Sent Events transport: ``GET /events/human-input/<execution_id>``.

An async view, so a connected client costs a coroutine, not a thread. The
stream starts with ``retry:``, replays the log past the client's cursor
(``Last-Event-ID`` header, else ``?last_event_id=``), then follows the
execution live, with a heartbeat after each quiet
``HUMANINPUT_SSE_HEARTBEAT_SECONDS``. When the client goes away Django
cancels the generator and ``ExecutionSubscription`` gives the group back.
A stream whose token is revoked ends with an error message (``token_revoked``)
at the next catch-up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone

from .auth import READ, aauthenticate_request, authorize
from .conf import humaninput_settings
from .events import format_timestamp
from .exceptions import HumanInputError, TokenRevoked
from .http import error_response, get_only
from .log import Payload, aresolve_cursor, parse_cursor, validate_execution_id
from .subscription import ExecutionSubscription


def format_event(payload: Payload) -> str:
    return f"id: {payload['event_id']}\ndata: {json.dumps(payload)}\n\n"


def format_data(data: dict[str, Any]) -> str:
    """A message without ``id:``: not an event a client could resume from."""
    return f"data: {json.dumps(data)}\n\n"


def format_heartbeat() -> str:
    return format_data({"type": "heartbeat", "timestamp": format_timestamp(timezone.now())})


def event_stream_response(stream: AsyncIterator[str]) -> StreamingHttpResponse:
    """``text/event-stream`` that neither browsers nor proxies (nginx) cache or buffer."""
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _stream(execution_id: str, after_sequence: int, token_id: str | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    yield f"retry: {humaninput_settings.SSE_RETRY_MILLISECONDS}\n\n"
    async with ExecutionSubscription(
        execution_id=execution_id, after_sequence=after_sequence, transport="sse", token_id=token_id
    ) as subscription:
        for payload in await subscription.read_log():
            yield format_event(payload)
        quiet_since = loop.time()
        while True:
            heartbeat = humaninput_settings.SSE_HEARTBEAT_SECONDS
            wait = max(0.0, quiet_since + heartbeat - loop.time())
            try:
                events = await subscription.next_events(max_wait=wait)
            except TokenRevoked as error:
                # The stream ends; EventSource reconnects and gets the 401.
                yield format_data({"type": "error", **error.as_dict()})
                return
            if events:
                yield "".join(format_event(payload) for payload in events)
            else:
                yield format_heartbeat()
            quiet_since = loop.time()


@get_only
async def human_input_stream(request: HttpRequest, execution_id: str) -> HttpResponse:
    try:
        principal = await aauthenticate_request(request)
        execution_id = validate_execution_id(execution_id)
        # Both are checked: a valid header must not hide a malformed query cursor.
        header_cursor = parse_cursor(request.headers.get("Last-Event-ID"))
        query_cursor = parse_cursor(request.GET.get("last_event_id"))
        cursor = header_cursor or query_cursor
        authorize(principal, execution_id=execution_id, scope=READ)
    except HumanInputError as error:
        return error_response(error)
    after = await aresolve_cursor(execution_id=execution_id, cursor=cursor)
    return event_stream_response(_stream(execution_id, after, principal.token_id))
