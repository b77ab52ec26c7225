"""Reading the event log: the one read path behind WebSocket, SSE and polling.

What clients send (execution ids, cursors, numbers) is checked in ``params``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from channels.db import database_sync_to_async

from .models import ExecutionSequence, HumanInputEvent

Payload = dict[str, Any]


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
    so an open stream holds no thread of its own (see ``server.asgi_handler``).
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
