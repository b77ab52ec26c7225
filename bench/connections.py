"""4. Idle connections: server memory, threads and CPU per idle WebSocket and per idle SSE connection.

For each transport a fresh daphne and 100 executions holding one event each.
After a warm-up of 20 connections (lazy imports, thread pools) the server's
VmRSS and Threads are read from ``/proc/<pid>/status``; then client
processes open connections up to each level (1,000, then 5,000 in all). A
connection counts as open once it holds the replayed event, i.e. it is
authenticated, has read the log and joined its group. Per level: seconds to
open them (and connections/s), then, once the server is quiet, the RSS
growth per connection in KiB and the thread count.

Idle is not free: every subscriber re-reads the log every
``HUMANINPUT_CATCHUP_SECONDS`` (5 s by default), so N idle connections cost
N/5 queries per second, which saturates one process before 5,000 (scenario 2
reports what 1,000 idle subscribers cost in CPU). The levels here run with the
catch-up at 600 s so memory, threads and accept time are measured alone.

On PostgreSQL, where each connection's first read also opens a database
connection, the default run stops at the first level (``Scale.postgres_idle_levels``);
``--full`` opens 5,000 there too.
"""

from __future__ import annotations

import time

from bench.common import Context, Result, merge, spread_evenly, write_events
from bench.harness import ask_all, split, workers
from bench.roles import subscribers

WARM_UP = 20
TARGET_KIB = {"ws": 40, "sse": 60}
LABEL = {"ws": "WS", "sse": "SSE"}


def measure(ctx: Context, result: Result, transport: str) -> None:
    scale = ctx.scale
    label = LABEL[transport]
    executions = ctx.executions(f"idle-{transport}", 100)
    levels = scale.postgres_idle_levels if ctx.backend.redis_url else scale.idle_levels
    processes = 4 if levels[-1] > 2000 else scale.client_processes
    server = ctx.daphne(HUMANINPUT_CATCHUP_SECONDS="600")
    try:
        write_events(server.port, executions)
        with workers(processes, subscribers, ctx.client_cpus, transport=transport, port=server.port) as pool:

            def connect(count: int) -> float:
                started = time.monotonic()
                plan = split(spread_evenly(executions, count), len(pool))
                data = [{"executions": part, "replay": 1, "timeout": 300} for part in plan]
                connected = ask_all(pool, "connect", data, "connected", 330)
                if failed := sum(each["failed"] for each in connected):
                    result.problems.append(f"{label}: {failed} connections failed: {connected[0]['errors']}")
                return time.monotonic() - started

            connect(WARM_UP)
            server.wait_quiet()
            base = server.status()
            result.details[f"{transport} before"] = base
            opened = 0
            for level in levels:
                seconds = connect(level - opened)
                server.wait_quiet()
                status = server.status()
                per_connection = (status["rss_kib"] - base["rss_kib"]) / level
                result.add(
                    f"{label} x{level}: KiB per connection",
                    round(per_connection, 1),
                    "KiB",
                    at_most=TARGET_KIB[transport],
                )
                result.add(
                    f"{label} x{level}: server threads (before: {base['threads']})",
                    status["threads"],
                    "threads",
                )
                result.add(f"{label} +{level - opened}: time to open", round(seconds, 2), "s")
                result.add(
                    f"{label} +{level - opened}: open rate", round((level - opened) / seconds), "conn/s"
                )
                result.details[f"{transport} x{level}"] = {**status, "open_seconds": seconds}
                opened = level
            expected = {"expected": dict.fromkeys(executions, 1)}
            summary = merge(ask_all(pool, "stop", [expected] * len(pool), "result", 60))
        result.check_deliveries(f"{label} replay", summary)
    finally:
        server.stop()


def run(ctx: Context) -> Result:
    result = Result("4 connections")
    for transport in LABEL:
        measure(ctx, result, transport)
    return result
