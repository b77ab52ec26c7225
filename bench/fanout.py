"""2. Fan-out: one event to 1,000 WebSocket subscribers of one execution, against a bare broadcast server.

1,000 subscribers (over ``client_processes`` client processes) follow one
execution; each round one request is POSTed and the round ends when every
subscriber holds the event. Per round: time from the event's ``timestamp``
to the last receipt, deliveries/s (= subscribers / that time), and the
server's CPU time for the round. Then the same clients and rounds against
``bench.baseline`` (``websockets.broadcast``, same CPU, a message of the same
size, stamped when the publisher sends it). Figures are medians over rounds;
the ratio is ours / baseline deliveries/s.

Before the rounds, the server's CPU use with the 1,000 idle subscribers is
measured over one ``HUMANINPUT_CATCHUP_SECONDS`` period: the cost of the
periodic catch-up reads every subscriber makes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from websockets.sync.client import connect as ws_connect

from bench.common import Context, Result, merge, write_events
from bench.harness import PYTHON, ask_all, serve, server_env, split, workers
from bench.roles import fake_event, subscribers
from harness.server import FD, ServerProcess


def rounds(
    ctx: Context, server: ServerProcess, transport: str, execution_id: str, publish: Callable[[int], None]
) -> dict[str, Any]:
    """Connect the subscribers, publish ``scale.rounds`` events one at a time; per-round figures."""
    scale = ctx.scale
    cpu: list[float] = []
    with workers(
        scale.client_processes,
        subscribers,
        ctx.client_cpus,
        transport=transport,
        port=server.port,
        spread=True,
    ) as pool:
        plan = split([execution_id] * scale.fanout, len(pool))
        connected = ask_all(pool, "connect", [{"executions": part} for part in plan], "connected", 300)
        before, started = server.cpu_seconds(), time.monotonic()
        time.sleep(scale.catchup_seconds)  # a measurement window, not a synchronisation
        idle_cpu = (server.cpu_seconds() - before) / (time.monotonic() - started)
        for sequence in range(1, scale.rounds + 1):
            before = server.cpu_seconds()
            publish(sequence)
            drain = {"expected": {execution_id: sequence}, "timeout": scale.catchup_seconds + 10}
            ask_all(pool, "drain", [drain] * len(pool), "drained", scale.catchup_seconds + 30)
            cpu.append(server.cpu_seconds() - before)
        expected = {"expected": {execution_id: scale.rounds}}
        summary = merge(ask_all(pool, "stop", [expected] * len(pool), "result", 60))
    spread = summary.pop("spread")
    to_last = [last - event_at for event_at, _, last, _ in spread.values()]
    return {
        "summary": summary,
        "connect_seconds": max(each["seconds"] for each in connected),
        "idle_cpu_percent": 100 * idle_cpu,
        "connect_failed": sum(each["failed"] for each in connected),
        "to_last_ms": statistics.median(to_last) * 1000,
        "first_to_last_ms": statistics.median(last - first for _, first, last, _ in spread.values()) * 1000,
        "deliveries_per_s": statistics.median(
            count / (last - event_at) for event_at, _, last, count in spread.values()
        ),
        "cpu_ms_per_1000": statistics.median(cpu) * 1000 * 1000 / scale.fanout,
    }


def run(ctx: Context) -> Result:
    result = Result("2 fan-out")
    execution_id = ctx.executions("fan", 1)[0]
    server = ctx.daphne()
    try:
        ours = rounds(ctx, server, "ws", execution_id, lambda _: write_events(server.port, [execution_id]))
    finally:
        server.stop()
    argv = [PYTHON, "-m", "bench.baseline", "--fd", FD]
    baseline_server = serve(argv, server_env(ctx.backend), ctx.workdir, ctx.server_cpus, name="baseline")
    try:
        with ws_connect(f"ws://127.0.0.1:{baseline_server.port}/publish", compression=None) as publisher:
            baseline = rounds(
                ctx,
                baseline_server,
                "baseline",
                execution_id,
                lambda sequence: publisher.send(json.dumps(fake_event(execution_id, sequence))),
            )
    finally:
        baseline_server.stop()
    for label, found in (("ours", ours), ("baseline", baseline)):
        result.add(f"{label}: time to last subscriber", round(found["to_last_ms"], 1), "ms")
        result.add(f"{label}: deliveries/s", round(found["deliveries_per_s"]), "deliveries/s")
        result.add(f"{label}: server CPU per 1,000 deliveries", round(found["cpu_ms_per_1000"], 1), "ms")
        result.check_deliveries(label, found["summary"])
        if found["connect_failed"]:
            result.problems.append(f"{label}: {found['connect_failed']} connections failed")
        result.details[label] = {**found, "summary": {**found["summary"], "latencies": None}}
    result.add("ours: time to connect all", round(ours["connect_seconds"], 2), "s")
    result.add(
        f"ours: idle server CPU, {ctx.scale.fanout} subscribers (catch-up {ctx.scale.catchup_seconds:g} s)",
        round(ours["idle_cpu_percent"], 1),
        "% of a core",
    )
    ratio = ours["deliveries_per_s"] / baseline["deliveries_per_s"]
    result.add("ratio ours / baseline (deliveries/s)", round(100 * ratio, 1), "%", at_least=25)
    result.add(
        "ratio baseline / ours (CPU per delivery)",
        round(100 * baseline["cpu_ms_per_1000"] / ours["cpu_ms_per_1000"], 1),
        "%",
    )
    return result
