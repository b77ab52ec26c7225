"""The operator inbox: a staff page of pending requests, kept live by an SSE stream.

The stream is state, not a log: on every (re)connect it sends a ``snapshot``
of the pending requests, then forwards each event as it is rung on the inbox
group, and re-sends the snapshot after a quiet ``HUMANINPUT_CATCHUP_SECONDS``
if it changed (a lost doorbell). A browser's EventSource reconnects by
itself, and the snapshot it then receives is its resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from .auth import aauthenticate_request
from .conf import humaninput_settings
from .events import INBOX_GROUP, format_timestamp
from .exceptions import HumanInputError, PermissionDenied
from .http import error_response, get_only
from .log import async_reader, validate_execution_id
from .metrics import SUBSCRIBERS
from .models import HumanInputRequest, RequestStatus
from .sse import event_stream_response, format_data, format_heartbeat
from .subscription import GroupListener

INBOX_LIMIT = 500


def pending_requests(*, execution_id: str | None = None) -> list[dict[str, Any]]:
    """The pending requests an operator sees, newest first, as JSON-ready dicts."""
    query = HumanInputRequest.objects.filter(status=RequestStatus.PENDING)
    if execution_id is not None:
        query = query.filter(execution_id=execution_id)
    return [
        {
            "request_id": str(item.id),
            "execution_id": item.execution_id,
            "crew_id": item.crew_id,
            "task_id": item.task_id,
            "agent_id": item.agent_id,
            "prompt": item.prompt,
            "context": item.context,
            "reason_flags": item.reason_flags,
            "created_at": format_timestamp(item.created_at),
            "expires_at": format_timestamp(item.expires_at) if item.expires_at else None,
        }
        for item in query.order_by("-created_at")[:INBOX_LIMIT]
    ]


apending_requests = async_reader(pending_requests)


@staff_member_required
@require_safe
def inbox_page(request: HttpRequest, execution_id: str | None = None) -> HttpResponse:
    """``/inbox/`` and ``/inbox/<execution_id>/``: the widget on a page of its own."""
    if execution_id is not None:
        try:
            validate_execution_id(execution_id)
        except HumanInputError as error:
            return error_response(error)
    return render(request, "events_app/inbox.html", {"execution_id": execution_id})


async def _inbox_stream(execution_id: str | None) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    yield f"retry: {humaninput_settings.SSE_RETRY_MILLISECONDS}\n\n"
    listener = GroupListener(INBOX_GROUP)
    SUBSCRIBERS.labels("inbox").inc()
    try:
        await listener.join()
        snapshot = await apending_requests(execution_id=execution_id)
        yield format_data({"type": "snapshot", "pending": snapshot})
        next_check = loop.time() + humaninput_settings.CATCHUP_SECONDS
        quiet_since = loop.time()
        while True:
            now = loop.time()
            wait = min(next_check, quiet_since + humaninput_settings.SSE_HEARTBEAT_SECONDS) - now
            message = await listener.receive(max(0.0, wait))
            if message is not None:
                event = message.get("event") or {}
                if execution_id is None or event.get("execution_id") == execution_id:
                    yield format_data(event)
                    quiet_since = loop.time()
                continue
            if loop.time() >= next_check:
                await listener.join()  # rejoin after a layer failure; no-op otherwise
                fresh = await apending_requests(execution_id=execution_id)
                if fresh != snapshot:
                    snapshot = fresh
                    yield format_data({"type": "snapshot", "pending": snapshot})
                    quiet_since = loop.time()
                next_check = loop.time() + humaninput_settings.CATCHUP_SECONDS
            if loop.time() >= quiet_since + humaninput_settings.SSE_HEARTBEAT_SECONDS:
                yield format_heartbeat()
                quiet_since = loop.time()
    finally:
        SUBSCRIBERS.labels("inbox").dec()
        await listener.leave()


@get_only
async def inbox_stream(request: HttpRequest) -> HttpResponse:
    """``/inbox/stream?execution_id=``: the SSE feed of the inbox (full access only)."""
    try:
        principal = await aauthenticate_request(request)
        if not principal.is_full_access:
            raise PermissionDenied("The inbox needs a staff session or the API key.")
        execution_id = request.GET.get("execution_id") or None
        if execution_id is not None:
            validate_execution_id(execution_id)
    except HumanInputError as error:
        return error_response(error)
    return event_stream_response(_inbox_stream(execution_id))
