"""The machinery every scenario shares: backends, one daphne, client processes, /proc readings.

- ``backend("embedded" | "postgres", workdir)`` yields the environment of a
  migrated database: a SQLite file with the in-memory channel layer, or a
  PostgreSQL database of its own plus a Redis database (both dropped or
  flushed on the way out, whatever happened).
- ``serve`` starts one server (daphne, or the websockets baseline) as the
  e2e tests do (``harness.server``: a socket bound here and handed over, one
  health request with a deadline), pinned to the server CPU.
- ``Worker`` runs one client role (``roles.py``) in a process of its own,
  pinned to the client CPUs, driven by ``(kind, data)`` messages over a pipe;
  every wait has a deadline and every process is killed in ``finally``. A
  role's reply is sent before its process tears down, and the teardown is
  bounded too (``TEARDOWN_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

import harness.redis
from harness.server import ServerProcess, daphne_command

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
API_KEY = "bench-api-key"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
SPAWN = multiprocessing.get_context("spawn")
# How long a client process waits, after its reply, for the tasks its role left to end when cancelled.
TEARDOWN_SECONDS = 5.0


def raise_fd_limit() -> None:
    """Soft open-files limit up to the hard one: thousands of sockets per process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_split() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): the first CPU for the server, the rest for clients; None if one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


# --- backends ---------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    env: dict[str, str]
    redis_url: str | None = None


def pg_connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit PostgreSQL connection whose connect and statements have deadlines."""
    return psycopg.connect(url, autocommit=True, connect_timeout=10, options="-c statement_timeout=60s")


def run_checked(argv: Sequence[str], env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")


@contextlib.contextmanager
def backend(name: str, workdir: Path, redis_db: int) -> Iterator[Backend]:
    """A migrated database (and Redis for ``postgres``) for one setup; cleaned up on exit."""
    if name == "embedded":
        chosen = Backend(name, {"DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}"})
        run_checked([PYTHON, "manage.py", "migrate", "--noinput"], server_env(chosen), timeout=120)
        yield chosen
        return
    database = f"humaninput_bench_{os.getpid()}"
    redis_url = f"{REDIS_BASE_URL}/{redis_db}"
    chosen = Backend(
        name,
        {"DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}", "REDIS_URL": redis_url},
        redis_url,
    )
    with pg_connect(PG_ADMIN_URL) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        harness.redis.flush(redis_url)
        run_checked([PYTHON, "manage.py", "migrate", "--noinput"], server_env(chosen), timeout=120)
        yield chosen
    finally:
        with contextlib.suppress(Exception):
            harness.redis.flush(redis_url)
        with pg_connect(PG_ADMIN_URL) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def server_env(chosen: Backend, **overrides: str) -> dict[str, str]:
    """The environment of daphne (and of Django-setup clients) for ``chosen``: production settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HUMANINPUT_", "DJANGO_", "PYTHONDEVMODE"))
        and key not in {"DATABASE_URL", "REDIS_URL", "REDIS_CHANNEL_LAYER"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="humaninput_project.settings",
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production",
        DJANGO_DEBUG="0",
        HUMANINPUT_API_KEY=API_KEY,
        HUMANINPUT_THROTTLE_WRITE_RATE="",
        HUMANINPUT_THROTTLE_TOKEN_RATE="",
        PYTHONPATH=str(ROOT),
    )
    env.update(chosen.env)
    env.update(overrides)
    return env


# --- servers ----------------------------------------------------------------------------------


def _pin_and_raise(cpus: set[int] | None) -> Callable[[], None]:
    def prepare() -> None:
        raise_fd_limit()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return prepare


def serve(
    argv: list[str], env: dict[str, str], workdir: Path, cpus: set[int] | None, name: str = "daphne"
) -> ServerProcess:
    """One server process (``harness.server``) pinned to ``cpus``, with a raised open-files limit; started.

    Its log is ``<workdir>/<name>-<ns>-<port>.log``: a later server on a reused port logs apart.
    """
    return ServerProcess(
        argv=argv,
        env=env,
        log_dir=workdir,
        name=f"{name}-{time.monotonic_ns()}",
        health_timeout=60,
        backlog=4096,
        preexec=_pin_and_raise(cpus),
    ).start()


def daphne(chosen: Backend, workdir: Path, cpus: set[int] | None, **overrides: str) -> ServerProcess:
    """One daphne process serving the project with ``chosen``'s database (and Redis)."""
    argv = daphne_command("humaninput_project.asgi:application", PYTHON)
    return serve(argv, server_env(chosen, **overrides), workdir, cpus)


def http_get(
    port: int, path: str, timeout: float, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_post_json(port: int, path: str, body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- client processes -------------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


class Control:
    """The client side of a worker's pipe, awaitable from its event loop."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def send(self, kind: str, data: Any = None) -> None:
        self.conn.send((kind, data))

    async def recv(self, within: float) -> tuple[str, Any]:
        """The next command; the pipe is waited on in a thread so the loop keeps serving connections."""
        if not await asyncio.to_thread(self.conn.poll, within):
            raise TimeoutError(f"no command from the orchestrator within {within:g}s")
        return self.conn.recv()

    async def expect(self, kind: str, within: float) -> Any:
        got, data = await self.recv(within)
        if got != kind:
            raise RuntimeError(f"expected {kind!r} from the orchestrator, got {got!r}")
        return data


async def _serve(conn: Any, role: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Run ``role`` and send its reply from inside the loop, then stop what it left running.

    The reply goes out before any teardown: ``asyncio.run`` would otherwise
    send it only after cancelling every leftover task and waiting for each
    without a deadline, and a task that ignores its cancellation (a
    channels_redis core ``receive()`` can, see ``roles.LayerSubscriber``)
    kept the reply from the orchestrator forever.
    """
    try:
        reply = ("result", await role(Control(conn), **kwargs))
    except BaseException:
        reply = ("error", traceback.format_exc())
    conn.send(reply)
    current = asyncio.current_task()
    leftovers = {task for task in asyncio.all_tasks() if task is not current}
    for task in leftovers:
        task.cancel()
    if leftovers:
        _, pending = await asyncio.wait(leftovers, timeout=TEARDOWN_SECONDS)
        if pending:
            # Nothing is owed any more: end the process rather than wait on them.
            print(
                f"client process {os.getpid()}: {len(pending)} tasks still running "
                f"{TEARDOWN_SECONDS:g} s after their cancellation; exiting without them",
                file=sys.stderr,
                flush=True,
            )
            sys.stdout.flush()
            os._exit(0)


def _worker_main(conn: Any, role: Callable[..., Any], cpus: set[int] | None, kwargs: dict[str, Any]) -> None:
    raise_fd_limit()
    if cpus:
        os.sched_setaffinity(0, cpus)
    asyncio.run(_serve(conn, role, kwargs))


class Worker:
    """A client process running ``role(control, **kwargs)``; talk to it with ``send`` / ``expect``."""

    def __init__(self, role: Callable[..., Any], cpus: set[int] | None, **kwargs: Any) -> None:
        self.conn, child = SPAWN.Pipe()
        self.process = SPAWN.Process(target=_worker_main, args=(child, role, cpus, kwargs), daemon=True)
        self.process.start()
        child.close()

    def send(self, kind: str, data: Any = None) -> None:
        self.conn.send((kind, data))

    def expect(self, kind: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"client process sent no {kind!r} within {timeout:g}s")
        got, data = self.conn.recv()
        if got == "error":
            raise WorkerError(data)
        if got != kind:
            raise WorkerError(f"expected {kind!r} from the client process, got {got!r}")
        return data

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self.conn.close()


@contextlib.contextmanager
def workers(
    count: int, role: Callable[..., Any], cpus: set[int] | None, **kwargs: Any
) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for index in range(count):
            started.append(Worker(role, cpus, index=index, **kwargs))
        yield started
    finally:
        for worker in started:
            worker.stop()


def run_once(role: Callable[..., Any], cpus: set[int] | None, seconds: float, **kwargs: Any) -> Any:
    """One worker running ``role`` for about ``seconds``: wait until it is ready, start it, its result."""
    with workers(1, role, cpus, **kwargs) as (worker,):
        worker.expect("ready", 60)
        worker.send("go")
        return worker.expect("result", seconds + 120)


def ask_all(pool: Sequence[Worker], kind: str, data: Sequence[Any], reply: str, timeout: float) -> list[Any]:
    """Send each worker its ``data`` item, then collect every ``reply`` (within one shared deadline)."""
    for worker, item in zip(pool, data, strict=True):
        worker.send(kind, item)
    deadline = time.monotonic() + timeout
    return [worker.expect(reply, max(0.1, deadline - time.monotonic())) for worker in pool]


async def on_schedule(
    send: Callable[[Any, asyncio.Queue[int]], Awaitable[None]],
    connections: Sequence[Any],
    *,
    duration: float,
    rate: float,
    start: float,
) -> None:
    """An open-loop load: ``duration * rate`` numbered tickets handed out on schedule from ``start``
    (loop time) to ``send(connection, due)`` tasks, one per connection, which end at ticket -1."""
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[int] = asyncio.Queue()
    senders = [asyncio.create_task(send(each, due)) for each in connections]
    for number in range(int(duration * rate)):
        await asyncio.sleep(max(0.0, start + number / rate - loop.time()))  # the schedule, not a sync
        due.put_nowait(number)
    for _ in senders:
        due.put_nowait(-1)
    await asyncio.gather(*senders)


async def release(tasks: Iterable[asyncio.Task[Any]], clients: Iterable[Any]) -> None:
    """A worker's teardown: cancel its tasks, then close its clients, whatever each close raises."""
    for task in tasks:
        task.cancel()
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    return [list(items[index::parts]) for index in range(parts)]


def scratch_dir(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=base))


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def exit_status(problems: list[str], workdir: Path) -> int:
    """Print each correctness problem; keep the server logs only when there is one. 1 if any."""
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if problems:
        print(f"server logs kept in {workdir}", file=sys.stderr)
    else:
        remove_dir(workdir)
    return 1 if problems else 0
