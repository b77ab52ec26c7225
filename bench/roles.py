"""What one client process does: subscribe, write, poll, or listen on a channel layer directly.

Every role is ``async def role(control, *, index, ...)`` run by ``harness.Worker``
in a process of its own. Subscriber roles follow one command protocol:
``connect`` (open connections, reply ``connected`` once each is open and holds
its replay), ``drain`` (reply ``drained`` once every connection holds events
1..n of its execution, or at the deadline), ``stop`` (return the summary,
once the connections' tasks have ended or a deadline has passed).

Each subscriber checks every event's per-execution ``sequence``: an event
seen before is *duplicated*, one lower than the highest already seen is
*out of order*, one never seen by the end is *lost*. Latency is the receive
time minus the event's ``timestamp`` (the server's write time; one machine,
one clock).

HTTP clients are raw asyncio streams (keep-alive HTTP/1.1, chunked bodies)
rather than a client library, so the load generator costs less CPU than the
server it loads; the SSE subscriber feeds the body to the e2e tests' reader
(``harness.sse``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import websockets
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from bench.harness import API_KEY, Control, on_schedule, release
from harness.sse import SSEReader

HOST = "127.0.0.1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# What events.group_name makes of the short execution ids the bench uses, and the inbox group.
GROUP_PREFIX = "humaninput."
INBOX_GROUP = "humaninput-inbox"
PROMPT = "Deploy release 1.2 to production? All checks are green; the change log is attached."
LONG = 3600.0
# How long ``stop`` waits for the subscribers' tasks to end once cancelled, and once cancelled
# again (a task can ignore its cancellation, see ``LayerSubscriber``).
CANCEL_GRACE = 1.0
STOP_SECONDS = 5.0


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def fake_event(execution_id: str, sequence: int) -> dict[str, Any]:
    """An event shaped and sized like a stored ``human_input_required`` payload, stamped now."""
    return {
        "type": "human_input_required",
        "execution_id": execution_id,
        "crew_id": "",
        "task_id": "",
        "agent_id": "",
        "prompt": PROMPT,
        "context": "bench",
        "timestamp": now_iso(),
        "event_id": str(uuid.uuid4()),
        "reason_flags": {"ambiguity": False, "missing_field": False},
        "request_id": str(uuid.uuid4()),
        "sequence": sequence,
    }


def create_body(execution_id: str) -> bytes:
    return json.dumps({"execution_id": execution_id, "prompt": PROMPT, "context": "bench"}).encode()


# --- raw HTTP/1.1 --------------------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: requests in sequence, bodies by length or chunked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=2**22)

    def send(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in {**AUTH, **(headers or {})}.items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        status_line = await self.reader.readuntil(b"\r\n")
        headers = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() != "chunked":
            yield await self.reader.readexactly(int(headers.get("content-length", "0")))
            return
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            yield (await self.reader.readexactly(size + 2))[:-2]
        await self.reader.readuntil(b"\r\n")

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.send(method, path, body)
        status, headers = await self.head()
        return status, b"".join([chunk async for chunk in self.chunks(headers)])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


# --- subscribers ---------------------------------------------------------------------------------


class OrderCheck:
    """What one subscriber got of one execution: duplicates, out-of-order arrivals, the complete prefix."""

    __slots__ = ("contiguous", "duplicated", "highest", "out_of_order", "seen")

    def __init__(self, after: int = 0) -> None:
        self.seen: set[int] = set(range(1, after + 1))  # what the client held before (its cursor)
        self.highest = self.contiguous = after
        self.duplicated = self.out_of_order = 0

    def add(self, sequence: int) -> bool:
        if sequence in self.seen:
            self.duplicated += 1
            return False
        if sequence < self.highest:
            self.out_of_order += 1
        self.seen.add(sequence)
        self.highest = max(self.highest, sequence)
        while self.contiguous + 1 in self.seen:
            self.contiguous += 1
        return True

    def lost(self, expected: int) -> int:
        return sum(1 for sequence in range(1, expected + 1) if sequence not in self.seen)


class Subscriber:
    """One connection following ``execution_id`` (``"*"``: every execution, like the inbox)."""

    def __init__(self, fleet: Fleet, execution_id: str, cursor: tuple[str, int] | None) -> None:
        self.fleet = fleet
        self.execution_id = execution_id
        self.cursor = cursor[0] if cursor else None
        self.checks: dict[str, OrderCheck] = {execution_id: OrderCheck(cursor[1])} if cursor else {}
        self.changed = asyncio.Event()
        self.error: str | None = None

    def deliver(self, event: dict[str, Any]) -> None:
        received = time.time()
        check = self.checks.setdefault(event["execution_id"], OrderCheck())
        sequence = int(event["sequence"])
        if check.add(sequence):
            self.fleet.record(event, sequence, received)
        self.changed.set()

    def holds(self, expected: dict[str, int]) -> bool:
        wanted = (
            expected.items()
            if self.execution_id == "*"
            else [(self.execution_id, expected.get(self.execution_id, 0))]
        )
        return all(
            count == 0 or (name in self.checks and self.checks[name].contiguous >= count)
            for name, count in wanted
        )

    async def wait_for(self, expected: dict[str, int]) -> None:
        while not self.holds(expected):
            if self.error:
                raise ConnectionError(self.error)
            self.changed.clear()
            await self.changed.wait()

    async def follow(self) -> None:
        try:
            await self.run()
            self.error = "connection ended"
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.error = repr(error)
        self.changed.set()

    async def open(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class WebSocketSubscriber(Subscriber):
    async def open(self) -> None:
        query = f"?token={API_KEY}" + (f"&last_event_id={self.cursor}" if self.cursor else "")
        self.ws = await websockets.connect(
            f"ws://{HOST}:{self.fleet.port}{self.fleet.path}{self.execution_id}{query}",
            compression=None,
            ping_interval=None,
            open_timeout=120,
            close_timeout=1,
            max_queue=None,
        )

    async def run(self) -> None:
        async for message in self.ws:
            self.deliver(json.loads(message))

    async def close(self) -> None:
        self.ws.transport.abort()


class SSESubscriber(Subscriber):
    async def open(self) -> None:
        self.http = HttpConnection(self.fleet.port)
        await self.http.open()
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": self.cursor} if self.cursor else {})}
        self.http.send("GET", f"/events/human-input/{self.execution_id}", headers=headers)
        status, self.headers = await self.http.head()
        if status != 200:
            raise ConnectionError(f"SSE answered {status}")

    async def run(self) -> None:
        async for event in SSEReader(self.http.chunks(self.headers)).each_event():
            self.deliver(event)

    async def close(self) -> None:
        self.http.close()


class LongPollSubscriber(Subscriber):
    """Long polls back to back (``wait=25``), the cursor carried from each answer to the next."""

    def path(self) -> str:
        cursor = f"&last_event_id={self.cursor}" if self.cursor else ""
        return f"/poll/human-input/{self.execution_id}?wait=25{cursor}"

    async def open(self) -> None:
        self.http = HttpConnection(self.fleet.port)
        await self.http.open()
        self.http.send("GET", self.path())

    async def run(self) -> None:
        while True:
            status, headers = await self.http.head()
            body = json.loads(b"".join([chunk async for chunk in self.http.chunks(headers)]))
            if status != 200:
                raise ConnectionError(f"poll answered {status}: {body}")
            for event in body["events"]:
                self.deliver(event)
            self.cursor = body["last_event_id"] or self.cursor
            self.http.send("GET", self.path())

    async def close(self) -> None:
        self.http.close()


def redis_layer(kind: str, redis_url: str, prefix: str) -> Any:
    """A channels_redis layer configured as ``humaninput_project.settings`` configures it.

    Except for its ``prefix``, which a run makes its own: Redis pub/sub
    channels ignore the database number, so with the default prefix every
    ``humaninput-inbox`` follower on the same Redis server (a dev server, a
    test run) would get the bench's messages, and the bench theirs.
    """
    hosts = [{"address": redis_url, "socket_timeout": 15, "socket_connect_timeout": 3}]
    if kind == "core":
        return RedisChannelLayer(hosts=hosts, prefix=prefix, capacity=10_000, expiry=60)
    return RedisPubSubChannelLayer(hosts=hosts, prefix=prefix)


class LayerSubscriber(Subscriber):
    """A channel of its own in the execution's group (or the inbox group), received like a consumer.

    Its task may not end when cancelled: on Python 3.11 the core layer's
    receive can swallow the cancellation (with the settings' ``socket_timeout``
    redis-py writes each command under ``asyncio.wait_for``, which returns
    instead of raising when the write ends as the cancellation lands, CPython
    gh-86296) and the task carries on: a blocking pop every 5 s, for ever.
    So ``Fleet.stop_following`` counts the tasks still running a moment after
    their cancellation and cancels them again (the second one lands in the
    blocking read, which honours it), each wait with a deadline.
    """

    async def open(self) -> None:
        layer = self.fleet.layer
        self.channel = await layer.new_channel()
        group = INBOX_GROUP if self.execution_id == "*" else GROUP_PREFIX + self.execution_id
        await layer.group_add(group, self.channel)

    async def run(self) -> None:
        while True:
            self.deliver((await self.fleet.layer.receive(self.channel))["event"])


SUBSCRIBERS = {
    "ws": WebSocketSubscriber,
    "sse": SSESubscriber,
    "poll": LongPollSubscriber,
    "baseline": WebSocketSubscriber,
    "layer": LayerSubscriber,
}


class Fleet:
    """All subscribers of one process and what they received."""

    def __init__(self, transport: str, port: int, layer: Any, spread: bool) -> None:
        self.transport = transport
        self.port = port
        self.path = "/sub/" if transport == "baseline" else "/ws/human-input/"
        self.layer = layer
        self.subscribers: list[Subscriber] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.latencies: list[float] = []
        # sequence -> [event timestamp, first receipt, last receipt, receipts]
        self.spread: dict[int, list[float]] | None = {} if spread else None

    def record(self, event: dict[str, Any], sequence: int, received: float) -> None:
        self.latencies.append(received - event_time(event))
        if self.spread is not None:
            known = self.spread.setdefault(sequence, [event_time(event), received, received, 0])
            known[1], known[2], known[3] = min(known[1], received), max(known[2], received), known[3] + 1

    async def connect(self, data: dict[str, Any]) -> dict[str, Any]:
        cursors = data.get("cursors", {})
        new = [SUBSCRIBERS[self.transport](self, name, cursors.get(name)) for name in data["executions"]]
        gate = asyncio.Semaphore(data.get("concurrency", 100))
        started = time.monotonic()

        async def open_one(subscriber: Subscriber) -> None:
            async with gate:
                await subscriber.open()
            self.tasks.append(asyncio.create_task(subscriber.follow()))

        async def open_all() -> list[Any]:
            opened = await asyncio.gather(*(open_one(each) for each in new), return_exceptions=True)
            if replay := data.get("replay", 0):
                await asyncio.gather(*(each.wait_for({each.execution_id: replay}) for each in new))
            return opened

        opened = await asyncio.wait_for(open_all(), data.get("timeout", 120))
        failures = [repr(result) for result in opened if isinstance(result, BaseException)]
        self.subscribers += new
        return {"seconds": time.monotonic() - started, "failed": len(failures), "errors": failures[:3]}

    async def drain(self, data: dict[str, Any]) -> dict[str, Any]:
        """Wait until every subscriber holds ``expected``; not complete after ``timeout`` seconds,
        when a connection ended, or (with ``idle``) once nothing new arrived for ``idle`` seconds:
        a layer with a backlog still delivers, one that dropped a message never will."""
        expected, idle = data["expected"], data.get("idle")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + data["timeout"]
        pending = {asyncio.ensure_future(each.wait_for(expected)) for each in self.subscribers}
        failed = False
        try:
            while pending and not failed and (left := deadline - loop.time()) > 0:
                received = len(self.latencies)
                done, pending = await asyncio.wait(
                    pending, timeout=min(left, idle or left), return_when=asyncio.FIRST_EXCEPTION
                )
                failed = any(task.exception() is not None for task in done)
                if idle and len(self.latencies) == received:
                    break
        finally:
            for task in pending:
                task.cancel()
        return {"complete": not pending and not failed}

    async def stop_following(self) -> dict[str, int]:
        """Cancel every subscriber's task and wait for them, with deadlines.

        One still running ``CANCEL_GRACE`` seconds after its cancellation has
        ignored it (see ``LayerSubscriber``) and is cancelled once more; the
        counts of both kinds are returned.
        """
        for task in self.tasks:
            task.cancel()
        running: set[asyncio.Task[None]] = set()
        if self.tasks:
            _, running = await asyncio.wait(self.tasks, timeout=CANCEL_GRACE)
        ignored = len(running)
        for task in running:
            task.cancel()
        if running:
            _, running = await asyncio.wait(running, timeout=STOP_SECONDS)
        return {"ignored_cancel": ignored, "running_after_cancel": len(running)}

    def summary(self, expected: dict[str, int]) -> dict[str, Any]:
        checks = [check for each in self.subscribers for check in each.checks.values()]
        lost = 0
        for each in self.subscribers:
            names = expected if each.execution_id == "*" else [each.execution_id]
            for name in names:
                lost += each.checks.get(name, OrderCheck()).lost(expected.get(name, 0))
        return {
            "transport": self.transport,
            "connections": len(self.subscribers),
            "deliveries": len(self.latencies),
            "lost": lost,
            "duplicated": sum(check.duplicated for check in checks),
            "out_of_order": sum(check.out_of_order for check in checks),
            "disconnected": sum(1 for each in self.subscribers if each.error),
            "errors": sorted({each.error for each in self.subscribers if each.error})[:3],
            "latencies": self.latencies,
            "spread": self.spread,
            "ignored_cancel": 0,
            "running_after_cancel": 0,
        }


async def subscribers(
    control: Control,
    *,
    index: int,
    transport: str,
    port: int = 0,
    layer: str | None = None,
    redis_url: str | None = None,
    layer_prefix: str = "asgi",
    spread: bool = False,
) -> dict[str, Any]:
    """Connections of one transport; driven by ``connect`` / ``drain`` / ``stop`` commands."""
    direct = redis_layer(layer, redis_url, layer_prefix) if layer and redis_url else None
    fleet = Fleet(transport, port, direct, spread)
    # The pub/sub layer logs every receive() cancelled at exit (unsubscribing); nothing is lost then.
    logging.getLogger("channels_redis").setLevel(logging.CRITICAL)
    try:
        while True:
            kind, data = await control.recv(LONG)
            if kind == "connect":
                control.send("connected", await fleet.connect(data))
            elif kind == "drain":
                control.send("drained", await fleet.drain(data))
            elif kind == "stop":
                return {**fleet.summary(data["expected"]), **await fleet.stop_following()}
    finally:
        await release(fleet.tasks, fleet.subscribers)


# --- writers and load ------------------------------------------------------------------------------


async def http_load(
    control: Control,
    *,
    index: int,
    port: int,
    kind: str,
    duration: float,
    concurrency: int,
    executions: list[str] | None = None,
    path: str | None = None,
    rate: float | None = None,
) -> dict[str, Any]:
    """Requests over ``concurrency`` keep-alive connections for ``duration`` seconds.

    ``kind="create"``: POST a request to each of ``executions`` in turn;
    ``kind="get"``: GET ``path``. With ``rate`` the requests follow a fixed
    schedule (open loop: request i is due at start + i/rate), else each
    connection sends its next request when the previous one is answered.
    """
    connections = [HttpConnection(port) for _ in range(concurrency)]
    await asyncio.gather(*(each.open() for each in connections))
    control.send("ready")
    await control.expect("go", LONG)
    statuses: Counter[int] = Counter()
    per_execution: Counter[str] = Counter()
    latencies: list[float] = []
    counter = iter(range(10**9))
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration

    async def one(connection: HttpConnection, number: int) -> None:
        sent = time.perf_counter()
        if kind == "create":
            assert executions is not None
            execution_id = executions[number % len(executions)]
            status, _ = await connection.request(
                "POST", "/api/human-input/requests", create_body(execution_id)
            )
            if status == 201:
                per_execution[execution_id] += 1
        else:
            assert path is not None
            status, _ = await connection.request("GET", path)
        latencies.append(time.perf_counter() - sent)
        statuses[status] += 1

    async def closed_loop(connection: HttpConnection) -> None:
        while loop.time() < end:
            await one(connection, next(counter))

    async def open_loop(connection: HttpConnection, due: asyncio.Queue[int]) -> None:
        while (number := await due.get()) >= 0:
            await one(connection, number)

    if rate is None:
        await asyncio.gather(*(closed_loop(each) for each in connections))
    else:
        await on_schedule(open_loop, connections, duration=duration, rate=rate, start=start)
    elapsed = loop.time() - start
    for each in connections:
        each.close()
    return {
        "requests": sum(statuses.values()),
        "seconds": elapsed,
        "statuses": dict(statuses),
        "latencies": latencies,
        "per_execution": dict(per_execution),
    }


def _write_through_service(
    env: dict[str, str], executions: list[str], duration: float, log_path: str
) -> dict[str, Any]:
    """Sequential ``services.request_create`` calls for ``duration`` seconds in this Django-set-up process.

    Its log goes to ``log_path`` like the server's (the service logs every write).
    """
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.environ.update(env)
    import django  # here: the process takes the server's environment first

    django.setup()
    from events_app import services  # importable only once Django is set up

    per_execution: Counter[str] = Counter()
    latencies: list[float] = []
    start = time.perf_counter()
    number = 0
    while time.perf_counter() - start < duration:
        execution_id = executions[number % len(executions)]
        sent = time.perf_counter()
        services.request_create(execution_id=execution_id, prompt=PROMPT, context="bench")
        latencies.append(time.perf_counter() - sent)
        per_execution[execution_id] += 1
        number += 1
    return {
        "requests": number,
        "seconds": time.perf_counter() - start,
        "statuses": {},
        "latencies": latencies,
        "per_execution": dict(per_execution),
    }


async def service_writer(
    control: Control,
    *,
    index: int,
    env: dict[str, str],
    executions: list[str],
    duration: float,
    log_path: str,
) -> dict[str, Any]:
    """Writes through the service layer directly (a thread: Django refuses sync ORM inside a loop)."""
    control.send("ready")
    await control.expect("go", LONG)
    return await asyncio.to_thread(_write_through_service, env, executions, duration, log_path)


async def layer_publisher(
    control: Control,
    *,
    index: int,
    layer: str,
    redis_url: str,
    layer_prefix: str,
    executions: list[str],
    duration: float,
    rate: float | None = None,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Doorbells as ``signals.publish_event`` rings them: each event to its execution's group and the inbox.

    With ``rate`` one sender follows the schedule; without, ``concurrency``
    senders each own a share of the executions (so each execution's events
    stay in order) and send as fast as the layer takes them.
    """
    channel_layer = redis_layer(layer, redis_url, layer_prefix)
    control.send("ready")
    await control.expect("go", LONG)
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration
    sequences: Counter[str] = Counter()
    send_seconds: list[float] = []

    async def ring(execution_id: str) -> None:
        sequences[execution_id] += 1
        event = fake_event(execution_id, sequences[execution_id])
        message = {"type": "humaninput.event", "sequence": event["sequence"], "event": event}
        sent = time.perf_counter()
        await asyncio.gather(
            channel_layer.group_send(GROUP_PREFIX + execution_id, message),
            channel_layer.group_send(INBOX_GROUP, message),
        )
        send_seconds.append(time.perf_counter() - sent)

    async def sender(own: list[str]) -> None:
        number = 0
        while loop.time() < end:
            await ring(own[number % len(own)])
            number += 1

    if rate is None:
        senders = min(concurrency, len(executions))
        await asyncio.gather(*(sender(executions[part::senders]) for part in range(senders)))
    else:
        for number in range(int(duration * rate)):
            await asyncio.sleep(max(0.0, start + number / rate - loop.time()))  # the schedule, not a sync
            await ring(executions[number % len(executions)])
    elapsed = loop.time() - start
    with contextlib.suppress(Exception):
        if layer == "pubsub":
            await channel_layer.flush()
        else:
            await channel_layer.close_pools()
    return {
        "requests": sum(sequences.values()),
        "seconds": elapsed,
        "statuses": {},
        "latencies": send_seconds,
        "per_execution": dict(sequences),
    }
