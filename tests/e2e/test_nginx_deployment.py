"""docs/deployment.md's nginx config in front of two daphne processes on PostgreSQL + Redis.

``deploy/nginx.conf`` is rendered with only its site-specific values changed
(upstream addresses, listen ports, certificate, log and static paths; each
must be found exactly once, so the test breaks if the file drifts) and run by
Debian's nginx, terminating TLS with a throwaway certificate. Every client
below talks to nginx only. nginx is a ``harness.server`` process like the
daphnes: its HTTPS socket is bound here and handed over (nginx takes
inherited sockets from ``NGINX``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from harness.server import FD, ServerProcess
from tests.conftest import eventually, throughout

from .conftest import (
    CATCH_UP_SECONDS,
    DEADLINE,
    ROOT,
    DaphneServer,
    SSEStream,
    bearer,
    running_server,
    ws_recv,
)

pytestmark = [pytest.mark.e2e, pytest.mark.services, pytest.mark.django_db(transaction=True)]

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
STATIC_SOURCE = ROOT / "events_app" / "static"


def render_nginx_conf(
    *, upstreams: list[str], https_port: int, http_port: int, tmp_dir: Path, cert: Path, key: Path
) -> str:
    """``deploy/nginx.conf`` with the values a site changes replaced, each exactly once."""
    text = NGINX_CONF.read_text()
    replacements = [
        (
            "    server 127.0.0.1:8001;\n    server 127.0.0.1:8002;\n",
            "".join(f"    server {address};\n" for address in upstreams),
        ),
        ("    listen 80;\n", f"    listen 127.0.0.1:{http_port};\n"),
        ("    listen [::]:80;\n", ""),
        ("    listen 443 ssl http2;\n", f"    listen 127.0.0.1:{https_port} ssl http2;\n"),
        ("    listen [::]:443 ssl http2;\n", ""),
        ("/etc/ssl/humaninput/fullchain.pem", str(cert)),
        ("/etc/ssl/humaninput/privkey.pem", str(key)),
        ("/var/log/nginx/humaninput.access.log", str(tmp_dir / "access.log")),
        ("/var/log/nginx/humaninput.error.log", str(tmp_dir / "error.log")),
        ("alias /srv/humaninput/staticfiles/;", f"alias {STATIC_SOURCE}/;"),
    ]
    for old, new in replacements:
        assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} exactly once"
        text = text.replace(old, new)
    return text


def nginx_main_conf(tmp_dir: Path, site_conf: Path) -> str:
    """What Debian's /etc/nginx/nginx.conf provides around conf.d, with this run's own paths.

    A master process (nginx 1.22 crashes on inherited sockets without one), whose one worker
    runs as the master's user where it could switch: this run's folders are its own.
    """
    temp = tmp_dir / "temp"
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {tmp_dir / "nginx.pid"};
error_log {tmp_dir / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {temp / "client_body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {site_conf};
}}
"""


def make_certificate(tmp_dir: Path) -> tuple[Path, Path]:
    cert, key = tmp_dir / "cert.pem", tmp_dir / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Nginx(ServerProcess):
    """nginx in the foreground serving HTTPS on the handed socket, plain HTTP on ``http_port``."""

    upstreams: list[str] = field(default_factory=list)
    http_port: int = 0
    certificate: tuple[Path, Path] | None = None  # (certificate, key)
    name: str = "nginx"
    scheme: str = "https"

    def command(self) -> list[str]:
        """This start's configuration (it names the bound port), then nginx on it."""
        assert self.log_dir is not None and self.certificate is not None
        cert, key = self.certificate
        site_conf = self.log_dir / "humaninput.conf"
        site_conf.write_text(
            render_nginx_conf(
                upstreams=self.upstreams,
                https_port=self.port,
                http_port=self.http_port,
                tmp_dir=self.log_dir,
                cert=cert,
                key=key,
            )
        )
        main_conf = self.log_dir / "nginx.conf"
        main_conf.write_text(nginx_main_conf(self.log_dir, site_conf))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", str(self.log_dir), "-c", str(main_conf), "-e", "stderr"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "NGINX": f"{FD};"}


@dataclass
class Deployment:
    daphnes: list[DaphneServer]
    https_port: int
    http_port: int
    tls: ssl.SSLContext
    access_log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=self.tls,
            headers=bearer(token) if token else None,
            timeout=httpx.Timeout(DEADLINE),
        )

    def websocket(self, path: str) -> Any:
        return websockets.connect(f"wss://127.0.0.1:{self.https_port}{path}", ssl=self.tls)


@contextlib.contextmanager
def running_nginx(tmp_dir: Path, upstreams: list[str]) -> Iterator[Deployment]:
    """nginx with this run's own config, pid, logs and temp folders; started once its
    ``/health`` answers (through to a daphne), stopped at the end."""
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.fail("needs Debian's nginx (apt-get install nginx-light; .ci/run installs it)")
    (tmp_dir / "temp").mkdir()
    certificate = make_certificate(tmp_dir)
    tls = ssl.create_default_context(cafile=str(certificate[0]))
    nginx = Nginx(upstreams=upstreams, http_port=free_port(), certificate=certificate, verify=tls)
    nginx.start(tmp_dir)
    try:
        yield Deployment(
            daphnes=[],
            https_port=nginx.port,
            http_port=nginx.http_port,
            tls=tls,
            access_log=tmp_dir / "access.log",
        )
    finally:
        nginx.stop()


@pytest.fixture(scope="module")
def deployment(django_db_setup, tmp_path_factory) -> Iterator[Deployment]:
    """Two daphne processes (catch-up 60 s with Redis: delivery is the doorbell) behind nginx."""
    tmp_dir = tmp_path_factory.mktemp("nginx-deployment")
    env = {
        "HUMANINPUT_CATCHUP_SECONDS": CATCH_UP_SECONDS,
        # No heartbeat during a test: only events travel on the SSE stream.
        "HUMANINPUT_SSE_HEARTBEAT_SECONDS": "600",
        # The access log goes to stdout; unbuffered, so the test can read it.
        "PYTHONUNBUFFERED": "1",
        # As deploy/humaninput.env.example: HTTPS only, behind a proxy that says so.
        "DJANGO_HTTPS": "1",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "1",
    }
    with contextlib.ExitStack() as stack:
        daphnes = [stack.enter_context(running_server(tmp_dir, **env)) for _ in range(2)]
        upstreams = [f"127.0.0.1:{daphne.port}" for daphne in daphnes]
        deployed = stack.enter_context(running_nginx(tmp_dir, upstreams))
        deployed.daphnes = daphnes
        yield deployed


async def create_request(deployment: Deployment, api_key: str, execution_id: str, prompt: str) -> dict:
    async with deployment.client(api_key) as client:
        response = await client.post(
            "/api/human-input/requests", json={"execution_id": execution_id, "prompt": prompt}
        )
    assert response.status_code == 201, response.text
    return response.json()


async def test_health_answers_through_the_proxy_over_tls_with_hsts(deployment):
    async with deployment.client() as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "channel_layer": "ok"}
    # Django's (DJANGO_HTTPS=1), once: nginx adds none of its own.
    assert response.headers.get_list("strict-transport-security") == ["max-age=3600; includeSubDomains"]
    assert response.headers["x-content-type-options"] == "nosniff"  # Django's, not duplicated

    async with httpx.AsyncClient() as plain:
        redirect = await plain.get(f"http://127.0.0.1:{deployment.http_port}/health?x=1")
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "https://127.0.0.1/health?x=1"


async def test_requests_are_spread_over_both_daphne_processes(deployment):
    probe = uuid.uuid4().hex
    async with deployment.client() as client:
        for number in range(6):
            assert (await client.get(f"/health?probe={probe}-{number}")).status_code == 200

    async def processes_that_served_the_probe() -> int:
        return sum(probe in daphne.log() for daphne in deployment.daphnes)

    await eventually(
        processes_that_served_the_probe, accept=lambda count: count == 2, what="both processes serving"
    )


async def test_websocket_subscribers_on_both_processes_get_an_event_created_through_rest(
    deployment, api_key, execution_id
):
    path = f"/ws/human-input/{execution_id}?token={api_key}"
    async with deployment.websocket(path) as first, deployment.websocket(path) as second:
        # least_conn gives the second long-lived connection to the other process.
        async def processes_holding_a_subscriber() -> int:
            return sum(f"WSCONNECT /ws/human-input/{execution_id}" in d.log() for d in deployment.daphnes)

        await eventually(
            processes_holding_a_subscriber, accept=lambda count: count == 2, what="one WebSocket per process"
        )
        created = await create_request(deployment, api_key, execution_id, "Ship it?")
        for ws in (first, second):
            event = await ws_recv(ws)
            assert event["type"] == "human_input_required"
            assert event["request_id"] == created["id"]
            assert event["event_id"] == created["event_id"]


async def test_sse_stream_delivers_each_event_while_it_stays_open(deployment, api_key, execution_id):
    """Nothing but events travels on the stream (no heartbeat), so a buffering proxy would hold them."""
    async with deployment.client(api_key) as client:
        async with client.stream("GET", f"/events/human-input/{execution_id}") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            stream = SSEStream(response)
            assert await stream.next_message(deadline=5) == {"retry": "3000"}
            for prompt in ("first question", "second question"):
                created = await create_request(deployment, api_key, execution_id, prompt)
                event = await stream.next_event(deadline=5)
                assert (event["request_id"], event["prompt"]) == (created["id"], prompt)
            assert not response.is_closed


async def test_long_poll_through_the_proxy_returns_when_the_event_is_written(
    deployment, api_key, execution_id
):
    first = await create_request(deployment, api_key, execution_id, "first question")
    async with deployment.client(api_key) as client:
        waiting = asyncio.create_task(
            client.get(
                f"/poll/human-input/{execution_id}",
                params={"last_event_id": first["event_id"], "wait": "30"},
                timeout=httpx.Timeout(45),
            )
        )

        async def still_waiting() -> bool:
            return not waiting.done()

        await throughout(still_waiting, seconds=1.0, what="the long poll waiting for an event")
        second = await create_request(deployment, api_key, execution_id, "second question")
        response = await asyncio.wait_for(waiting, timeout=5)
    assert response.status_code == 200
    assert [event["request_id"] for event in response.json()["events"]] == [second["id"]]


async def test_tokens_stay_out_of_the_proxy_and_daphne_access_logs(deployment, api_key, execution_id):
    async with deployment.websocket(f"/ws/human-input/{execution_id}?token={api_key}") as ws:
        await ws.send('{"type": "ping"}')
        assert await ws_recv(ws) == {"type": "pong"}
    async with deployment.client() as client:
        polled = await client.get(f"/poll/human-input/{execution_id}?limit=5&token={api_key}")
    assert polled.status_code == 200

    async def proxy_log() -> str:
        return deployment.access_log.read_text() if deployment.access_log.exists() else ""

    logged = await eventually(
        proxy_log,
        accept=lambda text: text.count(f"/human-input/{execution_id}?") == 2,
        what="both requests in nginx's access log",
    )
    assert f"/poll/human-input/{execution_id}?limit=5&token=[redacted] " in logged
    assert f"/ws/human-input/{execution_id}?token=[redacted] " in logged
    assert api_key not in logged
    for daphne in deployment.daphnes:
        assert api_key not in daphne.log()


async def test_static_files_come_from_the_collected_folder(deployment):
    async with deployment.client() as client:
        response = await client.get("/static/events_app/humaninput-inbox.js")
    assert response.status_code == 200
    assert response.text == (STATIC_SOURCE / "events_app" / "humaninput-inbox.js").read_text()
    assert "expires" in response.headers  # the /static/ location, not a daphne


async def test_metrics_are_not_exposed_through_the_proxy(deployment):
    async with deployment.client() as client:
        assert (await client.get("/metrics")).status_code == 404
