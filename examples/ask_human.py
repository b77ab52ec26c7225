"""Ask a human from an agent, and (optionally) play the human in the same script.

Start the server (`make run`), then:

    .venv/bin/python examples/ask_human.py                 # waits for your answer
    .venv/bin/python examples/ask_human.py --auto-answer   # answers itself over WebSocket

Answer from anywhere that speaks the protocol, e.g. a WebSocket client:
    .venv/bin/python -m websockets ws://127.0.0.1:8000/ws/human-input/example-run
    {"type": "respond", "request_id": "<id>", "response": "Yes"}
or with curl:
    curl -X POST http://127.0.0.1:8000/api/human-input/requests/<id>/respond \\
         -H 'Content-Type: application/json' -d '{"response": "Yes"}'

Set HUMANINPUT_URL and HUMANINPUT_TOKEN if your server is elsewhere or needs a key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import websockets

from events_app.client import AskTimeout, HumanInputClient, RequestCancelled, RequestExpired

BASE_URL = os.environ.get("HUMANINPUT_URL", "http://127.0.0.1:8000")
TOKEN = os.environ.get("HUMANINPUT_TOKEN")


async def play_the_human(execution_id: str, answer: str) -> None:
    """Wait on the WebSocket for the question and answer it there."""
    ws_url = BASE_URL.replace("http", "ws", 1) + f"/ws/human-input/{execution_id}"
    if TOKEN:
        ws_url += f"?token={TOKEN}"
    async with websockets.connect(ws_url) as ws:
        async for frame in ws:
            event = json.loads(frame)
            if event["type"] == "human_input_required":
                print(f"[human] got: {event['prompt']!r}; answering {answer!r}")
                await ws.send(
                    json.dumps({"type": "respond", "request_id": event["request_id"], "response": answer})
                )
            elif event["type"] == "human_input_completed":
                return


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--execution-id", default="example-run")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--auto-answer", action="store_true", help="answer the question from this script")
    args = parser.parse_args()

    client = HumanInputClient(BASE_URL, token=TOKEN)
    human = (
        asyncio.create_task(play_the_human(args.execution_id, "Yes, go ahead")) if args.auto_answer else None
    )
    print(f"[agent] asking on execution {args.execution_id!r} (timeout {args.timeout:g} s)...")
    try:
        # --- the five lines an agent needs --------------------------------------------
        answer = await client.ask_async(
            args.execution_id,
            "Deploy release 1.2 to production?",
            context="All checks are green; the change touches billing.",
            reason_flags={"ambiguity": True},
            timeout=args.timeout,
        )
        print(f"[agent] the human said: {answer!r}")
    except (AskTimeout, RequestExpired):
        print("[agent] nobody answered in time")
    except RequestCancelled:
        print("[agent] the request was cancelled")
    if human:
        await human


if __name__ == "__main__":
    asyncio.run(main())
