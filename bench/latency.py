"""1. Publish → deliver latency on WebSocket, SSE and long polling, and whether every event arrives.

One daphne. Client processes open 500 WebSocket and 200 SSE subscribers and
50 back-to-back long polls (``wait=25``), spread evenly over 100 executions
(``Scale``). A publisher process then POSTs requests to
``/api/human-input/requests`` on a fixed schedule (open loop, 50/s, the
executions in turn), so each write stores one event and rings its doorbell.
Latency is receipt time minus the event's ``timestamp`` (the server's write
time), per transport: p50/p95/p99/max. After the last write every subscriber
must hold events 1..n of its execution within catch-up + 10 s; lost,
duplicated and out-of-order deliveries are counted per transport and any of
them fails the run. The server's CPU share during the writes is reported too.
"""

from __future__ import annotations

import contextlib
from typing import Any

from bench.common import Context, Result, merge, percentiles, spread_evenly
from bench.harness import ask_all, split, workers
from bench.roles import http_load, subscribers

TRANSPORTS = {"ws": "WS", "sse": "SSE", "poll": "long-poll"}


def measure(ctx: Context, scenario: str, layer: str | None = None) -> Result:
    scale = ctx.scale
    result = Result(scenario)
    executions = ctx.executions(f"lat{layer or ''}", scale.executions)
    counts = {"ws": scale.ws, "sse": scale.sse, "poll": scale.long_polls}
    server = ctx.daphne(**({"REDIS_CHANNEL_LAYER": layer} if layer else {}))
    try:
        with contextlib.ExitStack() as stack:
            pools = {
                transport: stack.enter_context(
                    workers(
                        scale.client_processes if transport == "ws" else 1,
                        subscribers,
                        ctx.client_cpus,
                        transport=transport,
                        port=server.port,
                    )
                )
                for transport in counts
            }
            publisher = stack.enter_context(
                workers(
                    1,
                    http_load,
                    ctx.client_cpus,
                    port=server.port,
                    kind="create",
                    executions=executions,
                    duration=scale.seconds,
                    rate=scale.rate,
                    concurrency=8,
                )
            )[0]
            for transport, pool in pools.items():
                plan = split(spread_evenly(executions, counts[transport]), len(pool))
                connected = ask_all(
                    pool, "connect", [{"executions": part} for part in plan], "connected", 300
                )
                if failed := sum(each["failed"] for each in connected):
                    result.problems.append(
                        f"{transport}: {failed} connections failed: {connected[0]['errors']}"
                    )
            publisher.expect("ready", 60)
            cpu_before = server.cpu_seconds()
            publisher.send("go")
            written = publisher.expect("result", scale.seconds + 120)
            server_cpu = server.cpu_seconds() - cpu_before
            expected = written["per_execution"]
            everyone = [worker for pool in pools.values() for worker in pool]
            drain = {"expected": expected, "timeout": scale.catchup_seconds + 10}
            ask_all(everyone, "drain", [drain] * len(everyone), "drained", scale.catchup_seconds + 30)
            summaries = {
                transport: merge(ask_all(pool, "stop", [{"expected": expected}] * len(pool), "result", 60))
                for transport, pool in pools.items()
            }
    finally:
        server.stop()
    report(result, written, server_cpu, summaries)
    return result


def report(result: Result, written: dict[str, Any], server_cpu: float, summaries: dict[str, Any]) -> None:
    created = written["statuses"].get(201, 0)
    if created != written["requests"]:
        result.problems.append(f"publisher: {written['statuses']} (not all 201)")
    result.add("events written", created, "events")
    result.add("write rate achieved", round(created / written["seconds"], 1), "events/s")
    result.add("POST p99 (publisher)", percentiles(written["latencies"])["p99"], "ms")
    result.add("server CPU during writes", round(100 * server_cpu / written["seconds"], 1), "% of a core")
    result.details["publisher"] = {**written, "latencies": percentiles(written["latencies"])}
    for transport, summary in summaries.items():
        label = TRANSPORTS[transport]
        latency = percentiles(summary["latencies"])
        result.add(f"{label} p50", latency["p50"], "ms")
        result.add(f"{label} p99", latency["p99"], "ms", at_most=50)
        result.add(f"{label} max", latency["max"], "ms")
        result.add(f"{label} deliveries", summary["deliveries"], "events")
        result.check_deliveries(label, summary, detailed=True)
        result.details[transport] = {**summary, "latencies": latency, "spread": None}


def run(ctx: Context) -> Result:
    ctx.earlier["latency"] = result = measure(ctx, "1 latency")
    return result
