"""What the cross-process watcher costs idle subscribers, and what it buys: ``python -m bench.idle_cost``.

``python -m bench.idle_cost [--ws 200] [--sse 100] [--executions 100] [--seconds 30] [--writes 20]``

Embedded setup only (SQLite + in-memory layer, one daphne pinned to one
CPU, clients on the others), run twice in one go: with the watcher off
(``HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS=0``, as before it existed) and on
(the default). The catch-up is the default 5 s both times.

1. Idle cost: ``--ws`` WebSocket and ``--sse`` SSE subscribers over
   ``--executions`` executions (each holding one event, so a connection
   counts as open once it has replayed it), then ``--seconds`` of nothing.
   Measured over that window: the server's CPU seconds (``/proc/<pid>/stat``)
   and the database queries it made per second by what they read (log
   heads, log reads, requests, tokens), plus the watcher's ``data_version``
   checks (not queries). The
   server runs ``bench.idle_cost:application``: the project's application
   with every Django query counted (an execute wrapper on each connection)
   and the counts served at ``/bench/queries``.
2. Cross-process latency: a separate process (Django set up on the same
   SQLite file, the service layer called directly, as ``manage.py
   humaninput_ask`` does) writes ``--writes`` requests, one every
   ``--write-interval`` seconds on average (0.5-1.5 times it, so the writes
   fall at every phase of the server's checks), each to another subscribed
   execution. Its doorbells ring only in its own process, so the server's
   subscribers get the events from the watcher or, with it off, from their
   catch-up.
   Latency: receipt time minus the event's ``timestamp``, for every
   delivery (each write reaches every subscriber of its execution).

Figures are printed, never asserted; every wait has a deadline, and the run
exits 1 only if a subscriber did not receive a write (or something failed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import percentiles, spread_evenly, write_events
from bench.harness import (
    PYTHON,
    Backend,
    ask_all,
    backend,
    cpu_split,
    exit_status,
    http_get,
    raise_fd_limit,
    run_once,
    scratch_dir,
    serve,
    server_env,
    workers,
)
from bench.roles import LONG, PROMPT, subscribers
from harness.server import ServerProcess, daphne_command

PHASES = {"off": "0", "on": ""}  # HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS ("" = the default)
QUERIES_PATH = "/bench/queries"
# What a query reads, by the first of these tables it names.
QUERY_KINDS = (
    ("executionsequence", "heads"),
    ("humaninputevent", "log reads"),
    ("humaninputrequest", "requests (expiry)"),
    ("scopedtoken", "tokens (revocations)"),
)


# --- in the server: the project's application, its queries counted --------------------------------

_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()


def _count(kind: str) -> None:
    with _counts_lock:
        _counts[kind] += 1


def _counting_wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    lowered = sql.lower()
    _count(next((kind for table, kind in QUERY_KINDS if table in lowered), "other"))
    return execute(sql, params, many, context)


def _instrumented_application() -> Callable[..., Any]:
    """The project's ASGI application, counting queries and watcher checks; ``/bench/queries`` reads them."""
    # Imported here, once Django is set up: the orchestrator never loads Django.
    import django

    django.setup(set_prefix=False)
    from django.db.backends.signals import connection_created

    from events_app import crossprocess
    from humaninput_project.asgi import application as project

    def add_wrapper(sender: Any, connection: Any, **kwargs: Any) -> None:
        if _counting_wrapper not in connection.execute_wrappers:
            connection.execute_wrappers.append(_counting_wrapper)

    connection_created.connect(add_wrapper, weak=False)
    real_read = crossprocess.DataVersionProbe.read

    def counted_read(self: Any) -> int | None:
        _count("data_version checks")
        return real_read(self)

    crossprocess.DataVersionProbe.read = counted_read  # type: ignore[method-assign]

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == QUERIES_PATH:
            with _counts_lock:
                body = json.dumps(dict(_counts)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await project(scope, receive, send)

    return application


def __getattr__(name: str) -> Any:
    """``application`` is built on first use (by daphne), so importing this module loads no Django."""
    if name != "application":
        raise AttributeError(name)
    built = globals()["application"] = _instrumented_application()
    return built


# --- in the writer process --------------------------------------------------------------------------


def _write_paced(
    env: dict[str, str], executions: list[str], interval: float, log_path: str
) -> dict[str, Any]:
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    os.environ.update(env)
    import django  # here: the process takes the server's environment first

    django.setup()
    from events_app import services  # importable only once Django is set up

    # Gaps of 0.5-1.5 intervals (the same ones every run): with a fixed gap the writes
    # would keep one phase against the server's checks and show one latency only.
    gaps = random.Random(0)
    start = due = time.monotonic()
    for execution_id in executions:
        time.sleep(max(0.0, due - time.monotonic()))  # the schedule, not a sync
        services.request_create(execution_id=execution_id, prompt=PROMPT, context="bench idle_cost")
        due += interval * gaps.uniform(0.5, 1.5)
    return {"writes": len(executions), "seconds": time.monotonic() - start}


async def paced_writer(
    control: Any, *, index: int, env: dict[str, str], executions: list[str], interval: float, log_path: str
) -> dict[str, Any]:
    """A process of its own writing one request to each of ``executions``, about ``interval`` apart."""
    control.send("ready")
    await control.expect("go", LONG)
    return await asyncio.to_thread(_write_paced, env, executions, interval, log_path)


# --- the orchestrator --------------------------------------------------------------------------------


def start_server(chosen: Backend, workdir: Path, cpus: set[int] | None, check_seconds: str) -> ServerProcess:
    overrides = {"HUMANINPUT_CROSS_PROCESS_CHECK_SECONDS": check_seconds} if check_seconds else {}
    argv = daphne_command("bench.idle_cost:application", PYTHON)
    return serve(argv, server_env(chosen, **overrides), workdir, cpus)


def query_counts(server: ServerProcess) -> Counter[str]:
    status, body = http_get(server.port, QUERIES_PATH, timeout=10)
    if status != 200:
        raise RuntimeError(f"{QUERIES_PATH} answered {status}")
    return Counter(json.loads(body))


@contextlib.contextmanager
def subscriber_pools(server: ServerProcess, cpus: set[int] | None) -> Iterator[dict[str, Any]]:
    with workers(1, subscribers, cpus, transport="ws", port=server.port) as ws_pool:
        with workers(1, subscribers, cpus, transport="sse", port=server.port) as sse_pool:
            yield {"ws": ws_pool[0], "sse": sse_pool[0]}


def run_phase(
    phase: str, args: argparse.Namespace, chosen: Backend, workdir: Path, problems: list[str]
) -> dict[str, Any]:
    server_cpus, client_cpus = cpu_split()
    tag = uuid.uuid4().hex[:8]
    executions = [f"idle-{tag}-{number}" for number in range(args.executions)]
    plan = {"ws": spread_evenly(executions, args.ws), "sse": spread_evenly(executions, args.sse)}
    server = start_server(chosen, workdir, server_cpus, PHASES[phase])
    figures: dict[str, Any] = {"phase": phase}
    try:
        write_events(server.port, executions)
        with subscriber_pools(server, client_cpus) as pools:
            names = list(pools)
            data = [{"executions": plan[name], "replay": 1, "timeout": 300} for name in names]
            connected_all = ask_all(list(pools.values()), "connect", data, "connected", 330)
            for name, connected in zip(names, connected_all, strict=True):
                if connected["failed"]:
                    problems.append(f"{phase}: {connected['failed']} {name} failed: {connected['errors']}")
            server.wait_quiet(idle=1.0, timeout=120)

            # 1. idle
            cpu, queries, started = server.cpu_seconds(), query_counts(server), time.monotonic()
            time.sleep(args.seconds)  # the measurement window
            wall = time.monotonic() - started
            used, made = server.cpu_seconds() - cpu, query_counts(server) - queries
            figures.update(
                seconds=round(wall, 1),
                cpu_seconds=round(used, 3),
                cpu_percent=round(100 * used / wall, 2),
                per_second={kind: round(count / wall, 2) for kind, count in sorted(made.items())},
                queries_per_second=round(
                    sum(count for kind, count in made.items() if kind != "data_version checks") / wall, 2
                ),
            )

            # 2. cross-process latency
            written = executions[: args.writes]
            run_once(
                paced_writer,
                client_cpus,
                args.writes * args.write_interval,
                env=server_env(chosen),
                executions=written,
                interval=args.write_interval,
                log_path=str(workdir / f"writer-{phase}.log"),
            )
            expected = {name: (2 if name in written else 1) for name in executions}
            pool_list = list(pools.values())
            drained = ask_all(pool_list, "drain", [{"expected": expected, "timeout": 30}] * 2, "drained", 40)
            if not all(each["complete"] for each in drained):
                problems.append(f"{phase}: not every subscriber got its execution's write within 30 s")
            summaries = ask_all(pool_list, "stop", [{"expected": expected}] * 2, "result", 60)
        # Each connection first replayed its one event (before any write); the rest are the writes.
        live = [s for summary in summaries for s in summary["latencies"][summary["connections"] :]]
        figures["latency_ms"] = percentiles(live)
        for summary in summaries:
            for key in ("lost", "duplicated", "out_of_order", "disconnected"):
                if summary[key]:
                    problems.append(f"{phase} {summary['transport']}: {summary[key]} {key}")
    finally:
        server.stop()
    return figures


def ratio(on: float, off: float) -> str:
    return f"{on / off:.2f}x" if off else "n/a"


def report(args: argparse.Namespace, off: dict[str, Any], on: dict[str, Any]) -> None:
    print(
        f"\nIdle cost: {args.ws} WS + {args.sse} SSE subscribers over {args.executions} executions, "
        f"{args.seconds:g} s idle, catch-up 5 s, one daphne"
    )
    kinds = sorted(set(off["per_second"]) | set(on["per_second"]) | {"heads", "log reads"})
    rows = [
        ("server CPU seconds", off["cpu_seconds"], on["cpu_seconds"]),
        ("server CPU %", off["cpu_percent"], on["cpu_percent"]),
        ("DB queries/s (all)", off["queries_per_second"], on["queries_per_second"]),
        *(
            (f"  {kind}/s", off["per_second"].get(kind, 0.0), on["per_second"].get(kind, 0.0))
            for kind in kinds
        ),
    ]
    print(f"{'':32} {'watcher off':>12} {'watcher on':>12} {'on/off':>8}")
    for label, before, after in rows:
        print(f"{label:32} {before:>12} {after:>12} {ratio(after, before):>8}")
    print(
        f"\nCross-process delivery: {args.writes} writes by another process, "
        f"about {args.write_interval:g} s apart"
    )
    print(f"{'':32} {'watcher off':>12} {'watcher on':>12}")
    for key in ("n", "p50", "p95", "max"):
        label = "deliveries" if key == "n" else f"{key} ms"
        print(f"{label:32} {off['latency_ms'][key]!s:>12} {on['latency_ms'][key]!s:>12}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_cost", description=__doc__)
    parser.add_argument("--ws", type=int, default=200, help="idle WebSocket subscribers")
    parser.add_argument("--sse", type=int, default=100, help="idle SSE subscribers")
    parser.add_argument("--executions", type=int, default=100, help="executions they follow")
    parser.add_argument("--seconds", type=float, default=30.0, help="idle window per phase")
    parser.add_argument("--writes", type=int, default=20, help="writes by another process per phase")
    parser.add_argument("--write-interval", type=float, default=0.5, help="seconds between those writes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.writes > args.executions:
        parser.error("--writes must not exceed --executions (each write goes to another execution)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    workdir = scratch_dir(Path("/tmp/humaninput-bench"))
    problems: list[str] = []
    figures: dict[str, dict[str, Any]] = {}
    try:
        with backend("embedded", workdir, redis_db=0) as chosen:
            for phase in PHASES:
                print(f"[embedded] idle cost, watcher {phase} ...", file=sys.stderr, flush=True)
                figures[phase] = run_phase(phase, args, chosen, workdir, problems)
        report(args, figures["off"], figures["on"])
        if args.json:
            args.json.write_text(json.dumps({"arguments": vars(args) | {"json": None}, **figures}, indent=2))
    except Exception as error:
        problems.append(f"crashed: {error!r}")
        raise
    finally:
        status = exit_status(problems, workdir)
    return status


if __name__ == "__main__":
    sys.exit(main())
