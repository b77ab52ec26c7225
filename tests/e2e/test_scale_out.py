"""Several daphne processes on one PostgreSQL and one Redis behave as one service.

Events written through any process reach subscribers on every process; a
Redis outage delays delivery (catch-up reads) but loses nothing; a killed
process's clients move to another and resume from their last event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events_app.client import HumanInputClient
from tests.conftest import eventually

from .conftest import (
    DEADLINE,
    REQUESTS,
    DaphneServer,
    Received,
    bearer,
    metric,
    poll,
    running_server,
    sse_connect,
    ws_connect,
)

pytestmark = [pytest.mark.e2e, pytest.mark.services, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def two_servers(django_db_setup, tmp_path_factory) -> Iterator[tuple[DaphneServer, DaphneServer]]:
    """A and B on the test database and Redis; catch-up an hour, so only doorbells deliver."""
    tmp = tmp_path_factory.mktemp("scale-out")
    with (
        running_server(tmp, HUMANINPUT_CATCHUP_SECONDS="3600") as a,
        running_server(tmp, HUMANINPUT_CATCHUP_SECONDS="3600") as b,
    ):
        yield a, b


async def create(server: DaphneServer, api_key: str, execution_id: str, prompt: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE) as api:
        response = await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": prompt})
    assert response.status_code == 201, response.text
    return response.json()


async def respond(server: DaphneServer, api_key: str, request_id: str, answer: str) -> None:
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE) as api:
        response = await api.post(f"{REQUESTS}/{request_id}/respond", json={"response": answer})
    assert response.status_code == 200, response.text


# --- subscribers that record what they receive -------------------------------------


class Subscriber(Received):
    """The events one background follower task received, in order."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.task: asyncio.Task[None] | None = None

    @property
    def sequences(self) -> list[int]:
        return [event["sequence"] for event in self]

    async def got(self, event: dict[str, Any]) -> None:
        if event.get("type") != "heartbeat":
            await self.add(event)

    async def follow(self, following: Any) -> None:
        """Run the ``following`` coroutine; waiters learn when it ends, for whatever reason."""
        try:
            await following
        finally:
            await asyncio.shield(self.finish())


async def follow_ws(subscriber: Subscriber, server: DaphneServer, execution_id: str, token: str) -> None:
    ws = await ws_connect(server, execution_id, token=token)
    try:
        async for frame in ws:
            await subscriber.got(json.loads(frame))
    finally:
        await ws.close()


async def follow_sse(subscriber: Subscriber, server: DaphneServer, execution_id: str, token: str) -> None:
    async with sse_connect(server, execution_id, token=token) as stream:
        while True:
            message = await stream.next_message(deadline=3600)
            if "data" in message:
                await subscriber.got(json.loads(message["data"]))


async def follow_poll(subscriber: Subscriber, server: DaphneServer, execution_id: str, token: str) -> None:
    cursor = None
    while True:
        response = await poll(server, execution_id, token=token, last_event_id=cursor, wait="5")
        assert response.status_code == 200, response.text
        for event in response.json()["events"]:
            await subscriber.got(event)
        cursor = response.json()["last_event_id"] or cursor


FOLLOWERS = {"ws": follow_ws, "sse": follow_sse, "poll": follow_poll}


@contextlib.asynccontextmanager
async def subscribers(
    servers: dict[str, DaphneServer], execution_id: str, token: str
) -> AsyncIterator[list[Subscriber]]:
    """A WS, an SSE and a long-poll subscriber on each server, running until the block ends.

    Entered once every server counts its new WebSocket and SSE subscribers
    (its /metrics), so nothing written afterwards can precede their join.
    """
    before = {name: await stream_subscribers(server, token) for name, server in servers.items()}
    started = []
    for server_name, server in servers.items():
        for transport in FOLLOWERS:
            subscriber = Subscriber(f"{transport}@{server_name}")
            subscriber.task = asyncio.create_task(
                subscriber.follow(FOLLOWERS[transport](subscriber, server, execution_id, token))
            )
            started.append(subscriber)
    try:
        for name, server in servers.items():
            await eventually(
                lambda s=server: stream_subscribers(s, token),
                accept=lambda total, n=before[name]: total >= n + 2,
                what=f"subscribers on {name}",
            )
        yield started
    finally:
        for subscriber in started:
            subscriber.task.cancel()
        await asyncio.gather(*(s.task for s in started), return_exceptions=True)


async def all_received(group: list[Subscriber], count: int, deadline: float = DEADLINE) -> None:
    """Every subscriber holds exactly sequences 1..count, in order; fails on a task that died."""
    try:
        await asyncio.gather(*(subscriber.count_reaches(count, deadline) for subscriber in group))
    except TimeoutError:
        short = {s.name: s.sequences for s in group if len(s) < count}
        raise AssertionError(f"events 1..{count} not everywhere within {deadline} s: {short}") from None
    expected = list(range(1, count + 1))
    for subscriber in group:
        if len(subscriber) < count:
            subscriber.task.result()  # raises what killed it
            raise AssertionError(f"{subscriber.name} stopped")
        assert subscriber.sequences == expected, subscriber.name  # nothing repeated or extra


async def stream_subscribers(server: DaphneServer, api_key: str) -> float:
    """WebSocket + SSE subscribers connected to ``server`` now."""
    counts = [await metric(server, api_key, "humaninput_subscribers", transport=t) for t in ("ws", "sse")]
    return sum(counts)


# --- one service over two processes ---------------------------------------------------


async def test_request_created_through_a_reaches_subscribers_on_b_and_the_answer_through_b_reaches_a(
    two_servers, api_key, execution_id
):
    a, b = two_servers
    async with subscribers({"a": a, "b": b}, execution_id, api_key) as group:
        created = await create(a, api_key, execution_id, "Ship it?")
        await all_received(group, 1)
        await respond(b, api_key, created["id"], "Yes")
        await all_received(group, 2)
    for subscriber in group:
        assert [e["type"] for e in subscriber] == ["human_input_required", "human_input_completed"]
        assert subscriber[1]["human_feedback"] == "Yes"
    # Both processes served the same log to everyone.
    assert len({json.dumps(list(s), sort_keys=True) for s in group}) == 1


async def test_poll_on_either_process_returns_the_same_log(two_servers, api_key, execution_id):
    a, b = two_servers
    first = await create(a, api_key, execution_id, "one")
    await create(b, api_key, execution_id, "two")
    await respond(b, api_key, first["id"], "done")
    logs = [(await poll(server, execution_id, token=api_key)).json() for server in (a, b)]
    assert logs[0] == logs[1]
    assert [e["sequence"] for e in logs[0]["events"]] == [1, 2, 3]
    cursor = logs[0]["events"][0]["event_id"]
    after = [
        (await poll(server, execution_id, token=api_key, last_event_id=cursor)).json() for server in (a, b)
    ]
    assert after[0] == after[1]
    assert [e["sequence"] for e in after[0]["events"]] == [2, 3]


async def test_client_moves_to_the_other_process_when_its_server_is_killed(tmp_path, api_key, execution_id):
    with (
        running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS="3600") as a,
        running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS="3600") as b,
    ):
        client = HumanInputClient([a.http_url, b.http_url], token=api_key, reconnect_initial_delay=0.05)
        received = Received()

        async def follow() -> None:
            async for event in client.subscribe(execution_id):
                await received.add(event)

        follower = asyncio.create_task(follow())
        try:
            await eventually(lambda: stream_subscribers(a, api_key), accept=lambda n: n >= 1)
            for prompt in ("one", "two", "three"):
                await create(b, api_key, execution_id, prompt)
            await received.count_reaches(3, DEADLINE)
            a.process.kill()  # no goodbye: the socket just dies
            a.process.wait(timeout=10)
            for prompt in ("four", "five", "six"):
                await create(b, api_key, execution_id, prompt)
            await received.count_reaches(6, DEADLINE)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        assert [e["sequence"] for e in received] == [1, 2, 3, 4, 5, 6]
        assert [e["prompt"] for e in received] == ["one", "two", "three", "four", "five", "six"]
        assert client.server_url == b.http_url


# --- Redis going away ------------------------------------------------------------------


class RedisServer:
    """A redis-server of the test's own on a fixed port, stopped and started at will."""

    def __init__(self, tmp_dir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.tmp_dir = tmp_dir
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on ``self.port``; returns once the server says it accepts connections."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.tmp_dir,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        output: list[str] = []

        def drain(stdout: Any) -> None:  # reads the log to its end, so redis never blocks on it
            for line in stdout:
                output.append(line)
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()  # exited

        threading.Thread(target=drain, args=(self.process.stdout,), daemon=True).start()
        if not ready.wait(DEADLINE) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "".join(output))

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process.stdout.close()
            self.process = None


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


async def health_status(server: DaphneServer) -> int:
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        return (await http.get(f"{server.http_url}/health")).status_code


@pytest.mark.parametrize("layer", ["core", "pubsub"])
async def test_redis_outage_delays_events_but_every_subscriber_gets_every_event_once_in_order(
    tmp_path, own_redis, api_key, execution_id, layer
):
    env = {"REDIS_URL": own_redis.url, "REDIS_CHANNEL_LAYER": layer, "HUMANINPUT_CATCHUP_SECONDS": "1"}
    # channels_redis' pub/sub layer logs its failed reconnects and unsubscribes with tracebacks.
    tolerated = ("ERROR channels_redis.pubsub Unexpected exception",)
    with (
        running_server(tmp_path, tolerated, **env) as a,
        running_server(tmp_path, tolerated, **env) as b,
    ):
        servers = {"a": a, "b": b}
        async with subscribers(servers, execution_id, api_key) as group:
            await create(a, api_key, execution_id, "before")
            await all_received(group, 1)

            own_redis.stop()
            await eventually(
                lambda: health_status(a), accept=lambda status: status == 503, what="a unhealthy"
            )
            # Writes keep succeeding through both processes: the events are in PostgreSQL.
            for index in range(4):
                await create((a, b)[index % 2], api_key, execution_id, f"during {index}")
            await all_received(group, 5)  # by catch-up reads alone

            own_redis.start()
            for server in (a, b):
                await eventually(lambda s=server: health_status(s), accept=lambda status: status == 200)
            await create(b, api_key, execution_id, "after")
            await all_received(group, 6)

            # Doorbells ring again: a new event reaches each process's WebSocket by doorbell.
            async def doorbell_deliveries() -> list[float]:
                name = "humaninput_events_delivered_total"
                return [await metric(s, api_key, name, transport="ws", via="doorbell") for s in (a, b)]

            before = await doorbell_deliveries()
            count = 6

            async def ring() -> list[float]:
                nonlocal count
                await create(a, api_key, execution_id, "probe")
                count += 1
                return await doorbell_deliveries()

            await eventually(
                ring,
                accept=lambda now: all(n > was for n, was in zip(now, before, strict=True)),
                what="doorbell delivery after Redis returned",
            )
            await all_received(group, count)
