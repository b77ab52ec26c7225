"""An existing Django dashboard drops the inbox widget into its own template with one tag."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.template import Context, Template, TemplateSyntaxError
from django.test import override_settings

from events_app import services

HOST = Path(__file__).parent / "host_project"

host_project = override_settings(
    ROOT_URLCONF="tests.host_project.urls",
    TEMPLATES=[{**settings.TEMPLATES[0], "DIRS": [HOST / "templates"]}],
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("lead", password="pw", is_staff=True)
    client.force_login(user)
    return client


@host_project
def test_the_host_dashboard_renders_the_widget_with_its_own_layout(staff_client):
    services.request_create(execution_id="nightly-release", prompt="Promote the nightly build?")
    services.request_create(execution_id="other-run", prompt="Unrelated question")
    page = staff_client.get("/dashboard/").content.decode()
    assert "<h1>Release engineering</h1>" in page
    assert page.count("data-humaninput-inbox") == 2
    assert "Agents waiting for us" in page
    # URLs follow the host's mount point.
    assert 'data-stream-url="/humaninput/inbox/stream"' in page
    assert 'data-stream-url="/humaninput/inbox/stream?execution_id=nightly-release"' in page
    assert "/humaninput/api/human-input/requests/00000000-0000-0000-0000-000000000000/respond" in page
    assert "/static/events_app/humaninput-inbox.js" in page
    assert 'data-csrf-token="' in page and 'data-csrf-token=""' not in page


@host_project
def test_the_per_execution_widget_lists_only_its_execution(staff_client):
    services.request_create(execution_id="nightly-release", prompt="Promote the nightly build?")
    services.request_create(execution_id="other-run", prompt="Unrelated question")
    page = staff_client.get("/dashboard/").content.decode()
    aside = page[page.index("<aside>") :]
    assert "Promote the nightly build?" in aside
    assert "Unrelated question" not in aside


@host_project
def test_the_widget_escapes_what_agents_wrote(staff_client):
    services.request_create(execution_id="nightly-release", prompt="<script>alert(1)</script>")
    page = staff_client.get("/dashboard/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@host_project
def test_the_host_mounted_stream_answers_staff(staff_client):
    response = staff_client.get("/humaninput/inbox/stream")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    response.close()


def test_a_malformed_execution_id_in_the_tag_is_a_template_error():
    template = Template('{% load humaninput %}{% humaninput_inbox execution_id="bad id" %}')
    with pytest.raises(TemplateSyntaxError, match="execution_id"):
        template.render(Context({}))
