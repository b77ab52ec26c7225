"""5. Polling: plain polls per second, and what 2,000 waiting long polls cost the server.

Plain: one execution holds one event; a client process keeps
``poll_concurrency`` keep-alive connections busy with
``GET /poll/human-input/<id>?last_event_id=<that event>`` (nothing new, the
common case of a polling agent) for ``poll_seconds``: answers/s and p99.

Long: 2,000 long polls (``wait=25``) with the cursor at the newest event of
100 executions, from client processes; once the server has gone quiet (all
of them parked) its VmRSS and Threads are read from ``/proc``, compared with
before. The server runs with ``HUMANINPUT_CATCHUP_SECONDS=60``, longer than
the wait, so parked polls make no periodic log reads and "quiet" is
observable (scenario 4 measures what those reads cost). Then one event is
written to each execution and every long poll must answer with exactly that
event (lost / duplicated / out of order are counted): the wake-up latency.
"""

from __future__ import annotations

import json

from bench.common import Context, Result, merge, percentiles, spread_evenly, write_events
from bench.harness import API_KEY, ask_all, http_get, run_once, split, workers
from bench.roles import http_load, subscribers


def newest_events(port: int, executions: list[str]) -> dict[str, tuple[str, int]]:
    """``execution_id -> (event_id, sequence)`` of each execution's newest event, read by polling."""
    cursors = {}
    for execution_id in executions:
        status, body = http_get(
            port, f"/poll/human-input/{execution_id}", 30, {"Authorization": f"Bearer {API_KEY}"}
        )
        events = json.loads(body)["events"]
        if status != 200 or not events:
            raise RuntimeError(f"poll answered {status}: {body[:300]!r}")
        cursors[execution_id] = (events[-1]["event_id"], events[-1]["sequence"])
    return cursors


def run(ctx: Context) -> Result:
    result = Result("5 polling")
    scale = ctx.scale
    executions = ctx.executions("poll", 100)
    server = ctx.daphne(HUMANINPUT_CATCHUP_SECONDS="60")
    try:
        write_events(server.port, executions)
        cursors = newest_events(server.port, executions)
        event_id = cursors[executions[0]][0]
        plain = run_once(
            http_load,
            ctx.client_cpus,
            scale.poll_seconds,
            port=server.port,
            kind="get",
            path=f"/poll/human-input/{executions[0]}?last_event_id={event_id}",
            duration=scale.poll_seconds,
            concurrency=scale.poll_concurrency,
        )
        if plain["statuses"].get(200, 0) != plain["requests"]:
            result.problems.append(f"plain polls answered {plain['statuses']}")
        latency = percentiles(plain["latencies"])
        result.add(
            "plain polls/s", round(plain["statuses"].get(200, 0) / plain["seconds"]), "polls/s", at_least=1000
        )
        result.add("plain poll p50", latency["p50"], "ms")
        result.add("plain poll p99", latency["p99"], "ms")
        result.details["plain"] = {**plain, "latencies": latency, "concurrency": scale.poll_concurrency}

        count = scale.waiting_polls
        with workers(
            scale.client_processes, subscribers, ctx.client_cpus, transport="poll", port=server.port
        ) as pool:
            server.wait_quiet()
            before = server.status()
            plan = split(spread_evenly(executions, count), len(pool))
            data = [{"executions": part, "cursors": cursors, "timeout": 120} for part in plan]
            connected = ask_all(pool, "connect", data, "connected", 150)
            if failed := sum(each["failed"] for each in connected):
                result.problems.append(f"long polls: {failed} failed to connect: {connected[0]['errors']}")
            server.wait_quiet(timeout=120)
            waiting = server.status()
            write_events(server.port, executions)
            expected = {name: sequence + 1 for name, (_, sequence) in cursors.items()}
            drain = {"expected": expected, "timeout": 30}
            ask_all(pool, "drain", [drain] * len(pool), "drained", 60)
            summary = merge(ask_all(pool, "stop", [{"expected": expected}] * len(pool), "result", 60))
    finally:
        server.stop()
    grown = waiting["rss_kib"] - before["rss_kib"]
    added = waiting["threads"] - before["threads"]
    result.add(f"{count} long polls waiting: server RSS", round(waiting["rss_kib"] / 1024, 1), "MiB")
    result.add(f"{count} long polls waiting: KiB per poll", round(grown / count, 1), "KiB")
    result.add(f"{count} long polls waiting: threads added", added, "threads", at_most=10)
    result.add("long poll wake-up p99", percentiles(summary["latencies"])["p99"], "ms")
    result.check_deliveries("long polls", summary)
    result.details["long"] = {
        "before": before,
        "waiting": waiting,
        "summary": {**summary, "latencies": percentiles(summary["latencies"])},
    }
    return result
