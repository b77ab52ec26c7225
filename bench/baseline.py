"""The fan-out baseline: a bare ``websockets`` broadcast server, no Django, no channel layer, no database.

Subscribers connect to ``/sub/<anything>``; each text frame a client sends on
``/publish`` goes to every subscriber with ``websockets.broadcast`` (the
library's fastest path: one frame encoded per connection, written without
waiting). ``GET /health`` answers 200 for the start-up check. Run as
``python -m bench.baseline --fd N`` on a socket the harness has bound.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve

subscribers: set[ServerConnection] = set()


async def handler(connection: ServerConnection) -> None:
    if connection.request is not None and connection.request.path == "/publish":
        async for message in connection:
            broadcast(subscribers, message)
        return
    subscribers.add(connection)
    try:
        await connection.wait_closed()
    finally:
        subscribers.discard(connection)


def health(connection: ServerConnection, request: Any) -> Any:
    return connection.respond(HTTPStatus.OK, "ok\n") if request.path == "/health" else None


async def main(fd: int) -> None:
    listener = socket.socket(fileno=fd)
    async with serve(
        handler, sock=listener, compression=None, ping_interval=None, max_queue=None, process_request=health
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    asyncio.run(main(parser.parse_args().fd))
