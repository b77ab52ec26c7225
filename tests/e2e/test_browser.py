"""The inbox in a real browser: staff see requests arrive live, answer them, and nothing runs as HTML."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from playwright.async_api import async_playwright, expect

from events_app.client import HumanInputClient

from .browser import CHROMIUM, CHROMIUM_FLAGS, keep_screenshot
from .conftest import DEADLINE, bearer

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def staff_user():
    return await database_sync_to_async(get_user_model().objects.create_superuser)(
        "operator", "operator@example.com", PASSWORD
    )


@pytest.fixture
async def page(server, staff_user):
    """A logged-in staff browser page."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = await browser.new_context(viewport={"width": 1100, "height": 800})
        page = await context.new_page()
        page.set_default_timeout(DEADLINE * 1000)
        await page.goto(f"{server.http_url}/admin/login/?next=/inbox/")
        await page.fill("#id_username", "operator")
        await page.fill("#id_password", PASSWORD)
        await page.click("input[type=submit]")
        await page.wait_for_url(f"{server.http_url}/inbox/")
        yield page
        await browser.close()


async def connected(page) -> None:
    await expect(page.locator("[data-humaninput-inbox]")).to_have_attribute("data-hi-connected", "true")


def card(page, text: str):
    return page.locator(".hi-card", has_text=text)


async def test_a_request_from_outside_appears_live_and_the_answer_reaches_the_agent(
    server, api_key, execution_id, page, tmp_path
):
    await connected(page)
    agent = HumanInputClient(server.http_url, token=api_key)
    asking = asyncio.create_task(
        agent.ask_async(
            execution_id,
            "Deploy release 1.2 to production?",
            context="All checks green; touches billing.",
            reason_flags={"ambiguity": True},
            agent_id="release-bot",
            timeout=60,
        )
    )
    question = card(page, "Deploy release 1.2 to production?")
    await expect(question).to_be_visible()  # no reload: it came over the stream
    await expect(question.locator(".hi-flags")).to_have_text("ambiguity")
    await expect(question.locator(".hi-agent")).to_have_text("release-bot")

    shot = tmp_path / "inbox.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    keep_screenshot(shot)

    await question.locator("textarea").fill("Yes — after the 14:00 freeze lifts.")
    await question.locator("button").click()
    assert await asyncio.wait_for(asking, DEADLINE) == "Yes — after the 14:00 freeze lifts."
    await expect(question).to_have_count(0)


async def test_cancelled_and_expired_requests_leave_without_a_reload(server, api_key, execution_id, page):
    await connected(page)
    agent = HumanInputClient(server.http_url, token=api_key)
    doomed = await agent.acreate_request(execution_id, "Will be cancelled")
    await agent.acreate_request(execution_id, "Will expire", timeout_seconds=1)
    await expect(card(page, "Will be cancelled")).to_be_visible()
    await expect(card(page, "Will expire")).to_be_visible()
    await agent.acancel(doomed["id"])
    await expect(card(page, "Will be cancelled")).to_have_count(0)
    await expect(card(page, "Will expire")).to_have_count(0)  # the server's scheduler expired it


async def test_answered_elsewhere_leaves_and_a_late_answer_is_told_why(server, api_key, execution_id, page):
    await connected(page)
    agent = HumanInputClient(server.http_url, token=api_key)
    created = await agent.acreate_request(execution_id, "Who answers first?")
    question = card(page, "Who answers first?")
    await expect(question).to_be_visible()
    await agent.arespond(created["id"], "someone else")
    await expect(question).to_have_count(0)


async def test_prompt_and_context_render_as_text_never_as_html(server, api_key, execution_id, page):
    hostile_prompt = '<img src=x onerror="window.__xss = 1">Approve?'
    hostile_context = "<script>window.__xss = 2</script><b>bold?</b>"
    agent = HumanInputClient(server.http_url, token=api_key)
    await agent.acreate_request(execution_id, hostile_prompt, context=hostile_context)
    await page.reload()  # server-rendered card
    await connected(page)
    await agent.acreate_request(
        execution_id, hostile_prompt + " (live)", context=hostile_context
    )  # JS-built card
    for text in (hostile_prompt, hostile_prompt + " (live)"):
        item = page.locator(".hi-card").filter(has=page.get_by_text(text, exact=True))
        await expect(item.locator(".hi-prompt")).to_have_text(text)
        await expect(item.locator(".hi-context")).to_have_text(hostile_context)
    assert await page.evaluate("window.__xss") is None
    assert await page.locator(".hi-card img, .hi-card script, .hi-card b").count() == 0


async def test_the_per_execution_inbox_shows_only_that_execution(
    server, api_key, execution_id, other_execution_id, page
):
    agent = HumanInputClient(server.http_url, token=api_key)
    await agent.acreate_request(execution_id, "Mine, from before")
    await page.goto(f"{server.http_url}/inbox/{execution_id}/")
    await connected(page)
    await agent.acreate_request(other_execution_id, "Not mine")
    await agent.acreate_request(execution_id, "Mine, live")
    await expect(card(page, "Mine, live")).to_be_visible()
    await expect(card(page, "Mine, from before")).to_be_visible()
    await expect(card(page, "Not mine")).to_have_count(0)


async def test_answering_from_the_page_needs_the_csrf_token(server, staff_user, execution_id, api_key):
    """The page's POST works because it sends the token; the same cookie without it is refused."""
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as browser_like:
        login_page = await browser_like.get("/admin/login/")
        token = browser_like.cookies["csrftoken"]
        await browser_like.post(
            "/admin/login/",
            data={
                "username": "operator",
                "password": PASSWORD,
                "csrfmiddlewaretoken": token,
                "next": "/inbox/",
            },
            headers={"Referer": f"{server.http_url}/admin/login/"},
        )
        assert login_page.status_code == 200
        async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key)) as agent:
            created = (
                await agent.post(
                    "/api/human-input/requests", json={"execution_id": execution_id, "prompt": "?"}
                )
            ).json()
        url = f"/api/human-input/requests/{created['id']}/respond"
        body = json.dumps({"response": "forged"})
        headers = {"Content-Type": "application/json", "Referer": f"{server.http_url}/inbox/"}
        refused = await browser_like.post(url, content=body, headers=headers)
        assert refused.status_code == 403
        accepted = await browser_like.post(
            url, content=body, headers={**headers, "X-CSRFToken": browser_like.cookies["csrftoken"]}
        )
        assert accepted.status_code == 200


async def test_the_inbox_needs_a_staff_login(server):
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as anonymous:
        page = await anonymous.get("/inbox/")
        stream = await anonymous.get("/inbox/stream")
    assert page.status_code == 302 and "/admin/login/" in page.headers["location"]
    assert stream.status_code == 401


async def test_an_answer_given_in_the_admin_reaches_the_agent(server, api_key, execution_id, page, tmp_path):
    agent = HumanInputClient(server.http_url, token=api_key)
    asking = asyncio.create_task(
        agent.ask_async(
            execution_id, "Roll back the canary?", context="Error rate 2.3% (limit 1%)", timeout=60
        )
    )
    await expect(card(page, "Roll back the canary?")).to_be_visible()
    request_id = await card(page, "Roll back the canary?").get_attribute("data-request-id")
    await page.goto(f"{server.http_url}/admin/events_app/humaninputrequest/{request_id}/change/")
    await page.fill("textarea[name=response]", "Yes, roll back now.")

    shot = tmp_path / "admin.png"
    await page.screenshot(path=str(shot), full_page=True)
    keep_screenshot(shot)

    await page.get_by_role("button", name="Send answer").click()
    assert await asyncio.wait_for(asking, DEADLINE) == "Yes, roll back now."
    await expect(page.locator(".messagelist")).to_contain_text("nswer")
