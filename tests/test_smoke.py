import pytest

from events_app import services
from events_app.log import events_after


@pytest.mark.django_db(transaction=True)
def test_created_request_is_the_first_event_of_its_execution(execution_id):
    request = services.request_create(execution_id=execution_id, prompt="Approve?")
    events = events_after(execution_id=execution_id, after_sequence=0)
    assert [e["sequence"] for e in events] == [1]
    assert events[0]["request_id"] == str(request.id)
