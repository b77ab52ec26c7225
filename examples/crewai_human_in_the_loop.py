"""A crewAI crew whose task pauses for a human, who answers through humaninput.

Start the server (`make run`), install crewAI (`.venv/bin/pip install -r requirements-crewai.txt`), then:

    .venv/bin/python examples/crewai_human_in_the_loop.py                # answer in http://127.0.0.1:8000/inbox/
    .venv/bin/python examples/crewai_human_in_the_loop.py --auto-answer  # a scripted reviewer answers

By default the agent's "LLM" is scripted (no API key, no network). Set
EXAMPLE_LLM to a model name crewAI understands (e.g. "gpt-4o-mini", with
OPENAI_API_KEY set) to use a real one. --url and --token (default:
$HUMANINPUT_URL, else http://127.0.0.1:8000, and $HUMANINPUT_TOKEN) point at
another server. A server that cannot be reached, or that refuses the token,
is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import websockets
from _cli import (
    UNREACHABLE,
    add_server_arguments,
    check_reachable,
    refused_message,
    unreachable_message,
)
from crewai import LLM, Agent, Crew, Task

from events_app.client import HumanInputError
from events_app.integrations.crewai import HumanFeedbackUnavailable, humaninput_feedback
from examples.scripted_llm import ScriptedLLM

DRAFTS = [
    "Release 1.2 makes sync 40% faster.",
    "Release 1.2 makes sync 40% faster and fixes a security issue in file uploads (CVE-2026-1234).",
]


def scripted_reviewer(url: str, token: str | None, execution_id: str) -> None:
    """Asks for a change on the first draft, approves the second (an empty answer).

    If its connection fails it stops quietly: the crew's own request fails
    the same way and says why.
    """
    answers = ["Mention the security fix in uploads.", ""]

    async def review() -> None:
        ws_url = url.replace("http", "ws", 1) + f"/ws/human-input/{execution_id}"
        async with websockets.connect(ws_url + (f"?{urlencode({'token': token})}" if token else "")) as ws:
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

    with contextlib.suppress(OSError, websockets.WebSocketException):
        asyncio.run(review())


def main() -> str | None:
    """Run the crew; a one-line error (for ``sys.exit``) if the server is unusable."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--execution-id", default="crewai-example")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--auto-answer", action="store_true")
    add_server_arguments(parser)
    args = parser.parse_args()
    if problem := check_reachable(args.url):
        return problem  # before the crew starts, rather than from deep inside its kickoff

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
        threading.Thread(
            target=scripted_reviewer, args=(args.url, args.token, args.execution_id), daemon=True
        )
        if args.auto_answer
        else None
    )
    if reviewer:
        reviewer.start()
    else:
        print(f"Answer in {args.url}/inbox/{args.execution_id}/ (empty answer approves the draft).")
    try:
        with humaninput_feedback(args.url, args.token, execution_id=args.execution_id, timeout=args.timeout):
            result = crew.kickoff()
    except UNREACHABLE as error:
        return unreachable_message(args.url, error)
    except HumanFeedbackUnavailable as error:
        return f"[crew] {error}"
    except HumanInputError as error:
        return refused_message(args.url, error)
    if reviewer:
        reviewer.join()
    print(f"[crew] final output: {result.raw}")
    return None


if __name__ == "__main__":
    sys.exit(main())
