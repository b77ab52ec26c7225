"""Real daphne processes on free ports, and small real-socket clients for them.

The server runs ``humaninput_project.settings`` (not the test settings) with
the same database as the test process: the SQLite test file, or the
PostgreSQL test database, and Redis when the run has ``REDIS_URL``. The
processes, the SSE reader and the Redis helpers are ``harness``'s, shared
with the bench.

Tests write through a server, as agents do (REST, the client, a WebSocket
answer), so every write rings that server's doorbell on either channel
layer. Servers catch up every ``CATCH_UP_SECONDS``, longer than any deadline
here: a delivery within a test proves the doorbell rang. A test that needs a
state only a direct database write makes (a request already overdue, a write
while no server runs) writes in this process, says so, and does not wait on
a doorbell for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import websockets
from django.conf import settings

from harness.server import ServerProcess, daphne_command
from harness.sse import SSEReader
from tests.conftest import uses_redis

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0
REQUESTS = "/api/human-input/requests"

IDENTITY_FIELDS = {
    "type",
    "execution_id",
    "crew_id",
    "task_id",
    "agent_id",
    "event_id",
    "timestamp",
    "request_id",
    "sequence",
}
REQUIRED_FIELDS = IDENTITY_FIELDS | {"prompt", "context", "reason_flags"}
COMPLETED_FIELDS = IDENTITY_FIELDS | {"human_feedback"}
RESOLVED_FIELDS = IDENTITY_FIELDS  # cancelled and expired


def assert_timestamp(value: str) -> None:
    """ISO 8601, UTC, with an explicit offset (the spec's format)."""
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0)
    assert value.endswith("+00:00")


def database_url() -> str:
    """The URL of the database this test run uses (after pytest-django renamed it)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@dataclass
class DaphneServer(ServerProcess):
    """A daphne serving the demo project with this run's database and keys (``harness.server``)."""

    env_overrides: dict[str, str] = field(default_factory=dict)
    # What to run, from where: the demo project by default; a host project's own otherwise.
    application: str = "humaninput_project.asgi:application"
    executable: str = sys.executable
    name: str = "daphne"

    def command(self) -> list[str]:
        return daphne_command(self.application, self.executable)

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HUMANINPUT_", "DJANGO_", "PYTEST_", "PYTHONDEVMODE"))
        }
        env.update(
            DJANGO_SETTINGS_MODULE="humaninput_project.settings",
            DJANGO_SECRET_KEY=settings.SECRET_KEY,  # scoped tokens minted here must verify there
            DJANGO_DEBUG="0",
            HUMANINPUT_API_KEY=settings.HUMANINPUT_API_KEY,
            HUMANINPUT_THROTTLE_WRITE_RATE=settings.HUMANINPUT_THROTTLE_WRITE_RATE,
            HUMANINPUT_THROTTLE_TOKEN_RATE=settings.HUMANINPUT_THROTTLE_TOKEN_RATE,
            DATABASE_URL=database_url(),
            PYTHONPATH=str(ROOT),
            # The access log goes to stdout: unbuffered, so a test reads what was served.
            PYTHONUNBUFFERED="1",
        )
        if uses_redis():
            env["REDIS_URL"] = settings.REDIS_URL
        else:
            env.pop("REDIS_URL", None)
        env.update(self.env_overrides)
        return env


# See the module docstring: longer than any deadline, so what arrives in time was rung.
CATCH_UP_SECONDS = "60"


def unexpected_tracebacks(log: str, tolerated: tuple[str, ...] = ()) -> list[str]:
    """The log records of ``log`` that carry a traceback, except those whose first line
    contains one of ``tolerated`` (a third party's own error logging, say)."""
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )", log)
    return [
        record
        for record in records
        if "Traceback" in record and not any(marker in record.partition("\n")[0] for marker in tolerated)
    ]


@contextlib.contextmanager
def running_server(
    tmp_dir: Path, tolerated_errors: tuple[str, ...] = (), **env: str
) -> Iterator[DaphneServer]:
    """A started server, stopped at the end; its log must hold no traceback (but ``tolerated_errors``)."""
    server = DaphneServer(env_overrides=env).start(tmp_dir)
    try:
        yield server
    finally:
        server.stop()
        assert not unexpected_tracebacks(server.log(), tolerated_errors), server.log()


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[DaphneServer]:
    """A daphne for the module: short SSE heartbeat, catch-up far beyond any deadline."""
    with running_server(
        tmp_path_factory.mktemp("daphne"),
        HUMANINPUT_CATCHUP_SECONDS=CATCH_UP_SECONDS,
        HUMANINPUT_SSE_HEARTBEAT_SECONDS="0.5",
    ) as started:
        yield started


# --- clients ------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_client(server: ServerProcess, token: str) -> httpx.AsyncClient:
    """An HTTP client for ``server`` presenting ``token`` (``async with`` it)."""
    return httpx.AsyncClient(base_url=server.http_url, headers=bearer(token), timeout=DEADLINE)


@pytest.fixture
async def api(server, api_key) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the module's server, with the API key."""
    async with api_client(server, api_key) as client:
        yield client


async def create_request(api: httpx.AsyncClient, execution_id: str, **fields: Any) -> dict[str, Any]:
    """Ask through the server's REST API, as an agent does (``prompt`` "Ship it?" unless given);
    the created request (with its ``event_id``)."""
    response = await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "Ship it?", **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def respond(api: httpx.AsyncClient, request_id: str, answer: str) -> httpx.Response:
    """Answer through the server's REST API, as a human's answer arrives; the response, unchecked."""
    return await api.post(f"{REQUESTS}/{request_id}/respond", json={"response": answer})


async def metric(server: DaphneServer, api_key: str, name: str, **labels: str) -> float:
    """One sample of a server's /metrics (0 if absent)."""
    async with httpx.AsyncClient(timeout=DEADLINE) as http:
        response = await http.get(f"{server.http_url}/metrics", headers=bearer(api_key))
    assert response.status_code == 200, response.text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in response.text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def query(**params: str | None) -> str:
    present = {key: value for key, value in params.items() if value is not None}
    return f"?{urlencode(present)}" if present else ""


async def ws_connect(server: DaphneServer, execution_id: str, **params: str | None) -> Any:
    return await websockets.connect(f"{server.ws_url}/ws/human-input/{execution_id}{query(**params)}")


async def ws_recv(ws: Any, deadline: float = DEADLINE) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout=deadline))


async def ws_events(ws: Any, count: int, deadline: float = DEADLINE) -> list[dict[str, Any]]:
    return [await ws_recv(ws, deadline) for _ in range(count)]


async def ws_close_code(ws: Any, deadline: float = DEADLINE) -> int | None:
    """Wait for the server to close ``ws``; the close code it sent."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout=deadline)
    return ws.close_code


class SSEStream(SSEReader):
    """A streamed response's messages (``harness.sse``), each read within ``DEADLINE`` unless
    told otherwise; ``next_event`` also checks that an event's ``id:`` is its ``event_id``."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.aiter_bytes(), deadline=DEADLINE, response=response)

    async def next_event(self, deadline: float | None = None) -> dict[str, Any]:
        event = await super().next_event(deadline)
        assert self.last_event_id == event["event_id"], (self.last_event_id, event)
        return event

    async def events(self, count: int, deadline: float = DEADLINE) -> list[dict[str, Any]]:
        return [await self.next_event(deadline) for _ in range(count)]


class Received(list):
    """Events a local subscriber task delivered, with a way to wait until there are ``n`` of them."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()
        self.finished = False  # the task filling it has ended

    async def add(self, event: dict) -> None:
        async with self.changed:
            self.append(event)
            self.changed.notify_all()

    async def finish(self) -> None:
        async with self.changed:
            self.finished = True
            self.changed.notify_all()

    async def count_reaches(self, n: int, deadline: float = 20) -> None:
        """Wait for ``n`` events (or the end of the task filling this); TimeoutError at the deadline."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self) >= n or self.finished), deadline)


@contextlib.asynccontextmanager
async def sse_connect(
    server: ServerProcess,
    execution_id: str,
    headers: dict[str, str] | None = None,
    *,
    prefix: str = "",
    read_timeout: float = DEADLINE,
    **params: str | None,
) -> AsyncIterator[SSEStream]:
    """The SSE stream of ``execution_id`` (under ``prefix`` where a host mounts the app)."""
    url = f"{server.http_url}{prefix}/events/human-input/{execution_id}{query(**params)}"
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(read_timeout)) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        yield SSEStream(response)


async def poll(
    server: DaphneServer, execution_id: str, headers: dict[str, str] | None = None, **params: str | None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=httpx.Timeout(DEADLINE + 35)) as client:
        return await client.get(
            f"{server.http_url}/poll/human-input/{execution_id}{query(**params)}", headers=headers
        )


async def run_example(
    server: DaphneServer, api_key: str, script: str, *args: str, deadline: float = 120
) -> str:
    """Run ``examples/<script>`` against ``server`` with the API key; its output (exit 0 asserted)."""
    env = {**os.environ, "HUMANINPUT_URL": server.http_url, "HUMANINPUT_TOKEN": api_key}
    env.pop("EXAMPLE_LLM", None)  # the examples' default, scripted model
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / script),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), deadline)
    text = output.decode()
    assert process.returncode == 0, text
    return text
