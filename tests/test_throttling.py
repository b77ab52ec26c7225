"""Rate limits fail open: a cache (Redis) outage must not fail writes the database can take."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.test import Client, override_settings

UNREACHABLE_CACHE = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Nothing listens on port 1: every cache call fails at once with a connection error.
    "down": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"},
}


@pytest.mark.django_db
@override_settings(CACHES=UNREACHABLE_CACHE, HUMANINPUT_THROTTLE_CACHE="down")
def test_writes_succeed_and_are_logged_when_the_throttle_cache_is_down(api_key, execution_id, app_log):
    client = Client(headers={"Authorization": f"Bearer {api_key}"})
    response = client.post(
        "/api/human-input/requests",
        {"execution_id": execution_id, "prompt": "still taking writes?"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    warnings = [r.getMessage() for r in app_log.records if r.name == "events_app.api.throttling"]
    assert len(warnings) == 1
    assert warnings[0].startswith("throttle cache unavailable; write request let through")


@pytest.mark.django_db
@override_settings(HUMANINPUT_THROTTLE_WRITE_RATE="2/min")
def test_a_working_cache_still_throttles(api_key, execution_id):
    caches["default"].clear()  # earlier writes of this process count against the same key
    client = Client(headers={"Authorization": f"Bearer {api_key}"}, REMOTE_ADDR="10.9.8.7")
    body = {"execution_id": execution_id, "prompt": "?"}
    statuses = [
        client.post("/api/human-input/requests", body, content_type="application/json").status_code
        for _ in range(3)
    ]
    assert statuses == [201, 201, 429]
