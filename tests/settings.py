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

# A test database of this run's own (runs may overlap on one machine). On
# SQLite it is a file, not Django's in-memory default, so threads and the
# daphne subprocesses of the end-to-end tests share it.
_RUN = os.environ.get("TEST_RUN_ID") or str(os.getpid())
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test-db-{_RUN}.sqlite3")}  # noqa: F405
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_humaninput_{_RUN}"}  # noqa: F405
