"""The Django admin: browsing, filtering and searching requests and events, and answering from it.

In process with Django's test ``Client`` and pytest-django's ``admin_client``
(a logged-in superuser called "admin").
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.http import urlencode

from events_app import services, signals
from events_app.admin import ExecutionListFilter
from events_app.models import EventType, HumanInputEvent, HumanInputRequest, RequestStatus

pytestmark = pytest.mark.django_db

XSS = "<script>alert(1)</script>"
ESCAPED_XSS = "&lt;script&gt;alert(1)&lt;/script&gt;"


def create(execution_id: str, **kwargs) -> HumanInputRequest:
    kwargs.setdefault("prompt", "Approve the plan?")
    return services.request_create(execution_id=execution_id, **kwargs)


def changelist_url(model: str = "humaninputrequest") -> str:
    return reverse(f"admin:events_app_{model}_changelist")


def change_url(obj: HumanInputRequest | HumanInputEvent) -> str:
    return reverse(f"admin:events_app_{obj._meta.model_name}_change", args=[obj.pk])


def answer_url(obj: HumanInputRequest) -> str:
    return reverse("admin:events_app_humaninputrequest_answer", args=[obj.pk])


def cancel_url(obj: HumanInputRequest) -> str:
    return reverse("admin:events_app_humaninputrequest_cancel", args=[obj.pk])


def listed(response) -> list:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def event_types(request: HumanInputRequest) -> list[str]:
    return list(request.events.order_by("sequence").values_list("type", flat=True))


def answer(client: Client, obj: HumanInputRequest, text: str):
    return client.post(answer_url(obj), {"response": text}, follow=True)


def execution_choices(response) -> list[str]:
    [spec] = [s for s in response.context["cl"].filter_specs if isinstance(s, ExecutionListFilter)]
    return [value for value, _label in spec.lookup_choices]


@pytest.fixture
def pending(execution_id) -> HumanInputRequest:
    return create(execution_id)


@pytest.fixture
def staff_viewer(db) -> User:
    """A staff member who may look at requests and events but not answer."""
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_humaninputrequest", "view_humaninputevent"])
    )
    return user


# --- request changelist: filters and search ----------------------------------------


def test_request_changelist_lists_requests(admin_client, pending):
    assert listed(admin_client.get(changelist_url())) == [pending]


def test_request_changelist_filters_by_status(admin_client, execution_id, pending):
    answered = create(execution_id)
    services.request_respond(request_id=answered.id, response="yes")
    response = admin_client.get(changelist_url(), {"status__exact": "completed"})
    assert listed(response) == [answered]


def test_request_changelist_filters_by_execution(admin_client, pending, other_execution_id):
    create(other_execution_id)
    response = admin_client.get(changelist_url(), {"execution_id": pending.execution_id})
    assert listed(response) == [pending]


def test_execution_filter_offers_executions_waiting_for_a_human_first(
    admin_client, pending, other_execution_id
):
    newer = create(other_execution_id)
    services.request_cancel(request_id=newer.id)
    choices = execution_choices(admin_client.get(changelist_url()))
    assert choices.index(pending.execution_id) < choices.index(other_execution_id)


def test_execution_filter_offers_a_bounded_number_of_executions(admin_client, monkeypatch):
    monkeypatch.setattr(ExecutionListFilter, "max_choices", 3)
    for number in range(5):
        create(f"exec-bounded-{number}")
    assert len(execution_choices(admin_client.get(changelist_url()))) == 3


def test_execution_filter_keeps_a_selected_execution_that_is_not_offered(admin_client, monkeypatch):
    monkeypatch.setattr(ExecutionListFilter, "max_choices", 1)
    oldest = create("exec-oldest")
    create("exec-newest")
    response = admin_client.get(changelist_url(), {"execution_id": "exec-oldest"})
    assert "exec-oldest" in execution_choices(response)
    assert listed(response) == [oldest]


def test_request_changelist_filters_by_created_date(admin_client, execution_id, pending):
    old = create(execution_id)
    HumanInputRequest.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=30))
    response = admin_client.get(changelist_url())
    [spec] = [s for s in response.context["cl"].filter_specs if getattr(s, "field_path", "") == "created_at"]
    [past_week] = [c for c in spec.choices(response.context["cl"]) if c["display"] == "Past 7 days"]
    assert listed(admin_client.get(changelist_url() + past_week["query_string"])) == [pending]


def test_request_changelist_drills_down_by_year(admin_client, execution_id, pending):
    old = create(execution_id)
    HumanInputRequest.objects.filter(pk=old.pk).update(created_at=datetime(2020, 6, 1, tzinfo=UTC))
    assert listed(admin_client.get(changelist_url(), {"created_at__year": 2020})) == [old]


def test_request_search_matches_prompt_text(admin_client, execution_id):
    wanted = create(execution_id, prompt="Which region should we deploy to?")
    create(execution_id, prompt="Approve the budget?")
    assert listed(admin_client.get(changelist_url(), {"q": "region"})) == [wanted]


def test_request_search_matches_context(admin_client, execution_id):
    wanted = create(execution_id, context="The Friday release train")
    create(execution_id, context="Nothing to see")
    assert listed(admin_client.get(changelist_url(), {"q": "release train"})) == [wanted]


def test_request_search_matches_execution_id(admin_client, pending, other_execution_id):
    create(other_execution_id)
    assert listed(admin_client.get(changelist_url(), {"q": pending.execution_id})) == [pending]


def test_request_search_by_uuid_finds_exactly_that_request(admin_client, execution_id, pending):
    create(execution_id)
    assert listed(admin_client.get(changelist_url(), {"q": str(pending.id)})) == [pending]


def test_request_changelist_escapes_markup_in_the_prompt(admin_client, execution_id):
    create(execution_id, prompt=XSS)
    content = admin_client.get(changelist_url()).content.decode()
    assert XSS not in content
    assert ESCAPED_XSS in content


# --- event changelist ---------------------------------------------------------------


def test_event_changelist_filters_by_type(admin_client, pending):
    services.request_respond(request_id=pending.id, response="yes")
    response = admin_client.get(changelist_url("humaninputevent"), {"type__exact": EventType.COMPLETED})
    assert [event.type for event in listed(response)] == [EventType.COMPLETED]


def test_event_search_by_request_id_finds_its_events(admin_client, execution_id, pending):
    services.request_respond(request_id=pending.id, response="yes")
    create(execution_id)
    response = admin_client.get(changelist_url("humaninputevent"), {"q": str(pending.id)})
    assert {event.request_id for event in listed(response)} == {pending.id}
    assert len(listed(response)) == 2


def test_event_search_by_event_id_finds_that_event(admin_client, pending):
    services.request_respond(request_id=pending.id, response="yes")
    required = pending.required_event
    response = admin_client.get(changelist_url("humaninputevent"), {"q": str(required.event_id)})
    assert listed(response) == [required]


def test_event_search_matches_execution_id(admin_client, pending, other_execution_id):
    create(other_execution_id)
    response = admin_client.get(changelist_url("humaninputevent"), {"q": other_execution_id})
    assert [event.execution_id for event in listed(response)] == [other_execution_id]


def test_event_changelist_links_each_event_to_its_request(admin_client, pending):
    content = admin_client.get(changelist_url("humaninputevent")).content.decode()
    assert f'href="{change_url(pending)}"' in content


# --- no N+1 -------------------------------------------------------------------------


def count_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


def create_mixed_requests(count: int) -> None:
    """``count`` requests over as many executions, every other one answered."""
    for number in range(count):
        request = create(f"exec-many-{number}", prompt=f"Question {number}")
        if number % 2:
            services.request_respond(request_id=request.id, response="yes")


def test_request_changelist_query_count_does_not_grow_with_rows(admin_client, django_assert_num_queries):
    create_mixed_requests(1)
    for_one_row = count_queries(admin_client, changelist_url())
    create_mixed_requests(20)
    with django_assert_num_queries(for_one_row):
        response = admin_client.get(changelist_url())
    assert len(listed(response)) == 21


def test_event_changelist_query_count_does_not_grow_with_rows(admin_client, django_assert_num_queries):
    create_mixed_requests(1)
    for_one_row = count_queries(admin_client, changelist_url("humaninputevent"))
    create_mixed_requests(20)
    with django_assert_num_queries(for_one_row):
        response = admin_client.get(changelist_url("humaninputevent"))
    assert len(listed(response)) == 31


# --- the request page ---------------------------------------------------------------


def test_request_page_lists_its_events_in_sequence_order(admin_client, pending):
    services.request_respond(request_id=pending.id, response="yes")
    response = admin_client.get(change_url(pending))
    [events] = response.context["inline_admin_formsets"]
    assert [form.original.sequence for form in events] == [1, 2]


def test_request_page_shows_event_payloads_as_indented_json(admin_client, pending):
    content = admin_client.get(change_url(pending)).content.decode()
    assert '<pre class="humaninput-json">{\n  &quot;type&quot;: &quot;human_input_required&quot;,' in content


@pytest.mark.parametrize("field", ["prompt", "context", "metadata"])
def test_request_page_escapes_markup_in_user_text(admin_client, execution_id, field):
    value = {"note": XSS} if field == "metadata" else XSS
    request = create(execution_id, **{field: value})
    content = admin_client.get(change_url(request)).content.decode()
    assert XSS not in content
    assert ESCAPED_XSS in content


def test_event_page_shows_its_payload_escaped(admin_client, execution_id):
    request = create(execution_id, prompt=XSS)
    content = admin_client.get(change_url(request.required_event)).content.decode()
    assert XSS not in content
    assert f"&quot;prompt&quot;: &quot;{ESCAPED_XSS}&quot;" in content


def test_pending_request_page_offers_the_answer_form(admin_client, pending):
    content = admin_client.get(change_url(pending)).content.decode()
    assert f'<form id="humaninput-answer-form" method="post" action="{answer_url(pending)}">' in content
    assert f'<form id="humaninput-cancel-form" method="post" action="{cancel_url(pending)}">' in content


def test_resolved_request_page_offers_no_answer_form(admin_client, pending):
    services.request_respond(request_id=pending.id, response="yes")
    content = admin_client.get(change_url(pending)).content.decode()
    assert "humaninput-answer-form" not in content


# --- answering ----------------------------------------------------------------------


def test_answer_form_completes_the_request_as_the_admin_user(admin_client, admin_user, pending):
    response = answer(admin_client, pending, "Ship it")
    pending.refresh_from_db()
    assert (pending.status, pending.response) == (RequestStatus.COMPLETED, "Ship it")
    assert pending.responded_by == f"user:{admin_user.get_username()}"
    assert response.redirect_chain[-1][0] == change_url(pending)


def test_answer_form_appends_the_completed_event_with_the_answer(admin_client, pending):
    answer(admin_client, pending, "Ship it")
    completed = pending.events.get(type=EventType.COMPLETED)
    assert completed.sequence == 2
    assert completed.payload["human_feedback"] == "Ship it"


def test_answer_form_publishes_the_completed_event_on_commit(
    admin_client, pending, monkeypatch, django_capture_on_commit_callbacks
):
    published = []
    monkeypatch.setattr(signals, "publish_event", published.append)
    with django_capture_on_commit_callbacks(execute=True):
        answer(admin_client, pending, "Ship it")
    assert [(p["type"], p["human_feedback"]) for p in published] == [(EventType.COMPLETED, "Ship it")]


def test_answer_returns_to_the_request_page_with_the_changelist_filters_kept(admin_client, pending):
    filters = urlencode({"_changelist_filters": "status__exact=pending"})
    page = admin_client.get(f"{change_url(pending)}?{filters}").content.decode()
    assert f'action="{answer_url(pending)}?{escape(filters)}"' in page
    response = admin_client.post(f"{answer_url(pending)}?{filters}", {"response": "yes"})
    assert response["Location"] == f"{change_url(pending)}?{filters}"


def test_answering_a_completed_request_shows_an_error_and_changes_nothing(admin_client, pending):
    services.request_respond(request_id=pending.id, response="first", responded_by="agent")
    response = answer(admin_client, pending, "second")
    pending.refresh_from_db()
    assert (pending.response, pending.responded_by) == ("first", "agent")
    assert event_types(pending) == [EventType.REQUIRED, EventType.COMPLETED]
    assert messages_of(response) == ["This request is already completed. Your answer was not recorded."]


def test_answering_an_overdue_request_reports_it_expired(admin_client, pending):
    HumanInputRequest.objects.filter(pk=pending.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = answer(admin_client, pending, "too late")
    pending.refresh_from_db()
    assert pending.status == RequestStatus.EXPIRED
    assert messages_of(response) == ["This request is already expired. Your answer was not recorded."]


def test_empty_answer_is_refused_and_the_request_stays_pending(admin_client, pending):
    response = answer(admin_client, pending, "   ")
    pending.refresh_from_db()
    assert pending.status == RequestStatus.PENDING
    assert messages_of(response) == ["Write an answer before sending it."]


def test_answer_for_an_unknown_request_redirects_with_a_warning(admin_client):
    missing = uuid.uuid4()
    url = reverse("admin:events_app_humaninputrequest_answer", args=[missing])
    response = admin_client.post(url, {"response": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:index")
    assert str(missing) in messages_of(response)[0]


# --- cancelling ---------------------------------------------------------------------


def test_cancel_button_cancels_the_request_as_the_admin_user(admin_client, admin_user, pending):
    admin_client.post(cancel_url(pending))
    pending.refresh_from_db()
    assert pending.status == RequestStatus.CANCELLED
    assert pending.responded_by == f"user:{admin_user.get_username()}"
    assert event_types(pending) == [EventType.REQUIRED, EventType.CANCELLED]


def test_cancelling_a_resolved_request_shows_an_error(admin_client, pending):
    services.request_respond(request_id=pending.id, response="yes")
    response = admin_client.post(cancel_url(pending), follow=True)
    pending.refresh_from_db()
    assert pending.status == RequestStatus.COMPLETED
    assert messages_of(response) == ["This request is already completed. Nothing was cancelled."]


def cancel_selected(client: Client, *requests: HumanInputRequest):
    data = {"action": "cancel_selected", "_selected_action": [str(r.pk) for r in requests]}
    return client.post(changelist_url(), data, follow=True)


def test_cancel_action_cancels_selected_pending_requests_with_their_events(admin_client, execution_id):
    first, second = create(execution_id), create(execution_id)
    cancel_selected(admin_client, first, second)
    for request in (first, second):
        request.refresh_from_db()
        assert request.status == RequestStatus.CANCELLED
        assert event_types(request) == [EventType.REQUIRED, EventType.CANCELLED]


def test_cancel_action_counts_cancelled_and_no_longer_pending_requests(admin_client, execution_id):
    first, second, answered = create(execution_id), create(execution_id), create(execution_id)
    services.request_respond(request_id=answered.id, response="yes")
    response = cancel_selected(admin_client, first, second, answered)
    answered.refresh_from_db()
    assert answered.status == RequestStatus.COMPLETED
    assert messages_of(response) == ["Cancelled 2 requests. 1 was no longer pending."]


# --- who may do what ----------------------------------------------------------------


def test_non_staff_user_is_redirected_to_login(client, db):
    client.force_login(User.objects.create_user("visitor", password="x"))
    response = client.get(changelist_url())
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_non_staff_answer_is_redirected_to_login_and_changes_nothing(client, pending):
    client.force_login(User.objects.create_user("visitor", password="x"))
    response = client.post(answer_url(pending), {"response": "yes"})
    pending.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert pending.status == RequestStatus.PENDING


def test_staff_without_change_permission_cannot_answer(client, staff_viewer, pending):
    client.force_login(staff_viewer)
    response = client.post(answer_url(pending), {"response": "yes"})
    pending.refresh_from_db()
    assert response.status_code == 403
    assert pending.status == RequestStatus.PENDING


def test_staff_without_change_permission_sees_no_answer_form(client, staff_viewer, pending):
    client.force_login(staff_viewer)
    response = client.get(change_url(pending))
    assert response.status_code == 200
    assert "humaninput-answer-form" not in response.content.decode()


def test_staff_without_change_permission_is_not_offered_the_cancel_action(client, staff_viewer, pending):
    client.force_login(staff_viewer)
    response = client.get(changelist_url())
    assert response.status_code == 200
    assert "cancel_selected" not in response.content.decode()


@pytest.mark.parametrize("url", [answer_url, cancel_url], ids=["answer", "cancel"])
def test_get_on_answer_and_cancel_urls_is_405(admin_client, pending, url):
    assert admin_client.get(url(pending)).status_code == 405


@pytest.mark.parametrize("url", [answer_url, cancel_url], ids=["answer", "cancel"])
def test_post_without_csrf_token_is_403(admin_user, pending, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(url(pending), {"response": "yes"})
    pending.refresh_from_db()
    assert response.status_code == 403
    assert pending.status == RequestStatus.PENDING


def test_answer_with_the_csrf_token_of_the_page_is_accepted(admin_user, pending):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    page = client.get(change_url(pending)).content.decode()
    form = re.search(r'<form id="humaninput-answer-form".*?</form>', page, re.DOTALL).group()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)
    response = client.post(answer_url(pending), {"response": "yes", "csrfmiddlewaretoken": token})
    pending.refresh_from_db()
    assert response.status_code == 302
    assert pending.status == RequestStatus.COMPLETED


@pytest.mark.parametrize("model", ["humaninputrequest", "humaninputevent"])
def test_admin_cannot_add(admin_client, model):
    assert admin_client.get(reverse(f"admin:events_app_{model}_add")).status_code == 403


def test_admin_cannot_edit_a_request_through_its_form(admin_client, pending):
    response = admin_client.post(change_url(pending), {"prompt": "rewritten"})
    pending.refresh_from_db()
    assert response.status_code == 403
    assert pending.prompt == "Approve the plan?"


@pytest.mark.parametrize("target", ["request", "event"])
def test_admin_cannot_delete(admin_client, pending, target):
    obj = pending if target == "request" else pending.required_event
    url = reverse(f"admin:events_app_{obj._meta.model_name}_delete", args=[obj.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert HumanInputEvent.objects.filter(request=pending).exists()


# --- tokens: the audit trail and revocation ------------------------------------------


def revoke_selected(client, *tokens):
    return client.post(
        changelist_url("scopedtoken"),
        {"action": "revoke_selected", "_selected_action": [token.pk for token in tokens]},
        follow=True,
    )


def test_an_answer_given_with_a_token_links_to_that_token(admin_client, pending):
    _, record = services.token_issue(execution_id=pending.execution_id, scope="respond", issued_by="api-key")
    services.request_respond(request_id=pending.id, response="yes", responded_by=f"token:{record.token_id}")
    token_page = reverse("admin:events_app_scopedtoken_change", args=[record.token_id])
    for page in (admin_client.get(changelist_url()), admin_client.get(change_url(pending))):
        assert f'<a href="{token_page}">token:{record.token_id}</a>' in page.content.decode()


def test_an_answer_given_in_the_admin_names_the_user_without_a_link(admin_client, pending):
    admin_client.post(answer_url(pending), {"response": "yes"})
    page = admin_client.get(change_url(pending)).content.decode()
    assert "user:admin" in page
    assert "/scopedtoken/" not in page.split('id="content"', 1)[1]


def test_token_changelist_shows_who_issued_each_token_and_filters_revoked(admin_client, execution_id):
    _, kept = services.token_issue(execution_id=execution_id, scope="read", issued_by="user:alice")
    _, revoked = services.token_issue(execution_id=execution_id, scope="respond", issued_by="api-key")
    services.token_revoke(token_id=revoked.token_id, revoked_by="api-key")
    page = admin_client.get(changelist_url("scopedtoken"))
    assert {token.pk for token in listed(page)} >= {kept.pk, revoked.pk}
    assert "user:alice" in page.content.decode()
    only_revoked = listed(admin_client.get(changelist_url("scopedtoken") + "?revoked_at__isempty=0"))
    assert [token.pk for token in only_revoked] == [revoked.pk]


def test_token_search_by_token_id_finds_that_token(admin_client, execution_id):
    _, wanted = services.token_issue(execution_id=execution_id, scope="read")
    services.token_issue(execution_id=execution_id, scope="read")
    found = listed(admin_client.get(changelist_url("scopedtoken") + "?" + urlencode({"q": wanted.token_id})))
    assert [token.pk for token in found] == [wanted.pk]


def test_revoke_action_revokes_the_selected_tokens_as_the_admin_user(admin_client, execution_id):
    _, first = services.token_issue(execution_id=execution_id, scope="read")
    _, second = services.token_issue(execution_id=execution_id, scope="read")
    _, untouched = services.token_issue(execution_id=execution_id, scope="read")
    response = revoke_selected(admin_client, first, second)
    assert messages_of(response) == ["Revoked 2 tokens."]
    for token in (first, second, untouched):
        token.refresh_from_db()
    assert (first.revoked_by, second.revoked_by) == ("user:admin", "user:admin")
    assert untouched.revoked_at is None


def test_token_records_cannot_be_edited_or_deleted_in_the_admin(admin_client, execution_id):
    _, record = services.token_issue(execution_id=execution_id, scope="read")
    page = admin_client.get(change_url(record)).content.decode()
    assert 'name="execution_id"' not in page
    delete_url = reverse("admin:events_app_scopedtoken_delete", args=[record.pk])
    assert admin_client.post(delete_url).status_code == 403


def test_staff_without_change_permission_is_not_offered_the_revoke_action(client, execution_id):
    viewer = User.objects.create_user("viewer2", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_scopedtoken"))
    services.token_issue(execution_id=execution_id, scope="read")
    client.force_login(viewer)
    response = client.get(changelist_url("scopedtoken"))
    assert response.status_code == 200
    assert "revoke_selected" not in response.content.decode()
