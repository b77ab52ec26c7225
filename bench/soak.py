"""Soak: WebSocket, SSE and long-poll clients that keep dropping and resuming; every event once, in order.

``python -m bench.soak [--duration 900] [--setup postgres|embedded] [--ws 500 --sse 200 --poll 100]``

Client processes (``--client-processes``, each a mixed share of the clients,
pinned to the client CPUs like every bench role) follow one execution each,
spread evenly over ``--executions``. Every client first connects without a
cursor (so it must end up holding its execution's whole log, from sequence
1), then drops its connection at random — Poisson, ``--disconnect-rate`` per
client per minute; ``--abrupt-share`` of the drops reset the TCP connection
(SO_LINGER 0), the others close cleanly (WebSocket close handshake, FIN) —
and reconnects after up to a second, resuming from the ``event_id`` of the
last event it holds. With more than one server process each reconnect goes
to the next process, so resuming crosses processes through Redis.

A writer process keeps ``--rate`` writes/s through the REST API on a fixed
schedule (open loop), at random executions: mostly new requests
(``human_input_required``), and ``--answer-share`` of the time an answer or a
cancel of a pending request (``human_input_completed`` / ``_cancelled``).

Checks: once the writers stop, the log's final sequence per execution is read
from the database (and the log itself checked: 1..n, no gaps, n = the writes
the server confirmed). Every client must then catch up to it within
``--drain-timeout``, having seen each sequence exactly once, each delivery
being the one after the last it got (a known cursor gives only higher
sequences, so a duplicate across a reconnect is a failure too). Any loss,
duplicate or disorder, a connection the server ended by itself, a traceback
in a server's log, and any subscriber the server still counts
(``humaninput_subscribers`` on ``/metrics``) after the clients have gone,
print which client and execution and how, and exit 1. Refused handshakes,
applications daphne had to kill and pub/sub channels left subscribed are
reported against a target of 0 without failing the run.

Reported: events written, deliveries, reconnects, publish → receive latency
per transport (receipt time minus the event's ``timestamp``, as in scenario
1) for live deliveries (events written while the connection was open; those
replayed on a resume are counted apart, their latency includes the
downtime), per minute as well; each server's VmRSS, CPU and threads at the
start, every minute, at the end and after the clients close (growth in MiB
and %), with the machine's load average (other work on the machine delays
deliveries too); PostgreSQL connections of the run's database; the Redis
pub/sub channels each server holds; the server's own counters and what it
logged above INFO. Table on stdout, JSON in
``bench/results/soak-<setup>.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import harness.redis
from bench.common import SCALES, Context, Result, percentiles, spread_evenly, with_scale
from bench.harness import (
    API_KEY,
    PG_ADMIN_URL,
    Backend,
    Worker,
    ask_all,
    backend,
    cpu_split,
    exit_status,
    http_get,
    pg_connect,
    raise_fd_limit,
    scratch_dir,
    split,
    workers,
)
from bench.report import machine, rows, text_table
from bench.soak_clients import KEPT, TRANSPORTS, describe, soak_clients, soak_writer
from harness.server import ServerProcess, wait_until

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_EVERY = 60.0
EVENT_TABLE = "events_app_humaninputevent"  # Django's default table name for HumanInputEvent
METRICS_AUTH = {"Authorization": f"Bearer {API_KEY}"}


# --- what the orchestrator reads ------------------------------------------------------------------------


def scrape(server: ServerProcess) -> dict[str, float]:
    """``/metrics`` of one server: ``name{labels}`` -> value, ours only, no histogram buckets."""
    status, body = http_get(server.port, "/metrics", 30, METRICS_AUTH)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}: {body[:200]!r}")
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("humaninput_") and "_bucket{" not in line and "_created" not in line:
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def subscribers(servers: list[ServerProcess]) -> dict[str, int]:
    """``humaninput_subscribers`` per transport, summed over the server processes."""
    scraped = [scrape(server) for server in servers]
    return {
        transport: int(
            sum(found.get(f'humaninput_subscribers{{transport="{transport}"}}', 0) for found in scraped)
        )
        for transport in TRANSPORTS
    }


def catchup_reads(servers: list[ServerProcess]) -> int:
    """``humaninput_catchup_reads_total`` (found or not) over the server processes."""
    return int(
        sum(
            value
            for server in servers
            for key, value in scrape(server).items()
            if key.startswith("humaninput_catchup_reads_total{")
        )
    )


def database_connections(chosen: Backend) -> int | None:
    """Server connections to the run's PostgreSQL database (ours goes to the admin database)."""
    if chosen.redis_url is None:
        return None
    name = chosen.env["DATABASE_URL"].rsplit("/", 1)[1]
    with pg_connect(PG_ADMIN_URL) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
    return int(row[0]) if row else None


def redis_endpoints(pid: int, redis_port: int) -> set[str]:
    """``host:port`` of each TCP connection process ``pid`` holds to ``redis_port`` (IPv4, from /proc)."""
    inodes = set()
    for link in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(link)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    endpoints = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == redis_port:
            address, port = local.split(":")
            host = ".".join(str(int(address[index : index + 2], 16)) for index in (6, 4, 2, 0))
            endpoints.add(f"{host}:{int(port, 16)}")
    return endpoints


def pubsub_subscriptions(chosen: Backend, servers: list[ServerProcess]) -> list[int] | None:
    """Redis pub/sub channels each server process is subscribed to (``CLIENT LIST`` ``sub=``).

    With the pub/sub channel layer a process subscribes one Redis channel per
    subscriber (its layer channel) and one per group it follows; a channel
    that stays subscribed after its subscriber has gone is a leak in Redis
    and in the process (the layer keeps a queue for it).
    """
    if chosen.redis_url is None:
        return None
    with harness.redis.client(chosen.redis_url) as store:
        held = {entry["addr"]: int(entry.get("sub", 0)) for entry in store.client_list()}
    port = urlsplit(chosen.redis_url).port or 6379
    return [sum(held.get(each, 0) for each in redis_endpoints(server.pid, port)) for server in servers]


def log_heads(chosen: Backend, prefix: str) -> dict[str, tuple[int, int, int]]:
    """``execution_id -> (events, lowest sequence, highest sequence)`` read from the database itself."""
    query = (
        f"SELECT execution_id, COUNT(*), MIN(sequence), MAX(sequence) FROM {EVENT_TABLE} "
        "WHERE execution_id LIKE {} GROUP BY execution_id"
    )
    url = chosen.env["DATABASE_URL"]
    if chosen.redis_url is None:
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as database:
            found = database.execute(query.format("?"), (prefix + "%",)).fetchall()
    else:
        with pg_connect(url) as database:
            found = database.execute(query.format("%s"), (prefix + "%",)).fetchall()
    return {name: (int(count), int(low), int(high)) for name, count, low, high in found}


def merge_progress(found: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    merged: dict[str, Counter[str]] = defaultdict(Counter)
    for each in found:
        for transport, counts in each.items():
            merged[transport].update(counts)
    return {transport: dict(counts) for transport, counts in merged.items()}


LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) (\S+) ")
KILLED = "took too long to shut down and was killed"


def scan_log(text: str) -> dict[str, Any]:
    """What a server logged above INFO (the plain format): counts per level and logger, examples.

    A traceback's example is the line before it (what was being logged) and its exception line.
    """
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("Traceback"):
            key = "Traceback"
            ending = next((each for each in lines[number + 1 :] if each and not each[0].isspace()), "")
            example = f"{lines[number - 1] if number else ''} ... {ending}"
        elif found := LOG_LEVEL.search(line):
            key, example = f"{found[1]} {found[2]}", line
        else:
            continue
        counts[key] += 1
        if len(examples[key]) < 3:
            examples[key].append(example[:2000])  # daphne's kill warning shows what the task waited on
    return {
        "counts": dict(counts),
        "examples": dict(examples),
        "killed": sum(1 for line in lines if KILLED in line),
    }


def sample(
    label: str,
    started: float,
    servers: list[ServerProcess],
    chosen: Backend,
    pool: list[Worker] | None,
) -> dict[str, Any]:
    """One row of the timeline: each server's RSS and threads, database connections, subscribers."""
    entry: dict[str, Any] = {
        "at": label,
        "seconds": round(time.monotonic() - started, 1) if started else 0.0,
        "servers": [{**server.status(), "cpu_seconds": server.cpu_seconds()} for server in servers],
        # Other work on the machine (the clients, PostgreSQL, Redis, anything else) delays deliveries.
        "load_average": round(os.getloadavg()[0], 2),
        "db_connections": database_connections(chosen),
        "pubsub_subscriptions": pubsub_subscriptions(chosen, servers),
        "subscribers": subscribers(servers),
    }
    if pool is not None:
        entry["clients"] = merge_progress(ask_all(pool, "progress", [None] * len(pool), "progress", 60))
    line = (
        f"[soak] {label:>10} t={entry['seconds']:>5.0f}s  RSS {rss_mib(entry):6.1f} MiB  "
        f"threads {threads(entry)}  load {entry['load_average']:.1f}  db {entry['db_connections']}  "
        f"pub/sub {entry['pubsub_subscriptions']}  "
        f"subscribers {'/'.join(str(entry['subscribers'][t]) for t in TRANSPORTS)}"
    )
    if clients := entry.get("clients"):
        totals = Counter()
        for counts in clients.values():
            totals.update(counts)
        line += (
            f"  delivered {totals['deliveries']}  reconnects {totals['reconnects']}  "
            f"dup/disorder {totals['anomalies']}  ended by server {totals['unexpected']}  "
            f"refused {totals['connect_failures']}"
        )
    print(line, file=sys.stderr, flush=True)
    return entry


# --- the run ------------------------------------------------------------------------------------------


def plan_clients(args: argparse.Namespace, executions: list[str]) -> list[tuple[int, str, str]]:
    """(number, transport, execution) for every client, each transport spread evenly over the executions."""
    clients: list[tuple[int, str, str]] = []
    for transport, count in (("ws", args.ws), ("sse", args.sse), ("poll", args.poll)):
        for execution_id in spread_evenly(executions, count):
            clients.append((len(clients), transport, execution_id))
    return clients


def soak(
    args: argparse.Namespace, ctx: Context, servers: list[ServerProcess], result: Result
) -> dict[str, Any]:
    """Connect, write while clients churn, drain, check, close; the raw material of the report."""
    chosen = ctx.backend
    executions = ctx.executions("soak", args.executions)
    prefix = executions[0].rsplit("-", 1)[0] + "-"
    ports = [server.port for server in servers]
    clients = plan_clients(args, executions)
    timeline: list[dict[str, Any]] = []
    with (
        workers(args.client_processes, soak_clients, ctx.client_cpus) as pool,
        workers(
            1,
            soak_writer,
            ctx.client_cpus,
            ports=ports,
            executions=executions,
            duration=args.duration,
            rate=args.rate,
            answer_share=args.answer_share,
            seed=args.seed,
        ) as (writer,),
    ):
        options = {
            "ports": ports,
            "disconnect_rate": args.disconnect_rate,
            "abrupt": args.abrupt_share,
            "connect_timeout": 300,
        }
        shares = split(clients, len(pool))
        data = [
            {**options, "clients": share, "seed": args.seed * 1000 + number}
            for number, share in enumerate(shares)
        ]
        connected = ask_all(pool, "connect", data, "connected", 330)
        if missing := [number for each in connected for number in each["missing"]]:
            result.problems.append(f"{len(missing)} clients never connected (e.g. {missing[:5]})")
        connect_seconds = max(each["seconds"] for each in connected)
        print(
            f"[soak] {len(clients)} clients connected in {connect_seconds:.1f} s", file=sys.stderr, flush=True
        )
        writer.expect("ready", 60)
        timeline.append(sample("start", 0.0, servers, chosen, pool))
        started, epoch = time.monotonic(), time.time()
        for worker in pool:
            worker.send("go", {"started": epoch})
        writer.send("go")
        deadline = started + args.duration + 300
        next_sample = started + SAMPLE_EVERY
        while not writer.conn.poll(max(0.0, min(next_sample, deadline) - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError("the writer did not finish within its duration + 300 s")
            if dead := [worker for worker in pool if not worker.process.is_alive()]:
                raise RuntimeError(f"{len(dead)} client processes died")
            minute = round((next_sample - started) / 60)
            timeline.append(sample(f"minute {minute}", started, servers, chosen, pool))
            next_sample += SAMPLE_EVERY
        written = writer.expect("result", 10)
        heads = log_heads(chosen, prefix)
        final = {execution_id: heads.get(execution_id, (0, 0, 0))[2] for execution_id in executions}
        drained = ask_all(
            pool,
            "drain",
            [{"final": final, "timeout": args.drain_timeout}] * len(pool),
            "drained",
            args.drain_timeout + 60,
        )
        timeline.append(sample("end", started, servers, chosen, pool))
        connected_counts = {"ws": args.ws, "sse": args.sse}
        try:
            wait_until(
                lambda: all(subscribers(servers)[name] == count for name, count in connected_counts.items()),
                timeout=30,
                interval=0.5,
                what="the subscriber gauges to match the open WS and SSE connections",
            )
        except TimeoutError as error:
            result.problems.append(f"{error}: {subscribers(servers)} for {connected_counts}")
        gauges_connected = subscribers(servers)
        closed_at = time.monotonic()
        summaries = ask_all(pool, "stop", [{"final": final}] * len(pool), "result", 120)
    to_zero: dict[str, float | None] = dict.fromkeys(TRANSPORTS)

    def gauges_at_zero() -> bool:
        found = subscribers(servers)
        for transport, count in found.items():
            if count == 0 and to_zero[transport] is None:
                to_zero[transport] = round(time.monotonic() - closed_at, 2)
        return not any(found.values())

    try:
        wait_until(gauges_at_zero, timeout=60, interval=0.25, what="the subscriber gauges to return to 0")
    except TimeoutError as error:
        result.problems.append(f"{error}: {subscribers(servers)}")
    # Unsubscribing finishes after the gauge drops: read the pub/sub count once it holds still.
    readings = [pubsub_subscriptions(chosen, servers)]

    def settled() -> bool:
        readings.append(pubsub_subscriptions(chosen, servers))
        return readings[-1] == readings[-2]

    with contextlib.suppress(TimeoutError):  # still changing after 30 s: the row below says so
        wait_until(settled, timeout=30, interval=1.0, what="the pub/sub subscriptions to settle")
    timeline.append(sample("closed", started, servers, chosen, None))
    # A subscription still running with no client (its task outlived its connection) re-reads
    # the log every catch-up period: count those reads over two periods (a measurement window).
    window = 2 * ctx.scale.catchup_seconds
    before = catchup_reads(servers)
    time.sleep(window)
    orphan_reads = catchup_reads(servers) - before
    return {
        "executions": executions,
        "clients": len(clients),
        "connect_seconds": connect_seconds,
        "written": written,
        "heads": heads,
        "final": final,
        "drained": drained,
        "timeline": timeline,
        "gauges_connected": gauges_connected,
        "to_zero": to_zero,
        "summaries": summaries,
        "metrics": [scrape(server) for server in servers],
        "logs": [scan_log(server.log()) for server in servers],
        "orphan_reads": {"reads": orphan_reads, "seconds": window},
    }


# --- the report ----------------------------------------------------------------------------------------


def merge_stats(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for transport in TRANSPORTS:
        total: dict[str, Any] = {
            "clients": 0,
            "connections": 0,
            "deliveries": 0,
            "duplicated": 0,
            "out_of_order": 0,
            "lost": 0,
            "drops": Counter(),
            "unexpected": Counter(),
            "connect_failures": Counter(),
            "live": defaultdict(list),
            "resumed": [],
        }
        for summary in summaries:
            stats = summary["stats"][transport]
            for key in ("clients", "connections", "deliveries", "duplicated", "out_of_order", "lost"):
                total[key] += stats[key]
            for key in ("drops", "unexpected", "connect_failures"):
                total[key].update(stats[key])
            for minute, latencies in stats["live"].items():
                total["live"][minute] += latencies
            total["resumed"] += stats["resumed"]
        merged[transport] = total
    return merged


def rss_mib(entry: dict[str, Any]) -> float:
    """The VmRSS of all server processes of one timeline row, in MiB."""
    return sum(each["rss_kib"] for each in entry["servers"]) / 1024


def threads(entry: dict[str, Any]) -> int:
    return sum(each["threads"] for each in entry["servers"])


def check_log(run: dict[str, Any], result: Result) -> None:
    """The log itself: sequences 1..n per execution, n = the writes the server confirmed."""
    written, heads = run["written"], run["heads"]
    for execution_id in run["executions"]:
        count, low, high = heads.get(execution_id, (0, 0, 0))
        confirmed = written["per_execution"].get(execution_id, 0)
        if count and (low != 1 or high != count):
            result.problems.append(f"log of {execution_id}: {count} events, sequences {low}..{high}")
        if count != confirmed:
            result.problems.append(f"log of {execution_id}: {count} events, the server confirmed {confirmed}")
    if written["errors"]:
        result.problems.append(f"writer: {written['statuses']}; e.g. {written['errors'][:3]}")


def report_writes(run: dict[str, Any], result: Result) -> None:
    written = run["written"]
    confirmed: Counter[str] = Counter()
    for key, count in written["statuses"].items():
        action, _, status = key.partition(" ")
        if status in {"200", "201"}:
            confirmed[action] += count
    events = sum(count for count, _, _ in run["heads"].values())
    result.add("server processes (daphne)", len(run["timeline"][0]["servers"]), "processes")
    result.add("clients", run["clients"], "clients")
    result.add("time to connect all clients", round(run["connect_seconds"], 1), "s")
    result.add("events written (in the log)", events, "events")
    result.add("  human_input_required", confirmed["create"], "events")
    result.add("  human_input_completed", confirmed["respond"], "events")
    result.add("  human_input_cancelled", confirmed["cancel"], "events")
    result.add("write rate achieved", round(events / written["seconds"], 1), "events/s")
    result.add("POST p99 (writer)", percentiles(written["latencies"])["p99"], "ms")


def report_transports(args: argparse.Namespace, run: dict[str, Any], result: Result) -> dict[str, Any]:
    """Per transport: connections, reconnects, deliveries, latency, and the delivery checks."""
    merged = merge_stats(run["summaries"])
    details = {}
    last_full_minute = int(args.duration // 60) - 1
    for transport, total in merged.items():
        label = TRANSPORTS[transport]
        latency = percentiles([value for values in total["live"].values() for value in values])
        minutes = [
            {"minute": minute, **percentiles(total["live"][minute])} for minute in sorted(total["live"])
        ]
        full = [each for each in minutes if each["n"] and 0 <= each["minute"] <= last_full_minute]
        result.add(f"{label} clients", total["clients"], "clients")
        result.add(f"{label} connections opened", total["connections"], "conns")
        result.add(f"{label} drops by reset", total["drops"]["abrupt"], "drops")
        result.add(f"{label} drops by clean close", total["drops"]["graceful"], "drops")
        result.add(f"{label} deliveries", total["deliveries"], "events")
        result.add(f"{label}   replayed on resume", len(total["resumed"]), "events")
        result.add(f"{label} live p50", latency["p50"], "ms")
        result.add(f"{label} live p99", latency["p99"], "ms", at_most=50)
        result.add(f"{label} live max", latency["max"], "ms")
        if len(full) > 1:
            result.add(f"{label} p99, first minute", full[0]["p99"], "ms")
            result.add(f"{label} p99, worst minute", max(each["p99"] for each in full), "ms")
            result.add(f"{label} p99, last full minute", full[-1]["p99"], "ms")
        unexpected = sum(total["unexpected"].values())
        result.check_deliveries(
            label,
            {
                "lost": total["lost"],
                "duplicated": total["duplicated"],
                "out_of_order": total["out_of_order"],
                "disconnected": unexpected,
                "errors": sorted(total["unexpected"])[:3],
            },
            detailed=True,
        )
        # Reported, not failed: an overloaded server may refuse a handshake (daphne drops a WebSocket
        # not accepted within 5 s); the client retries from its cursor and any loss would show above.
        failed = sum(total["connect_failures"].values())
        result.add(f"{label} connections refused or timed out", failed, "conns", at_most=0)
        details[transport] = {
            **{key: total[key] for key in ("clients", "connections", "deliveries", "lost")},
            **{key: total[key] for key in ("duplicated", "out_of_order")},
            **{key: dict(total[key]) for key in ("drops", "unexpected", "connect_failures")},
            "live": latency,
            "resumed": percentiles(total["resumed"]),
            "per_minute": minutes,
        }
    for drained in run["drained"]:
        if drained["behind"]:
            result.problems.append(
                f"{drained['behind']} clients had not caught up after {args.drain_timeout:g} s, e.g. "
                f"{drained['examples'][:3]}"
            )
    failures = [failure for summary in run["summaries"] for failure in summary["failures"]]
    for failure in failures[:KEPT]:
        result.problems.append(
            f"client {failure['client']} ({failure['transport']}, {failure['execution_id']}, final "
            f"sequence {failure['final']}, {failure['connections']} connections): lost "
            f"{failure['lost']} {failure['lost_sequences']}, duplicated {failure['duplicated']}, "
            f"out of order {failure['out_of_order']}"
        )
    anomalies = [anomaly for summary in run["summaries"] for anomaly in summary["anomalies"]]
    for anomaly in anomalies[:KEPT]:
        result.problems.append(f"{anomaly['kind']}: {json.dumps(anomaly)}")
    if len(failures) > KEPT or len(anomalies) > KEPT:
        result.problems.append(f"{len(failures)} clients failed in all; every one in the JSON")
    return details


def report_server(run: dict[str, Any], result: Result) -> None:
    """Memory, threads, database connections, subscriber gauges and the server's own counters."""
    timeline = run["timeline"]
    start, end, closed = timeline[0], timeline[-2], timeline[-1]
    result.add("server RSS at start (all processes)", round(rss_mib(start), 1), "MiB")
    result.add("server RSS at end", round(rss_mib(end), 1), "MiB")
    result.add("RSS growth start → end", round(rss_mib(end) - rss_mib(start), 1), "MiB")
    result.add("RSS growth start → end", round(100 * (rss_mib(end) / rss_mib(start) - 1), 1), "%")
    warm = next((entry for entry in timeline if entry["at"] == "minute 1"), None)
    if warm is not None and end["seconds"] - warm["seconds"] >= 120:  # growth once warmed up
        result.add("RSS growth minute 1 → end", round(rss_mib(end) - rss_mib(warm), 1), "MiB")
        result.add("RSS growth minute 1 → end", round(100 * (rss_mib(end) / rss_mib(warm) - 1), 1), "%")
    result.add("server RSS after the clients closed", round(rss_mib(closed), 1), "MiB")
    result.add("server threads at start", threads(start), "threads")
    result.add("server threads at end", threads(end), "threads")
    result.add("server threads after close", threads(closed), "threads")
    if start["db_connections"] is not None:
        result.add("PostgreSQL connections at start", start["db_connections"], "conns")
        result.add("PostgreSQL connections at end", end["db_connections"], "conns")
        result.add("PostgreSQL connections after close", closed["db_connections"], "conns")
    if start["pubsub_subscriptions"] is not None:
        for entry, when in ((start, "at start"), (end, "at end")):
            result.add(f"Redis pub/sub subscriptions {when}", sum(entry["pubsub_subscriptions"]), "channels")
        # Every subscriber has gone: what is still subscribed leaked (in Redis and in the process).
        left = sum(closed["pubsub_subscriptions"])
        result.add("Redis pub/sub subscriptions left after close", left, "channels", at_most=0)
    orphans = run["orphan_reads"]
    result.add(
        f"catch-up reads in the {orphans['seconds']:g} s after every client left",
        orphans["reads"],
        "reads",
        at_most=0,
    )
    for transport, label in TRANSPORTS.items():
        result.add(f"{label} subscribers (gauge) all connected", run["gauges_connected"][transport], "subs")
    for transport, label in TRANSPORTS.items():
        result.add(
            f"{label} subscribers (gauge) after close", closed["subscribers"][transport], "subs", at_most=0
        )
        result.add(f"{label} seconds until the gauge was 0", run["to_zero"][transport], "s")
    counters: Counter[str] = Counter()
    for found in run["metrics"]:
        counters.update(found)
    for transport, label in TRANSPORTS.items():
        for via in ("doorbell", "log"):
            key = f'humaninput_events_delivered_total{{transport="{transport}",via="{via}"}}'
            result.add(f"server: {label} delivered by {via}", int(counters[key]), "events")
    found_missed = int(counters['humaninput_catchup_reads_total{found="yes"}'])
    result.add("server: catch-up reads that found a missed doorbell", found_missed, "reads")
    result.add("server: publish failures", int(counters["humaninput_publish_failures_total"]), "doorbells")
    logged: Counter[str] = Counter()
    for found in run["logs"]:
        logged.update(found["counts"])
    for level in ("WARNING", "ERROR", "CRITICAL"):
        result.add(
            f"server log: {level} lines",
            sum(count for key, count in logged.items() if key.startswith(level)),
            "lines",
        )
    result.add("server log: tracebacks", logged["Traceback"], "tracebacks", at_most=0)
    # daphne cancels an application still running 10 s after its client left: a subscriber that
    # did not notice the disconnect by itself.
    killed = sum(found["killed"] for found in run["logs"])
    result.add("server log: applications killed after disconnect", killed, "apps", at_most=0)
    # Errors the service expects and counts (a doorbell that timed out) are reported above; an
    # exception nobody caught is a failure.
    if logged["Traceback"]:
        examples = [line for found in run["logs"] for line in found["examples"].get("Traceback", [])]
        result.problems.append(f"the servers logged {logged['Traceback']} tracebacks, e.g. {examples}")


def report(args: argparse.Namespace, run: dict[str, Any], result: Result) -> dict[str, Any]:
    """Figures and problems into ``result``; the JSON document's details."""
    check_log(run, result)
    report_writes(run, result)
    transports = report_transports(args, run, result)
    report_server(run, result)
    written = run["written"]
    return {
        "written": {**written, "latencies": percentiles(written["latencies"]), "per_execution": None},
        "transports": transports,
        "timeline": run["timeline"],
        "drained": run["drained"],
        "gauges_connected": run["gauges_connected"],
        "seconds_to_zero": run["to_zero"],
        "failures": [failure for summary in run["summaries"] for failure in summary["failures"]],
        "anomalies": [anomaly for summary in run["summaries"] for anomaly in summary["anomalies"]],
        "connect_failures": [each for summary in run["summaries"] for each in summary["connect_failures"]],
        "server_metrics": run["metrics"],
        "server_logs": run["logs"],
        "orphan_reads": run["orphan_reads"],
    }


def timeline_table(timeline: list[dict[str, Any]]) -> str:
    """Per row: RSS and CPU (% of a core since the row before) per server process, and the rest."""
    lines = [
        f"{'at':<10} {'t (s)':>6}  {'RSS MiB per process':<22} {'CPU %':<12} threads  load  db  "
        f"{'pub/sub':<12} subscribers"
    ]
    previous = None
    for entry in timeline:
        rss = " + ".join(f"{each['rss_kib'] / 1024:.1f}" for each in entry["servers"])
        cpu = "—"
        if previous is not None and entry["seconds"] > previous["seconds"]:
            elapsed = entry["seconds"] - previous["seconds"]
            cpu = " + ".join(
                f"{100 * (now['cpu_seconds'] - before['cpu_seconds']) / elapsed:.0f}"
                for now, before in zip(entry["servers"], previous["servers"], strict=True)
            )
        gauges = "/".join(str(entry["subscribers"][t]) for t in TRANSPORTS)
        database = entry["db_connections"] if entry["db_connections"] is not None else "—"
        pubsub = " + ".join(str(each) for each in entry["pubsub_subscriptions"] or ["—"])
        lines.append(
            f"{entry['at']:<10} {entry['seconds']:>6.0f}  {rss:<22} {cpu:<12} {threads(entry):>7}  "
            f"{entry['load_average']:>4.1f}  {database:>2}  {pubsub:<12} {gauges}"
        )
        previous = entry
    return "\n".join(lines)


# --- entry point ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=900, help="seconds of writes (default 900)")
    parser.add_argument("--ws", type=int, default=500)
    parser.add_argument("--sse", type=int, default=200)
    parser.add_argument("--poll", type=int, default=100, help="long-polling clients")
    parser.add_argument("--executions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50, help="writes (= events) per second, all executions")
    parser.add_argument("--setup", choices=["embedded", "postgres"], default="postgres")
    parser.add_argument(
        "--servers",
        type=int,
        help="daphne processes (default: 2 on postgres, which shares Redis; embedded: 1)",
    )
    parser.add_argument(
        "--disconnect-rate", type=float, default=1.0, help="drops per client per minute (Poisson; 0: none)"
    )
    parser.add_argument(
        "--abrupt-share", type=float, default=0.5, help="share of drops that reset the TCP connection"
    )
    parser.add_argument(
        "--answer-share",
        type=float,
        default=0.3,
        help="share of writes that answer or cancel a pending request",
    )
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument(
        "--drain-timeout", type=float, default=120, help="seconds for every client to catch up"
    )
    parser.add_argument("--redis-db", type=int, default=13, help="flushed before and after (default 13)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, help="default: bench/results/soak-<setup>.json")
    args = parser.parse_args()
    if args.servers is None:
        args.servers = 2 if args.setup == "postgres" else 1
    if args.setup == "embedded" and args.servers != 1:
        parser.error("the embedded setup's in-memory channel layer serves one process only")
    if args.seed is None:
        args.seed = random.randrange(10**6)
    # A TERM (CI timeout, kill) unwinds like Ctrl-C: servers stopped, database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    server_cpus, client_cpus = cpu_split()
    result = Result("soak")
    began = time.monotonic()
    workdir = scratch_dir(Path("/tmp/humaninput-bench"))
    print(
        f"[soak] {args.setup}, {args.servers} daphne, {args.ws} WS + {args.sse} SSE + {args.poll} long-poll "
        f"over {args.executions} executions, {args.rate:g} events/s for {args.duration:g} s, "
        f"{args.disconnect_rate:g} drops/client/min, seed {args.seed}",
        file=sys.stderr,
        flush=True,
    )
    details: dict[str, Any] = {}
    try:
        with backend(args.setup, workdir, redis_db=args.redis_db) as chosen:
            ctx = Context(
                chosen, workdir, with_scale(SCALES["default"], name="soak"), server_cpus, client_cpus
            )
            servers: list[ServerProcess] = []
            try:
                servers += [ctx.daphne() for _ in range(args.servers)]
                run = soak(args, ctx, servers, result)
            finally:
                for server in servers:
                    server.stop()
            details = report(args, run, result)
    except BaseException as error:  # a crash, Ctrl-C or TERM: the report says it did not finish
        result.problems.append(f"the soak did not finish: {describe(error)}")
        raise
    finally:
        runtime = time.monotonic() - began
        print(text_table(rows({args.setup: [result]})))
        if details:
            print("\n" + timeline_table(details["timeline"]))
        path = args.json or RESULTS / f"soak-{args.setup}.json"
        document = {
            "meta": {**machine(), "runtime_seconds": round(runtime, 1)},
            "options": {
                key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            },
            "figures": [asdict(figure) for figure in result.figures],
            "problems": result.problems,
            **details,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1, default=str) + "\n")
        print(f"\n{runtime:.0f} s; results in {path}")
        status = exit_status(result.problems, workdir)
    return status


if __name__ == "__main__":
    sys.exit(main())
