"""Every answer under our paths is JSON: unknown API paths, wrong methods on the streams."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "path",
    [
        "/api/",
        "/api/nothing-here",
        "/api/human-input/requests/",
        "/api/human-input/requests//respond",
        "/api/human-input/requests/a/b/respond",
        "/api/human-input/requests/00000000-0000-0000-0000-000000000000/answer",
        "/api/tokens//revoke",
        "/api/tokens/x/y/revoke",
    ],
)
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_unknown_path_under_api_is_a_json_404(client, api_key, path, method):
    response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["code"] == "unknown_endpoint"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "head", "options"])
@pytest.mark.parametrize("path", ["/events/human-input/run-1", "/inbox/stream"])
def test_any_method_but_get_on_a_stream_is_a_json_405_naming_get(client, api_key, method, path):
    # No CSRF token and no session: the method is refused before anything else looks.
    client.handler.enforce_csrf_checks = True
    response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert response["Content-Type"] == "application/json"
    if method != "head":
        assert json.loads(response.content) == {"code": "method_not_allowed", "detail": "Use GET."}


def test_the_schema_lets_either_credential_authenticate(client):
    openapi = json.loads(client.get("/api/schema/", {"format": "json"}).content)
    operations = [op for path in openapi["paths"].values() for op in path.values()]
    secured = [op["security"] for op in operations if op.get("security")]
    assert secured, "no operation declares credentials"
    assert all(security == [{"bearer": []}, {"tokenQuery": []}] for security in secured), secured
