"""Hostile clients against a real daphne: bad tokens by the thousand, clients that never read,
connections dropped at every stage.

What daphne refuses before Django sees a request is part of the contract
too, and never a 5xx: Twisted closes the connection without an answer when
the request line or one header line passes its 16 KiB line limit, and
answers 400 when all headers together pass 16 KiB; daphne answers 400 to
raw (not percent-encoded) non-ASCII bytes in the path or query, and to a
header value holding a byte of ``daphne.utils.INVALID_HEADER_VALUE_BYTES``
(0x85 among them, which is part of many letters' UTF-8).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import socket
import string
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from channels.db import database_sync_to_async
from daphne.utils import INVALID_HEADER_VALUE_BYTES
from django.conf import settings
from django.db import connection

import harness.redis
from events_app.auth import MAX_TOKEN_LENGTH, issue_token
from events_app.events import group_name

from ..conftest import eventually, uses_postgres, uses_redis
from .conftest import CATCH_UP_SECONDS, DEADLINE, REQUESTS, bearer, running_server, sse_connect

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Twisted's LineReceiver.MAX_LENGTH and HTTPChannel.totalHeadersSize.
TWISTED_LINE_LIMIT = 16384
UNAUTHENTICATED_CODES = {"not_authenticated", "authentication_failed"}
SERVER_ERROR_IN_ACCESS_LOG = re.compile(r'" 5\d\d ')


# --- what the server says about itself ---------------------------------------------------------


async def scrape(server: Any, api_key: str) -> dict[str, float]:
    """The server's ``/metrics`` as ``{'name{labels}': value}``."""
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        response = await http.get(f"{server.http_url}/metrics", headers=bearer(api_key))
    assert response.status_code == 200
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def subscribers(samples: dict[str, float]) -> dict[str, float]:
    return {
        transport: samples[f'humaninput_subscribers{{transport="{transport}"}}']
        for transport in ("ws", "sse", "poll")
    }


def dropped(samples: dict[str, float]) -> dict[str, float]:
    return {
        transport: samples[f'humaninput_slow_clients_dropped_total{{transport="{transport}"}}']
        for transport in ("http", "ws")
    }


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


# --- raw sockets: what no client library would send, and clients that misbehave -----------------


def raw_get(path: str | bytes, headers: dict[str, str] | None = None) -> bytes:
    target = path if isinstance(path, bytes) else path.encode()
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [f"{name}: {value}".encode() for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def ws_upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    return raw_get(path, {**upgrade, "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"})


async def open_raw(
    server: Any, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``server``; a small ``receive_buffer`` makes a client that stops
    reading fill up after a few KiB instead of the kernel's megabytes."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    # A small limit: the stream reads no more than that ahead of us.
    return await asyncio.open_connection(sock=sock, limit=4096)


def reset(writer: asyncio.StreamWriter) -> None:
    """Vanish with a TCP reset: no FIN, no WebSocket close frame."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_until(reader: asyncio.StreamReader, marker: bytes, deadline: float = DEADLINE) -> bytes:
    """What ``reader`` gets up to and including ``marker``, and not a byte more."""
    try:
        return await asyncio.wait_for(reader.readuntil(marker), deadline)
    except asyncio.IncompleteReadError as error:
        raise EOFError(f"closed before {marker!r}: {error.partial[:300]!r}") from None


async def closed_by_server(reader: asyncio.StreamReader, deadline: float = DEADLINE) -> bool:
    """Read (and discard) until the server has closed or reset the connection."""

    async def drain() -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 20):
                pass

    await asyncio.wait_for(drain(), deadline)
    return True


async def raw_answer(server: Any, request: bytes) -> bytes:
    """Send ``request`` on a connection of its own: the status line the server answers with,
    or ``b""`` if it closes without answering."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):  # it may close before it has read all of it
            await writer.drain()
        try:
            return (await asyncio.wait_for(reader.readline(), DEADLINE)).rstrip(b"\r\n")
        except ConnectionError:
            return b""
    finally:
        writer.transport.abort()


# --- 1. ten thousand bad tokens ----------------------------------------------------------------

BAD_TOKEN_REQUESTS = 10_000
SEED = 20261126


@dataclass(frozen=True)
class Attempt:
    transport: str  # "rest", "poll", "sse", "ws"; "raw": bytes no client library would send
    kind: str
    token: str | bytes  # for "raw", the whole request
    via: str = "query"  # or "header"

    @property
    def expected(self) -> str:
        """The contract's answer: 401 (WS: close 4401); for raw requests, what daphne says."""
        if self.transport == "ws":
            return "4401"
        if self.via == "header" and INVALID_HEADER_VALUE_BYTES.intersection(header_value(self.token)):
            return "400"  # see the module docstring
        return RAW_EXPECTED.get(self.kind, "401")


RAW_EXPECTED = {
    "request-line-over-16KiB": "closed",
    "header-line-over-16KiB": "closed",
    "headers-over-16KiB": "400",
    "raw-non-ascii-query": "400",
    "header-byte-daphne-refuses": "400",
}


def non_ascii(rng: random.Random) -> str:
    """Letters of several scripts, emoji, combining and zero-width characters; no controls."""
    blocks = [(0xA0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF)]
    blocks += [(0x200B, 0x200F), (0x4E00, 0x4FFF), (0xFF01, 0xFF5E), (0x1F300, 0x1F64F)]
    return "".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(1, 40)))


def one_char_changed(rng: random.Random, secret: str) -> str:
    position = rng.randrange(len(secret))
    other = rng.choice([c for c in string.ascii_letters + string.digits if c != secret[position]])
    return secret[:position] + other + secret[position + 1 :]


def token_makers(api_key: str, scoped: str) -> dict[str, Callable[[random.Random], str]]:
    """Each kind of bad token, made from a random source (a valid scoped token to tamper with too)."""
    urlsafe = string.ascii_letters + string.digits + "-_.~:"
    return {
        "random": lambda rng: "".join(rng.choices(urlsafe, k=rng.randint(1, 80))),
        "key-prefix": lambda rng: api_key[: rng.randint(1, len(api_key) - 1)],
        "key-one-char-changed": lambda rng: one_char_changed(rng, api_key),
        "key-plus-one": lambda rng: api_key + rng.choice(urlsafe),
        "key-inside-spaces": lambda rng: f" {api_key} x",
        "scoped-prefix": lambda rng: scoped[: rng.randint(1, len(scoped) - 1)],
        "scoped-one-char-changed": lambda rng: one_char_changed(rng, scoped),
        "non-ascii": non_ascii,
        "key-then-non-ascii": lambda rng: api_key + non_ascii(rng),
        "over-max-length": lambda rng: "k" * rng.randint(MAX_TOKEN_LENGTH + 1, 3 * MAX_TOKEN_LENGTH),
        "empty": lambda rng: "",
        "whitespace": lambda rng: "".join(rng.choices(" \t", k=rng.randint(1, 6))),
        "control-characters": lambda rng: "".join(chr(rng.choice([0, 1, 9, 10, 13, 27, 127])) for _ in "abc"),
    }


def raw_attempts(execution_id: str) -> list[Attempt]:
    """Requests only a raw socket sends: oversized lines and headers, raw non-ASCII bytes, bad bytes."""
    poll_path = f"/poll/human-input/{execution_id}"
    paths = [poll_path, f"/events/human-input/{execution_id}", f"/ws/human-input/{execution_id}", REQUESTS]
    attempts = []
    for size in (TWISTED_LINE_LIMIT + 1, 100_000, 1_000_000):
        for path in paths:
            query, header = raw_get(f"{path}?token={'q' * size}"), raw_get(path, bearer("h" * size))
            attempts.append(Attempt("raw", "request-line-over-16KiB", query))
            attempts.append(Attempt("raw", "header-line-over-16KiB", header))
    for parts in (2, 3, 8):
        padding = {f"X-Pad-{n}": "p" * (TWISTED_LINE_LIMIT // parts) for n in range(parts)}
        attempts.append(Attempt("raw", "headers-over-16KiB", raw_get(poll_path, {**bearer("k"), **padding})))
    for token in ("clé".encode(), "🔑".encode(), b"\xff\xfe", b"\x80"):
        for path in paths:
            attempts.append(
                Attempt("raw", "raw-non-ascii-query", raw_get(path.encode() + b"?token=" + token))
            )
        header = raw_get(poll_path).replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " + token + b"\r\n\r\n")
        attempts.append(Attempt("raw", "latin-1-bytes-in-header", header))
    for byte in (b"\x0b", b"\x0c", b"\x85"):
        header = raw_get(poll_path).replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer x" + byte + b"y\r\n\r\n")
        attempts.append(Attempt("raw", "header-byte-daphne-refuses", header))
    return attempts


def plan_bad_tokens(api_key: str, execution_id: str, total: int, seed: int) -> list[Attempt]:
    """``total`` attempts: every kind of bad token over every transport, plus the raw ones."""
    rng = random.Random(seed)
    scoped, _ = issue_token(execution_id=execution_id, scope="read")
    makers = token_makers(api_key, scoped)
    attempts = raw_attempts(execution_id)
    # REST refusals cost the server twice what the others do (a thread per request).
    transports = ["rest"] * 2 + ["poll"] * 3 + ["sse"] * 3 + ["ws"]
    while len(attempts) < total:
        transport, kind = rng.choice(transports), rng.choice(list(makers))
        token = makers[kind](rng)
        via = "header" if transport == "rest" or (transport != "ws" and rng.random() < 0.25) else "query"
        if via == "header" and any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in token):
            via = "query"  # no client can put these in a header; the raw attempts cover that
        attempts.append(Attempt(transport, kind, token, via))
    rng.shuffle(attempts)
    return attempts


def header_value(token: str | bytes) -> bytes:
    """``Bearer <token>`` as a client sends it: UTF-8 bytes, and no trailing whitespace
    (it is not part of a header value: HTTP strips it and h11 refuses to send it)."""
    assert isinstance(token, str)
    return f"Bearer {token}".encode().rstrip(b" \t")


class KeepAlive:
    """Keep-alive HTTP/1.1 connections to ``server``, lent out one request at a time.

    A raw client rather than httpx: at ten thousand requests the client's own
    cost decides how long the test takes, and a raw request says exactly which
    bytes went out.
    """

    def __init__(self, server: Any) -> None:
        self.server = server
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def request(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, headers and body; a 200 (a stream, for a bad token) is not read, its connection closed."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
            self.opened.append(writer)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        status_line, *lines = head[:-4].split(b"\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
        if status_line.split(b" ")[1] == b"200" or b"content-length" not in headers:
            writer.transport.abort()
            return int(status_line.split(b" ")[1]), headers, b""
        body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), DEADLINE)
        self.idle.append((reader, writer))
        return int(status_line.split(b" ")[1]), headers, body

    def close(self) -> None:
        for writer in self.opened:
            writer.transport.abort()


async def http_outcome(client: KeepAlive, attempt: Attempt, execution_id: str) -> str:
    path = {
        "rest": REQUESTS,
        "poll": f"/poll/human-input/{execution_id}",
        "sse": f"/events/human-input/{execution_id}",
    }[attempt.transport]
    assert isinstance(attempt.token, str)
    if attempt.via == "header":
        request = raw_get(path).replace(
            b"\r\n\r\n", b"\r\nAuthorization: " + header_value(attempt.token) + b"\r\n\r\n"
        )
    else:
        request = raw_get(f"{path}?token={quote(attempt.token, safe='')}")
    status, headers, body = await client.request(request)
    if status != 401:
        return str(status)
    if json.loads(body).get("code") not in UNAUTHENTICATED_CODES:
        return f"401 with {body[:100]!r}"
    if not headers.get(b"www-authenticate", b"").startswith(b"Bearer"):
        return "401 without a Bearer challenge"
    return "401"


async def close_code(reader: asyncio.StreamReader) -> str:
    """The close code of the server's first frame after its handshake answer (or that
    answer's HTTP status if it is not 101)."""
    head = await read_until(reader, b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    if status != "101":
        return status
    # Server frames are not masked: opcode, length, payload.
    opcode, length = await asyncio.wait_for(reader.readexactly(2), DEADLINE)
    payload = await asyncio.wait_for(reader.readexactly(length & 0x7F), DEADLINE)
    if opcode & 0x0F != 0x8:
        return f"frame {opcode:#x} {payload[:60]!r}"
    return str(int.from_bytes(payload[:2], "big"))


async def ws_outcome(server: Any, attempt: Attempt, execution_id: str) -> str:
    assert isinstance(attempt.token, str)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(ws_upgrade(f"/ws/human-input/{execution_id}?token={quote(attempt.token, safe='')}"))
        return await close_code(reader)
    finally:
        writer.transport.abort()


async def raw_outcome(server: Any, attempt: Attempt) -> str:
    assert isinstance(attempt.token, bytes)
    status_line = await raw_answer(server, attempt.token)
    return status_line.split(b" ")[1].decode() if status_line else "closed"


@pytest.mark.timeout(300)  # about 30 s on an idle 2-core machine; allow for a busy one
async def test_ten_thousand_bad_tokens_are_all_refused_and_none_is_a_5xx(server, api_key, execution_id):
    """Random, truncated, one character off, non-ASCII, too long, empty, blank and control
    tokens, over REST (Bearer), poll and SSE (mostly ``?token=``, some Bearer) and WebSocket
    handshakes, 48 at a time; plus what only a raw socket sends. Each gets its answer,
    the access log holds no 5xx, and the server still serves the key."""
    attempts = plan_bad_tokens(api_key, execution_id, BAD_TOKEN_REQUESTS, SEED)
    at_once = asyncio.Semaphore(48)
    outcomes: Counter[tuple[str, str, str]] = Counter()
    wrong: list[tuple[Attempt, str]] = []
    client = KeepAlive(server)

    async def attempt_one(attempt: Attempt) -> None:
        async with at_once:
            try:
                if attempt.transport == "raw":
                    outcome = await raw_outcome(server, attempt)
                elif attempt.transport == "ws":
                    outcome = await ws_outcome(server, attempt, execution_id)
                else:
                    outcome = await http_outcome(client, attempt, execution_id)
            except Exception as error:  # counted and shown with the rest
                outcome = f"{type(error).__name__}: {error}"[:120]
        outcomes[attempt.transport, attempt.kind, outcome] += 1
        if outcome != attempt.expected:
            wrong.append((attempt, outcome))

    try:
        await asyncio.gather(*(attempt_one(attempt) for attempt in attempts))
    finally:
        client.close()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as http:
        healthy = await http.get("/health")
        allowed = await http.get(REQUESTS, headers=bearer(api_key))

    assert sum(outcomes.values()) == BAD_TOKEN_REQUESTS
    assert not wrong, (
        Counter((a.transport, a.kind, a.via, got) for a, got in wrong),
        [(a.transport, a.kind, a.via, repr(a.token)[:60], got) for a, got in wrong[:10]],
    )
    assert {transport for transport, _, _ in outcomes} == {"rest", "poll", "sse", "ws", "raw"}
    assert not SERVER_ERROR_IN_ACCESS_LOG.search(server.log())
    assert healthy.status_code == 200
    assert allowed.status_code == 200


async def test_a_client_too_slow_to_answer_the_close_still_reads_its_4401(server, execution_id):
    """The server gives up on the closing handshake after a second; what it sent before
    (the 101 and the close frame with 4401) must still reach a client that reads later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = f"127.0.0.1:{writer.get_extra_info('sockname')[1]} "
    try:
        writer.write(ws_upgrade(f"/ws/human-input/{execution_id}?token=wrong"))

        async def server_gave_up() -> bool:
            return any(client in line and "WSDISCONNECT" in line for line in server.log().splitlines())

        await eventually(server_gave_up, what="the server to close the connection")
        assert await close_code(reader) == "4401"
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # then a FIN, not a reset
    finally:
        writer.transport.abort()


# --- 2. clients that never read ------------------------------------------------------------------

SLOW_LIMIT = 512 * 1024
SLOW_TIMEOUT = 0.5
SLOW_CLIENTS_PER_TRANSPORT = 5
BIG_EVENTS = 160
BIG_TEXT = 60_000  # prompt and context each: an event of about 120 KB on the wire
# What the server may gain besides the slow clients' buffers: the database's
# caches, the events in flight, the allocator's slack. Without the bound the
# slow clients alone cost 10 x 160 x 120 KB, about 190 MiB, here.
OTHER_GROWTH_MIB = 64


async def write_big_events(api: httpx.AsyncClient, execution_id: str, count: int, sample: Callable) -> None:
    for number in range(count):
        prompt = f"{number} " + "p" * BIG_TEXT
        body = {"execution_id": execution_id, "prompt": prompt, "context": "c" * BIG_TEXT}
        response = await api.post(REQUESTS, json=body)
        assert response.status_code == 201, response.text[:300]
        sample()


async def read_ws(url: str, count: int) -> list[int]:
    async with websockets.connect(url, max_size=None, max_queue=None) as ws:
        return [json.loads(await asyncio.wait_for(ws.recv(), 60))["sequence"] for _ in range(count)]


async def read_sse(server: Any, execution_id: str, token: str, count: int) -> list[int]:
    async with sse_connect(server, execution_id, read_timeout=60, token=token) as stream:
        return [(await stream.next_event(60))["sequence"] for _ in range(count)]


async def test_clients_that_stop_reading_are_dropped_and_the_server_memory_stays_bounded(
    tmp_path, api_key, execution_id
):
    """Five SSE and five WebSocket clients stop reading; 160 events of 120 KB follow.

    Every delivery is one doorbell (the catch-up is 60 s and every write goes
    through the server), so what is measured is the transport's buffer. A
    subscriber that reads a backlog from the log holds all of it while it
    sends; that cost is the log reader's, not the transport's.
    """
    env = {
        "HUMANINPUT_MAX_CLIENT_BUFFER_BYTES": str(SLOW_LIMIT),
        "HUMANINPUT_SLOW_CLIENT_TIMEOUT_SECONDS": str(SLOW_TIMEOUT),
        "HUMANINPUT_CATCHUP_SECONDS": "60",
    }
    query = f"/human-input/{execution_id}?token={api_key}"
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    readers: list[asyncio.Task[list[int]]] = []
    with running_server(tmp_path, **env) as server:
        try:
            for _ in range(SLOW_CLIENTS_PER_TRANSPORT):
                for request in (raw_get(f"/events{query}"), ws_upgrade(f"/ws{query}")):
                    reader, writer = await open_raw(server, receive_buffer=4096)
                    writer.write(request)  # and never read
                    slow.append((reader, writer))
            # Clients that read everything, on the same server, at the same time.
            readers.append(asyncio.create_task(read_ws(f"{server.ws_url}/ws{query}", BIG_EVENTS)))
            readers.append(asyncio.create_task(read_sse(server, execution_id, api_key, BIG_EVENTS)))
            everyone = SLOW_CLIENTS_PER_TRANSPORT + 1
            await eventually(
                lambda: scrape(server, api_key),
                accept=lambda samples: subscribers(samples) == {"ws": everyone, "sse": everyone, "poll": 0},
                what="every client subscribed",
            )
            before = peak = rss_mib(server.process.pid)

            def sample() -> None:
                nonlocal peak
                peak = max(peak, rss_mib(server.process.pid))

            async with httpx.AsyncClient(
                base_url=server.http_url, headers=bearer(api_key), timeout=60
            ) as api:
                await write_big_events(api, execution_id, BIG_EVENTS, sample)
            received = await asyncio.wait_for(asyncio.gather(*readers), 120)

            async def dropped_and_subscribed() -> tuple[dict[str, float], dict[str, float]]:
                samples = await scrape(server, api_key)
                return dropped(samples), subscribers(samples)

            each = SLOW_CLIENTS_PER_TRANSPORT
            await eventually(
                dropped_and_subscribed,
                # The readers have gone too: no subscription may be left.
                accept=lambda state: state == ({"http": each, "ws": each}, {"ws": 0, "sse": 0, "poll": 0}),
                what="every slow client dropped and every subscription given back",
            )
            for reader, _ in slow:
                assert await closed_by_server(reader)
            after = rss_mib(server.process.pid)
        finally:
            for task in readers:
                task.cancel()
            for _, writer in slow:
                writer.transport.abort()
    print(f"server RSS: before {before:.0f} MiB, peak {peak:.0f} MiB, after {after:.0f} MiB")

    assert received == [list(range(1, BIG_EVENTS + 1))] * 2
    # Each slow client's buffer, plus one event being written into it and one
    # on its way (an event is held as text and as bytes).
    per_client = SLOW_LIMIT + 4 * 2 * BIG_TEXT
    bound = 2 * SLOW_CLIENTS_PER_TRANSPORT * per_client / 2**20 + OTHER_GROWTH_MIB
    assert peak - before <= bound, f"grew {peak - before:.0f} MiB, bound {bound:.0f} MiB"


# --- 3. connections dropped at every stage --------------------------------------------------------

CHURN_BATCH = 50
LONG_POLLS_PER_BATCH = 40
LONG_POLL_BATCHES = 3
# Tasks an idle server may run beyond those it ran before (a request being
# served as we count, say); a leak of one task
# per dropped connection would be hundreds.
TASKS_SLACK = 3


async def ws_reset_after_replay(server: Any, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(ws_upgrade(f"/ws{path}"))
    await read_until(reader, b'"sequence"')
    reset(writer)


async def ws_fin_after_replay(server: Any, path: str) -> None:
    """Close the TCP connection cleanly, but without a WebSocket close frame."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(ws_upgrade(f"/ws{path}"))
    await read_until(reader, b'"sequence"')
    writer.transport.close()


async def ws_reset_after_101(server: Any, path: str) -> None:
    """Gone while the consumer authenticates and replays."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(ws_upgrade(f"/ws{path}"))
    await read_until(reader, b"\r\n\r\n")
    reset(writer)


async def ws_reset_mid_handshake(server: Any, path: str) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = ws_upgrade(f"/ws{path}")
    writer.write(request[: len(request) // 2])
    await writer.drain()
    reset(writer)


async def sse_reset_after_replay(server: Any, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw_get(f"/events{path}"))
    await read_until(reader, b"\nid: ")
    reset(writer)


async def sse_fin_after_replay(server: Any, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw_get(f"/events{path}"))
    await read_until(reader, b"\nid: ")
    writer.transport.close()


async def sse_reset_before_answer(server: Any, path: str) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw_get(f"/events{path}"))
    await writer.drain()
    reset(writer)


async def poll_reset_mid_request(server: Any, path: str) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = raw_get(f"/poll{path}&wait=30")
    writer.write(request[: len(request) // 2])
    await writer.drain()
    reset(writer)


STREAM_DROPS = [
    ws_reset_after_replay,
    ws_fin_after_replay,
    ws_reset_after_101,
    ws_reset_mid_handshake,
    sse_reset_after_replay,
    sse_fin_after_replay,
    sse_reset_before_answer,
    poll_reset_mid_request,
]
STREAM_DROP_COUNT = 1000 - LONG_POLL_BATCHES * LONG_POLLS_PER_BATCH


async def asyncio_tasks(server: Any, api_key: str) -> float:
    return (await scrape(server, api_key))["humaninput_asyncio_tasks"]


def sqlite_connections(pid: int) -> int:
    """Open descriptors of the test database file in the server process: one per SQLite connection."""
    database = os.path.realpath(settings.DATABASES["default"]["NAME"])
    fds = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):  # closed while we looked
            count += os.readlink(f"{fds}/{fd}") == database
    return count


@database_sync_to_async
def postgres_connections(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
        )
        return cursor.fetchone()[0]


async def redis_group_members(execution_id: str) -> int:
    """Members of the execution's group as Redis holds them."""
    store = harness.redis.async_client(settings.REDIS_URL)
    try:
        return await harness.redis.group_members(
            store, group_name(execution_id), settings.REDIS_CHANNEL_LAYER
        )
    finally:
        await store.aclose()


async def test_a_thousand_connections_dropped_abruptly_leave_no_task_membership_or_connection(
    tmp_path, api_key, execution_id
):
    """120 long polls dropped while parked, then 880 WebSocket, SSE and poll connections
    reset or closed at every stage (mid-handshake, before the answer, mid-replay) while
    events keep coming. Afterwards the server's subscribers, asyncio tasks, group
    memberships (the in-memory layer's, or Redis's) and database connections are back
    where an idle server has them, and a new subscriber still gets every event."""
    application_name = f"humaninput-hostile-{os.getpid()}"
    env = {
        "HUMANINPUT_CATCHUP_SECONDS": CATCH_UP_SECONDS,
        "PGAPPNAME": application_name,
        # No pool: every database connection the server holds is one it forgot to close.
        "DATABASE_POOL_MAX_SIZE": "0",
    }
    with running_server(tmp_path, **env) as server:
        pid = server.process.pid

        async def database_connections() -> int:
            if uses_postgres():
                return await postgres_connections(application_name)
            return sqlite_connections(pid)

        async with httpx.AsyncClient(
            base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE
        ) as api:
            assert (
                await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "?"})
            ).status_code == 201
            first = (await api.get(f"/poll/human-input/{execution_id}")).json()["events"][0]["event_id"]
            path = f"/human-input/{execution_id}?token={api_key}"
            # Warm up (lazy imports, the database thread), then read what an idle server holds.
            for drop in STREAM_DROPS:
                await drop(server, path)
            idle = {"ws": 0, "sse": 0, "poll": 0}
            await eventually(lambda: scrape(server, api_key), accept=lambda s: subscribers(s) == idle)
            before = await scrape(server, api_key)
            tasks_before = before["humaninput_asyncio_tasks"]

            # Long polls parked on the newest event, dropped while they wait.
            for _ in range(LONG_POLL_BATCHES):
                parked = []
                for _ in range(LONG_POLLS_PER_BATCH):
                    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
                    writer.write(raw_get(f"/poll{path}&wait=30&last_event_id={first}"))
                    parked.append(writer)
                await eventually(
                    lambda: scrape(server, api_key),
                    accept=lambda s: subscribers(s)["poll"] == LONG_POLLS_PER_BATCH,
                    what="the long polls parked",
                )
                for number, writer in enumerate(parked):
                    if number % 2:
                        reset(writer)
                    else:
                        writer.transport.close()

            # Streams dropped at every stage, while events keep coming (some mid-stream).
            writing = True

            async def keep_writing() -> int:
                written = 0
                while writing:
                    body = {"execution_id": execution_id, "prompt": f"mid-stream {written}"}
                    assert (await api.post(REQUESTS, json=body)).status_code == 201
                    written += 1
                return written

            writer_task = asyncio.create_task(keep_writing())
            at_once = asyncio.Semaphore(CHURN_BATCH)

            async def drop_one(number: int) -> None:
                async with at_once:
                    await STREAM_DROPS[number % len(STREAM_DROPS)](server, path)

            results = await asyncio.gather(
                *(drop_one(n) for n in range(STREAM_DROP_COUNT)), return_exceptions=True
            )
            writing = False
            written = await writer_task
            assert [r for r in results if r is not None] == []

            await eventually(
                lambda: scrape(server, api_key),
                accept=lambda s: subscribers(s) == idle,
                what="every subscription given back",
            )
            tasks_after = await eventually(
                lambda: asyncio_tasks(server, api_key),
                accept=lambda tasks: tasks <= tasks_before + TASKS_SLACK,
                what=f"the task count back to its idle {tasks_before:g} (+{TASKS_SLACK})",
            )
            if uses_redis():
                members = await eventually(
                    lambda: redis_group_members(execution_id),
                    accept=lambda n: n == 0,
                    what="no group member in Redis",
                )
            else:
                gauge = "humaninput_channel_layer_group_members"
                members = (
                    await eventually(
                        lambda: scrape(server, api_key),
                        accept=lambda s: s[gauge] == before[gauge],
                        what="the in-memory layer's groups back to their idle members",
                    )
                )[gauge]
            connections = await eventually(
                database_connections, accept=lambda n: n == 0, what="no database connection held"
            )
            print(
                f"after 1000 dropped connections and {written} events written: "
                f"tasks {tasks_before:g} -> {tasks_after:g}, group members {members:g}, "
                f"database connections {connections}"
            )

            # And the server still serves: a new subscriber gets the next event.
            async with websockets.connect(f"{server.ws_url}/ws{path}&last_event_id={first}") as ws:
                assert (
                    await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "after"})
                ).status_code == 201
                sequences = [
                    json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))["sequence"]
                    for _ in range(written + 1)
                ]
            assert sequences == list(range(2, written + 3))
