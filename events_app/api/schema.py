"""OpenAPI additions drf-spectacular cannot infer: the SSE stream, the WebSocket, and the
exact shapes of what ``params`` and the strict serializers accept."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent

from ..params import CURSOR_RE, EXECUTION_ID_RE

WEBSOCKET_DESCRIPTION = """

**WebSocket** (not expressible in OpenAPI): `ws(s)://HOST/ws/human-input/{execution_id}?token=&last_event_id=`.
The server sends one event JSON object per text frame. Client messages:
`{"type": "ping"}` → `{"type": "pong"}`; `{"type": "respond", "request_id": "...", "response": "..."}`.
Bad messages get `{"type": "error", "code": "...", "detail": "..."}`. Close codes: 4400 invalid
execution id or cursor, or a parameter given twice; 4401 bad, missing or revoked token; 4403 token
not valid for this execution; 4404 unknown path; 4503 database unavailable (retry); 1009 message
over 64 KiB.
"""

# What ``params.validate_execution_id`` accepts, as a JSON Schema (ECMA) pattern.
EXECUTION_ID_PATTERN = f"^{EXECUTION_ID_RE.pattern}$"
EXECUTION_ID_SCHEMA = {"type": "string", "pattern": EXECUTION_ID_PATTERN}


def or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's ``schema``, or empty (``?limit=``), which ``params`` reads as absent."""
    return {"anyOf": [schema, {"type": "string", "maxLength": 0}]}


# What ``params.parse_cursor`` accepts: an event_id (hyphenated or 32 hex digits), or empty for none.
CURSOR_SCHEMA = {
    "type": "string",
    "pattern": f"^(?:{CURSOR_RE.pattern})?$",
    "description": "The `event_id` of the last event held; empty or absent for the whole log.",
}
# Text PostgreSQL can store: no NUL character (``services.validate_text`` refuses it everywhere;
# ``serializers.NO_NUL`` declares it for text fields, which are never empty there).
NO_NUL_PATTERN = "^[^\\u0000]*$"
STORABLE_JSON_REF = {"$ref": "#/components/schemas/StorableJSON"}
STORABLE_JSON_OBJECT = {
    "type": "object",
    "propertyNames": {"pattern": NO_NUL_PATTERN},
    "additionalProperties": STORABLE_JSON_REF,
}
STORABLE_JSON = {
    "description": "Any finite JSON value without NUL characters.",
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": NO_NUL_PATTERN},
        {"type": "array", "items": STORABLE_JSON_REF},
        STORABLE_JSON_OBJECT,
    ],
}
# Either credential is enough: one security requirement each (OR), not one with both (AND).
TOKEN_SECURITY = [{"bearer": []}, {"tokenQuery": []}]

EXECUTION_ID = {"name": "execution_id", "in": "path", "required": True, "schema": EXECUTION_ID_SCHEMA}

# One message of the stream, the way OpenAPI 3.2's `itemSchema` (and tools reading 3.1, such
# as schemathesis) describe a `text/event-stream`: its fields, `data` being JSON text.
SSE_MESSAGE = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid", "description": "The `event_id`; none on heartbeats."},
        "event": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "timestamp": {"type": "string"}},
                "required": ["type", "timestamp"],
            },
        },
    },
    "required": ["data"],
}


def only_humaninput_endpoints(endpoints: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Called by drf-spectacular before generation: keep our API's endpoints, not the host's
    (nor the schema and docs views themselves)."""
    return [
        endpoint
        for endpoint in endpoints
        if getattr(endpoint[3], "cls", None) is not None
        and endpoint[3].cls.__module__.startswith(("events_app.api.", "events_app.streaming."))
        and endpoint[3].cls.__module__ != "events_app.api.docs"
    ]


def mount_prefix() -> str:
    """Where the host mounted ``events_app.urls``: ``/``, ``/humaninput/``, ..."""
    health = reverse("humaninput-health")
    return health[: -len("health")]


def add_stream_endpoints(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """Called by drf-spectacular after generation: document the SSE endpoint and the WebSocket."""
    result["info"]["description"] = result["info"].get("description", "") + WEBSOCKET_DESCRIPTION
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOutput"}}}}
    result["paths"][f"{mount_prefix()}events/human-input/{{execution_id}}"] = {
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
            "security": TOKEN_SECURITY,
            "parameters": [
                EXECUTION_ID,
                {"name": "last_event_id", "in": "query", "schema": CURSOR_SCHEMA},
                {"name": "Last-Event-ID", "in": "header", "schema": CURSOR_SCHEMA},
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {"text/event-stream": {"schema": SSE_MESSAGE}},
                },
                "400": {"description": "Invalid execution id or cursor.", **error},
                "401": {"description": "Missing or invalid credentials.", **error},
                "403": {"description": "Credentials not valid for this execution.", **error},
            },
        }
    }
    return result


class StrictSerializerScheme(OpenApiSerializerExtension):
    """``StrictSerializer`` refuses fields it does not know: say so (``additionalProperties: false``)."""

    target_class = "events_app.api.serializers.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


class JSONObjectFieldScheme(OpenApiSerializerFieldExtension):
    """``JSONObjectField``: an object of storable JSON (the ``StorableJSON`` component, recursive)."""

    target_class = "events_app.api.serializers.JSONObjectField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        component = ResolvedComponent(
            name="StorableJSON", type=ResolvedComponent.SCHEMA, object="StorableJSON", schema=STORABLE_JSON
        )
        auto_schema.registry.register_on_missing(component)
        return STORABLE_JSON_OBJECT


class NamedChoiceFieldScheme(OpenApiSerializerFieldExtension):
    """``NamedChoiceField``: a reference to its enum component, registered once."""

    target_class = "events_app.api.serializers.NamedChoiceField"
    match_subclasses = True

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        field = self.target
        component = ResolvedComponent(
            name=field.enum_name,
            type=ResolvedComponent.SCHEMA,
            object=field.enum_name,
            schema={"type": "string", "enum": list(field.choice_values)},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref
