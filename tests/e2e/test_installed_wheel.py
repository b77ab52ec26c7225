"""``pip install humaninput`` into a fresh venv, then a ``django-admin startproject`` host uses it.

The wheel is built from this checkout and installed with its declared
dependencies (pinned by requirements.txt as a constraint, so the run is
reproducible) into a venv that has nothing else; the checkout is never on
``sys.path``. The host keeps DRF defaults of its own that would break a
view relying on global settings (session-only authentication, login
required, an anonymous throttle of 2/min, the browsable API, pagination),
mounts our URLs under ``/humaninput/``, and routes WebSockets the way
channels' tutorial does — no call into humaninput besides ``include`` and
``websocket_urlpatterns``. On the PostgreSQL + Redis run the host uses both
(a database of its own, channels-redis), with the ``postgres`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import websockets
from django.conf import settings

from harness.server import ServerProcess, daphne_command
from tests.conftest import eventually, uses_postgres, uses_redis

from .conftest import DEADLINE, ROOT, bearer, sse_connect, unexpected_tracebacks

pytestmark = [pytest.mark.e2e]

API_KEY = "host-agent-key-7f3c9a1e5b"
STAFF_PASSWORD = "a-staff-password-for-tests"
PREFIX = "/humaninput"
# Modules that need an extra that this venv leaves out on purpose (crewAI is large).
OPTIONAL = {"events_app.integrations.crewai": "crewai"}


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on failure the assertion shows its output."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def wheel_digest(wheel: Path) -> str:
    """A digest of what the wheel holds (wheels are not byte-reproducible: zip timestamps)."""
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode())
            digest.update(archive.read(name))
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv with the wheel of this checkout installed, reused while the wheel is the same
    (the embedded and the PostgreSQL runs of one CI job share it; a lock keeps two runs from
    building it at once, and a venv without its ``installed`` mark is built again)."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(ROOT)])
    (wheel,) = dist.glob("humaninput-*.whl")
    target = Path(tempfile.gettempdir()) / f"humaninput-wheel-venv-{wheel_digest(wheel)}"
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "installed").exists():
            shutil.rmtree(target, ignore_errors=True)
            run([sys.executable, "-m", "venv", "--clear", str(target)])
            python = str(target / "bin" / "python")
            requirement = f"{wheel}[postgres]"
            run(
                [python, "-m", "pip", "install", "--quiet", requirement, "-c", str(ROOT / "requirements.txt")]
            )
            (target / "installed").write_text(wheel.name)
    return target


HOST_SETTINGS = """

# --- What this host adds for humaninput (docs/embedding.md) ---------------------------
import os  # noqa: E402

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS += [
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "events_app",
]
ASGI_APPLICATION = "host.asgi.application"
TEMPLATES[0]["DIRS"] = [BASE_DIR / "templates"]
HUMANINPUT_API_KEY = os.environ["HUMANINPUT_API_KEY"]
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
if os.environ.get("HOST_REDIS_URL"):
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [os.environ["HOST_REDIS_URL"]]},
        }
    }
if os.environ.get("HOST_PG_NAME"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["HOST_PG_NAME"],
            "USER": os.environ["HOST_PG_USER"],
            "HOST": os.environ["HOST_PG_HOST"],
            "PORT": os.environ["HOST_PG_PORT"],
        }
    }

# --- The host's own DRF defaults, for its own API: none of them may reach humaninput's ----
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 10,
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.AnonRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"anon": "2/min"},
}
"""

HOST_URLS = """
from django.contrib import admin
from django.urls import include, path

from host.views import WhoAmI, dashboard

urlpatterns = [
    path("admin/", admin.site.urls),
    path("host-api/whoami", WhoAmI.as_view()),
    path("dashboard/", dashboard),
    path("humaninput/", include("events_app.urls")),
]
"""

HOST_VIEWS = '''
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render
from rest_framework.response import Response
from rest_framework.views import APIView


class WhoAmI(APIView):
    """The host's own API, under the host's DRF defaults."""

    def get(self, request):
        return Response({"user": request.user.get_username()})


@staff_member_required
def dashboard(request):
    return render(request, "dashboard.html")
'''

# channels' documented routing; nothing of humaninput's but its URL patterns.
HOST_ASGI = """
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "host.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

import events_app.routing  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(events_app.routing.websocket_urlpatterns)),
    }
)
"""

HOST_DASHBOARD = """{% load humaninput %}<!doctype html>
<title>Release engineering</title>
<h1>Release engineering</h1>
{% humaninput_inbox title="Agents waiting for us" %}
"""

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import django
django.setup()
import events_app
results = {"file": events_app.__file__, "failed": {}, "imported": []}
for module in pkgutil.walk_packages(events_app.__path__, "events_app."):
    try:
        importlib.import_module(module.name)
    except ModuleNotFoundError as error:
        results["failed"][module.name] = error.name
    else:
        results["imported"].append(module.name)
print(json.dumps(results))
"""


@dataclass
class Host:
    path: Path
    python: str
    env: dict[str, str]

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([self.python, "manage.py", *args], cwd=self.path, env=self.env)


@contextlib.contextmanager
def host_database() -> Iterator[dict[str, str]]:
    """Environment for the host's database and layer: SQLite + in-memory on the embedded run,
    a PostgreSQL database of its own + Redis on the PostgreSQL run."""
    if not uses_postgres():
        yield {}
        return
    db = settings.DATABASES["default"]
    name = f"host_wheel_{uuid.uuid4().hex[:10]}"
    params = {"host": db["HOST"], "port": db["PORT"], "user": db["USER"], "dbname": "postgres"}
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    env = {"HOST_PG_NAME": name, "HOST_PG_USER": db["USER"], "HOST_PG_HOST": db["HOST"]}
    env["HOST_PG_PORT"] = str(db["PORT"])
    if uses_redis():
        env["HOST_REDIS_URL"] = settings.REDIS_URL
    try:
        yield env
    finally:
        with psycopg.connect(**params, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def host(venv, tmp_path_factory) -> Iterator[Host]:
    """``django-admin startproject host``, plus what docs/embedding.md says to add; migrated,
    with a staff user."""
    path = tmp_path_factory.mktemp("host-project")
    python = str(venv / "bin" / "python")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HUMANINPUT_", "DJANGO_", "PYTHON", "DATABASE_URL", "REDIS_URL"))
    }
    with host_database() as database_env:
        env.update(
            database_env,
            DJANGO_SETTINGS_MODULE="host.settings",
            HUMANINPUT_API_KEY=API_KEY,
            DJANGO_SUPERUSER_PASSWORD=STAFF_PASSWORD,
        )
        run([python, "-m", "django", "startproject", "host", str(path)], env=env)
        with open(path / "host" / "settings.py", "a") as host_settings:
            host_settings.write(HOST_SETTINGS)
        (path / "host" / "urls.py").write_text(HOST_URLS)
        (path / "host" / "views.py").write_text(HOST_VIEWS)
        (path / "host" / "asgi.py").write_text(HOST_ASGI)
        (path / "templates").mkdir()
        (path / "templates" / "dashboard.html").write_text(HOST_DASHBOARD)
        project = Host(path=path, python=python, env=env)
        project.manage("migrate", "--noinput")
        project.manage("createsuperuser", "--noinput", "--username", "lead", "--email", "lead@example.com")
        yield project


def test_every_module_of_the_installed_package_imports_from_the_venv(host, venv):
    result = run([host.python, "-c", IMPORT_EVERY_MODULE], cwd=host.path, env=host.env)
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(venv), found["file"]  # not the checkout
    assert found["failed"] == OPTIONAL, "a module needs a dependency pyproject.toml does not declare"
    for name in (
        "events_app.client",
        "events_app.streaming.poll",
        "events_app.streaming.websocket",
        "events_app.server",
    ):
        assert name in found["imported"]


def test_manage_py_check_passes_and_migrate_applied_the_apps_migrations(host):
    checked = host.manage("check", "--fail-level", "WARNING")
    assert "System check identified no issues" in checked.stdout
    migrations = host.manage("showmigrations", "events_app").stdout
    assert re.findall(r"\[(.)\]", migrations) and set(re.findall(r"\[(.)\]", migrations)) == {"X"}


@pytest.fixture(scope="module")
def host_server(host, tmp_path_factory) -> Iterator[ServerProcess]:
    """daphne serving the host project from the venv, in the host's own environment."""
    server = ServerProcess(
        argv=daphne_command("host.asgi:application", executable=host.python),
        cwd=host.path,
        env={
            **host.env,
            "HUMANINPUT_EXPIRY_INTERVAL_SECONDS": "0.2",
            "PYTHONUNBUFFERED": "1",  # the access log (stdout) is read while the server runs
        },
        health_path=f"{PREFIX}/health",
        name="host-daphne",
    )
    server.start(tmp_path_factory.mktemp("host-daphne"))
    try:
        yield server
    finally:
        server.stop()
        assert not unexpected_tracebacks(server.log()), server.log()


@contextlib.asynccontextmanager
async def agent(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.http_url, headers=bearer(API_KEY), timeout=DEADLINE
    ) as client:
        yield client


async def create(client: httpx.AsyncClient, execution_id: str, **fields: object) -> dict:
    response = await client.post(
        f"{PREFIX}/api/human-input/requests", json={"execution_id": execution_id, "prompt": "Ship?", **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def sse_first_event(server: ServerProcess, execution_id: str) -> dict:
    async with sse_connect(server, execution_id, headers=bearer(API_KEY), prefix=PREFIX) as stream:
        assert stream.response.status_code == 200
        return await stream.next_event()


async def test_the_agent_key_works_on_the_api_websocket_sse_and_poll_under_the_prefix(host_server):
    execution_id = f"host-{uuid.uuid4().hex[:8]}"
    ws_url = f"{host_server.ws_url}/ws/human-input/{execution_id}?token={API_KEY}"
    async with agent(host_server) as client, websockets.connect(ws_url) as ws:
        created = await create(client, execution_id)
        over_ws = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
        assert (over_ws["type"], over_ws["request_id"]) == ("human_input_required", created["id"])
        assert (await sse_first_event(host_server, execution_id))["event_id"] == over_ws["event_id"]
        polled = await client.get(f"{PREFIX}/poll/human-input/{execution_id}")
        assert polled.status_code == 200
        assert [event["event_id"] for event in polled.json()["events"]] == [over_ws["event_id"]]
        await ws.send(json.dumps({"type": "respond", "request_id": created["id"], "response": "Yes"}))
        completed = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE))
        assert (completed["type"], completed["human_feedback"]) == ("human_input_completed", "Yes")
        # The host's anonymous throttle (2/min) and pagination never reach our views.
        for _ in range(5):
            assert (await client.get(f"{PREFIX}/health")).status_code == 200
        listed = await client.get(f"{PREFIX}/api/human-input/requests", params={"execution_id": execution_id})
        assert listed.status_code == 200 and set(listed.json()) == {"next", "previous", "results"}


async def test_our_errors_stay_json_under_the_hosts_defaults(host_server):
    async with httpx.AsyncClient(base_url=host_server.http_url, timeout=DEADLINE) as anonymous:
        refused = await anonymous.get(f"{PREFIX}/api/human-input/requests")
        assert refused.status_code == 401
        assert refused.json()["code"] == "not_authenticated"
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="humaninput"'
        unknown = await anonymous.get(f"{PREFIX}/api/no-such-endpoint")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_endpoint")
        wrong_method = await anonymous.post(f"{PREFIX}/events/human-input/run-1")
        assert (wrong_method.status_code, wrong_method.headers["Allow"]) == (405, "GET")
        schema = await anonymous.get(f"{PREFIX}/api/schema/", params={"format": "json"})
        assert schema.status_code == 200
        paths = set(schema.json()["paths"])
        assert f"{PREFIX}/api/human-input/requests" in paths
        assert f"{PREFIX}/events/human-input/{{execution_id}}" in paths
        assert not any(path.startswith("/host-api") for path in paths)  # the host's API is not ours to list


async def test_the_agent_key_is_refused_by_the_hosts_own_api(host_server):
    async with agent(host_server) as client:
        response = await client.get("/host-api/whoami")
    assert response.status_code == 403  # SessionAuthentication + IsAuthenticated: no session, no entry


@contextlib.asynccontextmanager
async def staff_session(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A client logged in through the host's admin login form."""
    async with httpx.AsyncClient(base_url=server.http_url, timeout=DEADLINE) as client:
        yield await logged_in(client, server)


async def logged_in(client: httpx.AsyncClient, server: ServerProcess) -> httpx.AsyncClient:
    form = await client.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert csrf, form.text
    login = await client.post(
        "/admin/login/?next=/admin/",
        data={"username": "lead", "password": STAFF_PASSWORD, "csrfmiddlewaretoken": csrf.group(1)},
        headers={"Referer": f"{server.http_url}/admin/login/"},
    )
    assert login.status_code == 302, login.text
    return client


async def test_the_hosts_dashboard_renders_the_inbox_widget_and_its_own_api_its_session(host_server):
    execution_id = f"host-{uuid.uuid4().hex[:8]}"
    async with agent(host_server) as client:
        await create(client, execution_id, prompt="Promote the nightly build?")
    async with staff_session(host_server) as staff:
        assert (await staff.get("/host-api/whoami")).json() == {"user": "lead"}
        page = (await staff.get("/dashboard/")).text
        assert "<h1>Release engineering</h1>" in page
        assert "data-humaninput-inbox" in page and "Agents waiting for us" in page
        assert "Promote the nightly build?" in page
        assert f'data-stream-url="{PREFIX}/inbox/stream"' in page
        # The widget's stream answers the host's staff session.
        async with staff.stream("GET", f"{PREFIX}/inbox/stream") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"] == "text/event-stream"


async def test_the_hardening_applies_without_the_host_calling_it(host_server):
    execution_id = f"host-{uuid.uuid4().hex[:8]}"
    url = f"{host_server.ws_url}/ws/human-input/{execution_id}?token=not-the-key-{uuid.uuid4().hex}"
    async with websockets.connect(url, max_size=None) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), DEADLINE)
    assert ws.close_code == 4401
    key_url = (
        f"{host_server.ws_url}/ws/human-input/{execution_id}?token="
        + httpx.URL(params={"t": API_KEY}).query.decode()[2:]
    )
    async with websockets.connect(key_url, max_size=None) as ws:
        await ws.send("x" * (64 * 1024 + 1))
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), DEADLINE)
    assert ws.close_code == 1009
    # Daphne's access log (stdout) names each HTTP path with its query: tokens masked.
    async with httpx.AsyncClient(base_url=host_server.http_url, timeout=DEADLINE) as browser_like:
        poll = f"{PREFIX}/poll/human-input/{execution_id}"
        assert (await browser_like.get(poll, params={"token": API_KEY})).status_code == 200
        assert (await browser_like.get(poll, params={"token": "not-the-key-x"})).status_code == 401

    async def log() -> str:
        return host_server.log()

    written = await eventually(log, accept=lambda text: text.count(f"{poll}?token=[redacted]") == 2)
    assert API_KEY not in written and "not-the-key-x" not in written


async def test_overdue_requests_expire_without_the_host_scheduling_anything(host_server):
    execution_id = f"host-{uuid.uuid4().hex[:8]}"
    async with agent(host_server) as client:
        created = await create(client, execution_id, timeout_seconds=1)
        cursor = created["event_id"]
        polled = await client.get(
            f"{PREFIX}/poll/human-input/{execution_id}", params={"last_event_id": cursor, "wait": 10}
        )
        assert [event["type"] for event in polled.json()["events"]] == ["human_input_expired"]
