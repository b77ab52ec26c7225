"""What an operator sees of a real daphne: JSON logs, /metrics, database connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import httpx
import pytest
from channels.db import database_sync_to_async
from django.db import connection

from tests.conftest import eventually, throughout, uses_postgres

from .conftest import DEADLINE, REQUESTS, bearer, poll, running_server, sse_connect, ws_connect, ws_recv

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

METRICS_TOKEN = "scraper-token"


async def test_json_logs_carry_every_state_change_and_no_token(tmp_path, api_key, execution_id):
    with running_server(tmp_path, HUMANINPUT_LOG_FORMAT="json") as server:
        async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key)) as api:
            created = (await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "?"})).json()
            await api.post(f"{REQUESTS}/{created['id']}/respond", json={"response": "ok"})
        ws = await ws_connect(server, execution_id, token=api_key)
        assert (await ws_recv(ws))["sequence"] == 1
        await ws.close()
    lines = server.log().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    changes = [r for r in records if r["logger"] == "events_app.services"]
    assert [(r["status"], r["event_type"], r["sequence"]) for r in changes] == [
        ("pending", "human_input_required", 1),
        ("completed", "human_input_completed", 2),
    ]
    for record in changes:
        assert record["execution_id"] == execution_id
        assert record["request_id"] == created["id"]
        assert record["level"] == "INFO"
        assert record["time"].endswith("+00:00")
    assert changes[1]["responded_by"] == "api-key"
    assert api_key not in server.log()


async def test_metrics_token_scrapes_a_live_server_and_sees_deliveries(tmp_path, api_key, execution_id):
    with running_server(tmp_path, HUMANINPUT_METRICS_TOKEN=METRICS_TOKEN) as server:

        async def scrape() -> str:
            async with httpx.AsyncClient(timeout=DEADLINE) as http:
                response = await http.get(f"{server.http_url}/metrics", headers=bearer(METRICS_TOKEN))
            assert response.status_code == 200
            return response.text

        ws = await ws_connect(server, execution_id, token=api_key)
        await eventually(scrape, accept=lambda text: 'humaninput_subscribers{transport="ws"} 1.0' in text)
        async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key)) as api:
            await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "?"})
        assert (await ws_recv(ws))["sequence"] == 1
        text = await scrape()
        await ws.close()
        await eventually(scrape, accept=lambda text: 'humaninput_subscribers{transport="ws"} 0.0' in text)
    assert 'humaninput_events_written_total{type="human_input_required"} 1.0' in text
    assert "humaninput_pending_requests 1.0" in text  # the test database holds only this one
    delivered = [line for line in text.splitlines() if line.startswith("humaninput_events_delivered_total")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in delivered if 'transport="ws"' in line) == 1.0


# --- database connections ----------------------------------------------------------------


@pytest.mark.services
@pytest.mark.parametrize("pool_size", ["0", "3"], ids=["no-pool", "pool-of-3"])
async def test_idle_subscribers_hold_no_database_connection_and_leave_none_behind(
    tmp_path, api_key, execution_id, pool_size
):
    """80 subscribers re-reading the log 5 times a second use at most the pool's connections
    (without a pool: the few of the database thread, closed after each read), and leave
    nothing but the pool behind."""
    assert uses_postgres()
    application_name = f"humaninput-test-{uuid.uuid4().hex[:8]}"
    limit = int(pool_size) or 2  # no pool: the shared database thread and a request's own thread

    @database_sync_to_async
    def server_connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
            )
            return cursor.fetchone()[0]

    env = {
        "PGAPPNAME": application_name,
        "HUMANINPUT_CATCHUP_SECONDS": "0.2",
        "DATABASE_POOL_MAX_SIZE": pool_size,
    }
    with running_server(tmp_path, **env) as server:
        async with contextlib.AsyncExitStack() as stack:
            sockets = [await ws_connect(server, execution_id, token=api_key) for _ in range(40)]
            for ws in sockets:
                stack.push_async_callback(ws.close)
            streams = [
                await stack.enter_async_context(sse_connect(server, execution_id, token=api_key))
                for _ in range(20)
            ]
            polls = [
                asyncio.create_task(poll(server, execution_id, token=api_key, wait="30")) for _ in range(20)
            ]
            for stream in streams:
                assert await stream.next_message() == {"retry": "3000"}
            await throughout(
                lambda: server_connections_at_most(server_connections, limit), seconds=2, what=f"<= {limit}"
            )
            for task in polls:
                task.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
        left = 0 if pool_size == "0" else int(pool_size)
        await eventually(server_connections, accept=lambda n: n <= left, what="connections given back")


async def server_connections_at_most(count, limit: int) -> bool:
    return await count() <= limit


# --- threads -------------------------------------------------------------------------------


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


async def test_open_streams_and_long_polls_hold_no_thread_each(server, api_key, execution_id):
    """150 clients waiting at once: the server's thread count stays that of an idle server, give or take."""
    idle = thread_count(server.process.pid)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            httpx.AsyncClient(timeout=DEADLINE + 35, limits=httpx.Limits(max_connections=None))
        )
        url = f"{server.http_url}/poll/human-input/{execution_id}"
        polls = [
            asyncio.create_task(http.get(url, params={"token": api_key, "wait": "30"})) for _ in range(100)
        ]
        streams = [
            await stack.enter_async_context(sse_connect(server, execution_id, token=api_key))
            for _ in range(50)
        ]
        for stream in streams:
            assert await stream.next_message() == {"retry": "3000"}
        waiting = 'humaninput_subscribers{transport="poll"} 100.0'

        async def scrape() -> str:
            response = await http.get(f"{server.http_url}/metrics", headers=bearer(api_key))
            return response.text

        await eventually(scrape, accept=lambda text: waiting in text, what="100 long polls waiting")
        assert thread_count(server.process.pid) <= idle + 10
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
