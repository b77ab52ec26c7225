"""OpenAPI additions drf-spectacular cannot infer: the SSE stream and the WebSocket."""

from __future__ import annotations

from typing import Any

WEBSOCKET_DESCRIPTION = """

**WebSocket** (not expressible in OpenAPI): `ws(s)://HOST/ws/human-input/{execution_id}?token=&last_event_id=`.
The server sends one event JSON object per text frame. Client messages:
`{"type": "ping"}` → `{"type": "pong"}`; `{"type": "respond", "request_id": "...", "response": "..."}`.
Bad messages get `{"type": "error", "code": "...", "detail": "..."}`. Close codes: 4400 invalid
execution id or cursor, 4401 bad or missing token, 4403 token not valid for this execution,
4404 unknown path, 1009 message over 64 KiB.
"""

EXECUTION_ID = {
    "name": "execution_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
}


def add_stream_endpoints(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Called by drf-spectacular after generation: document the SSE endpoint and the WebSocket."""
    result["info"]["description"] = result["info"].get("description", "") + WEBSOCKET_DESCRIPTION
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOutput"}}}}
    result["paths"]["/events/human-input/{execution_id}"] = {
        "get": {
            "operationId": "human_input_events_stream",
            "summary": "Server-Sent Events stream of one execution",
            "description": (
                "Starts with `retry: 3000`, replays the log past the cursor, then streams live. "
                "Each event: `id: <event_id>` and `data: <event JSON>`. Heartbeats "
                '(`data: {"type": "heartbeat", ...}`, no `id:`) keep idle streams open. Resume '
                "with the `Last-Event-ID` header or `?last_event_id=`."
            ),
            "tags": ["events"],
            "parameters": [
                EXECUTION_ID,
                {"name": "last_event_id", "in": "query", "schema": {"type": "string", "format": "uuid"}},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "format": "uuid"}},
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": {"description": "Invalid execution id or cursor.", **error},
                "401": {"description": "Missing or invalid credentials.", **error},
                "403": {"description": "Credentials not valid for this execution.", **error},
            },
        }
    }
    return result
