"""6. Channel layer: channels_redis' RedisChannelLayer ("core") against RedisPubSubChannelLayer ("pubsub").

PostgreSQL + Redis setup only; both layers configured as the settings do.

Direct, on the layers: a listener process holds, like one daphne, 7 channels
in each of 100 execution groups (the 500 WS + 200 SSE of scenario 1) and one
in the inbox group, each with its own ``receive()`` loop like a consumer.
A publisher process rings doorbells as ``signals.publish_event`` does: each
event ``group_send`` to its execution's group and to ``humaninput-inbox``
(at once), messages shaped and sized like real events. Two phases per layer:
latency at the scenario-1 rate (50 events/s, open loop), and throughput
(8 senders as fast as the layer takes them, each owning a share of the
executions so their events stay in order). Figures: events/s until the
last delivery, p50/p99 publish → receive, and how fast the 701 channels were
created and joined (100 at a time, as a reconnect storm would). A layer may drop messages
(core: over capacity or past expiry; pubsub: at most once); that is reported, not failed,
since the service recovers by catch-up. The drain ends once every message is in or
nothing has arrived for 3 s (a backlog still drains; a dropped message never comes).
On Python 3.11 a core ``receive()`` can ignore its cancellation (``roles.LayerSubscriber``):
the listener counts the receives that ignored the first cancel and that outlived the second.

End to end, through daphne with ``REDIS_CHANNEL_LAYER=core`` and ``pubsub``:
scenario 1's workload (its latency and loss checks apply; the default
layer's first round is scenario 1's own run), and a burst where
a Django-set-up process writes through the service layer as fast as it can
(doorbells cross processes through Redis) to 100 executions followed by 500
WebSocket subscribers: delivered events/s and latency under that load.
Layers alternate in order over ``layer_rounds`` rounds; figures are medians.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import Context, Result, merge, percentiles, spread_evenly
from bench.harness import ask_all, server_env, split, workers
from bench.latency import measure as measure_latency
from bench.roles import layer_publisher, service_writer, subscribers

LAYERS = ("core", "pubsub")
DEFAULT_LAYER = "pubsub"  # REDIS_CHANNEL_LAYER's default in humaninput_project/settings.py
PER_GROUP = 7
# The direct phases' drain: over once nothing has arrived for QUIET_SECONDS (the rest was dropped),
# or at DRAIN_SECONDS whatever still trickles in.
QUIET_SECONDS = 3.0
DRAIN_SECONDS = 60.0


def direct(ctx: Context, kind: str, rate: float | None, name: str) -> dict[str, Any]:
    """One phase on the bare layer: listeners, one publisher, drain; events/s and latency."""
    scale = ctx.scale
    executions = ctx.executions(f"{name}-{kind}", scale.executions)
    layer = {"layer": kind, "redis_url": ctx.backend.redis_url, "layer_prefix": f"bench{ctx.tag}"}
    with (
        workers(1, subscribers, ctx.client_cpus, transport="layer", **layer) as (listeners,),
        workers(
            1,
            layer_publisher,
            ctx.server_cpus,
            executions=executions,
            duration=scale.layer_seconds,
            rate=rate,
            **layer,
        ) as (publisher,),
    ):
        channels = [*spread_evenly(executions, PER_GROUP * len(executions)), "*"]
        listeners.send("connect", {"executions": channels})
        joined = listeners.expect("connected", 120)
        publisher.expect("ready", 60)
        started = time.monotonic()
        publisher.send("go")
        sent = publisher.expect("result", scale.layer_seconds + 120)
        # No catch-up on a bare layer: a backlog keeps arriving, a dropped message never does.
        drain = {"expected": sent["per_execution"], "timeout": DRAIN_SECONDS, "idle": QUIET_SECONDS}
        listeners.send("drain", drain)
        complete = listeners.expect("drained", DRAIN_SECONDS + 30)["complete"]
        seconds = time.monotonic() - started
        listeners.send("stop", {"expected": sent["per_execution"]})
        summary = listeners.expect("result", 60)
    latency = percentiles(summary["latencies"])
    return {
        "events": sent["requests"],
        "events_per_s": sent["requests"] / seconds if complete else sent["requests"] / sent["seconds"],
        "deliveries": summary["deliveries"],
        "lost": summary["lost"],
        "duplicated": summary["duplicated"],
        "out_of_order": summary["out_of_order"],
        "p50": latency["p50"],
        "p99": latency["p99"],
        "complete": complete,
        "join_per_s": len(channels) / joined["seconds"],
        "ignored_cancel": summary["ignored_cancel"],
        "running_after_cancel": summary["running_after_cancel"],
    }


def burst(ctx: Context, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """End to end under load: service writes as fast as one process can, 500 WS subscribers."""
    scale = ctx.scale
    executions = ctx.executions(f"burst-{kind}", scale.executions)
    server = ctx.daphne(REDIS_CHANNEL_LAYER=kind)
    env = server_env(ctx.backend, REDIS_CHANNEL_LAYER=kind)
    try:
        with (
            workers(
                scale.client_processes, subscribers, ctx.client_cpus, transport="ws", port=server.port
            ) as pool,
            workers(
                1,
                service_writer,
                ctx.client_cpus,
                env=env,
                executions=executions,
                duration=scale.layer_seconds,
                log_path=str(ctx.workdir / f"burst-writer-{kind}.log"),
            ) as (writer,),
        ):
            plan = split(spread_evenly(executions, scale.ws), len(pool))
            ask_all(pool, "connect", [{"executions": part} for part in plan], "connected", 300)
            writer.expect("ready", 60)
            started = time.monotonic()
            writer.send("go")
            written = writer.expect("result", scale.layer_seconds + 120)
            drain = {"expected": written["per_execution"], "timeout": scale.catchup_seconds + 10}
            ask_all(pool, "drain", [drain] * len(pool), "drained", scale.catchup_seconds + 30)
            seconds = time.monotonic() - started
            summary = merge(
                ask_all(pool, "stop", [{"expected": written["per_execution"]}] * len(pool), "result", 60)
            )
    finally:
        server.stop()
    latency = percentiles(summary["latencies"])
    figures = {"events_per_s": written["requests"] / seconds, "p50": latency["p50"], "p99": latency["p99"]}
    return figures, summary


def median(found: list[dict[str, Any]], key: str) -> float | None:
    values = [each[key] for each in found if each[key] is not None]
    return round(statistics.median(values), 2) if values else None


def run(ctx: Context) -> Result:
    result = Result("6 channel layer")
    scale = ctx.scale
    phases: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_number in range(scale.layer_rounds):
        order = LAYERS if round_number % 2 == 0 else LAYERS[::-1]
        for kind in order:
            phases.setdefault(("direct 50/s", kind), []).append(direct(ctx, kind, scale.rate, "lat"))
            phases.setdefault(("direct max", kind), []).append(direct(ctx, kind, None, "max"))
            reuse = kind == DEFAULT_LAYER and round_number == 0 and "latency" in ctx.earlier
            e2e = ctx.earlier["latency"] if reuse else measure_latency(ctx, f"6 e2e {kind}", layer=kind)
            result.problems += [] if reuse else e2e.problems
            phases.setdefault(("e2e 50/s", kind), []).append(
                {figure.name: figure.value for figure in e2e.figures} | {"events_per_s": None}
            )
            figures, summary = burst(ctx, kind)
            result.check_deliveries(f"{kind}: e2e burst WS", summary)
            phases.setdefault(("e2e burst", kind), []).append(figures)
    for (phase, kind), found in phases.items():
        label = f"{kind}: {phase}"
        if phase.startswith("direct"):
            result.add(f"{label} events/s", median(found, "events_per_s"), "events/s")
            result.add(f"{label} p50", median(found, "p50"), "ms")
            result.add(f"{label} p99", median(found, "p99"), "ms")
            dropped = sum(each["lost"] + each["duplicated"] + each["out_of_order"] for each in found)
            result.add(f"{label} lost+dup+ooo (layer only)", dropped, "messages")
            result.add(
                f"{label} join rate (new_channel + group_add)", median(found, "join_per_s"), "channels/s"
            )
            for key, what in (("ignored_cancel", "ignored"), ("running_after_cancel", "outlived")):
                count = sum(each[key] for each in found)
                result.add(f"{label} receives that {what} a cancel (listener stop)", count, "tasks")
        elif phase == "e2e burst":
            result.add(f"{label} delivered events/s", median(found, "events_per_s"), "events/s")
            result.add(f"{label} WS p50", median(found, "p50"), "ms")
            result.add(f"{label} WS p99", median(found, "p99"), "ms")
        else:
            for transport in ("WS", "SSE", "long-poll"):
                result.add(f"{label} {transport} p99", median(found, f"{transport} p99"), "ms", at_most=50)
        result.details[label] = found
    return result
