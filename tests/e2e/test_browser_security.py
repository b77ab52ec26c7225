"""Browser security against a real daphne: the Origin of session WebSockets, CSRF, HTTPS mode.

A browser attaches its session cookie to a WebSocket handshake whatever page
opens it, and WebSockets have no CSRF token: so a session may connect only
from an allowed Origin (4403 otherwise). Token clients are not affected: a
hostile page cannot hold the token.
"""

from __future__ import annotations

import httpx
import pytest
import websockets
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client

from .conftest import DEADLINE, bearer, running_server, ws_close_code, ws_recv

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@database_sync_to_async
def staff_session_cookie() -> str:
    """``sessionid=...`` of a logged-in staff user (the session lives in the shared database)."""
    user = get_user_model().objects.create_user("operator", is_staff=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture
async def session_cookie() -> str:
    return await staff_session_cookie()


async def create_request(server, api_key: str, execution_id: str) -> dict:
    async with httpx.AsyncClient(
        base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE
    ) as agent:
        response = await agent.post(
            "/api/human-input/requests", json={"execution_id": execution_id, "prompt": "?"}
        )
    assert response.status_code == 201
    return response.json()


def connect(
    server, execution_id: str, *, origin: str | None = None, cookie: str | None = None, token: str = ""
):
    headers = {"Cookie": cookie} if cookie else {}
    query = f"?token={token}" if token else ""
    return websockets.connect(
        f"{server.ws_url}/ws/human-input/{execution_id}{query}", origin=origin, additional_headers=headers
    )


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1.evil.example", "null"])
async def test_session_websocket_from_another_origin_is_closed_4403(
    server, session_cookie, execution_id, origin
):
    async with connect(server, execution_id, origin=origin, cookie=session_cookie) as ws:
        assert await ws_close_code(ws) == 4403


@pytest.mark.parametrize("origin", ["same", "http://localhost:1234", None])
async def test_session_websocket_from_an_allowed_origin_or_no_browser_is_served(
    server, session_cookie, execution_id, api_key, origin
):
    request = await create_request(server, api_key, execution_id)
    origin = server.http_url if origin == "same" else origin
    async with connect(server, execution_id, origin=origin, cookie=session_cookie) as ws:
        assert (await ws_recv(ws))["request_id"] == request["id"]


async def test_token_websocket_is_served_whatever_its_origin(server, execution_id, api_key):
    request = await create_request(server, api_key, execution_id)
    async with connect(server, execution_id, origin="http://evil.example", token=api_key) as ws:
        assert (await ws_recv(ws))["request_id"] == request["id"]


async def test_a_cookie_without_a_valid_session_from_another_origin_is_closed_4401(server, execution_id):
    async with connect(server, execution_id, origin="http://evil.example", cookie="sessionid=forged") as ws:
        assert await ws_close_code(ws) == 4401


async def test_session_write_from_another_origin_is_refused_even_with_the_csrf_token(
    server, session_cookie, execution_id, api_key
):
    """Django's CSRF check compares the Origin header too: a stolen token alone is not enough."""
    request = await create_request(server, api_key, execution_id)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as browser:
        await browser.get("/admin/login/")  # sets the csrftoken cookie
        csrf = browser.cookies["csrftoken"]
        headers = {"Cookie": f"{session_cookie}; csrftoken={csrf}", "X-CSRFToken": csrf}
        url = f"/api/human-input/requests/{request['id']}/respond"
        body = {"response": "forged"}
        cross = await browser.post(url, json=body, headers={**headers, "Origin": "http://evil.example"})
        assert cross.status_code == 403
        assert "CSRF" in cross.json()["detail"]
        without_token = await browser.post(url, json=body, headers={"Cookie": session_cookie})
        assert without_token.status_code == 403
        same = await browser.post(url, json=body, headers={**headers, "Origin": server.http_url})
        assert same.status_code == 200
        assert same.json()["responded_by"] == "user:operator"


@pytest.mark.parametrize("path", ["/api/tokens", "/api/tokens/0123456789abcdef0123456789abcdef/revoke"])
async def test_session_token_endpoints_need_the_csrf_token(server, session_cookie, execution_id, path):
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as browser:
        response = await browser.post(
            path, json={"execution_id": execution_id, "scope": "read"}, headers={"Cookie": session_cookie}
        )
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


async def test_https_mode_redirects_plain_http_but_not_the_probes(tmp_path, api_key):
    """DJANGO_HTTPS=1: browsers are sent to https, load balancers still probe /health over HTTP."""
    with running_server(tmp_path, DJANGO_HTTPS="1") as https_server:
        async with httpx.AsyncClient(
            base_url=https_server.http_url, headers=bearer(api_key), timeout=DEADLINE
        ) as client:
            health = await client.get("/health")
            metrics = await client.get("/metrics")
            api = await client.get("/api/human-input/requests")
            proxied = await client.get("/api/human-input/requests", headers={"X-Forwarded-Proto": "https"})
    assert health.status_code == 200
    assert metrics.status_code == 200
    assert api.status_code == 301
    assert api.headers["location"].startswith("https://")
    # Without DJANGO_SECURE_PROXY_SSL_HEADER the forwarded header is not trusted.
    assert proxied.status_code == 301


async def test_https_mode_security_headers(tmp_path, api_key):
    with running_server(tmp_path, DJANGO_HTTPS="1", DJANGO_SECURE_PROXY_SSL_HEADER="1") as https_server:
        async with httpx.AsyncClient(
            base_url=https_server.http_url, headers=bearer(api_key), timeout=DEADLINE
        ) as client:
            response = await client.get("/api/human-input/requests", headers={"X-Forwarded-Proto": "https"})
            login = await client.get("/admin/login/", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=3600; includeSubDomains"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert login.headers["x-frame-options"] == "DENY"
    cookies = login.headers.get_list("set-cookie")
    assert cookies and all("Secure" in cookie for cookie in cookies), cookies
