"""Real daphne processes on free ports, and small real-socket clients for them.

The server runs ``humaninput_project.settings`` (not the test settings) with
the same database as the test process: the SQLite test file, or the
PostgreSQL test database, and Redis when the run has ``REDIS_URL``. Tests
write through the service layer in this process or through the server.
With the in-memory layer a write made here cannot ring the server's doorbell:
the server's cross-process watcher (``events_app.crossprocess``) finds the
commit within a quarter second, and embedded-mode servers also get a short
catch-up interval; with Redis the doorbell crosses processes and the
catch-up interval is long, which proves delivery did not come from catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
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

from tests.conftest import uses_redis

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 15.0

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
class DaphneServer:
    """One daphne subprocess; ``start`` returns once ``/health`` answers 200."""

    env_overrides: dict[str, str] = field(default_factory=dict)
    # What to run, from where: the demo project by default; a host project's own otherwise.
    application: str = "humaninput_project.asgi:application"
    executable: str = sys.executable
    cwd: Path = ROOT
    health_path: str = "/health"
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

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

    def start(self, tmp_dir: Path, port: int | None = None) -> DaphneServer:
        """Start on ``port`` (a restart keeps its address), else on a free one.

        The test process binds and listens on the socket itself and hands it
        to daphne (``--fd``): it accepts connections from the first moment,
        queued until daphne serves them, so one health request with a deadline
        is the whole start-up wait (no port race, no polling).
        """
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port or 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.log_path = tmp_dir / f"daphne-{self.port}.log"
        with listener, open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.executable, "-m", "daphne", "--fd", str(listener.fileno()), self.application],
                cwd=self.cwd,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=[listener.fileno()],
            )
        try:
            healthy = httpx.get(f"{self.http_url}{self.health_path}", timeout=30).status_code == 200
        except httpx.HTTPError:
            healthy = False
        if not healthy:
            self.stop()
            raise RuntimeError(f"daphne did not become healthy:\n{self.log()}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def catch_up_interval() -> str:
    # See the module docstring: long with Redis (doorbells cross processes),
    # short without (writes made here reach the server only by catch-up).
    return "60" if uses_redis() else "0.25"


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
    """A daphne for the module: short SSE heartbeat, catch-up as ``catch_up_interval``."""
    with running_server(
        tmp_path_factory.mktemp("daphne"),
        HUMANINPUT_CATCHUP_SECONDS=catch_up_interval(),
        HUMANINPUT_SSE_HEARTBEAT_SECONDS="0.5",
    ) as started:
        yield started


# --- clients ------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(server, api_key) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the module's server, with the API key."""
    async with httpx.AsyncClient(
        base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE
    ) as client:
        yield client


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


class SSEStream:
    """A parsed ``text/event-stream``: yields dicts with ``id``, ``data``, ``retry``."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next_message(self, deadline: float = DEADLINE) -> dict[str, Any]:
        return await asyncio.wait_for(self._next_message(), timeout=deadline)

    async def _next_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {}
        async for line in self._lines:
            if line == "":
                if message:
                    return message
                continue
            name, _, value = line.partition(":")
            message[name] = value[1:] if value.startswith(" ") else value
        raise EOFError("stream ended")

    async def next_event(self, deadline: float = DEADLINE) -> dict[str, Any]:
        """The next message with data that is not a heartbeat, as JSON (with its ``id``)."""
        end = time.monotonic() + deadline
        while True:
            message = await self.next_message(max(0.01, end - time.monotonic()))
            if "data" not in message:
                continue
            data = json.loads(message["data"])
            if data.get("type") == "heartbeat":
                continue
            assert message.get("id") == data["event_id"]
            return data

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
    server: DaphneServer, execution_id: str, headers: dict[str, str] | None = None, **params: str | None
) -> AsyncIterator[SSEStream]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(DEADLINE)) as client:
        async with client.stream(
            "GET", f"{server.http_url}/events/human-input/{execution_id}{query(**params)}", headers=headers
        ) as response:
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
