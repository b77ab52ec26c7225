"""The soak's client processes: subscribers that drop and resume, and the writer (``bench.soak``).

Each subscriber is one of the roles' subscribers (``roles.py``: the same
WebSocket, raw-HTTP SSE and long-poll wire code as the other scenarios) that
reconnects from the ``event_id`` of the last event it holds whenever its
connection ends, and checks every delivery against what it holds: each must
be the sequence after the last one delivered, and never one it has. A
client process's share of them is driven by ``connect`` / ``go`` /
``progress`` / ``drain`` / ``stop`` from the orchestrator; their drops
follow one Poisson schedule per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from bench.harness import Control, on_schedule, release
from bench.roles import (
    LONG,
    HttpConnection,
    LongPollSubscriber,
    OrderCheck,
    SSESubscriber,
    Subscriber,
    WebSocketSubscriber,
    create_body,
    event_time,
)

TRANSPORTS = {"ws": "WS", "sse": "SSE", "poll": "long-poll"}
OPEN_TIMEOUT = 60.0
RECONNECT_PAUSE = (0.05, 1.0)  # seconds, uniform: how long a dropped client waits before reconnecting
WRITE_TIMEOUT = 60.0
KEPT = 20  # anomalies and failures kept in full per client process


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:160]


@dataclass
class Endpoint:
    """Where a client connects next: what the roles' subscribers read as their ``fleet``."""

    port: int
    path: str = "/ws/human-input/"


@dataclass
class TransportStats:
    """One transport's counts in one client process."""

    clients: int = 0
    connections: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # graceful / abrupt
    unexpected: Counter[str] = field(default_factory=Counter)  # connections the server ended: reason
    connect_failures: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    live: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # minute -> latencies
    resumed: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain types for the pipe (``dataclasses.asdict`` cannot rebuild a defaultdict on 3.11)."""
        found = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {name: dict(value) if isinstance(value, dict) else value for name, value in found.items()}


class ResumingClient(Subscriber):
    """A roles subscriber that reconnects from its cursor and checks each delivery is the next sequence.

    ``check`` (the roles' ``OrderCheck``) holds what the client has. Unlike
    the roles' fleets, a delivery that is not the one after the last one
    delivered is out of order here even if the gap fills later (the server
    must never skip): a skip counts once, a late fill once more, and the
    sequences never delivered count as lost at the end.
    """

    transport = ""

    def __init__(
        self, share: ClientFleet, number: int, execution_id: str, ports: list[int], rng: random.Random
    ) -> None:
        # The roles' subscribers connect to ``self.fleet.port``: here an Endpoint that moves on reconnects.
        super().__init__(Endpoint(ports[0]), execution_id, None)  # type: ignore[arg-type]
        self.share = share
        self.stats = share.stats[self.transport]
        self.number = number
        self.ports = ports
        self.rng = rng
        self.check = OrderCheck()
        self.last_event_id: str | None = None
        self.attempts = 0
        self.connections = 0
        self.connected = False
        self.dropping: str | None = None  # "graceful" / "abrupt" while we are closing on purpose
        self.last_drop: str | None = None
        self.closing = False
        self.closer: asyncio.Task[None] | None = None
        self.opened_at = 0.0
        self.resumed_from: int | None = None
        self.out_of_order = 0
        self.anomalies: list[dict[str, Any]] = []

    def deliver(self, event: dict[str, Any]) -> None:
        received = time.time()
        sequence = int(event["sequence"])
        expected = self.check.highest + 1
        anomaly = None
        if sequence in self.check.seen:
            anomaly = "duplicate"
            self.stats.duplicated += 1
        elif sequence != expected:
            anomaly = "out of order"
            self.out_of_order += 1
            self.stats.out_of_order += 1
        if anomaly:
            self.note(
                anomaly,
                sequence=sequence,
                expected=expected,
                event_id=event.get("event_id"),
                seconds_after_open=round(received - self.opened_at, 3),
            )
        if sequence > self.check.highest:
            self.last_event_id = event["event_id"]
        if self.check.add(sequence):
            self.stats.deliveries += 1
            written = event_time(event)
            if written >= self.opened_at:
                self.stats.live[self.share.minute(received)].append(received - written)
            else:
                self.stats.resumed.append(received - written)
        self.changed.set()

    def note(self, kind: str, **details: Any) -> None:
        if len(self.anomalies) < KEPT:
            self.anomalies.append(
                {
                    "kind": kind,
                    "client": self.number,
                    "transport": self.transport,
                    "execution_id": self.execution_id,
                    "connection": self.connections,
                    "port": self.fleet.port,
                    "resumed_after_sequence": self.resumed_from,
                    "previous_drop": self.last_drop,
                    **details,
                }
            )

    async def live(self, gate: asyncio.Semaphore) -> None:
        """Connect, follow until the connection ends, pause, reconnect from the cursor; until closed."""
        first = True
        while not self.closing:
            self.fleet.port = self.ports[(self.number + self.attempts) % len(self.ports)]
            self.attempts += 1
            self.cursor = self.last_event_id
            self.resumed_from = self.check.highest if self.cursor else None
            self.opened_at = time.time()
            try:
                async with gate if first else contextlib.nullcontext():
                    await asyncio.wait_for(self.open(), OPEN_TIMEOUT)
            except Exception as error:
                self.stats.connect_failures[describe(error)] += 1
                self.note("connect failed", reason=describe(error))
                with contextlib.suppress(Exception):
                    await self.close()
                await asyncio.sleep(self.rng.uniform(*RECONNECT_PAUSE))  # a client's back-off
                continue
            first = False
            self.connections += 1
            self.stats.connections += 1
            self.connected = True
            self.changed.set()
            try:
                await self.run()
                ended = "the server ended the connection"
            except Exception as error:
                ended = describe(error)
            self.connected = False
            if self.dropping is None and not self.closing:
                self.stats.unexpected[ended] += 1
                self.note("ended by the server", reason=ended)
            self.last_drop, self.dropping = self.dropping, None
            if self.closer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.closer, 5)
                self.closer = None
            with contextlib.suppress(Exception):
                await self.close()  # the roles' abort: whatever is left of the socket
            if not self.closing:
                await asyncio.sleep(self.rng.uniform(*RECONNECT_PAUSE))  # a client's pause, not a sync

    def drop(self, *, abrupt: bool) -> None:
        """End the connection from the client side: a TCP reset, or a clean close."""
        self.dropping = "abrupt" if abrupt else "graceful"
        if abrupt:
            transport = self.transport_of()
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            self.closer = asyncio.create_task(self.close_cleanly())

    async def until(self, condition: Any) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    def transport_of(self) -> asyncio.BaseTransport:
        raise NotImplementedError

    async def close_cleanly(self) -> None:
        raise NotImplementedError


class ResumingWebSocket(ResumingClient, WebSocketSubscriber):
    transport = "ws"

    def transport_of(self) -> asyncio.BaseTransport:
        return self.ws.transport

    async def close_cleanly(self) -> None:
        await self.ws.close()


class ResumingHttp(ResumingClient):
    http: HttpConnection

    def transport_of(self) -> asyncio.BaseTransport:
        return self.http.writer.transport

    async def close_cleanly(self) -> None:
        self.http.writer.close()
        await self.http.writer.wait_closed()


class ResumingSSE(ResumingHttp, SSESubscriber):
    transport = "sse"


class ResumingLongPoll(ResumingHttp, LongPollSubscriber):
    transport = "poll"


CLIENTS: dict[str, type[ResumingClient]] = {
    "ws": ResumingWebSocket,
    "sse": ResumingSSE,
    "poll": ResumingLongPoll,
}


class ClientFleet:
    """One client process's clients, the Poisson schedule of their drops, and what they saw."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.rng = random.Random(options["seed"])
        self.stats = {transport: TransportStats() for transport in TRANSPORTS}
        self.clients: list[ResumingClient] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.churner: asyncio.Task[None] | None = None
        self.started = 0.0

    def minute(self, moment: float) -> int:
        return int((moment - self.started) // 60) if self.started else 0

    async def connect(self) -> dict[str, Any]:
        ports = self.options["ports"]
        gate = asyncio.Semaphore(50)  # the first connections: 50 at a time per client process
        for number, transport, execution_id in self.options["clients"]:
            client = CLIENTS[transport](self, number, execution_id, ports, random.Random(self.rng.random()))
            self.stats[transport].clients += 1
            self.clients.append(client)
            self.tasks.append(asyncio.create_task(client.live(gate)))
        started = time.monotonic()
        waiting = [client.until(lambda client=client: client.connections > 0) for client in self.clients]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), self.options["connect_timeout"])
        missing = [client.number for client in self.clients if client.connections == 0]
        return {"seconds": time.monotonic() - started, "missing": missing}

    def go(self, started: float) -> None:
        self.started = started
        per_minute = self.options["disconnect_rate"]
        if per_minute > 0 and self.clients:
            self.churner = asyncio.create_task(self.churn(len(self.clients) * per_minute / 60))

    async def churn(self, rate: float) -> None:
        """Each client drops at exponential intervals: together, one Poisson stream at ``rate``/s."""
        while True:
            await asyncio.sleep(self.rng.expovariate(rate))  # the drop schedule, not a sync
            client = self.rng.choice(self.clients)
            if client.connected and client.dropping is None:
                abrupt = self.rng.random() < self.options["abrupt"]
                client.stats.drops["abrupt" if abrupt else "graceful"] += 1
                client.drop(abrupt=abrupt)

    def stop_churning(self) -> None:
        if self.churner is not None:
            self.churner.cancel()

    def progress(self) -> dict[str, Any]:
        return {
            transport: {
                "connected": sum(1 for c in self.clients if c.transport == transport and c.connected),
                "deliveries": stats.deliveries,
                "reconnects": sum(stats.drops.values()),
                "unexpected": sum(stats.unexpected.values()),
                "connect_failures": sum(stats.connect_failures.values()),
                "anomalies": stats.duplicated + stats.out_of_order,
            }
            for transport, stats in self.stats.items()
        }

    async def drain(self, final: dict[str, int], within: float) -> dict[str, Any]:
        """Stop dropping; wait until every client is connected and has its execution's final sequence."""
        self.stop_churning()

        def caught_up(client: ResumingClient) -> bool:
            # The final sequence received (what came before it is checked at the end, as lost or not).
            return client.connected and client.check.highest >= final.get(client.execution_id, 0)

        started = time.monotonic()
        waiting = [client.until(lambda client=client: caught_up(client)) for client in self.clients]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waiting), within)
        behind = [
            {
                "client": client.number,
                "transport": client.transport,
                "execution_id": client.execution_id,
                "highest_received": client.check.highest,
                "final": final.get(client.execution_id, 0),
                "connected": client.connected,
            }
            for client in self.clients
            if not caught_up(client)
        ]
        return {"seconds": time.monotonic() - started, "behind": len(behind), "examples": behind[:KEPT]}

    async def stop(self, final: dict[str, int]) -> dict[str, Any]:
        """Close every client (the same mix of resets and clean closes); the summary."""
        self.stop_churning()
        for client in self.clients:
            client.closing = True
            if client.connected and client.dropping is None:
                client.drop(abrupt=self.rng.random() < self.options["abrupt"])
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=30)
            for task in pending:
                task.cancel()
        return self.summary(final)

    def summary(self, final: dict[str, int]) -> dict[str, Any]:
        failures = []
        for client in self.clients:
            expected = final.get(client.execution_id, 0)
            lost = [sequence for sequence in range(1, expected + 1) if sequence not in client.check.seen]
            if lost or client.check.duplicated or client.out_of_order:
                failures.append(
                    {
                        "client": client.number,
                        "transport": client.transport,
                        "execution_id": client.execution_id,
                        "final": expected,
                        "lost": len(lost),
                        "lost_sequences": lost[:KEPT],
                        "duplicated": client.check.duplicated,
                        "out_of_order": client.out_of_order,
                        "connections": client.connections,
                    }
                )
        lost_by_transport: Counter[str] = Counter()
        for failure in failures:
            lost_by_transport[failure["transport"]] += failure["lost"]
        anomalies = [anomaly for client in self.clients for anomaly in client.anomalies]
        return {
            "stats": {
                transport: {**stats.as_dict(), "lost": lost_by_transport[transport]}
                for transport, stats in self.stats.items()
            },
            "failures": failures,
            "anomalies": [a for a in anomalies if a["kind"] != "connect failed"][: 5 * KEPT],
            "connect_failures": [a for a in anomalies if a["kind"] == "connect failed"][:KEPT],
        }


async def soak_clients(control: Control, *, index: int) -> dict[str, Any]:
    """A share of the clients; driven by ``connect`` / ``go`` / ``progress`` / ``drain`` / ``stop``."""
    fleet: ClientFleet | None = None
    try:
        while True:
            kind, data = await control.recv(LONG)
            if kind == "connect":
                fleet = ClientFleet(data)
                control.send("connected", await fleet.connect())
            elif fleet is None:
                raise RuntimeError(f"{kind!r} before 'connect'")
            elif kind == "go":
                fleet.go(data["started"])
            elif kind == "progress":
                control.send("progress", fleet.progress())
            elif kind == "drain":
                control.send("drained", await fleet.drain(data["final"], data["timeout"]))
            elif kind == "stop":
                return await fleet.stop(data["final"])
    finally:
        if fleet is not None:
            fleet.stop_churning()
            await release(fleet.tasks, fleet.clients)


# --- the writer (its own client process) ----------------------------------------------------------


async def soak_writer(
    control: Control,
    *,
    index: int,
    ports: list[int],
    executions: list[str],
    duration: float,
    rate: float,
    answer_share: float,
    seed: int,
    concurrency: int = 8,
) -> dict[str, Any]:
    """``rate`` writes/s on a fixed schedule for ``duration`` s: creates, and answers/cancels of pending ones.

    Each success is one event of its execution (201 create, 200 respond or
    cancel); the count per execution is compared with the log afterwards. A
    pending request is taken off the list before its answer is sent, so no
    request is answered twice (no 409 expected).
    """
    rng = random.Random(seed)
    connections = [HttpConnection(ports[number % len(ports)]) for number in range(concurrency)]
    await asyncio.gather(*(each.open() for each in connections))
    control.send("ready")
    await control.expect("go", LONG)
    pending: dict[str, deque[str]] = defaultdict(deque)
    written: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    errors: list[str] = []
    latencies: list[float] = []

    async def one(connection: HttpConnection, number: int) -> None:
        execution_id = rng.choice(executions)
        waiting = pending[execution_id]
        if waiting and rng.random() < answer_share:
            request_id = waiting.popleft()
            action = "cancel" if rng.random() < 0.2 else "respond"
            path = f"/api/human-input/requests/{request_id}/{action}"
            body = json.dumps({"response": f"Approved ({number})."} if action == "respond" else {}).encode()
        else:
            action, path, body = "create", "/api/human-input/requests", create_body(execution_id)
        sent = time.perf_counter()
        try:
            status, answer = await asyncio.wait_for(connection.request("POST", path, body), WRITE_TIMEOUT)
        except Exception as error:
            statuses[f"{action} error"] += 1
            errors.append(f"{action} {execution_id}: {describe(error)}")
            connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.open(), WRITE_TIMEOUT)
            return
        latencies.append(time.perf_counter() - sent)
        statuses[f"{action} {status}"] += 1
        if status == (201 if action == "create" else 200):
            written[execution_id] += 1
            if action == "create":
                pending[execution_id].append(json.loads(answer)["id"])
        elif len(errors) < KEPT:
            errors.append(f"{action} {execution_id}: {status} {answer[:200]!r}")

    async def sender(connection: HttpConnection, due: asyncio.Queue[int]) -> None:
        while (number := await due.get()) >= 0:
            await one(connection, number)

    loop = asyncio.get_running_loop()
    start = loop.time()
    await on_schedule(sender, connections, duration=duration, rate=rate, start=start)
    elapsed = loop.time() - start
    for each in connections:
        each.close()
    return {
        "writes": sum(statuses.values()),
        "seconds": elapsed,
        "statuses": dict(statuses),
        "errors": errors[:KEPT],
        "latencies": latencies,
        "per_execution": dict(written),
    }
