"""The parts of the error policy (``streaming.opening``) that need no server: the query parser,
a database outage once a subscription is open, a WebSocket answer while the database is down."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError
from django.test import override_settings

from events_app import log, services, signals
from events_app.auth import Principal
from events_app.exceptions import InvalidParameter, ServiceUnavailable
from events_app.params import Query
from events_app.streaming import frames
from events_app.streaming.subscription import ExecutionSubscription

FULL_ACCESS = Principal(name="api-key")

create_request = database_sync_to_async(services.request_create)


@pytest.mark.parametrize("raw", [b"a=1&b=2", "a=1&b=2"], ids=["scope-bytes", "request-text"])
def test_a_query_reads_each_parameter_once(raw):
    query = Query(raw)
    assert (query.get("a"), query.get("b"), query.get("missing")) == ("1", "2", None)


@pytest.mark.parametrize("raw", ["token=a&token=b", "token=a&token=a", "token=&token=b", "token&token"])
def test_a_parameter_given_twice_is_refused_whatever_its_values(raw):
    with pytest.raises(InvalidParameter) as refused:
        Query(raw).get("token")
    assert refused.value.extra == {"field": "token"}


def test_percent_escapes_decode_as_utf8_and_a_broken_one_does_not_raise():
    assert Query("token=cl%C3%A9").get("token") == "clé"
    assert Query(b"token=%FF%FE").get("token") == "\ufffd\ufffd"
    assert Query("token=").present("token") is False
    assert Query("token=x&token=").present("token") is True


class FailingReads:
    """``log.aevents_after`` failing ``times`` times (the database down), then reading for real."""

    def __init__(self, times: int) -> None:
        self.left = times
        self.real = log.aevents_after

    async def __call__(self, **kwargs):
        if self.left > 0:
            self.left -= 1
            raise OperationalError("the database went away")
        return await self.real(**kwargs)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_channel_layer", "close_view_connections")
async def test_the_first_read_of_a_subscription_reports_the_database_down(monkeypatch, execution_id):
    monkeypatch.setattr(log, "aevents_after", FailingReads(times=1))
    followed = ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    )
    async with followed:
        with pytest.raises(ServiceUnavailable):
            await followed.read_log()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_channel_layer", "close_view_connections")
@override_settings(HUMANINPUT_CATCHUP_SECONDS=0.2)
async def test_an_open_subscription_rides_out_a_database_outage_and_loses_nothing(
    monkeypatch, execution_id, app_log
):
    followed = ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="sse"
    )
    async with followed:
        assert await followed.read_log() == []
        failing = FailingReads(times=3)
        monkeypatch.setattr(log, "aevents_after", failing)
        monkeypatch.setattr(signals, "publish_event", lambda payload: None)  # found by catch-up reads
        created = await create_request(execution_id=execution_id, prompt="while the database is down")
        received = []
        while not received:  # every call is bounded; the loop ends once the reads succeed
            received = await followed.next_events(max_wait=5)
    assert failing.left == 0
    assert [event["request_id"] for event in received] == [str(created.id)]
    outages = [record for record in app_log.records if "database unavailable" in record.getMessage()]
    assert outages and all(record.exc_info is None for record in outages)  # one line each, no traceback


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_channel_layer", "close_view_connections")
async def test_an_answer_sent_while_the_database_is_down_gets_an_error_frame(monkeypatch, execution_id):
    def database_down(**kwargs):
        raise OperationalError("the database went away")

    monkeypatch.setattr(services, "request_respond", database_down)
    followed = ExecutionSubscription(
        execution_id=execution_id, after_sequence=0, principal=FULL_ACCESS, transport="ws"
    )
    frame = '{"type": "respond", "request_id": "00000000-0000-0000-0000-000000000000", "response": "yes"}'
    reply = await frames.answer_frame(followed, frame, None)
    assert reply == {"type": "error", **ServiceUnavailable().as_dict()}
