"""Reading the event log: the one read path behind WebSocket, SSE and polling.

Input checks every transport shares (execution id, cursor, limit, wait) live
here too, so a malformed value gets the same answer everywhere.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from channels.db import database_sync_to_async

from .exceptions import InvalidCursor, InvalidExecutionId, InvalidParameter
from .models import ExecutionSequence, HumanInputEvent

EXECUTION_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CURSOR_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)

Payload = dict[str, Any]


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


def resolve_cursor(*, execution_id: str, cursor: uuid.UUID | None) -> int:
    """The sequence after which to read: the cursor's, or 0 (whole log) if absent or unknown."""
    if cursor is None:
        return 0
    found = HumanInputEvent.objects.filter(execution_id=execution_id, event_id=cursor)
    return found.values_list("sequence", flat=True).first() or 0


def async_reader(function: Any) -> Any:
    """``function`` for async callers, in channels' database thread.

    channels' wrapper closes each connection past ``CONN_MAX_AGE`` after the
    call, the way a sync request would. The thread is asgiref's shared one,
    so an open stream holds no thread of its own (see ``handlers``).
    """
    return database_sync_to_async(function)


aresolve_cursor = async_reader(resolve_cursor)


def events_after(*, execution_id: str, after_sequence: int, limit: int | None = None) -> list[Payload]:
    """Payloads of ``execution_id`` with ``sequence > after_sequence``, oldest first."""
    query = (
        HumanInputEvent.objects.filter(execution_id=execution_id, sequence__gt=after_sequence)
        .order_by("sequence")
        .values_list("payload", flat=True)
    )
    return list(query[:limit] if limit is not None else query)


aevents_after = async_reader(events_after)


def events_after_cursor(
    *, execution_id: str, cursor: uuid.UUID | None, limit: int | None = None
) -> tuple[int, list[Payload]]:
    """``resolve_cursor`` then ``events_after``: a plain poll's whole read, in one call
    (one trip to the database thread instead of two)."""
    after = resolve_cursor(execution_id=execution_id, cursor=cursor)
    return after, events_after(execution_id=execution_id, after_sequence=after, limit=limit)


aevents_after_cursor = async_reader(events_after_cursor)

HEADS_CHUNK = 500


def log_heads(*, execution_ids: list[str]) -> dict[str, int]:
    """The last ``sequence`` of each of ``execution_ids`` that has events (one query per 500)."""
    heads: dict[str, int] = {}
    for start in range(0, len(execution_ids), HEADS_CHUNK):
        chunk = execution_ids[start : start + HEADS_CHUNK]
        rows = ExecutionSequence.objects.filter(execution_id__in=chunk).values_list(
            "execution_id", "last_sequence"
        )
        heads.update(rows)
    return heads


alog_heads = async_reader(log_heads)


class LogFollower:
    """A subscriber's position in one execution's log.

    Doorbells (group messages) carry the event; the follower passes one on
    only if it is exactly the next sequence, reads the gap from the log when
    it is not, and ignores what it already sent. ``catch_up`` re-reads from
    the cursor for messages the channel layer dropped. Both are serialized by
    a lock, so a doorbell and a catch-up running at once cannot send an event
    twice or out of order.
    """

    def __init__(
        self,
        *,
        execution_id: str,
        after_sequence: int,
        max_read: int | None = None,
        page_size: int = 500,
    ) -> None:
        self.execution_id = execution_id
        self.position = after_sequence
        self.max_read = max_read
        self.page_size = page_size
        self._lock = asyncio.Lock()

    async def on_doorbell(self, *, sequence: int, payload: Payload | None) -> list[Payload]:
        async with self._lock:
            if sequence <= self.position:
                return []
            if sequence == self.position + 1 and payload is not None:
                self.position = sequence
                return [payload]
            return await self._read()

    async def catch_up(self) -> list[Payload]:
        async with self._lock:
            return await self._read()

    async def _read(self) -> list[Payload]:
        """Events past the position, at most ``max_read`` of them; advances the position."""
        found: list[Payload] = []
        while True:
            want = self.page_size
            if self.max_read is not None:
                want = min(want, self.max_read - len(found))
            page = await aevents_after(
                execution_id=self.execution_id, after_sequence=self.position, limit=want
            )
            found.extend(page)
            if page:
                self.position = page[-1]["sequence"]
            if len(page) < want or (self.max_read is not None and len(found) >= self.max_read):
                return found
