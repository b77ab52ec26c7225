"""Polling: ``GET /poll/human-input/<execution_id>``, async (adrf), so a long poll holds no thread."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.request import Request
from rest_framework.response import Response

from ..api.base import AsyncHumanInputAPIView, document
from ..api.schema import CURSOR_SCHEMA, EXECUTION_ID_SCHEMA, TOKEN_SECURITY, or_empty
from ..api.serializers import ErrorOutput, PollOutput
from ..auth import Credentials
from ..conf import humaninput_settings
from ..params import Query, parse_bounded_number
from .opening import open_subscription


def page_options(query: Query) -> tuple[int, float]:
    """``?limit=`` and ``?wait=`` (seconds), within this process's bounds."""
    limit = parse_bounded_number(
        query.get("limit"),
        name="limit",
        default=humaninput_settings.POLL_DEFAULT_LIMIT,
        minimum=1,
        maximum=humaninput_settings.POLL_MAX_LIMIT,
        integer=True,
    )
    wait = parse_bounded_number(
        query.get("wait"),
        name="wait",
        default=0,
        minimum=0,
        maximum=humaninput_settings.POLL_MAX_WAIT_SECONDS,
        integer=False,
    )
    return int(limit), wait


class PollView(AsyncHumanInputAPIView):
    """``GET /poll/human-input/<execution_id>``: the events past ``last_event_id``.

    ``?limit=`` caps the page (oldest first); ``?wait=`` seconds turns it into
    a long poll that answers as soon as an event exists past the cursor.
    Credentials are checked by ``open_subscription``, as on every transport,
    not by DRF's authentication classes (the schema still names both).
    """

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @document(
        operation_id="human_input_events_poll",
        tags=["events"],
        auth=TOKEN_SECURITY,
        parameters=[
            OpenApiParameter("execution_id", EXECUTION_ID_SCHEMA, OpenApiParameter.PATH),
            OpenApiParameter("last_event_id", CURSOR_SCHEMA),
            # The bounds this process enforces (its settings when the module loads).
            OpenApiParameter(
                "limit",
                or_empty({"type": "integer", "minimum": 1, "maximum": humaninput_settings.POLL_MAX_LIMIT}),
                description=f"Default (or empty): {humaninput_settings.POLL_DEFAULT_LIMIT}; oldest first.",
            ),
            OpenApiParameter(
                "wait",
                or_empty(
                    {"type": "number", "minimum": 0, "maximum": humaninput_settings.POLL_MAX_WAIT_SECONDS}
                ),
                description="Seconds to wait for an event past the cursor (long poll); default (or empty) 0.",
            ),
        ],
        responses={
            200: PollOutput,
            400: OpenApiResponse(ErrorOutput, description="Invalid execution id, cursor, limit or wait."),
            401: OpenApiResponse(ErrorOutput, description="Missing or invalid credentials."),
            403: OpenApiResponse(ErrorOutput, description="Credentials not valid for this execution."),
            503: OpenApiResponse(ErrorOutput, description="The database is unavailable; retry."),
        },
    )
    async def get(self, request: Request, execution_id: str) -> Response:
        query = Query.of_request(request)
        credentials = await Credentials.of_async_request(request._request)
        subscription = await open_subscription(
            credentials, execution_id=execution_id, query=query, transport="poll"
        )
        subscription.follower.max_read, wait = page_options(query)
        if wait > 0:
            async with subscription:  # joined before the read: nothing committed in between is missed
                events = await subscription.read_log() or await subscription.next_events(wait)
        else:
            events = await subscription.read_log()
        if events:
            last_event_id: str | None = events[-1]["event_id"]
        else:
            known = subscription.cursor is not None and subscription.after_sequence
            last_event_id = str(subscription.cursor) if known else None
        return Response({"events": events, "last_event_id": last_event_id})
