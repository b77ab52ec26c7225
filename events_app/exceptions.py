"""Domain errors. Each transport maps them to an HTTP status or a WS close code in one table."""

from __future__ import annotations

from typing import Any


class HumanInputError(Exception):
    """Base of every error a client can cause. ``code`` is the stable machine name."""

    code = "error"
    http_status = 400
    ws_close_code = 4400

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.default_detail
        self.extra = extra
        super().__init__(self.detail)

    default_detail = "Bad request."

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.detail, **self.extra}


class InvalidExecutionId(HumanInputError):
    code = "invalid_execution_id"
    default_detail = "execution_id must be 1-128 characters of A-Z a-z 0-9 . _ : -"


class InvalidCursor(HumanInputError):
    code = "invalid_cursor"
    default_detail = "last_event_id must be an event_id (a UUID)."


class InvalidParameter(HumanInputError):
    code = "invalid_parameter"
    default_detail = "Invalid query parameter."


class NotAuthenticated(HumanInputError):
    code = "not_authenticated"
    http_status = 401
    ws_close_code = 4401
    default_detail = "A valid token is required."


class TokenRevoked(NotAuthenticated):
    code = "token_revoked"
    default_detail = "This token has been revoked."


class OriginNotAllowed(HumanInputError):
    """A session-authenticated WebSocket opened from a page of another origin."""

    code = "origin_not_allowed"
    http_status = 403
    ws_close_code = 4403
    default_detail = "Sessions may connect only from an allowed Origin."


class PermissionDenied(HumanInputError):
    code = "permission_denied"
    http_status = 403
    ws_close_code = 4403
    default_detail = "This token is not valid for this execution or action."


class NotFound(HumanInputError):
    code = "not_found"
    http_status = 404
    ws_close_code = 4404
    default_detail = "No such request."


class UnknownEndpoint(NotFound):
    """A path under our prefix that names no endpoint (``/api/...`` typos, ``/requests//respond``)."""

    code = "unknown_endpoint"
    default_detail = "No such endpoint."


class MethodNotAllowed(HumanInputError):
    code = "method_not_allowed"
    http_status = 405
    default_detail = "Method not allowed."

    def __init__(self, allowed: tuple[str, ...] = ("GET",), detail: str | None = None) -> None:
        self.allowed = allowed
        super().__init__(detail or f"Use {', '.join(allowed)}.")


class AlreadyResolved(HumanInputError):
    """The request is no longer pending: someone answered, cancelled or it expired."""

    code = "conflict"
    http_status = 409
    ws_close_code = 4409
    default_detail = "This request is no longer pending."


class AlreadyAnswered(AlreadyResolved):
    code = "already_answered"
    default_detail = "This request has already been answered."


class InvalidMessage(HumanInputError):
    """A WebSocket client frame we cannot act on (the connection stays open)."""

    code = "invalid_message"
    default_detail = "Messages must be JSON objects with a known type."


class InvalidJson(InvalidMessage):
    code = "invalid_json"
    default_detail = "Invalid JSON."


class UnknownMessageType(InvalidMessage):
    code = "unknown_type"
    default_detail = "Unknown message type."


class ServiceUnavailable(HumanInputError):
    """The database did not answer while a stream was being opened: the client retries.

    WebSocket close 4503, in the 44xx family of our other codes (autobahn lets an application
    close with 1000 or 3000-4999 only, so the protocol's 1013 "try again later" is not ours to send).
    """

    code = "service_unavailable"
    http_status = 503
    ws_close_code = 4503
    default_detail = "The database is unavailable; try again shortly."
