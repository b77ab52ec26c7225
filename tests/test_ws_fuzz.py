"""The WebSocket fuzzing of ``tests/e2e/test_ws_fuzz.py``, in process: more examples per second.

The same frames and the same expected answers, sent through channels'
``WebsocketCommunicator`` to the project's ASGI application, with the other
client's writes made through the service layer. Without daphne there is no
WebSocket protocol layer: a frame over the limit meets the consumer's own
check (an ``invalid_message`` error frame, and the connection stays open),
frames are whole messages and text is always valid UTF-8. An exception
escaping the consumer fails the example with its traceback, and so does any
``events_app`` record logged with one. How the examples share one event loop
and one set of connections: see that module's docstring.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
import uuid
from typing import Any

import hypothesis.strategies as st
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import example, given

from events_app import services
from events_app.auth import issue_token
from events_app.log import events_after_cursor
from humaninput_project.asgi import application
from tests.e2e.test_ws_fuzz import (
    EXAMPLES,
    FRAME_LIMIT,
    FUZZ_SETTINGS,
    PING,
    Closed,
    Connection,
    Expected,
    Frame,
    FuzzSession,
    answer,
    binaries,
    messages,
    padded_messages,
    padded_ping,
    principals,
    texts,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("own_channel_layer")]

LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")


class CommunicatorConnection(Connection):
    """A connection to the application through ``WebsocketCommunicator``."""

    def __init__(self, communicator: WebsocketCommunicator, *, after: Connection | None = None) -> None:
        self.communicator = communicator
        super().__init__(after=after)

    async def _read(self) -> None:
        while True:
            try:
                message = await self.communicator.receive_output(timeout=3600)
            except Exception as error:  # the consumer raised it
                self.problems.append("".join(traceback.format_exception(error)))
                await self.arrive(Closed(None))
                return
            if message["type"] == "websocket.close":
                await self.arrive(Closed(message.get("code", 1000)))
                return
            text = message.get("text")
            if message["type"] != "websocket.send" or text is None:
                self.problems.append(f"the consumer sent {message!r}")
            else:
                await self.arrive(json.loads(text))

    async def send(self, frame: Frame, wire: str | bytes) -> None:
        # send_input, not send_to, which refuses empty frames (a client can send them).
        key = "bytes" if isinstance(wire, bytes) else "text"
        await self.communicator.send_input({"type": "websocket.receive", key: wire})

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.wait({self._reader})
        await self.communicator.disconnect()


class InProcessFuzzSession(FuzzSession):
    """The session against the ASGI application in this process, writing through ``services``."""

    def __init__(self, *, api_key: str, execution_id: str, app_log: Any) -> None:
        super().__init__(execution_id=execution_id, oversized=Expected.error("invalid_message"))
        self.tokens = {"respond": api_key}
        self.app_log = app_log
        self.log_seen = 0

    async def start(self, *, other_execution_id: str) -> None:
        token, _ = await database_sync_to_async(issue_token)(execution_id=self.execution_id, scope="read")
        self.tokens["read"] = token
        await super().start(other_execution_id=other_execution_id)

    async def connect(self, via: str, after: Connection | None = None) -> Connection:
        query = f"token={self.tokens[via]}"
        if after and after.last_event_id:
            query += f"&last_event_id={after.last_event_id}"
        communicator = WebsocketCommunicator(application, f"/ws/human-input/{self.execution_id}?{query}")
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        return CommunicatorConnection(communicator, after=after)

    async def write_request(self, *, execution_id: str, prompt: str) -> uuid.UUID:
        request = await database_sync_to_async(services.request_create)(
            execution_id=execution_id, prompt=prompt
        )
        return request.id

    async def resolve_request(self, request_id: uuid.UUID, *, answer: str | None) -> None:
        if answer is None:
            await database_sync_to_async(services.request_cancel)(request_id=request_id)
        else:
            await database_sync_to_async(services.request_respond)(request_id=request_id, response=answer)

    async def log_after(self, event_id: str | None) -> list[dict[str, Any]]:
        cursor = uuid.UUID(event_id) if event_id else None
        _, events = await database_sync_to_async(events_after_cursor)(
            execution_id=self.execution_id, cursor=cursor
        )
        return events

    async def new_log(self) -> str:
        records = self.app_log.records[self.log_seen :]
        self.log_seen += len(records)
        return "\n".join(LOG_FORMAT.format(record) for record in records)


@pytest.fixture
async def session(layer_ready, api_key, execution_id, other_execution_id, app_log):
    fuzz = InProcessFuzzSession(api_key=api_key, execution_id=execution_id, app_log=app_log)
    await fuzz.start(other_execution_id=other_execution_id)
    yield fuzz
    await fuzz.stop()


frames = st.one_of(
    st.builds(Frame, texts),
    st.builds(Frame, messages),
    st.builds(Frame, messages),
    st.builds(Frame, padded_messages),
    st.builds(Frame, binaries),
)


@pytest.mark.timeout(120 + EXAMPLES)
@FUZZ_SETTINGS
@given(burst=st.lists(frames, min_size=1, max_size=3), via=principals)
@example(burst=[Frame("[" * 100_000), padded_ping(FRAME_LIMIT), padded_ping(FRAME_LIMIT + 1)], via="respond")
@example(burst=[Frame(b"\x00\x01binary"), Frame(PING)], via="read")
@example(
    burst=[answer("pending", "\u202e\U0001f600\ufffe\u200f", ensure_ascii=False), answer("pending", "x")],
    via="respond",
)
async def test_every_frame_gets_the_spec_answer_in_process(session, burst, via):
    await session.exercise(burst, via)
