"""``/metrics``: who may read it, and that each series moves when what it counts happens."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from events_app import services
from events_app.auth import issue_token
from humaninput_project.asgi import application

METRICS_TOKEN = "metrics-only-token"
SERIES = (
    "humaninput_subscribers",
    "humaninput_events_written_total",
    "humaninput_events_published_total",
    "humaninput_publish_failures_total",
    "humaninput_catchup_reads_total",
    "humaninput_events_delivered_total",
    "humaninput_pending_requests",
    "humaninput_publish_deliver_seconds_bucket",
)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def client() -> Client:
    return Client()


# --- access ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_with_the_api_key_are_prometheus_text_with_every_series(client, api_key):
    response = client.get("/metrics", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    for name in SERIES:
        assert f"\n{name}" in text, name


@pytest.mark.django_db
@override_settings(HUMANINPUT_METRICS_TOKEN=METRICS_TOKEN)
def test_the_metrics_token_opens_metrics_and_nothing_else(client, execution_id):
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/metrics", headers=headers).status_code == 200
    assert client.get(f"/poll/human-input/{execution_id}", headers=headers).status_code == 401
    assert client.get("/api/human-input/requests", headers=headers).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer " + "x" * 10_000, "Bearer clé", "Basic dXNlcjpwYXNz", "Bearer "],
    ids=["none", "wrong", "huge", "non-ascii", "basic", "empty"],
)
def test_metrics_without_valid_credentials_are_a_401_json(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_metrics_refuse_a_token_scoped_to_one_execution(client, execution_id):
    token, _ = issue_token(execution_id=execution_id, scope="respond")
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize(("is_staff", "status"), [(True, 200), (False, 401)])
def test_metrics_follow_the_session_staff_flag(client, is_staff, status):
    client.force_login(User.objects.create(username="someone", is_staff=is_staff))
    assert client.get("/metrics").status_code == status


@pytest.mark.django_db
def test_metrics_refuse_writes(client, api_key):
    response = client.post("/metrics", headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 405


# --- what the series count ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_each_committed_state_change_counts_one_event_of_its_type(execution_id):
    required = sample("humaninput_events_written_total", type="human_input_required")
    completed = sample("humaninput_events_written_total", type="human_input_completed")
    request = services.request_create(execution_id=execution_id, prompt="?")
    services.request_respond(request_id=request.id, response="yes")
    assert sample("humaninput_events_written_total", type="human_input_required") == required + 1
    assert sample("humaninput_events_written_total", type="human_input_completed") == completed + 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_write_counts_nothing(execution_id):
    before = sample("humaninput_events_written_total", type="human_input_required")
    with pytest.raises(RuntimeError), services.transaction.atomic():
        services.request_create(execution_id=execution_id, prompt="?")
        raise RuntimeError("roll back")
    assert sample("humaninput_events_written_total", type="human_input_required") == before


@pytest.mark.django_db
def test_pending_requests_are_counted_in_the_database(client, api_key, execution_id):
    first = services.request_create(execution_id=execution_id, prompt="1")
    services.request_create(execution_id=execution_id, prompt="2")
    services.request_create(execution_id=execution_id, prompt="3")
    services.request_cancel(request_id=first.id)
    pending = services.HumanInputRequest.objects.filter(status="pending").count()
    assert pending >= 2
    text = client.get("/metrics", headers={"Authorization": f"Bearer {api_key}"}).content.decode()
    assert f"\nhumaninput_pending_requests {float(pending)}\n" in text


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_channel_layer", "layer_ready")
async def test_a_websocket_subscriber_is_counted_while_connected_and_its_doorbell_timed(
    api_key, execution_id
):
    asample = database_sync_to_async(sample)  # a scrape also counts pending requests in the database
    connected = await asample("humaninput_subscribers", transport="ws")
    timed = await asample("humaninput_publish_deliver_seconds_count", transport="ws")
    communicator = WebsocketCommunicator(application, f"/ws/human-input/{execution_id}?token={api_key}")
    assert (await communicator.connect(timeout=5))[0]
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=5) == {"type": "pong"}  # connect() has finished
    assert await asample("humaninput_subscribers", transport="ws") == connected + 1
    await database_sync_to_async(services.request_create)(execution_id=execution_id, prompt="?")
    assert (await communicator.receive_json_from(timeout=5))["sequence"] == 1
    assert await asample("humaninput_publish_deliver_seconds_count", transport="ws") == timed + 1
    await communicator.disconnect(timeout=5)
    assert await asample("humaninput_subscribers", transport="ws") == connected


# --- logs of state changes ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_state_change_is_logged_once_with_its_identity(execution_id, app_log):
    request = services.request_create(execution_id=execution_id, prompt="?")
    services.request_respond(request_id=request.id, response="yes", responded_by="user:ann")
    records = [r for r in app_log.records if r.name == "events_app.services"]
    assert [(r.status, r.event_type, r.sequence) for r in records] == [
        ("pending", "human_input_required", 1),
        ("completed", "human_input_completed", 2),
    ]
    assert {r.execution_id for r in records} == {execution_id}
    assert {r.request_id for r in records} == {str(request.id)}
    assert records[1].responded_by == "user:ann"
