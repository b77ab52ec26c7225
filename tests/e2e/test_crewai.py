"""crewAI: a real Crew with a ``human_input=True`` task asks through a real daphne.

The LLM is a scripted ``BaseLLM`` (no network); the human is a second client
on the WebSocket. crewAI is imported only by these tests and the adapter.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

# Before crewAI is imported: no telemetry or tracing calls to the outside.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from crewai import Agent, Crew, Task
from crewai.flow import Flow, human_feedback, listen, start

from events_app.client import HumanInputClient
from events_app.integrations.crewai import (
    HumanFeedbackUnavailable,
    HumanInputServiceProvider,
    humaninput_feedback,
)
from examples.scripted_llm import ScriptedLLM

from .conftest import DEADLINE, SSEStream, bearer, poll, run_example, ws_connect, ws_recv

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def release_notes_crew(*drafts: str, retries: int = 2) -> tuple[Crew, Task, Agent, ScriptedLLM]:
    llm = ScriptedLLM(model="scripted", drafts=list(drafts), received=[])
    agent = Agent(
        role="Release writer",
        goal="Write release notes",
        backstory="Terse.",
        llm=llm,
        max_retry_limit=retries,
    )
    task = Task(
        description="Write the release notes for version 1.2.",
        expected_output="Release notes",
        agent=agent,
        human_input=True,
    )
    return Crew(agents=[agent], tasks=[task]), task, agent, llm


async def human_reviewer(server, api_key, execution_id, answers: list[str]) -> list[dict]:
    """Answer each human_input_required with the next answer, over the WebSocket."""
    seen: list[dict] = []
    ws = await ws_connect(server, execution_id, token=api_key)
    remaining = list(answers)
    while remaining or seen[-1]["type"] != "human_input_completed":
        event = await ws_recv(ws, deadline=60)
        seen.append(event)
        if event["type"] == "human_input_required":
            reply = {"type": "respond", "request_id": event["request_id"], "response": remaining.pop(0)}
            await ws.send(json.dumps(reply))
    await ws.close()
    return seen


def kickoff(crew: Crew, server, api_key, execution_id, **options):
    with humaninput_feedback(server.http_url, api_key, execution_id=execution_id, **options):
        return crew.kickoff()


async def test_feedback_goes_back_to_the_agent_and_an_empty_answer_approves(server, api_key, execution_id):
    crew, task, agent, llm = release_notes_crew(
        "1.2: faster sync.", "1.2: faster sync; fixes CVE-2026-1234 in the uploader."
    )
    output, seen = await asyncio.gather(
        asyncio.to_thread(kickoff, crew, server, api_key, execution_id, timeout=60),
        human_reviewer(server, api_key, execution_id, ["Mention the security fix.", ""]),
    )
    assert output.raw == "1.2: faster sync; fixes CVE-2026-1234 in the uploader."
    assert "Mention the security fix." in llm.received[-1]  # fed back as crewAI's console flow does

    log = (await poll(server, execution_id, token=api_key)).json()["events"]
    assert [event["type"] for event in log] == [
        "human_input_required",
        "human_input_completed",
        "human_input_required",
        "human_input_completed",
    ]
    first, second = log[0], log[2]
    assert first["prompt"].startswith("1.2: faster sync.")
    assert second["prompt"].startswith("1.2: faster sync; fixes CVE-2026-1234")
    assert first["context"] == "Write the release notes for version 1.2."
    assert (first["crew_id"], first["task_id"], first["agent_id"]) == (
        str(crew.id),
        str(task.id),
        str(agent.id),
    )
    assert [event["human_feedback"] for event in (log[1], log[3])] == ["Mention the security fix.", ""]
    assert seen[0]["request_id"] == first["request_id"]


async def test_async_kickoff_asks_without_blocking_the_event_loop(server, api_key, execution_id):
    crew, _, _, _ = release_notes_crew("Only draft.")
    with humaninput_feedback(server.http_url, api_key, execution_id=execution_id, timeout=60):
        output, _ = await asyncio.gather(
            crew.kickoff_async(), human_reviewer(server, api_key, execution_id, [""])
        )
    assert output.raw == "Only draft."


async def test_no_answer_fails_the_task_by_default(server, api_key, execution_id):
    crew, _, _, _ = release_notes_crew("Unreviewed draft.", retries=0)  # crewAI would retry the task
    with pytest.raises(HumanFeedbackUnavailable):
        await asyncio.to_thread(kickoff, crew, server, api_key, execution_id, timeout=1)


async def test_no_answer_can_proceed_with_the_draft(server, api_key, execution_id):
    crew, _, _, _ = release_notes_crew("Unreviewed draft.")
    output = await asyncio.to_thread(
        kickoff, crew, server, api_key, execution_id, timeout=1, on_timeout="proceed"
    )
    assert output.raw == "Unreviewed draft."
    log = (await poll(server, execution_id, token=api_key)).json()["events"]
    assert [event["type"] for event in log] == ["human_input_required", "human_input_expired"]


class ReviewFlow(Flow):
    @start()
    @human_feedback(message="Please review this summary:")
    def summarize(self):
        return "Q3 revenue up 12%."

    @listen(summarize)
    def publish(self, result):
        return f"published; reviewer said {self.last_human_feedback.feedback!r}"


async def test_flow_human_feedback_asks_through_humaninput(server, api_key, execution_id):
    def run_flow():
        with humaninput_feedback(server.http_url, api_key, execution_id=execution_id, timeout=60):
            return ReviewFlow().kickoff()

    output, seen = await asyncio.gather(
        asyncio.to_thread(run_flow),
        human_reviewer(server, api_key, execution_id, ["Add the EU numbers."]),
    )
    assert output == "published; reviewer said 'Add the EU numbers.'"
    assert seen[0]["prompt"] == "Please review this summary:\n\nQ3 revenue up 12%."
    assert seen[0]["task_id"] == "summarize"


def test_provider_refuses_an_unknown_timeout_policy(api_key):
    with pytest.raises(ValueError, match="on_timeout"):
        HumanInputServiceProvider(HumanInputClient("http://127.0.0.1:1", token=api_key), on_timeout="retry")


def test_the_core_service_never_imports_crewai():
    modules = (
        "events_app.services, events_app.client, events_app.streaming.websocket, "
        "events_app.api.urls, events_app.admin"
    )
    code = (
        "import django, os, sys; os.environ['DJANGO_DEBUG'] = '1'; "
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'humaninput_project.settings'; django.setup(); "
        f"import {modules}; import humaninput_project.asgi; print('crewai' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE * 4
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


async def test_the_crewai_example_runs_against_the_server(server, api_key, execution_id):
    output = await run_example(
        server,
        api_key,
        "crewai_human_in_the_loop.py",
        *("--auto-answer", "--execution-id", execution_id, "--timeout", "60"),
    )
    assert "[crew] final output: Release 1.2 makes sync 40% faster and fixes a security issue" in output


async def answer_pending_of_crew(server, api_key, crew_id: str, answer: str) -> dict:
    """Watch the inbox stream (a snapshot, then live events) for this crew's question; answer it over REST."""
    async with httpx.AsyncClient(base_url=server.http_url, headers=bearer(api_key), timeout=DEADLINE) as api:
        async with api.stream("GET", "/inbox/stream") as response:
            stream = SSEStream(response)
            asked = None
            while asked is None:
                data = json.loads((await stream.next_message(deadline=60)).get("data", "null")) or {}
                if data.get("type") == "snapshot":
                    candidates = data["pending"]
                else:
                    candidates = [data] if data.get("type") == "human_input_required" else []
                asked = next((item for item in candidates if item["crew_id"] == crew_id), None)
        await api.post(f"/api/human-input/requests/{asked['request_id']}/respond", json={"response": answer})
        return asked


async def test_without_an_execution_id_each_kickoff_is_its_own_execution(server, api_key):
    crew, _, _, _ = release_notes_crew("Draft.")

    def run():
        with humaninput_feedback(server.http_url, api_key, timeout=60):
            return crew.kickoff()

    executions = []
    for _ in range(2):
        _, asked = await asyncio.gather(
            asyncio.to_thread(run), answer_pending_of_crew(server, api_key, str(crew.id), "")
        )
        executions.append(asked["execution_id"])
    assert executions[0] != executions[1]
    assert all(uuid.UUID(execution) for execution in executions)
