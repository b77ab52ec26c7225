"""Hypothesis-generated client frames against a live daphne: only the spec's answers, never a traceback.

For every frame a client can put on the wire (text, binary, fragmented, raw
bytes in a text frame) the spec (section 4) fixes what comes back:

- over 64 KiB (``HUMANINPUT_WS_MAX_MESSAGE_BYTES``): close 1009;
- a text frame that is not UTF-8: close 1007 (RFC 6455 section 8.1 requires
  failing the connection; daphne's autobahn does);
- binary, not JSON, not an object, an unknown ``type``, a ``respond`` the
  connection may not make or that names a bad / unknown / foreign / resolved
  request or carries a bad answer: one ``{"type": "error", "code", "detail"}``
  frame, and the connection stays open;
- ``{"type": "ping"}``: one pong;
- a good ``respond``: no reply, but every subscriber gets the request's
  ``human_input_completed`` with the answer, character for character.

Each example sends a short burst of frames back to back and then a ping.
``expectation`` computes each frame's answer from the bytes sent, and the
replies up to the ping's pong must be exactly those, in order (so "no reply"
is observed, not waited for). Meanwhile a request is written through the REST
API, and a bystander connection on the same execution, which never sends
anything, must receive it and hold exactly the log the poll API returns;
every connection checks that its events arrive once each, in ``sequence``
order without gaps (across reconnects, by cursor). The server log must stay
free of tracebacks, checked after every example so that hypothesis shrinks to
the frames that caused one.

How hypothesis drives asyncio here: ``@given`` on an ``async def`` test is run
by pytest-asyncio, which hands each example's coroutine to the test's one
event loop. The fixtures (the connections, the REST client) are set up once
per test on that same loop and shared by all examples, which is the point:
one long-lived set of connections absorbs every frame, as a real server's
would. Hence ``HealthCheck.function_scoped_fixture`` is suppressed on
purpose. ``HUMANINPUT_FUZZ_EXAMPLES`` sets the number of generated examples
(see docs/fuzzing.md); the ``@example`` cases run every time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import hypothesis.strategies as st
import pytest
import websockets
from hypothesis import HealthCheck, event, example, given, note, settings

from tests.conftest import eventually

from .conftest import DEADLINE, REQUESTS, DaphneServer, unexpected_tracebacks, ws_close_code, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXAMPLES = int(os.environ.get("HUMANINPUT_FUZZ_EXAMPLES", "300"))
# Both fuzz suites (this one and tests/test_ws_fuzz.py): no example database, no per-example deadline
# (a real server is slower on a busy machine), and the blob that reproduces a failure printed.
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FRAME_LIMIT = 64 * 1024  # the spec's limit; the server runs with the default setting
# Valid JSON this deep may be refused as invalid_json: the server's parser
# shares Python's recursion limit with the stack it runs on.
DEEP = 500
PING = json.dumps({"type": "ping"})
PONG = {"type": "pong"}
UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)


# --- what a client sends ---------------------------------------------------------


@dataclass(frozen=True)
class RequestRef:
    """A request of the running session, picked when the example runs: ``which`` one, spelled how."""

    which: str  # "pending", "completed", "cancelled" (this execution) or "foreign" (another one)
    spelling: str  # a key of SPELLINGS


FULLWIDTH_DIGITS = str.maketrans("0123456789", "".join(chr(0xFF10 + digit) for digit in range(10)))
SPELLINGS = {
    "canonical": str,
    "upper": lambda value: str(value).upper(),
    "hex": lambda value: value.hex,
    "braces": lambda value: f"{{{value}}}",
    "urn": lambda value: value.urn,
    "fullwidth digits": lambda value: str(value).translate(FULLWIDTH_DIGITS),
    "spaces": lambda value: f" {value} ",
    "truncated": lambda value: str(value)[:-1],
    "one more digit": lambda value: f"{value}0",
}


@dataclass(frozen=True)
class Message:
    """A JSON object to send; ``RequestRef`` values are resolved, and ``pad`` filled with ``x``
    until the frame is ``pad_to`` bytes, when the example runs."""

    fields: dict[str, Any]
    ensure_ascii: bool = True
    pad: str | None = None
    pad_to: int = 0


@dataclass(frozen=True)
class Frame:
    """One client message: text (``str`` or ``Message``), binary (``bytes``), or raw ``bytes`` in a
    text frame (``raw_text``, which may be invalid UTF-8); sent in ``fragments`` frames."""

    content: str | bytes | Message
    raw_text: bool = False
    fragments: int = 1


def render(message: Message, resolve: Any) -> str:
    fields = {
        name: resolve(value) if isinstance(value, RequestRef) else value
        for name, value in message.fields.items()
    }
    ensure_ascii = message.ensure_ascii
    try:
        json.dumps(fields, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        ensure_ascii = True  # lone surrogates: a client can only send them \u-escaped
    if message.pad is None:
        return json.dumps(fields, ensure_ascii=ensure_ascii)
    fields[message.pad] = ""
    room = message.pad_to - len(json.dumps(fields, ensure_ascii=ensure_ascii).encode())
    fields[message.pad] = "x" * max(room, 0)
    return json.dumps(fields, ensure_ascii=ensure_ascii)


def fragments(data: str | bytes, count: int) -> list[Any]:
    cuts = [len(data) * i // count for i in range(count + 1)]
    return [data[start:end] for start, end in itertools.pairwise(cuts)]


# --- what the spec says comes back -------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """The answer to one frame.

    ``close_code``: the server closes with it. ``pong``: one pong. Otherwise one
    error frame with a code in ``error_codes`` -- unless ``answers`` names a
    request, which the frame may then answer with ``response`` (and must, if
    ``error_codes`` is empty). ``or_invalid_json``: an ``invalid_json`` error
    instead is fine too.
    """

    close_code: int | None = None
    pong: bool = False
    error_codes: frozenset[str] = frozenset()
    answers: uuid.UUID | None = None
    response: str | None = None
    or_invalid_json: bool = False  # JSON deep enough that the server's parser may give up

    @classmethod
    def error(cls, *codes: str) -> Expected:
        return cls(error_codes=frozenset(codes))

    @property
    def answers_for_sure(self) -> bool:
        return self.answers is not None and not self.error_codes and not self.or_invalid_json

    @property
    def closes(self) -> bool:
        return self.close_code is not None

    @property
    def undecided(self) -> bool:
        """Whether the frame may get an error or no reply at all (then the next reply is someone else's)."""
        return self.answers is not None and not self.answers_for_sure

    def describe(self) -> str:
        if self.close_code:
            return f"close {self.close_code}"
        if self.pong:
            return "pong"
        errors = f"error {'/'.join(sorted(self.error_codes))}"
        if self.answers:
            return "answered" if self.answers_for_sure else f"answered or {errors}"
        return errors


CLOSE_1009 = Expected(close_code=1009)


def parse_with_a_fresh_stack(text: str) -> tuple[Any, bool]:
    """``(value, True)``, or ``(None, False)`` if ``text`` is not JSON Python can parse.

    In a new thread, so the parser gets the whole recursion limit: what fails
    here fails on the server, whose stack is deeper.
    """
    result: list[Any] = [None, False]

    def parse() -> None:
        try:
            result[:] = [json.loads(text), True]
        except (ValueError, RecursionError):
            pass

    thread = threading.Thread(target=parse)
    thread.start()
    thread.join()
    return result[0], result[1]


def nesting_depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def storable_text(value: Any) -> bool:
    """A string the service stores: valid Unicode without NUL (the size limit is above the frame limit)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


STATUS_ERRORS = {"pending": set(), "completed": {"already_answered"}, "cancelled": {"conflict"}}


def expectation(
    wire: str | bytes,
    *,
    binary: bool,
    can_respond: bool,
    requests: Mapping[uuid.UUID, str],
    oversized: Expected = CLOSE_1009,
) -> Expected:
    """What the spec promises for ``wire`` sent by a client that ``can_respond`` (or only read).

    ``requests`` maps the ids of existing requests to their status
    (``pending``, ``completed``, ``cancelled``, ``foreign`` for another
    execution's). ``oversized`` is the answer to a frame over the limit.
    """
    size = len(wire) if isinstance(wire, bytes) else len(wire.encode())
    if size > FRAME_LIMIT:
        return oversized
    if binary:
        return Expected.error("invalid_message")
    if isinstance(wire, bytes):
        try:
            wire = wire.decode("utf-8")
        except UnicodeDecodeError:
            return Expected(close_code=1007)
    message, parsed = parse_with_a_fresh_stack(wire)
    if not parsed:
        return Expected.error("invalid_json")
    expected = message_expectation(message, can_respond=can_respond, requests=requests)
    return replace(expected, or_invalid_json=nesting_depth(message) > DEEP)


def message_expectation(message: Any, *, can_respond: bool, requests: Mapping[uuid.UUID, str]) -> Expected:
    if not isinstance(message, dict):
        return Expected.error("invalid_message")
    kind = message.get("type")
    if kind == "ping":
        return Expected(pong=True)
    if kind != "respond":
        return Expected.error("unknown_type")
    # Any one of a respond's faults may be the one reported.
    faults: set[str] = set()
    if not can_respond:
        faults.add("permission_denied")
    response = message.get("response")
    if not storable_text(response):
        faults.add("invalid_parameter")
    request_id = message.get("request_id")
    target: uuid.UUID | None = None
    if isinstance(request_id, str) and UUID_TEXT.fullmatch(request_id):
        target = uuid.UUID(request_id)
        faults |= STATUS_ERRORS.get(requests.get(target, "unknown"), {"not_found"})
    else:
        # One spelling only: no braces, urn: prefix, spaces or full-width digits.
        faults.add("invalid_parameter")
    if faults:
        return Expected(error_codes=frozenset(faults))
    return Expected(error_codes=frozenset(), answers=target, response=response)


# --- the clients ------------------------------------------------------------------------


@dataclass(frozen=True)
class Closed:
    """The server closed the connection with ``code``."""

    code: int | None


def is_error_frame(reply: Any, codes: frozenset[str] | set[str]) -> bool:
    return (
        isinstance(reply, dict)
        and reply.get("type") == "error"
        and isinstance(reply.get("detail"), str)
        and reply.get("code") in codes
    )


class Connection:
    """One client connection, its frames sorted as they arrive (the server never waits on us).

    Events (frames with an ``event_id``) are kept in ``events`` and must come
    once each, in ``sequence`` order without gaps, else ``problems`` says so.
    Everything else the server sends, and finally ``Closed``, is a reply.
    Subclasses read their transport in ``_read``, a task (started here, run
    once the subclass is set up) that calls ``arrive``.
    """

    def __init__(self, *, after: Connection | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.by_request: dict[tuple[Any, Any], dict[str, Any]] = {}
        self.last_sequence = after.last_sequence if after else 0
        self.last_event_id = after.last_event_id if after else None
        self.problems: list[str] = []
        self._replies: deque[Any] = deque()
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        raise NotImplementedError

    async def send(self, frame: Frame, wire: str | bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def arrive(self, frame: Any) -> None:
        async with self._arrived:
            if isinstance(frame, dict) and "event_id" in frame:
                if frame.get("sequence") != self.last_sequence + 1:
                    self.problems.append(
                        f"event {frame.get('sequence')!r} after {self.last_sequence}: {frame}"
                    )
                if isinstance(frame.get("sequence"), int):
                    self.last_sequence = frame["sequence"]
                self.last_event_id = frame["event_id"]
                self.events.append(frame)
                self.by_request[(frame.get("type"), frame.get("request_id"))] = frame
            else:
                self._replies.append(frame)
            self._arrived.notify_all()

    async def _until(self, condition: Any, what: str) -> None:
        async with self._arrived:
            try:
                await asyncio.wait_for(self._arrived.wait_for(condition), DEADLINE)
            except TimeoutError:
                raise AssertionError(f"{what} did not arrive within {DEADLINE} s") from None

    async def peek_reply(self) -> Any:
        """The next reply, left in place."""
        await self._until(lambda: self._replies, "a reply")
        return self._replies[0]

    async def next_reply(self) -> Any:
        await self._until(lambda: self._replies, "a reply")
        return self._replies.popleft()

    async def event(self, event_type: str, request_id: uuid.UUID) -> dict[str, Any]:
        """The ``event_type`` event of ``request_id``, once it has arrived."""
        key = (event_type, str(request_id))
        await self._until(lambda: key in self.by_request, f"{event_type} of {request_id}")
        return self.by_request[key]


class SocketConnection(Connection):
    """A real WebSocket client (the ``websockets`` library)."""

    def __init__(self, ws: Any, *, after: Connection | None = None) -> None:
        self.ws = ws
        super().__init__(after=after)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                try:
                    frame = json.loads(data) if isinstance(data, str) else None
                except ValueError:
                    frame = None
                if frame is None:
                    self.problems.append(f"the server sent a frame that is not JSON text: {data[:200]!r}")
                else:
                    await self.arrive(frame)
        except websockets.ConnectionClosed:
            pass
        await self.arrive(Closed(self.ws.close_code))

    async def send(self, frame: Frame, wire: str | bytes) -> None:
        """Put ``wire`` on the socket as ``frame`` says; the server may close mid-way (oversized)."""
        try:
            if frame.raw_text:
                await self.ws.send(wire, text=True)
            elif frame.fragments > 1:
                await self.ws.send(fragments(wire, frame.fragments))
            else:
                await self.ws.send(wire)
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


# --- one test's connections, requests and checks -----------------------------------------------


class FuzzSession:
    """What all examples of one test share: the connections, the requests, the checks between them.

    ``connections`` holds one fuzzed connection per principal: ``respond``
    (full access) and ``read`` (a read-scoped token); the ``bystander``
    (read-scoped too) never sends anything. ``requests`` maps the ids of the
    requests made for the fuzzing to their status. Subclasses provide the
    transport: connections, writes, reading the log, the server's own log.
    """

    def __init__(self, *, execution_id: str, oversized: Expected = CLOSE_1009) -> None:
        self.execution_id = execution_id
        self.oversized = oversized
        self.requests: dict[uuid.UUID, str] = {}
        self.connections: dict[str, Connection] = {}
        self.bystander: Connection | None = None
        self.bystander_checked = 0  # events of the bystander already compared with the log
        self.writes = 0

    # -- the transport ---------------------------------------------------------------

    async def connect(self, via: str, after: Connection | None = None) -> Connection:
        """A connection as ``via``; a reconnection resumes after the events ``after`` had."""
        raise NotImplementedError

    async def write_request(self, *, execution_id: str, prompt: str) -> uuid.UUID:
        raise NotImplementedError

    async def resolve_request(self, request_id: uuid.UUID, *, answer: str | None) -> None:
        """Answer (or, without ``answer``, cancel) a request, as another client would."""
        raise NotImplementedError

    async def log_after(self, event_id: str | None) -> list[dict[str, Any]]:
        """The execution's events after ``event_id`` (all, for None), as the log holds them."""
        raise NotImplementedError

    async def new_log(self) -> str:
        """What the server logged since the last call."""
        return ""

    # -- the session -----------------------------------------------------------------

    async def start(self, *, other_execution_id: str) -> None:
        self.bystander = await self.connect("read")
        for status, answer_text in (("completed", "answered before the fuzzing"), ("cancelled", None)):
            request_id = await self.create_request()
            await self.resolve_request(request_id, answer=answer_text)
            self.requests[request_id] = status
        foreign = await self.write_request(execution_id=other_execution_id, prompt="elsewhere")
        self.requests[foreign] = "foreign"
        for via in ("respond", "read"):
            self.connections[via] = await self.connect(via)
        pending = await self.create_request()
        self.requests[pending] = "pending"
        await self.settle(last_created=pending)

    async def stop(self) -> None:
        for connection in self.subscribers():
            await connection.close()
        assert not unexpected_tracebacks(await self.new_log())

    async def create_request(self) -> uuid.UUID:
        self.writes += 1
        return await self.write_request(
            execution_id=self.execution_id, prompt=f"written during fuzzing #{self.writes}"
        )

    def resolve(self, ref: RequestRef) -> str:
        """The newest request in ``ref.which`` state, spelled as ``ref`` says."""
        newest = [request_id for request_id, status in self.requests.items() if status == ref.which][-1]
        return SPELLINGS[ref.spelling](newest)

    def wire(self, frame: Frame) -> str | bytes:
        return (
            frame.content if isinstance(frame.content, str | bytes) else render(frame.content, self.resolve)
        )

    def expect(
        self, frame: Frame, wire: str | bytes, via: str, requests: Mapping[uuid.UUID, str]
    ) -> Expected:
        binary = isinstance(wire, bytes) and not frame.raw_text
        expected = expectation(
            wire, binary=binary, can_respond=via == "respond", requests=requests, oversized=self.oversized
        )
        kind = "binary" if binary else "raw text" if frame.raw_text else "text"
        event(f"{kind}: {expected.describe()}")
        shown = wire if len(wire) <= 300 else wire[:200] + wire[-50:]
        note(f"as {via}: {kind} frame of {len(wire)} ({frame.fragments} fragments) {shown!r}: {expected}")
        return expected

    def plan(self, frames: list[Frame], via: str) -> list[tuple[Frame, str | bytes, Expected]]:
        """The frames to send, with their expected answers, up to the first whose outcome is open.

        A frame that may or may not answer a request ends the burst (the next
        reply could be its or the next frame's), and so does a close (nothing
        more is read); a close does not follow an answer in the same burst, as
        the replies to the frames before a close may be lost with the
        connection. So every outcome but the last is certain, and the state
        each frame meets is known.
        """
        requests = dict(self.requests)
        planned: list[tuple[Frame, str | bytes, Expected]] = []
        for frame in frames:
            wire = self.wire(frame)
            expected = self.expect(frame, wire, via, requests)
            if expected.closes and any(earlier.answers for _, _, earlier in planned):
                break
            planned.append((frame, wire, expected))
            if expected.closes or expected.undecided:
                break
            if expected.answers_for_sure:
                requests[expected.answers] = "completed"
        return planned

    async def exercise(self, frames: list[Frame], via: str) -> None:
        """Send ``frames`` back to back as ``via`` while another client writes a request; check all."""
        writing = asyncio.create_task(self.create_request())
        try:
            await self.send_and_check(frames, via)
            created = await writing
        except BaseException:
            # Leave a clean slate for the next example (hypothesis goes on to shrink).
            writing.cancel()
            await asyncio.wait({writing})
            await self.connections[via].close()
            self.connections[via] = await self.connect(via, after=self.connections[via])
            raise
        self.requests[created] = "pending"
        await self.settle(last_created=created)

    async def send_and_check(self, frames: list[Frame], via: str) -> None:
        connection = self.connections[via]
        planned = self.plan(frames, via)
        for frame, wire, _ in planned:
            await connection.send(frame, wire)
        closes = planned[-1][2].closes
        if not closes:
            await connection.send(Frame(PING), PING)
        for index, (_, _, expected) in enumerate(planned):
            if closes and index < len(planned) - 1 and isinstance(await connection.peek_reply(), Closed):
                continue  # the server closed before replying to this frame: the reply is lost
            await self.check_reply(connection, expected)
        if closes:
            self.connections[via] = await self.connect(via, after=connection)
        else:
            reply = await connection.next_reply()
            assert reply == PONG, f"the ping after the frames got {reply!r}, not a pong"

    async def check_reply(self, connection: Connection, expected: Expected) -> None:
        """Take the reply to one frame off ``connection`` (none, for an answer) and check it."""
        if expected.answers_for_sure:
            await self.check_answered(expected)
            return
        reply = await connection.peek_reply()
        if expected.closes:
            assert reply == Closed(expected.close_code), (
                f"expected close {expected.close_code}, got {reply!r}"
            )
        elif expected.or_invalid_json and is_error_frame(reply, {"invalid_json"}):
            pass
        elif expected.pong:
            assert reply == PONG, f"expected a pong, got {reply!r}"
        elif expected.answers is not None and reply == PONG:
            # The last frame of its burst got no error before the ping's pong: it answered.
            await self.check_answered(expected)
            return
        else:
            assert is_error_frame(reply, expected.error_codes), (
                f"expected an error frame with a code in {sorted(expected.error_codes)}, got {reply!r}"
            )
        await connection.next_reply()

    async def check_answered(self, expected: Expected) -> None:
        assert expected.answers is not None
        for connection in self.subscribers():
            completed = await connection.event("human_input_completed", expected.answers)
            assert completed["human_feedback"] == expected.response
        self.requests[expected.answers] = "completed"

    def subscribers(self) -> list[Connection]:
        assert self.bystander is not None
        return [self.bystander, *self.connections.values()]

    async def settle(self, *, last_created: uuid.UUID) -> None:
        """Every subscriber has the request written last; the bystander has exactly the log; no traceback."""
        for connection in self.subscribers():
            await connection.event("human_input_required", last_created)
        assert self.bystander is not None
        checked = self.bystander.events[: self.bystander_checked]
        logged = await self.log_after(checked[-1]["event_id"] if checked else None)
        assert self.bystander.events[self.bystander_checked :] == logged
        self.bystander_checked = len(self.bystander.events)
        for connection in self.subscribers():
            assert not connection.problems, connection.problems
        assert not unexpected_tracebacks(await self.new_log())


class LiveFuzzSession(FuzzSession):
    """The session against a daphne process: WebSockets, the REST API, the poll API and its log."""

    def __init__(self, *, server: DaphneServer, api: Any, api_key: str, execution_id: str) -> None:
        super().__init__(execution_id=execution_id)
        self.server = server
        self.api = api
        self.tokens = {"respond": api_key}
        self.log_offset = 0

    async def start(self, *, other_execution_id: str) -> None:
        token = await self.api.post("/api/tokens", json={"execution_id": self.execution_id, "scope": "read"})
        assert token.status_code == 201, token.text
        self.tokens["read"] = token.json()["token"]
        await super().start(other_execution_id=other_execution_id)

    async def connect(self, via: str, after: Connection | None = None) -> Connection:
        cursor = after.last_event_id if after else None
        ws = await ws_connect(self.server, self.execution_id, token=self.tokens[via], last_event_id=cursor)
        return SocketConnection(ws, after=after)

    async def write_request(self, *, execution_id: str, prompt: str) -> uuid.UUID:
        created = await self.api.post(REQUESTS, json={"execution_id": execution_id, "prompt": prompt})
        assert created.status_code == 201, created.text
        return uuid.UUID(created.json()["id"])

    async def resolve_request(self, request_id: uuid.UUID, *, answer: str | None) -> None:
        action, body = ("respond", {"response": answer}) if answer is not None else ("cancel", {})
        resolved = await self.api.post(f"{REQUESTS}/{request_id}/{action}", json=body)
        assert resolved.status_code == 200, resolved.text

    async def log_after(self, event_id: str | None) -> list[dict[str, Any]]:
        params = {"limit": "1000", **({"last_event_id": event_id} if event_id else {})}
        response = await self.api.get(f"/poll/human-input/{self.execution_id}", params=params)
        assert response.status_code == 200, response.text
        return response.json()["events"]

    async def new_log(self) -> str:
        def read() -> bytes:
            assert self.server.log_path is not None
            with open(self.server.log_path, "rb") as log:
                log.seek(self.log_offset)
                return log.read()

        data = await asyncio.to_thread(read)
        self.log_offset += len(data)
        return data.decode(errors="replace")


@pytest.fixture
async def session(server, api, api_key, execution_id, other_execution_id):
    fuzz = LiveFuzzSession(server=server, api=api, api_key=api_key, execution_id=execution_id)
    await fuzz.start(other_execution_id=other_execution_id)
    yield fuzz
    await fuzz.stop()


# --- strategies -----------------------------------------------------------------------------

EDGE_TEXT = [
    "\x00", "\x01", "\x1b[2J", "\x7f", "\t", "\r\n", "\u0085", "\u00a0", "\u00ad", "\u200b", "\u200d",
    "\u200e", "\u200f", "\u202e", "\u2066", "\u2028", "\u2029", "\ufeff", "\ufdd0", "\ufffe", "\uffff",
    "\ufffd", "\U0001fffe", "\U0010ffff", "e\u0301", "\U0001f600", "\U0001f1fa\U0001f1f8",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\ud800", "\udfff", "\ud83d\ude00", "\ude00\ud83d",
    "\\", '"', "'", "</script>", "${jndi:x}", "%s%n", "null", "-0", "1e400", "ping", "respond",
]  # fmt: skip
# What a client can send in a JSON string: any code point, lone surrogates \u-escaped.
edge_text = st.lists(
    st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=3), st.characters(categories=["Cs"])), max_size=8
).map("".join)
# Text the service can store: no NUL, no lone surrogate (all else goes).
storable_edge_text = st.lists(
    st.one_of(
        st.sampled_from([text for text in EDGE_TEXT if storable_text(text)]),
        st.text(st.characters(exclude_characters="\x00"), max_size=3),
    ),
    max_size=8,
).map("".join)
long_text = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "é", "€", "\U0001f600", "\u200f", "\\", '"', "\x00", "\ud800", "\ufffe"]),
    st.integers(0, 40_000),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | edge_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(edge_text, inner, max_size=4),
    max_leaves=6,
)
extra_fields = st.dictionaries(edge_text, json_values, max_size=2)

request_refs = st.builds(
    RequestRef,
    which=st.sampled_from(["pending", "completed", "cancelled", "foreign"]),
    spelling=st.one_of(st.just("canonical"), st.sampled_from(list(SPELLINGS))),
)
pending_refs = st.builds(
    RequestRef, which=st.just("pending"), spelling=st.sampled_from(["canonical", "upper", "hex"])
)
request_ids = st.one_of(request_refs, st.uuids().map(str), json_values)
responses = st.one_of(edge_text, long_text, json_values)


def message(fields: dict[str, Any], extra: dict[str, Any], ensure_ascii: bool) -> Message:
    return Message({**extra, **fields}, ensure_ascii=ensure_ascii)


messages = st.one_of(
    # pings, with whatever else
    st.builds(message, st.just({"type": "ping"}), extra_fields, st.booleans()),
    # a type that is not ours, or not a string
    st.builds(
        message,
        st.fixed_dictionaries(
            {"type": json_values | st.sampled_from(["PING", " ping", "ping\x00", "pong", ""])}
        ),
        extra_fields,
        st.booleans(),
    ),
    # answers that mostly should work ...
    st.builds(
        message,
        st.fixed_dictionaries(
            {
                "type": st.just("respond"),
                "request_id": pending_refs,
                "response": storable_edge_text | long_text,
            }
        ),
        st.just({}),
        st.booleans(),
    ),
    # ... and any field missing or of any type
    st.builds(
        message,
        st.fixed_dictionaries(
            {"type": st.just("respond")}, optional={"request_id": request_ids, "response": responses}
        ),
        extra_fields,
        st.booleans(),
    ),
)
sizes_around_the_limit = st.one_of(
    st.integers(-4, 4), st.integers(-5_000, 5_000), st.integers(5_000, 200_000)
).map(lambda delta: FRAME_LIMIT + delta)
padded_messages = st.one_of(
    st.builds(Message, st.just({"type": "ping"}), st.booleans(), st.just("pad"), sizes_around_the_limit),
    st.builds(
        Message,
        st.builds(
            lambda ref: {"type": "respond", "request_id": ref, "response": ""},
            request_refs,
        ),
        st.booleans(),
        st.just("response"),
        sizes_around_the_limit,
    ),
)


def nested(shape: str, depth: int, closed: bool) -> str:
    opener, leaf, closer = {
        "list": ("[", "", "]"),
        "object": ('{"a": ', "1", "}"),
        "inside a ping": ("[", "", "]"),
    }[shape]
    text = opener * depth + (leaf + closer * depth if closed else "")
    return '{"type": "ping", "x": ' + text + "}" if shape == "inside a ping" else text


deep_json = st.builds(
    nested,
    st.sampled_from(["list", "object", "inside a ping"]),
    st.one_of(st.integers(1, 50), st.integers(DEEP - 100, 1_500), st.integers(30_000, 110_000)),
    st.booleans(),
)
big_json = st.one_of(
    st.integers(0, 30_000).map(lambda n: json.dumps({"type": "ping", "a": [0] * n})),
    st.integers(0, 10_000).map(lambda n: json.dumps({"type": "ping", **{f"k{i}": i for i in range(n)}})),
    st.integers(0, 20_000).map(lambda n: "[" + ",".join(['"\U0001f600"'] * n) + "]"),
    # Python refuses to parse integers of more than 4300 digits
    st.integers(4_290, 4_310).map(lambda digits: '{"type": "ping", "n": ' + "9" * digits + "}"),
)
VALID_TEXTS = [PING, json.dumps({"type": "respond", "request_id": str(uuid.UUID(int=0)), "response": "ok"})]


def mutate(text: str, at: int, insert: str, how: str) -> str:
    at %= len(text) + 1
    if how == "cut":
        return text[:at]
    if how == "insert":
        return text[:at] + insert + text[at:]
    return text[:at] + insert + text[at + len(insert) :]


texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet='[]{}":,.-+0123456789eEtrufalsn\\ ', max_size=200),
    st.builds(
        mutate, st.sampled_from(VALID_TEXTS), st.integers(0, 200), st.text(max_size=3),
        st.sampled_from(["cut", "insert", "replace"]),
    ),
    json_values.map(json.dumps),
    deep_json,
    big_json,
)  # fmt: skip
INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b'{"type": "ping", "x": "\xe2\x82"}',
]
binaries = st.one_of(
    st.binary(max_size=300),
    st.just(PING.encode()),
    st.builds(lambda fill, size: bytes([fill]) * size, st.integers(0, 255), sizes_around_the_limit),
)
frames = st.one_of(
    st.builds(Frame, texts, fragments=st.integers(1, 3)),
    st.builds(Frame, messages, fragments=st.integers(1, 3)),
    st.builds(Frame, messages),
    st.builds(Frame, padded_messages, fragments=st.integers(1, 3)),
    st.builds(Frame, binaries, fragments=st.integers(1, 3)),
    st.builds(Frame, st.binary(max_size=100) | st.sampled_from(INVALID_UTF8), raw_text=st.just(True)),
)
bursts = st.lists(frames, min_size=1, max_size=3)
principals = st.sampled_from(["respond", "respond", "respond", "read"])


def answer(which: str, response: str, *, spelling: str = "canonical", ensure_ascii: bool = True) -> Frame:
    """A ``respond`` to the newest request in ``which`` state."""
    ref = RequestRef(which, spelling)
    return Frame(Message({"type": "respond", "request_id": ref, "response": response}, ensure_ascii))


def padded_ping(size: int, fragments: int = 1) -> Frame:
    return Frame(Message({"type": "ping"}, pad="pad", pad_to=size), fragments=fragments)


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.timeout(120 + 2 * EXAMPLES)
@FUZZ_SETTINGS
@given(burst=bursts, via=principals)
@example(burst=[Frame("[" * 100_000)], via="respond")
@example(burst=[Frame("[" * 60_000), Frame(PING, fragments=3)], via="respond")
@example(burst=[padded_ping(FRAME_LIMIT), padded_ping(FRAME_LIMIT + 1)], via="respond")
@example(burst=[padded_ping(FRAME_LIMIT + 1, fragments=3)], via="read")
@example(burst=[Frame(b"\x00\x01binary"), Frame(b"\xff", raw_text=True)], via="respond")
@example(
    burst=[
        answer("pending", "\u202e\U0001f600\ufffe\u200f\U0010ffff e\u0301", ensure_ascii=False),
        answer("pending", "second answer to the same request"),
        answer("completed", "x", spelling="upper"),
        answer("foreign", "x"),
    ],
    via="respond",
)
@example(burst=[answer("pending", "\ud83d\ude00")], via="respond")  # an escaped surrogate pair: one emoji
@example(
    burst=[answer("pending", "\ud800"), answer("pending", "a\x00b"), answer("cancelled", "x")], via="respond"
)
@example(burst=[answer("pending", "ok")], via="read")
@example(burst=[Frame('{"type": "ping", "n": ' + "9" * 4_301 + "}")], via="respond")
async def test_every_frame_gets_the_spec_answer_and_other_clients_keep_being_served(session, burst, via):
    await session.exercise(burst, via)


# --- what the fuzzing found -------------------------------------------------------------------


async def ws_subscribers(api: Any) -> float:
    """The server's ``humaninput_subscribers{transport="ws"}``: consumers between connect and disconnect."""
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    prefix = 'humaninput_subscribers{transport="ws"} '
    return next(
        (float(line[len(prefix) :]) for line in response.text.splitlines() if line.startswith(prefix)), 0
    )


async def test_replies_to_a_client_that_is_gone_are_dropped_without_a_traceback(
    server, api, api_key, execution_id
):
    """Found by the fuzzing: pings, then an oversized frame, back to back.

    Daphne closes (1009) on the oversized frame's header while the pings still
    wait for the consumer, whose pongs then meet a closed socket. Autobahn
    raised ``Disconnected``; the consumer died ("Exception inside application"
    in the log) without running ``disconnect``, so its subscription and
    follow task were never given back.
    """
    await eventually(lambda: ws_subscribers(api), accept=lambda n: n == 0, what="no WebSocket subscriber")
    log_before = len(server.log())
    ws = await ws_connect(server, execution_id, token=api_key)
    await eventually(lambda: ws_subscribers(api), accept=lambda n: n == 1, what="the subscriber")
    # One write, so the server reads the pings and the oversized frame's header together.
    for _ in range(50):
        ws.protocol.send_text(PING.encode())
    ws.protocol.send_text(b"x" * (FRAME_LIMIT + 1))
    ws.transport.write(b"".join(ws.protocol.data_to_send()))
    assert await ws_close_code(ws) == 1009
    await eventually(lambda: ws_subscribers(api), accept=lambda n: n == 0, what="the consumer's disconnect")
    assert not unexpected_tracebacks(server.log()[log_before:])


def raw_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """A client frame as RFC 6455 section 5.2 lays it out, rules or not."""
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes([(0x80 if fin else 0) | rsv << 4 | opcode, mask_bit | length])
    else:
        header = bytes([(0x80 if fin else 0) | rsv << 4 | opcode, mask_bit | 126, length >> 8, length & 0xFF])
    if not masked:
        return header + payload
    key = b"\x5a\x17\xc3\x09"
    return header + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


PROTOCOL_VIOLATIONS = {
    "unmasked frame": (raw_frame(1, PING.encode(), masked=False), 1002),
    "reserved opcode": (raw_frame(3, b"x"), 1002),
    "reserved bit set": (raw_frame(1, PING.encode(), rsv=4), 1002),
    "continuation without a start": (raw_frame(0, b"x"), 1002),
    "fragmented ping": (raw_frame(9, b"x", fin=False), 1002),
    "126-byte ping": (raw_frame(9, b"x" * 126), 1002),
    "new message inside a fragmented one": (raw_frame(1, b"{", fin=False) + raw_frame(1, b"}"), 1002),
    "2^63-1 byte length": (bytes([0x81, 0xFF]) + (2**63 - 1).to_bytes(8, "big") + b"mask", 1009),
}


@pytest.mark.parametrize(("violation", "code"), PROTOCOL_VIOLATIONS.values(), ids=PROTOCOL_VIOLATIONS.keys())
async def test_protocol_violations_close_with_their_rfc_code_and_leave_no_traceback(
    server, api, api_key, execution_id, violation, code
):
    """Below the messages: frames that break RFC 6455 itself fail the connection (section 7.4.1)."""
    await eventually(lambda: ws_subscribers(api), accept=lambda n: n == 0, what="no WebSocket subscriber")
    log_before = len(server.log())
    ws = await ws_connect(server, execution_id, token=api_key)
    ws.transport.write(violation)
    assert await ws_close_code(ws) == code
    await eventually(lambda: ws_subscribers(api), accept=lambda n: n == 0, what="the consumer's disconnect")
    assert not unexpected_tracebacks(server.log()[log_before:])
