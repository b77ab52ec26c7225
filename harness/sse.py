"""One reader of ``text/event-stream`` for the e2e tests and the bench, parsing as the HTML standard says.

It reads the body's bytes from any async iterable (httpx's
``response.aiter_bytes()``, the bench's raw HTTP/1.1 chunks): lines end in
CRLF, LF or CR; a line starting with ``:`` is a comment; ``name: value``
drops one space after the colon, a line without a colon is a field with an
empty value; ``data`` lines join with ``"\\n"``; a blank line ends the
message. A message the stream ended in the middle of is never returned.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import httpx

LINE_END = re.compile(rb"\r\n|\r|\n")
HEARTBEAT = "heartbeat"  # the server's keep-alive message type: not an event


class SSEReader:
    """The messages of one event stream, in order; each read may have a deadline (TimeoutError).

    ``next_message`` gives a message's fields as on the wire (``id``,
    ``event``, ``retry``, ``data``; comments left out); ``next_event`` the
    JSON ``data`` of the next one that carries an event, heartbeats skipped;
    ``each_event`` all of them until the stream ends; ``next_line`` the raw
    lines, for framing checks. They read from one
    buffer: use one of them per stream. The end of the stream is ``EOFError``.
    """

    def __init__(
        self,
        chunks: AsyncIterable[bytes],
        *,
        deadline: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        self.response = response
        self.deadline = deadline  # each read's, unless it names its own
        self.last_event_id = ""  # the standard's "last event ID": the latest ``id`` field seen
        self._lines = self._read_lines(chunks)

    @classmethod
    def of(cls, response: httpx.Response, *, deadline: float | None = None) -> SSEReader:
        """The reader of a streamed httpx response (``client.stream(...)``)."""
        return cls(response.aiter_bytes(), deadline=deadline, response=response)

    @staticmethod
    async def _read_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
        buffer = b""
        first = True
        async for chunk in chunks:
            buffer += chunk
            # A CR at the end may be the first half of a CRLF: it waits for the next chunk.
            held = b"\r" if buffer.endswith(b"\r") else b""
            *lines, buffer = LINE_END.split(buffer[: len(buffer) - len(held)])
            buffer += held
            for line in lines:
                text = line.decode("utf-8", errors="replace")
                if first:
                    text, first = text.removeprefix("\ufeff"), False
                yield text
        if buffer == b"\r":
            yield ""  # the stream's last line ended in a lone CR

    async def _within(self, read: Any, deadline: float | None) -> Any:
        chosen = self.deadline if deadline is None else deadline
        return await (read if chosen is None else asyncio.wait_for(read, chosen))

    async def next_line(self, deadline: float | None = None) -> str:
        """The next raw line, without its line end."""
        return await self._within(self._next_line(), deadline)

    async def _next_line(self) -> str:
        try:
            return await anext(self._lines)
        except StopAsyncIteration:
            raise EOFError("the event stream ended") from None

    async def next_message(self, deadline: float | None = None) -> dict[str, str]:
        """The fields of the next message with at least one field (``data`` lines joined)."""
        return await self._within(self._next_message(), deadline)

    async def _next_message(self) -> dict[str, str]:
        message: dict[str, str] = {}
        data: list[str] = []
        while True:
            line = await self._next_line()
            if line == "":
                if data:
                    message["data"] = "\n".join(data)
                if message:
                    return message
                continue
            if line.startswith(":"):
                continue
            name, colon, value = line.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            else:
                message[name] = value
                if name == "id" and "\0" not in value:
                    self.last_event_id = value

    async def next_event(self, deadline: float | None = None) -> dict[str, Any]:
        """The JSON ``data`` of the next message that is an event (not a heartbeat); one
        deadline for all the messages read on the way."""
        return await self._within(self._next_event(), deadline)

    async def _next_event(self) -> dict[str, Any]:
        while True:
            message = await self._next_message()
            if "data" in message:
                event = json.loads(message["data"])
                if not (isinstance(event, dict) and event.get("type") == HEARTBEAT):
                    return event

    async def each_event(self) -> AsyncIterator[dict[str, Any]]:
        """Every event until the stream ends (no deadline: the caller's to set)."""
        while True:
            try:
                yield await self._next_event()
            except EOFError:
                return
