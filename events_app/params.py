"""What clients send, checked once for every transport: query strings, ids, cursors, numbers.

``Query`` is the one query-string parser (WebSocket scopes and Django
requests alike), with one rule for a repeated parameter: ``?token=a&token=b``
or ``?last_event_id=x&last_event_id=y`` is ambiguous, so asking for it raises
``InvalidParameter`` (400 / close 4400) instead of quietly keeping one.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import parse_qs

from .exceptions import InvalidCursor, InvalidExecutionId, InvalidParameter


class Query:
    """A parsed query string; ``get`` refuses a parameter given more than once."""

    def __init__(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            # As Django and channels pass it on: the raw bytes as latin-1, percent
            # escapes decoded as UTF-8 (a malformed escape becomes U+FFFD, not an error).
            raw = raw.decode("latin-1")
        self.values = parse_qs(raw, keep_blank_values=True, encoding="utf-8", errors="replace")

    @classmethod
    def of_scope(cls, scope: dict[str, Any]) -> Query:
        """The query of an ASGI (WebSocket or HTTP) scope."""
        return cls(scope.get("query_string", b""))

    @classmethod
    def of_request(cls, request: Any) -> Query:
        """The query of a Django request (or a DRF request wrapping one)."""
        return cls(getattr(request, "_request", request).META.get("QUERY_STRING", ""))

    def get(self, name: str) -> str | None:
        """The value of ``name``, None if absent; ``InvalidParameter`` if it was given twice."""
        values = self.values.get(name, [])
        if len(values) > 1:
            raise InvalidParameter(f"{name} must be given at most once.", field=name)
        return values[0] if values else None

    def present(self, name: str) -> bool:
        """Whether ``name`` was given with a non-empty value (however often)."""
        return any(self.values.get(name, []))


EXECUTION_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CURSOR_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)


def validate_execution_id(value: Any) -> str:
    """``value`` if it is a valid execution id, else ``InvalidExecutionId``."""
    if not isinstance(value, str) or not EXECUTION_ID_RE.fullmatch(value):
        raise InvalidExecutionId()
    return value


def parse_cursor(value: str | None) -> uuid.UUID | None:
    """The ``last_event_id`` a client sent: ``None`` (absent or empty) or a UUID.

    Anything else raises ``InvalidCursor``. Only the canonical hyphenated form
    and 32 bare hex digits are accepted; not the braces, ``urn:uuid:`` prefix
    or odd hyphenation that ``uuid.UUID`` would also take.
    """
    if value is None or value == "":
        return None
    uuid_value = parse_uuid_text(value)
    if uuid_value is None:
        raise InvalidCursor()
    return uuid_value


def parse_uuid_text(value: Any) -> uuid.UUID | None:
    """``value`` as a UUID if it is one in the canonical form or as 32 hex digits, else None.

    Stricter than ``uuid.UUID``, which also takes braces, a ``urn:uuid:``
    prefix, odd hyphenation and non-ASCII digits: an id is one spelling.
    """
    if not isinstance(value, str) or not CURSOR_RE.fullmatch(value):
        return None
    return uuid.UUID(value)


def parse_bounded_number(
    value: str | None, *, name: str, default: float, minimum: float, maximum: float, integer: bool
) -> float:
    """A numeric query parameter in ``[minimum, maximum]``, or ``InvalidParameter``."""
    if value is None or value == "":
        return default
    try:
        number: float = int(value) if integer else float(value)
    except ValueError:
        raise InvalidParameter(f"{name} must be a number.", field=name) from None
    if number != number or not minimum <= number <= maximum:  # NaN or out of range
        raise InvalidParameter(f"{name} must be between {minimum:g} and {maximum:g}.", field=name)
    return number
