"""Test settings: the project's own settings, with the secrets a test run needs.

Everything else (DATABASE_URL, REDIS_URL, HUMANINPUT_*) still comes from the
environment, so `make test-postgres` runs this same suite on PostgreSQL + Redis.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("HUMANINPUT_API_KEY", "test-api-key")

from humaninput_project.settings import *  # noqa: F403
