"""Ask a human from an agent, and (optionally) play the human in the same script.

Start the server (`make run`), then:

    .venv/bin/python examples/ask_human.py                 # waits for your answer
    .venv/bin/python examples/ask_human.py --auto-answer   # answers itself over WebSocket
    .venv/bin/python examples/ask_human.py --url http://host:8000 --token "$KEY"   # another server

Answer from anywhere that speaks the protocol, e.g. a WebSocket client:
    .venv/bin/python -m websockets ws://127.0.0.1:8000/ws/human-input/example-run
    {"type": "respond", "request_id": "<id>", "response": "Yes"}
or with curl:
    curl -X POST http://127.0.0.1:8000/api/human-input/requests/<id>/respond \\
         -H 'Content-Type: application/json' -d '{"response": "Yes"}'

--url and --token default to $HUMANINPUT_URL (else http://127.0.0.1:8000) and
$HUMANINPUT_TOKEN (none: `make run` needs no key). A server that cannot be
reached, or that refuses the token, is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import websockets
from _cli import UNREACHABLE, add_server_arguments, refused_message, unreachable_message

from events_app.client import (
    AskTimeout,
    HumanInputClient,
    HumanInputError,
    RequestCancelled,
    RequestExpired,
)


async def play_the_human(url: str, token: str | None, execution_id: str, answer: str) -> None:
    """Wait on the WebSocket for the question and answer it there."""
    ws_url = url.replace("http", "ws", 1) + f"/ws/human-input/{execution_id}"
    if token:
        ws_url += f"?{urlencode({'token': token})}"
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


async def main() -> str | None:
    """Ask, print the answer; a one-line error (for ``sys.exit``) if the server is unusable."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--execution-id", default="example-run")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--auto-answer", action="store_true", help="answer the question from this script")
    add_server_arguments(parser)
    args = parser.parse_args()

    client = HumanInputClient(args.url, token=args.token)
    human = (
        asyncio.create_task(play_the_human(args.url, args.token, args.execution_id, "Yes, go ahead"))
        if args.auto_answer
        else None
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
    except (*UNREACHABLE, HumanInputError) as error:
        if human:  # it failed too, or waits on a question that was never asked
            human.cancel()
            await asyncio.gather(human, return_exceptions=True)
        if isinstance(error, HumanInputError):
            return refused_message(args.url, error)
        return unreachable_message(args.url, error)
    if human:
        await human
    return None


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
