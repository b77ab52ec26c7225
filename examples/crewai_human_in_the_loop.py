"""A crewAI crew whose task pauses for a human, who answers through humaninput.

Start the server (`make run`), install crewAI (`.venv/bin/pip install -r requirements-crewai.txt`), then:

    .venv/bin/python examples/crewai_human_in_the_loop.py                # answer in http://127.0.0.1:8000/inbox/
    .venv/bin/python examples/crewai_human_in_the_loop.py --auto-answer  # a scripted reviewer answers

By default the agent's "LLM" is scripted (no API key, no network). Set
EXAMPLE_LLM to a model name crewAI understands (e.g. "gpt-4o-mini", with
OPENAI_API_KEY set) to use a real one. HUMANINPUT_URL / HUMANINPUT_TOKEN
point at another server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import websockets
from crewai import LLM, Agent, Crew, Task

from events_app.integrations.crewai import humaninput_feedback
from events_app.integrations.crewai_testing import ScriptedLLM

DRAFTS = [
    "Release 1.2 makes sync 40% faster.",
    "Release 1.2 makes sync 40% faster and fixes a security issue in file uploads (CVE-2026-1234).",
]

BASE_URL = os.environ.get("HUMANINPUT_URL", "http://127.0.0.1:8000")
TOKEN = os.environ.get("HUMANINPUT_TOKEN")


def scripted_reviewer(execution_id: str) -> None:
    """Asks for a change on the first draft, approves the second (an empty answer)."""
    answers = ["Mention the security fix in uploads.", ""]

    async def review() -> None:
        url = BASE_URL.replace("http", "ws", 1) + f"/ws/human-input/{execution_id}"
        async with websockets.connect(url + (f"?token={TOKEN}" if TOKEN else "")) as ws:
            async for frame in ws:
                event = json.loads(frame)
                if event["type"] == "human_input_required" and answers:
                    answer = answers.pop(0)
                    print(
                        f"[reviewer] draft: {event['prompt'].splitlines()[0]!r} -> {answer or '(approve)'!r}"
                    )
                    await ws.send(
                        json.dumps({"type": "respond", "request_id": event["request_id"], "response": answer})
                    )
                elif event["type"] == "human_input_completed" and not answers:
                    return

    asyncio.run(review())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--execution-id", default="crewai-example")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--auto-answer", action="store_true")
    args = parser.parse_args()

    model = os.environ.get("EXAMPLE_LLM")
    llm = LLM(model=model) if model else ScriptedLLM(model="scripted", drafts=list(DRAFTS))
    writer = Agent(
        role="Release writer", goal="Write accurate release notes", backstory="Terse and precise.", llm=llm
    )
    notes = Task(
        description="Write one sentence of release notes for 1.2 (faster sync, an uploads security fix).",
        expected_output="One sentence",
        agent=writer,
        human_input=True,  # the draft goes to a human before the task completes
    )
    crew = Crew(agents=[writer], tasks=[notes])

    reviewer = (
        threading.Thread(target=scripted_reviewer, args=(args.execution_id,)) if args.auto_answer else None
    )
    if reviewer:
        reviewer.start()
    else:
        print(f"Answer in {BASE_URL}/inbox/{args.execution_id}/ (empty answer approves the draft).")
    with humaninput_feedback(BASE_URL, TOKEN, execution_id=args.execution_id, timeout=args.timeout):
        result = crew.kickoff()
    if reviewer:
        reviewer.join()
    print(f"[crew] final output: {result.raw}")


if __name__ == "__main__":
    main()
