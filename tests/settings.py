"""Test settings: the project's own settings, with the secrets a test run needs.

Everything else (DATABASE_URL, REDIS_URL, HUMANINPUT_*) still comes from the
environment, so `make test-postgres` runs this same suite on PostgreSQL + Redis.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("HUMANINPUT_API_KEY", "test-api-key")
# The suite makes many writes per second; one test lowers the limits to check them.
os.environ.setdefault("HUMANINPUT_THROTTLE_WRITE_RATE", "100000/min")
os.environ.setdefault("HUMANINPUT_THROTTLE_TOKEN_RATE", "100000/min")

from humaninput_project.settings import *  # noqa: F403
