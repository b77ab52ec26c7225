"""Python client for humaninput: ask a human, answer, and follow an execution's events.

Standalone on purpose: it imports ``httpx`` and ``websockets``, never Django,
so an agent process can use it without the server's settings::

    from events_app.client import HumanInputClient

    client = HumanInputClient("http://127.0.0.1:8000", token="...")
    answer = client.ask("run-42", "Deploy to production?", timeout=600)

``subscribe`` is an async iterator that reconnects with backoff and resumes
from the last event it yielded, so its consumer sees every event of the
execution once, in order, across server restarts. It prefers WebSocket and
falls back to Server-Sent Events, then long polling, when a transport cannot
connect (a proxy that blocks WebSocket upgrades, say).

Several servers of one deployment (processes or hosts sharing PostgreSQL and
Redis) can be given as a list of URLs: when one cannot be reached the client
moves to the next, for REST calls as for subscriptions, and a subscription
resumes there from its last event::

    client = HumanInputClient(["http://host-a:8000", "http://host-b:8000"], token="...")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import websockets

TRANSPORTS = ("ws", "sse", "poll")
FINAL_TYPES = {"human_input_completed", "human_input_cancelled", "human_input_expired"}


class HumanInputError(Exception):
    """Base of the client's errors. ``status`` is the HTTP status or WS close code, if any."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class InvalidInput(HumanInputError):
    """400 / close 4400: the server refused what was sent."""


class AuthenticationFailed(HumanInputError):
    """401 / close 4401: missing, wrong or expired token."""


class Forbidden(HumanInputError):
    """403 / close 4403: the token is not valid for this execution or action."""


class RequestNotFound(HumanInputError):
    """404: no such request."""


class Conflict(HumanInputError):
    """409: the request was already answered, cancelled or expired. ``request`` has its state."""

    @property
    def request(self) -> dict[str, Any] | None:
        return self.body.get("request") if isinstance(self.body, dict) else None


class RateLimited(HumanInputError):
    """429: slow down; ``retry_after`` is in seconds."""

    retry_after: float | None = None


class AskTimeout(HumanInputError, TimeoutError):
    """Nobody answered within the timeout."""


class RequestCancelled(HumanInputError):
    """The request was cancelled before anyone answered."""


class RequestExpired(HumanInputError):
    """The request expired on the server before anyone answered."""


class _CannotConnect(Exception):
    """This transport could not be opened; try the next one."""


class _Disconnected(Exception):
    """An open stream ended; reconnect."""


_ERRORS_BY_STATUS: dict[int, type[HumanInputError]] = {
    400: InvalidInput,
    401: AuthenticationFailed,
    403: Forbidden,
    404: RequestNotFound,
    409: Conflict,
    429: RateLimited,
    4400: InvalidInput,
    4401: AuthenticationFailed,
    4403: Forbidden,
}


def _error_for(status: int, body: Any, headers: Mapping[str, str] | None = None) -> HumanInputError:
    detail = body.get("detail") if isinstance(body, dict) else None
    kind = _ERRORS_BY_STATUS.get(status, HumanInputError)
    error = kind(f"{status}: {detail or body!r}", status=status, body=body)
    if isinstance(error, RateLimited) and headers and headers.get("retry-after"):
        with contextlib.suppress(ValueError):
            error.retry_after = float(headers["retry-after"])
    return error


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


@dataclass
class HumanInputClient:
    """A connection profile for one humaninput deployment. Cheap to create; holds no sockets.

    ``base_url`` is one server's URL or a list of equivalent servers' URLs,
    tried in turn when the current one cannot be reached.
    """

    base_url: str | Sequence[str]
    token: str | None = None
    timeout: float = 10.0
    transports: tuple[str, ...] = TRANSPORTS
    reconnect_initial_delay: float = 0.2
    reconnect_max_delay: float = 5.0
    poll_wait: float = 25.0
    _http_headers: dict[str, str] = field(init=False, repr=False)

    _servers: list[str] = field(init=False, repr=False)
    _current: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        urls = [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)
        if not urls or not all(isinstance(url, str) and url for url in urls):
            raise ValueError("base_url must be a URL or a non-empty list of URLs")
        self._servers = [url.rstrip("/") for url in urls]
        unknown = set(self.transports) - set(TRANSPORTS)
        if unknown or not self.transports:
            raise ValueError(f"transports must be a non-empty subset of {TRANSPORTS}")
        self._http_headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # --- servers ---------------------------------------------------------------

    @property
    def server_url(self) -> str:
        """The server in use: the first of ``base_url`` until it cannot be reached."""
        return self._servers[self._current]

    def _next_server(self) -> None:
        self._current = (self._current + 1) % len(self._servers)

    def _url(self, path: str) -> str:
        return f"{self.server_url}{path}"

    # --- REST ------------------------------------------------------------------

    @staticmethod
    def _checked(response: httpx.Response) -> Any:
        body = _json_or_text(response)
        if response.status_code >= 400:
            raise _error_for(response.status_code, body, response.headers)
        return body

    # Only a request that never reached a server moves on to the next one: a
    # POST that timed out after sending may have been applied, so it is raised.
    _UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        with httpx.Client(timeout=self.timeout, headers=self._http_headers) as http:
            for attempt in range(len(self._servers)):
                try:
                    return self._checked(http.request(method, self._url(path), json=body))
                except self._UNREACHABLE:
                    if attempt == len(self._servers) - 1:
                        raise
                    self._next_server()
        raise AssertionError("unreachable")

    async def _arequest(self, method: str, path: str, body: Any = None) -> Any:
        async with httpx.AsyncClient(timeout=self.timeout, headers=self._http_headers) as http:
            for attempt in range(len(self._servers)):
                try:
                    return self._checked(await http.request(method, self._url(path), json=body))
                except self._UNREACHABLE:
                    if attempt == len(self._servers) - 1:
                        raise
                    self._next_server()
        raise AssertionError("unreachable")

    @staticmethod
    def _create_body(execution_id: str, prompt: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        body = {"execution_id": execution_id, "prompt": prompt}
        body.update({key: value for key, value in fields.items() if value is not None})
        return body

    def create_request(self, execution_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
        """POST a request; ``fields`` are the optional body fields of the API (context, ...)."""
        return self._request(
            "POST", "/api/human-input/requests", self._create_body(execution_id, prompt, fields)
        )

    async def acreate_request(self, execution_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
        body = self._create_body(execution_id, prompt, fields)
        return await self._arequest("POST", "/api/human-input/requests", body)

    def get_request(self, request_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/human-input/requests/{quote(str(request_id))}")

    async def aget_request(self, request_id: str) -> dict[str, Any]:
        return await self._arequest("GET", f"/api/human-input/requests/{quote(str(request_id))}")

    def respond(self, request_id: str, response: str) -> dict[str, Any]:
        """Answer a request; raises ``Conflict`` if someone else was first."""
        path = f"/api/human-input/requests/{quote(str(request_id))}/respond"
        return self._request("POST", path, {"response": response})

    async def arespond(self, request_id: str, response: str) -> dict[str, Any]:
        path = f"/api/human-input/requests/{quote(str(request_id))}/respond"
        return await self._arequest("POST", path, {"response": response})

    def cancel(self, request_id: str) -> dict[str, Any]:
        return self._request("POST", f"/api/human-input/requests/{quote(str(request_id))}/cancel", {})

    async def acancel(self, request_id: str) -> dict[str, Any]:
        return await self._arequest("POST", f"/api/human-input/requests/{quote(str(request_id))}/cancel", {})

    # --- asking ------------------------------------------------------------------

    async def ask_async(
        self,
        execution_id: str,
        prompt: str,
        *,
        context: str = "",
        reason_flags: Mapping[str, bool] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the API the issue names; also sent to the server)
        crew_id: str = "",
        task_id: str = "",
        agent_id: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Create a request and wait for the human's answer (its text).

        ``timeout`` (seconds) is also sent to the server, which expires the
        request then. Raises ``AskTimeout``, ``RequestCancelled`` or
        ``RequestExpired`` instead of returning when nobody answers.
        """
        created = await self.acreate_request(
            execution_id,
            prompt,
            context=context,
            reason_flags=dict(reason_flags) if reason_flags else None,
            timeout_seconds=timeout,
            crew_id=crew_id,
            task_id=task_id,
            agent_id=agent_id,
            metadata=dict(metadata) if metadata else None,
        )
        request_id = created["id"]
        # A little grace past the server's expiry, so its human_input_expired
        # event (the more precise outcome) normally arrives first.
        deadline = None if timeout is None else timeout + min(5.0, 1.0 + timeout * 0.1)
        try:
            async with asyncio.timeout(deadline):
                return await self._wait_for_outcome(execution_id, request_id, created["event_id"])
        except TimeoutError:
            raise AskTimeout(f"No answer to request {request_id} within {timeout} s.") from None

    async def _wait_for_outcome(self, execution_id: str, request_id: str, cursor: str) -> str:
        events = self.subscribe(execution_id, last_event_id=cursor)
        try:
            async for event in events:
                if event.get("request_id") != request_id or event.get("type") not in FINAL_TYPES:
                    continue
                if event["type"] == "human_input_completed":
                    return str(event.get("human_feedback", ""))
                if event["type"] == "human_input_cancelled":
                    raise RequestCancelled(f"Request {request_id} was cancelled.")
                raise RequestExpired(f"Request {request_id} expired before anyone answered.")
        finally:
            await events.aclose()
        raise HumanInputError("The event stream ended unexpectedly.")  # subscribe never ends by itself

    def ask(self, execution_id: str, prompt: str, **options: Any) -> str:
        """Blocking ``ask_async`` for synchronous code (not from inside an event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.ask_async(execution_id, prompt, **options))
        raise RuntimeError("ask() blocks; inside an event loop use `await client.ask_async(...)`.")

    # --- following an execution --------------------------------------------------

    async def subscribe(
        self, execution_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every event of ``execution_id`` after ``last_event_id``, live, forever.

        Reconnects with exponential backoff (with jitter) and resumes from the
        last event yielded; events are yielded once each, in ``sequence``
        order. Authentication and validation errors are raised, not retried.
        A server no transport can reach is left for the next one at once;
        the backoff applies once every server has been tried.
        """
        cursor, last_sequence = last_event_id, 0
        delay = self.reconnect_initial_delay
        unreachable = 0  # servers in a row that no transport could reach
        while True:
            reached = False
            for transport in self.transports:
                stream = self._open(transport, execution_id, cursor)
                try:
                    async for event in stream:
                        delay = self.reconnect_initial_delay
                        sequence = event.get("sequence")
                        if isinstance(sequence, int) and sequence <= last_sequence:
                            continue  # replayed after a reconnect: already yielded
                        cursor = event.get("event_id", cursor)
                        if isinstance(sequence, int):
                            last_sequence = sequence
                        yield event
                except _CannotConnect:
                    continue  # fall back to the next transport
                except _Disconnected:
                    pass
                finally:
                    await stream.aclose()
                reached = True
                break  # connected, then lost: start again from the preferred transport
            if reached:
                unreachable = 0
            else:
                unreachable += 1
                self._next_server()
                if unreachable < len(self._servers):
                    continue
                unreachable = 0
            await asyncio.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, self.reconnect_max_delay)

    def _open(self, transport: str, execution_id: str, cursor: str | None) -> AsyncIterator[dict[str, Any]]:
        if transport == "ws":
            return self._ws_events(execution_id, cursor)
        if transport == "sse":
            return self._sse_events(execution_id, cursor)
        return self._poll_events(execution_id, cursor)

    def _query(self, **params: str | None) -> str:
        present = {key: value for key, value in params.items() if value}
        return f"?{urlencode(present)}" if present else ""

    def _path(self, prefix: str, execution_id: str) -> str:
        return f"{prefix}{quote(execution_id, safe=':')}"

    async def _ws_events(self, execution_id: str, cursor: str | None) -> AsyncIterator[dict[str, Any]]:
        server = self.server_url
        ws_base = "ws" + server[len("http") :] if server.startswith("http") else server
        url = (
            ws_base
            + self._path("/ws/human-input/", execution_id)
            + self._query(token=self.token, last_event_id=cursor)
        )
        try:
            connection = await websockets.connect(url, open_timeout=self.timeout, max_size=None)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as error:
            raise _CannotConnect(str(error)) from error
        try:
            async for frame in connection:
                event = json.loads(frame)
                if isinstance(event, dict) and event.get("type") not in {"pong", "error"}:
                    yield event
        except websockets.ConnectionClosed:
            pass
        finally:
            await connection.close()
        code = connection.close_code
        if code in _ERRORS_BY_STATUS:
            raise _error_for(code, {"detail": connection.close_reason or f"closed {code}"})
        if code == 4404:
            raise _CannotConnect("no WebSocket route")
        raise _Disconnected(f"closed {code}")

    async def _sse_events(self, execution_id: str, cursor: str | None) -> AsyncIterator[dict[str, Any]]:
        headers = dict(self._http_headers)
        if cursor:
            headers["Last-Event-ID"] = cursor
        url = self._url(self._path("/events/human-input/", execution_id))
        timeout = httpx.Timeout(self.timeout, read=None)
        try:
            async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
                async with http.stream("GET", url) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code in _ERRORS_BY_STATUS:
                            raise _error_for(response.status_code, _json_or_text(response))
                        raise _CannotConnect(f"SSE answered {response.status_code}")
                    data: list[str] = []
                    try:
                        async for line in response.aiter_lines():
                            if line.startswith("data:"):
                                data.append(line[5:].removeprefix(" "))
                            elif line == "" and data:
                                event = json.loads("\n".join(data))
                                data = []
                                if not isinstance(event, dict) or event.get("type") == "heartbeat":
                                    continue
                                if event.get("type") == "error":
                                    # The server ends the stream after it (a revoked token).
                                    raise _error_for(401, event)
                                yield event
                    except (httpx.HTTPError, OSError) as error:
                        raise _Disconnected(str(error)) from error
        except (httpx.ConnectError, httpx.ConnectTimeout, OSError) as error:
            raise _CannotConnect(str(error)) from error
        raise _Disconnected("SSE stream ended")

    async def _poll_events(self, execution_id: str, cursor: str | None) -> AsyncIterator[dict[str, Any]]:
        path = self._path("/poll/human-input/", execution_id)
        timeout = httpx.Timeout(self.timeout + self.poll_wait)
        connected = False
        async with httpx.AsyncClient(timeout=timeout, headers=self._http_headers) as http:
            while True:
                params = {"wait": str(self.poll_wait), "limit": "1000"}
                if cursor:
                    params["last_event_id"] = cursor
                try:
                    response = await http.get(self._url(path), params=params)
                except httpx.HTTPError as error:
                    raise (_Disconnected if connected else _CannotConnect)(str(error)) from error
                if response.status_code != 200:
                    if response.status_code in _ERRORS_BY_STATUS:
                        raise _error_for(response.status_code, _json_or_text(response))
                    raise (_Disconnected if connected else _CannotConnect)(
                        f"poll answered {response.status_code}"
                    )
                connected = True
                body = response.json()
                for event in body.get("events", []):
                    yield event
                cursor = body.get("last_event_id") or cursor
