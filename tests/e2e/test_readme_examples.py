"""The README's examples work as written, against real daphne processes.

The five-line agent snippet is read from README.md and run as it stands (host
and port aside) against a server configured as `make run` starts it and
against one with an API key; the superuser command is run as it stands; the
example scripts run with ``--url``/``--token`` and say in one line, not a
traceback, that a server is not there. Also here: the plain log lines an
operator of `make run` reads say which execution, request and who.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth import get_user_model

from .conftest import DEADLINE, REQUESTS, ROOT, DaphneServer, bearer, database_url, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

README = ROOT / "README.md"
MAKE_RUN_URL = "http://127.0.0.1:8000"
TIMESTAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)


def agent_snippet() -> str:
    (code,) = code_blocks(readme_section("Ask a human from your agent in five lines"), "python")
    return code


def user_environment() -> dict[str, str]:
    """A shell's environment, without this test run's settings (and without dev mode's warnings)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HUMANINPUT_", "DJANGO_", "PYTEST_", "PYTHONDEVMODE", "PYTHONWARNINGS"))
        and key not in {"DATABASE_URL", "REDIS_URL", "EXAMPLE_LLM"}
    }


@pytest.fixture(scope="module")
def make_run_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[DaphneServer]:
    """A daphne configured as `make run` starts it: DJANGO_DEBUG=1, no API key, no secret key."""
    with running_server(
        tmp_path_factory.mktemp("make-run"), DJANGO_DEBUG="1", DJANGO_SECRET_KEY="", HUMANINPUT_API_KEY=""
    ) as started:
        yield started


@pytest.fixture(params=["make-run", "api-key"])
def setup(request, api_key) -> tuple[DaphneServer, str | None]:
    """A server as `make run` starts it (no credential) or one that needs the API key (and the key)."""
    if request.param == "make-run":
        return request.getfixturevalue("make_run_server"), None
    return request.getfixturevalue("server"), api_key


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound but not listening, so nothing else takes it meanwhile."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


async def communicate(process: asyncio.subprocess.Process, deadline: float) -> tuple[str, str]:
    """The process's stdout and stderr once it has exited; killed at the deadline."""
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), deadline)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return stdout.decode(), stderr.decode()


# --- the five-line snippet -----------------------------------------------------------------------


def test_the_agent_snippet_is_five_lines_for_make_run_and_reads_the_key_from_the_environment():
    code = agent_snippet()
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    assert code.count(MAKE_RUN_URL) == 1
    assert 'token=os.environ.get("HUMANINPUT_API_KEY")' in code


async def question_of(server: DaphneServer, execution_id: str, headers: dict[str, str]) -> dict:
    """Long-poll ``execution_id`` until its first ``human_input_required`` event; that event."""
    cursor: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=DEADLINE) as http:
        while True:
            response = await http.get(f"/poll/human-input/{execution_id}", params={"wait": "5", **cursor})
            assert response.status_code == 200, response.text
            body = response.json()
            for event in body["events"]:
                if event["type"] == "human_input_required":
                    return event
            if body.get("last_event_id"):
                cursor = {"last_event_id": body["last_event_id"]}


async def test_the_agent_snippet_runs_as_written_and_prints_the_answer(setup):
    server, key = setup
    code = agent_snippet().replace(MAKE_RUN_URL, server.http_url)
    execution_id = re.search(r'\.ask\("([^"]+)"', code).group(1)
    env = user_environment()
    if key is not None:
        env["HUMANINPUT_API_KEY"] = key
    headers = bearer(key) if key else {}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    finished = asyncio.ensure_future(communicate(process, DEADLINE * 4))
    asked = asyncio.ensure_future(question_of(server, execution_id, headers))
    await asyncio.wait({finished, asked}, timeout=DEADLINE * 2, return_when=asyncio.FIRST_COMPLETED)
    if not asked.done():
        asked.cancel()
        await asyncio.gather(asked, return_exceptions=True)
        process.kill()
        pytest.fail(f"the snippet did not ask (exit {process.returncode}): {await finished}")
    question = asked.result()
    assert question["prompt"] == "Deploy release 1.2?"
    assert question["context"] == "checks green"
    async with httpx.AsyncClient(base_url=server.http_url, headers=headers, timeout=DEADLINE) as http:
        answered = await http.post(
            f"{REQUESTS}/{question['request_id']}/respond", json={"response": "Yes, ship it"}
        )
    assert answered.status_code == 200, answered.text
    stdout, stderr = await finished
    assert process.returncode == 0, stderr
    assert (stdout, stderr) == ("Yes, ship it\n", "")


# --- the superuser for the inbox -----------------------------------------------------------------


def superuser_command() -> tuple[dict[str, str], list[str]]:
    """The README's createsuperuser command: its ``NAME=value`` prefix and its argv."""
    (block,) = [
        block
        for block in code_blocks(readme_section("Try it in one minute"), "sh")
        if "createsuperuser" in block
    ]
    words = shlex.split(block.replace("\\\n", " "))
    assignments: dict[str, str] = {}
    while re.fullmatch(r"[A-Z_]+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        assignments[name] = value
    assert words[0] == ".venv/bin/python"
    return assignments, [sys.executable, *words[1:]]


def test_the_readme_superuser_command_creates_a_staff_user_who_opens_the_inbox(client):
    assignments, argv = superuser_command()
    assert set(assignments) == {"DJANGO_SUPERUSER_PASSWORD", "DJANGO_DEBUG"}
    assert "--noinput" in argv
    created = subprocess.run(
        argv,
        cwd=ROOT,
        env={**user_environment(), **assignments, "DATABASE_URL": database_url()},
        capture_output=True,
        text=True,
        timeout=DEADLINE * 4,
    )
    assert created.returncode == 0, created.stderr
    username = argv[argv.index("--username") + 1]
    user = get_user_model().objects.get(username=username)
    assert user.is_staff and user.is_superuser
    assert user.email == argv[argv.index("--email") + 1]
    assert client.login(username=username, password=assignments["DJANGO_SUPERUSER_PASSWORD"])
    assert client.get("/inbox/").status_code == 200


# --- the example scripts -------------------------------------------------------------------------

EXAMPLES = {
    "ask_human.py": "[agent] the human said: 'Yes, go ahead'",
    "crewai_human_in_the_loop.py": (
        "[crew] final output: Release 1.2 makes sync 40% faster and fixes a security issue"
    ),
}


async def run_script(script: str, *args: str, deadline: float) -> tuple[int, str, str]:
    """Run ``examples/<script>`` as a user would (no HUMANINPUT_* in the environment)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / script),
        *args,
        cwd=ROOT,
        env=user_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await communicate(process, deadline)
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("script", sorted(EXAMPLES))
async def test_each_example_runs_end_to_end_with_url_and_token_arguments(script, setup, execution_id):
    server, key = setup
    credentials = ["--token", key] if key else []
    status, stdout, stderr = await run_script(
        script,
        *("--url", server.http_url, *credentials),
        *("--auto-answer", "--execution-id", execution_id, "--timeout", "60"),
        deadline=120,
    )
    assert status == 0, stdout + stderr
    assert EXAMPLES[script] in stdout


@pytest.mark.parametrize(
    "args",
    [
        ("ask_human.py",),
        ("ask_human.py", "--auto-answer"),
        ("crewai_human_in_the_loop.py", "--auto-answer"),
    ],
    ids=" ".join,
)
async def test_an_example_whose_server_is_not_running_says_so_in_one_line_and_exits_1(args, closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    status, stdout, stderr = await run_script(*args, "--url", url, "--timeout", "30", deadline=60)
    assert status == 1
    assert stderr.splitlines() == [
        f"cannot reach humaninput at {url} (connection refused) — is `make run` running?"
    ]
    assert "Traceback" not in stdout + stderr


async def test_an_example_with_a_wrong_token_says_so_in_one_line_and_exits_1(server, execution_id):
    status, stdout, stderr = await run_script(
        "ask_human.py",
        *("--url", server.http_url, "--token", "not-the-key", "--execution-id", execution_id),
        deadline=60,
    )
    assert status == 1
    (line,) = stderr.splitlines()
    assert line.startswith(f"humaninput at {server.http_url} refused the request (401: ")
    assert line.endswith("— check --token / HUMANINPUT_TOKEN")
    assert "Traceback" not in stdout + stderr


# --- plain log lines -----------------------------------------------------------------------------


async def test_plain_log_lines_of_a_create_and_an_answer_say_which_execution_request_and_who(
    tmp_path, api_key, execution_id
):
    with running_server(tmp_path, HUMANINPUT_LOG_FORMAT="plain") as server:
        async with httpx.AsyncClient(
            base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE
        ) as api:
            created = (await api.post(REQUESTS, json={"execution_id": execution_id, "prompt": "?"})).json()
            answered = await api.post(f"{REQUESTS}/{created['id']}/respond", json={"response": "ok"})
            assert answered.status_code == 200, answered.text
    changes = [line for line in server.log().splitlines() if " events_app.services " in line]
    identity = f"execution_id={re.escape(execution_id)} request_id={created['id']}"
    assert len(changes) == 2, server.log()
    assert re.fullmatch(
        rf"{TIMESTAMP} INFO events_app\.services request pending: human_input_required "
        rf"{identity} event_id={created['event_id']} sequence=1 status=pending",
        changes[0],
    ), changes[0]
    assert re.fullmatch(
        rf"{TIMESTAMP} INFO events_app\.services request completed: human_input_completed "
        rf"{identity} event_id=\S+ sequence=2 status=completed responded_by=api-key",
        changes[1],
    ), changes[1]
