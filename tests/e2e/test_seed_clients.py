"""The clients of the seed document (``shared/seed-human-input-event-streaming.txt``) work
pasted as written, host and port aside."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import DEADLINE, bearer, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SEED = Path(__file__).resolve().parents[3] / "shared" / "seed-human-input-event-streaming.txt"
QUIET_SECONDS = 20


def seed_client(title: str, next_title: str, port: int) -> str:
    """The code of one client section of the seed document, pointed at ``port``."""
    text = SEED.read_text()
    code = text[text.index(title) + len(title) : text.index(next_title)]
    # Not run here: the usage line, which would block on the placeholder execution.
    code = re.sub(r"\n# Usage\n.*", "\n", code, flags=re.DOTALL)
    return code.replace("localhost:8000", f"127.0.0.1:{port}")


class Printed(list):
    """What the client printed, with a wait for a line containing some text."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def __call__(self, *args: Any) -> None:
        self.append(" ".join(map(str, args)))
        self.changed.set()

    async def line_with(self, text: str, deadline: float = DEADLINE) -> str:
        async with asyncio.timeout(deadline):
            while True:
                for line in self:
                    if text in line:
                        return line
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture(scope="module")
def default_server(django_db_setup, tmp_path_factory):
    """A daphne with the default heartbeat: what the seed's client meets in production."""
    with running_server(tmp_path_factory.mktemp("daphne-seed")) as started:
        yield started


async def test_the_seed_sse_client_stays_connected_through_quiet_seconds_then_gets_the_event(
    default_server, api_key, execution_id
):
    seed_code = seed_client("Server-Sent Events (SSE) Client", "Long Polling Client", default_server.port)
    printed = Printed()
    namespace: dict[str, Any] = {"print": printed, "asyncio": asyncio}
    exec(seed_code, namespace)
    client = asyncio.create_task(namespace["sse_client"](execution_id, api_key))
    try:
        # Quiet: nothing is written for this execution. httpx's default 5 s read timeout would
        # end the client (ReadTimeout) if the server let 5 s pass without a byte.
        done, _ = await asyncio.wait({client}, timeout=QUIET_SECONDS)
        assert not done, f"the seed's SSE client ended during the quiet period: {client.exception()!r}"
        assert printed == []  # heartbeats are filtered out by the client, as written
        async with httpx.AsyncClient(base_url=default_server.http_url, headers=bearer(api_key)) as api:
            created = await api.post(
                "/api/human-input/requests", json={"execution_id": execution_id, "prompt": "Still there?"}
            )
        assert created.status_code == 201, created.text
        line = await printed.line_with(created.json()["id"])
        assert "'type': 'human_input_required'" in line
        assert not client.done()
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
