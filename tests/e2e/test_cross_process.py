"""An event written by another process reaches a daphne's subscribers within seconds.

The other process is ``manage.py humaninput_ask`` (a second terminal) or a
second daphne on the same database. The server's catch-up is 60 s, so only
a doorbell can explain delivery within ``DELIVERY_DEADLINE``: on the
embedded default (SQLite + in-memory layer) the writer's doorbell never
leaves the writer, and the server's cross-process watcher
(``events_app.streaming.crossprocess``) rings it; with PostgreSQL + Redis the writer's
doorbell crosses by Redis and the watcher is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import eventually, uses_redis

from .conftest import (
    DEADLINE,
    ROOT,
    DaphneServer,
    bearer,
    metric,
    poll,
    running_server,
    sse_connect,
    ws_connect,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# From the write to each subscriber; the catch-up that would otherwise deliver is 60 s away.
DELIVERY_DEADLINE = 5.0
CATCHUP = "60"
TRANSPORTS = ("ws", "sse", "poll")

# Writes a request for an execution from another process; returns its event id.
Writer = Callable[[str], Awaitable[str]]


async def subscribers(server: DaphneServer, api_key: str) -> dict[str, float]:
    return {t: await metric(server, api_key, "humaninput_subscribers", transport=t) for t in TRANSPORTS}


@contextlib.asynccontextmanager
async def three_subscribers(
    server: DaphneServer, api_key: str, execution_id: str
) -> AsyncIterator[dict[str, asyncio.Task[tuple[dict[str, Any], float]]]]:
    """A WebSocket, an SSE stream and a long poll (``wait=30``) following ``execution_id``, each
    waiting for its first event: tasks resolving to (event, time received)."""
    ws = await ws_connect(server, execution_id, token=api_key)

    async def first_ws() -> tuple[dict[str, Any], float]:
        return json.loads(await ws.recv()), time.time()

    async def first_poll() -> tuple[dict[str, Any], float]:
        response = await poll(server, execution_id, token=api_key, wait="30")
        assert response.status_code == 200, response.text
        return response.json()["events"][0], time.time()

    try:
        async with sse_connect(server, execution_id, token=api_key) as sse:

            async def first_sse() -> tuple[dict[str, Any], float]:
                return await sse.next_event(deadline=120), time.time()

            tasks = {
                "ws": asyncio.create_task(first_ws()),
                "sse": asyncio.create_task(first_sse()),
                "poll": asyncio.create_task(first_poll()),
            }
            try:
                # All three are following the execution (its log is empty) before anything is written.
                await eventually(
                    lambda: subscribers(server, api_key),
                    accept=lambda now: now == dict.fromkeys(TRANSPORTS, 1.0),
                    what="three subscribers",
                )
                yield tasks
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def manage_py_writer(server: DaphneServer, tmp_path: Path, api_key: str) -> AsyncIterator[Writer]:
    """``manage.py humaninput_ask`` in a process of its own, on the server's database."""

    async def ask(execution_id: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "manage.py",
            "humaninput_ask",
            execution_id,
            "Asked from a second terminal?",
            cwd=ROOT,
            env={**server.environment(), "DJANGO_DEBUG": "1"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        return json.loads(out)["event_id"]

    yield ask


@contextlib.asynccontextmanager
async def second_daphne_writer(server: DaphneServer, tmp_path: Path, api_key: str) -> AsyncIterator[Writer]:
    """Requests made through another daphne on the same database (and Redis, if any)."""
    with running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS=CATCHUP) as other:
        async with httpx.AsyncClient(
            base_url=other.http_url, headers=bearer(api_key), timeout=DEADLINE
        ) as api:

            async def ask(execution_id: str) -> str:
                response = await api.post(
                    "/api/human-input/requests",
                    json={"execution_id": execution_id, "prompt": "Asked through the other daphne?"},
                )
                assert response.status_code == 201, response.text
                return response.json()["event_id"]

            yield ask


WRITERS = {"manage.py humaninput_ask": manage_py_writer, "second daphne": second_daphne_writer}


@pytest.mark.parametrize("writer", list(WRITERS))
async def test_an_event_written_by_another_process_reaches_every_transport_within_seconds(
    tmp_path, api_key, execution_id, writer
):
    with running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS=CATCHUP) as server:
        rung_before = await metric(server, api_key, "humaninput_cross_process_doorbells_total")
        async with (
            WRITERS[writer](server, tmp_path, api_key) as ask,
            three_subscribers(server, api_key, execution_id) as first_events,
        ):
            event_id = await ask(execution_id)
            done, _ = await asyncio.wait(first_events.values(), timeout=DELIVERY_DEADLINE + 5)
            received = {name: task.result() for name, task in first_events.items() if task in done}
        rung = await metric(server, api_key, "humaninput_cross_process_doorbells_total") - rung_before

    latencies = {
        name: round(at - datetime.fromisoformat(event["timestamp"]).timestamp(), 3)
        for name, (event, at) in received.items()
    }
    report = f"written by {writer}; seconds from write to subscriber: {latencies} (catch-up {CATCHUP} s)"
    assert set(received) == set(TRANSPORTS), f"not every transport got the event; {report}"
    assert {event["event_id"] for event, _ in received.values()} == {event_id}, report
    assert all(seconds < DELIVERY_DEADLINE for seconds in latencies.values()), report
    # What carried it: Redis where there is Redis, else the server's cross-process watcher.
    assert (rung == 0) if uses_redis() else (rung >= 1), f"cross-process doorbells rung: {rung}; {report}"
