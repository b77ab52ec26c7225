"""Requests past ``expires_at`` become ``expired`` with their event, without anyone reading them.

Each server process expires overdue requests every
``HUMANINPUT_EXPIRY_INTERVAL_SECONDS`` (default 1); with 0 it leaves that to
``manage.py humaninput_expire``. Servers here are started per test: a
module-wide server's scheduler would expire the requests the command and
the disabled-scheduler tests need to find still pending.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from events_app import services
from events_app.models import HumanInputEvent, HumanInputRequest

from ..conftest import eventually, throughout
from .conftest import (
    CATCH_UP_SECONDS,
    DEADLINE,
    REQUESTS,
    RESOLVED_FIELDS,
    ROOT,
    DaphneServer,
    api_client,
    assert_timestamp,
    create_request,
    database_url,
    running_server,
    ws_connect,
    ws_recv,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def request_status(request_id: str) -> str:
    return HumanInputRequest.objects.get(pk=request_id).status


def logged_types(request_id: str) -> list[str]:
    events = HumanInputEvent.objects.filter(request_id=request_id).order_by("sequence")
    return list(events.values_list("type", flat=True))


def create_overdue(execution_id: str) -> str:
    """A pending request whose ``expires_at`` has already passed.

    Only a direct write makes it (the API takes no past deadline); nothing waits on its doorbell.
    """
    request = services.request_create(execution_id=execution_id, prompt="Ship it?", timeout_seconds=60)
    HumanInputRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return str(request.id)


status_of = database_sync_to_async(request_status)
event_types = database_sync_to_async(logged_types)


@pytest.fixture
def expiring_server(django_db_setup, tmp_path) -> Iterator[DaphneServer]:
    """A daphne with the default expiry scheduler (every second)."""
    with running_server(tmp_path, HUMANINPUT_CATCHUP_SECONDS=CATCH_UP_SECONDS) as started:
        yield started


@pytest.fixture
async def api(expiring_server, api_key) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(expiring_server, api_key) as client:
        yield client


async def ask_with_timeout(api: httpx.AsyncClient, execution_id: str, seconds: float) -> dict:
    identity = {"crew_id": "crew-1", "task_id": "task-1", "agent_id": "agent-1"}
    return await create_request(api, execution_id, timeout_seconds=seconds, **identity)


async def wait_for_status(request_id: str, status: str) -> None:
    """The server's scheduler writes the change; re-read the database until it is there."""
    await eventually(
        lambda: status_of(request_id),
        accept=lambda current: current == status,
        deadline=DEADLINE,
        what=f"status {status}",
    )


async def test_an_unread_request_expires_on_its_own_with_its_event(api, execution_id):
    created = await ask_with_timeout(api, execution_id, 1)
    await wait_for_status(created["id"], "expired")
    assert await event_types(created["id"]) == ["human_input_required", "human_input_expired"]


async def test_a_subscriber_sees_human_input_expired_with_the_spec_fields(
    expiring_server, api, api_key, execution_id
):
    ws = await ws_connect(expiring_server, execution_id, token=api_key)
    created = await ask_with_timeout(api, execution_id, 1)
    required = await ws_recv(ws)
    expired = await ws_recv(ws)
    await ws.close()
    assert set(expired) == RESOLVED_FIELDS
    assert expired == {
        **expired,
        "type": "human_input_expired",
        "execution_id": execution_id,
        "crew_id": "crew-1",
        "task_id": "task-1",
        "agent_id": "agent-1",
        "request_id": created["id"],
        "sequence": required["sequence"] + 1,
    }
    assert expired["event_id"] != required["event_id"]
    assert_timestamp(expired["timestamp"])


async def test_answering_after_expiry_is_409_with_status_expired(api, execution_id):
    created = await ask_with_timeout(api, execution_id, 1)
    await wait_for_status(created["id"], "expired")
    response = await api.post(f"{REQUESTS}/{created['id']}/respond", json={"response": "too late"})
    assert response.status_code == 409
    assert response.json()["status"] == "expired"
    assert response.json()["request"]["status"] == "expired"
    assert await event_types(created["id"]) == ["human_input_required", "human_input_expired"]


async def test_a_request_answered_in_time_does_not_expire(api, execution_id):
    created = await ask_with_timeout(api, execution_id, 1)
    answer = await api.post(f"{REQUESTS}/{created['id']}/respond", json={"response": "in time"})
    assert answer.status_code == 200

    # Asserting an absence: through two scheduler rounds past expires_at, nothing changes.
    async def unchanged() -> bool:
        return await status_of(created["id"]) == "completed" and await event_types(created["id"]) == [
            "human_input_required",
            "human_input_completed",
        ]

    await throughout(unchanged, seconds=2.5, what="the completed request staying completed")


def command_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HUMANINPUT_", "DJANGO_"))}
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="humaninput_project.settings",
        DJANGO_SECRET_KEY=settings.SECRET_KEY,
        HUMANINPUT_API_KEY=settings.HUMANINPUT_API_KEY,
        PYTHONPATH=str(ROOT),
    )
    if getattr(settings, "REDIS_URL", ""):
        env["REDIS_URL"] = settings.REDIS_URL
    else:
        env.pop("REDIS_URL", None)
    return env


def run_expire_command() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "humaninput_expire"],
        cwd=ROOT,
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_expire_command_expires_an_overdue_request(execution_id):
    request_id = create_overdue(execution_id)
    done = run_expire_command()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "expired 1 request(s)"
    assert request_status(request_id) == "expired"
    assert logged_types(request_id) == ["human_input_required", "human_input_expired"]


def test_the_expire_command_leaves_requests_not_yet_due(execution_id):
    # No server runs here (the command is what is tested): written straight to the database.
    request = services.request_create(execution_id=execution_id, prompt="later", timeout_seconds=3600)
    done = run_expire_command()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "expired 0 request(s)"
    assert request_status(str(request.id)) == "pending"


async def test_a_server_with_the_scheduler_off_leaves_overdue_requests_pending(
    tmp_path, api_key, execution_id
):
    request_id = await database_sync_to_async(create_overdue)(execution_id)
    with running_server(tmp_path, HUMANINPUT_EXPIRY_INTERVAL_SECONDS="0") as server:
        async with api_client(server, api_key) as client:

            async def still_pending() -> bool:
                detail = await client.get(f"{REQUESTS}/{request_id}")
                return detail.status_code == 200 and detail.json()["status"] == "pending"

            # Asserting an absence: for longer than two default scheduler rounds,
            # while the server serves requests, the overdue request stays pending.
            await throughout(still_pending, seconds=2.5, what="the overdue request staying pending")
    assert await database_sync_to_async(logged_types)(request_id) == ["human_input_required"]
