"""The operator inbox: a staff page of pending requests, kept live by an SSE stream.

The stream is state, not a log: on every (re)connect it sends a ``snapshot``
of the pending requests, then forwards each event as it is rung on the inbox
group, and re-sends the snapshot after a quiet ``HUMANINPUT_CATCHUP_SECONDS``
if it changed (a lost doorbell). A browser's EventSource reconnects by
itself, and the snapshot it then receives is its resume.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.db import Error as DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from .auth import Credentials
from .conf import humaninput_settings
from .events import INBOX_GROUP, format_timestamp
from .exceptions import HumanInputError
from .http import error_response, get_only
from .log import async_reader
from .metrics import SUBSCRIBERS
from .models import HumanInputRequest, RequestStatus
from .params import Query, validate_execution_id
from .streaming.opening import open_inbox
from .streaming.sse import event_stream_response, format_data
from .streaming.subscription import GroupListener, or_unavailable

logger = logging.getLogger(__name__)

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


class InboxFeed:
    """The inbox as SSE messages: a snapshot, then each event rung on the inbox group.

    Every ``HUMANINPUT_CATCHUP_SECONDS`` the snapshot is read again and sent
    if it changed (a doorbell was lost); if the database does not answer then,
    the next check retries. A snapshot that cannot be read at the start ends
    the stream with an error message (``sse``), and EventSource reconnects.
    """

    def __init__(self, execution_id: str | None) -> None:
        self.execution_id = execution_id
        self.listener = GroupListener(INBOX_GROUP)
        self.snapshot: list[dict[str, Any]] | None = None
        self.next_check = 0.0

    async def __aenter__(self) -> InboxFeed:
        SUBSCRIBERS.labels("inbox").inc()
        try:
            await self.listener.join()
        except BaseException:
            SUBSCRIBERS.labels("inbox").dec()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        SUBSCRIBERS.labels("inbox").dec()
        await self.listener.leave()

    def _snapshot_message(self, snapshot: list[dict[str, Any]]) -> list[str]:
        self.snapshot = snapshot
        return [format_data({"type": "snapshot", "pending": snapshot})]

    async def next_messages(self, max_wait: float) -> list[str]:
        loop = asyncio.get_running_loop()
        if self.snapshot is None:
            self.next_check = loop.time() + humaninput_settings.CATCHUP_SECONDS
            return self._snapshot_message(
                await or_unavailable(apending_requests(execution_id=self.execution_id))
            )
        message = await self.listener.receive(max(0.0, min(max_wait, self.next_check - loop.time())))
        if message is not None:
            event = message.get("event") or {}
            wanted = self.execution_id is None or event.get("execution_id") == self.execution_id
            return [format_data(event)] if wanted else []
        if loop.time() < self.next_check:
            return []
        self.next_check = loop.time() + humaninput_settings.CATCHUP_SECONDS
        await self.listener.join()  # rejoin after a layer failure; no-op otherwise
        try:
            fresh = await apending_requests(execution_id=self.execution_id)
        except DatabaseError as error:
            logger.warning("database unavailable; the inbox snapshot retries at its next check: %r", error)
            return []
        return self._snapshot_message(fresh) if fresh != self.snapshot else []


@get_only
async def inbox_stream(request: HttpRequest) -> HttpResponse:
    """``/inbox/stream?execution_id=``: the SSE feed of the inbox (full access only)."""
    try:
        execution_id = Query.of_request(request).get("execution_id") or None
        await open_inbox(await Credentials.of_async_request(request), execution_id=execution_id)
    except HumanInputError as error:
        return error_response(error)
    return event_stream_response(InboxFeed(execution_id))
