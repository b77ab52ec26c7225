"""SIGTERM under write load: daphne exits promptly and loses no answered write.

A deploy stops the server while agents are creating requests. Every request
thread publishes its event after commit; none of them may wait on an event
loop that shutdown has stopped, or the interpreter's exit joins them forever
(systemd then kills the process at its stop timeout). What was answered 201
was committed, so a new server on the same database must serve it and carry
its event in the log.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import httpx
import pytest

from .conftest import DEADLINE, REQUESTS, bearer, poll, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WRITERS = 16
WRITES_BEFORE_SIGTERM = 8 * WRITERS
SHUTDOWN_DEADLINE = 10.0  # seconds from SIGTERM to exit; systemd's stop timeout is far above it


class Created:
    """Requests answered 201, and a way to wait until there are ``n`` of them."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.changed = asyncio.Condition()

    async def add(self, request: dict) -> None:
        async with self.changed:
            self.requests.append(request)
            self.changed.notify_all()

    async def count_reaches(self, n: int, deadline: float = DEADLINE) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.requests) >= n), deadline)


async def write_until_the_server_is_gone(
    base_url: str, api_key: str, execution_id: str, created: Created
) -> None:
    """Create requests one after another over REST until the server stops answering."""
    async with httpx.AsyncClient(base_url=base_url, headers=bearer(api_key), timeout=DEADLINE) as client:
        while True:
            try:
                response = await client.post(
                    REQUESTS, json={"execution_id": execution_id, "prompt": "Deploy?"}
                )
            except httpx.TransportError:
                return  # refused, reset or cut off mid-response: the server has gone
            if response.status_code == 201:
                await created.add(response.json())


async def exit_seconds_after_sigterm(process: subprocess.Popen[bytes], deadline: float) -> float:
    """SIGTERM ``process``; seconds until it exited (SIGKILLed and AssertionError past ``deadline``)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, DEADLINE)
        raise AssertionError(f"daphne was still running {deadline} s after SIGTERM (killed)") from None
    return time.monotonic() - started


async def logged_request_ids(server, api_key: str, execution_id: str) -> list[str]:
    """The request ids of ``execution_id``'s ``human_input_required`` events, the whole log paged."""
    request_ids: list[str] = []
    cursor: str | None = None
    while True:
        response = await poll(
            server, execution_id, token=api_key, last_event_id=cursor, wait="0", limit="1000"
        )
        assert response.status_code == 200, response.text
        events = response.json()["events"]
        if not events:
            return request_ids
        request_ids += [event["request_id"] for event in events if event["type"] == "human_input_required"]
        cursor = events[-1]["event_id"]


async def test_sigterm_under_write_load_exits_promptly_and_keeps_every_answered_write(
    tmp_path, api_key, execution_id
):
    execution_ids = [f"{execution_id}-{writer}" for writer in range(WRITERS)]
    created = Created()
    with running_server(tmp_path) as server:
        writers = [
            asyncio.create_task(write_until_the_server_is_gone(server.http_url, api_key, writer_id, created))
            for writer_id in execution_ids
        ]
        await created.count_reaches(WRITES_BEFORE_SIGTERM)
        assert not any(writer.done() for writer in writers)  # all 16 still writing when the signal lands
        await exit_seconds_after_sigterm(server.process, SHUTDOWN_DEADLINE)
        await asyncio.wait_for(asyncio.gather(*writers), DEADLINE)

    with running_server(tmp_path) as restarted:
        async with httpx.AsyncClient(
            base_url=restarted.http_url, headers=bearer(api_key), timeout=DEADLINE
        ) as client:
            for request in created.requests:
                response = await client.get(f"{REQUESTS}/{request['id']}")
                assert response.status_code == 200, response.text
                assert response.json()["execution_id"] == request["execution_id"]
        logged = set()
        for writer_id in execution_ids:
            logged.update(await logged_request_ids(restarted, api_key, writer_id))
    missing = [request["id"] for request in created.requests if request["id"] not in logged]
    assert not missing, f"{len(missing)} of {len(created.requests)} answered writes have no event in the log"
