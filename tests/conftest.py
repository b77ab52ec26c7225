"""Fixtures shared by the whole suite."""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings


@pytest.fixture
def api_key() -> str:
    return settings.HUMANINPUT_API_KEY


@pytest.fixture
def execution_id() -> str:
    """A fresh execution id per test, so tests never see each other's events (or groups)."""
    return f"exec-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def other_execution_id() -> str:
    return f"other-{uuid.uuid4().hex[:12]}"


def uses_postgres() -> bool:
    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


def uses_redis() -> bool:
    return bool(getattr(settings, "REDIS_URL", ""))
