"""What the examples share on the command line: which server, with which token, and one
clear line (not a traceback) when that server cannot be reached or refuses the token."""

from __future__ import annotations

import argparse
import os

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"

# What a connection that never reached the server raises: httpx for REST calls,
# OSError (ConnectionRefusedError, socket.gaierror, ...) for `websockets.connect`.
UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, OSError)


def server_url(value: str) -> str:
    """An ``http(s)://`` URL, without a trailing slash (an ``argparse`` type)."""
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token``, defaulting to ``HUMANINPUT_URL`` and ``HUMANINPUT_TOKEN``."""
    parser.add_argument(
        "--url",
        type=server_url,
        default=os.environ.get("HUMANINPUT_URL") or DEFAULT_URL,
        help=f"the humaninput server (default: $HUMANINPUT_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("HUMANINPUT_TOKEN") or None,
        help="API key or scoped token (default: $HUMANINPUT_TOKEN; `make run` needs none)",
    )


def unreachable_reason(error: BaseException) -> str:
    """Why a connection failed, from the innermost cause: "connection refused", "timed out", ..."""
    reason = str(error) or type(error).__name__
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, TimeoutError | httpx.TimeoutException):
            reason = "timed out"
        elif isinstance(cause, OSError) and cause.errno:
            # asyncio words a refusal "Connect call failed (...)"; the errno says it plainly.
            reason = os.strerror(cause.errno) if cause.errno > 0 else cause.strerror or reason
        cause = cause.__cause__ or cause.__context__
    return reason[:1].lower() + reason[1:]


def unreachable_message(url: str, error: BaseException) -> str:
    return f"cannot reach humaninput at {url} ({unreachable_reason(error)}) — is `make run` running?"


def check_reachable(url: str) -> str | None:
    """The one-line error if ``url`` cannot be reached, else None (for a script that would
    otherwise find out deep inside a framework, like crewAI's kickoff)."""
    try:
        httpx.get(f"{url}/health", timeout=10)
    except UNREACHABLE as error:
        return unreachable_message(url, error)
    return None


def refused_message(url: str, error: BaseException) -> str:
    """For the client's ``AuthenticationFailed``, ``Forbidden``, ... (``str`` is "401: detail")."""
    hint = " — check --token / HUMANINPUT_TOKEN" if getattr(error, "status", None) in (401, 403) else ""
    return f"humaninput at {url} refused the request ({error}){hint}"
